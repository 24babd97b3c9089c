use super::*;
use std::fs;

fn keys(err: &LoadError) -> Vec<(Option<&str>, &str)> {
    err.issues
        .iter()
        .map(|i| (i.rule.as_deref(), i.key.as_deref().unwrap_or("")))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn load_text(dir: &Path, text: &str) -> Result<Config, LoadError> {
    let path = write(dir, "cvguard.toml", text);
    load(&ConfigSource::File(path), &Overrides::default())
}

const RULE: &str = r#"
[[rules]]
name = "mass"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24h"
threshold = 10
"#;

#[test]
fn the_shipped_config_loads_from_file_and_embedded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cvguard.toml");
    let from_file = load(&ConfigSource::File(root), &Overrides::default()).unwrap();
    assert!(from_file.rules.len() >= 5);
    assert!(from_file.ruleset.profiles.account("partner-1").is_some());
    assert!(from_file.ruleset.is_allowlisted("partner-1"));
    let embedded = ConfigSource::Text {
        name: "embedded".into(),
        text: EMBEDDED_DEFAULT.into(),
        base_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config"),
    };
    let from_text = load(&embedded, &Overrides::default()).unwrap();
    assert_eq!(from_file.rules, from_text.rules);
    let built_in = load(&ConfigSource::Embedded, &Overrides::default()).unwrap();
    assert_eq!(built_in.rules, from_file.rules);
    assert!(
        built_in.ruleset.profiles.account("agency-randstad-nl").is_some(),
        "embedded profiles"
    );
    assert!(built_in.profiles_path.is_none());
}

#[test]
fn every_problem_names_the_file_the_rule_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[engine]
allowed_lateness = "soon"
colour = "blue"
[profiles]
path = "missing.csv"
[surprise]
x = 1
[[rules]]
name = "mass"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24 hours please"
threshold = 10
[[rules]]
name = "mass"
actions = []
group_by = "account_id"
measure = "distinct_cvs"
window = "1h"
threshold = 10
[[rules]]
name = "typo"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "1h"
thresold = 10
[[rules]]
name = "badkind"
actions = ["cv_view"]
group_by = "company"
measure = "distinct_cvs"
window = "1h"
threshold = "ten"
"#;
    let err = load_text(dir.path(), text).unwrap_err();
    assert!(err.file.ends_with("cvguard.toml"));
    let found = keys(&err);
    for expected in [
        (None, "engine.colour"),
        (None, "surprise"),
        (None, "profiles.path"),
        (Some("typo"), "thresold"),
        (Some("badkind"), "group_by"),
    ] {
        assert!(found.contains(&expected), "{expected:?} not in {found:?}");
    }
    // A section with an unknown key still has its other keys checked, and the rules'
    // own checks still come: duplicate name and bad window.
    for expected in [
        (None, "engine.allowed_lateness"),
        (Some("mass"), "window"),
        (Some("mass"), "name"),
        (Some("typo"), "threshold"),
        (Some("badkind"), "threshold"),
    ] {
        assert!(found.contains(&expected), "{expected:?} not in {found:?}");
    }
    let text = err.to_string();
    assert!(text.contains("missing.csv"), "{text}");
    assert!(
        text.contains("key `thresold`: unknown key; did you mean `threshold`?"),
        "{text}"
    );
    assert!(text.contains("unknown variant `company`"), "{text}");
    assert!(
        text.lines().skip(1).all(|l| l.trim_start().starts_with(&err.file)),
        "{text}"
    );
}

#[test]
fn rule_validation_problems_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{RULE}{}",
        r#"
[[rules]]
name = "mass"
actions = []
group_by = "account_id"
measure = "events"
window = "forever"
threshold = 10
"#
    );
    let err = load_text(dir.path(), &text).unwrap_err();
    let found = keys(&err);
    assert_eq!(
        found,
        vec![
            (Some("mass"), "name"),
            (Some("mass"), "actions"),
            (Some("mass"), "window")
        ]
    );
}

