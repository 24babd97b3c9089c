use super::*;
use crate::profiles::AccountProfile;

pub(crate) fn spec(name: &str, kind: KeyKind, measure: Measure, window: &str, threshold: u64) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        actions: vec!["cv_view".into(), "cv_download".into()],
        group_by: kind,
        measure,
        window: window.into(),
        threshold,
        per_vacancy: None,
        response: Response::Alert,
        severity: Severity::High,
        segments: BTreeMap::new(),
        dry_run: false,
        description: None,
        baseline: None,
    }
}

fn profiles() -> Profiles {
    let p = |segment: Option<&str>, org: Option<&str>, vac: u64| AccountProfile {
        segment: segment.map(String::from),
        org_id: org.map(String::from),
        open_vacancies: vac,
    };
    Profiles::from_records(vec![
        ("bakery".to_string(), p(None, None, 1)),
        ("agency".to_string(), p(Some("staffing_agency"), Some("org-a"), 0)),
        ("bigco".to_string(), p(None, Some("org-b"), 120)),
        ("bigco-2".to_string(), p(None, Some("org-b"), 30)),
    ])
}

#[test]
fn threshold_selection_default_segment_and_per_vacancy() {
    let mut s = spec("mass", KeyKind::AccountId, Measure::DistinctCvs, "24h", 4000);
    s.per_vacancy = Some(100);
    s.segments.insert("staffing_agency".into(), 40_000);
    let set = RuleSet::compile(&EngineSpec::default(), &[s], profiles(), &[]).unwrap();
    let rule = &set.rules[0];
    assert_eq!(
        set.effective_threshold(rule, "unknown", None),
        4000,
        "no profile: threshold"
    );
    assert_eq!(
        set.effective_threshold(rule, "bakery", None),
        4000,
        "1 vacancy x 100 < 4000"
    );
    assert_eq!(
        set.effective_threshold(rule, "agency", None),
        40_000,
        "segment replaces threshold"
    );
    assert_eq!(
        set.effective_threshold(rule, "bigco", None),
        12_000,
        "120 vacancies x 100"
    );
}

#[test]
fn a_segment_can_also_lower_the_threshold() {
    let mut s = spec("mass", KeyKind::AccountId, Measure::DistinctCvs, "24h", 4000);
    s.segments.insert("staffing_agency".into(), 50);
    let set = RuleSet::compile(&EngineSpec::default(), &[s], profiles(), &[]).unwrap();
    assert_eq!(set.effective_threshold(&set.rules[0], "agency", None), 50);
}

#[test]
fn org_user_and_ip_thresholds() {
    let mut org = spec("org", KeyKind::OrgId, Measure::DistinctCvs, "24h", 8000);
    org.per_vacancy = Some(100);
    org.segments.insert("staffing_agency".into(), 60_000);
    let mut user = spec("user", KeyKind::UserId, Measure::DistinctCvs, "24h", 3000);
    user.segments.insert("staffing_agency".into(), 30_000);
    let ip = spec("ip", KeyKind::Ip, Measure::DistinctCvs, "24h", 50_000);
    let set = RuleSet::compile(&EngineSpec::default(), &[org, user, ip], profiles(), &[]).unwrap();
    let [org, user, ip] = [&set.rules[0], &set.rules[1], &set.rules[2]];
    assert_eq!(set.effective_threshold(org, "org-a", None), 60_000);
    assert_eq!(set.effective_threshold(org, "org-b", None), 15_000, "(120 + 30) x 100");
    assert_eq!(set.effective_threshold(org, "org-x", None), 8000);
    assert_eq!(set.effective_threshold(user, "u1", Some("agency")), 30_000);
    assert_eq!(set.effective_threshold(user, "u1", Some("bakery")), 3000);
    assert_eq!(set.effective_threshold(ip, "10.0.0.1", Some("agency")), 50_000);
}

#[test]
fn every_problem_is_reported_with_rule_and_key() {
    let mut a = spec("dup", KeyKind::AccountId, Measure::Events, "24h", 10);
    a.actions.clear();
    let mut b = spec("dup", KeyKind::AccountId, Measure::Events, "soon", 0);
    b.per_vacancy = Some(0);
    let mut c = spec("", KeyKind::Ip, Measure::Events, "1.5s", 10);
    c.segments.insert("x".into(), 0);
    let engine = EngineSpec {
        allowed_lateness: "later".into(),
        ..EngineSpec::default()
    };
    let issues = RuleSet::compile(&engine, &[a, b, c], Profiles::default(), &[]).unwrap_err();
    let found: Vec<(Option<&str>, &str)> = issues.iter().map(|i| (i.rule.as_deref(), i.key.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (None, "engine.allowed_lateness"),
            (Some("dup"), "actions"),
            (Some("dup"), "name"),
            (Some("dup"), "window"),
            (Some("dup"), "threshold"),
            (Some("dup"), "per_vacancy"),
            (Some("rules[2]"), "name"),
            (Some("rules[2]"), "window"),
            (Some("rules[2]"), "segments.x"),
            (Some("rules[2]"), "segments"),
        ]
    );
    assert!(issues[2].message.contains("duplicate"));
    assert_eq!(
        issues[2].to_string(),
        "rule `dup`, key `name`: duplicate rule name `dup`"
    );
}

