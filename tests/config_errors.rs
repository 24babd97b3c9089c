//! Config validation that tells everything (#15): every problem of a file at once, each
//! with its line and column, rule and key; environment overrides named as such; a
//! missing file exits 66; an action no event has is a warning (an error with --strict);
//! `-o json` prints the effective config; paths are relative to the config file.

use std::path::Path;
use std::process::{Command, Output};

use cvguard_tests::{bin, cvguard, cvguard_ok};

/// The breaks issue #15 lists: two in `[engine]`, three in one rule.
const BROKEN: &str = r#"[engine]
dry_rnu = true
max_cv_ids = "lots"

[[rules]]
name = "mass-harvest"
actions = ["cv_view", "cv_download"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24h"
threshold = 4000

[[rules]]
name = "fast-downloads"
actions = ["cv_download"]
group_by = "account_id"
measure = "cvs"
window = "5 parsecs"
threshold = -5
response2 = "suspend"
"#;

const RULE: &str = r#"
[[rules]]
name = "searches"
actions = ["cv_search"]
group_by = "account_id"
measure = "events"
window = "1h"
threshold = 600
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `cvguard ARGS` run from `cwd` with `env` set.
fn cvguard_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .expect("run cvguard")
}

#[test]
fn every_problem_of_the_file_is_reported_at_once_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.toml", BROKEN);
    for args in [
        vec!["check-config", &file],
        vec!["check-config", "--config", &file],
        vec!["replay", "--config", &file, "--input", "-"],
    ] {
        let out = cvguard(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}\n{err}");
        assert!(
            err.starts_with(&format!("cvguard: invalid config: {file}: 5 problems\n")),
            "{err}"
        );
        for line in [
            format!("  {file}:2:1: key `engine.dry_rnu`: unknown key; did you mean `dry_run`?"),
            format!("  {file}:3:14: key `engine.max_cv_ids`: invalid type: string \"lots\", expected a whole number ≥ 0"),
            format!("  {file}:18:10: rule `fast-downloads`, key `window`: `5 parsecs` is not a duration"),
            format!(
                "  {file}:19:13: rule `fast-downloads`, key `threshold`: invalid value: integer `-5`, expected a whole number ≥ 0"
            ),
            format!("  {file}:20:1: rule `fast-downloads`, key `response2`: unknown key; did you mean `response`?"),
        ] {
            assert!(err.contains(&line), "{line}\nnot in\n{err}");
        }
        assert!(!err.contains("key `-`"), "{err}");
        // No Rust type names.
        for rust in ["usize", "u64", "u32", "i64", "f64", "struct "] {
            assert!(!err.contains(rust), "{rust} in\n{err}");
        }
    }
}

#[test]
fn an_invalid_config_lists_its_warnings_after_the_errors_and_syntax_errors_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[engine]\ndry_rnu = true\n",
        RULE.replace("\"cv_search\"", "\"cv_serach\"")
    );
    let file = write(dir.path(), "both.toml", &text);
    let out = cvguard(&["check-config", &file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let expected = format!(
        "cvguard: invalid config: {file}: 1 problem\n  {file}:10:1: key `engine.dry_rnu`: unknown key; did you mean \
         `dry_run`?\nand 1 warning\n  {file}:4:12: rule `searches`, key `actions[0]`: no known event has the action \
         `cv_serach`"
    );
    assert!(err.starts_with(&expected), "{expected}\nnot at the start of\n{err}");

    // A syntax error takes its place among the problems before it.
    let file = write(
        dir.path(),
        "syntax2.toml",
        "[engine]\ndry_rnu = true\n[[rules]]\nname = \"x\"\nwindow = \n",
    );
    let err = stderr(&cvguard(&["check-config", &file]));
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("  {file}:2:1: key `engine.dry_rnu`")),
        "{err}"
    );
    assert!(lines[1].starts_with(&format!("  {file}:5:10: ")), "{err}");
}

#[test]
fn json_output_of_an_invalid_config_is_json_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.toml", BROKEN);
    let out = cvguard(&["check-config", "-o", "json", &file]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["valid"], false);
    assert_eq!(report["file"], file.as_str());
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 5, "{report}");
    let p = &problems[3];
    assert_eq!(p["severity"], "error");
    assert_eq!(p["file"], file.as_str());
    assert_eq!(p["line"], 19);
    assert_eq!(p["column"], 13);
    assert_eq!(p["rule"], "fast-downloads");
    assert_eq!(p["key"], "threshold");
    assert_eq!(p["message"], "invalid value: integer `-5`, expected a whole number ≥ 0");

    let missing = dir.path().join("nope.toml");
    let out = cvguard(&["check-config", "-o", "json", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["readable"], false);
}

