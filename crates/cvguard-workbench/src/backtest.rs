//! History through a candidate config (and the current one, for the difference) in one
//! pass: each line is parsed once and fed to every config's engine, each with its own
//! ledger of what the service's store would hold. Time is event time throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cvguard_core::{
    parse_event, Alert, AlertAction, AlertReason, Engine, EngineStats, IncidentUpdate, KeyKind, Measure, RejectReason,
    RuleSet,
};
use cvguard_respond::rails::Rails;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::curve::Curve;
use crate::labels::Labels;
use crate::ledger::{Ledger, Recorded};

/// One config to backtest.
pub struct Setup {
    /// Where it came from, for the output (a file name).
    pub source: String,
    pub rules: Arc<RuleSet>,
    pub rails: Rails,
    /// (account, time): unsuspensions, each starting the account's cooldown.
    pub unsuspends: Vec<(String, i64)>,
}

/// One incident as the service would have recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: String,
    pub rule: String,
    pub key_kind: KeyKind,
    pub key: String,
    /// Event time of the crossing: when the service decides.
    pub decided_at: String,
    pub decided_at_ms: i64,
    pub action: AlertAction,
    pub reason: AlertReason,
    /// What the rule counts, and over which window (as configured, e.g. `"1h"`): `value`
    /// and `threshold` are in this measure's units.
    pub measure: Measure,
    pub window: String,
    /// Accounts whose suspension was queued (with `[suspend] url`), or recorded as
    /// decided (without one: the service records and sends nothing).
    pub suspended: Vec<String>,
    /// Accounts already suspended under another open incident: no second call.
    pub already_suspended: Vec<String>,
    pub value: u64,
    pub threshold: u64,
    /// The earliest event still in the rule's window at the crossing.
    pub first_seen: String,
    /// From `first_seen` to the decision, in event time.
    pub time_to_decide_ms: i64,
    /// Distinct CVs the key had read in the window when it was decided (the crossing
    /// rule's window, or the key's longest distinct-CV window).
    pub cvs_exposed: Option<u64>,
    /// Later crossings of the same (rule, key) that joined this open incident.
    pub joined: u64,
    /// The key's distinct CVs over time, `[epoch ms, count]`, at most
    /// [`crate::curve::POINTS`] points: up to the decision, the CVs in the window then by
    /// first access, ending at `cvs_exposed`; after it, the window's count after each
    /// later event on the key while the rule stays crossed (thinned evenly). Empty unless
    /// the rule counts `distinct_cvs`: another measure's value and threshold are not CVs,
    /// so a CV curve against them would mislead.
    pub series: Vec<(i64, u64)>,
}

/// Per rule (or in total): what the config would have done.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleFigures {
    pub rule: String,
    /// `None` for the total.
    pub key_kind: Option<KeyKind>,
    /// Crossings the engine decided (alerts it raised), including those that joined an
    /// open incident.
    pub alerts: u64,
    pub incidents: u64,
    pub keys_hit: u64,
    /// Incidents whose action stayed `suspend` after the rails.
    pub suspensions: u64,
    pub accounts_suspended: u64,
    /// Suspensions turned into alerts, by reason.
    pub dry_run: u64,
    pub allowlisted: u64,
    pub suspension_limit: u64,
    pub cooldown: u64,
    /// Median and longest time to decide over the incidents, ms.
    pub median_time_to_decide_ms: Option<i64>,
    pub max_time_to_decide_ms: Option<i64>,
    /// Median CVs exposed at the decision.
    pub median_cvs_exposed: Option<u64>,
    /// With labels: keys hit that are attacks / are not; attacks of this key kind missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Score {
    pub true_positives: u64,
    pub false_positives: u64,
    pub missed: u64,
    /// `true_positives / keys hit`; `None` when nothing was hit.
    pub precision: Option<f64>,
    /// `true_positives / labelled attacks of the rule's key kind` (of every kind for the
    /// total); `None` when there are none.
    pub recall: Option<f64>,
    /// For the total: each false positive and each missed attack, `key_kind:key`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub false_positive_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed_keys: Vec<String>,
}

