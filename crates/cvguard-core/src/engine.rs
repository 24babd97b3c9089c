//! The detection engine: events in, alerts out. Deterministic: the same events in the
//! same order give the same alerts, byte for byte. Time is the events' own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::alert::{stable_hash, Alert, AlertAction, AlertReason, Evidence, VisibilityCounts, WindowValue};
use crate::event::{parse_event, Event, RejectReason};
use crate::interner::{CvInterner, CvRef};
use crate::recent::RecentSet;
use crate::rules::{KeyKind, Measure, Response, Rule, RuleSet};
use crate::timefmt::{format_rfc3339_ms, Millis};
use crate::window::{CountWindow, DistinctWindow};

/// How many users, IPs and user agents a key remembers for evidence.
const EVIDENCE_CAP: usize = 64;
/// How many accounts an org, user or ip key remembers.
const ACCOUNTS_CAP: usize = 1024;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Older than the watermark: counted, not added to any window.
    Late,
    Rejected(RejectReason),
}

/// Counters the engine keeps about its input and decisions. Adapters export them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub events: u64,
    pub accepted: u64,
    pub late: u64,
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Accepted events whose action no rule counts.
    pub unmatched_action: u64,
    pub alerts: u64,
    pub suspensions: u64,
}

impl EngineStats {
    /// Adds another engine's counts (engines of several partitions or key kinds).
    pub fn add(&mut self, other: &EngineStats) {
        self.events += other.events;
        self.accepted += other.accepted;
        self.late += other.late;
        for (a, b) in self.rejected.iter_mut().zip(other.rejected.iter()) {
            *a += b;
        }
        self.unmatched_action += other.unmatched_action;
        self.alerts += other.alerts;
        self.suspensions += other.suspensions;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn rejected_by_reason(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .map(|r| (*r, self.rejected[r.index()]))
            .filter(|(_, n)| *n > 0)
    }
}

/// Size of the live state, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub keys: u64,
    /// Live (key, CV) pairs across all distinct windows.
    pub cv_pairs: u64,
    pub interned_cvs: u64,
}

impl StateSize {
    pub fn add(&mut self, o: &StateSize) {
        self.keys += o.keys;
        self.cv_pairs += o.cv_pairs;
        self.interned_cvs += o.interned_cvs;
    }
}

#[derive(Debug)]
enum Window {
    Count(CountWindow),
    Distinct(DistinctWindow),
}

impl Window {
    fn new(measure: Measure) -> Window {
        match measure {
            Measure::Events | Measure::Cvs => Window::Count(CountWindow::default()),
            Measure::DistinctCvs => Window::Distinct(DistinctWindow::default()),
        }
    }

    fn value(&self) -> u64 {
        match self {
            Window::Count(w) => w.value(),
            Window::Distinct(w) => w.value(),
        }
    }

    fn oldest(&self) -> Option<i64> {
        match self {
            Window::Count(w) => w.oldest(),
            Window::Distinct(w) => w.oldest(),
        }
    }
}

#[derive(Debug)]
struct KeyState {
    key: Box<str>,
    last_sec: i64,
    /// One per rule of this key kind, in `RuleSet::rules_of` order.
    windows: Vec<Window>,
    thresholds: Vec<u64>,
    /// While a rule is at or above its threshold: the id of the alert that opened the
    /// incident (as a number; `alert_id` is its hex form).
    firing: Vec<Option<u64>>,
    users: RecentSet,
    ips: RecentSet,
    user_agents: RecentSet,
    accounts: RecentSet,
}

/// All keys of one kind. Keys live in a slab; a min-heap of (expiry second, slot)
/// frees a key once its newest event has left its longest window, without scanning.
#[derive(Debug, Default)]
struct KeyTable {
    index: FxHashMap<Box<str>, u32>,
    slots: Vec<Option<KeyState>>,
    free: Vec<u32>,
    expiry: BinaryHeap<Reverse<(i64, u32)>>,
}

pub struct Engine {
    rules: Arc<RuleSet>,
    tables: [KeyTable; 4],
    interner: CvInterner,
    /// Newest event time accepted so far: the engine's notion of "now".
    max_ts: Option<Millis>,
    stats: EngineStats,
    cv_pairs: u64,
    scratch: Vec<CvRef>,
    track_exposure: bool,
    updates: Vec<IncidentUpdate>,
}

