//! Alert sinks: where alerts go besides the Kafka topics. Each sink runs on its own
//! thread behind a bounded queue, so a slow or failing sink never blocks detection or
//! the other sinks: when its queue is full, alerts for it are dropped and counted.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use cvguard_config::SinkSpec;
use tracing::warn;

/// Whether retrying a failed delivery can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    Retry,
    GiveUp,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub hint: RetryHint,
}

impl From<io::Error> for SinkError {
    fn from(e: io::Error) -> Self {
        SinkError {
            message: e.to_string(),
            hint: RetryHint::Retry,
        }
    }
}

/// One destination for alerts. `deliver` may block; it runs on the sink's own thread.
pub trait Sink: Send + 'static {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError>;
}

/// JSON lines appended to a file, flushed per alert so a crash loses none written.
pub struct JsonlSink {
    file: std::fs::File,
}

impl JsonlSink {
    pub fn open(path: &str) -> io::Result<JsonlSink> {
        if let Some(parent) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(JsonlSink {
            file: OpenOptions::new().create(true).append(true).open(path)?,
        })
    }
}

impl Sink for JsonlSink {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError> {
        let mut line = Vec::with_capacity(alert_json.len() + 1);
        line.extend_from_slice(alert_json);
        line.push(b'\n');
        self.file.write_all(&line)?;
        Ok(())
    }
}

pub struct StdoutSink;

impl Sink for StdoutSink {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError> {
        let mut out = io::stdout().lock();
        out.write_all(alert_json)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    }
}

/// Per-sink delivery counters, by outcome.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub retried: AtomicU64,
    /// Epoch ms of the first failed attempt since the last delivery; 0 while the last
    /// attempt delivered (the health watchdog's `sink_failing`).
    pub failing_since_ms: AtomicI64,
}

struct SinkHandle {
    name: String,
    tx: SyncSender<Arc<[u8]>>,
    counters: Arc<SinkCounters>,
}

/// All configured sinks. Cloning shares them.
#[derive(Clone, Default)]
pub struct SinkSet {
    sinks: Arc<Vec<SinkHandle>>,
}

/// How many alerts a sink may have waiting before new ones are dropped.
const QUEUE: usize = 4096;
const MAX_ATTEMPTS: u32 = 5;

