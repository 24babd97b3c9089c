use super::*;
use crate::event::Visibility;
use crate::profiles::{AccountProfile, Profiles};
use crate::rules::{EngineSpec, RuleSpec, Severity, ThresholdSource};
use std::collections::BTreeMap;

const T0: i64 = 1_714_780_800_000; // 2024-05-04T00:00:00Z

fn rule(name: &str, kind: KeyKind, measure: Measure, window: &str, threshold: u64) -> RuleSpec {
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

fn engine_with(engine: EngineSpec, rules: Vec<RuleSpec>, profiles: Profiles, allow: &[&str]) -> Engine {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    Engine::new(Arc::new(RuleSet::compile(&engine, &rules, profiles, &allow).unwrap()))
}

fn engine(rules: Vec<RuleSpec>) -> Engine {
    engine_with(EngineSpec::default(), rules, Profiles::default(), &[])
}

/// Sends one event at `T0 + secs` seconds and returns the alerts it caused.
fn send(e: &mut Engine, secs: i64, account: &str, action: &str, cvs: &[&str]) -> Vec<Alert> {
    send_json(
        e,
        &serde_json::json!({"ts": T0 + secs * 1000, "account_id": account, "action": action, "cv_ids": cvs}),
    )
}

fn send_json(e: &mut Engine, v: &serde_json::Value) -> Vec<Alert> {
    let mut out = Vec::new();
    let outcome = e.process_bytes(v.to_string().as_bytes(), None, &mut out);
    assert_eq!(outcome, Outcome::Accepted, "{v}");
    out
}

/// The values the engine keeps running for `key`'s rules (what alerts report), as
/// opposed to `key_values`, which recounts.
fn running_values(e: &Engine, kind: KeyKind, key: &str) -> Vec<u64> {
    let layout = &e.layouts[kind.index()];
    let k = e.tables[kind.index()].get(key).expect("a live key");
    (0..k.thresholds.len()).map(|w| k.value(layout, w)).collect()
}

fn value_of(e: &Engine, kind: KeyKind, key: &str, rule: &str) -> u64 {
    e.key_values(kind, key)
        .iter()
        .find(|w| w.rule == rule)
        .map_or(0, |w| w.value)
}

#[test]
fn events_measure_counts_events_in_a_sliding_window() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "10s", 3)]);
    assert!(send(&mut e, 0, "a", "cv_view", &["1", "2"]).is_empty());
    assert!(send(&mut e, 5, "a", "cv_view", &[]).is_empty());
    let fired = send(&mut e, 9, "a", "cv_view", &["1"]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].value, 3);
    // At second 10 the event at second 0 leaves the 10s window.
    send(&mut e, 10, "b", "cv_view", &[]);
    assert_eq!(
        value_of(&e, KeyKind::AccountId, "a", "r"),
        2,
        "read as of the newest event"
    );
    send(&mut e, 15, "a", "cv_view", &[]);
    assert_eq!(value_of(&e, KeyKind::AccountId, "a", "r"), 2, "seconds 9 and 15");
}

#[test]
fn cvs_measure_counts_repeats() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Cvs, "1h", 5)]);
    assert!(send(&mut e, 0, "a", "cv_view", &["1", "2"]).is_empty());
    assert!(send(&mut e, 1, "a", "cv_view", &["1", "2"]).is_empty());
    let fired = send(&mut e, 2, "a", "cv_download", &["1"]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].value, 5);
    assert_eq!(fired[0].measure, Measure::Cvs);
}

#[test]
fn distinct_cvs_is_exact_and_split_by_visibility() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 4)]);
    send_json(
        &mut e,
        &serde_json::json!({"ts": T0, "account_id": "a", "action": "cv_view", "cv_ids": ["1", "2"], "cv_visibility": "anonymous"}),
    );
    assert!(send(&mut e, 1, "a", "cv_view", &["1", "2", "2"]).is_empty());
    let fired = send_json(
        &mut e,
        &serde_json::json!({"ts": T0 + 2000, "account_id": "a", "action": "cv_download", "cv_ids": ["2", "3", "4"], "cv_visibility": "named", "ip": "10.0.0.9", "user_id": "u1"}),
    );
    assert_eq!(fired.len(), 1);
    let a = &fired[0];
    assert_eq!(a.value, 4);
    assert_eq!(a.evidence.distinct_cvs, Some(4));
    assert_eq!(
        a.evidence.cvs_by_visibility,
        Some(VisibilityCounts {
            named: 3,
            anonymous: 1,
            unknown: 0
        })
    );
    assert_eq!(a.evidence.ips, vec!["10.0.0.9"]);
    assert_eq!(a.evidence.distinct_users, 1);
    assert_eq!(a.first_seen, "2024-05-04T00:00:00.000Z");
    assert_eq!(a.event_time, "2024-05-04T00:00:02.000Z");
    let exposed = e.exposure(KeyKind::AccountId, "a", "r");
    let rows: Vec<(&str, i64, &str, Visibility)> = exposed
        .iter()
        .map(|x| {
            (
                x.cv_id.as_str(),
                x.first_access_ms - T0,
                x.action.as_str(),
                x.visibility,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("1", 0, "cv_view", Visibility::Anonymous),
            ("2", 0, "cv_view", Visibility::Named),
            ("3", 2000, "cv_download", Visibility::Named),
            ("4", 2000, "cv_download", Visibility::Named),
        ]
    );
}

#[test]
fn fires_once_then_rearms_only_after_falling_below() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "10s", 2)]);
    send(&mut e, 0, "a", "cv_view", &[]);
    assert_eq!(send(&mut e, 1, "a", "cv_view", &[]).len(), 1);
    // Still at or above: no new alert.
    assert!(send(&mut e, 2, "a", "cv_view", &[]).is_empty());
    assert!(
        send(&mut e, 10, "a", "cv_view", &[]).is_empty(),
        "value 3 (seconds 1, 2, 10)"
    );
    // At 12 only seconds 10 and 12 remain... 2 >= 2: still the same incident.
    assert!(send(&mut e, 12, "a", "cv_view", &[]).is_empty());
    // At 30 everything before 21 is gone: value 1, re-armed; the next one fires again.
    assert!(send(&mut e, 30, "a", "cv_view", &[]).is_empty());
    assert_eq!(send(&mut e, 31, "a", "cv_view", &[]).len(), 1);
}

#[test]
fn late_events_are_counted_and_not_added() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "1h", 100)]);
    send(&mut e, 1000, "a", "cv_view", &[]);
    // Within the 5 minute lateness: accepted, out of order.
    send(&mut e, 1000 - 299, "a", "cv_view", &[]);
    assert_eq!(value_of(&e, KeyKind::AccountId, "a", "r"), 2);
    let mut out = Vec::new();
    let late = serde_json::json!({"ts": T0 + (1000 - 301) * 1000, "account_id": "a", "action": "cv_view"});
    assert_eq!(
        e.process_bytes(late.to_string().as_bytes(), None, &mut out),
        Outcome::Late
    );
    assert_eq!(value_of(&e, KeyKind::AccountId, "a", "r"), 2);
    assert_eq!(e.stats().late, 1);
    assert_eq!(e.stats().accepted, 2);
}

#[test]
fn future_events_are_rejected_against_the_source_clock() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "1h", 100)]);
    let mut out = Vec::new();
    let line = serde_json::json!({"ts": T0 + 301_000, "account_id": "a", "action": "cv_view"}).to_string();
    assert_eq!(
        e.process_bytes(line.as_bytes(), Some(T0), &mut out),
        Outcome::Rejected(RejectReason::FutureTs)
    );
    assert_eq!(
        e.process_bytes(line.as_bytes(), Some(T0 + 2000), &mut out),
        Outcome::Accepted
    );
    assert_eq!(e.stats().rejected[RejectReason::FutureTs.index()], 1);
    // The watermark follows the event only as far as its source's clock.
    assert_eq!(e.watermark(), Some(T0 + 2000 - 300_000));
}

