//! A key's own history (issue #14, `[rules.baseline]`): each (rule, key) keeps its daily
//! values over the last `history` whole UTC days, and the rule fires at
//! `max(floor, factor x statistic)` of them. Exact and deterministic: a daily value is
//! the rule's measure over one calendar day of event time, the statistic a nearest-rank
//! percentile, maximum or mean of whole numbers. See docs/DETECTION.md.
//!
//! Memory is four bytes per day of history per (rule, key), plus, for distinct measures,
//! the values counted on days that can still receive events (today, and yesterday until
//! the watermark passes midnight): a value touched twice in a day counts once.

use std::fmt;

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use rustc_hash::{FxBuildHasher, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::interner::{Interner, Sym};
use crate::timefmt::{format_rfc3339_ms, Millis};

pub const DAY_MS: Millis = 86_400_000;
/// The longest history: a year and a day of daily values.
pub const MAX_HISTORY_DAYS: u32 = 366;

/// The UTC day (days since 1970-01-01) of an event time.
pub fn day_of(ms: Millis) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// `2024-05-03` for a day number.
pub fn format_day(day: i32) -> String {
    format_rfc3339_ms(i64::from(day) * DAY_MS)[..10].to_string()
}

/// What summarises a key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// The nearest-rank 50th percentile.
    Median,
    P90,
    P95,
    P99,
    Max,
    /// The arithmetic mean (the only statistic that may be fractional).
    Mean,
}

impl Statistic {
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Median => "median",
            Statistic::P90 => "p90",
            Statistic::P95 => "p95",
            Statistic::P99 => "p99",
            Statistic::Max => "max",
            Statistic::Mean => "mean",
        }
    }

    /// The statistic of `values` (not empty). Percentiles are nearest-rank: sort
    /// ascending and take element `ceil(p/100 x n)`, counting from 1.
    pub fn of(self, values: &mut [u64]) -> f64 {
        debug_assert!(!values.is_empty());
        let n = values.len();
        let rank = |p: usize| (p * n).div_ceil(100).clamp(1, n);
        let pick = |values: &mut [u64], p: usize| {
            let (_, v, _) = values.select_nth_unstable(rank(p) - 1);
            *v as f64
        };
        match self {
            Statistic::Median => pick(values, 50),
            Statistic::P90 => pick(values, 90),
            Statistic::P95 => pick(values, 95),
            Statistic::P99 => pick(values, 99),
            Statistic::Max => values.iter().copied().max().unwrap_or(0) as f64,
            Statistic::Mean => values.iter().map(|v| *v as f64).sum::<f64>() / n as f64,
        }
    }
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[rules.baseline]` as written in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// How many whole UTC days of daily values are kept: `28d`.
    pub history: String,
    /// `median`, `p90`, `p95`, `p99`, `max` or `mean`.
    pub statistic: Statistic,
    /// The rule fires at `factor` times the statistic (or the floor, if larger).
    pub factor: f64,
    /// A key first counted less than this many whole days ago is not judged.
    pub min_history: String,
}

/// A validated `[rules.baseline]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub history_days: u32,
    pub statistic: Statistic,
    pub factor: f64,
    pub min_history_days: u32,
}

impl Baseline {
    /// Validates a spec; problems are (key under `baseline.`, message).
    pub fn compile(spec: &BaselineSpec) -> Result<Baseline, Vec<(&'static str, String)>> {
        let mut issues = Vec::new();
        let mut days = |key: &'static str, text: &str| match parse_days(text) {
            Ok(d) => d,
            Err(message) => {
                issues.push((key, message));
                0
            }
        };
        let history_days = days("history", &spec.history);
        let min_history_days = days("min_history", &spec.min_history);
        if history_days > 0 && min_history_days > history_days {
            issues.push((
                "min_history",
                format!(
                    "`{}` is longer than history (`{}`): the key could never be judged",
                    spec.min_history, spec.history
                ),
            ));
        }
        if !(spec.factor.is_finite() && spec.factor > 0.0 && spec.factor <= 1e6) {
            issues.push((
                "factor",
                format!("{} must be a number above 0 and at most 1000000", spec.factor),
            ));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Baseline {
            history_days,
            statistic: spec.statistic,
            factor: spec.factor,
            min_history_days,
        })
    }

    /// The threshold the history sets: `factor x statistic`, rounded up (a whole-number
    /// value reaches `factor x statistic` exactly when it reaches this).
    pub fn term(&self, statistic: f64) -> u64 {
        // `factor` is decimal in config and binary here: 1.1 x 50 is 55.000000000000007,
        // which must be 55 as an analyst works it out, not 56. A product within a few
        // units in the last place of a whole number is that number.
        let product = self.factor * statistic;
        let nearest = product.round();
        let t = if (product - nearest).abs() <= 1e-9 * nearest.abs().max(1.0) {
            nearest
        } else {
            product.ceil()
        };
        if t >= u64::MAX as f64 {
            u64::MAX
        } else {
            t as u64
        }
    }
}

