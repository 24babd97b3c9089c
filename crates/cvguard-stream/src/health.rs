//! What /healthz and /readyz report, shared between the source and the API.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    /// The source is connected (Kafka answered, or the HTTP ingest is up).
    pub source_connected: AtomicBool,
    /// Partitions or shards still rebuilding their windows.
    pub rebuilding: AtomicI64,
    /// Set once start-up (assignment, restore) finished.
    pub started: AtomicBool,
    /// Set when shutting down: stop taking new work.
    pub draining: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.source_connected.load(Ordering::Relaxed)
            && self.started.load(Ordering::Relaxed)
            && self.rebuilding.load(Ordering::Relaxed) <= 0
            && !self.draining.load(Ordering::Relaxed)
    }
}
