//! Sinks that leave the process: a signed generic webhook and a Kafka topic, and the HTTP
//! plumbing they share with the Alertmanager sink ([`crate::alertmanager`]).

use std::time::Duration;

use cvguard_config::KafkaSection;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::sign::{signature, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::sinks::{RetryHint, Sink, SinkError};

/// A blocking HTTP client, built on the sink's own thread the first time it is needed:
/// building (or dropping) one inside an async runtime is not allowed.
pub(crate) struct LazyClient {
    timeout: Duration,
    client: Option<reqwest::blocking::Client>,
}

impl LazyClient {
    pub(crate) fn new(timeout: Duration) -> LazyClient {
        LazyClient { timeout, client: None }
    }

    pub(crate) fn get(&mut self) -> Result<&reqwest::blocking::Client, SinkError> {
        if self.client.is_none() {
            // No redirects: a redirected POST arrives as a GET without its body elsewhere,
            // and a 2xx there would count as delivered.
            let c = reqwest::blocking::Client::builder()
                .timeout(self.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| SinkError {
                    message: e.to_string(),
                    hint: RetryHint::Retry,
                })?;
            self.client = Some(c);
        }
        Ok(self.client.as_ref().expect("just built"))
    }
}

/// 2xx is done; 429, 5xx and transport errors may pass; any other answer will not, a
/// redirect (3xx, never followed) included: the URL needs fixing.
pub fn classify(result: Result<u16, String>) -> Result<(), SinkError> {
    match result {
        Ok(code) if (200..300).contains(&code) => Ok(()),
        Ok(code) if (300..400).contains(&code) => Err(SinkError {
            message: format!("HTTP {code}: redirect not followed"),
            hint: RetryHint::GiveUp,
        }),
        Ok(code) if code == 429 || code >= 500 => Err(SinkError {
            message: format!("HTTP {code}"),
            hint: RetryHint::Retry,
        }),
        Ok(code) => Err(SinkError {
            message: format!("HTTP {code}"),
            hint: RetryHint::GiveUp,
        }),
        Err(e) => Err(SinkError {
            message: e,
            hint: RetryHint::Retry,
        }),
    }
}

/// What a redirect answer says, for the error it becomes: where it pointed.
pub fn redirect_error(code: u16, headers: &reqwest::header::HeaderMap) -> String {
    let to = headers
        .get(reqwest::header::LOCATION)
        .map(|l| {
            String::from_utf8_lossy(l.as_bytes())
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_else(|| "nowhere".into());
    format!("HTTP {code}: redirect to {to} not followed; point the URL at the endpoint itself")
}

/// The outcome of one POST.
pub(crate) fn answer(r: reqwest::Result<reqwest::blocking::Response>) -> Result<(), SinkError> {
    match r {
        Ok(resp) if resp.status().is_redirection() => Err(SinkError {
            message: redirect_error(resp.status().as_u16(), resp.headers()),
            hint: RetryHint::GiveUp,
        }),
        Ok(resp) => classify(Ok(resp.status().as_u16())),
        Err(e) => classify(Err(e.to_string())),
    }
}

pub struct WebhookSink {
    url: String,
    /// The HMAC key; unsigned without one.
    secret: Option<Vec<u8>>,
    client: LazyClient,
}

impl WebhookSink {
    /// A sink signing with `secret` (read by [`crate::sinks::SinkSet::start`] from the
    /// variable `secret_env` names, which must be set), or unsigned without one.
    pub fn new(url: &str, secret: Option<Vec<u8>>, timeout: Duration) -> WebhookSink {
        WebhookSink {
            url: url.to_string(),
            secret,
            client: LazyClient::new(timeout),
        }
    }
}

impl Sink for WebhookSink {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError> {
        let alert_id = match serde_json::from_slice::<Value>(alert_json) {
            Ok(Value::Object(a)) => a.get("alert_id").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        let mut req = self
            .client
            .get()?
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(alert_json.to_vec());
        if let Some(id) = &alert_id {
            req = req.header(IDEMPOTENCY_HEADER, id.as_str());
        }
        if let Some(secret) = &self.secret {
            // The signature covers the key: without one there is nothing to sign it with.
            let Some(id) = &alert_id else {
                return Err(SinkError {
                    message: "not an alert with an alert_id: nothing to sign as its Idempotency-Key".into(),
                    hint: RetryHint::GiveUp,
                });
            };
            let ts = unix_now();
            req = req
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, signature(secret, ts, id, alert_json));
        }
        answer(req.send())
    }
}

/// A Kafka topic, key = the alert's key.
pub struct KafkaSink {
    topic: String,
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(kafka: &KafkaSection, topic: &str) -> Result<KafkaSink, rdkafka::error::KafkaError> {
        let mut c = ClientConfig::new();
        for (k, v) in kafka.client_properties() {
            if k != "group.id" && !k.starts_with("session.") && !k.starts_with("heartbeat.") {
                c.set(k, v);
            }
        }
        c.set("enable.idempotence", "true");
        Ok(KafkaSink {
            topic: topic.to_string(),
            producer: c.create()?,
        })
    }
}

impl Sink for KafkaSink {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError> {
        let key = serde_json::from_slice::<Value>(alert_json)
            .ok()
            .and_then(|v| v["key"].as_str().map(String::from))
            .unwrap_or_default();
        let record = FutureRecord::to(&self.topic).key(&key).payload(alert_json);
        let f = self.producer.send_result(record).map_err(|(e, _)| SinkError {
            message: e.to_string(),
            hint: RetryHint::Retry,
        })?;
        match futures::executor::block_on(f) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(SinkError {
                message: e.to_string(),
                hint: RetryHint::Retry,
            }),
            Err(_) => Err(SinkError {
                message: "producer closed".into(),
                hint: RetryHint::Retry,
            }),
        }
    }
}

pub fn unix_now() -> i64 {
    wall_clock_ms() / 1000
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