/// One producer whose clock runs ahead (within `future_skew`) must not make every honest
/// event late: the watermark follows event time only up to the source's clock (#13).
#[test]
fn a_producer_with_a_fast_clock_cannot_make_honest_events_late() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 4000)]);
    let mut out = Vec::new();
    let clock = T0 + 3_600_000;
    let skewed = serde_json::json!({"ts": clock + 295_000, "account_id": "skewed", "action": "cv_view", "cv_id": "x"});
    assert_eq!(
        e.process_bytes(skewed.to_string().as_bytes(), Some(clock), &mut out),
        Outcome::Accepted
    );
    // 30 s later by the real clock, a harvest of 5,000 CVs stamped honestly a minute
    // before (a batch export): well inside the allowed lateness of 5 minutes.
    for b in 0..25 {
        let cvs: Vec<String> = (0..200).map(|i| format!("cv-{b}-{i}")).collect();
        let ev = serde_json::json!({"ts": clock - 60_000, "account_id": "harvester", "action": "cv_download", "cv_ids": cvs});
        assert_eq!(
            e.process_bytes(ev.to_string().as_bytes(), Some(clock + 30_000), &mut out),
            Outcome::Accepted
        );
    }
    assert_eq!(e.stats().late, 0);
    assert_eq!(out.len(), 1, "the harvest is caught");
    assert_eq!(out[0].value, 4000);
}

#[test]
fn rejections_are_counted_by_reason_and_processing_goes_on() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "1h", 2)]);
    let mut out = Vec::new();
    assert_eq!(
        e.process_bytes(b"{", None, &mut out),
        Outcome::Rejected(RejectReason::InvalidJson)
    );
    assert_eq!(
        e.process_bytes(b"[]", None, &mut out),
        Outcome::Rejected(RejectReason::NotAnObject)
    );
    send(&mut e, 0, "a", "cv_view", &[]);
    assert_eq!(send(&mut e, 0, "a", "cv_view", &[]).len(), 1);
    let s = e.stats();
    assert_eq!((s.events, s.accepted, s.rejected_total()), (4, 2, 2));
    let by: Vec<_> = s.rejected_by_reason().collect();
    assert_eq!(by, vec![(RejectReason::InvalidJson, 1), (RejectReason::NotAnObject, 1)]);
}

#[test]
fn segment_and_vacancy_thresholds_apply_per_account() {
    let mut r = rule("mass", KeyKind::AccountId, Measure::DistinctCvs, "24h", 4);
    r.per_vacancy = Some(3);
    r.segments.insert("staffing_agency".into(), 10);
    let profiles = Profiles::from_records(vec![
        (
            "agency".to_string(),
            AccountProfile {
                segment: Some("staffing_agency".into()),
                ..Default::default()
            },
        ),
        (
            "bigco".to_string(),
            AccountProfile {
                open_vacancies: 2,
                ..Default::default()
            },
        ),
    ]);
    let mut e = engine_with(EngineSpec::default(), vec![r], profiles, &[]);
    let cvs: Vec<String> = (0..12).map(|i| format!("cv-{i}")).collect();
    let cv_refs: Vec<&str> = cvs.iter().map(String::as_str).collect();
    let bakery = send(&mut e, 0, "bakery", "cv_view", &cv_refs[..4]);
    assert_eq!(bakery.iter().map(|a| a.threshold).collect::<Vec<_>>(), vec![4]);
    assert!(
        send(&mut e, 1, "bigco", "cv_view", &cv_refs[..5]).is_empty(),
        "threshold 6"
    );
    assert_eq!(send(&mut e, 2, "bigco", "cv_view", &cv_refs[5..6])[0].threshold, 6);
    assert!(
        send(&mut e, 3, "agency", "cv_view", &cv_refs[..9]).is_empty(),
        "threshold 10"
    );
    let agency = send(&mut e, 4, "agency", "cv_view", &cv_refs[9..10]);
    assert_eq!(agency[0].threshold, 10);
    // Each alert says which term set its threshold (#14), as does the account view.
    assert_eq!(bakery[0].threshold_source, ThresholdSource::Rule);
    assert_eq!(agency[0].threshold_source, ThresholdSource::Segment);
    let bigco = e.key_values(KeyKind::AccountId, "bigco");
    assert_eq!(
        (bigco[0].threshold, bigco[0].threshold_source),
        (6, ThresholdSource::PerVacancy)
    );
}

/// Each alert says how long after the first event still in its window it was decided,
/// in event time (#14).
#[test]
fn an_alert_says_its_time_to_detect_in_event_time() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3)]);
    let mut out = Vec::new();
    for (i, cv) in ["a", "b", "c"].iter().enumerate() {
        let ev =
            serde_json::json!({"ts": T0 + i as i64 * 600_000, "account_id": "h", "action": "cv_view", "cv_id": cv});
        e.process_bytes(ev.to_string().as_bytes(), None, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].time_to_detect_ms, 1_200_000);
}

#[test]
fn suspend_allowlist_and_dry_run_decide_the_action() {
    let mut r = rule("mass", KeyKind::AccountId, Measure::Events, "1h", 1);
    r.response = Response::Suspend;
    let mut quiet = rule("quiet", KeyKind::AccountId, Measure::Events, "1h", 1);
    quiet.response = Response::Suspend;
    quiet.dry_run = true;
    let mut e = engine_with(
        EngineSpec::default(),
        vec![r.clone(), quiet],
        Profiles::default(),
        &["partner"],
    );
    let a = send(&mut e, 0, "harvester", "cv_view", &[]);
    assert_eq!(
        a.iter()
            .map(|x| (x.rule.as_str(), x.action, x.reason))
            .collect::<Vec<_>>(),
        vec![
            ("mass", AlertAction::Suspend, AlertReason::RuleResponse),
            ("quiet", AlertAction::Alert, AlertReason::DryRun)
        ]
    );
    assert_eq!(a[0].suspend_accounts, vec!["harvester"]);
    let p = send(&mut e, 0, "partner", "cv_view", &[]);
    assert_eq!(
        (p[0].action, p[0].reason),
        (AlertAction::Alert, AlertReason::Allowlisted)
    );

    let global = EngineSpec {
        dry_run: true,
        ..EngineSpec::default()
    };
    let mut e = engine_with(global, vec![r], Profiles::default(), &[]);
    let d = send(&mut e, 0, "harvester", "cv_view", &[]);
    assert_eq!((d[0].action, d[0].reason), (AlertAction::Alert, AlertReason::DryRun));
    assert_eq!(e.stats().suspensions, 0);
}

#[test]
fn org_keys_come_from_the_event_or_the_profile_and_list_accounts() {
    let mut r = rule("org", KeyKind::OrgId, Measure::DistinctCvs, "24h", 4);
    r.response = Response::Suspend;
    let profiles = Profiles::from_records(vec![(
        "acc-2".to_string(),
        AccountProfile {
            org_id: Some("org-1".into()),
            ..Default::default()
        },
    )]);
    let mut e = engine_with(EngineSpec::default(), vec![r], profiles, &["acc-3"]);
    send_json(
        &mut e,
        &serde_json::json!({"ts": T0, "account_id": "acc-1", "org_id": "org-1", "action": "cv_view", "cv_ids": ["1", "2"]}),
    );
    assert!(send(&mut e, 1, "acc-2", "cv_view", &["2", "3"]).is_empty());
    assert!(
        send(&mut e, 1, "acc-9", "cv_view", &["4", "5", "6", "7"]).is_empty(),
        "no org"
    );
    let fired = send_json(
        &mut e,
        &serde_json::json!({"ts": T0 + 2000, "account_id": "acc-3", "org_id": "org-1", "action": "cv_view", "cv_ids": ["4"]}),
    );
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].key_kind, fired[0].key.as_str()), (KeyKind::OrgId, "org-1"));
    assert_eq!(fired[0].accounts, vec!["acc-1", "acc-2", "acc-3"]);
    assert_eq!(
        fired[0].suspend_accounts,
        vec!["acc-1", "acc-2"],
        "acc-3 is allowlisted"
    );
}

