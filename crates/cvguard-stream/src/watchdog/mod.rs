//! The detector's own health (#16): alarms that say when cvguard is blind or failing,
//! each raised once when it starts and resolved once when it ends.
//!
//! [`evaluate`] is a pure function of the previous [`State`], one [`Observation`] and the
//! limits (`[health]`); `run.rs` observes the pipeline every second with the wall clock,
//! applies the changes (a system alert through the sinks, a log line, the
//! `cvguard_health_alarm` gauge) and keeps the firing episodes in `state.dir/health.json`,
//! so a restart after a crash continues or resolves them instead of leaving one firing.
//!
//! Each alarm's condition is true, false or unknown. Unknown keeps whatever the alarm is:
//! right after a start the watchdog has not watched long enough to say that, for instance,
//! no event came for `health.silence`; an episode that was firing before the start stays
//! firing until the condition is judged again, and is then continued (no second alert)
//! or resolved.

mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use cvguard_config::HealthLimits;
use serde::{Deserialize, Serialize};

pub use run::{state_file, AlarmReport, Report, SourceReport, Watchdog, WatchdogOptions};

/// The alarms, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alarm {
    Silence,
    WatermarkStalled,
    ConsumerLag,
    RejectedShare,
    SinkFailing,
    StoreUnreachable,
}

impl Alarm {
    pub const ALL: [Alarm; 6] = [
        Alarm::Silence,
        Alarm::WatermarkStalled,
        Alarm::ConsumerLag,
        Alarm::RejectedShare,
        Alarm::SinkFailing,
        Alarm::StoreUnreachable,
    ];

    /// The name in metrics, the API, the log and the system alert's `alarm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::Silence => "silence",
            Alarm::WatermarkStalled => "watermark_stalled",
            Alarm::ConsumerLag => "consumer_lag",
            Alarm::RejectedShare => "rejected_share",
            Alarm::SinkFailing => "sink_failing",
            Alarm::StoreUnreachable => "store_unreachable",
        }
    }

    pub fn parse(name: &str) -> Option<Alarm> {
        Alarm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The system alert's `rule`. The store's keeps the name it had before the watchdog
    /// (`store-unavailable`), so receivers that match on it go on working.
    pub fn rule(self) -> &'static str {
        match self {
            Alarm::Silence => "silence",
            Alarm::WatermarkStalled => "watermark-stalled",
            Alarm::ConsumerLag => "consumer-lag",
            Alarm::RejectedShare => "rejected-share",
            Alarm::SinkFailing => "sink-failing",
            Alarm::StoreUnreachable => "store-unavailable",
        }
    }

    /// The system alert's `key`: what is unwell.
    pub fn key(self) -> &'static str {
        match self {
            Alarm::Silence | Alarm::WatermarkStalled | Alarm::ConsumerLag | Alarm::RejectedShare => "source",
            Alarm::SinkFailing => "sinks",
            Alarm::StoreUnreachable => "store",
        }
    }

    /// Blind (no events, no store, no outputs) is critical; degraded is a warning.
    pub fn severity(self) -> &'static str {
        match self {
            Alarm::Silence | Alarm::SinkFailing | Alarm::StoreUnreachable => "critical",
            Alarm::WatermarkStalled | Alarm::ConsumerLag | Alarm::RejectedShare => "warning",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One partition (Kafka) or part (HTTP ingest) as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObservation {
    /// `topic/partition`, or `http/part-<p>-of-16`.
    pub name: String,
    /// Event time (ms) the source has reached: its newest event, no later than the clock.
    pub watermark_ms: Option<i64>,
    /// Events its engines took in since start (only ever grows).
    pub events: u64,
    /// Kafka consumer lag in messages, when known.
    pub lag: Option<i64>,
}

/// What the watchdog sees at one tick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The source is connected and serving: Kafka answers, or HTTP ingest takes events.
    pub connected: bool,
    pub kafka: bool,
    /// Events taken in (accepted, late or duplicate) since start; only ever grows.
    pub events_in: u64,
    /// Events rejected since start; only ever grows.
    pub rejected: u64,
    pub sources: Vec<SourceObservation>,
    /// Per alert sink: `None` nothing sent since this start (not known), `Some(None)` its
    /// last delivery went through, `Some(Some(t))` its deliveries fail since `t` (ms).
    pub sinks: Vec<(String, Option<Option<i64>>)>,
    /// When the oldest suspend call still waiting (pending or sending) was queued:
    /// `Some(None)` none waits, `None` the store did not answer.
    pub oldest_waiting_call_ms: Option<Option<i64>>,
    /// The store failed its last write, or does not answer.
    pub store_failing: bool,
}