#[test]
fn a_syntax_error_names_its_line_and_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "syntax.toml",
        "[engine]\ndry_run = true\n[[rules]\nname = \"x\"\n",
    );
    let out = cvguard(&["check-config", &file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&format!("  {file}:3:9: unclosed array table")), "{err}");
    assert!(!err.contains("key `"), "{err}");
}

#[test]
fn a_bad_environment_override_is_blamed_on_its_variable_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "good.toml", RULE);
    let out = cvguard_in(
        dir.path(),
        &[
            ("CVGUARD__ENGINE__DRY_RUN", "maybe"),
            ("CVGUARD__ENGINE__MAX_CV_IDS", "lots"),
        ],
        &["check-config", &file],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for line in [
        "  environment variable CVGUARD__ENGINE__DRY_RUN: key `engine.dry_run`: invalid type: string \"maybe\", expected true or false",
        "  environment variable CVGUARD__ENGINE__MAX_CV_IDS: key `engine.max_cv_ids`: invalid type: string \"lots\", expected a whole number ≥ 0",
    ] {
        assert!(err.contains(line), "{line}\nnot in\n{err}");
    }
    // Only the heading names the file: no problem is the file's.
    assert_eq!(err.matches(file.as_str()).count(), 1, "{err}");

    // A good override applies.
    let out = cvguard_in(
        dir.path(),
        &[("CVGUARD__ENGINE__DRY_RUN", "true")],
        &["check-config", &file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dry run: on"));
}

#[test]
fn a_missing_config_file_exits_66_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["check-config", missing],
        vec!["check-config", "--config", missing],
        vec!["replay", "--config", missing, "--input", "-"],
        vec!["incidents", "list", "--config", missing],
    ] {
        let out = cvguard(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(66), "{args:?}\n{err}");
        assert!(
            err.starts_with(&format!(
                "cvguard: {missing}: cannot read the config file: No such file"
            )),
            "{err}"
        );
    }
}

#[test]
fn an_action_no_event_has_warns_and_strict_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "typo.toml", &RULE.replace("\"cv_search\"", "\"cv_serach\""));
    let warning = format!(
        "{file}:4:12: rule `searches`, key `actions[0]`: no known event has the action `cv_serach` (known: cv_view, \
         cv_download, cv_search, contact_reveal), so the rule never counts it; did you mean `cv_search`?"
    );
    let out = cvguard(&["check-config", &file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("cvguard: warning: {warning}")), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("searches"));

    let out = cvguard(&["check-config", "--strict", &file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&format!("\n  {warning}")), "{err}");
    assert!(out.stdout.is_empty());

    // The shipped config has no such action.
    let out = cvguard_ok(&["check-config", "--strict", "config/cvguard.toml"]);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn json_output_is_the_effective_config_with_defaults_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\nurl = \"postgres://cvguard:hunter2@db.internal/cvguard\"\n[kafka.properties]\n\
         \"sasl.password\" = \"hunter3\"\n\"bootstrap.servers\" = \"k:9092\"\n{RULE}"
    );
    let file = write(dir.path(), "c.toml", &text);
    let out = cvguard_ok(&["check-config", "-o", "json", "--config", &file]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("hunter"), "{printed}");
    let all: serde_json::Value = serde_json::from_str(&printed).unwrap();
    // Every section, also those the file does not have.
    assert_eq!(all.as_object().map(|o| o.len()), Some(14), "{all}");
    assert_eq!(all["health"]["silence"], "5m");
    assert_eq!(all["engine"]["allowed_lateness"], "5m");
    assert_eq!(all["engine"]["max_cv_ids"], 10_000);
    assert_eq!(all["http"]["listen"], "127.0.0.1:8088");
    assert_eq!(all["service"]["shutdown_timeout"], "30s");
    assert_eq!(all["suspend"]["secret_env"], "CVGUARD_SUSPEND_SECRET");
    assert_eq!(all["kafka"]["properties"]["bootstrap.servers"], "k:9092");
    assert_eq!(all["store"]["url"], "postgres://cvguard:***@db.internal/cvguard");
    let rule = &all["rules"][0];
    assert_eq!(rule["name"], "searches");
    assert_eq!(rule["response"], "alert");
    assert_eq!(rule["severity"], "high");
    assert_eq!(rule["dry_run"], false);
    assert_eq!(
        all["state"]["dir"],
        dir.path().join("data/state").to_str().unwrap(),
        "a relative path is the config folder's"
    );

    // The table stays the default.
    let out = cvguard_ok(&["check-config", &file]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{file}: ok")));
}