#[test]
fn memory_is_reclaimed_as_events_age_out() {
    let mut e = engine(vec![
        rule("short", KeyKind::AccountId, Measure::DistinctCvs, "1m", 1_000_000),
        rule("long", KeyKind::AccountId, Measure::DistinctCvs, "1h", 1_000_000),
        rule("ip", KeyKind::Ip, Measure::Events, "1h", 1_000_000),
    ]);
    for i in 0..100 {
        let cv = format!("cv-{i}");
        send_json(
            &mut e,
            &serde_json::json!({"ts": T0 + i * 1000, "account_id": format!("acc-{}", i % 10), "action": "cv_view", "cv_id": cv, "ip": format!("ip-{}", i % 7)}),
        );
    }
    let size = e.state_size();
    assert_eq!(size.keys, 17);
    assert_eq!(size.interned_cvs, 100);
    assert_eq!(
        size.cv_pairs, 100,
        "one entry per (key, CV), however many rules count it"
    );
    let short: u64 = (0..10)
        .map(|a| value_of(&e, KeyKind::AccountId, &format!("acc-{a}"), "short"))
        .sum();
    assert_eq!(short, 60, "the short window holds the last 60 seconds");
    let part = |p: &HeapProfile, name: &str| {
        p.parts
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .map(|(_, b)| *b)
            .unwrap()
    };
    let full = e.heap_profile();
    for name in ["CV tables", "access queues", "CV ids", "key index", "key rows"] {
        assert!(part(&full, name) > 0, "{name}: {full:?}");
    }
    assert_eq!(full.total(), full.parts.iter().map(|(_, b)| b).sum::<u64>());
    // One event an hour later: everything older is gone, the new event's state stays.
    send(&mut e, 99 + 3600, "acc-x", "cv_view", &["cv-new"]);
    let size = e.state_size();
    assert_eq!(size.keys, 1);
    assert_eq!(size.interned_cvs, 1);
    assert_eq!(size.cv_pairs, 1);
    // What the freed keys held is released; their slots and rows stay for reuse.
    let after = e.heap_profile();
    assert!(part(&after, "CV tables") < part(&full, "CV tables"), "{after:?}");
    assert!(part(&after, "access queues") < part(&full, "access queues"));
    assert_eq!(part(&after, "evidence sets"), 0);
    assert_eq!(part(&after, "key rows"), part(&full, "key rows"));
}

#[test]
fn unmatched_actions_are_accepted_but_count_nothing() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Events, "1h", 1)]);
    assert!(send(&mut e, 0, "a", "cv_search", &["1"]).is_empty());
    assert_eq!(e.stats().unmatched_action, 1);
    assert_eq!(e.state_size().keys, 0);
}

#[test]
fn the_same_events_give_the_same_alerts() {
    let run = || {
        let mut e = engine(vec![
            rule("d", KeyKind::AccountId, Measure::DistinctCvs, "10m", 5),
            rule("ip", KeyKind::Ip, Measure::Cvs, "10m", 7),
        ]);
        let mut all = Vec::new();
        for i in 0..200i64 {
            let v = serde_json::json!({"ts": T0 + (i * 7919 % 1000) * 1000, "account_id": format!("a{}", i % 5),
                "action": "cv_view", "cv_ids": [format!("cv{}", i % 13), format!("cv{}", i % 17)],
                "ip": format!("ip{}", i % 3), "user_agent": "ua", "event_id": format!("e{i}")});
            let mut out = Vec::new();
            e.process_bytes(v.to_string().as_bytes(), None, &mut out);
            all.extend(out.iter().map(|a| serde_json::to_string(a).unwrap()));
        }
        all
    };
    let first = run();
    assert!(first.len() > 5, "the scenario must fire: {}", first.len());
    assert_eq!(first, run());
}

#[test]
fn a_restored_snapshot_continues_exactly_where_the_engine_was() {
    let mut org = rule("org", KeyKind::OrgId, Measure::DistinctCvs, "1h", 30);
    org.response = Response::Suspend;
    let rules = vec![
        rule("d", KeyKind::AccountId, Measure::DistinctCvs, "10m", 25),
        rule("c", KeyKind::AccountId, Measure::Cvs, "5m", 40),
        org,
        rule("ip", KeyKind::Ip, Measure::Events, "10m", 12),
    ];
    let events: Vec<String> = (0..400i64)
        .map(|i| {
            serde_json::json!({"ts": T0 + i * 3000, "account_id": format!("a{}", i % 4), "org_id": format!("o{}", i % 2),
                "action": "cv_view", "cv_ids": [format!("cv{}", i % 37), format!("cv{}", (i * 7) % 53)],
                "ip": format!("ip{}", i % 3), "user_id": "u", "cv_visibility": if i % 3 == 0 {"named"} else {"anonymous"}})
            .to_string()
        })
        .collect();
    let run = |engine: &mut Engine, lines: &[String]| -> Vec<String> {
        let mut all = Vec::new();
        for l in lines {
            let mut out = Vec::new();
            engine.process_bytes(l.as_bytes(), None, &mut out);
            all.extend(out.iter().map(|a| serde_json::to_string(a).unwrap()));
        }
        all
    };
    let mut whole = engine(rules.clone());
    let expected = run(&mut whole, &events);
    assert!(expected.len() > 4, "{}", expected.len());

    let mut first = engine(rules.clone());
    let mut got = run(&mut first, &events[..200]);
    let snap = first.snapshot();
    let text = serde_json::to_string(&snap).unwrap();
    let back: EngineSnapshot = serde_json::from_str(&text).unwrap();
    let mut second = Engine::restore(first.rules().clone(), &back).unwrap();
    assert_eq!(second.state_size(), first.state_size());
    assert_eq!(second.snapshot(), snap, "restore then snapshot is the identity");
    got.extend(run(&mut second, &events[200..]));
    assert_eq!(got, expected);
    assert_eq!(second.stats(), whole.stats());
    assert_eq!(second.state_size(), whole.state_size());

    let other = engine(vec![rule("d", KeyKind::AccountId, Measure::DistinctCvs, "10m", 26)]);
    assert!(matches!(
        Engine::restore(other.rules().clone(), &back),
        Err(SnapshotError::OtherRules { .. })
    ));
}

#[test]
fn restricted_rule_sets_split_an_engine_by_key_kind_with_the_same_alerts() {
    let rules = vec![
        rule("d", KeyKind::AccountId, Measure::DistinctCvs, "10m", 20),
        rule("ip", KeyKind::Ip, Measure::Cvs, "10m", 30),
    ];
    let full = engine(rules);
    let set = full.rules().clone();
    assert_eq!(set.kinds().collect::<Vec<_>>(), vec![KeyKind::AccountId, KeyKind::Ip]);
    let mut parts: Vec<Engine> = set
        .kinds()
        .map(|k| Engine::new(Arc::new(set.restricted_to(k))))
        .collect();
    assert_ne!(parts[0].rules().fingerprint(), parts[1].rules().fingerprint());
    let mut full = full;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..300i64 {
        let line = serde_json::json!({"ts": T0 + i * 1000, "account_id": format!("a{}", i % 3), "action": "cv_view",
            "cv_ids": [format!("cv{i}")], "ip": format!("ip{}", i % 2)})
        .to_string();
        full.process_bytes(line.as_bytes(), None, &mut a);
        for p in &mut parts {
            p.process_bytes(line.as_bytes(), None, &mut b);
        }
    }
    let key = |x: &Alert| serde_json::to_string(x).unwrap();
    let mut a: Vec<String> = a.iter().map(key).collect();
    let mut b: Vec<String> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn incident_updates_record_every_exposed_cv_from_the_window_start() {
    let mut r = rule("mass", KeyKind::AccountId, Measure::DistinctCvs, "1h", 5);
    r.response = Response::Suspend;
    let mut e = engine(vec![r, rule("events", KeyKind::AccountId, Measure::Events, "1h", 100)]);
    e.track_exposure(true);
    send(&mut e, 0, "a", "cv_view", &["1", "2"]);
    send(&mut e, 1, "a", "cv_download", &["2", "3"]);
    assert!(e.take_updates().is_empty(), "nothing fires yet");
    let fired = send(&mut e, 2, "a", "cv_download", &["4", "5"]);
    assert_eq!(fired.len(), 1);
    let updates = e.take_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].incident_id, fired[0].alert_id);
    let ids: Vec<&str> = updates[0].cvs.iter().map(|x| x.cv_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["1", "2", "3", "4", "5"],
        "the whole window up to the crossing"
    );
    assert_eq!(updates[0].cvs[1].action, "cv_view", "first access of cv 2");
    assert_eq!(
        updates[0].cvs_in_window,
        Some(5),
        "the window's count, the alert's distinct_cvs"
    );
    // While still firing, each event adds its CVs (the store keeps first accesses).
    send(&mut e, 3, "a", "cv_view", &["6", "1"]);
    let later = e.take_updates();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].incident_id, fired[0].alert_id);
    assert_eq!(later[0].value, Some(6));
    assert_eq!(later[0].cvs_in_window, Some(6), "cv 1 again counts once");
    assert_eq!(
        later[0].cvs.iter().map(|x| x.cv_id.as_str()).collect::<Vec<_>>(),
        vec!["6", "1"]
    );
    // Without tracking nothing is recorded.
    e.track_exposure(false);
    send(&mut e, 4, "a", "cv_view", &["7"]);
    assert!(e.take_updates().is_empty());
}

