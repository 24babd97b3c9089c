//! The detection engine: events in, alerts out. Deterministic: the same events in the
//! same order give the same alerts, byte for byte. Time is the events' own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::alert::{
    stable_hash, Alert, AlertAction, AlertReason, BaselineExplain, Evidence, VisibilityCounts, WindowValue,
};
use crate::baseline::{day_of, format_day, Amount, HistoryTable};
use crate::chunked::{ChunkedRows, ChunkedVec};
use crate::cvmap::{str_hash, StrIndex};
use crate::distinct::{unstamp, Access, Added, GroupState, KindPlan, RuleProgress};
use crate::event::{parse_event, Event, RejectReason};
use serde::Serialize;

use crate::interner::{CvInterner, CvRef, Interner};
use crate::recent::RecentSet;
use crate::rules::{DistinctField, KeyKind, Measure, Response, Rule, RuleSet};
use crate::smallstr::SmallStr;
use crate::timefmt::{format_rfc3339_ms, Millis};
use crate::window::CountWindow;

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
    /// Its `event_id` was accepted within `engine.dedupe_window`: a second delivery of
    /// the same event, counted and not applied again.
    Duplicate,
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
    /// Times a new key was not tracked because its kind had `max_tracked_keys` already.
    pub keys_refused: u64,
    /// Events not applied because their `event_id` was accepted within the dedupe window.
    pub duplicates: u64,
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
        self.keys_refused += other.keys_refused;
        self.duplicates += other.duplicates;
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
    /// Live (key, CV) pairs: CVs some `distinct_cvs` rule of a key still counts (once
    /// per key, however many of its rules count it).
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

/// Where the engine's heap goes, in bytes allocated (capacities, not contents), by part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeapProfile {
    pub parts: Vec<(&'static str, u64)>,
}

impl HeapProfile {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }
}

/// Effective thresholds, one list per distinct combination. They are per key, but most
/// keys share them: every account without a profile has the rules' own, and accounts
/// of one segment and vacancy count have the same. A key holds a handle to its list
/// (4 bytes, not 8 per rule), and the lists in use stay in cache.
#[derive(Debug, Default)]
struct ThresholdLists {
    lists: Vec<Box<[u64]>>,
    index: FxHashMap<Box<[u64]>, u32>,
    scratch: Vec<u64>,
}

impl ThresholdLists {
    fn handle(&mut self, thresholds: impl IntoIterator<Item = u64>) -> u32 {
        self.scratch.clear();
        self.scratch.extend(thresholds);
        if let Some(h) = self.index.get(self.scratch.as_slice()) {
            return *h;
        }
        let h = self.lists.len() as u32;
        let list: Box<[u64]> = self.scratch.as_slice().into();
        self.lists.push(list.clone());
        self.index.insert(list, h);
        h
    }

    fn get(&self, handle: u32) -> &[u64] {
        &self.lists[handle as usize]
    }

    fn heap_bytes(&self) -> usize {
        let lists: usize = self.lists.iter().map(|l| l.len() * 8).sum();
        // Each list is stored twice: in `lists` and as the index's key.
        2 * lists
            + self.lists.capacity() * std::mem::size_of::<Box<[u64]>>()
            + crate::cvmap::table_bytes(self.index.capacity(), std::mem::size_of::<(Box<[u64]>, u32)>())
            + self.scratch.capacity() * 8
    }
}

/// The evidence a key keeps: who acted, from where, with what.
#[derive(Debug, Default)]
struct KeyEvidence {
    users: RecentSet,
    ips: RecentSet,
    user_agents: RecentSet,
    /// The accounts acting on an org, user or ip key.
    accounts: RecentSet,
}

impl KeyEvidence {
    fn truncated(&self) -> bool {
        self.users.truncated() || self.ips.truncated() || self.user_agents.truncated() || self.accounts.truncated()
    }

    fn clear(&mut self, names: &mut Interner) {
        for set in [
            &mut self.users,
            &mut self.ips,
            &mut self.user_agents,
            &mut self.accounts,
        ] {
            set.clear(names);
        }
    }
}

/// What a key holds of its own. The parts every key of its kind has in the same number
/// (a state per rule, a count window per count rule, a group per group of distinct rules)
/// are rows of its `KeyTable`, found by the key's slot.
#[derive(Debug)]
struct KeyState {
    key: SmallStr,
    last_sec: i64,
    /// The key's effective thresholds (see `ThresholdLists`).
    thresholds: u32,
    /// One bit per rule of the key kind (in `rules_of` order) while it is at or above
    /// its threshold; the id of the alert that opened the incident is in
    /// `KeyTable::firing`. Rules are rarely firing, so the ids are kept aside.
    firing: u64,
    evidence: KeyEvidence,
}

/// One key with its rows, to read.
#[derive(Clone, Copy)]
struct KeyRef<'t> {
    state: &'t KeyState,
    /// One per rule of this key kind, in `RuleSet::rules_of` order.
    thresholds: &'t [u64],
    /// One per `events`/`cvs` rule (see `KindLayout::count_place`).
    counts: &'t [CountWindow],
    /// One per group of `distinct_cvs` rules (see `KindPlan`).
    groups: &'t [GroupState],
    /// One per rule of each group, group after group (see `KindLayout::progress`).
    progress: &'t [RuleProgress],
}

impl KeyRef<'_> {
    fn value(&self, layout: &KindLayout, slot: usize) -> u64 {
        match layout.plan.place[slot] {
            Some((g, i)) => self.distinct_value(layout, g, i),
            None => self.counts[layout.count_place[slot]].value(),
        }
    }

    /// The value of rule `i` of group `g`.
    fn distinct_value(&self, layout: &KindLayout, g: usize, i: usize) -> u64 {
        self.progress[layout.progress_at[g] + i].value()
    }
}

/// Where each rule of a key kind keeps its window.
#[derive(Debug, Clone, Default)]
struct KindLayout {
    plan: KindPlan,
    /// For each rule (in `rules_of` order): its index among the kind's count windows
    /// (meaningless for `distinct_cvs` rules).
    count_place: Vec<usize>,
    counts: usize,
    /// For each group: where its rules' progress starts in a key's progress row.
    progress_at: Vec<usize>,
    /// The length of a key's progress row: the kind's `distinct_cvs` rules.
    progress: usize,
}

