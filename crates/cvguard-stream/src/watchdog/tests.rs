//! The watchdog's state machine without IO: each alarm raised once when it starts and
//! resolved once when it ends, whatever the sequence of observations; a restart continues
//! or resolves what was firing, never raises it twice.

use std::collections::BTreeMap;
use std::time::Duration;

use cvguard_config::HealthLimits;
use proptest::prelude::*;

use super::*;

const T0: i64 = 1_700_000_000_000;

fn limits() -> HealthLimits {
    HealthLimits {
        silence: Duration::from_secs(5),
        watermark_stall: Duration::from_secs(10),
        max_lag: 100,
        max_rejected_share: 0.05,
        rejected_window: Duration::from_secs(10),
        rejected_min_events: 20,
        sink_failing_for: Duration::from_secs(4),
    }
}

fn obs(events_in: u64) -> Observation {
    Observation {
        connected: true,
        events_in,
        oldest_waiting_call_ms: Some(None),
        ..Observation::default()
    }
}

/// Runs `steps` one second apart from `state`, returning the changes of each.
fn run(mut state: State, steps: &[Observation]) -> (State, Vec<Vec<Change>>) {
    let mut all = Vec::new();
    for (i, o) in steps.iter().enumerate() {
        let now = state.started_ms + (i as i64 + 1) * 1000;
        let (next, changes) = evaluate(&state, o, now, &limits());
        state = next;
        all.push(changes);
    }
    (state, all)
}

fn of(changes: &[Vec<Change>], alarm: Alarm) -> Vec<&Change> {
    changes
        .iter()
        .flatten()
        .filter(|c| match c {
            Change::Raised { alarm: a, .. } | Change::Resolved { alarm: a, .. } => *a == alarm,
        })
        .collect()
}

#[test]
fn a_stalled_source_raises_one_silence_alarm_and_one_resolution() {
    // Events for 3 s, nothing for 20 s, events again.
    let mut steps: Vec<Observation> = (1..=3).map(|n| obs(n * 10)).collect();
    steps.extend((0..20).map(|_| obs(30)));
    steps.extend((4..=8).map(|n| obs(n * 10)));
    let (state, changes) = run(State::new(T0, BTreeMap::new()), &steps);
    let silence = of(&changes, Alarm::Silence);
    assert_eq!(silence.len(), 2, "{silence:?}");
    let (Change::Raised { episode: fired, .. }, Change::Resolved { episode: ended, .. }) = (silence[0], silence[1])
    else {
        panic!("{silence:?}")
    };
    assert_eq!(fired, ended, "the resolution pairs with its firing");
    // The last event at 3 s; raised 5 s later.
    assert_eq!(fired.since_ms, T0 + 8_000);
    assert!(state.alarm(Alarm::Silence).firing.is_none());
    // Nothing else fired.
    assert_eq!(changes.iter().flatten().count(), 2);
}

#[test]
fn silence_is_not_raised_while_the_source_is_not_connected() {
    let quiet = Observation {
        connected: false,
        ..obs(0)
    };
    let (_, changes) = run(State::new(T0, BTreeMap::new()), &vec![quiet; 30]);
    assert!(of(&changes, Alarm::Silence).is_empty());
}

#[test]
fn a_restart_continues_a_firing_alarm_while_it_lasts_and_resolves_it_once_when_it_ends() {
    let before = Episode {
        alert_id: "cvguard-health-silence-1".into(),
        since_ms: T0 - 60_000,
    };
    let restored = || State::new(T0, BTreeMap::from([(Alarm::Silence, before.clone())]));
    // Still silent after the start: continued, no second firing alert.
    let (state, changes) = run(restored(), &vec![obs(0); 30]);
    assert!(of(&changes, Alarm::Silence).is_empty(), "{changes:?}");
    assert_eq!(state.alarm(Alarm::Silence).firing.as_ref(), Some(&before));
    // Events come back: resolved under the episode's own id.
    let (_, changes) = run(restored(), &[obs(0), obs(5), obs(9)]);
    let silence = of(&changes, Alarm::Silence);
    assert_eq!(silence.len(), 1);
    assert!(matches!(silence[0], Change::Resolved { episode, .. } if *episode == before));
}

#[test]
fn one_rejected_event_of_two_does_not_fire_but_a_rejected_share_of_many_does() {
    let mut few = obs(1);
    few.rejected = 1;
    let (_, changes) = run(State::new(T0, BTreeMap::new()), &vec![few; 20]);
    assert!(of(&changes, Alarm::RejectedShare).is_empty());

    let steps: Vec<Observation> = (1..=20)
        .map(|n| Observation {
            rejected: n * 2,
            ..obs(n * 10)
        })
        .collect();
    let (state, changes) = run(State::new(T0, BTreeMap::new()), &steps);
    assert_eq!(of(&changes, Alarm::RejectedShare).len(), 1);
    assert!(state.alarm(Alarm::RejectedShare).detail.contains("rejected"));
}

#[test]
fn a_part_taking_events_that_do_not_move_its_watermark_is_stalled_an_idle_one_is_not() {
    let source = |name: &str, watermark_ms, events| SourceObservation {
        name: name.into(),
        watermark_ms: Some(watermark_ms),
        events,
        lag: None,
    };
    let steps: Vec<Observation> = (1..=15)
        .map(|n| Observation {
            sources: vec![source("http/part-0-of-16", T0, n), source("http/part-1-of-16", T0, 1)],
            ..obs(n)
        })
        .collect();
    let (state, changes) = run(State::new(T0, BTreeMap::new()), &steps);
    assert_eq!(of(&changes, Alarm::WatermarkStalled).len(), 1);
    let detail = &state.alarm(Alarm::WatermarkStalled).detail;
    assert!(detail.contains("part-0") && !detail.contains("part-1"), "{detail}");
}