/// Whole days, `1d` to `366d` (humantime syntax: `28d`, `4w`, `672h`).
fn parse_days(text: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like `28d` or `4w`"))?;
    let ms = d.as_millis();
    if ms % DAY_MS as u128 != 0 {
        return Err(format!("`{text}` is not a whole number of days"));
    }
    let days = ms / DAY_MS as u128;
    if days < 1 || days > u128::from(MAX_HISTORY_DAYS) {
        return Err(format!("`{text}` must be between 1d and {MAX_HISTORY_DAYS}d"));
    }
    Ok(days as u32)
}

/// One key's history under one rule.
#[derive(Debug, Clone)]
pub(crate) struct KeyHistory {
    /// The UTC day of the first event the rule counted for the key.
    pub(crate) first_day: i32,
    /// The newest day with a value: `days` holds `newest_day - history ..= newest_day`.
    pub(crate) newest_day: i32,
    /// Daily values, a ring indexed by day modulo its length (`history + 1`).
    days: Box<[u32]>,
    /// Distinct measures: the values (interned CV ids or names, each retained) counted on
    /// each day that can still receive events.
    open: Vec<(i32, FxHashSet<Sym>)>,
    /// The judgement of `judged.0`'s day: `None` when the key is not judged yet, else the
    /// threshold term and the statistic. Recomputed when a day before it changes.
    judged: Option<(i32, Option<(u64, f64)>)>,
}

/// How a key stands under a baseline rule on one day, to explain an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// `None` while the key is younger than `min_history`: the rule does not judge it.
    pub term: Option<(u64, f64)>,
    pub first_day: i32,
    /// The first day of `daily`.
    pub from_day: i32,
    pub daily: Vec<u64>,
}

impl KeyHistory {
    fn new(day: i32, history_days: u32) -> KeyHistory {
        KeyHistory {
            first_day: day,
            newest_day: day,
            days: vec![0; history_days as usize + 1].into_boxed_slice(),
            open: Vec::new(),
            judged: None,
        }
    }

    fn slot(&self, day: i32) -> usize {
        day.rem_euclid(self.days.len() as i32) as usize
    }

    /// Day `day`'s value, 0 outside what the ring holds.
    pub(crate) fn value(&self, day: i32) -> u64 {
        let span = self.days.len() as i32 - 1;
        if day > self.newest_day || day < self.newest_day - span {
            0
        } else {
            u64::from(self.days[self.slot(day)])
        }
    }

    /// Makes `day` the newest, clearing the days the ring moves over.
    fn advance(&mut self, day: i32) {
        if day <= self.newest_day {
            return;
        }
        let len = self.days.len() as i64;
        let steps = (i64::from(day) - i64::from(self.newest_day)).min(len);
        for d in 0..steps {
            let slot = self.slot(day - d as i32);
            self.days[slot] = 0;
        }
        self.newest_day = day;
    }

    fn add(&mut self, day: i32, amount: u64) {
        if amount == 0 {
            return;
        }
        self.advance(day);
        let span = self.days.len() as i32 - 1;
        if day < self.newest_day - span {
            return;
        }
        let slot = self.slot(day);
        self.days[slot] = (u64::from(self.days[slot]) + amount).min(u64::from(u32::MAX)) as u32;
        if self.judged.is_some_and(|(judged_day, _)| day < judged_day) {
            self.judged = None;
        }
    }

    /// Lets go of the distinct values of days before `day` (they can receive no more
    /// events), releasing each through `release`.
    fn close_before(&mut self, day: i32, values: &mut Interner) {
        self.open.retain_mut(|(d, set)| {
            if *d >= day {
                return true;
            }
            for v in set.drain() {
                values.release(v);
            }
            false
        });
    }

    fn release_all(&mut self, values: &mut Interner) {
        self.close_before(i32::MAX, values);
    }

    /// The daily values the key is judged on, on day `day`: the days
    /// `max(first_day, day - history) .. day - 1`, oldest first.
    fn history(&self, day: i32) -> (i32, Vec<u64>) {
        let span = self.days.len() as i32 - 1;
        let from = self.first_day.max(day - span);
        (from, (from..day).map(|d| self.value(d)).collect())
    }

    /// The threshold term on day `day`, and the statistic it came from; `None` while the
    /// key is younger than `min_history` days.
    pub(crate) fn term(&mut self, baseline: &Baseline, day: i32) -> Option<(u64, f64)> {
        if let Some((d, judged)) = self.judged {
            if d == day {
                return judged;
            }
        }
        let judged = self.judge(baseline, day);
        self.judged = Some((day, judged));
        judged
    }