#[test]
fn reloading_rules_keeps_unchanged_windows_and_applies_new_thresholds() {
    let rules = vec![
        rule("kept", KeyKind::AccountId, Measure::DistinctCvs, "1h", 100),
        rule("reshaped", KeyKind::AccountId, Measure::Events, "1h", 100),
        rule("gone", KeyKind::Ip, Measure::Events, "1h", 100),
    ];
    let mut e = engine(rules);
    for i in 0..10 {
        send_json(
            &mut e,
            &serde_json::json!({"ts": T0 + i * 1000, "account_id": "a", "action": "cv_view", "cv_id": format!("cv{i}"), "ip": "1.2.3.4"}),
        );
    }
    assert_eq!(e.state_size().keys, 2);
    let new_rules = vec![
        rule("kept", KeyKind::AccountId, Measure::DistinctCvs, "1h", 11),
        rule("reshaped", KeyKind::AccountId, Measure::Events, "2h", 100),
        rule("added", KeyKind::AccountId, Measure::Cvs, "1h", 100),
    ];
    let set = Arc::new(RuleSet::compile(&EngineSpec::default(), &new_rules, Profiles::default(), &[]).unwrap());
    let report = e.reload(set);
    assert_eq!(report.kept, vec!["kept"]);
    assert_eq!(report.reset, vec!["reshaped"]);
    assert_eq!(report.added, vec!["added"]);
    assert_eq!(report.removed, vec!["gone"]);
    let values: Vec<(String, u64, u64)> = e
        .key_values(KeyKind::AccountId, "a")
        .into_iter()
        .map(|w| (w.rule, w.value, w.threshold))
        .collect();
    assert_eq!(
        values,
        vec![
            ("kept".into(), 10, 11),
            ("reshaped".into(), 0, 100),
            ("added".into(), 0, 100)
        ]
    );
    assert_eq!(e.state_size().keys, 1, "ip keys went with their only rule");
    // The next distinct CV crosses the lowered threshold of the kept window.
    let fired = send(&mut e, 11, "a", "cv_view", &["cv-new"]);
    assert_eq!(
        fired.iter().map(|a| (a.rule.as_str(), a.value)).collect::<Vec<_>>(),
        vec![("kept", 11)]
    );
}

#[test]
fn a_distinct_rule_added_by_a_reload_counts_what_its_keys_already_hold() {
    let mut e = engine(vec![rule("all", KeyKind::AccountId, Measure::DistinctCvs, "1h", 100)]);
    for i in 0..5 {
        send(&mut e, i, "a", "cv_view", &[&format!("v{i}")]);
    }
    for i in 0..3 {
        send(&mut e, 10 + i, "a", "cv_download", &[&format!("d{i}")]);
    }
    let mut downloads = rule("dl", KeyKind::AccountId, Measure::DistinctCvs, "1h", 4);
    downloads.actions = vec!["cv_download".into()];
    let new_rules = vec![
        rule("all", KeyKind::AccountId, Measure::DistinctCvs, "1h", 100),
        downloads,
    ];
    let set = Arc::new(RuleSet::compile(&EngineSpec::default(), &new_rules, Profiles::default(), &[]).unwrap());
    let report = e.reload(set);
    assert_eq!((report.kept.len(), report.added.len()), (1, 1));
    assert_eq!(
        value_of(&e, KeyKind::AccountId, "a", "all"),
        8,
        "views and downloads stay exact"
    );
    assert_eq!(
        value_of(&e, KeyKind::AccountId, "a", "dl"),
        3,
        "only the downloads count for the new rule"
    );
    assert!(send(&mut e, 20, "a", "cv_view", &["v-new"]).is_empty());
    let fired = send(&mut e, 21, "a", "cv_download", &["d-new"]);
    assert_eq!(
        fired.iter().map(|a| (a.rule.as_str(), a.value)).collect::<Vec<_>>(),
        vec![("dl", 4)]
    );
    assert_eq!(e.state_size().cv_pairs, 10);
}

#[test]
fn a_firing_rule_stays_firing_through_a_reload_that_moves_it() {
    let mut e = engine(vec![
        rule("searches", KeyKind::AccountId, Measure::Events, "1h", 3),
        rule("distinct", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3),
    ]);
    let mut fired = Vec::new();
    for i in 0..4 {
        fired.extend(send(&mut e, i, "a", "cv_view", &[&format!("cv{i}")]));
    }
    assert_eq!(
        fired.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
        vec!["searches", "distinct"]
    );
    // A new rule first: both kept rules change position.
    let moved = vec![
        rule("new", KeyKind::AccountId, Measure::Events, "1h", 1000),
        rule("distinct", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3),
        rule("searches", KeyKind::AccountId, Measure::Events, "1h", 3),
    ];
    let set = Arc::new(RuleSet::compile(&EngineSpec::default(), &moved, Profiles::default(), &[]).unwrap());
    e.reload(set);
    let snap = e.snapshot();
    let firing = &snap.keys.iter().find(|k| k.key == "a").unwrap().firing;
    assert_eq!(
        firing.iter().map(Option::is_some).collect::<Vec<_>>(),
        vec![false, true, true],
        "the open incidents moved with their rules"
    );
    let mut restored = Engine::restore(e.rules().clone(), &snap).unwrap();
    for engine in [&mut e, &mut restored] {
        assert!(
            send(engine, 5, "a", "cv_view", &["cv9"]).is_empty(),
            "still firing: no second alert"
        );
        // Once both fall below their thresholds (the window passes), they fire again.
        let again = send(engine, 4000, "a", "cv_view", &["x1"]);
        assert!(again.is_empty());
        let mut later = Vec::new();
        for i in 0..3 {
            later.extend(send(engine, 4001 + i, "a", "cv_view", &[&format!("y{i}")]));
        }
        assert_eq!(
            later.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
            vec!["distinct", "searches"]
        );
    }
}

/// Issue #13: an org whose CVs fell out of its 24h window while it was quiet, snapshotted
/// and restored, then active again. The restored counts must match the queues they
/// summarise, or the next expiry subtracts below zero (alerts with value 4294967295).
#[test]
fn a_restored_org_key_quiet_past_its_window_counts_like_the_live_one() {
    let mut views = rule("org-24h", KeyKind::OrgId, Measure::DistinctCvs, "24h", 6);
    views.actions = vec!["cv_view".into(), "cv_download".into()];
    let mut downloads = rule("org-dl-1h", KeyKind::OrgId, Measure::DistinctCvs, "1h", 4);
    downloads.actions = vec!["cv_download".into()];
    let rules = vec![
        views,
        downloads,
        rule("org-cvs-48h", KeyKind::OrgId, Measure::Cvs, "48h", 12),
        rule("org-events-1h", KeyKind::OrgId, Measure::Events, "1h", 5),
        rule("acct-1h", KeyKind::AccountId, Measure::DistinctCvs, "1h", 5),
        rule("acct-24h", KeyKind::AccountId, Measure::DistinctCvs, "24h", 7),
    ];
    let h = 3600;
    let ev = |sec: i64, org: &str, action: &str, cvs: &[&str]| {
        serde_json::json!({"ts": T0 + sec * 1000, "account_id": format!("acct-{org}"), "org_id": org,
            "action": action, "cv_ids": cvs})
        .to_string()
    };
    let before = vec![
        ev(0, "quiet", "cv_view", &["c1", "c2"]),
        ev(10, "quiet", "cv_download", &["c3"]),
        // Out of order, within the allowed lateness (5m).
        ev(5, "quiet", "cv_view", &["c4"]),
        ev(20 * h, "quiet", "cv_download", &["c5"]),
        ev(20 * h + 30, "quiet", "cv_view", &["c6"]),
        ev(25 * h, "busy", "cv_view", &["x1"]),
        // Beyond the allowed lateness: late, counts nothing.
        ev(24 * h, "quiet", "cv_view", &["late"]),
        ev(25 * h + 60, "busy", "cv_download", &["x2"]),
    ];
    let after = vec![
        ev(25 * h + 100, "quiet", "cv_view", &["c7"]),
        ev(25 * h + 40, "quiet", "cv_download", &["c1", "c8"]),
        ev(25 * h + 120, "quiet", "cv_view", &["c9", "c10", "c11", "c12"]),
        ev(45 * h, "quiet", "cv_download", &["c13"]),
        ev(50 * h, "quiet", "cv_view", &["c14"]),
    ];
    let run = |e: &mut Engine, lines: &[String]| -> Vec<String> {
        let mut all = Vec::new();
        for l in lines {
            let mut out = Vec::new();
            e.process_bytes(l.as_bytes(), None, &mut out);
            all.extend(out.iter().map(|a| serde_json::to_string(a).unwrap()));
        }
        all
    };
    let mut whole = engine(rules.clone());
    run(&mut whole, &before);
    let snap = whole.snapshot();
    let expected = run(&mut whole, &after);
    assert!(!expected.is_empty(), "the scenario fires");

    let back: EngineSnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    let mut restored = Engine::restore(whole.rules().clone(), &back).unwrap();
    let mut values = Vec::new();
    let mut got = Vec::new();
    for l in &after {
        got.extend(run(&mut restored, std::slice::from_ref(l)));
        values.push(restored.key_values(KeyKind::OrgId, "quiet"));
    }
    for alert in &got {
        let value: serde_json::Value = serde_json::from_str(alert).unwrap();
        assert!(value["value"].as_u64().unwrap() < 100, "a wrapped count fired: {alert}");
    }
    assert_eq!(got, expected);
    assert_eq!(restored.stats(), whole.stats());
    assert_eq!(restored.state_size(), whole.state_size());
    assert_eq!(restored.snapshot(), whole.snapshot());
}