#[test]
fn profiles_are_read_relative_to_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "accounts.csv",
        "account_id,segment,org_id,open_vacancies\nbig,,org-1,120\nagency,staffing_agency,,\n",
    );
    let cfg = load_text(dir.path(), &format!("[profiles]\npath = \"accounts.csv\"\n{RULE}")).unwrap();
    let big = cfg.ruleset.profiles.account("big").unwrap();
    assert_eq!((big.open_vacancies, big.org_id.as_deref()), (120, Some("org-1")));
    assert_eq!(
        cfg.ruleset.profiles.account("agency").unwrap().segment.as_deref(),
        Some("staffing_agency")
    );

    write(dir.path(), "accounts.csv", "account_id,open_vacancies\nbig,lots\n");
    let err = load_text(dir.path(), &format!("[profiles]\npath = \"accounts.csv\"\n{RULE}")).unwrap_err();
    assert_eq!(err.issues[0].key.as_deref(), Some("profiles.path"));
    assert_eq!(err.issues[0].origin, Origin::File(Some((2, 8))));
    assert!(err.issues[0].message.contains("line 2"), "{}", err.issues[0].message);

    write(dir.path(), "accounts.csv", "account,open_vacancies\nbig,1\n");
    let err = load_text(dir.path(), &format!("[profiles]\npath = \"accounts.csv\"\n{RULE}")).unwrap_err();
    assert!(err.issues[0].message.contains("account_id"));
}

#[test]
fn segment_names_keep_their_case() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_text(dir.path(), &format!("{RULE}[rules.segments]\nStaffingAgency = 99\n")).unwrap();
    assert_eq!(cfg.rules[0].segments.get("StaffingAgency"), Some(&99));
}

#[test]
fn syntax_errors_and_missing_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_text(dir.path(), "[[rules]\nname = 1\n[engine]\ndry_run = \n").unwrap_err();
    assert!(!err.is_unreadable());
    let at: Vec<(&Origin, Option<&str>)> = err.issues.iter().map(|i| (&i.origin, i.key.as_deref())).collect();
    assert_eq!(
        at,
        vec![
            (&Origin::File(Some((1, 9))), None),
            (&Origin::File(Some((4, 11))), None)
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(!text.contains("key `"), "{text}");
    assert!(text.contains("cvguard.toml:1:9: unclosed array table"), "{text}");

    let err = load(&ConfigSource::File(dir.path().join("nope.toml")), &Overrides::default()).unwrap_err();
    assert!(err.is_unreadable());
    assert!(
        err.to_string().contains("nope.toml: cannot read the config file"),
        "{err}"
    );
}

#[test]
fn service_sections_parse_with_dotted_librdkafka_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[source]
kind = "kafka"
[http]
listen = "127.0.0.1:9999"
[state]
dir = "/tmp/x"
snapshot_interval = "10s"
[kafka]
topics = ["a", "b"]
dead_letter_topic = "dlq"
[kafka.properties]
"bootstrap.servers" = "127.0.0.1:9092"
"group.id" = "g"
"session.timeout.ms" = 6000
[[sinks]]
kind = "jsonl"
path = "out.jsonl"
[[sinks]]
kind = "stdout"
{RULE}"#
    );
    let cfg = load_text(dir.path(), &text).unwrap();
    assert_eq!(cfg.source.kind, SourceKind::Kafka);
    assert_eq!(cfg.kafka.topics, vec!["a", "b"]);
    let props = cfg.kafka.client_properties();
    assert_eq!(
        props.get("bootstrap.servers").map(String::as_str),
        Some("127.0.0.1:9092")
    );
    assert_eq!(props.get("session.timeout.ms").map(String::as_str), Some("6000"));
    assert_eq!(cfg.timing.snapshot_interval, std::time::Duration::from_secs(10));
    assert_eq!(
        cfg.sinks,
        vec![
            SinkSpec::Jsonl {
                path: dir.path().join("out.jsonl").display().to_string()
            },
            SinkSpec::Stdout {}
        ]
    );

    let err = load_text(
        dir.path(),
        &format!("[source]\nkind = \"kafka\"\n[http]\nlisten = \"nowhere\"\n[[sinks]]\nkind = \"fax\"\n{RULE}"),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().filter_map(|i| i.key.as_deref()).collect();
    assert!(keys.contains(&"http.listen"), "{keys:?}");
    assert!(keys.contains(&"kafka.properties.\"bootstrap.servers\""), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("sinks[0]")), "{keys:?}");
}

