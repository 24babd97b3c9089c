//! The suspend webhook: the platform's endpoint, called from the outbox so that a crash
//! between the decision and the call still ends in exactly one suspension.
//!
//! Each call is a POST of JSON `{action, incident_id, account_id, rule, value, threshold,
//! reason, detected_at}` with `X-Cvguard-Timestamp`, `X-Cvguard-Signature` and
//! `Idempotency-Key` (the signature covers the timestamp, the key and the body). 5xx, 429
//! and timeouts are retried with exponential backoff and jitter up to `max_attempts`; a
//! redirect is not followed, and it and any other 4xx are not retried, recorded as failed
//! and alerted (docs/WEBHOOKS.md).

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

/// The idempotency key of a call: `<incident_id>:<kind>:<account_id>`, from the outbox row
/// alone, so that every attempt of a call carries the same key whatever else fails, and two
/// calls never share one. `None` when a part is empty or cannot go in a header: such a call
/// is not sent.
pub fn idempotency_key(row: &OutboxRow) -> Option<String> {
    let parts = [row.incident_id.as_str(), row.kind.as_str(), row.account_id.as_str()];
    if parts.iter().any(|p| p.is_empty() || p.chars().any(char::is_control)) {
        return None;
    }
    Some(parts.join(":"))
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

/// The client for suspend calls. It follows no redirect: a redirected POST arrives as a GET
/// without its body somewhere else, and its 2xx there would be taken for a suspension.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

pub async fn call(client: &reqwest::Client, s: &SuspendSettings, row: &OutboxRow, key: &str) -> CallOutcome {
    let ts = crate::http_sinks::unix_now();
    let r = client
        .post(&s.url)
        .timeout(s.timeout)
        .header("Content-Type", "application/json")
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, signature(&s.secret, ts, key, row.body.as_bytes()))
        .header(IDEMPOTENCY_HEADER, key)
        .body(row.body.clone())
        .send()
        .await;
    match r {
        Ok(resp) => {
            let code = resp.status().as_u16();
            match code {
                200..=299 => CallOutcome::Delivered(code),
                300..=399 => CallOutcome::Fail(crate::http_sinks::redirect_error(code, resp.headers())),
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
    let client = match client() {
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
            let outcome = match idempotency_key(&row) {
                Some(key) => call(&client, &settings, &row, &key).await,
                None => CallOutcome::Fail(
                    "no idempotency key: the call's incident, kind or account is empty or unprintable; not sent".into(),
                ),
            };
            settle(&store, &settings, &sinks, &row, &outcome).await;
        }
    }
}

/// Records what a call came to. The outbox records it only if the call is still in flight:
/// one a false positive cancelled meanwhile stays cancelled (and one delivered all the same
/// is undone by an unsuspend the store queues).
async fn settle(store: &Store, settings: &SuspendSettings, sinks: &SinkSet, row: &OutboxRow, outcome: &CallOutcome) {
    let now = now_ms();
    let result = match outcome {
        CallOutcome::Delivered(code) => {
            info!(message = "Suspend webhook delivered.", kind = %row.kind, incident = %row.incident_id, status = code);
            store.call_delivered(row, now, &format!("HTTP {code}")).await
        }
        CallOutcome::Retry(why) if row.attempts + 1 < i64::from(settings.max_attempts) => {
            let next = now + backoff_ms(row.attempts, row.id as u64 ^ now as u64);
            warn!(message = "Suspend webhook failed; will retry.", kind = %row.kind, incident = %row.incident_id, error = %why, attempt = row.attempts + 1);
            store.call_retry(row, now, next, why).await
        }
        CallOutcome::Retry(why) | CallOutcome::Fail(why) => {
            let recorded = store.call_failed(row, now, why).await;
            if matches!(recorded, Ok(None)) {
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
            }
            recorded
        }
    };
    match result {
        Ok(None) => {}
        Ok(Some(status)) if status == "cancelled" && row.kind == "suspend" => {
            if let CallOutcome::Delivered(_) = outcome {
                warn!(message = "Suspend delivered after its incident was marked a false positive; an unsuspend is queued.", incident = %row.incident_id, account = %row.account_id);
            } else {
                info!(message = "Suspend call cancelled while in flight; it stays cancelled.", incident = %row.incident_id, account = %row.account_id);
            }
        }
        Ok(Some(status)) => {
            info!(message = "Webhook call no longer in flight; its state is kept.", kind = %row.kind, incident = %row.incident_id, status = %status);
        }
        Err(e) => {
            warn!(message = "Could not record a webhook outcome; the lease will expire and it is retried.", error = %e);
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

    fn row(incident: &str, kind: &str, account: &str) -> OutboxRow {
        OutboxRow {
            id: 1,
            incident_id: incident.into(),
            kind: kind.into(),
            account_id: account.into(),
            body: "{}".into(),
            attempts: 0,
        }
    }

    #[test]
    fn idempotency_keys_come_from_the_row_alone_and_are_refused_when_incomplete() {
        assert_eq!(
            idempotency_key(&row("inc", "suspend", "acc")).as_deref(),
            Some("inc:suspend:acc")
        );
        assert_eq!(
            idempotency_key(&row("inc", "unsuspend", "acc")).as_deref(),
            Some("inc:unsuspend:acc")
        );
        assert_ne!(
            idempotency_key(&row("inc", "suspend", "acc-1")),
            idempotency_key(&row("inc", "suspend", "acc-2")),
            "two accounts of one incident are two calls"
        );
        assert_eq!(idempotency_key(&row("", "suspend", "acc")), None);
        assert_eq!(idempotency_key(&row("inc", "suspend", "")), None);
        assert_eq!(idempotency_key(&row("inc", "suspend", "acc\r\nX-Injected: 1")), None);
    }

    /// A one-shot HTTP server on loopback that answers every request with `reply` and
    /// records the request lines it saw.
    fn server(reply: &'static str) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut first, mut len) = (String::new(), 0usize);
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                s.lock().unwrap().push(first.trim().to_string());
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        (format!("http://127.0.0.1:{port}"), seen)
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_fails_the_call() {
        let (url, seen) =
            server("HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let settings = SuspendSettings {
            url: format!("{url}/suspend"),
            secret: b"s".to_vec(),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
        };
        let r = row("inc", "suspend", "acc");
        let outcome = call(&client().unwrap(), &settings, &r, "inc:suspend:acc").await;
        let CallOutcome::Fail(why) = outcome else {
            panic!("a 302 must fail the call, got {outcome:?}");
        };
        assert!(why.contains("302") && why.contains("/elsewhere"), "{why}");
        assert_eq!(*seen.lock().unwrap(), vec!["POST /suspend HTTP/1.1"]);
    }
}