/// One config's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigResult {
    pub config: String,
    pub webhook: bool,
    pub max_per_hour: u32,
    pub cooldown_ms: i64,
    pub rules: Vec<RuleFigures>,
    pub total: RuleFigures,
    /// `suspension-limit-reached` system alerts.
    pub limit_alerts: u64,
    pub incidents: Vec<Incident>,
    /// Per rule, alerts (crossings) per UTC day.
    pub alerts_per_day: BTreeMap<String, BTreeMap<String, u64>>,
    pub events: EventFigures,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventFigures {
    pub read: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub late: u64,
    pub duplicates: u64,
    pub first_event: Option<String>,
    pub last_event: Option<String>,
}

/// A (rule, key) hit by one config only.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyHit {
    pub rule: String,
    pub key_kind: KeyKind,
    pub key: String,
    pub decided_at: String,
    pub action: AlertAction,
    pub cvs_exposed: Option<u64>,
}

/// A (rule, key) hit by both, decided at another time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Shift {
    pub rule: String,
    pub key_kind: KeyKind,
    pub key: String,
    pub candidate_at: String,
    pub baseline_at: String,
    /// How much earlier the candidate decides (negative: later), ms of event time.
    pub earlier_by_ms: i64,
    pub candidate_cvs: Option<u64>,
    pub baseline_cvs: Option<u64>,
    /// How many fewer CVs were exposed at the candidate's decision (negative: more).
    pub fewer_cvs: Option<i64>,
}