/// A reload rebuilds distinct groups the same way a restore does (#13): a key quiet past
/// its longest window keeps counting exactly afterwards.
#[test]
fn a_reload_keeps_counts_of_a_key_quiet_past_its_window() {
    let rules = vec![
        rule("org-24h", KeyKind::OrgId, Measure::DistinctCvs, "24h", 100),
        rule("org-1h", KeyKind::OrgId, Measure::DistinctCvs, "1h", 100),
    ];
    let ev = |e: &mut Engine, sec: i64, org: &str, cvs: &[&str]| {
        send_json(
            e,
            &serde_json::json!({"ts": T0 + sec * 1000, "account_id": "a", "org_id": org, "action": "cv_view", "cv_ids": cvs}),
        )
    };
    let mut live = engine(rules.clone());
    let mut reloaded = engine(rules.clone());
    for e in [&mut live, &mut reloaded] {
        ev(e, 0, "quiet", &["c1", "c2", "c3"]);
        ev(e, 20 * 3600, "quiet", &["c4"]);
        ev(e, 25 * 3600, "busy", &["x"]);
    }
    let mut changed = rules.clone();
    changed[0].threshold = 5;
    let set = Arc::new(RuleSet::compile(&EngineSpec::default(), &changed, Profiles::default(), &[]).unwrap());
    reloaded.reload(set);
    ev(&mut live, 25 * 3600 + 1, "quiet", &["c5"]);
    ev(&mut reloaded, 25 * 3600 + 1, "quiet", &["c5"]);
    for e in [&live, &reloaded] {
        assert_eq!(running_values(e, KeyKind::OrgId, "quiet"), vec![2, 1]);
    }
    let snap = reloaded.snapshot();
    let org = snap.keys.iter().find(|k| k.key == "quiet").unwrap();
    assert_eq!(org.groups[0].len(), 2, "c1..c3 left with the queue front");
}

/// A small org and account state with late events, snapshotted: what the refusal
/// tests tamper with.
fn snapshotted_state() -> (Engine, EngineSnapshot) {
    let mut e = engine(vec![
        rule("org-24h", KeyKind::OrgId, Measure::DistinctCvs, "24h", 100),
        rule("org-1h", KeyKind::OrgId, Measure::DistinctCvs, "1h", 100),
        rule("org-events", KeyKind::OrgId, Measure::Events, "1h", 100),
        rule("acct-cvs", KeyKind::AccountId, Measure::Cvs, "1h", 100),
    ]);
    for (sec, org, cvs) in [
        (0, "o1", vec!["c1", "c2"]),
        (60, "o2", vec!["c1"]),
        (30, "o1", vec!["c3"]),
        (2 * 3600, "o1", vec!["c4"]),
        (2 * 3600 - 10, "o2", vec!["c2", "c5"]),
    ] {
        send_json(
            &mut e,
            &serde_json::json!({"ts": T0 + sec * 1000, "account_id": format!("a-{org}"), "org_id": org,
                "action": "cv_view", "cv_ids": cvs}),
        );
    }
    e.check_state().unwrap();
    let snap = e.snapshot();
    (e, snap)
}

fn refusal(e: &Engine, snap: &EngineSnapshot) -> String {
    match Engine::restore(e.rules().clone(), snap) {
        Err(err @ SnapshotError::Mismatch { .. }) => {
            assert_eq!(err.reason(), "mismatch");
            err.to_string()
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a snapshot that disagrees with itself was restored"),
    }
}

#[test]
fn restore_refuses_a_snapshot_that_no_engine_could_have_written() {
    let (e, snap) = snapshotted_state();
    let restored = Engine::restore(e.rules().clone(), &snap).unwrap();
    restored.check_state().unwrap();
    let org = |s: &mut EngineSnapshot| -> usize {
        s.keys
            .iter()
            .position(|k| k.kind == KeyKind::OrgId && k.key == "o1")
            .unwrap()
    };

    let mut twice = snap.clone();
    let i = org(&mut twice);
    let cv = twice.keys[i].groups[0][0].clone();
    twice.keys[i].groups[0].push(cv);
    assert_eq!(
        refusal(&e, &twice),
        "the snapshot disagrees with itself at org_id key \"o1\": distinct group 0 holds CV c1 twice"
    );

    let mut never = snap.clone();
    let i = org(&mut never);
    never.keys[i].groups[0][0].2 = [None; crate::distinct::CLASS_SLOTS];
    assert!(refusal(&e, &never).contains("holds CV c1 with no access"));

    let mut future = snap.clone();
    let i = org(&mut future);
    future.keys[i].groups[0][0].2[0] = Some(future.keys[i].last_sec + 1);
    assert!(refusal(&e, &future).contains("outside 0..="));

    let mut buckets = snap.clone();
    let i = org(&mut buckets);
    buckets.keys[i].counts[0].insert(0, (T0 / 1000 + 7200, 1));
    assert!(refusal(&e, &buckets).contains("count window 0 has a bucket"));

    let mut empty = snap.clone();
    let i = org(&mut empty);
    empty.keys[i].counts[0][0].1 = 0;
    assert!(refusal(&e, &empty).contains("out of place"));

    let mut key_twice = snap.clone();
    let i = org(&mut key_twice);
    let k = key_twice.keys[i].clone();
    key_twice.keys.push(k);
    assert!(refusal(&e, &key_twice).contains("the key appears twice"));

    let mut late_key = snap.clone();
    let i = org(&mut late_key);
    late_key.keys[i].last_sec += 3600;
    assert!(refusal(&e, &late_key).contains("after the snapshot's"));
}

#[test]
fn check_state_finds_a_count_that_disagrees_with_its_queues() {
    let (mut e, _) = snapshotted_state();
    let kind = KeyKind::OrgId.index();
    let slot = e.tables[kind].find("o1").unwrap() as usize;
    // The 1h rule walks a cursor; the 24h rule leaves with the queue fronts.
    for (at, rule) in [(1, "org-1h"), (0, "org-24h")] {
        let saved = e.tables[kind].progress.row(slot)[at];
        e.tables[kind].progress.row_mut(slot)[at] = RuleProgress::default();
        let err = match e.check_state() {
            Err(SnapshotError::Mismatch { at, detail }) => format!("{at}: {detail}"),
            other => panic!("{other:?}"),
        };
        assert!(
            err.starts_with(&format!("org_id key \"o1\": rule {rule}: counts 0 CVs")),
            "{err}"
        );
        e.tables[kind].progress.row_mut(slot)[at] = saved;
        e.check_state().unwrap();
    }
}

/// An access late by more than a shorter window of its class (but inside the longest)
/// is not counted by the shorter rule: its cursor must pass it even when it lands at
/// the back of the queue (here the key's first access), or the next advance takes it
/// out of a count it never entered and the count wraps below zero.
#[test]
fn a_late_first_access_outside_a_shorter_window_is_never_uncounted() {
    let spec = EngineSpec {
        allowed_lateness: "30s".into(),
        ..EngineSpec::default()
    };
    let mut e = engine_with(
        spec,
        vec![
            rule("org-1m", KeyKind::OrgId, Measure::DistinctCvs, "1m", 100),
            rule("org-3s", KeyKind::OrgId, Measure::DistinctCvs, "3s", 100),
        ],
        Profiles::default(),
        &[],
    );
    let ev = |e: &mut Engine, sec: i64, org: Option<&str>, cvs: &[&str]| {
        let mut v = serde_json::json!({"ts": T0 + sec * 1000, "account_id": "a", "action": "cv_view", "cv_ids": cvs});
        if let Some(org) = org {
            v["org_id"] = org.into();
        }
        send_json(e, &v);
        e.check_state().unwrap();
    };
    ev(&mut e, 20, None, &[]);
    ev(&mut e, 10, Some("o"), &["c1"]);
    assert_eq!(running_values(&e, KeyKind::OrgId, "o"), vec![1, 0]);
    ev(&mut e, 21, Some("o"), &["c2"]);
    assert_eq!(running_values(&e, KeyKind::OrgId, "o"), vec![2, 1]);
    ev(&mut e, 25, Some("o"), &[]);
    assert_eq!(running_values(&e, KeyKind::OrgId, "o"), vec![2, 0]);
}

/// With one engine per key kind, an org may be the only holder of a CV in its engine.
/// When it reads the CV again after the CV left its window, the advance before the
/// add releases the CV's last reference: the handle the event interned must survive
/// until the add retains it, else it is freed while held and given to another CV.
#[test]
fn a_cv_read_again_after_leaving_the_window_keeps_its_handle() {
    let rules = vec![rule("org-10s", KeyKind::OrgId, Measure::DistinctCvs, "10s", 100)];
    let set = engine(rules).rules().restricted_to(KeyKind::OrgId);
    let mut e = Engine::new(Arc::new(set));
    let ev = |e: &mut Engine, sec: i64, org: &str, cvs: &[&str]| {
        send_json(
            e,
            &serde_json::json!({"ts": T0 + sec * 1000, "account_id": "a", "org_id": org, "action": "cv_view", "cv_ids": cvs}),
        );
        e.check_state().unwrap();
    };
    ev(&mut e, 0, "o", &["c0"]);
    ev(&mut e, 5, "o", &["c1"]);
    ev(&mut e, 12, "o", &["c0"]);
    assert_eq!(e.state_size().interned_cvs, 2, "c0 and c1 are held");
    ev(&mut e, 13, "p", &["other"]);
    let held: Vec<String> = e
        .exposure(KeyKind::OrgId, "o", "org-10s")
        .into_iter()
        .map(|x| x.cv_id)
        .collect();
    assert_eq!(held, vec!["c1", "c0"]);
    assert_eq!(e.state_size().interned_cvs, 3);
}

/// Memory stays bounded whatever is sent: past `max_tracked_keys` (this engine's share of
/// it) a new key is not tracked and the refusal is counted; known keys go on as before.
#[test]
fn keys_past_the_limit_are_refused_and_counted_and_known_keys_go_on() {
    let spec = EngineSpec {
        max_tracked_keys: 10,
        ..EngineSpec::default()
    };
    let rules = vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3)];
    let mut e2 = engine_with(spec, rules, Profiles::default(), &[]);
    e2.share_keys(2);
    let mut out = Vec::new();
    let ev = |acc: &str, cv: &str| {
        serde_json::json!({"ts": T0, "account_id": acc, "action": "cv_view", "cv_id": cv}).to_string()
    };
    for i in 0..8 {
        e2.process_bytes(ev(&format!("acc-{i}"), "cv").as_bytes(), None, &mut out);
    }
    assert_eq!(e2.state_size().keys, 5, "a share of 2 holds half of 10");
    assert_eq!(e2.stats().keys_refused, 3);
    for cv in ["a", "b", "c"] {
        e2.process_bytes(ev("acc-0", cv).as_bytes(), None, &mut out);
    }
    assert_eq!(out.len(), 1, "a tracked key still fires");
}