    fn judge(&self, baseline: &Baseline, day: i32) -> Option<(u64, f64)> {
        if i64::from(day) - i64::from(self.first_day) < i64::from(baseline.min_history_days) {
            return None;
        }
        let (_, mut values) = self.history(day);
        if values.is_empty() {
            return None;
        }
        let statistic = baseline.statistic.of(&mut values);
        Some((baseline.term(statistic), statistic))
    }

    pub(crate) fn judgement(&self, baseline: &Baseline, day: i32) -> Judgement {
        let (from_day, daily) = self.history(day);
        Judgement {
            term: self.judge(baseline, day),
            first_day: self.first_day,
            from_day,
            daily,
        }
    }

    fn heap_bytes(&self) -> (usize, usize) {
        let open = self.open.capacity() * std::mem::size_of::<(i32, FxHashSet<Sym>)>()
            + self
                .open
                .iter()
                .map(|(_, s)| crate::cvmap::table_bytes(s.capacity(), std::mem::size_of::<Sym>()))
                .sum::<usize>();
        (self.days.len() * 4, open)
    }
}

/// What one event adds to a key's day under a baseline rule.
pub(crate) enum Amount<'a> {
    /// `events` and `cvs`: a number.
    Count(u64),
    /// A distinct measure: the event's values, interned (each already retained once by
    /// the caller for the duration of the event); new ones are retained again.
    Distinct(&'a [Sym]),
}

/// The histories of one baseline rule, by key.
#[derive(Debug)]
pub(crate) struct HistoryTable {
    pub(crate) baseline: Baseline,
    pub(crate) keys: HashMap<Box<str>, KeyHistory, FxBuildHasher>,
}

/// Why a key was not given a history.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its table holds `max_tracked_keys` already.
    Full,
    /// The event added nothing, and the key has no history to add it to.
    Nothing,
}

impl HistoryTable {
    pub(crate) fn new(baseline: Baseline) -> HistoryTable {
        HistoryTable {
            baseline,
            keys: HashMap::default(),
        }
    }

    /// Counts an event of `day` for `key`, as of `now_day` (the engine's newest day): a
    /// key idle for longer than its history is forgotten first, and starts again. A
    /// distinct value newly counted takes a reference in `values` (the interner its
    /// handles are of), given back when its day closes.
    pub(crate) fn count(
        &mut self,
        key: &str,
        day: i32,
        now_day: i32,
        amount: Amount<'_>,
        max_keys: usize,
        values: &mut Interner,
    ) -> Result<&mut KeyHistory, Refused> {
        let history_days = self.baseline.history_days;
        // The first day is that of the first event the rule counted: one that adds
        // nothing (a distinct rule's event without a value) starts no history.
        let adds = match amount {
            Amount::Count(n) => n > 0,
            Amount::Distinct(values) => !values.is_empty(),
        };
        if !adds && !self.keys.contains_key(key) {
            return Err(Refused::Nothing);
        }
        let full = self.keys.len() >= max_keys;
        // One lookup; the key's text is copied only when it is new.
        let h = match self.keys.entry_ref(key) {
            EntryRef::Occupied(o) => {
                let h = o.into_mut();
                if i64::from(h.newest_day) < i64::from(now_day) - i64::from(history_days) {
                    h.release_all(values);
                    *h = KeyHistory::new(day, history_days);
                }
                h
            }
            EntryRef::Vacant(_) if full => return Err(Refused::Full),
            EntryRef::Vacant(v) => v.insert(KeyHistory::new(day, history_days)),
        };
        h.first_day = h.first_day.min(day);
        let n = match amount {
            Amount::Count(n) => n,
            Amount::Distinct(distinct) => {
                let set = match h.open.iter().position(|(d, _)| *d == day) {
                    Some(i) => &mut h.open[i].1,
                    None => {
                        h.open.push((day, FxHashSet::default()));
                        &mut h.open.last_mut().expect("just pushed").1
                    }
                };
                let mut new = 0;
                for v in distinct {
                    if set.insert(*v) {
                        values.retain(*v);
                        new += 1;
                    }
                }
                new
            }
        };
        h.add(day, n);
        Ok(h)
    }

    /// Frees what days before `wm_day` hold: the distinct values of days that can
    /// receive no more events, and every key idle for longer than the history (it would
    /// be forgotten at its next event anyway, since no later day is judged on less).
    pub(crate) fn sweep(&mut self, wm_day: i32, values: &mut Interner) {
        let history_days = i64::from(self.baseline.history_days);
        self.keys.retain(|_, h| {
            if i64::from(h.newest_day) < i64::from(wm_day) - history_days {
                h.release_all(values);
                return false;
            }
            h.close_before(wm_day, values);
            true
        });
    }