impl KindLayout {
    fn new(rules: &RuleSet, kind: KeyKind) -> KindLayout {
        let ids = rules.rules_of(kind);
        let plan = KindPlan::build(rules, ids);
        let mut counts = 0;
        let count_place = plan
            .place
            .iter()
            .map(|p| match p {
                Some(_) => usize::MAX,
                None => {
                    counts += 1;
                    counts - 1
                }
            })
            .collect();
        let mut progress = 0;
        let progress_at = plan
            .groups
            .iter()
            .map(|g| {
                progress += g.rules.len();
                progress - g.rules.len()
            })
            .collect();
        KindLayout {
            plan,
            count_place,
            counts,
            progress_at,
            progress,
        }
    }

    /// Group `g`'s rules in a key's progress row.
    fn progress_range(&self, g: usize) -> std::ops::Range<usize> {
        self.progress_at[g]..self.progress_at[g] + self.plan.groups[g].rules.len()
    }

    /// The distinct rule an alert of `slot` reports on: its own, else the kind's longest.
    fn reported(&self, slot: usize) -> Option<(usize, usize)> {
        self.plan.place[slot]
            .filter(|(g, _)| self.plan.fields[*g] == DistinctField::Cvs)
            .or_else(|| self.plan.longest.and_then(|l| self.plan.place[l]))
    }
}

/// All keys of one kind. Keys live in a slab; a min-heap of (expiry second, slot)
/// frees a key once its newest event has left its longest window, without scanning.
#[derive(Debug, Default)]
struct KeyTable {
    index: StrIndex,
    slots: ChunkedVec<Option<KeyState>>,
    /// The rows of each slot, free slots included (their rows are reset on reuse).
    counts: ChunkedRows<CountWindow>,
    groups: ChunkedRows<GroupState>,
    progress: ChunkedRows<RuleProgress>,
    thresholds: ThresholdLists,
    firing: FiringIds,
    free: Vec<u32>,
    expiry: BinaryHeap<Reverse<(i64, u32)>>,
}

impl KeyTable {
    fn new(layout: &KindLayout) -> KeyTable {
        KeyTable {
            counts: ChunkedRows::new(layout.counts),
            groups: ChunkedRows::new(layout.plan.groups.len()),
            progress: ChunkedRows::new(layout.progress),
            ..KeyTable::default()
        }
    }

    fn find(&self, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(str_hash(key), key, |s| {
            slots[s as usize].as_ref().map_or(&[], |k| k.key.as_bytes())
        })
    }