#[test]
fn roles_nest_and_ingest_stands_apart() {
    use Role::*;
    assert!(Admin.allows(Responder) && Admin.allows(Viewer) && Admin.allows(Ingest));
    assert!(Responder.allows(Viewer) && Responder.allows(Responder) && !Responder.allows(Admin));
    assert!(Viewer.allows(Viewer) && !Viewer.allows(Responder));
    assert!(!Viewer.allows(Ingest) && !Responder.allows(Ingest));
    assert!(Ingest.allows(Ingest) && !Ingest.allows(Viewer));
    let dir = tempfile::tempdir().unwrap();
    let err = load_text(
        dir.path(),
        &format!("[[http.tokens]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"abc\"\n[[http.tokens]]\nname = \"a\"\nrole = \"god\"\nsha256 = \"{}\"\n{RULE}", "0".repeat(64)),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().filter_map(|i| i.key.as_deref()).collect();
    assert!(keys.contains(&"http.tokens[0].sha256"), "{keys:?}");
    assert!(keys.contains(&"http.tokens[1].role"), "{keys:?}");
}

/// The breaks of issue #15: two in `[engine]`, three in one rule, each with its line.
const BROKEN: &str = r#"[engine]
dry_rnu = true
max_cv_ids = "lots"

[[rules]]
name = "fine"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24h"
threshold = 10

[[rules]]
name = "broken"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "5 parsecs"
threshold = -5
response2 = "suspend"
"#;

#[test]
fn every_key_of_every_table_is_checked_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_text(dir.path(), BROKEN).unwrap_err();
    let got: Vec<(Origin, Option<&str>, Option<&str>)> = err
        .issues
        .iter()
        .map(|i| (i.origin.clone(), i.rule.as_deref(), i.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Origin::File(Some((2, 1))), None, Some("engine.dry_rnu")),
            (Origin::File(Some((3, 14))), None, Some("engine.max_cv_ids")),
            (Origin::File(Some((18, 10))), Some("broken"), Some("window")),
            (Origin::File(Some((19, 13))), Some("broken"), Some("threshold")),
            (Origin::File(Some((20, 1))), Some("broken"), Some("response2")),
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: 5 problems\n", err.file)), "{text}");
    for line in [
        "cvguard.toml:2:1: key `engine.dry_rnu`: unknown key; did you mean `dry_run`?",
        "cvguard.toml:3:14: key `engine.max_cv_ids`: invalid type: string \"lots\", expected a whole number ≥ 0",
        "cvguard.toml:18:10: rule `broken`, key `window`: `5 parsecs` is not a duration",
        "cvguard.toml:19:13: rule `broken`, key `threshold`: invalid value: integer `-5`, expected a whole number ≥ 0",
        "cvguard.toml:20:1: rule `broken`, key `response2`: unknown key; did you mean `response`?",
    ] {
        assert!(text.contains(line), "{line}\nnot in\n{text}");
    }
}

#[test]
fn a_missing_key_points_at_its_table_and_a_bad_required_one_is_not_also_missing() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "[[rules]]\nname = \"r\"\nactions = [\"cv_view\", 7]\ngroup_by = 3\nmeasure = \"events\"\nthreshold = 1\n";
    let err = load_text(dir.path(), text).unwrap_err();
    let got: Vec<(Origin, Option<&str>, &str)> = err
        .issues
        .iter()
        .map(|i| (i.origin.clone(), i.key.as_deref(), i.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Origin::File(Some((1, 1))), Some("window"), "is required"),
            (
                Origin::File(Some((3, 23))),
                Some("actions[1]"),
                "invalid type: integer `7`, expected a string"
            ),
            (
                Origin::File(Some((4, 12))),
                Some("group_by"),
                "invalid type: integer `3`, expected string or map"
            ),
        ],
        "{err}"
    );
}