/// A firing alarm: its alert id pairs the firing and the resolved alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub alert_id: String,
    pub since_ms: i64,
}

/// What one evaluation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Raised {
        alarm: Alarm,
        episode: Episode,
        detail: String,
    },
    Resolved {
        alarm: Alarm,
        episode: Episode,
        detail: String,
    },
}

/// What the watchdog remembers of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMemory {
    pub watermark_ms: Option<i64>,
    /// When (wall ms) the watermark last moved, or the source was first seen.
    pub advanced_ms: i64,
    pub first_seen_ms: i64,
    pub events: u64,
    /// When (wall ms) its event count last grew.
    pub last_event_ms: Option<i64>,
    pub lag: Option<i64>,
}

/// One alarm's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlarmState {
    pub firing: Option<Episode>,
    /// What the condition said last (empty when false).
    pub detail: String,
}

/// Everything the watchdog remembers between ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub started_ms: i64,
    /// The counts of the previous observation; `None` before the first.
    pub counts: Option<(u64, u64)>,
    /// When (wall ms) `events_in` last grew.
    pub last_event_ms: Option<i64>,
    /// (wall ms, events_in, rejected), oldest first, reaching back over the longer of the
    /// rejected window and a minute.
    pub samples: VecDeque<(i64, u64, u64)>,
    pub sources: BTreeMap<String, SourceMemory>,
    pub alarms: [AlarmState; 6],
}

impl State {
    /// A fresh start at `now_ms`, continuing the episodes that were firing before it.
    pub fn new(now_ms: i64, firing: BTreeMap<Alarm, Episode>) -> State {
        let mut alarms: [AlarmState; 6] = Default::default();
        for (alarm, episode) in firing {
            alarms[alarm.index()].firing = Some(episode);
        }
        State {
            started_ms: now_ms,
            counts: None,
            last_event_ms: None,
            samples: VecDeque::new(),
            sources: BTreeMap::new(),
            alarms,
        }
    }

    pub fn alarm(&self, alarm: Alarm) -> &AlarmState {
        &self.alarms[alarm.index()]
    }

    /// The firing episodes, as kept in `health.json`.
    pub fn firing(&self) -> BTreeMap<Alarm, Episode> {
        Alarm::ALL
            .into_iter()
            .filter_map(|a| self.alarm(a).firing.clone().map(|e| (a, e)))
            .collect()
    }

    /// Events taken in over the last minute (or since start, if shorter).
    pub fn events_last_minute(&self, now_ms: i64) -> u64 {
        let Some((now_in, _)) = self.counts else { return 0 };
        let from = sample_at(&self.samples, now_ms - 60_000).map_or(now_in, |(_, e, _)| e);
        now_in.saturating_sub(from)
    }
}

/// The newest sample at or before `at`, else the oldest there is.
fn sample_at(samples: &VecDeque<(i64, u64, u64)>, at: i64) -> Option<(i64, u64, u64)> {
    samples
        .iter()
        .rev()
        .find(|(t, _, _)| *t <= at)
        .or_else(|| samples.front())
        .copied()
}

/// What an alarm's condition says now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Firing(String),
    Fine,
    /// Not watched long enough to say: the alarm stays as it is.
    Unknown,
}

/// The event time an engine has reached: its newest event, no later than its source's
/// clock (the late-event watermark is this less the engine's allowed lateness).
pub fn newest_event_ms(e: &cvguard_core::Engine) -> Option<i64> {
    e.watermark().map(|w| w + e.rules().settings.allowed_lateness_ms)
}

fn ms(d: std::time::Duration) -> i64 {
    d.as_millis() as i64
}