    fn at(&self, slot: u32) -> Option<KeyRef<'_>> {
        let s = slot as usize;
        let state = self.slots[s].as_ref()?;
        Some(KeyRef {
            state,
            thresholds: self.thresholds.get(state.thresholds),
            counts: self.counts.row(s),
            groups: self.groups.row(s),
            progress: self.progress.row(s),
        })
    }

    fn get(&self, key: &str) -> Option<KeyRef<'_>> {
        self.find(key).and_then(|s| self.at(s))
    }

    /// Puts a new key, with its rows, in a free slot and indexes it.
    fn insert(
        &mut self,
        state: KeyState,
        counts: impl IntoIterator<Item = CountWindow>,
        groups: impl IntoIterator<Item = GroupState>,
        progress: impl IntoIterator<Item = RuleProgress>,
        expiry: i64,
    ) -> u32 {
        let hash = str_hash(&state.key);
        let slot = match self.free.pop() {
            Some(s) => {
                let i = s as usize;
                self.slots[i] = Some(state);
                self.counts.set_row(i, counts);
                self.groups.set_row(i, groups);
                self.progress.set_row(i, progress);
                s
            }
            None => {
                self.slots.push(Some(state));
                self.counts.push_row(counts);
                self.groups.push_row(groups);
                self.progress.push_row(progress);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(hash, slot);
        self.expiry.push(Reverse((expiry, slot)));
        slot
    }

    /// Frees the key in `slot`, letting go of every CV and evidence value it holds.
    /// Frees a key; `fields` are its distinct groups' fields (the layout its rows have).
    fn remove(
        &mut self,
        slot: u32,
        fields: &[DistinctField],
        cvs: &mut CvInterner,
        names: &mut Interner,
        pairs: &mut u64,
    ) -> bool {
        let Some(mut state) = self.slots[slot as usize].take() else {
            return false;
        };
        self.index.remove(str_hash(&state.key), slot);
        self.free.push(slot);
        self.firing.forget(state.firing, slot);
        for (g, field) in self.groups.row_mut(slot as usize).iter_mut().zip(fields) {
            if *field == DistinctField::Cvs {
                g.clear(|cv| {
                    *pairs -= 1;
                    cvs.release(cv);
                });
            } else {
                g.clear(|name| names.release(name));
            }
        }
        state.evidence.clear(names);
        true
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// The alert ids of open incidents, by (slot, rule), for the keys of one kind. Whether a
/// rule fires is a bit in its key (`KeyState::firing`); the id, needed only while it
/// does, is kept here.
#[derive(Debug, Default)]
struct FiringIds(FxHashMap<(u32, u8), u64>);

impl FiringIds {
    /// The id of the incident rule `w` of the key in `slot` (firing bits `bits`) opened,
    /// while it fires.
    fn get(&self, bits: u64, slot: u32, w: usize) -> Option<u64> {
        if bits & (1 << w) == 0 {
            return None;
        }
        self.0.get(&(slot, w as u8)).copied()
    }

    /// Marks rule `w` of the key in `slot` firing with alert `id`, or not firing.
    fn set(&mut self, bits: &mut u64, slot: u32, w: usize, id: Option<u64>) {
        match id {
            Some(id) => {
                *bits |= 1 << w;
                self.0.insert((slot, w as u8), id);
            }
            None if *bits & (1 << w) != 0 => {
                *bits &= !(1 << w);
                self.0.remove(&(slot, w as u8));
            }
            None => {}
        }
    }

    /// Drops the ids of a key that is freed.
    fn forget(&mut self, mut bits: u64, slot: u32) {
        while bits != 0 {
            self.0.remove(&(slot, bits.trailing_zeros() as u8));
            bits &= bits - 1;
        }
    }

    fn heap_bytes(&self) -> usize {
        crate::cvmap::table_bytes(self.0.capacity(), std::mem::size_of::<((u32, u8), u64)>())
    }
}

pub struct Engine {
    rules: Arc<RuleSet>,
    layouts: [KindLayout; 4],
    tables: [KeyTable; 4],
    interner: CvInterner,
    /// Users, IPs, user agents and accounts kept as evidence.
    names: Interner,
    /// Newest event time accepted so far: the engine's notion of "now".
    max_ts: Option<Millis>,
    /// The newest event time no later than its source's clock: what the watermark follows.
    /// A producer whose clock runs ahead (up to `future_skew`) moves `max_ts`, and so the
    /// windows, but not the watermark, so it cannot make every honest event late.
    watermark_ts: Option<Millis>,
    /// How many engines share the instance's `max_tracked_keys` (parts or partitions).
    key_share: usize,
    /// The `event_id`s accepted within `dedupe_window`.
    pub(crate) dedupe: crate::dedupe::Dedupe,
    /// Per rule (by index in the rule set): its keys' histories, for a baseline rule.
    histories: Vec<Option<HistoryTable>>,
    /// The watermark's day when histories were last swept (see `HistoryTable::sweep`).
    history_swept_day: i32,
    /// Per rule of the key kind being decided: the threshold its history sets for the
    /// key (`u64::MAX` while the key is not judged), for baseline rules.
    terms: Vec<u64>,
    stats: EngineStats,
    cv_pairs: u64,
    scratch: Vec<CvRef>,
    track_exposure: bool,
    updates: Vec<IncidentUpdate>,
    /// Per rule of the key kind being decided: the statistic its history judges the key
    /// by today (`None` while not judged), kept only while values are observed.
    term_statistics: Vec<Option<f64>>,
    /// `Some` while values are observed (`Engine::observe_values`).
    observed: Option<Vec<ValueSeen>>,
}

/// A key's value of one rule right after an event that rule counts: the only moments a
/// value can reach a new high, so the largest of these is the key's peak. Recorded only
/// while [`Engine::observe_values`] is on (for `cvguard tune`).
#[derive(Debug, Clone)]
pub struct ValueSeen {
    pub kind: KeyKind,
    pub key: crate::smallstr::SmallStr,
    /// The rule's index in the rule set.
    pub rule: usize,
    pub value: u64,
    /// The key's threshold before any baseline: the rule's, its segment's, or
    /// `per_vacancy` x open vacancies.
    pub floor: u64,
    /// For a baseline rule judging the key: the statistic of its history today.
    pub statistic: Option<f64>,
    pub event_time_ms: Millis,
}

/// What an incident learns from one event: its latest value and the CVs exposed. At
/// the firing itself, `cvs` is every CV in the window (whose data was exposed up to the
/// crossing); afterwards, the CVs of each further event on the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentUpdate {
    pub incident_id: String,
    /// The rule's value after the event; `None` for a late event, which changes no
    /// window (its CVs were exposed all the same).
    pub value: Option<u64>,
    pub event_time_ms: Millis,
    pub cvs: Vec<Exposure>,
    /// The distinct CVs of the window the incident reports on (the alert's
    /// `evidence.distinct_cvs`) after the event: the engine's own count, so a curve of the
    /// incident needs no CV ids. `None` for a late event and for a key kind without a
    /// distinct-CV window.
    pub cvs_in_window: Option<u64>,
}

/// An event's evidence values with their hashes, computed once for all its keys.
struct EventNames<'e> {
    account: (u64, &'e str),
    user: Option<(u64, &'e str)>,
    ip: Option<(u64, &'e str)>,
    user_agent: Option<(u64, &'e str)>,
}

impl<'e> EventNames<'e> {
    fn of(ev: &'e Event<'_>) -> EventNames<'e> {
        let hashed = |v: &'e str| (str_hash(v), v);
        EventNames {
            account: hashed(&ev.account_id),
            user: ev.user_id.as_deref().map(hashed),
            ip: ev.ip.as_deref().map(hashed),
            user_agent: ev.user_agent.as_deref().map(hashed),
        }
    }
}

/// An empty history table for each baseline rule.
fn new_histories(rules: &RuleSet) -> Vec<Option<HistoryTable>> {
    rules.rules.iter().map(|r| r.baseline.map(HistoryTable::new)).collect()
}

/// The interner a rule's distinct values are handles of: CV ids, or names.
fn values_of<'i>(rule: &Rule, cvs: &'i mut CvInterner, names: &'i mut Interner) -> &'i mut Interner {
    match rule.measure.distinct_field() {
        None | Some(DistinctField::Cvs) => cvs,
        Some(_) => names,
    }
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        let layouts = KeyKind::ALL.map(|k| KindLayout::new(&rules, k));
        Engine {
            histories: new_histories(&rules),
            tables: KeyKind::ALL.map(|k| KeyTable::new(&layouts[k.index()])),
            layouts,
            rules,
            interner: CvInterner::default(),
            names: Interner::default(),
            max_ts: None,
            watermark_ts: None,
            key_share: 1,
            dedupe: Default::default(),
            history_swept_day: i32::MIN,
            terms: Vec::new(),
            stats: EngineStats::default(),
            cv_pairs: 0,
            scratch: Vec::new(),
            track_exposure: false,
            updates: Vec::new(),
            term_statistics: Vec::new(),
            observed: None,
        }
    }

    /// Turns on (or off) recording every key's value of each rule after each event the
    /// rule counts ([`ValueSeen`]), for [`Engine::take_observed`]. Off, it costs a branch
    /// per rule and event.
    pub fn observe_values(&mut self, on: bool) {
        self.observed = on.then(Vec::new);
    }

    /// The values recorded since the last call (empty when not observing).
    pub fn take_observed(&mut self, into: &mut Vec<ValueSeen>) {
        if let Some(seen) = self.observed.as_mut() {
            into.append(seen);
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
        self.watermark_ts.map(|t| t - self.rules.settings.allowed_lateness_ms)
    }

    /// Where the heap goes, by part. Walks every key: for benchmarks and diagnostics.
    pub fn heap_profile(&self) -> HeapProfile {
        use std::mem::size_of;
        let mut slots = 0;
        let mut rows = 0;
        let mut index = 0;
        let mut bookkeeping = 0;
        let mut count_buckets = 0;
        let mut cv_tables = 0;
        let mut queues = 0;
        let mut evidence = 0;
        for table in &self.tables {
            slots += table.slots.heap_bytes();
            rows += table.counts.heap_bytes() + table.groups.heap_bytes() + table.progress.heap_bytes();
            index += table.index.heap_bytes();
            bookkeeping += table.expiry.capacity() * size_of::<Reverse<(i64, u32)>>()
                + table.free.capacity() * size_of::<u32>()
                + table.firing.heap_bytes()
                + table.thresholds.heap_bytes();
            for s in 0..table.slots.len() as u32 {
                let Some(key) = table.at(s) else { continue };
                slots += key.state.key.heap_bytes();
                let ev = &key.state.evidence;
                evidence += [&ev.users, &ev.ips, &ev.user_agents, &ev.accounts]
                    .iter()
                    .map(|set| set.heap_bytes())
                    .sum::<usize>();
                count_buckets += key.counts.iter().map(CountWindow::heap_bytes).sum::<usize>();
                for g in key.groups {
                    let (t, q) = g.heap_bytes();
                    cv_tables += t;
                    queues += q;
                }
            }
        }
        let (mut history_days, mut history_open) = (0, 0);
        for table in self.histories.iter().flatten() {
            let (d, o) = table.heap_bytes();
            history_days += d;
            history_open += o;
        }
        history_days += self.histories.capacity() * size_of::<Option<HistoryTable>>();
        let parts = [
            ("key slots (key text, last time, evidence first values)", slots),
            ("key rows (count windows, distinct groups, rules' progress)", rows),
            ("key index", index),
            ("key expiry heap, free slots, firing ids, threshold lists", bookkeeping),
            ("count window buckets", count_buckets),
            ("CV tables of keys (one entry per live key, CV pair)", cv_tables),
            ("access queues of distinct groups", queues),
            ("evidence sets beyond their first value", evidence),
            ("CV ids, interned once for all keys", self.interner.heap_bytes()),
            (
                "evidence values (users, IPs, user agents, accounts), interned",
                self.names.heap_bytes(),
            ),
            ("engine scratch", self.scratch.capacity() * size_of::<CvRef>()),
            ("event ids kept for deduplication", self.dedupe.heap_bytes()),
            ("baseline histories (daily values, keys)", history_days),
            ("baseline: distinct values of days still open", history_open),
        ];
        HeapProfile {
            parts: parts.into_iter().map(|(name, b)| (name, b as u64)).collect(),
        }
    }

    /// The event ids kept for deduplication now (benchmarks weigh them).
    pub fn dedupe_ids(&self) -> usize {
        self.dedupe.len()
    }

    pub fn state_size(&self) -> StateSize {
        StateSize {
            keys: self.tables.iter().map(|t| t.len() as u64).sum(),
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
        let dedupe_window = self.rules.settings.dedupe_window_ms;
        // Scoped by account: a second delivery is of the same account's event, and one
        // producer's ids (or a colliding id scheme) can never hide another account's.
        let event_id = ev.event_id.as_deref().filter(|_| dedupe_window > 0);
        if let (Some(id), Some(newest)) = (event_id, self.max_ts) {
            if self.dedupe.seen(&ev.account_id, id, newest - dedupe_window) {
                self.stats.duplicates += 1;
                return Outcome::Duplicate;
            }
        }
        if let Some(wm) = self.watermark() {
            if ev.ts < wm {
                self.stats.late += 1;
                self.record_late_exposure(ev);
                return Outcome::Late;
            }
        }
        self.stats.accepted += 1;
        let now_ms = self.max_ts.map_or(ev.ts, |t| t.max(ev.ts));
        self.max_ts = Some(now_ms);
        let bounded = clock_ms.map_or(ev.ts, |clock| ev.ts.min(clock));
        self.watermark_ts = Some(self.watermark_ts.map_or(bounded, |t| t.max(bounded)));
        if let Some(id) = event_id {
            self.dedupe.accept(&ev.account_id, id, ev.ts);
        }
        if dedupe_window > 0 {
            self.dedupe.expire(now_ms - dedupe_window);
        }
        self.sweep_histories();
        let now = now_ms.div_euclid(1000);

        let rules = Arc::clone(&self.rules);
        match rules.action_id(&ev.action) {
            None => self.stats.unmatched_action += 1,
            Some(action) => self.apply(&rules, ev, action, now, out),
        }
        self.collect_expired(&rules, now);
        Outcome::Accepted
    }

    /// Once a day of watermark: frees what no later event can add to (see
    /// `HistoryTable::sweep`).
    fn sweep_histories(&mut self) {
        let Some(wm) = self.watermark() else { return };
        let wm_day = day_of(wm);
        if wm_day <= self.history_swept_day {
            return;
        }
        self.history_swept_day = wm_day;
        for (rule, table) in self.rules.rules.iter().zip(&mut self.histories) {
            if let Some(table) = table {
                table.sweep(wm_day, values_of(rule, &mut self.interner, &mut self.names));
            }
        }
    }

    /// Counts the event in the histories of `key`'s baseline rules, and sets `terms`
    /// to the threshold each sets for the key today.
    #[allow(clippy::too_many_arguments)]
    fn count_history(
        &mut self,
        rules: &RuleSet,
        kind: KeyKind,
        key: &str,
        ev: &Event<'_>,
        action: u8,
        now: i64,
        cvs: &[CvRef],
    ) {
        let now_day = now.div_euclid(86_400) as i32;
        let ev_day = day_of(ev.ts);
        let max_keys = rules.settings.max_tracked_keys.div_ceil(self.key_share);
        self.terms.clear();
        self.term_statistics.clear();
        for &ri in rules.rules_of(kind) {
            let rule = &rules.rules[ri];
            let (Some(table), Some(baseline)) = (self.histories[ri].as_mut(), rule.baseline.as_ref()) else {
                self.terms.push(0);
                if self.observed.is_some() {
                    self.term_statistics.push(None);
                }
                continue;
            };
            let history = if rule.action_mask & (1u64 << action) != 0 {
                // The event's value of a names field, held while it is counted.
                let held = match rule.measure.distinct_field() {
                    Some(DistinctField::Accounts) => Some(self.names.intern_retained(&ev.account_id)),
                    Some(DistinctField::Users) => ev.user_id.as_deref().map(|u| self.names.intern_retained(u)),
                    Some(DistinctField::Ips) => ev.ip.as_deref().map(|ip| self.names.intern_retained(ip)),
                    _ => None,
                };
                let amount = match rule.measure {
                    Measure::Events => Amount::Count(1),
                    Measure::Cvs => Amount::Count(ev.cv_ids.len() as u64),
                    Measure::DistinctCvs => Amount::Distinct(cvs),
                    _ => Amount::Distinct(held.as_slice()),
                };
                let values = values_of(rule, &mut self.interner, &mut self.names);
                let counted = table.count(key, ev_day, now_day, amount, max_keys, values);
                if let Some(h) = held {
                    self.names.release(h);
                }
                if counted.as_ref().err() == Some(&crate::baseline::Refused::Full) {
                    self.stats.keys_refused += 1;
                }
                counted.ok()
            } else {
                table.keys.get_mut(key)
            };
            let term = history.and_then(|h| h.term(baseline, now_day));
            self.terms.push(term.map_or(u64::MAX, |(t, _)| t));
            if self.observed.is_some() {
                self.term_statistics.push(term.map(|(_, s)| s));
            }
        }
    }

    fn apply(&mut self, rules: &RuleSet, ev: &Event<'_>, action: u8, now: i64, out: &mut Vec<Alert>) {
        let bit = 1u64 << action;
        let sec = ev.ts.div_euclid(1000);

        // Intern the CV ids once for all keys, and hold them while the keys decide: a
        // key's advance may release a CV's last window reference (an org that alone held
        // it reads it again after it left the window), and without this hold the handle
        // would be freed, then retained by the add, and later given to another CV.
        // Windows that keep one retain it; the hold is let go below, freeing the rest.
        let mut cvs = std::mem::take(&mut self.scratch);
        cvs.clear();
        if rules.distinct_mask() & bit != 0 {
            cvs.extend(ev.cv_ids.iter().map(|id| self.interner.intern_retained(id)));
        }
        let names = EventNames::of(ev);

        for kind in KeyKind::ALL {
            if rules.kind_mask(kind) & bit == 0 {
                continue;
            }
            let Some(key) = rules.key_for_action(kind, ev, action) else {
                continue;
            };
            let Some(slot) = self.slot_for(rules, kind, key, &ev.account_id, sec) else {
                self.stats.keys_refused += 1;
                continue;
            };
            if rules.has_baseline(kind) {
                self.count_history(rules, kind, key, ev, action, now, &cvs);
            }
            self.update_key(rules, kind, slot, ev, &names, action, sec, now, &cvs, out);
        }

        for cv in &cvs {
            self.interner.release(*cv);
        }
        self.scratch = cvs;
    }

    /// The key's slot, made on its first event; `None` when its kind is at this engine's
    /// share of `max_tracked_keys`.
    fn slot_for(&mut self, rules: &RuleSet, kind: KeyKind, key: &str, account: &str, sec: i64) -> Option<u32> {
        let table = &mut self.tables[kind.index()];
        if let Some(slot) = table.find(key) {
            return Some(slot);
        }
        if table.len() >= rules.settings.max_tracked_keys.div_ceil(self.key_share) {
            return None;
        }
        let layout = &self.layouts[kind.index()];
        let hint = (kind == KeyKind::UserId).then_some(account);
        let thresholds = table.thresholds.handle(
            rules
                .rules_of(kind)
                .iter()
                .map(|i| rules.effective_threshold(&rules.rules[*i], key, hint)),
        );
        let state = KeyState {
            key: SmallStr::new(key),
            last_sec: sec,
            thresholds,
            firing: 0,
            evidence: KeyEvidence::default(),
        };
        Some(table.insert(
            state,
            (0..layout.counts).map(|_| CountWindow::default()),
            layout.plan.groups.iter().map(|_| GroupState::default()),
            layout.plan.groups.iter().flat_map(GroupState::new_progress),
            sec + rules.max_window_secs(kind),
        ))
    }

    /// This engine holds a `1/share` part of the instance's keys (one of `share` HTTP
    /// parts or Kafka partitions), and so that share of `max_tracked_keys` per kind.
    pub fn share_keys(&mut self, share: usize) {
        self.key_share = share.max(1);
    }

    #[allow(clippy::too_many_arguments)]
    fn update_key(
        &mut self,
        rules: &RuleSet,
        kind: KeyKind,
        slot: u32,
        ev: &Event<'_>,
        names: &EventNames<'_>,
        action: u8,
        sec: i64,
        now: i64,
        cvs: &[CvRef],
        out: &mut Vec<Alert>,
    ) {
        let bit = 1u64 << action;
        let interner = &mut self.interner;
        let cv_pairs = &mut self.cv_pairs;
        let layout = &self.layouts[kind.index()];
        let table = &mut self.tables[kind.index()];
        let s = slot as usize;
        let state = table.slots[s].as_mut().expect("indexed key has a slot");
        let (thresholds, firing, counts, groups, progress) = (
            table.thresholds.get(state.thresholds),
            &mut table.firing,
            table.counts.row_mut(s),
            table.groups.row_mut(s),
            table.progress.row_mut(s),
        );
        state.last_sec = state.last_sec.max(sec);

        let evidence_cutoff = now - rules.max_window_secs(kind);
        let ev_sets = &mut state.evidence;
        for (set, value, cap) in [
            (&mut ev_sets.users, names.user, EVIDENCE_CAP),
            (&mut ev_sets.ips, names.ip, EVIDENCE_CAP),
            (&mut ev_sets.user_agents, names.user_agent, EVIDENCE_CAP),
            (
                &mut ev_sets.accounts,
                (kind != KeyKind::AccountId).then_some(names.account),
                ACCOUNTS_CAP,
            ),
        ] {
            if let Some((hash, v)) = value {
                set.note(hash, v, sec, cap, evidence_cutoff, &mut self.names);
            }
        }

        let names = &mut self.names;
        let rule_ids = rules.rules_of(kind);
        // First every window moves to `now`, letting go of what has left it; then a firing
        // rule whose window emptied while the key was quiet re-arms, before this event is
        // added: one event that takes it back over is a new crossing. (Only an empty
        // window: a key hovering at its threshold, one event leaving as one arrives, is
        // one incident, not an alert per event.)
        for (g, plan) in layout.plan.groups.iter().enumerate() {
            let rules = &mut progress[layout.progress_range(g)];
            if layout.plan.fields[g] == DistinctField::Cvs {
                groups[g].advance(plan, rules, now, |cv| {
                    *cv_pairs -= 1;
                    interner.release(cv);
                });
            } else {
                groups[g].advance(plan, rules, now, |name| names.release(name));
            }
        }
        for (slot, &ri) in rule_ids.iter().enumerate() {
            if layout.plan.place[slot].is_none() {
                counts[layout.count_place[slot]].expire(now - rules.rules[ri].window_secs);
            }
        }
        if state.firing != 0 {
            for w in 0..rule_ids.len() {
                let key = KeyRef {
                    state,
                    thresholds,
                    counts,
                    groups,
                    progress,
                };
                if key.value(layout, w) == 0 {
                    firing.set(&mut state.firing, slot, w, None);
                }
            }
        }

        for (g, plan) in layout.plan.groups.iter().enumerate() {
            let field = layout.plan.fields[g];
            let group = &mut groups[g];
            let rules = &mut progress[layout.progress_range(g)];
            // A group of accounts, users or ips counts the event's value of that field,
            // held while the key decides (as the CVs are in `apply`).
            let held = match field {
                DistinctField::Cvs => None,
                DistinctField::Accounts => Some(names.intern_retained(&ev.account_id)),
                DistinctField::Users => ev.user_id.as_deref().map(|u| names.intern_retained(u)),
                DistinctField::Ips => ev.ip.as_deref().map(|ip| names.intern_retained(ip)),
            };
            if let Some(class) = plan.class_of(action) {
                let access = Access {
                    class,
                    sec,
                    visibility: ev.visibility,
                    action,
                };
                match held {
                    None if field == DistinctField::Cvs => {
                        for cv in cvs {
                            if group.add(plan, rules, now, access, *cv) == Added::New {
                                *cv_pairs += 1;
                                interner.retain(*cv);
                            }
                        }
                    }
                    None => {}
                    Some(name) if group.add(plan, rules, now, access, name) == Added::New => {
                        names.retain(name);
                    }
                    Some(_) => {}
                }
            }
            if let Some(name) = held {
                names.release(name);
            }
        }

        for (slot, &ri) in rule_ids.iter().enumerate() {
            if layout.plan.place[slot].is_some() {
                continue;
            }
            let rule = &rules.rules[ri];
            let cutoff = now - rule.window_secs;
            let win = &mut counts[layout.count_place[slot]];
            if rule.action_mask & bit != 0 && sec > cutoff {
                let amount = match rule.measure {
                    Measure::Events => 1,
                    _ => ev.cv_ids.len() as u64,
                };
                win.add(sec, amount);
            }
        }

        for (w, &ri) in rule_ids.iter().enumerate() {
            let key = KeyRef {
                state,
                thresholds,
                counts,
                groups,
                progress,
            };
            let value = key.value(layout, w);
            let threshold = match rules.rules[ri].baseline {
                Some(_) => thresholds[w].max(self.terms[w]),
                None => thresholds[w],
            };
            if let Some(seen) = self.observed.as_mut() {
                if rules.rules[ri].action_mask & bit != 0 {
                    seen.push(ValueSeen {
                        kind,
                        key: state.key.clone(),
                        rule: ri,
                        value,
                        floor: thresholds[w],
                        statistic: rules.rules[ri]
                            .baseline
                            .and_then(|_| self.term_statistics.get(w).copied().flatten()),
                        event_time_ms: ev.ts,
                    });
                }
            }
            if value < threshold {
                firing.set(&mut state.firing, slot, w, None);
            } else if let Some(id) = firing.get(state.firing, slot, w) {
                if self.track_exposure {
                    self.updates.push(IncidentUpdate {
                        incident_id: format!("{id:016x}"),
                        value: Some(value),
                        event_time_ms: ev.ts,
                        cvs: event_exposure(ev, sec),
                        cvs_in_window: reported_count(&key, layout, w),
                    });
                }
            } else {
                let view = KeyView {
                    rules,
                    layout,
                    kind,
                    key,
                    cvs: &self.interner,
                    names: &self.names,
                    histories: &self.histories,
                    now,
                };
                let (alert, id) = build_alert(&view, w, &rules.rules[ri], ev);
                let exposure = self.track_exposure.then(|| view.exposure(w));
                firing.set(&mut state.firing, slot, w, Some(id));
                self.stats.alerts += 1;
                if alert.action == AlertAction::Suspend {
                    self.stats.suspensions += 1;
                }
                if let Some(mut cvs) = exposure {
                    if cvs.is_empty() {
                        cvs = event_exposure(ev, sec);
                    }
                    self.updates.push(IncidentUpdate {
                        incident_id: alert.alert_id.clone(),
                        value: Some(value),
                        event_time_ms: ev.ts,
                        cvs,
                        cvs_in_window: alert.evidence.distinct_cvs,
                    });
                }
                out.push(alert);
            }
        }
    }

    /// A late event is in no window, but the CVs it names were exposed all the same: when
    /// its key has an open incident for a rule that counts its action, they join that
    /// incident's list (the people to notify).
    fn record_late_exposure(&mut self, ev: &Event<'_>) {
        if !self.track_exposure {
            return;
        }
        let rules = Arc::clone(&self.rules);
        let Some(action) = rules.action_id(&ev.action) else {
            return;
        };
        let bit = 1u64 << action;
        let sec = ev.ts.div_euclid(1000);
        let mut late = Vec::new();
        for kind in KeyKind::ALL {
            if rules.kind_mask(kind) & bit == 0 {
                continue;
            }
            let Some(key) = rules.key_for_action(kind, ev, action) else {
                continue;
            };
            let table = &self.tables[kind.index()];
            let (Some(slot), Some(view)) = (table.find(key), self.view(kind, key)) else {
                continue;
            };
            for (w, &ri) in rules.rules_of(kind).iter().enumerate() {
                if rules.rules[ri].action_mask & bit == 0 {
                    continue;
                }
                if let Some(id) = table.firing.get(view.key.state.firing, slot, w) {
                    late.push(IncidentUpdate {
                        incident_id: format!("{id:016x}"),
                        value: None,
                        event_time_ms: ev.ts,
                        cvs: event_exposure(ev, sec),
                        cvs_in_window: None,
                    });
                }
            }
        }
        self.updates.extend(late);
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
                let Some(state) = table.slots[slot as usize].as_ref() else {
                    continue;
                };
                let due = state.last_sec + max_window;
                if due > now {
                    table.expiry.push(Reverse((due, slot)));
                    continue;
                }
                let fields = &self.layouts[kind.index()].plan.fields;
                table.remove(slot, fields, &mut self.interner, &mut self.names, &mut self.cv_pairs);
            }
        }
    }

    fn view<'e>(&'e self, kind: KeyKind, key: &str) -> Option<KeyView<'e>> {
        let key = self.tables[kind.index()].get(key)?;
        Some(KeyView {
            rules: &self.rules,
            layout: &self.layouts[kind.index()],
            kind,
            key,
            cvs: &self.interner,
            names: &self.names,
            histories: &self.histories,
            now: self.max_ts.unwrap_or(0).div_euclid(1000),
        })
    }

    /// The live value of every window of `key` against its effective threshold, as of
    /// the engine's newest event time. Reading changes nothing: entries older than
    /// their window are left out of the value, not dropped.
    pub fn key_values(&self, kind: KeyKind, key: &str) -> Vec<WindowValue> {
        let Some(view) = self.view(kind, key) else {
            return Vec::new();
        };
        let mut values = view.window_values();
        for (w, value) in values.iter_mut().enumerate() {
            value.value = view.value_now(w);
        }
        values
    }

    /// The `limit` (key, rule) pairs whose value is the largest share of its effective
    /// threshold, highest first (ties by kind, key, rule): who is closest to a threshold,
    /// or over it, now. A baseline rule that does not judge a key yet is silent for it and
    /// left out. Values are read as `key_values` reads them, as of the engine's newest
    /// event; a key's value as of its own last event bounds that from above, so keys are
    /// read exactly in the order of their bound until no bound can beat the answer.
    pub fn closest(&self, limit: usize) -> Vec<Closest> {
        if limit == 0 {
            return Vec::new();
        }
        let mut bounds: Vec<(f64, KeyKind, u32, usize)> = Vec::new();
        for kind in KeyKind::ALL {
            let table = &self.tables[kind.index()];
            let layout = &self.layouts[kind.index()];
            for slot in 0..table.slots.len() as u32 {
                let Some(key) = table.at(slot) else { continue };
                for (w, &threshold) in key.thresholds.iter().enumerate() {
                    let value = key.value(layout, w);
                    if threshold > 0 && value > 0 {
                        bounds.push((value as f64 / threshold as f64, kind, slot, w));
                    }
                }
            }
        }
        bounds.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut out: Vec<Closest> = Vec::new();
        for (bound, kind, slot, w) in bounds {
            if out.len() >= limit && bound < out[limit - 1].share {
                break;
            }
            let Some(found) = self.exact_share(kind, slot, w) else {
                continue;
            };
            out.push(found);
            out.sort_by(Closest::rank);
            out.truncate(limit);
        }
        out
    }

    /// Rule `w` of the key in `slot`, read as `key_values` reads it; `None` when the rule
    /// is silent for the key (not judged yet, or nothing in its window now).
    fn exact_share(&self, kind: KeyKind, slot: u32, w: usize) -> Option<Closest> {
        let key = self.tables[kind.index()].at(slot)?;
        let view = self.view(kind, key.state.key.as_ref())?;
        let rule = &self.rules.rules[self.rules.rules_of(kind)[w]];
        let (threshold, baseline) = view.judged(w, rule);
        if baseline.as_ref().is_some_and(|b| !b.judged) || threshold == 0 {
            return None;
        }
        let mut value = view.window_values().swap_remove(w);
        value.value = view.value_now(w);
        (value.value > 0).then(|| Closest {
            kind,
            key: key.state.key.to_string(),
            share: value.value as f64 / threshold as f64,
            value,
        })
    }

    /// The CVs `key` touched inside `rule`'s window (or the key's longest distinct
    /// window when the rule counts events), with their first access, first action and
    /// visibility: whose data was exposed.
    pub fn exposure(&self, kind: KeyKind, key: &str, rule: &str) -> Vec<Exposure> {
        let Some(view) = self.view(kind, key) else {
            return Vec::new();
        };
        let rules = &self.rules;
        let Some(w) = rules.rules_of(kind).iter().position(|i| rules.rules[*i].name == rule) else {
            return Vec::new();
        };
        view.exposure(w)
    }
}

/// A key's rule close to (or over) its threshold: see `Engine::closest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Closest {
    #[serde(rename = "key_kind")]
    pub kind: KeyKind,
    pub key: String,
    /// The live value over the effective threshold (1.0: at the threshold).
    pub share: f64,
    #[serde(flatten)]
    pub value: WindowValue,
}

