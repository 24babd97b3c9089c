//! The watchdog at the edge: observes the running pipeline once a second with the wall
//! clock, evaluates (`evaluate`, pure), and says what changed: a system alert through
//! the sinks (`status` firing or resolved, one `alert_id` per episode), a log line, and
//! `cvguard_health_alarm{alarm}`. It keeps the firing episodes in `state.dir/health.json`
//! (written before a firing alert is published, and after a resolution is), so a kill -9
//! never leaves an alert firing that no later run will resolve.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cvguard_config::HealthLimits;
use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_respond::SinkSet;
use cvguard_store::Store;
use serde::Serialize;
use tracing::{info, warn};

use super::{evaluate, Alarm, Change, Episode, Observation, State};
use crate::effects::wall_clock_ms;
use crate::{Detection, Effects, Health, Metrics};

/// How often the watchdog looks.
const TICK: Duration = Duration::from_secs(1);
/// How long a store query of the watchdog may take before it counts as unanswered.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long pings must go unanswered before the store counts as unreachable: a store
/// busy with a harvest's writes answers late now and then, and an alarm that flaps with
/// load teaches a SOC to ignore it. A failed write raises it at once.
const STORE_UNANSWERED_FOR_MS: i64 = 10_000;

/// What the watchdog needs.
pub struct WatchdogOptions {
    pub limits: HealthLimits,
    pub detection: Arc<dyn Detection>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Publishes the alarms' system alerts.
    pub effects: Effects,
    /// The sinks whose failures it watches.
    pub sinks: SinkSet,
    pub store: Store,
    /// `state.dir`: where `health.json` keeps the firing episodes.
    pub state_dir: PathBuf,
    pub kafka: bool,
}

pub struct Watchdog {
    o: WatchdogOptions,
    state: State,
    file: PathBuf,
    /// Sources with a watermark series, to remove those that go away.
    exported: BTreeSet<String>,
    /// Since when (epoch ms) the store's pings have gone unanswered.
    unanswered_since: Option<i64>,
}

/// `GET /v1/health`: the alarms and each partition's or part's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub alarms: Vec<AlarmReport>,
    pub sources: Vec<SourceReport>,
    pub events_accepted_last_minute: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlarmReport {
    pub alarm: &'static str,
    pub firing: bool,
    /// When the episode started (RFC 3339), if firing.
    pub since: Option<String>,
    /// Why it fires (or the condition's last word); empty when fine.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub source: String,
    pub watermark: Option<String>,
    pub event_time_lag_seconds: Option<f64>,
    pub last_event_at: Option<String>,
    pub lag: Option<i64>,
}

/// The file's shape: `{"firing": {"silence": {"alert_id": ..., "since_ms": ...}}}`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Kept {
    firing: BTreeMap<String, Episode>,
}

pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("health.json")
}

impl Watchdog {
    /// Reads the episodes a previous run left firing and publishes a first report (every
    /// alarm at 0, or 1 for a continued episode).
    pub fn new(o: WatchdogOptions) -> Watchdog {
        let file = state_file(&o.state_dir);
        let firing = load(&file);
        for (alarm, e) in &firing {
            info!(message = "Health alarm firing before this start; it is judged again and continued or resolved.",
                alarm = alarm.as_str(), alert_id = %e.alert_id);
        }
        let state = State::new(wall_clock_ms(), firing);
        let mut w = Watchdog {
            o,
            state,
            file,
            exported: BTreeSet::new(),
            unanswered_since: None,
        };
        w.export(wall_clock_ms());
        w
    }