/// One tick: the next state and what changed. Pure: no clock, no IO.
pub fn evaluate(prev: &State, obs: &Observation, now_ms: i64, limits: &HealthLimits) -> (State, Vec<Change>) {
    let mut s = prev.clone();
    // Counts: the first observation is the baseline (a restored Kafka partition's
    // counters are not events that just arrived).
    if let Some((events_in, _)) = s.counts {
        if obs.events_in > events_in {
            s.last_event_ms = Some(now_ms);
        }
    }
    s.counts = Some((obs.events_in, obs.rejected));
    s.samples.push_back((now_ms, obs.events_in, obs.rejected));
    let keep = ms(limits.rejected_window).max(60_000);
    while s.samples.len() > 1 && s.samples[1].0 <= now_ms - keep {
        s.samples.pop_front();
    }
    // Sources: new ones remembered from now, gone ones (a revoked partition) forgotten.
    let mut sources = BTreeMap::new();
    for o in &obs.sources {
        let m = match s.sources.remove(&o.name) {
            None => SourceMemory {
                watermark_ms: o.watermark_ms,
                advanced_ms: now_ms,
                first_seen_ms: now_ms,
                events: o.events,
                last_event_ms: None,
                lag: o.lag,
            },
            Some(mut m) => {
                if o.watermark_ms > m.watermark_ms {
                    m.watermark_ms = o.watermark_ms;
                    m.advanced_ms = now_ms;
                }
                if o.events > m.events {
                    m.events = o.events;
                    m.last_event_ms = Some(now_ms);
                }
                m.lag = o.lag;
                m
            }
        };
        sources.insert(o.name.clone(), m);
    }
    s.sources = sources;

    let since_start = now_ms - s.started_ms;
    let verdicts = [
        silence(&s, obs, now_ms, limits),
        stalled(&s, now_ms, since_start, limits),
        lag(&s, obs, since_start, limits),
        rejected(&s, obs, now_ms, since_start, limits),
        sink_failing(obs, now_ms, since_start, limits),
        if obs.store_failing {
            Verdict::Firing("the incident store fails its writes or does not answer; decisions wait for it".into())
        } else {
            Verdict::Fine
        },
    ];
    let mut changes = Vec::new();
    for (alarm, verdict) in Alarm::ALL.into_iter().zip(verdicts) {
        let a = &mut s.alarms[alarm.index()];
        match (a.firing.take(), verdict) {
            (None, Verdict::Firing(detail)) => {
                let episode = Episode {
                    alert_id: format!("cvguard-health-{}-{now_ms}", alarm.as_str()),
                    since_ms: now_ms,
                };
                a.firing = Some(episode.clone());
                a.detail = detail.clone();
                changes.push(Change::Raised { alarm, episode, detail });
            }
            (Some(episode), Verdict::Fine) => {
                let detail = format!("{} ended", alarm.as_str());
                a.detail.clear();
                changes.push(Change::Resolved { alarm, episode, detail });
            }
            (firing, Verdict::Firing(detail)) => {
                a.firing = firing;
                a.detail = detail;
            }
            (firing, Verdict::Fine) => {
                a.firing = firing;
                a.detail.clear();
            }
            (firing, Verdict::Unknown) => a.firing = firing,
        }
    }
    (s, changes)
}

fn secs(ms: i64) -> String {
    format!("{}s", ms / 1000)
}

fn silence(s: &State, obs: &Observation, now_ms: i64, limits: &HealthLimits) -> Verdict {
    let limit = ms(limits.silence);
    match s.last_event_ms {
        Some(t) if now_ms - t < limit => Verdict::Fine,
        // Not connected (or still catching up after a start): /readyz and the source's own
        // log say so; silence is neither raised nor ended meanwhile.
        _ if !obs.connected => Verdict::Unknown,
        Some(t) => Verdict::Firing(format!(
            "no event taken in for {} while the source is connected (health.silence = {})",
            secs(now_ms - t),
            secs(limit)
        )),
        None if now_ms - s.started_ms >= limit => Verdict::Firing(format!(
            "no event taken in since the start {} ago while the source is connected (health.silence = {})",
            secs(now_ms - s.started_ms),
            secs(limit)
        )),
        None => Verdict::Unknown,
    }
}

