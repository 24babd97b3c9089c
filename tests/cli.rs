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

    // A status the API would refuse is refused here, with the words it accepts.
    let bad = cvguard(&["incidents", "list", "--status", "bogus"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("open") && err.contains("false_positive"), "{err}");
    let bad = cvguard(&["incidents", "list", "--limit", "0"]);
    assert_eq!(bad.status.code(), Some(2));
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
