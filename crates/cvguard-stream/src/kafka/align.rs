//! Event-time alignment of the input partitions while they catch up.
//!
//! Org, user and ip keys are decided on the repartition topic, where the events of every
//! input partition meet, and an engine's windows end at the newest event it has seen.
//! When input partitions are consumed at their own pace (a backlog after a restart or
//! an outage, a first start on days of traffic), one that is hours ahead in event time
//! drags the repartition engines' present forward: the others' events then fall out of
//! the windows or arrive late, and a harvest spread over accounts is missed, or caught
//! at another count than `replay` of the same traffic catches it. Measured on a simulated
//! board of three days (6 partitions, 20 MB): one partition held twice the bytes of the
//! others, so consumed at an equal byte rate it lagged by a day and a half, and the
//! organisation ring that replay alerts on was never alerted.
//!
//! So while some input partition is catching up (more than [`CATCH_UP`] messages behind
//! the broker's end), a partition whose newest event is more than the allowed lateness
//! ahead of the slowest catching-up partition waits: its worker holds its messages back
//! (in order, before any later ones) until the slowest has come within reach. Partitions
//! that are not behind (live, or sending only a trickle of old events) set no pace, so
//! they never hold the others back. A partition rebuilding its windows re-keys nothing
//! until it reaches what was committed, so it never waits, and it sets the pace only in
//! its last [`PACE_REBUILD`] messages before that point: a restart's short replay from
//! the latest snapshot keeps the others with it, a takeover's long look-back does not
//! stall the live partitions. Once nothing is catching up, nothing waits and this costs
//! one atomic load per message. The consumer pauses a partition whose held messages pass
//! [`HOLD_PAUSE`], so holding never grows memory past that.
//!
//! Alignment covers the partitions of one instance. Several instances in one group each
//! align their own; a repartition engine fed by two of them can still see their skew.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use super::Tp;

/// A partition further behind the broker's end than this many messages is catching up.
pub const CATCH_UP: i64 = 100;
/// A rebuilding partition this close to the offset where it starts re-keying sets the pace.
pub const PACE_REBUILD: i64 = 20_000;
/// Held messages of a partition past which the consumer pauses it (and resumes it below
/// half of it).
pub const HOLD_PAUSE: usize = 20_000;

/// Where a partition's engine is in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTime {
    /// No event yet: while it sets the pace, the others wait for its first event.
    NotYet,
    /// Its newest event (ms).
    At(i64),
}

/// Where a partition is, as its worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub time: EventTime,
    /// The next offset to decide.
    pub decided: i64,
    /// Where it starts re-keying: below, it rebuilds its windows from events decided before.
    pub rekeys_from: i64,
}

#[derive(Debug)]
struct Part {
    time: EventTime,
    decided: i64,
    rekeys_from: i64,
    /// The broker's end offset, as last read.
    end: Option<i64>,
    /// Messages its worker holds back.
    held: usize,
}

impl Part {
    fn catching_up(&self) -> bool {
        self.end.is_some_and(|end| end - self.decided > CATCH_UP)
    }

    /// Where it holds the others back to, if it does.
    fn pace(&self) -> Option<i64> {
        if !self.catching_up() || self.decided < self.rekeys_from - PACE_REBUILD {
            return None;
        }
        Some(match self.time {
            EventTime::NotYet => i64::MIN,
            EventTime::At(t) => t,
        })
    }

    fn set(&mut self, at: Progress, held: usize) {
        self.time = at.time;
        self.decided = at.decided;
        self.rekeys_from = at.rekeys_from;
        self.held = held;
    }
}

/// Shared by the consumer thread (assignments, end offsets, pausing) and the workers
/// (where each partition is, whether it must wait).
#[derive(Debug)]
pub struct Align {
    /// How far ahead a partition may run, in ms of event time; negative: alignment off
    /// (no key kind is re-keyed).
    skew_ms: AtomicI64,
    /// Some partition is catching up.
    active: AtomicBool,
    /// Bit `i % 64`: worker `i` holds messages back, and wants to hear when another
    /// worker's partitions move on.
    holding: AtomicU64,
    parts: Mutex<HashMap<Tp, Part>>,
}