#[test]
fn an_event_with_an_overlong_field_is_rejected_by_reason() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3)]);
    let mut out = Vec::new();
    for (field, len) in [
        ("cv_id", 257),
        ("ip", 257),
        ("org_id", 257),
        ("event_id", 257),
        ("action", 257),
        ("user_agent", 1025),
    ] {
        let mut ev = serde_json::json!({"ts": T0, "account_id": "a", "action": "cv_view", "cv_id": "c"});
        ev[field] = serde_json::Value::String("x".repeat(len));
        assert_eq!(
            e.process_bytes(ev.to_string().as_bytes(), None, &mut out),
            Outcome::Rejected(RejectReason::FieldTooLong),
            "{field}"
        );
    }
    let ok = serde_json::json!({"ts": T0, "account_id": "a", "action": "cv_view", "cv_id": "x".repeat(256),
        "user_agent": "x".repeat(1024)});
    assert_eq!(
        e.process_bytes(ok.to_string().as_bytes(), None, &mut out),
        Outcome::Accepted
    );
}

/// A late event's CVs were exposed though they count in no window: while its key has an
/// open incident, they reach the incident's list of people to notify (#13).
#[test]
fn a_late_events_cvs_join_the_open_incident() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3)]);
    e.track_exposure(true);
    let mut out = Vec::new();
    let ev = |ms: i64, cv: &str| {
        serde_json::json!({"ts": ms, "account_id": "h", "action": "cv_view", "cv_id": cv}).to_string()
    };
    for (i, cv) in ["a", "b", "c"].iter().enumerate() {
        e.process_bytes(ev(T0 + 600_000 + i as i64, cv).as_bytes(), None, &mut out);
    }
    assert_eq!(out.len(), 1);
    e.take_updates();
    // Ten minutes before the newest: behind the watermark (5 minutes of lateness).
    assert_eq!(
        e.process_bytes(ev(T0, "late-cv").as_bytes(), None, &mut out),
        Outcome::Late
    );
    let updates = e.take_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].incident_id, out[0].alert_id);
    assert_eq!(updates[0].cvs[0].cv_id, "late-cv");
    assert_eq!(updates[0].value, None, "a late event changes no window's value");
    // Without an open incident a late event records nothing.
    let mut quiet = engine(vec![rule("r", KeyKind::AccountId, Measure::DistinctCvs, "1h", 3)]);
    quiet.track_exposure(true);
    quiet.process_bytes(ev(T0 + 600_000, "a").as_bytes(), None, &mut out);
    assert_eq!(
        quiet.process_bytes(ev(T0, "b").as_bytes(), None, &mut out),
        Outcome::Late
    );
    assert!(quiet.take_updates().is_empty());
}

/// Issue #14: an event delivered twice counts once. Within `dedupe_window` (10 minutes by
/// default) of event time a repeated `event_id` is a duplicate; after it, or without an
/// id, or with the window at 0s, it counts again; a snapshot keeps the ids.
#[test]
fn a_duplicate_delivery_counts_once_within_the_window_and_through_a_snapshot() {
    let rules = || vec![rule("n", KeyKind::AccountId, Measure::Events, "1h", 100)];
    let ev = |ms: i64, id: Option<&str>| {
        let mut v = serde_json::json!({"ts": ms, "account_id": "a", "action": "cv_view", "cv_id": "c"});
        if let Some(id) = id {
            v["event_id"] = id.into();
        }
        v.to_string()
    };
    let value = |e: &Engine| e.key_values(KeyKind::AccountId, "a")[0].value;
    let mut e = engine(rules());
    let mut out = Vec::new();
    assert_eq!(
        e.process_bytes(ev(T0, Some("e-1")).as_bytes(), None, &mut out),
        Outcome::Accepted
    );
    assert_eq!(
        e.process_bytes(ev(T0, Some("e-1")).as_bytes(), None, &mut out),
        Outcome::Duplicate
    );
    assert_eq!(value(&e), 1);
    // Without an id nothing is deduplicated.
    e.process_bytes(ev(T0, None).as_bytes(), None, &mut out);
    e.process_bytes(ev(T0, None).as_bytes(), None, &mut out);
    assert_eq!(value(&e), 3);
    // Nine minutes on, e-1 is still remembered, also after a snapshot and restore.
    e.process_bytes(ev(T0 + 540_000, Some("e-2")).as_bytes(), None, &mut out);
    let snap: crate::engine::EngineSnapshot =
        serde_json::from_str(&serde_json::to_string(&e.snapshot()).unwrap()).unwrap();
    let mut e = Engine::restore(e.rules().clone(), &snap).unwrap();
    assert_eq!(
        e.process_bytes(ev(T0, Some("e-1")).as_bytes(), None, &mut out),
        Outcome::Duplicate
    );
    assert_eq!(e.stats().duplicates, 2);
    // Past ten minutes of newer events it is forgotten: a new delivery counts again.
    e.process_bytes(ev(T0 + 601_000, Some("e-3")).as_bytes(), None, &mut out);
    assert_eq!(
        e.process_bytes(ev(T0 + 601_000, Some("e-1")).as_bytes(), None, &mut out),
        Outcome::Accepted
    );
    // `0s` turns it off.
    let off = EngineSpec {
        dedupe_window: "0s".into(),
        ..EngineSpec::default()
    };
    let mut e = engine_with(off, rules(), Profiles::default(), &[]);
    e.process_bytes(ev(T0, Some("e-1")).as_bytes(), None, &mut out);
    assert_eq!(
        e.process_bytes(ev(T0, Some("e-1")).as_bytes(), None, &mut out),
        Outcome::Accepted
    );
}

