//! The Kafka source: a consumer group over the event topics and the internal
//! repartition topic, with per-partition engines on worker threads.
//!
//! Offsets are committed only after the effects of the events before them (alerts,
//! incidents, dead letters, re-keyed events) are acknowledged. On assignment a partition
//! is rebuilt from its newest local snapshot, else from the broker's offsets-for-times
//! (now minus the longest window), and alerts from offsets below the committed one are
//! recomputed but not published again.

mod align;
mod consumer;
pub mod incident_feed;
pub mod output;
pub mod regroup;
mod sources;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvguard_config::KafkaSection;
use cvguard_core::{EngineStats, KeyKind, RuleSet};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::health::Health;
use crate::snapshot_store::SnapshotStore;
use cvguard_respond::SinkSet;

pub use consumer::{start, KafkaControl, KafkaHandle, RunSummary};
pub use worker::WorkerCounters;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl Tp {
    pub fn snapshot_name(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

/// The rule set split by key kind: account rules run on the input partitions, the
/// others on the repartition topic.
pub struct Kinds {
    pub account: Arc<RuleSet>,
    pub cross: Vec<(KeyKind, Arc<RuleSet>)>,
    /// The longest window of any rule, for the rebuild look-back.
    pub max_window: Duration,
}

impl Kinds {
    pub fn new(rules: &RuleSet) -> Kinds {
        // Re-keyed events arrive from many input partitions, which progress at different
        // speeds (most of all while catching up), so the merged stream can be far out of
        // order: accept anything still inside the kind's longest window.
        let cross = rules
            .kinds()
            .filter(|k| *k != KeyKind::AccountId)
            .map(|k| {
                let lateness = (rules.max_window_secs(k) * 1000).max(rules.settings.allowed_lateness_ms);
                (k, Arc::new(rules.restricted_to(k).with_allowed_lateness(lateness)))
            })
            .collect();
        let max_secs = KeyKind::ALL
            .iter()
            .map(|k| rules.max_window_secs(*k))
            .max()
            .unwrap_or(0);
        Kinds {
            account: Arc::new(rules.restricted_to(KeyKind::AccountId)),
            cross,
            max_window: Duration::from_secs(max_secs as u64)
                + Duration::from_millis(rules.settings.allowed_lateness_ms as u64),
        }
    }
}

impl Kinds {
    /// How far ahead of the slowest catching-up input partition another may run, in ms
    /// of event time: the allowed lateness. `None` when no key kind is re-keyed, so
    /// nothing depends on the order the partitions are read in.
    pub fn alignment_skew_ms(&self) -> Option<i64> {
        (!self.cross.is_empty()).then_some(self.account.settings.allowed_lateness_ms)
    }
}

/// What `run` needs.
pub struct KafkaOptions {
    pub section: KafkaSection,
    pub rules: Arc<RuleSet>,
    pub workers: usize,
    pub snapshot_interval: Duration,
    pub commit_interval: Duration,
    pub store: SnapshotStore,
    pub sinks: SinkSet,
    pub health: Arc<Health>,
    pub shutdown: Arc<AtomicBool>,
    /// Records, publishes and marks each decision (`effects.rs`).
    pub effects: crate::Effects,
    pub metrics: Arc<crate::Metrics>,
}

/// Per-partition engine stats and worker counters, readable while running.
pub type PartitionStats = Arc<Mutex<HashMap<Tp, (EngineStats, WorkerCounters, cvguard_core::StateSize)>>>;

#[derive(Debug, thiserror::Error)]
pub enum KafkaRunError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// librdkafka settings shared by the consumer, producer and admin client.
fn base_config(section: &KafkaSection) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in section.client_properties() {
        c.set(k, v);
    }
    c
}

/// Properties that only a consumer understands; the producer and admin client get the rest.
const CONSUMER_ONLY: [&str; 9] = [
    "group.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "max.poll.interval.ms",
    "group.instance.id",
];

fn client_config_without_consumer_keys(section: &KafkaSection) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in section.client_properties() {
        if !CONSUMER_ONLY.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c
}

/// The repartition topic's partition count, which decides where each re-keyed key goes.
fn partition_count(producer: &rdkafka::producer::FutureProducer, topic: &str) -> Result<i32, KafkaRunError> {
    use rdkafka::producer::Producer;
    let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?;
    match metadata.topics().first().map(|t| (t.error(), t.partitions().len())) {
        Some((None, n)) if n > 0 => Ok(n as i32),
        other => Err(KafkaRunError::Topic {
            topic: topic.to_string(),
            message: format!("no partitions in its metadata ({other:?})"),
        }),
    }
}

/// Creates the topics cvguard writes to when they are missing. The incidents topic is
/// compacted: it holds the latest state of each incident.
pub fn ensure_topics(section: &KafkaSection) -> Result<(), KafkaRunError> {
    let admin: AdminClient<DefaultClientContext> = client_config_without_consumer_keys(section).create()?;
    let partitions = section.partitions;
    let rf = || TopicReplication::Fixed(section.replication_factor);
    let mut topics = vec![
        NewTopic::new(&section.repartition_topic, partitions, rf()),
        NewTopic::new(&section.alerts_topic, partitions, rf()),
        NewTopic::new(&section.incidents_topic, partitions, rf()).set("cleanup.policy", "compact"),
    ];
    if let Some(dlq) = &section.dead_letter_topic {
        topics.push(NewTopic::new(dlq, partitions, rf()));
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.create_topics(topics.iter(), &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaRunError::Topic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