#[test]
fn sinks_and_tokens_are_checked_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[sinks]]\nkind = \"jsonl\"\n[[sinks]]\nkind = \"webhook\"\nurl = \"http://x\"\ntimeout = \"soon\"\nretries = 3\n[[sinks]]\nkind = \"fax\"\n{RULE}"
    );
    let err = load_text(dir.path(), &text).unwrap_err();
    let got: Vec<(Option<&str>, Origin)> = err
        .issues
        .iter()
        .map(|i| (i.key.as_deref(), i.origin.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("sinks[0].path"), Origin::File(Some((1, 1)))),
            (Some("sinks[1].timeout"), Origin::File(Some((6, 11)))),
            (Some("sinks[1].retries"), Origin::File(Some((7, 1)))),
            (Some("sinks[2].kind"), Origin::File(Some((9, 8)))),
        ],
        "{err}"
    );
    assert!(err.issues[3].message.contains("unknown variant `fax`"), "{err}");
}

#[test]
fn a_rule_action_no_event_has_is_a_warning_with_the_nearest_action() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_text(
        dir.path(),
        &RULE.replace("[\"cv_view\"]", "[\"cv_view\", \"cv_serach\", \"print_cv\"]"),
    )
    .unwrap();
    let got: Vec<(Origin, Option<&str>, Option<&str>)> = cfg
        .warnings
        .iter()
        .map(|w| (w.origin.clone(), w.rule.as_deref(), w.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Origin::File(Some((4, 23))), Some("mass"), Some("actions[1]")),
            (Origin::File(Some((4, 36))), Some("mass"), Some("actions[2]")),
        ]
    );
    assert!(
        cfg.warnings[0].message.ends_with("did you mean `cv_search`?"),
        "{}",
        cfg.warnings[0]
    );
    assert!(!cfg.warnings[1].message.contains("did you mean"), "{}", cfg.warnings[1]);
    assert!(load_text(dir.path(), RULE).unwrap().warnings.is_empty());
    let shipped = load(&ConfigSource::Embedded, &Overrides::default()).unwrap();
    assert!(shipped.warnings.is_empty(), "{:?}", shipped.warnings);
}

#[test]
fn paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    fs::create_dir(&sub).unwrap();
    write(&sub, "accounts.csv", "account_id\na\n");
    let text = format!(
        "[state]\ndir = \"data/state\"\n[store]\nurl = \"sqlite://data/x.db?mode=rwc\"\n[profiles]\npath = \"accounts.csv\"\n\
         [[sinks]]\nkind = \"jsonl\"\npath = \"out/alerts.jsonl\"\n[[sinks]]\nkind = \"jsonl\"\npath = \"/abs/alerts.jsonl\"\n{RULE}"
    );
    let path = write(&sub, "c.toml", &text);
    let cfg = load(&ConfigSource::File(path), &Overrides::default()).unwrap();
    let at = |p: &str| sub.join(p).display().to_string();
    assert_eq!(cfg.state.dir, at("data/state"));
    assert_eq!(cfg.store.url, format!("sqlite://{}?mode=rwc", at("data/x.db")));
    assert_eq!(cfg.profiles_path, Some(sub.join("accounts.csv")));
    assert_eq!(
        cfg.sinks,
        vec![
            SinkSpec::Jsonl {
                path: at("out/alerts.jsonl")
            },
            SinkSpec::Jsonl {
                path: "/abs/alerts.jsonl".into()
            }
        ]
    );

    // A config named without a folder: its paths stay relative to the working directory,
    // which is its folder.
    let cfg = load(&ConfigSource::File("c.toml".into()), &Overrides::default());
    assert!(cfg.is_err_and(|e| e.is_unreadable()));

    // The embedded default has no folder: the working directory.
    let embedded = load(&ConfigSource::Embedded, &Overrides::default()).unwrap();
    assert_eq!(embedded.state.dir, "data/state");
    assert_eq!(embedded.store.url, "sqlite://data/cvguard.db");
    assert_eq!(
        embedded.sinks,
        vec![SinkSpec::Jsonl {
            path: "data/alerts.jsonl".into()
        }]
    );
    let postgres = load_text(dir.path(), &format!("[store]\nurl = \"postgres://u@h/db\"\n{RULE}")).unwrap();
    assert_eq!(postgres.store.url, "postgres://u@h/db");
}

