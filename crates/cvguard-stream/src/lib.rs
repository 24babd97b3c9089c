//! cvguard-stream: the long-running side of cvguard.
//!
//! The same engine as `replay`, run per Kafka partition (or per HTTP ingest shard), with
//! its state snapshotted and rebuilt, its alerts published to Kafka topics and sinks.
//! Every (rule, key) lives on exactly one engine: account rules on the partition of the
//! account's events; org, user and ip rules on the partition of the repartition topic
//! their key hashes to.

pub mod health;
pub mod http;
pub mod kafka;
pub mod records;
pub mod snapshot_store;

pub use cvguard_respond::SinkSet;
pub use health::Health;
pub use snapshot_store::SnapshotStore;
