//! One path for a decision's effects, whichever source fed the engine (HTTP shards or
//! Kafka workers): record the incident and any suspend call, then publish the alert,
//! then mark it published; record the CVs an open incident exposed. Both sources share
//! the same retry, deadline and failure policy, so a fix lands once.
//!
//! The policy: a store write is retried until it succeeds. An alert is never published
//! before its incident is recorded (a `suspend` the store does not know of would be a
//! suspension nobody can undo or account for). While the store fails, detection waits
//! rather than decides without it, and says so: `/readyz` is not ready, the
//! `cvguard_store_errors_total` counter grows, and the health watchdog raises one
//! `store_unreachable` alarm per outage (`store-unavailable` to the sinks) and resolves it. Retries stop only at the shutdown deadline, and then the caller must not
//! move its durable position (snapshot, Kafka offset) past what was not recorded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_core::{Alert, IncidentUpdate};
use cvguard_respond::{Responder, SinkSet};
use cvguard_store::StoreError;
use serde_json::json;
use tracing::{error, info};

use crate::{Health, Metrics};

/// The store stayed down until the shutdown deadline: what was asked is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the incident store stayed unavailable until the shutdown deadline")]
pub struct GaveUp;

#[derive(Clone)]
pub struct Effects {
    responder: Option<Arc<Responder>>,
    sinks: SinkSet,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The longest pause between two attempts at a store write.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Effects {
    pub fn new(
        responder: Option<Arc<Responder>>,
        sinks: SinkSet,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Effects {
        Effects {
            responder,
            sinks,
            metrics,
            health,
        }
    }

    /// The store failed its last write: decisions are waiting for it.
    pub fn store_failing(&self) -> bool {
        self.health.store_failing.load(Ordering::Relaxed)
    }

    /// Whether decisions are recorded (and exposures tracked) at all.
    pub fn records(&self) -> bool {
        self.responder.is_some()
    }

    /// Records each alert's incident, then hands the ones to publish to `publish` in
    /// order. Returns the ids published, to be marked once the outputs acknowledged them.
    pub fn decide(&self, alerts: &mut [Alert], mut publish: impl FnMut(&Alert)) -> Result<Vec<String>, GaveUp> {
        let mut published = Vec::new();
        for a in alerts.iter_mut() {
            if let Some(r) = &self.responder {
                let now = wall_clock_ms();
                if !self.retry("open_incident", || r.open(a, now))? {
                    continue;
                }
            }
            publish(a);
            self.metrics.alert(a);
            info!(message = "Alert.", rule = %a.rule, key_kind = a.key_kind.as_str(), action = a.action.as_str(),
                value = a.value, threshold = a.threshold, alert_id = %a.alert_id);
            published.push(a.alert_id.clone());
        }
        Ok(published)
    }

    /// Adds exposed CVs to open incidents (one transaction for the whole batch).
    pub fn record_updates(&self, updates: &[IncidentUpdate]) -> Result<(), GaveUp> {
        match &self.responder {
            Some(r) if !updates.is_empty() => {
                self.retry("record_exposures", || r.apply_updates(updates, wall_clock_ms()))
            }
            _ => Ok(()),
        }
    }

    /// Marks incidents whose alerts the outputs acknowledged.
    pub fn mark_published(&self, ids: &[String]) -> Result<(), GaveUp> {
        match &self.responder {
            Some(r) if !ids.is_empty() => self.retry("mark_published", || r.mark_published(ids)),
            _ => Ok(()),
        }
    }

    fn retry<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, GaveUp> {
        let mut delay = Duration::from_millis(50);
        loop {
            match op() {
                Ok(v) => {
                    if self.health.store_failing.swap(false, Ordering::Relaxed) {
                        info!(message = "Incident store available again.", operation = what);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    self.metrics.store_errors.with_label_values(&[what]).inc();
                    error!(message = "Incident store failed; retrying.", operation = what, error = %e);
                    // The watchdog raises (and later resolves) the store's alarm.
                    self.health.store_failing.store(true, Ordering::Relaxed);
                    if self.health.past_shutdown_deadline() {
                        return Err(GaveUp);
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A system alert: about cvguard itself, not a key. It goes to the sinks only, which
    /// do not depend on the store (it may be the store that failed). A notice: nothing
    /// resolves it (health alarms, which end, are [`Effects::health_alarm`]).
    pub fn system_alert(&self, rule: &str, key: &str, detail: &str) {
        let now = wall_clock_ms();
        let alert = json!({
            "alert_id": format!("{rule}-{now}"),
            "rule": rule,
            "severity": "critical",
            "key_kind": "system",
            "key": key,
            "action": "alert",
            "reason": rule.replace('-', "_"),
            "detail": detail,
            "event_time": format_rfc3339_ms(now),
        });
        tracing::warn!(message = "System alert.", rule, detail);
        self.sinks.publish(alert.to_string().as_bytes());
    }

    /// A health alarm's system alert: `status` `firing` when its episode starts, and
    /// `resolved` (with `resolved_at`) when it ends, both with the episode's `alert_id`,
    /// so Alertmanager or a SIEM pairs them (docs/ALERTS.md).
    pub fn health_alarm(
        &self,
        alarm: crate::watchdog::Alarm,
        episode: &crate::watchdog::Episode,
        resolved_at: Option<i64>,
        detail: &str,
    ) {
        let now = resolved_at.unwrap_or(episode.since_ms);
        let mut alert = json!({
            "alert_id": episode.alert_id,
            "rule": alarm.rule(),
            "alarm": alarm.as_str(),
            "status": if resolved_at.is_some() { "resolved" } else { "firing" },
            "severity": alarm.severity(),
            "key_kind": "system",
            "key": alarm.key(),
            "action": "alert",
            "reason": alarm.as_str(),
            "detail": detail,
            "since": format_rfc3339_ms(episode.since_ms),
            "event_time": format_rfc3339_ms(now),
        });
        if let Some(at) = resolved_at {
            alert["resolved_at"] = json!(format_rfc3339_ms(at));
        }
        self.sinks.publish(alert.to_string().as_bytes());
    }
}

pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
