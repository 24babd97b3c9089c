//! Prometheus metrics the pipelines feed directly (names follow docs/METRICS.md).
//! Totals kept elsewhere (engine stats, sink counters, the outbox) are added at scrape
//! time by the API, so there is one source for each number.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tracing::info;

pub struct Metrics {
    pub registry: Registry,
    /// Accepted events by action (actions no rule counts are `other`).
    pub events_by_action: IntCounterVec,
    pub alerts: IntCounterVec,
    pub decision_latency: Histogram,
    /// Per rule: from the first event in the window to the crossing, in event time.
    pub time_to_detect: prometheus::HistogramVec,
    pub config_reloads: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    /// Failed incident-store writes, by operation (each is retried).
    pub store_errors: IntCounterVec,
    /// Suspend decisions turned into alerts by the blast-radius limit.
    pub suspensions_limited: prometheus::IntCounter,
    /// Snapshots restored or refused at start.
    pub snapshot_restores: IntCounterVec,
    /// HTTP ingest requests refused before anything was accepted, by reason.
    pub ingest_refused: IntCounterVec,
    /// Bytes of the HTTP ingest log on disk.
    pub ingest_log_bytes: prometheus::IntGauge,
    /// Ingest-log bytes accepted but not yet decided by every shard.
    pub ingest_in_flight_bytes: prometheus::IntGauge,
    /// 1 while a health alarm fires (the watchdog), by alarm; every alarm from start.
    pub health_alarm: IntGaugeVec,
    /// Event time each partition or part has reached, unix seconds (the watchdog).
    pub watermark_seconds: prometheus::GaugeVec,
    /// Wall clock minus that event time, by partition or part.
    pub event_time_lag_seconds: prometheus::GaugeVec,
    /// Arrival-to-decision latency in microseconds, for the periodic percentile log line.
    hdr: Mutex<Hdr<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events_by_action = IntCounterVec::new(
            Opts::new("cvguard_events_by_action_total", "Accepted events by action."),
            &["action"],
        )
        .expect("metric");
        let alerts = IntCounterVec::new(
            Opts::new("cvguard_alerts_total", "Alerts decided, by rule, severity and action."),
            &["rule", "severity", "action"],
        )
        .expect("metric");
        let decision_latency = Histogram::with_opts(
            HistogramOpts::new(
                "cvguard_decision_latency_seconds",
                "Time from an event's arrival at cvguard to the engine's decision.",
            )
            // Up to minutes: a decision held up by a store outage or a catch-up must land in
            // a bucket of its own, not in +Inf.
            .buckets(vec![
                1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.02, 0.1, 0.5, 2.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("metric");
        let time_to_detect = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "cvguard_time_to_detect_seconds",
                "Per rule: from the first event still in the window to the crossing event, in event time.",
            )
            .buckets(vec![
                60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
            ]),
            &["rule"],
        )
        .expect("metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("cvguard_config_reloads_total", "Config reloads by result."),
            &["result"],
        )
        .expect("metric");
        // Born at zero: an alert on `increase(...{result="error"})` must see the first one.
        for r in ["success", "error"] {
            config_reloads.with_label_values(&[r]);
        }
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "cvguard_consumer_lag_messages",
                "Kafka consumer lag by topic and partition (librdkafka statistics).",
            ),
            &["topic", "partition"],
        )
        .expect("metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "cvguard_store_errors_total",
                "Failed incident-store writes by operation; each is retried and detection waits for it.",
            ),
            &["operation"],
        )
        .expect("metric");
        // Born at zero, so an alert on its increase sees the first failure.
        for op in ["open_incident", "record_exposures", "mark_published"] {
            store_errors.with_label_values(&[op]);
        }
        let suspensions_limited = prometheus::IntCounter::new(
            "cvguard_suspensions_limited_total",
            "Suspend decisions turned into alerts because suspend.max_per_hour was reached.",
        )
        .expect("metric");
        let snapshot_restores = IntCounterVec::new(
            Opts::new(
                "cvguard_snapshot_restores_total",
                "Snapshots at start: restored, or refused (unreadable, other rules, counters that disagree with their state) and rebuilt.",
            ),
            &["result"],
        )
        .expect("metric");
        for r in ["restored", "refused"] {
            snapshot_restores.with_label_values(&[r]);
        }
        let ingest_refused = IntCounterVec::new(
            Opts::new(
                "cvguard_ingest_refused_total",
                "HTTP ingest requests refused with nothing accepted: busy (too many bytes in flight), log (the ingest log could not be written), catching_up (replaying the log after a restart).",
            ),
            &["reason"],
        )
        .expect("metric");
        for r in ["busy", "log", "catching_up"] {
            ingest_refused.with_label_values(&[r]);
        }
        let ingest_log_bytes =
            prometheus::IntGauge::new("cvguard_ingest_log_bytes", "Bytes of the HTTP ingest log on disk.")
                .expect("metric");
        let ingest_in_flight_bytes = prometheus::IntGauge::new(
            "cvguard_ingest_in_flight_bytes",
            "Bytes accepted into the HTTP ingest log and not yet decided by every shard.",
        )
        .expect("metric");
        let health_alarm = IntGaugeVec::new(
            Opts::new(
                "cvguard_health_alarm",
                "1 while the detector-health alarm fires (docs/OPERATIONS.md), else 0.",
            ),
            &["alarm"],
        )
        .expect("metric");
        for alarm in crate::watchdog::Alarm::ALL {
            health_alarm.with_label_values(&[alarm.as_str()]);
        }
        let watermark_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "cvguard_watermark_seconds",
                "Event time (unix seconds) each partition or part has reached: its newest event, no later than the clock.",
            ),
            &["source"],
        )
        .expect("metric");
        let event_time_lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "cvguard_event_time_lag_seconds",
                "Wall clock minus cvguard_watermark_seconds, by partition or part.",
            ),
            &["source"],
        )
        .expect("metric");
        for m in [
            Box::new(events_by_action.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(health_alarm.clone()),
            Box::new(watermark_seconds.clone()),
            Box::new(event_time_lag_seconds.clone()),
            Box::new(alerts.clone()),
            Box::new(decision_latency.clone()),
            Box::new(time_to_detect.clone()),
            Box::new(config_reloads.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(store_errors.clone()),
            Box::new(snapshot_restores.clone()),
            Box::new(suspensions_limited.clone()),
            Box::new(ingest_refused.clone()),
            Box::new(ingest_log_bytes.clone()),
            Box::new(ingest_in_flight_bytes.clone()),
        ] {
            registry.register(m).expect("register metric");
        }
        Metrics {
            registry,
            events_by_action,
            alerts,
            decision_latency,
            time_to_detect,
            config_reloads,
            consumer_lag,
            store_errors,
            snapshot_restores,
            suspensions_limited,
            ingest_refused,
            ingest_log_bytes,
            ingest_in_flight_bytes,
            health_alarm,
            watermark_seconds,
            event_time_lag_seconds,
            hdr: Mutex::new(Hdr::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")),
        }
    }

    /// Creates, at zero, the series the rules will feed: accepted events by each action a
    /// rule counts (and `other`), alerts by rule, severity and each action the rule can
    /// decide, time to detect by rule. A dashboard and an alert on their increase see them
    /// from the start; after a reload, the new rules' series are added.
    pub fn seed(&self, rules: &cvguard_core::RuleSet) {
        self.events_by_action.with_label_values(&["other"]);
        for rule in &rules.rules {
            for action in &rule.actions {
                self.events_by_action.with_label_values(&[action.as_str()]);
            }
            let mut decisions = vec!["alert"];
            if rule.response == cvguard_core::Response::Suspend {
                decisions.push("suspend");
            }
            for decision in decisions {
                self.alerts
                    .with_label_values(&[rule.name.as_str(), rule.severity.as_str(), decision]);
            }
            self.time_to_detect.with_label_values(&[rule.name.as_str()]);
        }
    }

    /// Records one decision's latency.
    pub fn decided(&self, latency: Duration) {
        self.decision_latency.observe(latency.as_secs_f64());
        if let Ok(mut h) = self.hdr.lock() {
            let _ = h.record(log_micros(latency));
        }
    }

    /// A meter for one worker thread.
    pub fn local(&self) -> LocalMeter {
        LocalMeter {
            latency: self.decision_latency.local(),
            events_by_action: self.events_by_action.local(),
            latencies_us: Vec::new(),
        }
    }

    pub fn alert(&self, a: &cvguard_core::Alert) {
        if a.reason == cvguard_core::AlertReason::SuspensionLimit {
            self.suspensions_limited.inc();
        }
        self.alerts
            .with_label_values(&[a.rule.as_str(), a.severity.as_str(), a.action.as_str()])
            .inc();
        self.time_to_detect
            .with_label_values(&[a.rule.as_str()])
            .observe(a.time_to_detect_ms as f64 / 1000.0);
    }

    /// Logs latency percentiles since the last call, then starts afresh.
    pub fn log_latency(&self) {
        let Ok(mut h) = self.hdr.lock() else { return };
        if h.is_empty() {
            return;
        }
        info!(
            message = "Decision latency (microseconds).",
            count = h.len(),
            p50 = h.value_at_quantile(0.5),
            p99 = h.value_at_quantile(0.99),
            p9999 = h.value_at_quantile(0.9999),
            max = h.max()
        );
        h.reset();
    }
}

/// A worker's share of the per-event metrics, added to the shared ones by `flush` once
/// per batch: updating the shared atomics and the percentile log's mutex for every
/// event had two workers contending for the same cache lines hundreds of thousands of
/// times a second.
pub struct LocalMeter {
    latency: prometheus::local::LocalHistogram,
    events_by_action: prometheus::local::LocalIntCounterVec,
    latencies_us: Vec<u64>,
}

impl LocalMeter {
    pub fn decided(&mut self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        self.latencies_us.push(log_micros(latency));
    }

    /// An accepted event, by its action label (see `action_label`).
    pub fn accepted(&mut self, action: &str) {
        self.events_by_action.with_label_values(&[action]).inc();
    }

    pub fn flush(&mut self, shared: &Metrics) {
        self.latency.flush();
        self.events_by_action.flush();
        if self.latencies_us.is_empty() {
            return;
        }
        if let Ok(mut h) = shared.hdr.lock() {
            for us in &self.latencies_us {
                let _ = h.record(*us);
            }
        }
        self.latencies_us.clear();
    }
}

/// `cvguard_build_info` and the standard `process_*` series (CPU, memory, open files, start
/// time), read from `/proc/self` at each scrape, into `registry`. Elsewhere than Linux
/// only the build info.
pub fn register_process_metrics(registry: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new("cvguard_build_info", "Always 1; the labels say which build is running."),
        &["version"],
    )
    .expect("metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    let _ = registry.register(Box::new(info));
    let Some(p) = process::read() else { return };
    let gauge = |name: &str, help: &str, value: f64| {
        let g = prometheus::Gauge::new(name, help).expect("metric");
        g.set(value);
        let _ = registry.register(Box::new(g));
    };
    let counter = prometheus::Counter::new(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
    )
    .expect("metric");
    counter.inc_by(p.cpu_seconds);
    let _ = registry.register(Box::new(counter));
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    gauge("process_open_fds", "Number of open file descriptors.", p.open_fds);
    gauge("process_max_fds", "Maximum number of open file descriptors.", p.max_fds);
    gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
}

/// The process's own figures from procfs (Linux), in the units of the Prometheus client
/// libraries' process collectors.
mod process {
    pub struct Figures {
        pub cpu_seconds: f64,
        pub resident_bytes: f64,
        pub virtual_bytes: f64,
        pub open_fds: f64,
        pub max_fds: f64,
        pub start_time_seconds: f64,
    }

    /// Clock ticks per second and page size: fixed at 100 and 4096 on the Linux
    /// platforms cvguard is built for (reading them needs libc's sysconf).
    const TICKS: f64 = 100.0;
    const PAGE: f64 = 4096.0;

    pub fn read() -> Option<Figures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // Numbered from field 3 (state) as 0: utime 14, stime 15, starttime 22, vsize 23, rss 24.
        let (utime, stime, start, vsize, rss) = (num(11)?, num(12)?, num(19)?, num(20)?, num(21)?);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0);
        Some(Figures {
            cpu_seconds: (utime + stime) / TICKS,
            resident_bytes: rss * PAGE,
            virtual_bytes: vsize,
            open_fds,
            max_fds,
            start_time_seconds: boot + start / TICKS,
        })
    }
}

/// A latency in the percentile log's unit and range (1 µs to 60 s).
fn log_micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, 60_000_000)
}

/// The action label for an event: the action itself when some rule counts it, else
/// `other`, so an attacker cannot create label values.
pub fn action_label<'a>(rules: &cvguard_core::RuleSet, action: &'a str) -> &'a str {
    if rules.counts_action(action) {
        action
    } else {
        "other"
    }
}