/// What an incident learns from one event: its latest value and the CVs exposed. At
/// the firing itself, `cvs` is every CV in the window (whose data was exposed up to the
/// crossing); afterwards, the CVs of each further event on the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentUpdate {
    pub incident_id: String,
    pub value: u64,
    pub event_time_ms: Millis,
    pub cvs: Vec<Exposure>,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine {
            rules,
            tables: Default::default(),
            interner: CvInterner::default(),
            max_ts: None,
            stats: EngineStats::default(),
            cv_pairs: 0,
            scratch: Vec::new(),
            track_exposure: false,
            updates: Vec::new(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The watermark: events older than this are late.
    pub fn watermark(&self) -> Option<Millis> {
        self.max_ts.map(|t| t - self.rules.settings.allowed_lateness_ms)
    }

    pub fn state_size(&self) -> StateSize {
        StateSize {
            keys: self.tables.iter().map(|t| t.index.len() as u64).sum(),
            cv_pairs: self.cv_pairs,
            interned_cvs: self.interner.len() as u64,
        }
    }

    /// Parses and processes one NDJSON line or Kafka message value.
    ///
    /// `clock_ms` is the source's idea of the present (a Kafka message timestamp, an
    /// HTTP arrival time); an event later than it plus `future_skew` is rejected. `None`
    /// skips that check.
    pub fn process_bytes(&mut self, input: &[u8], clock_ms: Option<Millis>, out: &mut Vec<Alert>) -> Outcome {
        match parse_event(input, &self.rules.settings.limits) {
            Ok(ev) => self.process(&ev, clock_ms, out),
            Err(reason) => self.reject(reason),
        }
    }

    /// Counts an event that failed before it reached the engine (e.g. an unreadable line).
    pub fn reject(&mut self, reason: RejectReason) -> Outcome {
        self.stats.events += 1;
        self.stats.rejected[reason.index()] += 1;
        Outcome::Rejected(reason)
    }

    /// Processes one parsed event; alerts it causes are appended to `out`.
    pub fn process(&mut self, ev: &Event<'_>, clock_ms: Option<Millis>, out: &mut Vec<Alert>) -> Outcome {
        if ev.cv_ids.len() > self.rules.settings.limits.max_cv_ids {
            return self.reject(RejectReason::TooManyCvIds);
        }
        if let Some(clock) = clock_ms {
            if ev.ts > clock.saturating_add(self.rules.settings.future_skew_ms) {
                return self.reject(RejectReason::FutureTs);
            }
        }
        self.stats.events += 1;
        if let Some(wm) = self.watermark() {
            if ev.ts < wm {
                self.stats.late += 1;
                return Outcome::Late;
            }
        }
        self.stats.accepted += 1;
        let now_ms = self.max_ts.map_or(ev.ts, |t| t.max(ev.ts));
        self.max_ts = Some(now_ms);
        let now = now_ms.div_euclid(1000);

        let rules = Arc::clone(&self.rules);
        match rules.action_id(&ev.action) {
            None => self.stats.unmatched_action += 1,
            Some(action) => self.apply(&rules, ev, action, now, out),
        }
        self.collect_expired(&rules, now);
        Outcome::Accepted
    }

    fn apply(&mut self, rules: &RuleSet, ev: &Event<'_>, action: u8, now: i64, out: &mut Vec<Alert>) {
        let bit = 1u64 << action;
        let sec = ev.ts.div_euclid(1000);

        // Intern the CV ids once for all keys; windows that keep one retain it.
        let needs_cvs = rules.distinct_mask() & bit != 0;
        let mut cvs = std::mem::take(&mut self.scratch);
        cvs.clear();
        if needs_cvs {
            cvs.extend(ev.cv_ids.iter().map(|id| self.interner.intern(id)));
        }

        for kind in KeyKind::ALL {
            if rules.kind_mask(kind) & bit == 0 {
                continue;
            }
            let Some(key) = rules.key_for_action(kind, ev, action) else {
                continue;
            };
            let slot = self.slot_for(rules, kind, key, &ev.account_id, sec);
            self.update_key(rules, kind, slot, ev, action, sec, now, &cvs, out);
        }

        for cv in &cvs {
            self.interner.release_if_unused(*cv);
        }
        self.scratch = cvs;
    }

    fn slot_for(&mut self, rules: &RuleSet, kind: KeyKind, key: &str, account: &str, sec: i64) -> u32 {
        let table = &mut self.tables[kind.index()];
        if let Some(slot) = table.index.get(key) {
            return *slot;
        }
        let rule_ids = rules.rules_of(kind);
        let hint = (kind == KeyKind::UserId).then_some(account);
        let state = KeyState {
            key: key.into(),
            last_sec: sec,
            windows: rule_ids.iter().map(|i| Window::new(rules.rules[*i].measure)).collect(),
            thresholds: rule_ids
                .iter()
                .map(|i| rules.effective_threshold(&rules.rules[*i], key, hint))
                .collect(),
            firing: vec![None; rule_ids.len()],
            users: RecentSet::default(),
            ips: RecentSet::default(),
            user_agents: RecentSet::default(),
            accounts: RecentSet::default(),
        };
        let slot = match table.free.pop() {
            Some(s) => {
                table.slots[s as usize] = Some(state);
                s
            }
            None => {
                table.slots.push(Some(state));
                (table.slots.len() - 1) as u32
            }
        };
        table.index.insert(key.into(), slot);
        table.expiry.push(Reverse((sec + rules.max_window_secs(kind), slot)));
        slot
    }

    #[allow(clippy::too_many_arguments)]
    fn update_key(
        &mut self,
        rules: &RuleSet,
        kind: KeyKind,
        slot: u32,
        ev: &Event<'_>,
        action: u8,
        sec: i64,
        now: i64,
        cvs: &[CvRef],
        out: &mut Vec<Alert>,
    ) {
        let bit = 1u64 << action;
        let interner = &mut self.interner;
        let cv_pairs = &mut self.cv_pairs;
        let state = self.tables[kind.index()].slots[slot as usize]
            .as_mut()
            .expect("indexed key has a slot");
        state.last_sec = state.last_sec.max(sec);

        let evidence_cutoff = now - rules.max_window_secs(kind);
        if let Some(user) = ev.user_id.as_deref() {
            state.users.note(user, sec, EVIDENCE_CAP, evidence_cutoff);
        }
        if let Some(ip) = ev.ip.as_deref() {
            state.ips.note(ip, sec, EVIDENCE_CAP, evidence_cutoff);
        }
        if let Some(ua) = ev.user_agent.as_deref() {
            state.user_agents.note(ua, sec, EVIDENCE_CAP, evidence_cutoff);
        }
        if kind != KeyKind::AccountId {
            state.accounts.note(&ev.account_id, sec, ACCOUNTS_CAP, evidence_cutoff);
        }

        let rule_ids = rules.rules_of(kind);
        for (w, &ri) in rule_ids.iter().enumerate() {
            let rule = &rules.rules[ri];
            let cutoff = now - rule.window_secs;
            let counts = rule.action_mask & bit != 0 && sec > cutoff;
            match &mut state.windows[w] {
                Window::Count(win) => {
                    win.expire(cutoff);
                    if counts {
                        let amount = match rule.measure {
                            Measure::Events => 1,
                            _ => ev.cv_ids.len() as u64,
                        };
                        win.add(sec, amount);
                    }
                }
                Window::Distinct(win) => {
                    win.expire(cutoff, |cv| {
                        *cv_pairs -= 1;
                        interner.release(cv);
                    });
                    if counts {
                        for cv in cvs {
                            if win.add(sec, *cv, ev.visibility, action) {
                                *cv_pairs += 1;
                                interner.retain(*cv);
                            }
                        }
                    }
                }
            }
        }

        for (w, &ri) in rule_ids.iter().enumerate() {
            let value = state.windows[w].value();
            let threshold = state.thresholds[w];
            if value < threshold {
                state.firing[w] = None;
            } else if let Some(id) = state.firing[w] {
                if self.track_exposure {
                    self.updates.push(IncidentUpdate {
                        incident_id: format!("{id:016x}"),
                        value,
                        event_time_ms: ev.ts,
                        cvs: event_exposure(ev, sec),
                    });
                }
            } else {
                let (alert, id) = build_alert(rules, kind, state, w, &rules.rules[ri], ev, now);
                state.firing[w] = Some(id);
                self.stats.alerts += 1;
                if alert.action == AlertAction::Suspend {
                    self.stats.suspensions += 1;
                }
                if self.track_exposure {
                    let mut cvs = window_exposure(rules, kind, state, w, &self.interner);
                    if cvs.is_empty() {
                        cvs = event_exposure(ev, sec);
                    }
                    self.updates.push(IncidentUpdate {
                        incident_id: alert.alert_id.clone(),
                        value,
                        event_time_ms: ev.ts,
                        cvs,
                    });
                }
                out.push(alert);
            }
        }
    }

    /// Turns on incident updates: from now on every firing, and every later event on a
    /// key while its rule stays at or above the threshold, records which CVs were
    /// exposed, for [`Engine::take_updates`]. `replay` leaves it off.
    pub fn track_exposure(&mut self, on: bool) {
        self.track_exposure = on;
    }

    /// The incident updates recorded since the last call.
    pub fn take_updates(&mut self) -> Vec<IncidentUpdate> {
        std::mem::take(&mut self.updates)
    }

    /// Frees keys whose newest event has left their longest window.
    fn collect_expired(&mut self, rules: &RuleSet, now: i64) {
        for kind in KeyKind::ALL {
            let max_window = rules.max_window_secs(kind);
            let table = &mut self.tables[kind.index()];
            while let Some(&Reverse((expiry, slot))) = table.expiry.peek() {
                if expiry > now {
                    break;
                }
                table.expiry.pop();
                let Some(state) = table.slots[slot as usize].as_mut() else {
                    continue;
                };
                let due = state.last_sec + max_window;
                if due > now {
                    table.expiry.push(Reverse((due, slot)));
                    continue;
                }
                let mut state = table.slots[slot as usize].take().expect("checked above");
                table.index.remove(&state.key);
                table.free.push(slot);
                for window in &mut state.windows {
                    if let Window::Distinct(win) = window {
                        win.clear(|cv| {
                            self.cv_pairs -= 1;
                            self.interner.release(cv);
                        });
                    }
                }
            }
        }
    }

    /// The live value of every window of `key` against its effective threshold, as of
    /// the engine's newest event time. Reading changes nothing: entries older than
    /// their window are left out of the value, not dropped.
    pub fn key_values(&self, kind: KeyKind, key: &str) -> Vec<WindowValue> {
        let table = &self.tables[kind.index()];
        let Some(state) = table.index.get(key).and_then(|s| table.slots[*s as usize].as_ref()) else {
            return Vec::new();
        };
        let now = self.max_ts.unwrap_or(0).div_euclid(1000);
        let mut values = window_values(&self.rules, kind, state);
        for (w, (value, &ri)) in values.iter_mut().zip(self.rules.rules_of(kind)).enumerate() {
            let cutoff = now - self.rules.rules[ri].window_secs;
            value.value = match &state.windows[w] {
                Window::Count(w) => w.value_at(cutoff),
                Window::Distinct(w) => w.value_at(cutoff),
            };
        }
        values
    }

    /// The CVs `key` touched inside `rule`'s window (or the key's longest distinct
    /// window when the rule counts events), with their first access, first action and
    /// visibility: whose data was exposed.
    pub fn exposure(&self, kind: KeyKind, key: &str, rule: &str) -> Vec<Exposure> {
        let table = &self.tables[kind.index()];
        let Some(state) = table.index.get(key).and_then(|s| table.slots[*s as usize].as_ref()) else {
            return Vec::new();
        };
        let rules = &self.rules;
        let Some(w) = rules.rules_of(kind).iter().position(|i| rules.rules[*i].name == rule) else {
            return Vec::new();
        };
        window_exposure(rules, kind, state, w, &self.interner)
    }
}

/// One CV exposed to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub cv_id: String,
    pub first_access_ms: Millis,
    pub action: String,
    pub visibility: crate::event::Visibility,
}

