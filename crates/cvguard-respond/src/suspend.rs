//! The suspend webhook: the platform's endpoint, called from the outbox so that a crash
//! between the decision and the call still ends in exactly one suspension.
//!
//! Each call is a POST of JSON `{action, incident_id, account_id, rule, value, threshold,
//! reason, detected_at}` with `X-Cvguard-Timestamp`, `X-Cvguard-Signature` and
//! `Idempotency-Key`. 5xx, 429 and timeouts are retried with exponential backoff and
//! jitter up to `max_attempts`; any other 4xx is not retried, recorded as failed and
//! alerted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cvguard_store::{OutboxRow, Store};
use serde::Serialize;
use serde_json::json;
use tracing::{error, info, warn};

use crate::sign::{signature, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::sinks::SinkSet;

/// The body of a suspend or unsuspend call.
#[derive(Debug, Clone, Serialize)]
pub struct CallBody<'a> {
    pub action: &'a str,
    pub incident_id: &'a str,
    pub account_id: &'a str,
    pub rule: &'a str,
    pub value: u64,
    pub threshold: u64,
    pub reason: &'a str,
    pub detected_at: &'a str,
}

/// The idempotency key of a call: the incident id, with the account when an incident
/// suspends several, and marked for an unsuspend.
pub fn idempotency_key(row: &OutboxRow, single_target: bool) -> String {
    match (row.kind.as_str(), single_target) {
        ("suspend", true) => row.incident_id.clone(),
        ("suspend", false) => format!("{}:{}", row.incident_id, row.account_id),
        (kind, _) => format!("{}:{kind}:{}", row.incident_id, row.account_id),
    }
}

#[derive(Debug, Clone)]
pub struct SuspendSettings {
    pub url: String,
    /// The HMAC key, read from the environment variable the config names.
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    Delivered(u16),
    Retry(String),
    Fail(String),
}

pub async fn call(client: &reqwest::Client, s: &SuspendSettings, row: &OutboxRow, key: &str) -> CallOutcome {
    let ts = crate::http_sinks::unix_now();
    let r = client
        .post(&s.url)
        .timeout(s.timeout)
        .header("Content-Type", "application/json")
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, signature(&s.secret, ts, row.body.as_bytes()))
        .header(IDEMPOTENCY_HEADER, key)
        .body(row.body.clone())
        .send()
        .await;
    match r {
        Ok(resp) => {
            let code = resp.status().as_u16();
            match code {
                200..=299 => CallOutcome::Delivered(code),
                429 | 500..=599 => CallOutcome::Retry(format!("HTTP {code}")),
                _ => CallOutcome::Fail(format!("HTTP {code}")),
            }
        }
        Err(e) if e.is_timeout() => CallOutcome::Retry(format!("timeout after {:?}", s.timeout)),
        Err(e) => CallOutcome::Retry(format!("{e}")),
    }
}

/// Backoff before attempt `attempts + 1`: 0.5 s doubling to at most 60 s, with full
/// jitter so that many instances retrying do not arrive together.
pub fn backoff_ms(attempts: i64, seed: u64) -> i64 {
    let cap = (500i64 << attempts.clamp(0, 7)).min(60_000);
    let jitter = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) as i64 % (cap / 2 + 1);
    cap / 2 + jitter
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends due outbox calls until `stop` is set. Several instances may run this against
/// one PostgreSQL store: each call is claimed with a lease before it is sent.
pub async fn dispatch(store: Store, settings: SuspendSettings, sinks: SinkSet, stop: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            error!(message = "Cannot build the HTTP client; suspend calls stay queued.", error = %e);
            return;
        }
    };
    let lease = (settings.timeout.as_millis() as i64) * 2 + 1000;
    while !stop.load(Ordering::Relaxed) {
        let now = now_ms();
        let rows = match store.claim_due(now, lease, 32).await {
            Ok(r) => r,
            Err(e) => {
                warn!(message = "Outbox unavailable; retrying.", error = %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for row in rows {
            let single = store
                .get(&row.incident_id)
                .await
                .ok()
                .flatten()
                .is_none_or(|d| d.incident.accounts.len() <= 1);
            let key = idempotency_key(&row, single);
            let outcome = call(&client, &settings, &row, &key).await;
            let now = now_ms();
            let result = match &outcome {
                CallOutcome::Delivered(code) => {
                    info!(message = "Suspend webhook delivered.", kind = %row.kind, incident = %row.incident_id, status = code);
                    store.call_delivered(&row, now, &format!("HTTP {code}")).await
                }
                CallOutcome::Retry(why) if row.attempts + 1 < i64::from(settings.max_attempts) => {
                    let next = now + backoff_ms(row.attempts, row.id as u64 ^ now as u64);
                    warn!(message = "Suspend webhook failed; will retry.", kind = %row.kind, incident = %row.incident_id, error = %why, attempt = row.attempts + 1);
                    store.call_retry(&row, now, next, why).await
                }
                CallOutcome::Retry(why) | CallOutcome::Fail(why) => {
                    error!(message = "Suspend webhook failed for good.", kind = %row.kind, incident = %row.incident_id, error = %why, attempts = row.attempts + 1);
                    let alert = json!({
                        "alert_id": format!("{}:{}-failed:{}", row.incident_id, row.kind, row.account_id),
                        "rule": "suspend-webhook-failed",
                        "severity": "critical",
                        "key_kind": "account_id",
                        "key": row.account_id,
                        "action": "alert",
                        "reason": "webhook_failed",
                        "incident_id": row.incident_id,
                        "detail": format!("{} call failed after {} attempt(s): {why}", row.kind, row.attempts + 1),
                    });
                    sinks.publish(alert.to_string().as_bytes());
                    store.call_failed(&row, now, why).await
                }
            };
            if let Err(e) = result {
                warn!(message = "Could not record a webhook outcome; the lease will expire and it is retried.", error = %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for seed in 0..50u64 {
            let b0 = backoff_ms(0, seed);
            assert!((250..=500).contains(&b0), "{b0}");
            let b9 = backoff_ms(9, seed);
            assert!((30_000..=60_000).contains(&b9), "{b9}");
        }
        assert_ne!(backoff_ms(3, 1), backoff_ms(3, 2));
    }

    #[test]
    fn idempotency_keys() {
        let row = |kind: &str| OutboxRow {
            id: 1,
            incident_id: "inc".into(),
            kind: kind.into(),
            account_id: "acc".into(),
            body: String::new(),
            attempts: 0,
        };
        assert_eq!(idempotency_key(&row("suspend"), true), "inc");
        assert_eq!(idempotency_key(&row("suspend"), false), "inc:acc");
        assert_eq!(idempotency_key(&row("unsuspend"), true), "inc:unsuspend:acc");
    }
}