impl Shift {
    /// The change in CVs exposed as the terminal and the report both say it: "N fewer CVs
    /// exposed" or "N more CVs exposed", never a negative count.
    pub fn cvs_change(&self) -> Option<String> {
        self.fewer_cvs.map(|n| {
            if n >= 0 {
                format!("{n} fewer CVs exposed")
            } else {
                format!("{} more CVs exposed", n.unsigned_abs())
            }
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub newly_hit: Vec<KeyHit>,
    pub no_longer_hit: Vec<KeyHit>,
    pub decided_earlier: Vec<Shift>,
    pub decided_later: Vec<Shift>,
    /// (rule, key) pairs hit by both at the same event time.
    pub unchanged: u64,
    pub newly_suspended: Vec<String>,
    pub no_longer_suspended: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BacktestResult {
    pub candidate: ConfigResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ConfigResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<Diff>,
    pub labelled: bool,
}

struct Run {
    setup_source: String,
    engine: Engine,
    ledger: Ledger,
    incidents: Vec<Incident>,
    /// Alert id (the crossing's and those that joined) -> incident, for exposure updates.
    by_alert: FxHashMap<String, usize>,
    /// Per incident: its curve so far (bounded; see `curve.rs`).
    curves: Vec<Curve>,
    alerts_by_rule: FxHashMap<String, u64>,
    alerts_per_day: BTreeMap<String, BTreeMap<String, u64>>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    alerts: Vec<Alert>,
}

impl Run {
    fn new(setup: Setup) -> Run {
        let mut engine = Engine::new(setup.rules);
        engine.track_exposure(true);
        Run {
            setup_source: setup.source,
            engine,
            ledger: Ledger::new(setup.rails, &setup.unsuspends),
            incidents: Vec::new(),
            by_alert: FxHashMap::default(),
            curves: Vec::new(),
            alerts_by_rule: FxHashMap::default(),
            alerts_per_day: BTreeMap::new(),
            first_ms: None,
            last_ms: None,
            alerts: Vec::new(),
        }
    }

    fn after_event(&mut self, ts: Option<i64>) {
        if let Some(ts) = ts {
            self.first_ms = Some(self.first_ms.map_or(ts, |f| f.min(ts)));
            self.last_ms = Some(self.last_ms.map_or(ts, |l| l.max(ts)));
        }
        let mut alerts = std::mem::take(&mut self.alerts);
        for mut alert in alerts.drain(..) {
            *self.alerts_by_rule.entry(alert.rule.clone()).or_default() += 1;
            *self
                .alerts_per_day
                .entry(alert.rule.clone())
                .or_default()
                .entry(crate::day_of(alert.event_time_ms))
                .or_default() += 1;
            match self.ledger.record(&mut alert) {
                Recorded::Joined { incident } => {
                    self.incidents[incident].joined += 1;
                    self.by_alert.insert(alert.alert_id.clone(), incident);
                }
                Recorded::New {
                    incident,
                    queued,
                    already_suspended,
                } => {
                    debug_assert_eq!(incident, self.incidents.len());
                    let suspended = if self.ledger.rails().webhook {
                        queued
                    } else if alert.action == AlertAction::Suspend {
                        alert.suspend_accounts.clone()
                    } else {
                        Vec::new()
                    };
                    self.by_alert.insert(alert.alert_id.clone(), incident);
                    self.curves.push(Curve::default());
                    self.incidents.push(Incident {
                        id: alert.alert_id.clone(),
                        rule: alert.rule.clone(),
                        key_kind: alert.key_kind,
                        key: alert.key.clone(),
                        decided_at: alert.event_time.clone(),
                        decided_at_ms: alert.event_time_ms,
                        action: alert.action,
                        reason: alert.reason,
                        measure: alert.measure,
                        window: alert.window.clone(),
                        suspended,
                        already_suspended,
                        value: alert.value,
                        threshold: alert.threshold,
                        first_seen: alert.first_seen.clone(),
                        time_to_decide_ms: alert.time_to_detect_ms,
                        cvs_exposed: alert.evidence.distinct_cvs,
                        joined: 0,
                        series: Vec::new(),
                    });
                }
            }
        }
        self.alerts = alerts;
        for update in self.engine.take_updates() {
            self.note_update(update);
        }
    }

    /// Extends an incident's curve: the crossing's update draws the window up to the
    /// decision, each later one adds the window's count after its event.
    fn note_update(&mut self, update: IncidentUpdate) {
        let Some(&i) = self.by_alert.get(&update.incident_id) else {
            return;
        };
        if self.incidents[i].measure != Measure::DistinctCvs {
            return;
        }
        let curve = &mut self.curves[i];
        if !curve.is_decided() {
            let mut firsts: Vec<i64> = update.cvs.iter().map(|c| c.first_access_ms).collect();
            let at_decision = update.cvs_in_window.unwrap_or(firsts.len() as u64);
            curve.decide(&mut firsts, (update.event_time_ms, at_decision));
        } else if let Some(n) = update.cvs_in_window {
            curve.push(update.event_time_ms, n);
        }
    }

    fn finish(mut self, labels: Option<&Labels>) -> ConfigResult {
        let rules = self.engine.rules().clone();
        for (inc, curve) in self.incidents.iter_mut().zip(std::mem::take(&mut self.curves)) {
            inc.series = curve.into_points();
        }
        let positives = labels.map(Labels::positives);
        let mut figures = Vec::new();
        for rule in &rules.rules {
            let of_rule: Vec<&Incident> = self.incidents.iter().filter(|i| i.rule == rule.name).collect();
            let mut f = figures_of(&of_rule, &rule.name, Some(rule.group_by));
            f.alerts = self.alerts_by_rule.get(&rule.name).copied().unwrap_or(0);
            if let Some(p) = &positives {
                f.score = Some(score(&of_rule, p, Some(rule.group_by), false));
            }
            figures.push(f);
        }
        let all: Vec<&Incident> = self.incidents.iter().collect();
        let mut total = figures_of(&all, "total", None);
        total.alerts = self.alerts_by_rule.values().sum();
        if let Some(p) = &positives {
            total.score = Some(score(&all, p, None, true));
        }
        let s: &EngineStats = self.engine.stats();
        let rails = self.ledger.rails();
        ConfigResult {
            config: self.setup_source,
            webhook: rails.webhook,
            max_per_hour: rails.max_per_hour,
            cooldown_ms: rails.cooldown.as_millis() as i64,
            rules: figures,
            total,
            limit_alerts: self.ledger.limit_alerts,
            incidents: self.incidents,
            alerts_per_day: self.alerts_per_day,
            events: EventFigures {
                read: s.events,
                accepted: s.accepted,
                rejected: s.rejected_total(),
                late: s.late,
                duplicates: s.duplicates,
                first_event: self.first_ms.map(cvguard_core::timefmt::format_rfc3339_ms),
                last_event: self.last_ms.map(cvguard_core::timefmt::format_rfc3339_ms),
            },
        }
    }
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> Option<T> {
    v.sort_unstable();
    // Nearest rank, as everywhere in cvguard: element ceil(n/2), counting from 1.
    crate::quantile::nearest_rank(&v, 0.5)
}

fn figures_of(incidents: &[&Incident], rule: &str, kind: Option<KeyKind>) -> RuleFigures {
    let keys: BTreeSet<(&str, &str)> = incidents
        .iter()
        .map(|i| (i.key_kind.as_str(), i.key.as_str()))
        .collect();
    let suspended: BTreeSet<&str> = incidents
        .iter()
        .filter(|i| i.action == AlertAction::Suspend)
        .flat_map(|i| i.suspended.iter().map(String::as_str))
        .collect();
    let reason = |r: AlertReason| incidents.iter().filter(|i| i.reason == r).count() as u64;
    RuleFigures {
        rule: rule.to_string(),
        key_kind: kind,
        alerts: 0,
        incidents: incidents.len() as u64,
        keys_hit: keys.len() as u64,
        suspensions: incidents.iter().filter(|i| i.action == AlertAction::Suspend).count() as u64,
        accounts_suspended: suspended.len() as u64,
        dry_run: reason(AlertReason::DryRun),
        allowlisted: reason(AlertReason::Allowlisted),
        suspension_limit: reason(AlertReason::SuspensionLimit),
        cooldown: reason(AlertReason::Cooldown),
        median_time_to_decide_ms: median(incidents.iter().map(|i| i.time_to_decide_ms).collect()),
        max_time_to_decide_ms: incidents.iter().map(|i| i.time_to_decide_ms).max(),
        median_cvs_exposed: median(incidents.iter().filter_map(|i| i.cvs_exposed).collect()),
        score: None,
    }
}

/// Precision and recall of the keys `incidents` hit against the labelled attacks (of
/// `kind`, or of every kind).
fn score(incidents: &[&Incident], positives: &FxHashSet<(String, String)>, kind: Option<KeyKind>, list: bool) -> Score {
    let hit: BTreeSet<(String, String)> = incidents
        .iter()
        .map(|i| (i.key_kind.as_str().to_string(), i.key.clone()))
        .collect();
    let mut relevant: Vec<&(String, String)> = positives
        .iter()
        .filter(|(k, _)| kind.is_none_or(|kind| k == kind.as_str()))
        .collect();
    relevant.sort();
    let tp = hit.iter().filter(|k| positives.contains(*k)).count() as u64;
    let fp: Vec<String> = hit
        .iter()
        .filter(|k| !positives.contains(*k))
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    let missed: Vec<String> = relevant
        .iter()
        .filter(|k| !hit.contains(**k))
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    Score {
        true_positives: tp,
        false_positives: fp.len() as u64,
        missed: missed.len() as u64,
        precision: (!hit.is_empty()).then(|| tp as f64 / hit.len() as f64),
        recall: (!relevant.is_empty()).then(|| tp as f64 / relevant.len() as f64),
        false_positive_keys: if list { fp } else { Vec::new() },
        missed_keys: if list { missed } else { Vec::new() },
    }
}

/// The backtest: feed it every line of the history, then [`Backtest::finish`].
pub struct Backtest {
    runs: Vec<Run>,
    /// Whether the baseline parses with other limits than the candidate (then each
    /// parses for itself).
    separate_parse: bool,
}

impl Backtest {
    pub fn new(candidate: Setup, baseline: Option<Setup>) -> Backtest {
        let separate_parse = baseline
            .as_ref()
            .is_some_and(|b| b.rules.settings.limits != candidate.rules.settings.limits);
        let runs = std::iter::once(candidate).chain(baseline).map(Run::new).collect();
        Backtest { runs, separate_parse }
    }

    /// One NDJSON line, parsed once for every config (unless their limits differ).
    pub fn feed(&mut self, line: &[u8]) {
        if self.separate_parse {
            for run in &mut self.runs {
                let limits = run.engine.rules().settings.limits;
                let parsed = parse_event(line, &limits);
                let ts = feed_one(run, parsed.as_ref().map_err(|r| *r));
                run.after_event(ts);
            }
            return;
        }
        let limits = self.runs[0].engine.rules().settings.limits;
        let parsed = parse_event(line, &limits);
        for run in &mut self.runs {
            let ts = feed_one(run, parsed.as_ref().map_err(|r| *r));
            run.after_event(ts);
        }
    }

    /// A line too long to read: rejected by every config.
    pub fn too_long(&mut self) {
        for run in &mut self.runs {
            run.engine.reject(RejectReason::TooLarge);
        }
    }

    /// Events the first config counted as read, accepted, late or duplicate.
    pub fn usable_events(&self) -> u64 {
        let s = self.runs[0].engine.stats();
        s.accepted + s.late + s.duplicates
    }

    pub fn events_read(&self) -> u64 {
        self.runs[0].engine.stats().events
    }

    pub fn finish(self, labels: Option<&Labels>) -> BacktestResult {
        let mut runs = self.runs.into_iter();
        let candidate = runs.next().map(|r| r.finish(labels)).expect("a candidate");
        let baseline = runs.next().map(|r| r.finish(labels));
        let diff = baseline.as_ref().map(|b| diff(&candidate, b));
        BacktestResult {
            candidate,
            baseline,
            diff,
            labelled: labels.is_some(),
        }
    }
}

/// Feeds one parsed (or refused) event; returns its time when the engine took it.
fn feed_one(run: &mut Run, parsed: Result<&cvguard_core::Event<'_>, RejectReason>) -> Option<i64> {
    match parsed {
        Ok(ev) => {
            let outcome = run.engine.process(ev, None, &mut run.alerts);
            (outcome == cvguard_core::Outcome::Accepted).then_some(ev.ts)
        }
        Err(reason) => {
            run.engine.reject(reason);
            None
        }
    }
}

/// The first incident of each (rule, key), by (rule, kind, key).
fn first_incidents(r: &ConfigResult) -> BTreeMap<(String, &'static str, String), &Incident> {
    let mut map = BTreeMap::new();
    for i in &r.incidents {
        map.entry((i.rule.clone(), i.key_kind.as_str(), i.key.clone()))
            .and_modify(|e: &mut &Incident| {
                if i.decided_at_ms < e.decided_at_ms {
                    *e = i;
                }
            })
            .or_insert(i);
    }
    map
}

fn hit(i: &Incident) -> KeyHit {
    KeyHit {
        rule: i.rule.clone(),
        key_kind: i.key_kind,
        key: i.key.clone(),
        decided_at: i.decided_at.clone(),
        action: i.action,
        cvs_exposed: i.cvs_exposed,
    }
}

/// What the candidate does differently from the baseline, per (rule, key).
pub fn diff(candidate: &ConfigResult, baseline: &ConfigResult) -> Diff {
    let c = first_incidents(candidate);
    let b = first_incidents(baseline);
    let mut d = Diff::default();
    for (k, ci) in &c {
        match b.get(k) {
            None => d.newly_hit.push(hit(ci)),
            Some(bi) => {
                let earlier_by_ms = bi.decided_at_ms - ci.decided_at_ms;
                if earlier_by_ms == 0 {
                    d.unchanged += 1;
                    continue;
                }
                let shift = Shift {
                    rule: ci.rule.clone(),
                    key_kind: ci.key_kind,
                    key: ci.key.clone(),
                    candidate_at: ci.decided_at.clone(),
                    baseline_at: bi.decided_at.clone(),
                    earlier_by_ms,
                    candidate_cvs: ci.cvs_exposed,
                    baseline_cvs: bi.cvs_exposed,
                    fewer_cvs: ci.cvs_exposed.zip(bi.cvs_exposed).map(|(c, b)| b as i64 - c as i64),
                };
                if earlier_by_ms > 0 {
                    d.decided_earlier.push(shift);
                } else {
                    d.decided_later.push(shift);
                }
            }
        }
    }
    for (k, bi) in &b {
        if !c.contains_key(k) {
            d.no_longer_hit.push(hit(bi));
        }
    }
    let suspended = |r: &ConfigResult| -> BTreeSet<String> {
        r.incidents
            .iter()
            .filter(|i| i.action == AlertAction::Suspend)
            .flat_map(|i| i.suspended.iter().cloned())
            .collect()
    };
    let (cs, bs) = (suspended(candidate), suspended(baseline));
    d.newly_suspended = cs.difference(&bs).cloned().collect();
    d.no_longer_suspended = bs.difference(&cs).cloned().collect();
    d
}