fn window_values(rules: &RuleSet, kind: KeyKind, state: &KeyState) -> Vec<WindowValue> {
    rules
        .rules_of(kind)
        .iter()
        .enumerate()
        .map(|(w, &ri)| {
            let rule = &rules.rules[ri];
            WindowValue {
                rule: rule.name.clone(),
                measure: rule.measure,
                window: rule.window_text.clone(),
                value: state.windows[w].value(),
                threshold: state.thresholds[w],
            }
        })
        .collect()
}

fn build_alert(
    rules: &RuleSet,
    kind: KeyKind,
    state: &KeyState,
    w: usize,
    rule: &Rule,
    ev: &Event<'_>,
    now: i64,
) -> (Alert, u64) {
    let evidence_cutoff = now - rules.max_window_secs(kind);
    let accounts = match kind {
        KeyKind::AccountId => vec![state.key.to_string()],
        _ => state.accounts.live(evidence_cutoff),
    };
    let (action, reason, suspend_accounts) = decide(rules, rule, &accounts);

    let distinct = reported_window(rules, kind, state, w);
    let cvs_by_visibility = distinct.map(|win| {
        let [unknown, anonymous, named] = win.by_visibility();
        VisibilityCounts {
            named,
            anonymous,
            unknown,
        }
    });
    let users = state.users.live(evidence_cutoff);
    let ips = state.ips.live(evidence_cutoff);
    let user_agents = state.user_agents.live(evidence_cutoff);
    let evidence = Evidence {
        windows: window_values(rules, kind, state),
        distinct_cvs: distinct.map(|win| win.value()),
        cvs_by_visibility,
        distinct_users: users.len() as u64,
        distinct_ips: ips.len() as u64,
        distinct_user_agents: user_agents.len() as u64,
        users,
        ips,
        user_agents,
        sets_truncated: state.users.truncated()
            || state.ips.truncated()
            || state.user_agents.truncated()
            || state.accounts.truncated(),
    };

    let event_id = ev.event_id.as_deref().unwrap_or("");
    let id = stable_hash(&[
        rule.name.as_bytes(),
        &[kind.id_byte()],
        state.key.as_bytes(),
        &ev.ts.to_be_bytes(),
        event_id.as_bytes(),
    ]);
    let first_seen_ms = state.windows[w].oldest().map_or(ev.ts, |s| s * 1000);
    let alert = Alert {
        alert_id: format!("{id:016x}"),
        rule: rule.name.clone(),
        severity: rule.severity,
        key_kind: kind,
        key: state.key.to_string(),
        measure: rule.measure,
        window: rule.window_text.clone(),
        value: state.windows[w].value(),
        threshold: state.thresholds[w],
        action,
        reason,
        event_time: format_rfc3339_ms(ev.ts),
        event_id: ev.event_id.as_ref().map(|s| s.to_string()),
        first_seen: format_rfc3339_ms(first_seen_ms),
        accounts,
        suspend_accounts,
        evidence,
        event_time_ms: ev.ts,
    };
    (alert, id)
}

