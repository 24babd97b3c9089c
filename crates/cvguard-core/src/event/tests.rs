use super::*;

fn parse(line: &str) -> Result<Event<'_>, RejectReason> {
    parse_event(line.as_bytes(), &ParseLimits::default())
}

fn rejected(line: &str) -> RejectReason {
    parse(line).expect_err(line)
}

#[test]
fn accepts_the_full_contract_and_borrows() {
    let line = r#"{"ts":"2024-05-04T10:00:00Z","account_id":"acc-1","action":"cv_download",
        "cv_ids":["cv-1","cv-2"],"cv_id":"cv-3","event_id":"e1","user_id":"u1","org_id":"o1",
        "ip":"10.0.0.1","user_agent":"curl","cv_visibility":"named","extra":{"x":[1,2]}}"#;
    let ev = parse(line).unwrap();
    assert_eq!(ev.ts, 1_714_816_800_000);
    assert_eq!(ev.account_id, "acc-1");
    assert!(matches!(ev.account_id, Cow::Borrowed(_)));
    assert_eq!(ev.action, "cv_download");
    assert_eq!(ev.cv_ids, vec!["cv-1", "cv-2", "cv-3"]);
    assert_eq!(ev.event_id.as_deref(), Some("e1"));
    assert_eq!(ev.user_id.as_deref(), Some("u1"));
    assert_eq!(ev.org_id.as_deref(), Some("o1"));
    assert_eq!(ev.ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(ev.user_agent.as_deref(), Some("curl"));
    assert_eq!(ev.visibility, Visibility::Named);
}

#[test]
fn accepts_epoch_millis_and_escaped_strings() {
    let ev = parse(r#"{"ts":1714816800000,"account_id":"a\u00e9","action":"cv_search"}"#).unwrap();
    assert_eq!(ev.ts, 1_714_816_800_000);
    assert_eq!(ev.account_id, "aé");
    assert!(ev.cv_ids.is_empty());
    assert_eq!(ev.visibility, Visibility::Unknown);
}

#[test]
fn null_and_empty_optionals_are_absent() {
    let ev =
        parse(r#"{"ts":1,"account_id":"a","action":"x","ip":null,"user_id":"","cv_id":null,"cv_visibility":null}"#)
            .unwrap();
    assert_eq!(ev.ip, None);
    assert_eq!(ev.user_id, None);
    assert!(ev.cv_ids.is_empty());
}

#[test]
fn invalid_json() {
    assert_eq!(rejected(r#"{"ts":1,"account_id":"a""#), RejectReason::InvalidJson);
    assert_eq!(rejected("not json"), RejectReason::InvalidJson);
    assert_eq!(rejected(r#"{"ts":1} trailing"#), RejectReason::InvalidJson);
    assert_eq!(
        parse_event(b"{\"ts\":\"\xff\"}", &ParseLimits::default()).unwrap_err(),
        RejectReason::InvalidJson
    );
}

#[test]
fn not_an_object() {
    assert_eq!(rejected("[1,2]"), RejectReason::NotAnObject);
    assert_eq!(rejected("42"), RejectReason::NotAnObject);
    assert_eq!(rejected(r#""text""#), RejectReason::NotAnObject);
}

#[test]
fn missing_required_fields() {
    assert_eq!(rejected(r#"{"account_id":"a","action":"x"}"#), RejectReason::MissingTs);
    assert_eq!(rejected(r#"{"ts":1,"action":"x"}"#), RejectReason::MissingAccountId);
    assert_eq!(rejected(r#"{"ts":1,"account_id":"a"}"#), RejectReason::MissingAction);
}

#[test]
fn invalid_ts() {
    for ts in [
        r#""2024-13-01T00:00:00Z""#,
        "1.5",
        "-1",
        "true",
        "null",
        "[1]",
        r#"{"a":1}"#,
        "99999999999999999",
        r#""2107-01-01T00:00:00Z""#,
        "4294967296000",
    ] {
        let line = format!(r#"{{"ts":{ts},"account_id":"a","action":"x"}}"#);
        assert_eq!(rejected(&line), RejectReason::InvalidTs, "{line}");
    }
}

#[test]
fn invalid_account_id() {
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"","action":"x"}"#),
        RejectReason::InvalidAccountId
    );
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":7,"action":"x"}"#),
        RejectReason::InvalidAccountId
    );
    let long = "a".repeat(MAX_ACCOUNT_ID_BYTES + 1);
    assert_eq!(
        rejected(&format!(r#"{{"ts":1,"account_id":"{long}","action":"x"}}"#)),
        RejectReason::InvalidAccountId
    );
    let max = "a".repeat(MAX_ACCOUNT_ID_BYTES);
    assert!(parse(&format!(r#"{{"ts":1,"account_id":"{max}","action":"x"}}"#)).is_ok());
}

#[test]
fn invalid_action() {
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":""}"#),
        RejectReason::InvalidAction
    );
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":["x"]}"#),
        RejectReason::InvalidAction
    );
}

#[test]
fn invalid_cv_ids() {
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":"x","cv_ids":"cv-1"}"#),
        RejectReason::InvalidCvIds
    );
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":"x","cv_ids":["cv-1",2]}"#),
        RejectReason::InvalidCvIds
    );
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":"x","cv_id":5}"#),
        RejectReason::InvalidCvIds
    );
}

#[test]
fn too_many_cv_ids_is_rejected_not_truncated() {
    let limits = ParseLimits {
        max_cv_ids: 3,
        ..ParseLimits::default()
    };
    let ok = r#"{"ts":1,"account_id":"a","action":"x","cv_ids":["1","2","3"]}"#;
    assert_eq!(parse_event(ok.as_bytes(), &limits).unwrap().cv_ids.len(), 3);
    let over = r#"{"ts":1,"account_id":"a","action":"x","cv_ids":["1","2","3","4"]}"#;
    assert_eq!(
        parse_event(over.as_bytes(), &limits).unwrap_err(),
        RejectReason::TooManyCvIds
    );
    let over_with_single = r#"{"ts":1,"account_id":"a","action":"x","cv_ids":["1","2","3"],"cv_id":"4"}"#;
    assert_eq!(
        parse_event(over_with_single.as_bytes(), &limits).unwrap_err(),
        RejectReason::TooManyCvIds
    );
}

#[test]
fn invalid_optional_field() {
    for field in ["event_id", "user_id", "org_id", "ip", "user_agent"] {
        let line = format!(r#"{{"ts":1,"account_id":"a","action":"x","{field}":12}}"#);
        assert_eq!(rejected(&line), RejectReason::InvalidOptionalField, "{field}");
    }
}

#[test]
fn invalid_visibility() {
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":"x","cv_visibility":"public"}"#),
        RejectReason::InvalidVisibility
    );
    assert_eq!(
        rejected(r#"{"ts":1,"account_id":"a","action":"x","cv_visibility":true}"#),
        RejectReason::InvalidVisibility
    );
}

#[test]
fn too_large() {
    let limits = ParseLimits {
        max_event_bytes: 40,
        ..ParseLimits::default()
    };
    let line = r#"{"ts":1,"account_id":"a","action":"x","pad":"xxxxxxxxxxxxxxxxxxxx"}"#;
    assert_eq!(
        parse_event(line.as_bytes(), &limits).unwrap_err(),
        RejectReason::TooLarge
    );
}

#[test]
fn reason_names_are_unique_and_indexed() {
    let mut names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), RejectReason::ALL.len());
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}