    /// Looks once a second until the service drains. Firing episodes stay in
    /// `health.json` at a stop: the next start judges them again.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.o.health.draining.load(Ordering::Relaxed) {
                return;
            }
            let obs = self.observe().await;
            let now = wall_clock_ms();
            let (next, changes) = evaluate(&self.state, &obs, now, &self.o.limits);
            self.state = next;
            self.apply(&changes, now);
            self.export(now);
        }
    }

    async fn observe(&mut self) -> Observation {
        let h = &self.o.health;
        let counts = self.o.detection.event_counts();
        let lags = lags(&self.o.metrics);
        let mut sources = self.o.detection.sources();
        for s in &mut sources {
            if s.lag.is_none() {
                s.lag = lags.get(&s.name).copied();
            }
        }
        let sinks = self
            .o
            .sinks
            .counters()
            .into_iter()
            .map(|(name, c)| {
                let since = c.failing_since_ms.load(Ordering::Relaxed);
                let tried = c.delivered.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) > 0 || since > 0;
                (name, tried.then_some((since > 0).then_some(since)))
            })
            .collect();
        let waiting = tokio::time::timeout(STORE_TIMEOUT, self.o.store.oldest_waiting_call())
            .await
            .ok()
            .and_then(Result::ok);
        let answers = tokio::time::timeout(STORE_TIMEOUT, self.o.store.ping())
            .await
            .unwrap_or(false);
        let now = wall_clock_ms();
        self.unanswered_since = if answers {
            None
        } else {
            Some(self.unanswered_since.unwrap_or(now))
        };
        let unreachable = self
            .unanswered_since
            .is_some_and(|t| now - t >= STORE_UNANSWERED_FOR_MS);
        Observation {
            connected: h.source_connected.load(Ordering::Relaxed)
                && h.started.load(Ordering::Relaxed)
                && h.rebuilding.load(Ordering::Relaxed) <= 0,
            kafka: self.o.kafka,
            events_in: counts.accepted + counts.late + counts.duplicate,
            rejected: counts.rejected.iter().sum(),
            sources,
            sinks,
            oldest_waiting_call_ms: waiting,
            store_failing: h.store_failing.load(Ordering::Relaxed) || unreachable,
        }
    }

    fn apply(&mut self, changes: &[Change], now: i64) {
        if changes.is_empty() {
            return;
        }
        // Recorded before its firing alert goes out, forgotten only after its
        // resolution did: a crash in between repeats a resolution (same alert_id),
        // never loses one.
        let mut before = self.state.firing();
        for c in changes {
            if let Change::Resolved { alarm, episode, .. } = c {
                before.insert(*alarm, episode.clone());
            }
        }
        self.save(&before);
        for c in changes {
            match c {
                Change::Raised { alarm, episode, detail } => {
                    warn!(message = "Health alarm raised.", alarm = alarm.as_str(), alert_id = %episode.alert_id, detail = %detail);
                    self.o.effects.health_alarm(*alarm, episode, None, detail);
                }
                Change::Resolved { alarm, episode, detail } => {
                    info!(message = "Health alarm resolved.", alarm = alarm.as_str(), alert_id = %episode.alert_id,
                        lasted = %format!("{}s", (now - episode.since_ms) / 1000));
                    self.o.effects.health_alarm(*alarm, episode, Some(now), detail);
                }
            }
        }
        self.save(&self.state.firing());
    }

    fn save(&self, firing: &BTreeMap<Alarm, Episode>) {
        let kept = Kept {
            firing: firing
                .iter()
                .map(|(a, e)| (a.as_str().to_string(), e.clone()))
                .collect(),
        };
        if let Err(e) = write_atomically(&self.file, &serde_json::to_vec_pretty(&kept).expect("plain data")) {
            warn!(message = "Could not record the health alarms; a crash now may leave one unresolved.",
                file = %self.file.display(), error = %e);
        }
    }

    /// The gauges and the API's report.
    fn export(&mut self, now: i64) {
        let m = &self.o.metrics;
        let mut alarms = Vec::new();
        for alarm in Alarm::ALL {
            let a = self.state.alarm(alarm);
            m.health_alarm
                .with_label_values(&[alarm.as_str()])
                .set(i64::from(a.firing.is_some()));
            alarms.push(AlarmReport {
                alarm: alarm.as_str(),
                firing: a.firing.is_some(),
                since: a.firing.as_ref().map(|e| format_rfc3339_ms(e.since_ms)),
                detail: a.detail.clone(),
            });
        }
        let mut sources = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, s) in &self.state.sources {
            let lag_seconds = s.watermark_ms.map(|w| (now - w) as f64 / 1000.0);
            if let (Some(w), Some(lag)) = (s.watermark_ms, lag_seconds) {
                m.watermark_seconds.with_label_values(&[name]).set(w as f64 / 1000.0);
                m.event_time_lag_seconds.with_label_values(&[name]).set(lag);
                seen.insert(name.clone());
            }
            sources.push(SourceReport {
                source: name.clone(),
                watermark: s.watermark_ms.map(format_rfc3339_ms),
                event_time_lag_seconds: lag_seconds,
                last_event_at: s.last_event_ms.map(format_rfc3339_ms),
                lag: s.lag,
            });
        }
        for gone in self.exported.difference(&seen) {
            let _ = m.watermark_seconds.remove_label_values(&[gone]);
            let _ = m.event_time_lag_seconds.remove_label_values(&[gone]);
        }
        self.exported = seen;
        *self.o.health.report.write().expect("health report") = Report {
            alarms,
            sources,
            events_accepted_last_minute: self.state.events_last_minute(now),
        };
    }
}

/// Kafka consumer lag by `topic/partition`, from librdkafka's statistics.
fn lags(metrics: &Metrics) -> BTreeMap<String, i64> {
    use prometheus::core::Collector;
    let mut out = BTreeMap::new();
    for family in metrics.consumer_lag.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if let (Some(topic), Some(partition)) = (label("topic"), label("partition")) {
                out.insert(format!("{topic}/{partition}"), m.get_gauge().get_value() as i64);
            }
        }
    }
    out
}

/// The episodes a previous run left firing; none if the file is missing or unreadable.
fn load(file: &Path) -> BTreeMap<Alarm, Episode> {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            warn!(message = "Could not read the health alarms of the previous run.", file = %file.display(), error = %e);
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<Kept>(&text) {
        Ok(kept) => kept
            .firing
            .into_iter()
            .filter_map(|(name, e)| Alarm::parse(&name).map(|a| (a, e)))
            .collect(),
        Err(e) => {
            warn!(message = "The health alarms of the previous run are unreadable; starting afresh.", file = %file.display(), error = %e);
            BTreeMap::new()
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
