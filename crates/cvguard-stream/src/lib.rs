//! cvguard-stream: the long-running side of cvguard.
//!
//! The same engine as `replay`, run per Kafka partition (or per HTTP ingest shard), with
//! its state snapshotted and rebuilt, its alerts published to Kafka topics and sinks.
//! Every (rule, key) lives on exactly one engine: account rules on the partition of the
//! account's events; org, user and ip rules on the partition of the repartition topic
//! their key hashes to.

pub mod effects;
pub mod health;
pub mod http;
pub mod ingest_log;
pub mod kafka;
pub mod metrics;
pub mod records;
pub mod snapshot_store;
pub mod state_lock;
pub mod warm_start;
pub mod watchdog;

pub use cvguard_respond::SinkSet;
pub use effects::Effects;
pub use health::Health;
pub use metrics::Metrics;
pub use snapshot_store::SnapshotStore;
pub use state_lock::StateLock;

use std::sync::Arc;

use cvguard_core::{Closest, EngineStats, KeyKind, RuleSet, StateSize, WindowValue};

/// One answer from several engines' `closest` lists, in `Closest::rank` order.
pub fn merge_closest(lists: Vec<Vec<Closest>>, limit: usize) -> Vec<Closest> {
    let mut all: Vec<Closest> = lists.into_iter().flatten().collect();
    all.sort_by(Closest::rank);
    all.truncate(limit);
    all
}

/// What the API asks of a running pipeline, whichever source feeds it.
pub trait Detection: Send + Sync {
    /// The live windows of a key against its effective thresholds; `None` when the engine
    /// holding it did not answer in time (busy: the caller says so, it does not claim the
    /// key is untracked).
    fn query(&self, kind: KeyKind, key: &str) -> Option<Vec<WindowValue>>;
    /// The `limit` (key, rule) pairs of every engine here whose value is the largest
    /// share of its threshold (`Engine::closest`); `None` when some engine did not answer
    /// in time.
    fn closest(&self, limit: usize) -> Option<Vec<Closest>>;
    /// Swaps the rules, keeping window state.
    fn reload(&self, rules: Arc<RuleSet>);
    /// Engine counters and state size, summed over partitions or shards.
    fn stats(&self) -> (EngineStats, StateSize);
    /// Every event read, counted once by outcome: where it entered (HTTP ingest, or the
    /// input partitions' engines), not once per key kind's engine.
    fn event_counts(&self) -> EventCounts;
    /// Each partition's or part's progress, for the health watchdog.
    fn sources(&self) -> Vec<watchdog::SourceObservation> {
        Vec::new()
    }
}

/// Events read by outcome, each event once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Accepted into windows (not late).
    pub accepted: u64,
    /// Older than the watermark of some key kind: counted, in no window.
    pub late: u64,
    /// A second delivery of an event (same `event_id` within the dedupe window).
    pub duplicate: u64,
    /// Refused, by `RejectReason::index`.
    pub rejected: [u64; cvguard_core::RejectReason::ALL.len()],
}

impl Detection for http::HttpPipeline {
    fn query(&self, kind: KeyKind, key: &str) -> Option<Vec<WindowValue>> {
        http::HttpPipeline::query(self, kind, key)
    }
    fn closest(&self, limit: usize) -> Option<Vec<Closest>> {
        http::HttpPipeline::closest(self, limit)
    }
    fn reload(&self, rules: Arc<RuleSet>) {
        http::HttpPipeline::reload(self, rules)
    }
    fn stats(&self) -> (EngineStats, StateSize) {
        self.engine_stats()
    }
    fn event_counts(&self) -> EventCounts {
        http::HttpPipeline::event_counts(self)
    }
    fn sources(&self) -> Vec<watchdog::SourceObservation> {
        http::HttpPipeline::sources(self)
    }
}

/// A Kafka source as the API sees it.
pub struct KafkaDetection {
    pub control: kafka::KafkaControl,
    pub stats: kafka::PartitionStats,
    /// Its partitions hold events already counted on their input partition.
    pub repartition_topic: String,
}

impl Detection for KafkaDetection {
    fn query(&self, kind: KeyKind, key: &str) -> Option<Vec<WindowValue>> {
        Some(self.control.query(kind, key))
    }
    fn closest(&self, limit: usize) -> Option<Vec<Closest>> {
        self.control.closest(limit)
    }
    fn reload(&self, rules: Arc<RuleSet>) {
        self.control.reload(&rules)
    }
    fn stats(&self) -> (EngineStats, StateSize) {
        let mut sum = EngineStats::default();
        let mut size = StateSize::default();
        for (s, _, z) in self.stats.lock().expect("stats").values() {
            sum.add(s);
            size.add(z);
        }
        (sum, size)
    }
    fn event_counts(&self) -> EventCounts {
        let mut counts = EventCounts::default();
        for (tp, (s, _, _)) in self.stats.lock().expect("stats").iter() {
            if *tp.topic == *self.repartition_topic {
                continue;
            }
            counts.accepted += s.accepted;
            counts.late += s.late;
            counts.duplicate += s.duplicates;
            for (sum, n) in counts.rejected.iter_mut().zip(s.rejected) {
                *sum += n;
            }
        }
        counts
    }
    fn sources(&self) -> Vec<watchdog::SourceObservation> {
        self.stats
            .lock()
            .expect("stats")
            .iter()
            .map(|(tp, (s, c, _))| watchdog::SourceObservation {
                name: tp.snapshot_name(),
                watermark_ms: c.newest_event_ms,
                events: s.events,
                lag: None,
            })
            .collect()
    }
}