    pub(crate) fn release_all(&mut self, values: &mut Interner) {
        for h in self.keys.values_mut() {
            h.release_all(values);
        }
        self.keys.clear();
    }

    /// (daily values and keys, open days' distinct values) in bytes.
    pub(crate) fn heap_bytes(&self) -> (usize, usize) {
        let mut days = crate::cvmap::table_bytes(self.keys.capacity(), std::mem::size_of::<(Box<str>, KeyHistory)>());
        let mut open = 0;
        for (k, h) in &self.keys {
            let (d, o) = h.heap_bytes();
            days += d + k.len();
            open += o;
        }
        (days, open)
    }

    /// Every key's history as plain data, by key: (first day, newest day, non-zero
    /// days, open days' values), values named from `values`.
    pub(crate) fn snapshot(&self, values: &Interner) -> Vec<(String, HistorySnapshotParts)> {
        let mut out: Vec<(String, HistorySnapshotParts)> = self
            .keys
            .iter()
            .map(|(key, h)| {
                let span = h.days.len() as i32 - 1;
                let days = (h.newest_day - span..=h.newest_day)
                    .filter_map(|d| Some((d, h.value(d))).filter(|(_, v)| *v > 0))
                    .collect();
                let open = h
                    .open
                    .iter()
                    .map(|(d, set)| {
                        let mut names: Vec<String> = set.iter().map(|v| values.name(*v).to_string()).collect();
                        names.sort_unstable();
                        (*d, names)
                    })
                    .collect();
                (key.to_string(), (h.first_day, h.newest_day, days, open))
            })
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Rebuilds a key's history from its snapshot, interning (and retaining) its open
    /// days' values in `values`. Checks that the parts agree (days inside the ring and
    /// after the first day, open days' values adding up to no more than their day's value).
    pub(crate) fn restore_key(
        &mut self,
        key: &str,
        parts: &HistorySnapshotParts,
        distinct: bool,
        values: &mut Interner,
    ) -> Result<(), String> {
        let (first_day, newest_day, days, open) = parts;
        let mut h = KeyHistory::new(*newest_day, self.baseline.history_days);
        h.first_day = *first_day;
        if first_day > newest_day {
            return Err(format!("its first day {first_day} is after its newest {newest_day}"));
        }
        let span = self.baseline.history_days as i32;
        for &(d, v) in days {
            if d > *newest_day || d < newest_day - span || d < *first_day || v == 0 || v > u64::from(u32::MAX) {
                return Err(format!("day {d} with value {v} is out of place"));
            }
            let slot = h.slot(d);
            h.days[slot] = v as u32;
        }
        if !distinct && !open.is_empty() {
            return Err("it has distinct values under a rule that counts none".into());
        }
        for (d, names) in open {
            let mut set = FxHashSet::default();
            for n in names {
                let v = values.intern_retained(n);
                if !set.insert(v) {
                    values.release(v);
                    return Err(format!("day {d} holds {n:?} twice"));
                }
            }
            if set.len() as u64 > h.value(*d) {
                return Err(format!(
                    "day {d} holds {} distinct values but counted {}",
                    set.len(),
                    h.value(*d)
                ));
            }
            h.open.push((*d, set));
        }
        if self.keys.insert(key.into(), h).is_some() {
            return Err("the key appears twice".into());
        }
        Ok(())
    }

    /// The same histories under another length of history (a reload that changed it).
    pub(crate) fn resized(mut self, baseline: Baseline) -> HistoryTable {
        if baseline.history_days != self.baseline.history_days {
            let old_span = self.baseline.history_days as i32;
            for h in self.keys.values_mut() {
                let mut n = KeyHistory::new(h.newest_day, baseline.history_days);
                // Days the shorter ring let go of are unknown, not quiet: the history
                // starts at the oldest day still held.
                n.first_day = h.first_day.max(h.newest_day - old_span);
                let span = baseline.history_days as i32;
                for d in h.newest_day - span..=h.newest_day {
                    let slot = n.slot(d);
                    n.days[slot] = h.value(d) as u32;
                }
                n.open = std::mem::take(&mut h.open);
                *h = n;
            }
        }
        for h in self.keys.values_mut() {
            h.judged = None;
        }
        self.baseline = baseline;
        self
    }
}

/// (first day, newest day, non-zero (day, value)s, open (day, values)).
pub(crate) type HistorySnapshotParts = (i32, i32, Vec<(i32, u64)>, Vec<(i32, Vec<String>)>);

#[cfg(test)]
mod tests;