/// The distinct window an alert and its incident report on (visibility split, exposed
/// CVs): the rule's own, else the key's longest distinct window.
fn reported_window<'s>(rules: &RuleSet, kind: KeyKind, state: &'s KeyState, w: usize) -> Option<&'s DistinctWindow> {
    match &state.windows[w] {
        Window::Distinct(win) => Some(win),
        Window::Count(_) => rules
            .rules_of(kind)
            .iter()
            .enumerate()
            .filter_map(|(i, &ri)| match &state.windows[i] {
                Window::Distinct(win) => Some((rules.rules[ri].window_secs, win)),
                Window::Count(_) => None,
            })
            .max_by_key(|(secs, _)| *secs)
            .map(|(_, win)| win),
    }
}

/// The CVs of the window an incident reports on: the rule's own distinct window, else
/// the key's longest distinct window; empty when the key has none.
fn window_exposure(rules: &RuleSet, kind: KeyKind, state: &KeyState, w: usize, interner: &CvInterner) -> Vec<Exposure> {
    let Some(win) = reported_window(rules, kind, state, w) else {
        return Vec::new();
    };
    let mut list: Vec<Exposure> = win
        .accesses()
        .map(|(cv, a)| Exposure {
            cv_id: interner.name(cv).to_string(),
            first_access_ms: a.first_sec * 1000,
            action: rules.action_name(a.first_action).to_string(),
            visibility: a.visibility,
        })
        .collect();
    list.sort_by(|a, b| {
        a.first_access_ms
            .cmp(&b.first_access_ms)
            .then_with(|| a.cv_id.cmp(&b.cv_id))
    });
    list
}