impl Closest {
    /// The order `Engine::closest` answers in: the larger share first, then by kind,
    /// key and rule, so merged answers of several engines are deterministic.
    pub fn rank(a: &Closest, b: &Closest) -> std::cmp::Ordering {
        b.share
            .total_cmp(&a.share)
            .then(a.kind.index().cmp(&b.kind.index()))
            .then_with(|| a.key.cmp(&b.key))
            .then_with(|| a.value.rule.cmp(&b.value.rule))
    }
}

/// One key's state with what is needed to read it.
struct KeyView<'e> {
    rules: &'e RuleSet,
    layout: &'e KindLayout,
    kind: KeyKind,
    key: KeyRef<'e>,
    cvs: &'e CvInterner,
    names: &'e Interner,
    histories: &'e [Option<HistoryTable>],
    now: i64,
}

impl KeyView<'_> {
    /// Rule `w`'s effective threshold for this key and, for a baseline rule, how the
    /// key's history judged it today. A key its baseline rule does not judge yet shows
    /// the floor (the rule stays silent for it: `judged` is false).
    fn judged(&self, w: usize, rule: &Rule) -> (u64, Option<BaselineExplain>) {
        let floor = self.key.thresholds[w];
        let Some(baseline) = rule.baseline.as_ref() else {
            return (floor, None);
        };
        let ri = self.rules.rules_of(self.kind)[w];
        let day = self.now.div_euclid(86_400) as i32;
        let judgement = self.histories[ri]
            .as_ref()
            .and_then(|t| t.keys.get(&*self.key.state.key))
            .map(|h| h.judgement(baseline, day));
        let term = judgement.as_ref().and_then(|j| j.term);
        let explain = BaselineExplain {
            statistic: baseline.statistic,
            statistic_value: term.map(|(_, s)| s),
            factor: baseline.factor,
            baseline_threshold: term.map(|(t, _)| t),
            floor,
            judged: term.is_some(),
            min_history_days: baseline.min_history_days,
            first_day: judgement.as_ref().map(|j| format_day(j.first_day)),
            history_from: judgement.as_ref().map(|j| format_day(j.from_day)),
            daily_values: judgement.map(|j| j.daily).unwrap_or_default(),
        };
        (term.map_or(floor, |(t, _)| floor.max(t)), Some(explain))
    }

    fn members(&self, g: usize, i: usize) -> impl Iterator<Item = (CvRef, &crate::distinct::CvEntry)> + '_ {
        self.key.groups[g].members(&self.layout.plan.groups[g], i, self.now)
    }

    /// Rule `w`'s value as of the engine's newest event time, exactly: entries older than
    /// the window are left out even where no event of this key has advanced past them yet
    /// (the running counts only hold right after such an advance).
    fn value_now(&self, w: usize) -> u64 {
        match self.layout.plan.place[w] {
            Some((g, i)) => self.members(g, i).count() as u64,
            None => {
                let ri = self.rules.rules_of(self.kind)[w];
                let cutoff = self.now - self.rules.rules[ri].window_secs;
                self.key.counts[self.layout.count_place[w]].value_at(cutoff)
            }
        }
    }

    /// Which term set rule `w`'s threshold for this key. Worked out again from the rules
    /// (alerts and the account view are rare next to events); should the key's stored
    /// threshold differ (a user key read without its account), it is the rule's.
    fn threshold_source(&self, w: usize, rule: &Rule, account_hint: Option<&str>) -> crate::ThresholdSource {
        if self.judged(w, rule).0 > self.key.thresholds[w] {
            return crate::ThresholdSource::Baseline;
        }
        match self.rules.threshold_and_source(rule, &self.key.state.key, account_hint) {
            (threshold, source) if threshold == self.key.thresholds[w] => source,
            _ => crate::ThresholdSource::Rule,
        }
    }

    fn window_values(&self) -> Vec<WindowValue> {
        self.rules
            .rules_of(self.kind)
            .iter()
            .enumerate()
            .map(|(w, &ri)| {
                let rule = &self.rules.rules[ri];
                let (threshold, baseline) = self.judged(w, rule);
                WindowValue {
                    rule: rule.name.clone(),
                    measure: rule.measure,
                    window: rule.window_text.clone(),
                    value: self.key.value(self.layout, w),
                    threshold,
                    threshold_source: self.threshold_source(w, rule, None),
                    baseline,
                }
            })
            .collect()
    }

    /// The CVs of the window an incident reports on: the rule's own distinct window,
    /// else the key's longest distinct window; empty when the key has none.
    fn exposure(&self, w: usize) -> Vec<Exposure> {
        let Some((g, i)) = self.layout.reported(w) else {
            return Vec::new();
        };
        let mut list: Vec<Exposure> = self
            .members(g, i)
            .map(|(cv, e)| Exposure {
                cv_id: self.cvs.name(cv).to_string(),
                first_access_ms: unstamp(e.first) * 1000,
                action: self.rules.action_name(e.first_action).to_string(),
                visibility: e.visibility,
            })
            .collect();
        list.sort_by(|a, b| {
            a.first_access_ms
                .cmp(&b.first_access_ms)
                .then_with(|| a.cv_id.cmp(&b.cv_id))
        });
        list
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

fn build_alert(view: &KeyView<'_>, w: usize, rule: &Rule, ev: &Event<'_>) -> (Alert, u64) {
    let rules = view.rules;
    let key = view.key;
    let state = key.state;
    let evidence_cutoff = view.now - rules.max_window_secs(view.kind);
    let accounts = match view.kind {
        KeyKind::AccountId => vec![state.key.to_string()],
        _ => state.evidence.accounts.live(evidence_cutoff, view.names),
    };
    let (action, reason, suspend_accounts) = decide(rules, rule, &accounts);

    // The distinct window the alert reports on: visibility split and how far back its
    // CVs go.
    let reported = view.layout.reported(w).map(|(g, i)| {
        let mut by_visibility = [0u64; 3];
        let mut oldest = None::<i64>;
        for (_, e) in view.members(g, i) {
            by_visibility[e.visibility as usize] += 1;
            let first = unstamp(e.first);
            oldest = Some(oldest.map_or(first, |o| o.min(first)));
        }
        (key.distinct_value(view.layout, g, i), by_visibility, oldest)
    });
    let cvs_by_visibility = reported.map(|(_, [unknown, anonymous, named], _)| VisibilityCounts {
        named,
        anonymous,
        unknown,
    });
    let ev_sets = &state.evidence;
    let users = ev_sets.users.live(evidence_cutoff, view.names);
    let ips = ev_sets.ips.live(evidence_cutoff, view.names);
    let user_agents = ev_sets.user_agents.live(evidence_cutoff, view.names);
    let evidence = Evidence {
        windows: view.window_values(),
        distinct_cvs: reported.map(|(value, _, _)| value),
        cvs_by_visibility,
        distinct_users: users.len() as u64,
        distinct_ips: ips.len() as u64,
        distinct_user_agents: user_agents.len() as u64,
        users,
        ips,
        user_agents,
        sets_truncated: ev_sets.truncated(),
    };

    let event_id = ev.event_id.as_deref().unwrap_or("");
    let id = stable_hash(&[
        rule.name.as_bytes(),
        &[view.kind.id_byte()],
        state.key.as_bytes(),
        &ev.ts.to_be_bytes(),
        event_id.as_bytes(),
    ]);
    // When the activity began: the oldest access still inside the rule's window.
    let window_start = view.now - rule.window_secs + 1;
    let first_seen_sec = match view.layout.plan.place[w] {
        Some(_) => reported.and_then(|(_, _, oldest)| oldest).map(|s| s.max(window_start)),
        None => key.counts[view.layout.count_place[w]].oldest(),
    };
    let first_seen_ms = first_seen_sec.map_or(ev.ts, |s| s * 1000);
    let hint = (view.kind == KeyKind::UserId).then_some(&*ev.account_id);
    let (threshold, baseline) = view.judged(w, rule);
    let alert = Alert {
        alert_id: format!("{id:016x}"),
        rule: rule.name.clone(),
        severity: rule.severity,
        key_kind: view.kind,
        key: state.key.to_string(),
        measure: rule.measure,
        window: rule.window_text.clone(),
        value: key.value(view.layout, w),
        threshold,
        threshold_source: view.threshold_source(w, rule, hint),
        baseline,
        action,
        reason,
        event_time: format_rfc3339_ms(ev.ts),
        event_id: ev.event_id.as_ref().map(|s| s.to_string()),
        first_seen: format_rfc3339_ms(first_seen_ms),
        time_to_detect_ms: (ev.ts - first_seen_ms).max(0),
        accounts,
        suspend_accounts,
        evidence,
        event_time_ms: ev.ts,
    };
    (alert, id)
}

/// The distinct CVs of the window an alert of rule `w` reports on (`KindLayout::reported`).
fn reported_count(key: &KeyRef<'_>, layout: &KindLayout, w: usize) -> Option<u64> {
    layout.reported(w).map(|(g, i)| key.distinct_value(layout, g, i))
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
pub use snapshot::{EngineSnapshot, HistorySnapshot, SnapshotError};

#[cfg(test)]
mod tests;