impl Align {
    pub fn new(skew_ms: Option<i64>) -> Align {
        Align {
            skew_ms: AtomicI64::new(skew_ms.map_or(-1, |s| s.max(0))),
            active: AtomicBool::new(false),
            holding: AtomicU64::new(0),
            parts: Mutex::new(HashMap::new()),
        }
    }

    /// New rules: another skew, or none.
    pub fn set_skew(&self, skew_ms: Option<i64>) {
        self.skew_ms.store(skew_ms.map_or(-1, |s| s.max(0)), Ordering::Relaxed);
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, Part>> {
        self.parts.lock().expect("align lock")
    }

    /// An input partition assigned to this instance, starting at `start`, re-keying from
    /// `rekeys_from`.
    pub fn assign(&self, tp: Tp, start: i64, rekeys_from: i64) {
        self.parts().insert(
            tp,
            Part {
                time: EventTime::NotYet,
                decided: start,
                rekeys_from,
                end: None,
                held: 0,
            },
        );
    }

    pub fn revoke(&self, tp: &Tp) {
        self.parts().remove(tp);
    }

    /// The input partitions assigned, to read their end offsets.
    pub fn partitions(&self) -> Vec<Tp> {
        self.parts().keys().cloned().collect()
    }

    /// End offsets read from the broker; decides whether alignment is on.
    pub fn set_ends(&self, ends: &HashMap<Tp, i64>) -> bool {
        let mut parts = self.parts();
        for (tp, part) in parts.iter_mut() {
            if let Some(end) = ends.get(tp) {
                part.end = Some(*end);
            }
        }
        let active = self.skew_ms.load(Ordering::Relaxed) >= 0 && parts.values().any(Part::catching_up);
        self.active.store(active, Ordering::Relaxed);
        active
    }

    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// A worker's word on a partition: where it is, and how many messages it holds.
    pub fn report(&self, tp: &Tp, at: Progress, held: usize) {
        if let Some(p) = self.parts().get_mut(tp) {
            p.set(at, held);
        }
    }

    /// Records where `tp` is and says whether it must wait before deciding its next
    /// message: alignment is on, it re-keys, and it is too far ahead of the slowest
    /// partition that sets the pace (or one of those has no event yet).
    pub fn must_wait(&self, tp: &Tp, at: Progress, held: usize) -> bool {
        if !self.active() {
            return false;
        }
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let mut parts = self.parts();
        let Some(me) = parts.get_mut(tp) else { return false };
        me.set(at, held);
        let EventTime::At(mine) = at.time else { return false };
        if skew < 0 || at.decided < at.rekeys_from {
            return false;
        }
        let slowest = parts.values().filter_map(Part::pace).min();
        slowest.is_some_and(|s| mine > s.saturating_add(skew))
    }

    /// Worker `worker` holds messages back (or no longer does).
    pub fn set_holding(&self, worker: usize, holding: bool) {
        let bit = 1u64 << (worker % 64);
        if holding {
            self.holding.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.holding.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Whether worker `worker` holds messages back.
    pub fn is_holding(&self, worker: usize) -> bool {
        self.holding.load(Ordering::Relaxed) & (1u64 << (worker % 64)) != 0
    }

    /// Partitions whose held messages pass `limit`, and those back under half of it.
    pub fn held_over(&self, limit: usize) -> (Vec<Tp>, Vec<Tp>) {
        let parts = self.parts();
        let over = parts
            .iter()
            .filter(|(_, p)| p.held > limit)
            .map(|(tp, _)| tp.clone())
            .collect();
        let under = parts
            .iter()
            .filter(|(_, p)| p.held <= limit / 2)
            .map(|(tp, _)| tp.clone())
            .collect();
        (over, under)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tp(p: i32) -> Tp {
        Tp {
            topic: Arc::from("events"),
            partition: p,
        }
    }

    fn ends(list: &[(i32, i64)]) -> HashMap<Tp, i64> {
        list.iter().map(|(p, e)| (tp(*p), *e)).collect()
    }

    fn at(t: i64, decided: i64) -> Progress {
        Progress {
            time: EventTime::At(t),
            decided,
            rekeys_from: 0,
        }
    }

    #[test]
    fn a_partition_ahead_of_the_slowest_catching_up_waits_for_it() {
        let a = Align::new(Some(1_000));
        for p in 0..3 {
            a.assign(tp(p), 0, 0);
        }
        assert!(!a.must_wait(&tp(0), at(50_000, 10), 0), "off until ends are known");
        assert!(a.set_ends(&ends(&[(0, 10_000), (1, 10_000), (2, 10_000)])));
        // Partitions 1 and 2 have no event yet: the others wait for their first.
        assert!(a.must_wait(&tp(0), at(50_000, 10), 0));
        let none = Progress {
            time: EventTime::NotYet,
            decided: 0,
            rekeys_from: 0,
        };
        assert!(!a.must_wait(&tp(2), none, 0), "nothing to wait with");
        a.report(&tp(2), at(45_000, 5), 0);
        assert!(!a.must_wait(&tp(1), at(10_000, 10), 0), "the slowest never waits");
        assert!(a.must_wait(&tp(0), at(50_000, 10), 0), "40 s ahead of partition 1");
        assert!(!a.must_wait(&tp(0), at(11_000, 10), 0), "within the skew");
    }

    #[test]
    fn a_rebuilding_partition_never_waits_and_sets_the_pace_only_near_where_it_re_keys() {
        let a = Align::new(Some(1_000));
        a.assign(tp(0), 0, 0);
        a.assign(tp(1), 0, 0);
        a.set_ends(&ends(&[(0, 1_000_000), (1, 1_000_000)]));
        let rebuilding = |t, decided| Progress {
            time: EventTime::At(t),
            decided,
            rekeys_from: 500_000,
        };
        // A long look-back far from its committed offset: no pace, and it never waits.
        a.report(&tp(1), rebuilding(1_000, 10), 0);
        assert!(!a.must_wait(&tp(0), at(900_000, 600_000), 0));
        assert!(!a.must_wait(&tp(1), rebuilding(1_000_000, 10), 0));
        // Close to where it starts re-keying, it keeps the others with it.
        a.report(&tp(1), rebuilding(100_000, 500_000 - PACE_REBUILD), 0);
        assert!(a.must_wait(&tp(0), at(900_000, 600_000), 0));
        assert!(!a.must_wait(&tp(0), at(100_500, 600_000), 0));
    }

    #[test]
    fn partitions_that_are_not_behind_set_no_pace_and_nothing_waits_once_all_caught_up() {
        let a = Align::new(Some(1_000));
        a.assign(tp(0), 0, 0);
        a.assign(tp(1), 0, 0);
        a.set_ends(&ends(&[(0, 5_000), (1, 50)]));
        // Partition 1 is live with old events (50 messages behind at most): no pace.
        a.report(&tp(1), at(1_000, 0), 0);
        assert!(!a.must_wait(&tp(0), at(900_000, 0), 0));
        // Partition 0 catching up sets the pace for partition 1, not the reverse.
        a.report(&tp(0), at(100_000, 10), 0);
        assert!(a.must_wait(&tp(1), at(900_000, 10), 0));
        // All caught up: off.
        a.report(&tp(0), at(100_000, 5_000), 0);
        assert!(!a.set_ends(&ends(&[(0, 5_000), (1, 50)])));
        assert!(!a.must_wait(&tp(1), at(900_000, 10), 0));
        // Without re-keyed kinds it never turns on.
        let off = Align::new(None);
        off.assign(tp(0), 0, 0);
        assert!(!off.set_ends(&ends(&[(0, 5_000)])));
    }

    #[test]
    fn partitions_holding_too_much_are_paused_and_resumed_below_half() {
        let a = Align::new(Some(0));
        a.assign(tp(0), 0, 0);
        a.assign(tp(1), 0, 0);
        a.report(&tp(0), at(1, 0), 101);
        a.report(&tp(1), at(1, 0), 30);
        let (over, under) = a.held_over(100);
        assert_eq!(over, vec![tp(0)]);
        assert_eq!(under, vec![tp(1)]);
        a.revoke(&tp(0));
        assert_eq!(a.partitions(), vec![tp(1)]);
    }
}