#[test]
fn windows_parse_in_whole_seconds_within_limits() {
    assert_eq!(parse_window("24h"), Ok(86_400));
    assert_eq!(parse_window("2days"), Ok(172_800));
    assert_eq!(parse_window(" 10m "), Ok(600));
    assert!(parse_window("0s").is_err());
    assert!(parse_window("500ms").is_err());
    assert!(parse_window("32days").is_err());
    assert!(parse_window("a while").is_err());
}

#[test]
fn at_most_64_rules_per_key_kind() {
    let specs: Vec<RuleSpec> = (0..66)
        .map(|i| spec(&format!("r{i}"), KeyKind::Ip, Measure::Events, "1h", 10))
        .chain([spec("acc", KeyKind::AccountId, Measure::Events, "1h", 10)])
        .collect();
    let issues = RuleSet::compile(&EngineSpec::default(), &specs, Profiles::default(), &[]).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].rule.as_deref(), Some("r64"));
    assert_eq!(issues[0].key, "group_by");
    assert!(
        issues[0].message.contains("more than 64 rules group by `ip`"),
        "{}",
        issues[0].message
    );
    assert!(RuleSet::compile(&EngineSpec::default(), &specs[..64], Profiles::default(), &[]).is_ok());
}

/// A key's own field counted per key is always 1: refused, naming the rule and the key;
/// the other distinct measures of other fields compile.
#[test]
fn a_keys_own_field_as_its_distinct_measure_is_refused() {
    let refused = [
        spec("a", KeyKind::AccountId, Measure::DistinctAccounts, "1h", 5),
        spec("u", KeyKind::UserId, Measure::DistinctUsers, "1h", 5),
        spec("i", KeyKind::Ip, Measure::DistinctIps, "1h", 5),
    ];
    let issues = RuleSet::compile(&EngineSpec::default(), &refused, Profiles::default(), &[]).unwrap_err();
    let found: Vec<(Option<&str>, &str)> = issues.iter().map(|i| (i.rule.as_deref(), i.key.as_str())).collect();
    assert_eq!(
        found,
        vec![(Some("a"), "measure"), (Some("u"), "measure"), (Some("i"), "measure")]
    );
    assert!(issues[0].message.contains("always 1"));
    let fine = [
        spec("ring", KeyKind::Ip, Measure::DistinctAccounts, "24h", 10),
        spec("shared", KeyKind::AccountId, Measure::DistinctIps, "1h", 20),
        spec("team", KeyKind::OrgId, Measure::DistinctUsers, "1h", 20),
    ];
    assert!(RuleSet::compile(&EngineSpec::default(), &fine, Profiles::default(), &[]).is_ok());
}

/// A repeat later than the dedupe window but within the allowed lateness would be applied
/// again: the window must cover the lateness, or be off.
#[test]
fn the_dedupe_window_must_cover_the_allowed_lateness() {
    let rules = [spec("r", KeyKind::AccountId, Measure::Events, "1h", 5)];
    let short = EngineSpec {
        allowed_lateness: "2h".into(),
        dedupe_window: "10m".into(),
        ..EngineSpec::default()
    };
    let issues = RuleSet::compile(&short, &rules, Profiles::default(), &[]).unwrap_err();
    assert_eq!(issues[0].key, "engine.dedupe_window");
    let off = EngineSpec {
        dedupe_window: "0s".into(),
        ..short
    };
    assert!(RuleSet::compile(&off, &rules, Profiles::default(), &[]).is_ok());
}

/// A snapshot is restored under rules of the same shape: what decides only (thresholds,
/// responses, the history's factor) may change across a restart, as across a reload;
/// what shapes the state (window, actions, the history's length) may not.
#[test]
fn the_fingerprint_covers_what_shapes_state_and_nothing_else() {
    let base = || {
        let mut r = spec("surge", KeyKind::AccountId, Measure::DistinctCvs, "24h", 400);
        r.baseline = Some(crate::baseline::BaselineSpec {
            history: "28d".into(),
            statistic: crate::baseline::Statistic::P90,
            factor: 8.0,
            min_history: "7d".into(),
        });
        r
    };
    let print = |r: RuleSpec| {
        RuleSet::compile(&EngineSpec::default(), &[r], Profiles::default(), &[])
            .unwrap()
            .fingerprint()
    };
    let same = print(base());
    let decides: Vec<fn(&mut RuleSpec)> = vec![
        |r| r.threshold = 500,
        |r| r.severity = Severity::Low,
        |r| r.response = Response::Suspend,
        |r| r.dry_run = true,
        |r| r.per_vacancy = Some(9),
        |r| r.description = Some("why".into()),
        |r| r.baseline.as_mut().unwrap().factor = 4.0,
        |r| r.baseline.as_mut().unwrap().statistic = crate::baseline::Statistic::Max,
        |r| r.baseline.as_mut().unwrap().min_history = "3d".into(),
        |r| r.actions.reverse(),
    ];
    for change in decides {
        let mut r = base();
        change(&mut r);
        assert_eq!(print(r), same);
    }
    let shapes: Vec<fn(&mut RuleSpec)> = vec![
        |r| r.window = "12h".into(),
        |r| r.actions = vec!["cv_view".into()],
        |r| r.measure = Measure::Events,
        |r| r.name = "other".into(),
        |r| r.baseline.as_mut().unwrap().history = "14d".into(),
        |r| r.baseline = None,
    ];
    for change in shapes {
        let mut r = base();
        change(&mut r);
        assert_ne!(print(r), same);
    }
}