/// The CVs of one event, as exposures.
fn event_exposure(ev: &Event<'_>, sec: i64) -> Vec<Exposure> {
    let mut seen: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    ev.cv_ids
        .iter()
        .filter(|id| seen.insert(id))
        .map(|id| Exposure {
            cv_id: id.to_string(),
            first_access_ms: sec * 1000,
            action: ev.action.to_string(),
            visibility: ev.visibility,
        })
        .collect()
}

/// Suspend only what the rule asks to, never an allowlisted account, never in dry run.
fn decide(rules: &RuleSet, rule: &Rule, accounts: &[String]) -> (AlertAction, AlertReason, Vec<String>) {
    if rule.response == Response::Alert {
        return (AlertAction::Alert, AlertReason::RuleResponse, Vec::new());
    }
    let targets: Vec<String> = accounts.iter().filter(|a| !rules.is_allowlisted(a)).cloned().collect();
    if targets.is_empty() {
        return (AlertAction::Alert, AlertReason::Allowlisted, Vec::new());
    }
    if rules.settings.dry_run || rule.dry_run {
        return (AlertAction::Alert, AlertReason::DryRun, Vec::new());
    }
    (AlertAction::Suspend, AlertReason::RuleResponse, targets)
}

pub mod reload;
pub mod snapshot;
pub use snapshot::{EngineSnapshot, SnapshotError};

#[cfg(test)]
mod tests;