#[test]
fn paths_in_a_config_are_relative_to_its_folder_from_any_working_directory() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    write(home.path(), "accounts.csv", "account_id,segment\nbig,staffing_agency\n");
    let text = format!(
        "[store]\nurl = \"sqlite://data/x.db\"\n[state]\ndir = \"data/state\"\n[profiles]\npath = \"accounts.csv\"\n{RULE}"
    );
    let file = write(home.path(), "c.toml", &text);
    // `incidents` creates no store: it names the one the config means.
    let out = cvguard_in(elsewhere.path(), &[], &["incidents", "list", "--config", &file]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    let db = home.path().join("data/x.db");
    assert!(
        stderr(&out).contains(&format!(
            "no incident store at {} ([store] url of {file})",
            db.display()
        )),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, "").unwrap();
    let out = cvguard_in(elsewhere.path(), &[], &["incidents", "list", "--config", &file]);
    assert!(out.status.success(), "the store beside the config: {}", stderr(&out));
    assert!(
        !elsewhere.path().join("data").exists(),
        "nothing in the working directory"
    );

    let out = cvguard_in(elsewhere.path(), &[], &["check-config", &file]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        table.contains(&format!(
            "profiles: 1 account from {}",
            home.path().join("accounts.csv").display()
        )),
        "{table}"
    );

    // A path from the environment is the working directory's, as on a command line.
    let out = cvguard_in(
        elsewhere.path(),
        &[("CVGUARD__STATE__DIR", "mine/state")],
        &["check-config", "-o", "json", &file],
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used = elsewhere.path().canonicalize().unwrap().join("mine/state");
    assert_eq!(all["state"]["dir"], used.to_str().unwrap());
}

/// Without --config: the embedded default, whose relative paths are the working
/// directory's; -o json shows them as used (absolute), and both outputs name the
/// embedded profiles.
#[test]
fn the_embedded_default_shows_its_paths_as_used_and_its_profiles() {
    let cwd = tempfile::tempdir().unwrap();
    let here = cwd.path().canonicalize().unwrap();
    let out = cvguard_in(&here, &[], &["check-config"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        table.contains("profiles: embedded config/accounts.csv (4 accounts)"),
        "{table}"
    );
    let out = cvguard_in(&here, &[], &["check-config", "-o", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all["state"]["dir"], here.join("data/state").to_str().unwrap());
    assert_eq!(
        all["store"]["url"],
        format!("sqlite://{}", here.join("data/cvguard.db").display())
    );
    assert_eq!(
        all["sinks"][0]["path"],
        here.join("data/alerts.jsonl").to_str().unwrap()
    );
    assert_eq!(all["profiles"]["path"], "embedded config/accounts.csv");
    assert_eq!(all["profiles"]["accounts"], 4);
    assert!(!here.join("data").exists(), "check-config creates nothing");
}

#[test]
fn secrets_in_query_strings_and_kafka_properties_from_the_environment_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[sinks]]\nkind = \"webhook\"\nurl = \"https://hooks.example/soc?token=hunter4&team=soc\"\n\
         [[sinks]]\nkind = \"alertmanager\"\nurl = \"https://am.example/?api_key=hunter5&sig=hunter6\"\n{RULE}"
    );
    let file = write(dir.path(), "c.toml", &text);
    let out = cvguard_in(
        dir.path(),
        &[
            ("CVGUARD__KAFKA__PROPERTIES__SASL_PASSWORD", "hunter7"),
            ("CVGUARD__KAFKA__PROPERTIES__SASL_USERNAME", "cvguard"),
            ("CVGUARD__KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "hunter8"),
        ],
        &["check-config", "-o", "json", &file],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!printed.contains("hunter"), "{printed}");
    let all: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(all["sinks"][0]["url"], "https://hooks.example/soc?token=***&team=soc");
    assert_eq!(all["sinks"][1]["url"], "https://am.example/?api_key=***&sig=***");
    // librdkafka's names: a variable's underscores are the property's dots.
    let props = &all["kafka"]["properties"];
    assert_eq!(props["sasl.username"], "cvguard", "{props}");
    assert_eq!(props["sasl.password"], "***", "{props}");
    assert_eq!(props["ssl.key.password"], "***", "{props}");
    assert!(props.get("sasl_password").is_none(), "{props}");
}
