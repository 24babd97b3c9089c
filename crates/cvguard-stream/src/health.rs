//! What /healthz and /readyz report, shared between the source and the API.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How long a failed ingest-log append keeps /readyz at 503: the `Retry-After` of the
/// ingest answer.
pub const INGEST_LOG_RETRY_MS: i64 = 10_000;

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
    /// The incident store failed its last write: decisions wait for it.
    pub store_failing: AtomicBool,
    /// Epoch ms of the HTTP ingest log's last failed append (a full disk), 0 if none
    /// since the last success: not ready for `INGEST_LOG_RETRY_MS` after it (ingest
    /// answers Retry-After for as long; a load balancer that routed on readiness for
    /// ever would never let the next append show the disk has room again).
    pub ingest_log_failed_at_ms: AtomicI64,
    /// Epoch ms after which store retries give up (0: not shutting down).
    pub shutdown_deadline_ms: AtomicI64,
    /// The health watchdog's latest report (`GET /v1/health`).
    pub report: std::sync::RwLock<crate::watchdog::Report>,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.source_connected.load(Ordering::Relaxed)
            && self.started.load(Ordering::Relaxed)
            && self.rebuilding.load(Ordering::Relaxed) <= 0
            && !self.draining.load(Ordering::Relaxed)
            && !self.store_failing.load(Ordering::Relaxed)
            && !self.ingest_log_failing()
    }

    pub fn ingest_log_failing(&self) -> bool {
        let at = self.ingest_log_failed_at_ms.load(Ordering::Relaxed);
        at > 0 && crate::effects::wall_clock_ms() - at < INGEST_LOG_RETRY_MS
    }

    /// Starts the drain's clock: retries stop at `deadline_ms`.
    pub fn begin_shutdown(&self, deadline_ms: i64) {
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown_deadline_ms.store(deadline_ms, Ordering::Relaxed);
    }

    pub fn past_shutdown_deadline(&self) -> bool {
        let deadline = self.shutdown_deadline_ms.load(Ordering::Relaxed);
        deadline > 0 && crate::effects::wall_clock_ms() >= deadline
    }
}