#[test]
fn a_suspend_call_waiting_too_long_is_a_failing_sink_until_it_is_delivered() {
    let waiting = Observation {
        oldest_waiting_call_ms: Some(Some(T0)),
        ..obs(0)
    };
    let mut steps = vec![waiting; 6];
    steps.push(obs(0));
    let (_, changes) = run(State::new(T0, BTreeMap::new()), &steps);
    let sink = of(&changes, Alarm::SinkFailing);
    assert_eq!(sink.len(), 2);
    assert!(matches!(sink[1], Change::Resolved { .. }));
}

/// A failing sink's alarm, firing at a kill -9, is not resolved by the new process's
/// fresh counters: it stays firing while the sink has sent nothing, for one limit; it
/// resolves when the sink delivers, or when the limit passes without a failure.
#[test]
fn a_restart_keeps_a_failing_sink_firing_until_the_sink_is_seen_again() {
    let before = Episode {
        alert_id: "before-the-crash".into(),
        since_ms: T0 - 60_000,
    };
    let restored = || State::new(T0, BTreeMap::from([(Alarm::SinkFailing, before.clone())]));
    let untried = Observation {
        sinks: vec![("webhook".into(), None)],
        ..obs(0)
    };
    let (state, changes) = run(restored(), &vec![untried.clone(); 3]);
    assert!(of(&changes, Alarm::SinkFailing).is_empty(), "{changes:?}");
    assert_eq!(state.alarm(Alarm::SinkFailing).firing.as_ref(), Some(&before));
    // Still failing once it tries: the same episode goes on, never raised twice.
    let failing = Observation {
        sinks: vec![("webhook".into(), Some(Some(T0 + 500)))],
        ..obs(0)
    };
    let (state, changes) = run(restored(), &vec![failing; 8]);
    assert!(of(&changes, Alarm::SinkFailing).is_empty(), "{changes:?}");
    assert_eq!(state.alarm(Alarm::SinkFailing).firing.as_ref(), Some(&before));
    // Nothing sent for a whole limit: no failure seen, resolved once.
    let (_, changes) = run(restored(), &vec![untried; 8]);
    let sink = of(&changes, Alarm::SinkFailing);
    assert_eq!(sink.len(), 1, "{changes:?}");
    assert!(matches!(sink[0], Change::Resolved { .. }));
    // A fresh start with no episode raises nothing for an untried sink.
    let (_, changes) = run(
        State::new(T0, BTreeMap::new()),
        &vec![
            Observation {
                sinks: vec![("webhook".into(), None)],
                ..obs(0)
            };
            8
        ],
    );
    assert!(of(&changes, Alarm::SinkFailing).is_empty());
}

/// One tick's observation, drawn at random.
fn observation() -> impl Strategy<Value = (bool, u64, u64, bool, Option<i64>, u8)> {
    (
        any::<bool>(),
        prop_oneof![3 => Just(0u64), 1 => 1u64..50],
        prop_oneof![3 => Just(0u64), 1 => 1u64..50],
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, 0i64..10),
        1u8..4,
    )
}

proptest! {
    /// Whatever happens, per alarm the changes alternate raised, resolved, raised, ...
    /// (starting with raised), a resolution carries the episode it ends, every episode
    /// has its own id, and the state's firing flag is raised minus resolved.
    #[test]
    fn every_alarm_is_raised_once_and_resolved_once_per_episode(
        ticks in prop::collection::vec(observation(), 1..200),
        restored in prop::option::of(prop::sample::select(Alarm::ALL.to_vec())),
    ) {
        let restored_episode = Episode { alert_id: "before-the-crash".into(), since_ms: T0 - 1 };
        let firing: BTreeMap<Alarm, Episode> = restored.map(|a| (a, restored_episode.clone())).into_iter().collect();
        let mut state = State::new(T0, firing.clone());
        let mut now = T0;
        let (mut events_in, mut rejected) = (0u64, 0u64);
        let mut open: BTreeMap<Alarm, Episode> = firing;
        let mut ids = std::collections::BTreeSet::new();
        for (tick, (connected, more_in, more_rejected, store_failing, call_age, step)) in ticks.into_iter().enumerate() {
            now += i64::from(step) * 1000;
            events_in += more_in;
            rejected += more_rejected;
            let o = Observation {
                connected,
                kafka: false,
                events_in,
                rejected,
                sources: Vec::new(),
                sinks: Vec::new(),
                oldest_waiting_call_ms: Some(call_age.map(|age| now - age * 1000)),
                store_failing,
            };
            let (next, changes) = evaluate(&state, &o, now, &limits());
            for c in changes {
                match c {
                    Change::Raised { alarm, episode, .. } => {
                        prop_assert!(!open.contains_key(&alarm), "{alarm:?} raised twice");
                        prop_assert!(ids.insert(episode.alert_id.clone()), "an id reused");
                        open.insert(alarm, episode);
                    }
                    Change::Resolved { alarm, episode, .. } => {
                        prop_assert_eq!(open.remove(&alarm), Some(episode), "resolved what was not firing");
                    }
                }
            }
            state = next;
            prop_assert_eq!(&state.firing(), &open);
            // The store's alarm follows the store at once.
            prop_assert_eq!(state.alarm(Alarm::StoreUnreachable).firing.is_some(), store_failing);
            // No silence alarm survives an event taken in (the first observation is the
            // baseline the counts start from).
            if more_in > 0 && tick > 0 {
                prop_assert!(state.alarm(Alarm::Silence).firing.is_none());
            }
        }
    }
}
