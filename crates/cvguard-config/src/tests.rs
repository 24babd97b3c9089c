use super::*;
use std::fs;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn load_text(dir: &Path, text: &str) -> Result<Config, ConfigError> {
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
    let found: Vec<(Option<&str>, &str)> = err.issues.iter().map(|i| (i.rule.as_deref(), i.key.as_str())).collect();
    for expected in [
        (None, "engine.colour"),
        (None, "surprise"),
        (None, "profiles.path"),
        (Some("typo"), "thresold"),
        (Some("badkind"), "group_by"),
    ] {
        assert!(found.contains(&expected), "{expected:?} not in {found:?}");
    }
    // The section with an unknown key is rejected whole, so the rule-level problems
    // (checked once every section parsed) still come: duplicate name and bad window.
    let text = err.to_string();
    assert!(text.contains("missing.csv"), "{text}");
    assert!(text.contains("unknown field `thresold`"), "{text}");
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
    let found: Vec<(Option<&str>, &str)> = err.issues.iter().map(|i| (i.rule.as_deref(), i.key.as_str())).collect();
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
    assert_eq!(err.issues[0].key, "profiles.path");
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
    let err = load_text(dir.path(), "[[rules]\nname = 1").unwrap_err();
    assert_eq!(err.issues.len(), 1);
    let err = load(&ConfigSource::File(dir.path().join("nope.toml")), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("does not exist"));
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
                path: "out.jsonl".into()
            },
            SinkSpec::Stdout {}
        ]
    );

    let err = load_text(
        dir.path(),
        &format!("[source]\nkind = \"kafka\"\n[http]\nlisten = \"nowhere\"\n[[sinks]]\nkind = \"fax\"\n{RULE}"),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
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
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.iter().any(|k| k.starts_with("http.")), "{keys:?}");
}