impl SinkSet {
    /// Opens every configured sink and starts its thread. `kafka` is the connection
    /// for `kind = "kafka"` sinks. Refuses (before starting any) when a webhook sink's
    /// `secret_env` names a variable that is unset or empty: it would send unsigned.
    pub fn start(specs: &[SinkSpec], kafka: &cvguard_config::KafkaSection) -> io::Result<SinkSet> {
        let issues = secret_issues(specs);
        if !issues.is_empty() {
            let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
            return Err(io::Error::new(io::ErrorKind::InvalidInput, list.join("; ")));
        }
        let mut sinks = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let (name, sink): (String, Box<dyn Sink>) = match spec {
                SinkSpec::Jsonl { path } => (format!("jsonl[{i}]"), Box::new(JsonlSink::open(path)?)),
                SinkSpec::Stdout {} => (format!("stdout[{i}]"), Box::new(StdoutSink)),
                SinkSpec::Webhook {
                    url,
                    secret_env,
                    timeout,
                } => (
                    format!("webhook[{i}]"),
                    Box::new(crate::http_sinks::WebhookSink::new(
                        url,
                        secret_env.as_deref().and_then(secret).map(String::into_bytes),
                        duration(timeout),
                    )),
                ),
                SinkSpec::Alertmanager { url, timeout, .. } => (
                    format!("alertmanager[{i}]"),
                    Box::new(crate::alertmanager::AlertmanagerSink::new(
                        url,
                        duration(timeout),
                        crate::alertmanager::resend_interval(spec),
                    )),
                ),
                SinkSpec::Kafka { topic } => (
                    format!("kafka[{i}]"),
                    Box::new(crate::http_sinks::KafkaSink::new(kafka, topic).map_err(io::Error::other)?),
                ),
            };
            sinks.push(spawn(name, sink));
        }
        Ok(SinkSet { sinks: Arc::new(sinks) })
    }

    /// Starts a set from sinks built elsewhere (webhooks, tests).
    pub fn from_sinks(sinks: Vec<(String, Box<dyn Sink>)>) -> SinkSet {
        SinkSet {
            sinks: Arc::new(sinks.into_iter().map(|(n, s)| spawn(n, s)).collect()),
        }
    }

    /// Hands an alert to every sink without waiting.
    pub fn publish(&self, alert_json: &[u8]) {
        if self.sinks.is_empty() {
            return;
        }
        let shared: Arc<[u8]> = Arc::from(alert_json);
        for s in self.sinks.iter() {
            match s.tx.try_send(shared.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    warn!(message = "Alert dropped: sink queue full.", sink = %s.name);
                }
            }
        }
    }

    /// (name, counters) of every sink.
    pub fn counters(&self) -> Vec<(String, Arc<SinkCounters>)> {
        self.sinks
            .iter()
            .map(|s| (s.name.clone(), s.counters.clone()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

/// The value of the environment variable `name`, unless unset or empty.
fn secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Webhook sinks whose `secret_env` names a variable that is unset or empty, one issue each
/// (key `sinks[i].secret_env`), like `[suspend] secret_env`: such a sink would send alerts
/// unsigned, which its receiver cannot tell from forged ones.
pub fn secret_issues(specs: &[SinkSpec]) -> Vec<cvguard_core::ConfigIssue> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| match spec {
            SinkSpec::Webhook {
                secret_env: Some(var), ..
            } if secret(var).is_none() => Some(cvguard_core::ConfigIssue {
                rule: None,
                key: format!("sinks[{i}].secret_env"),
                message: format!(
                    "sink webhook[{i}] signs with the environment variable {var}, which is empty or unset; \
                     set it, or remove secret_env to send unsigned"
                ),
            }),
            _ => None,
        })
        .collect()
}

pub(crate) fn duration(text: &str) -> Duration {
    humantime::parse_duration(text.trim()).unwrap_or(Duration::from_secs(5))
}

fn spawn(name: String, mut sink: Box<dyn Sink>) -> SinkHandle {
    let (tx, rx) = mpsc::sync_channel::<Arc<[u8]>>(QUEUE);
    let counters = Arc::new(SinkCounters::default());
    let c = counters.clone();
    let thread_name = name.clone();
    thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            for alert in rx {
                let mut attempt = 1;
                loop {
                    match sink.deliver(&alert) {
                        Ok(()) => {
                            c.delivered.fetch_add(1, Ordering::Relaxed);
                            c.failing_since_ms.store(0, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            let now = crate::http_sinks::wall_clock_ms();
                            let _ = c
                                .failing_since_ms
                                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                            if e.hint == RetryHint::Retry && attempt < MAX_ATTEMPTS {
                                c.retried.fetch_add(1, Ordering::Relaxed);
                                warn!(message = "Sink delivery failed; retrying.", sink = %thread_name, error = %e, attempt);
                                thread::sleep(Duration::from_millis(100 << attempt.min(6)));
                                attempt += 1;
                            } else {
                                c.failed.fetch_add(1, Ordering::Relaxed);
                                warn!(message = "Sink delivery failed; giving up on this alert.", sink = %thread_name, error = %e);
                                break;
                            }
                        }
                    }
                }
            }
        })
        .expect("spawn sink thread");
    SinkHandle { name, tx, counters }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Stuck(Arc<AtomicBool>);
    impl Sink for Stuck {
        fn deliver(&mut self, _: &[u8]) -> Result<(), SinkError> {
            while !self.0.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_without_blocking_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let release = Arc::new(AtomicBool::new(false));
        let set = SinkSet::from_sinks(vec![
            ("stuck".into(), Box::new(Stuck(release.clone()))),
            (
                "file".into(),
                Box::new(JsonlSink::open(path.to_str().unwrap()).unwrap()),
            ),
        ]);
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        let wait_for = |n: usize| {
            for _ in 0..1000 {
                if lines() == n {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        };
        // A queue's worth, then 50 more once the file sink has written them: publish()
        // never waits, so on a busy machine the file sink's own queue could overflow if it
        // were not given the time to drain. The stuck sink's stays full.
        for i in 0..QUEUE {
            set.publish(format!("{{\"n\":{i}}}").as_bytes());
        }
        wait_for(QUEUE);
        let n = QUEUE + 50;
        for i in QUEUE..n {
            set.publish(format!("{{\"n\":{i}}}").as_bytes());
        }
        // publish() returned although one sink is stuck; the file sink gets everything.
        wait_for(n);
        assert_eq!(lines(), n);
        let counters = set.counters();
        assert!(counters[0].1.dropped.load(Ordering::Relaxed) >= 49);
        assert_eq!(counters[1].1.dropped.load(Ordering::Relaxed), 0);
        release.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_webhook_whose_secret_variable_is_unset_is_refused_naming_sink_and_variable() {
        let var = "CVGUARD_UNIT_TEST_SURELY_UNSET_SECRET";
        assert!(std::env::var_os(var).is_none());
        let specs = vec![
            SinkSpec::Stdout {},
            SinkSpec::Webhook {
                url: "http://127.0.0.1:1/x".into(),
                secret_env: Some(var.into()),
                timeout: "1s".into(),
            },
        ];
        let err = SinkSet::start(&specs, &Default::default()).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("sinks[1].secret_env") && text.contains("webhook[1]") && text.contains(var),
            "{text}"
        );
        // Without secret_env the sink is unsigned on purpose, and starts.
        let unsigned = vec![SinkSpec::Webhook {
            url: "http://127.0.0.1:1/x".into(),
            secret_env: None,
            timeout: "1s".into(),
        }];
        assert!(secret_issues(&unsigned).is_empty());
    }

    #[test]
    fn a_redirect_is_given_up_not_retried() {
        let e = crate::http_sinks::classify(Ok(302)).unwrap_err();
        assert_eq!(e.hint, RetryHint::GiveUp);
        assert!(crate::http_sinks::classify(Ok(204)).is_ok());
        assert_eq!(crate::http_sinks::classify(Ok(503)).unwrap_err().hint, RetryHint::Retry);
    }
}