/// Issue #14: distinct values of other fields, exactly: many accounts behind one address,
/// one account from many addresses. An event without the field adds nothing; a repeat
/// counts once; values leave with the window; a snapshot and a reload keep them.
#[test]
fn distinct_accounts_per_ip_and_distinct_ips_per_account_count_exactly() {
    let mut ring = rule("ring", KeyKind::Ip, Measure::DistinctAccounts, "1h", 3);
    ring.actions = vec!["cv_view".into()];
    let shared = rule("shared", KeyKind::AccountId, Measure::DistinctIps, "1h", 3);
    let rules = vec![ring, shared];
    let mut e = engine(rules.clone());
    let ev = |sec: i64, account: &str, ip: Option<&str>| {
        let mut v =
            serde_json::json!({"ts": T0 + sec * 1000, "account_id": account, "action": "cv_view", "cv_id": "c"});
        if let Some(ip) = ip {
            v["ip"] = ip.into();
        }
        v
    };
    let value = |e: &Engine, kind, key: &str| e.key_values(kind, key)[0].value;
    assert!(send_json(&mut e, &ev(0, "a1", Some("192.0.2.1"))).is_empty());
    assert!(
        send_json(&mut e, &ev(1, "a1", Some("192.0.2.1"))).is_empty(),
        "a repeat counts once"
    );
    assert!(send_json(&mut e, &ev(2, "a2", Some("192.0.2.1"))).is_empty());
    assert!(
        send_json(&mut e, &ev(3, "a3", None)).is_empty(),
        "no ip: nothing for ip keys"
    );
    assert_eq!(value(&e, KeyKind::Ip, "192.0.2.1"), 2);
    // Through a snapshot and a reload of the same rules, the third account fires.
    let snap: crate::engine::EngineSnapshot =
        serde_json::from_str(&serde_json::to_string(&e.snapshot()).unwrap()).unwrap();
    let mut e = Engine::restore(e.rules().clone(), &snap).unwrap();
    let same = e.rules().clone();
    e.reload(Arc::new((*same).clone()));
    let fired = send_json(&mut e, &ev(4, "a3", Some("192.0.2.1")));
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].rule.as_str(), fired[0].value), ("ring", 3));
    assert_eq!(fired[0].evidence.distinct_cvs, None, "no CV window to report from");
    // One account from three addresses.
    send_json(&mut e, &ev(5, "a1", Some("192.0.2.2")));
    let fired = send_json(&mut e, &ev(6, "a1", Some("192.0.2.3")));
    assert_eq!(
        fired.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
        vec!["shared"]
    );
    // An hour on, every value has left the window.
    send_json(&mut e, &ev(3_700, "a9", Some("198.51.100.9")));
    assert_eq!(value(&e, KeyKind::AccountId, "a9"), 1);
    assert!(e.key_values(KeyKind::Ip, "192.0.2.1").is_empty() || value(&e, KeyKind::Ip, "192.0.2.1") == 0);
    e.check_state().unwrap();
}

/// The issue's own example, scaled down: `surge` fires at max(floor, factor x p90) of the
/// account's daily distinct CVs.
fn surge_rule(floor: u64, factor: f64, min_history: &str) -> RuleSpec {
    let mut r = rule("surge", KeyKind::AccountId, Measure::DistinctCvs, "24h", floor);
    r.baseline = Some(crate::baseline::BaselineSpec {
        history: "28d".into(),
        statistic: crate::baseline::Statistic::P90,
        factor,
        min_history: min_history.into(),
    });
    r
}

const DAY: i64 = 86_400;

/// `n` fresh distinct CVs for `account` at second `secs`, named after `tag`.
fn read(e: &mut Engine, secs: i64, account: &str, tag: &str, n: usize) -> Vec<Alert> {
    let cvs: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let refs: Vec<&str> = cvs.iter().map(String::as_str).collect();
    send(e, secs, account, "cv_view", &refs)
}

#[test]
fn an_account_far_above_its_own_history_fires_and_says_why() {
    let mut e = engine(vec![surge_rule(30, 8.0, "7d")]);
    // Ten days of 10 distinct CVs a day, in the morning; the same CV twice a day counts once.
    for d in 0..10 {
        read(&mut e, d * DAY + 3600, "a", &format!("d{d}"), 10);
        assert!(read(&mut e, d * DAY + 3700, "a", &format!("d{d}"), 10).is_empty());
    }
    // Day 10: p90 of [10 x 10] is 10, so the threshold is max(30, 80) = 80 and 79 is quiet
    // (day 9's CVs are more than 24 hours old).
    assert!(read(&mut e, 10 * DAY + 7200, "a", "surge-a", 79).is_empty());
    let fired = read(&mut e, 10 * DAY + 7300, "a", "surge-b", 1);
    assert_eq!(fired.len(), 1);
    let a = &fired[0];
    assert_eq!(
        (a.value, a.threshold, a.threshold_source),
        (80, 80, ThresholdSource::Baseline)
    );
    let b = a.baseline.as_ref().expect("a baseline rule explains itself");
    assert_eq!(b.statistic_value, Some(10.0));
    assert_eq!((b.baseline_threshold, b.floor, b.judged), (Some(80), 30, true));
    assert_eq!(b.daily_values, vec![10; 10]);
    assert_eq!(
        (b.first_day.as_deref(), b.history_from.as_deref()),
        (Some("2024-05-04"), Some("2024-05-04"))
    );
    // The account view says the same.
    let view = e.key_values(KeyKind::AccountId, "a");
    assert_eq!(view[0].threshold_source, ThresholdSource::Baseline);
    assert_eq!(view[0].baseline.as_ref().unwrap().daily_values, vec![10; 10]);
    // And the JSON an analyst reads carries it.
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["threshold_source"], "baseline");
    assert_eq!(json["baseline"]["statistic"], "p90");
}

#[test]
fn the_floor_applies_when_history_is_low_and_nothing_fires_before_min_history() {
    let mut e = engine(vec![surge_rule(30, 8.0, "7d")]);
    // Day 0 to 6: far above the floor, yet the key is younger than 7 days.
    for d in 0..7 {
        assert!(
            read(&mut e, d * DAY + 60, "a", &format!("d{d}"), 40).is_empty(),
            "day {d}"
        );
    }
    let view = e.key_values(KeyKind::AccountId, "a");
    let b = view[0].baseline.as_ref().unwrap();
    assert!(!b.judged);
    assert_eq!(view[0].threshold, 30, "a key not judged shows the floor");
    // Day 7 on a quiet history: 8 x p90 of [40 x 7] = 320; the rule fires at 320.
    assert!(read(&mut e, 7 * DAY + 60, "a", "d7", 319).is_empty());
    let fired = read(&mut e, 7 * DAY + 61, "a", "d7b", 1);
    assert_eq!(fired[0].threshold, 320);

    // A key with a quiet history gets the floor, and says so.
    let mut e = engine(vec![surge_rule(30, 8.0, "1d")]);
    read(&mut e, 60, "b", "d0", 1);
    let fired = read(&mut e, DAY + 60, "b", "d1", 30);
    assert_eq!(
        (fired[0].threshold, fired[0].threshold_source),
        (30, ThresholdSource::Rule)
    );
    assert_eq!(fired[0].baseline.as_ref().unwrap().baseline_threshold, Some(8));
}

