//! Property: an engine restored from a snapshot (through JSON, as the service stores
//! it) at any point of a stream goes on exactly as the engine that was never stopped:
//! the same alerts byte for byte, the same incident updates, the same counters and
//! state, and every key's counters agree with what they summarise after every event.
//!
//! Streams are small and windows short (seconds), so that a few dozen events cross
//! windows, leave keys quiet past them, and arrive late within and beyond the allowed
//! lateness; rules are drawn per key kind, several sharing a distinct group.

use std::sync::Arc;

use proptest::prelude::*;

use crate::alert::Alert;
use crate::baseline::{BaselineSpec, Statistic};
use crate::engine::{Engine, EngineSnapshot, EngineStats, IncidentUpdate, StateSize};
use crate::profiles::Profiles;
use crate::rules::{EngineSpec, KeyKind, Measure, Response, RuleSet, RuleSpec, Severity};

const T0: i64 = 1_714_780_800_000; // 2024-05-04T00:00:00Z
const ACTIONS: [&str; 4] = ["cv_view", "cv_download", "contact_reveal", "cv_search"];
const WINDOWS: [&str; 6] = ["3s", "10s", "30s", "1m", "2m", "10m"];
const LATENESS: [&str; 3] = ["5s", "20s", "1m"];

#[derive(Debug, Clone)]
struct RuleDraw {
    kind: KeyKind,
    measure: Measure,
    /// Which of `ACTIONS` the rule counts (not 0).
    actions: u8,
    window: usize,
    threshold: u64,
    suspend: bool,
    /// `[rules.baseline]`: (history days, min_history days, statistic, factor).
    baseline: Option<(u32, u32, Statistic, f64)>,
}

#[derive(Debug, Clone)]
struct Step {
    /// Seconds the stream's clock moves on before this event.
    advance: i64,
    /// Milliseconds this event's time lies behind the clock: late within or beyond
    /// the allowed lateness, or out of order by less than a second.
    behind_ms: i64,
    account: u8,
    org: Option<u8>,
    user: Option<u8>,
    ip: Option<u8>,
    action: usize,
    cvs: Vec<u8>,
    visibility: u8,
    /// Snapshot, then carry on from the snapshot restored, after this event.
    restart: bool,
}

fn rule_draw() -> impl Strategy<Value = RuleDraw> {
    (
        prop::sample::select(vec![KeyKind::AccountId, KeyKind::OrgId, KeyKind::UserId, KeyKind::Ip]),
        prop::sample::select(vec![
            Measure::DistinctCvs,
            Measure::DistinctCvs,
            Measure::Events,
            Measure::Cvs,
            Measure::DistinctAccounts,
            Measure::DistinctUsers,
            Measure::DistinctIps,
        ]),
        1u8..16,
        0..WINDOWS.len(),
        1u64..7,
        any::<bool>(),
        prop::option::weighted(
            0.3,
            (
                1u32..4,
                1u32..4,
                prop::sample::select(vec![Statistic::Median, Statistic::P90, Statistic::Max, Statistic::Mean]),
                prop::sample::select(vec![0.5, 1.0, 2.5]),
            ),
        ),
    )
        .prop_map(
            |(kind, measure, actions, window, threshold, suspend, baseline)| RuleDraw {
                kind,
                // A key's own field counted per key is always 1, and refused by the config.
                measure: match (kind, measure) {
                    (KeyKind::AccountId, Measure::DistinctAccounts)
                    | (KeyKind::UserId, Measure::DistinctUsers)
                    | (KeyKind::Ip, Measure::DistinctIps) => Measure::DistinctCvs,
                    _ => measure,
                },
                actions,
                window,
                threshold,
                suspend,
                baseline: baseline
                    .map(|(history, min, statistic, factor)| (history, min.min(history), statistic, factor)),
            },
        )
}