#[test]
fn the_effective_config_has_every_section_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_text(dir.path(), RULE).unwrap();
    let all = cfg.effective();
    for section in [
        "engine",
        "profiles",
        "allowlist",
        "rules",
        "source",
        "http",
        "state",
        "service",
        "kafka",
        "sinks",
        "store",
        "suspend",
        "log",
    ] {
        assert!(all.get(section).is_some(), "{section} missing from {all}");
    }
    assert_eq!(all["engine"]["max_cv_ids"], 10_000);
    assert_eq!(all["engine"]["dedupe_window"], "10m");
    assert_eq!(all["http"]["listen"], "127.0.0.1:8088");
    assert_eq!(all["suspend"]["secret_env"], "CVGUARD_SUSPEND_SECRET");
    assert_eq!(all["rules"][0]["response"], "alert");
    assert_eq!(all["rules"][0]["severity"], "high");
    assert_eq!(all["rules"][0]["dry_run"], false);
    assert_eq!(
        all["store"]["url"],
        format!("sqlite://{}", dir.path().join("data/cvguard.db").display())
    );
}

#[test]
fn key_paths_read_and_print_as_the_rule_compiler_writes_them() {
    for text in [
        "engine.dedupe_window",
        "http.tokens[0].sha256",
        "kafka.properties.\"bootstrap.servers\"",
        "rules[3].baseline.history",
    ] {
        assert_eq!(document::KeyPath::parse(text).to_string(), text);
    }
}

#[test]
fn a_profile_file_from_the_command_line_is_blamed_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", RULE);
    let overrides = Overrides {
        profiles_path: Some(dir.path().join("nope.csv")),
    };
    let err = load(&ConfigSource::File(path), &overrides).unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].origin, Origin::CommandLine);
    assert!(
        err.to_string().contains("\n  command line: cannot read profile file"),
        "{err}"
    );
}

#[test]
fn a_syntax_error_is_listed_in_the_file_order_with_the_problems_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[engine]\ndry_rnu = true\nmax_cv_ids = \"lots\"\n[[rules]]\nname = \"x\"\nwindow = \n";
    let err = load_text(dir.path(), text).unwrap_err();
    let at: Vec<(Origin, Option<&str>)> = err
        .issues
        .iter()
        .map(|i| (i.origin.clone(), i.key.as_deref()))
        .collect();
    assert_eq!(
        at,
        vec![
            (Origin::File(Some((2, 1))), Some("engine.dry_rnu")),
            (Origin::File(Some((3, 14))), Some("engine.max_cv_ids")),
            (Origin::File(Some((6, 10))), None),
        ],
        "{err}"
    );
}

#[test]
fn warnings_are_listed_after_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[engine]\ndry_rnu = true\n{}",
        RULE.replace("\"cv_view\"", "\"cv_veiw\"")
    );
    let err = load_text(dir.path(), &text).unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.warnings.len(), 1, "{err}");
    let text = err.to_string();
    let (errors, warnings) = text.split_once("\nand 1 warning\n").expect(&text);
    assert!(errors.contains("key `engine.dry_rnu`"), "{text}");
    assert!(
        warnings.contains("rule `mass`, key `actions[0]`: no known event has the action `cv_veiw`"),
        "{text}"
    );
    let json = err.to_json();
    let severities: Vec<&str> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["severity"].as_str().unwrap())
        .collect();
    assert_eq!(severities, ["error", "warning"], "{json}");
    assert_eq!(json["problems"][0]["line"], 2);
    assert_eq!(json["problems"][0]["column"], 1);
    assert_eq!(json["problems"][0]["key"], "engine.dry_rnu");
}

#[test]
fn a_url_cvguard_would_call_is_checked_and_left_out_of_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[suspend]\nurl = \"platform.example/suspend\"\n[service]\nadvertise_url = \"http://:8088\"\n[[sinks]]\nkind = \"webhook\"\nurl = \"not a url with password=LEAKME\"\n[[sinks]]\nkind = \"alertmanager\"\nurl = \"https://am.example:9093\"\n{RULE}"
    );
    let err = load_text(dir.path(), &text).unwrap_err();
    let mut keys: Vec<&str> = err.issues.iter().filter_map(|i| i.key.as_deref()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["service.advertise_url", "sinks[0].url", "suspend.url"],
        "{err}"
    );
    assert!(!err.to_string().contains("LEAKME"), "{err}");
    for good in ["http://x", "https://user:pw@host:1/p?q=1", "http://[::1]:8088"] {
        assert!(super::is_http_url(good), "{good}");
    }
}