/// A source is stalled when its watermark has not moved for `watermark_stall` while it
/// still had work: events taken in after the watermark last moved (within the last
/// `watermark_stall`), or Kafka messages waiting. A source that receives nothing is idle,
/// not stalled (`silence` says when everything is quiet).
fn stalled(s: &State, now_ms: i64, since_start: i64, limits: &HealthLimits) -> Verdict {
    let limit = ms(limits.watermark_stall);
    let stalled: Vec<&String> = s
        .sources
        .iter()
        .filter(|(_, m)| {
            let recent_events = m.last_event_ms.is_some_and(|t| t > m.advanced_ms && now_ms - t < limit);
            let waiting = m.lag.is_some_and(|l| l > 0);
            now_ms - m.advanced_ms >= limit && (recent_events || waiting)
        })
        .map(|(name, _)| name)
        .collect();
    if !stalled.is_empty() {
        let names: Vec<&str> = stalled.iter().take(5).map(|n| n.as_str()).collect();
        let more = stalled.len().saturating_sub(5);
        return Verdict::Firing(format!(
            "the event-time watermark of {}{} has not advanced for {} or more while events arrive (health.watermark_stall)",
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            secs(limit)
        ));
    }
    if since_start < limit {
        Verdict::Unknown
    } else {
        Verdict::Fine
    }
}

fn lag(s: &State, obs: &Observation, since_start: i64, limits: &HealthLimits) -> Verdict {
    if !obs.kafka {
        return Verdict::Fine;
    }
    let max = limits.max_lag as i64;
    let known: Vec<(&String, i64)> = s.sources.iter().filter_map(|(n, m)| m.lag.map(|l| (n, l))).collect();
    let over: Vec<String> = known
        .iter()
        .filter(|(_, l)| *l > max)
        .map(|(n, l)| format!("{n} ({l})"))
        .collect();
    if !over.is_empty() {
        Verdict::Firing(format!(
            "consumer lag above {max} messages (health.max_lag) on {}",
            over.join(", ")
        ))
    } else if !known.is_empty() || since_start >= 60_000 {
        Verdict::Fine
    } else {
        Verdict::Unknown
    }
}

fn rejected(s: &State, obs: &Observation, now_ms: i64, since_start: i64, limits: &HealthLimits) -> Verdict {
    let window = ms(limits.rejected_window);
    let Some((_, then_in, then_rejected)) = sample_at(&s.samples, now_ms - window) else {
        return Verdict::Unknown;
    };
    let rejected = obs.rejected.saturating_sub(then_rejected);
    let read = obs.events_in.saturating_sub(then_in) + rejected;
    if read >= limits.rejected_min_events.max(1) {
        let share = rejected as f64 / read as f64;
        if share > limits.max_rejected_share {
            return Verdict::Firing(format!(
                "{rejected} of {read} events rejected over the last {} ({:.1}%, health.max_rejected_share = {})",
                secs(window),
                share * 100.0,
                limits.max_rejected_share
            ));
        }
        return Verdict::Fine;
    }
    if since_start >= window {
        Verdict::Fine // too few events to say anything
    } else {
        Verdict::Unknown
    }
}

fn sink_failing(obs: &Observation, now_ms: i64, since_start: i64, limits: &HealthLimits) -> Verdict {
    let limit = ms(limits.sink_failing_for);
    let mut failing: Vec<String> = obs
        .sinks
        .iter()
        .filter_map(|(name, seen)| {
            seen.flatten()
                .filter(|t| now_ms - t >= limit)
                .map(|t| format!("sink {name} failing for {}", secs(now_ms - t)))
        })
        .collect();
    let mut not_yet = false;
    match obs.oldest_waiting_call_ms {
        Some(Some(t)) if now_ms - t >= limit => failing.push(format!(
            "a suspend webhook call has waited {} undelivered",
            secs(now_ms - t)
        )),
        Some(Some(_)) | None => not_yet = true,
        Some(None) => {}
    }
    // Not fine either: a sink failing for less than the limit (a firing alarm is not
    // resolved while it still fails, a new one waits for the limit), or, after a
    // restart, a sink that has sent nothing yet (an episode firing before a crash waits
    // one limit for it to fail again or deliver, rather than being resolved by counters
    // that only just started).
    not_yet |= obs.sinks.iter().any(|(_, seen)| matches!(seen, Some(Some(_))));
    not_yet |= since_start < limit && obs.sinks.iter().any(|(_, seen)| seen.is_none());
    if failing.is_empty() && not_yet {
        Verdict::Unknown
    } else if failing.is_empty() {
        Verdict::Fine
    } else {
        Verdict::Firing(format!(
            "{} (health.sink_failing_for = {})",
            failing.join("; "),
            secs(limit)
        ))
    }
}
