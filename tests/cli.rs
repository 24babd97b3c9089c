//! The command line contract: exit codes, config errors, check-config.

use cvguard_tests::{cvguard, cvguard_ok};

#[test]
fn a_bad_config_exits_64_and_names_file_rule_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[engine]
allowed_lateness = "a bit"
[profiles]
path = "nowhere.csv"
[[rules]]
name = "r1"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24 parsecs"
threshold = 10
[[rules]]
name = "r1"
actions = []
group_by = "account_id"
measure = "events"
window = "1h"
threshold = 1
"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    for args in [vec!["check-config", p], vec!["replay", "--config", p, "--input", "-"]] {
        let out = cvguard(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "key `engine.allowed_lateness`",
            "key `profiles.path`",
            "nowhere.csv",
            "rule `r1`, key `window`",
            "rule `r1`, key `name`: duplicate",
            "rule `r1`, key `actions`",
        ] {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
        assert!(err.lines().filter(|l| l.contains("bad.toml")).count() >= 6, "{err}");
    }
}

#[test]
fn check_config_prints_the_effective_rules() {
    let out = cvguard_ok(&["check-config", "config/cvguard.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config/cvguard.toml: ok"), "{text}");
    assert!(text.contains("mass-harvest-24h"));
    assert!(text.contains("staffing_agency=40000"));
}

#[test]
fn a_missing_input_exits_66() {
    let out = cvguard(&["replay", "--input", "/nonexistent/events.ndjson"]);
    assert_eq!(out.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/events.ndjson"));
}

#[test]
fn replay_reads_stdin_and_writes_alerts_to_stdout() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut lines = String::new();
    for i in 0..25 {
        lines.push_str(&format!(
            "{{\"ts\":{},\"account_id\":\"scraper\",\"action\":\"cv_download\",\"cv_ids\":[{}]}}\n",
            1_714_780_800_000i64 + i * 1000,
            (0..200)
                .map(|k| format!("\"cv-{}\"", i * 200 + k))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let mut child = Command::new(cvguard_tests::bin())
        .args(["replay", "--input", "-"])
        .current_dir(cvguard_tests::root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let suspend = alerts
        .iter()
        .find(|a| a["action"] == "suspend")
        .expect("a suspend alert");
    assert_eq!(suspend["rule"], "mass-harvest-24h");
    assert_eq!(suspend["value"], 4000);
    assert_eq!(suspend["event_time"], "2024-05-04T00:00:19.000Z");
}

/// Like its neighbours (#15): completions and man pages from the same definition as
/// `--help`, exit codes in `--help`, filters refused with the API's own words.
#[test]
fn completions_man_pages_exit_codes_and_validated_filters() {
    let bash = cvguard_ok(&["completions", "bash"]);
    let script = String::from_utf8_lossy(&bash.stdout);
    for word in [
        "replay",
        "serve",
        "incidents",
        "check-config",
        "--save-state",
        "--pidfile",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let help = cvguard_ok(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for code in ["64", "65", "66"] {
        assert!(
            help.contains(&format!("\n  {code} ")),
            "--help lacks exit status {code}:\n{help}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    cvguard_ok(&["man", "--out", dir.path().to_str().unwrap()]);
    let page = std::fs::read_to_string(dir.path().join("cvguard-replay.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("save\\-state"), "{page}");

    // A status or limit the API would refuse is refused here in the API's own words (one
    // parser for both).
    let bad = cvguard(&["incidents", "list", "--status", "bogus"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("`status` must be open, acknowledged, resolved or false_positive"),
        "{err}"
    );
    let bad = cvguard(&["incidents", "list", "--limit", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("limit: expected a whole number from 1 to 1000, not `0`"),
        "{err}"
    );
}

#[test]
fn a_replay_with_no_usable_event_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("junk.ndjson");
    std::fs::write(&input, "{broken\n[1]\n").unwrap();
    let out = cvguard(&["replay", "--input", input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("all 2 lines were rejected"));
    std::fs::write(&input, "").unwrap();
    let out = cvguard(&["replay", "--input", input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
}

/// `incidents` without --config where there is no store (#15): no ./data/cvguard.db made,
/// no empty table, but exit 66 and the path with where it came from.
#[test]
fn incidents_never_create_a_store() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [
        vec!["incidents", "list"],
        vec!["incidents", "list", "-o", "json"],
        vec!["incidents", "show", "x"],
        vec!["incidents", "export", "x", "-o", "csv"],
        vec!["incidents", "set", "x", "resolved"],
    ] {
        let out = std::process::Command::new(cvguard_tests::bin())
            .args(&args)
            .current_dir(cwd.path())
            .env_remove("CVGUARD__STORE__URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(66), "{args:?}: {err}");
        assert!(
            err.contains("no incident store at data/cvguard.db (the embedded default config's [store] url"),
            "{args:?}: {err}"
        );
        assert!(err.contains("pass --config FILE of the running service"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!cwd.path().join("data").exists(), "{args:?} created a store");
    }
}

/// The nits a review found (#15): the man pages' sections, where `man` writes, what
/// `simulate --help` promises, `-o` on every command that prints data, and the replay
/// summary's words.
#[test]
fn man_pages_help_and_replay_words() {
    let dir = tempfile::tempdir().unwrap();
    cvguard_ok(&["man", "--out", dir.path().to_str().unwrap()]);
    let top = std::fs::read_to_string(dir.path().join("cvguard.1")).unwrap();
    assert!(top.contains(".SH \"EXIT STATUS\""), "{top}");
    assert!(top.contains("\\fB64\\fR"), "{top}");
    assert!(!top.contains("EXTRA"), "{top}");
    assert!(
        !top.contains("cvguard\\-help") && !top.contains("cvguard-help"),
        "{top}"
    );
    assert!(!dir.path().join("cvguard-help.1").exists());
    let incidents = std::fs::read_to_string(dir.path().join("cvguard-incidents.1")).unwrap();
    assert!(!incidents.contains("help("), "{incidents}");
    assert!(incidents.contains("EXIT STATUS"), "{incidents}");
    // Nowhere by default: a user's binary does not write into target/.
    let out = cvguard(&["man"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));

    let help = String::from_utf8_lossy(&cvguard_ok(&["simulate", "--help"]).stdout).to_string();
    assert!(help.contains("cvguard.toml"), "{help}");

    let help = String::from_utf8_lossy(&cvguard_ok(&["incidents", "export", "--help"]).stdout).to_string();
    assert!(help.contains("-o, --output"), "{help}");
    assert!(!help.contains("--format"), "a hidden alias: {help}");

    // One bad line on stdin: said in the singular, and stdin named as such.
    let out = std::process::Command::new(cvguard_tests::bin())
        .args(["replay", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"{broken\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("no usable event in stdin: its one line was rejected"),
        "{err}"
    );
    assert!(err.contains("MB of events in"), "{err}");
}

/// A gzip replay's summary says both sizes and which is which.
#[test]
fn a_gzip_replay_summary_labels_its_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim");
    cvguard_ok(&[
        "simulate",
        "--out",
        out.to_str().unwrap(),
        "--days",
        "1",
        "--employers",
        "20",
        "--scenarios",
        "none",
        "--gzip",
    ]);
    let input = out.join("events.ndjson.gz");
    let replay = cvguard_ok(&["replay", "--input", input.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&replay.stderr);
    assert!(
        err.contains("MB of events from ") && err.contains(" MB of gzip in "),
        "{err}"
    );
}