fn rules_draw() -> impl Strategy<Value = (Vec<RuleDraw>, usize)> {
    // Org keys always have two distinct rules with different windows (the #13 case).
    let org = |window| RuleDraw {
        kind: KeyKind::OrgId,
        measure: Measure::DistinctCvs,
        actions: 0b11,
        window,
        threshold: 4,
        suspend: false,
        baseline: None,
    };
    (prop::collection::vec(rule_draw(), 2..8), 0..LATENESS.len(), 0..3usize).prop_map(
        move |(mut rules, lateness, short)| {
            rules.push(org(short + 3));
            rules.push(org(short));
            (rules, lateness)
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        6 => 0i64..4,
        2 => 4i64..20,
        1 => 60i64..700,
        // Across UTC days, for the histories of baseline rules.
        1 => 20_000i64..100_000,
    ];
    let behind_ms = prop_oneof![
        6 => Just(0i64),
        2 => 0i64..1000,
        2 => 0i64..30_000,
        1 => 30_000i64..120_000,
    ];
    (
        advance,
        behind_ms,
        0u8..5,
        prop::option::weighted(0.8, 0u8..3),
        prop::option::weighted(0.6, 0u8..4),
        prop::option::weighted(0.7, 0u8..3),
        0..ACTIONS.len(),
        prop::collection::vec(0u8..12, 0..4),
        0u8..3,
        prop::bool::weighted(0.06),
    )
        .prop_map(
            |(advance, behind_ms, account, org, user, ip, action, cvs, visibility, restart)| Step {
                advance,
                behind_ms,
                account,
                org,
                user,
                ip,
                action,
                cvs,
                visibility,
                restart,
            },
        )
}

fn rule_set(draws: &[RuleDraw], lateness: usize) -> RuleSet {
    let specs: Vec<RuleSpec> = draws
        .iter()
        .enumerate()
        .map(|(i, d)| RuleSpec {
            name: format!("r{i}-{}-{}", d.kind.as_str(), WINDOWS[d.window]),
            actions: (0..ACTIONS.len())
                .filter(|a| d.actions & (1 << a) != 0)
                .map(|a| ACTIONS[a].to_string())
                .collect(),
            group_by: d.kind,
            measure: d.measure,
            window: WINDOWS[d.window].into(),
            threshold: d.threshold,
            per_vacancy: None,
            response: if d.suspend { Response::Suspend } else { Response::Alert },
            severity: Severity::High,
            segments: Default::default(),
            dry_run: false,
            description: None,
            baseline: d.baseline.map(|(history, min, statistic, factor)| BaselineSpec {
                history: format!("{history}d"),
                statistic,
                factor,
                min_history: format!("{min}d"),
            }),
        })
        .collect();
    let engine = EngineSpec {
        allowed_lateness: LATENESS[lateness].into(),
        ..EngineSpec::default()
    };
    RuleSet::compile(&engine, &specs, Profiles::default(), &["a0".to_string()]).expect("drawn rules compile")
}

fn lines(steps: &[Step]) -> Vec<String> {
    let visibility = ["unknown", "anonymous", "named"];
    let mut clock = T0;
    steps
        .iter()
        .map(|s| {
            clock += s.advance * 1000;
            let mut ev = serde_json::json!({
                "ts": clock - s.behind_ms,
                "account_id": format!("a{}", s.account),
                "action": ACTIONS[s.action],
                "cv_ids": s.cvs.iter().map(|c| format!("cv{c}")).collect::<Vec<_>>(),
                "cv_visibility": visibility[s.visibility as usize],
            });
            for (field, value) in [("org_id", s.org), ("user_id", s.user), ("ip", s.ip)] {
                if let Some(v) = value {
                    ev[field] = format!("{field}-{v}").into();
                }
            }
            ev.to_string()
        })
        .collect()
}

/// Everything an observer sees of a run: per event and engine, the alerts (as JSON) and
/// the incident updates; at the end, counters, sizes and a snapshot.
#[derive(Debug, PartialEq)]
struct Seen {
    alerts: Vec<(usize, usize, String)>,
    updates: Vec<(usize, usize, Vec<IncidentUpdate>)>,
    stats: Vec<EngineStats>,
    sizes: Vec<StateSize>,
    snapshots: Vec<EngineSnapshot>,
}

/// Runs `lines` through one engine per key kind, as the HTTP service does, and one
/// engine for all kinds; with `restarts`, each engine is snapshotted and replaced by its
/// restored snapshot after every step marked so.
fn run(set: &RuleSet, lines: &[String], steps: &[Step], restarts: bool) -> Result<Seen, TestCaseError> {
    let mut kinds: Vec<Arc<RuleSet>> = set.kinds().map(|k| Arc::new(set.restricted_to(k))).collect();
    kinds.push(Arc::new(set.clone()));
    let mut engines: Vec<Engine> = kinds.iter().map(|r| Engine::new(r.clone())).collect();
    let mut seen = Seen {
        alerts: Vec::new(),
        updates: Vec::new(),
        stats: Vec::new(),
        sizes: Vec::new(),
        snapshots: Vec::new(),
    };
    for e in &mut engines {
        e.track_exposure(true);
    }
    for (i, (line, step)) in lines.iter().zip(steps).enumerate() {
        for (k, e) in engines.iter_mut().enumerate() {
            let mut out: Vec<Alert> = Vec::new();
            e.process_bytes(line.as_bytes(), None, &mut out);
            for a in &out {
                prop_assert!(a.value < 1000, "a wrapped count fired: {a:?}");
                seen.alerts.push((i, k, serde_json::to_string(a).unwrap()));
            }
            let updates = e.take_updates();
            if !updates.is_empty() {
                seen.updates.push((i, k, updates));
            }
            if let Err(err) = e.check_state() {
                return Err(TestCaseError::fail(format!("after event {i} ({line}): {err}")));
            }
        }
        if restarts && step.restart {
            for (e, rules) in engines.iter_mut().zip(&kinds) {
                let text = serde_json::to_string(&e.snapshot()).unwrap();
                let back: EngineSnapshot = serde_json::from_str(&text).unwrap();
                *e = Engine::restore(rules.clone(), &back)
                    .map_err(|err| TestCaseError::fail(format!("restore after event {i}: {err}")))?;
                e.track_exposure(true);
            }
        }
    }
    for e in &engines {
        seen.stats.push(e.stats().clone());
        seen.sizes.push(e.state_size());
        seen.snapshots.push(e.snapshot());
    }
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_restored_engine_goes_on_exactly_as_one_never_stopped(
        (draws, lateness) in rules_draw(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let set = rule_set(&draws, lateness);
        let lines = lines(&steps);
        let whole = run(&set, &lines, &steps, false)?;
        let restarted = run(&set, &lines, &steps, true)?;
        prop_assert_eq!(&restarted.alerts, &whole.alerts);
        prop_assert_eq!(&restarted.updates, &whole.updates);
        prop_assert_eq!(&restarted, &whole);
    }
}
