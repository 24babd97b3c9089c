//! `cvguard tune`: proposals from a simulated board's history that, put into the config
//! and backtested on the same history, catch every labelled attack and hit nothing else.

use std::path::Path;

use cvguard_tests::{cvguard, cvguard_ok};

/// Puts a `cvguard tune` fragment's values into `config`: per `[[rules]]` of the fragment,
/// its `threshold`, each `[rules.segments]` value and `[rules.baseline] factor`, in the
/// rule of that name (the simulator's config lists each of those keys once per rule).
fn apply(config: &str, fragment: &str) -> String {
    let mut out = config.to_string();
    let mut rule = String::new();
    for line in fragment.lines() {
        let line = line.split('#').next().unwrap().trim();
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key == "name" {
            rule = value.to_string();
            continue;
        }
        let start = out
            .find(&format!("name = {rule}\n"))
            .unwrap_or_else(|| panic!("rule {rule}"));
        let end = out[start..].find("[[rules]]").map_or(out.len(), |e| start + e);
        let block = &out[start..end];
        let at = block
            .lines()
            .scan(0, |pos, l| {
                let here = *pos;
                *pos += l.len() + 1;
                Some((here, l))
            })
            .find(|(_, l)| l.split(" = ").next().map(str::trim) == Some(key))
            .map(|(p, l)| (start + p, l.len()));
        match at {
            Some((p, len)) => out.replace_range(p..p + len, &format!("{key} = {value}")),
            None => panic!("{rule} has no `{key}` to set: {block}"),
        }
    }
    out
}

#[test]
fn proposals_backtested_on_the_same_history_catch_every_labelled_attack_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let sim = cvguard_tests::simulate_board(dir.path(), &["--days", "8", "--employers", "150"]);
    let (config, events, accounts, labels) = (
        sim.join("cvguard.toml"),
        sim.join("events.ndjson"),
        sim.join("accounts.csv"),
        sim.join("labels.csv"),
    );
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let tune_args = [
        "tune".to_string(),
        "--config".into(),
        arg(&config),
        "--input".into(),
        arg(&events),
        "--profiles".into(),
        arg(&accounts),
        "--exclude".into(),
        arg(&labels),
        "--quantile".into(),
        "1".into(),
        "--margin".into(),
        "1.2".into(),
    ];
    let tune_args: Vec<&str> = tune_args.iter().map(String::as_str).collect();
    let out = cvguard_ok(&tune_args);
    let fragment = String::from_utf8(out.stdout).unwrap();
    assert!(
        fragment.contains("[[rules]]\nname = \"mass-harvest-24h\"\nthreshold = "),
        "{fragment}"
    );
    let original = std::fs::read_to_string(&config).unwrap();
    let tuned = apply(&original, &fragment);
    assert_ne!(tuned, original);
    let candidate = dir.path().join("tuned.toml");
    std::fs::write(&candidate, &tuned).unwrap();
    cvguard_ok(&["check-config", &arg(&candidate)]);

    let out = cvguard_ok(&[
        "backtest",
        "--config",
        &arg(&candidate),
        "--input",
        &arg(&events),
        "--profiles",
        &arg(&accounts),
        "--labels",
        &arg(&labels),
        "-o",
        "json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let score = &r["candidate"]["total"]["score"];
    assert_eq!(score["false_positives"], 0, "{fragment}\n{score:#}");
    assert_eq!(score["missed"], 0, "{fragment}\n{score:#}");
    let attacks = cvguard_tests::read_labels(&labels)
        .iter()
        .filter(|l| l.expected != "none")
        .count() as u64;
    assert_eq!(score["true_positives"].as_u64(), Some(attacks));

    // The JSON's proposals are the fragment's.
    let out = cvguard_ok(&[&tune_args[..], &["-o", "json"]].concat());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["toml"].as_str(), Some(fragment.as_str()));
    let mass = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["rule"] == "mass-harvest-24h" && g["segment"] == "default")
        .unwrap();
    assert!(mass["peaks"]["n"].as_u64().unwrap() > 10);
    assert!(fragment.contains(&format!("threshold = {}", mass["proposed"])));
}

/// A flag's value out of range is a usage error (exit 2, as every wrong flag value), not
/// an invalid config (64), and says what it expects.
#[test]
fn tune_refuses_flag_values_out_of_range_as_usage_errors() {
    let config = cvguard_tests::root().join("config/cvguard.toml");
    for (flag, value, expects) in [
        ("--quantile", "2", "expected a number from 0 to 1"),
        ("--quantile", "1.5", "expected a number from 0 to 1"),
        ("--margin", "0", "expected a number above 0"),
        ("--margin", "NaN", "expected a number"),
        ("--target-alerts-per-week", "-1", "expected a number of 0 or more"),
    ] {
        // `--flag=value`: a value starting with `-` is a value, not another flag.
        let given = format!("{flag}={value}");
        let out = cvguard(&["tune", "--config", config.to_str().unwrap(), "--input", "-", &given]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expects), "{flag} {value}: {err}");
    }
}