#[test]
fn a_history_survives_a_snapshot_and_a_reload_that_keeps_its_rule() {
    let feed = |e: &mut Engine, from: i64, to: i64| {
        let mut alerts = Vec::new();
        for d in from..to {
            alerts.extend(read(e, d * DAY + 60, "a", &format!("d{d}"), 5 + d as usize % 3));
        }
        alerts.extend(read(e, to * DAY + 60, "a", "surge", 60));
        alerts
    };
    let mut whole = engine(vec![surge_rule(10, 4.0, "3d")]);
    let expected = feed(&mut whole, 0, 8);
    assert_eq!(expected.len(), 1, "the surge is caught by history");

    let mut first = engine(vec![surge_rule(10, 4.0, "3d")]);
    for d in 0..5 {
        read(&mut first, d * DAY + 60, "a", &format!("d{d}"), 5 + d as usize % 3);
    }
    let text = serde_json::to_string(&first.snapshot()).unwrap();
    let back: EngineSnapshot = serde_json::from_str(&text).unwrap();
    assert!(!back.histories.is_empty());
    let mut restored = Engine::restore(first.rules().clone(), &back).unwrap();
    let mut alerts = Vec::new();
    for d in 5..8 {
        alerts.extend(read(
            &mut restored,
            d * DAY + 60,
            "a",
            &format!("d{d}"),
            5 + d as usize % 3,
        ));
    }
    // A reload that changes the factor and the window keeps the daily values.
    let mut reloaded = surge_rule(10, 4.0, "3d");
    reloaded.window = "12h".into();
    let report = restored.reload(Arc::new(
        RuleSet::compile(&EngineSpec::default(), &[reloaded], Profiles::default(), &[]).unwrap(),
    ));
    assert_eq!(report.reset, vec!["surge"], "its window changed");
    alerts.extend(read(&mut restored, 8 * DAY + 60, "a", "surge", 60));
    let strip = |a: &[Alert]| {
        a.iter()
            .map(|a| (a.value, a.threshold, a.baseline.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&alerts), strip(&expected));

    // A reload that changes what it counts starts the history again.
    let mut other = surge_rule(10, 4.0, "3d");
    other.actions = vec!["cv_download".into()];
    restored.reload(Arc::new(
        RuleSet::compile(&EngineSpec::default(), &[other], Profiles::default(), &[]).unwrap(),
    ));
    let view = restored.key_values(KeyKind::AccountId, "a");
    assert!(!view[0].baseline.as_ref().unwrap().judged);
}

#[test]
fn a_baseline_works_on_distinct_ips_and_its_memory_is_counted() {
    let mut r = rule("ips", KeyKind::AccountId, Measure::DistinctIps, "1h", 3);
    r.baseline = Some(crate::baseline::BaselineSpec {
        history: "7d".into(),
        statistic: crate::baseline::Statistic::Max,
        factor: 2.0,
        min_history: "2d".into(),
    });
    let mut e = engine(vec![r]);
    let from = |e: &mut Engine, secs: i64, ip: &str| {
        send_json(
            e,
            &serde_json::json!({"ts": T0 + secs * 1000, "account_id": "a", "action": "cv_view", "cv_id": "x", "ip": ip}),
        )
    };
    // Two addresses a day (office and home), the same ones every day.
    for d in 0..3 {
        from(&mut e, d * DAY + 60, "10.0.0.1");
        from(&mut e, d * DAY + 120, "10.0.0.2");
        from(&mut e, d * DAY + 180, "10.0.0.1");
    }
    // Day 3: threshold max(3, 2 x 2) = 4.
    assert!(from(&mut e, 3 * DAY + 60, "10.0.0.3").is_empty());
    assert!(from(&mut e, 3 * DAY + 70, "10.0.0.4").is_empty());
    assert!(from(&mut e, 3 * DAY + 80, "10.0.0.5").is_empty());
    let fired = from(&mut e, 3 * DAY + 90, "10.0.0.6");
    assert_eq!((fired[0].value, fired[0].threshold), (4, 4));
    assert_eq!(fired[0].baseline.as_ref().unwrap().daily_values, vec![2, 2, 2]);
    let profile = e.heap_profile();
    let part = |name: &str| profile.parts.iter().find(|(n, _)| n.starts_with(name)).unwrap().1;
    assert!(part("baseline histories") >= 8 * 4, "eight days of values at least");
    assert!(part("baseline: distinct values") > 0, "today's addresses are held");
}

/// A key whose window emptied while it was quiet re-arms before its next event is
/// counted: one event that takes it back over the threshold is a new crossing, whatever
/// other keys did meanwhile (review of #14).
#[test]
fn a_rule_re_arms_when_the_window_emptied_even_if_one_event_crosses_again() {
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Cvs, "1h", 3)]);
    assert_eq!(send(&mut e, 0, "a", "cv_view", &["1", "2", "3"]).len(), 1);
    // Two hours later, with nobody else's event in between, one event crosses again.
    assert_eq!(send(&mut e, 7200, "a", "cv_view", &["4", "5", "6"]).len(), 1);
    // The same with another key's event in between: the same answer.
    let mut e = engine(vec![rule("r", KeyKind::AccountId, Measure::Cvs, "1h", 3)]);
    assert_eq!(send(&mut e, 0, "a", "cv_view", &["1", "2", "3"]).len(), 1);
    send(&mut e, 5000, "b", "cv_view", &["x"]);
    assert_eq!(send(&mut e, 7200, "a", "cv_view", &["4", "5", "6"]).len(), 1);
    // While the window still holds the first crossing, it is the same incident.
    assert!(send(&mut e, 7300, "a", "cv_view", &["7"]).is_empty());
}

/// Every live (key, rule) the slow way: each key's `key_values`, ranked as `closest`
/// promises (share of the effective threshold, then kind, key, rule).
fn closest_by_hand(e: &Engine, accounts: &[&str], limit: usize) -> Vec<(String, String, u64, u64)> {
    let mut all: Vec<(f64, String, String, u64, u64)> = accounts
        .iter()
        .flat_map(|a| {
            e.key_values(KeyKind::AccountId, a)
                .into_iter()
                .filter(|w| w.value > 0 && w.threshold > 0)
                .map(move |w| {
                    (
                        w.value as f64 / w.threshold as f64,
                        a.to_string(),
                        w.rule,
                        w.value,
                        w.threshold,
                    )
                })
        })
        .collect();
    all.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then_with(|| x.1.cmp(&y.1))
            .then_with(|| x.2.cmp(&y.2))
    });
    all.into_iter()
        .take(limit)
        .map(|(_, k, r, v, t)| (k, r, v, t))
        .collect()
}

proptest::proptest! {
    /// "Closest to a threshold now" is the top of every key's live share, whatever the
    /// traffic: quiet keys whose windows emptied since their last event included.
    #[test]
    fn closest_is_the_top_of_every_live_share(
        events in proptest::collection::vec((0i64..7200, 0usize..6, 0u32..40, 1usize..4), 1..120),
        limit in 1usize..8,
    ) {
        let accounts = ["a0", "a1", "a2", "a3", "a4", "a5"];
        let mut e = engine(vec![
            rule("hour", KeyKind::AccountId, Measure::DistinctCvs, "1h", 30),
            rule("ten-minutes", KeyKind::AccountId, Measure::Events, "10m", 12),
        ]);
        let mut events = events;
        events.sort_by_key(|ev| ev.0);
        for (secs, account, cv, n) in events {
            let cvs: Vec<String> = (0..n as u32).map(|i| format!("cv-{}", cv + i)).collect();
            let refs: Vec<&str> = cvs.iter().map(String::as_str).collect();
            send(&mut e, secs, accounts[account], "cv_view", &refs);
        }
        let got: Vec<(String, String, u64, u64)> = e
            .closest(limit)
            .into_iter()
            .map(|c| (c.key, c.value.rule, c.value.value, c.value.threshold))
            .collect();
        proptest::prop_assert_eq!(got, closest_by_hand(&e, &accounts, limit));
    }
}

#[test]
fn observed_values_follow_every_counted_event_and_their_peak_is_the_keys_highest_value() {
    let mut e = engine(vec![
        rule("d", KeyKind::AccountId, Measure::DistinctCvs, "10s", 100),
        rule("ev", KeyKind::AccountId, Measure::Events, "10s", 100),
    ]);
    let mut seen = Vec::new();
    send(&mut e, 0, "a", "cv_view", &["1", "2"]);
    e.take_observed(&mut seen);
    assert!(seen.is_empty(), "nothing is recorded until asked for");
    e.observe_values(true);
    send(&mut e, 1, "a", "cv_view", &["2", "3"]);
    send(&mut e, 20, "a", "cv_view", &["4"]);
    send(&mut e, 21, "a", "search", &[]);
    e.take_observed(&mut seen);
    let of = |rule: usize| -> Vec<u64> { seen.iter().filter(|s| s.rule == rule).map(|s| s.value).collect() };
    // The distinct count after each counted event: {1,2,3} = 3, then only {4} = 1; a
    // search is not counted by either rule, so it records nothing.
    assert_eq!(of(0), vec![3, 1]);
    assert_eq!(of(1), vec![2, 1]);
    assert!(seen
        .iter()
        .all(|s| s.key.as_str() == "a" && s.floor == 100 && s.statistic.is_none()));
    assert_eq!(seen[0].event_time_ms, T0 + 1000);
    seen.clear();
    e.observe_values(false);
    send(&mut e, 22, "a", "cv_view", &["5"]);
    e.take_observed(&mut seen);
    assert!(seen.is_empty());
}
