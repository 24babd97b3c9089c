//! Engine state as plain data, so a service can persist it and rebuild after a restart
//! without re-reading days of events. The encoding (file format, versioning) is the
//! adapter's; this is only the shape.

use serde::{Deserialize, Serialize};

use super::{Engine, KeyEvidence, KeyRef, KeyState};
use crate::distinct::{stamp, unstamp, CvEntry, GroupMismatch, GroupState, RuleProgress, CLASS_SLOTS};
use crate::event::Visibility;
use crate::recent::RecentSet;
use crate::rules::{DistinctField, KeyKind, RuleSet};
use crate::smallstr::SmallStr;
use crate::window::CountWindow;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// `RuleSet::fingerprint` of the rules the state was built under.
    pub rules_fingerprint: u64,
    pub max_ts: Option<i64>,
    /// What the watermark follows (see `Engine::watermark`); snapshots from before it had
    /// none and take `max_ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ts: Option<i64>,
    /// The event ids accepted within the dedupe window, with their event times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedupe: Vec<(String, i64)>,
    pub stats: StatsSnapshot,
    pub keys: Vec<KeySnapshot>,
    /// The histories of baseline rules' keys, by rule (in config order), then key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histories: Vec<HistorySnapshot>,
}

/// One key's history under one baseline rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySnapshot {
    pub rule: String,
    pub key: String,
    /// UTC day numbers (days since 1970-01-01).
    pub first_day: i32,
    pub newest_day: i32,
    /// The days with a value above 0, ascending.
    pub days: Vec<(i32, u64)>,
    /// Distinct measures: the values counted on days that can still receive events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<(i32, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub events: u64,
    pub accepted: u64,
    pub late: u64,
    pub rejected: Vec<u64>,
    pub unmatched_action: u64,
    pub alerts: u64,
    pub suspensions: u64,
    #[serde(default)]
    pub keys_refused: u64,
    #[serde(default)]
    pub duplicates: u64,
}

/// One CV of a key: (cv id, first second, latest second per action class, visibility,
/// first action id).
pub type CvSnapshot = (String, i64, [Option<i64>; CLASS_SLOTS], u8, u8);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySnapshot {
    pub kind: KeyKind,
    pub key: String,
    pub last_sec: i64,
    /// Per rule: the alert id (as a number) of the incident open while at or above.
    pub firing: Vec<Option<u64>>,
    /// Per `events`/`cvs` rule, in rule order: its (second, amount) buckets.
    pub counts: Vec<Vec<(i64, u64)>>,
    /// Per group of `distinct_cvs` rules: the CVs it holds, sorted by id.
    pub groups: Vec<Vec<CvSnapshot>>,
    pub users: Vec<(String, i64)>,
    pub ips: Vec<(String, i64)>,
    pub user_agents: Vec<(String, i64)>,
    pub accounts: Vec<(String, i64)>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot was taken under other rules (fingerprint {found:x}, expected {expected:x})")]
    OtherRules { found: u64, expected: u64 },
    #[error("the snapshot does not match its rules: {0}")]
    Inconsistent(String),
    /// The state restored from the snapshot does not agree with itself: a rule's count, a
    /// running sum, a cursor or a queue position differs from what the CVs and buckets it
    /// summarises give, or the snapshot holds what no engine could have written (a key or
    /// a CV twice, an access after the key's newest event). Such a snapshot is refused,
    /// never used: its counts would drift, or wrap below zero into false alerts (#13).
    #[error("the snapshot disagrees with itself at {at}: {detail}")]
    Mismatch {
        /// Where: `org_id key "acme"`, or `the engine`.
        at: String,
        /// What did not match.
        detail: String,
    },
}

impl SnapshotError {
    /// A fixed name for the kind of refusal, fit for a metric label: `other_rules`,
    /// `other_shape` or `mismatch`.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::OtherRules { .. } => "other_rules",
            SnapshotError::Inconsistent(_) => "other_shape",
            SnapshotError::Mismatch { .. } => "mismatch",
        }
    }
}

impl Engine {
    /// The whole state as plain data. Keys come out in a fixed order.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut keys = Vec::new();
        for kind in KeyKind::ALL {
            let table = &self.tables[kind.index()];
            let layout = &self.layouts[kind.index()];
            let mut slots: Vec<(u32, KeyRef<'_>)> = (0..table.slots.len() as u32)
                .filter_map(|s| Some((s, table.at(s)?)))
                .collect();
            slots.sort_by(|a, b| a.1.state.key.cmp(&b.1.state.key));
            for (slot, key) in slots {
                let state = key.state;
                let ev = &state.evidence;
                keys.push(KeySnapshot {
                    kind,
                    key: state.key.to_string(),
                    last_sec: state.last_sec,
                    firing: (0..key.thresholds.len())
                        .map(|w| table.firing.get(state.firing, slot, w))
                        .collect(),
                    counts: key.counts.iter().map(|c| c.buckets().collect()).collect(),
                    groups: key
                        .groups
                        .iter()
                        .zip(&layout.plan.fields)
                        .map(|(g, field)| {
                            // A group's handles are CV ids or account, user and ip names.
                            let names = match field {
                                DistinctField::Cvs => &self.interner,
                                _ => &self.names,
                            };
                            let mut v: Vec<CvSnapshot> = g
                                .entries()
                                .map(|(cv, e)| {
                                    (
                                        names.name(cv).to_string(),
                                        unstamp(e.first),
                                        e.last.map(|l| (l != 0).then(|| unstamp(l))),
                                        e.visibility as u8,
                                        e.first_action,
                                    )
                                })
                                .collect();
                            v.sort_unstable();
                            v
                        })
                        .collect(),
                    users: ev.users.entries(&self.names),
                    ips: ev.ips.entries(&self.names),
                    user_agents: ev.user_agents.entries(&self.names),
                    accounts: ev.accounts.entries(&self.names),
                    truncated: ev.truncated(),
                });
            }
        }
        let mut histories = Vec::new();
        for (rule, table) in self.rules.rules.iter().zip(&self.histories) {
            let Some(table) = table else { continue };
            let values = match rule.measure.distinct_field() {
                None | Some(DistinctField::Cvs) => &self.interner,
                Some(_) => &self.names,
            };
            for (key, (first_day, newest_day, days, open)) in table.snapshot(values) {
                histories.push(HistorySnapshot {
                    rule: rule.name.clone(),
                    key,
                    first_day,
                    newest_day,
                    days,
                    open,
                });
            }
        }
        let s = &self.stats;
        EngineSnapshot {
            rules_fingerprint: self.rules.fingerprint(),
            max_ts: self.max_ts,
            watermark_ts: self.watermark_ts,
            dedupe: self.dedupe.entries(),
            stats: StatsSnapshot {
                events: s.events,
                accepted: s.accepted,
                late: s.late,
                rejected: s.rejected.to_vec(),
                unmatched_action: s.unmatched_action,
                alerts: s.alerts,
                suspensions: s.suspensions,
                keys_refused: s.keys_refused,
                duplicates: s.duplicates,
            },
            keys,
            histories,
        }
    }

    /// An engine with the state of `snap`, under `rules`, which must be the rules it was
    /// taken under (profiles may differ: effective thresholds are computed afresh).
    pub fn restore(rules: std::sync::Arc<RuleSet>, snap: &EngineSnapshot) -> Result<Engine, SnapshotError> {
        if snap.rules_fingerprint != rules.fingerprint() {
            return Err(SnapshotError::OtherRules {
                found: snap.rules_fingerprint,
                expected: rules.fingerprint(),
            });
        }
        let mut engine = Engine::new(rules.clone());
        engine.max_ts = snap.max_ts;
        engine.watermark_ts = snap.watermark_ts.or(snap.max_ts);
        for (id, at) in &snap.dedupe {
            engine.dedupe.accept_entry(id, *at);
        }
        let now = snap.max_ts.unwrap_or(0).div_euclid(1000);
        let st = &snap.stats;
        engine.stats.events = st.events;
        engine.stats.accepted = st.accepted;
        engine.stats.late = st.late;
        for (slot, n) in engine.stats.rejected.iter_mut().zip(&st.rejected) {
            *slot = *n;
        }
        engine.stats.unmatched_action = st.unmatched_action;
        engine.stats.alerts = st.alerts;
        engine.stats.suspensions = st.suspensions;
        engine.stats.keys_refused = st.keys_refused;
        engine.stats.duplicates = st.duplicates;

        for k in &snap.keys {
            let rule_ids = rules.rules_of(k.kind);
            let layout = &engine.layouts[k.kind.index()];
            if k.firing.len() != rule_ids.len()
                || k.counts.len() != layout.counts
                || k.groups.len() != layout.plan.groups.len()
            {
                return Err(SnapshotError::Inconsistent(format!(
                    "key {} has {} rules, {} count windows and {} groups",
                    k.key,
                    k.firing.len(),
                    k.counts.len(),
                    k.groups.len()
                )));
            }
            if engine.tables[k.kind.index()].find(&k.key).is_some() {
                return Err(mismatch(k.kind, &k.key, "the key appears twice".into()));
            }
            check_key_snapshot(k, now).map_err(|detail| mismatch(k.kind, &k.key, detail))?;
            let mut groups = Vec::with_capacity(k.groups.len());
            for ((plan, entries), field) in layout.plan.groups.iter().zip(&k.groups).zip(&layout.plan.fields) {
                let mut cvs = Vec::with_capacity(entries.len());
                for (name, first, last, vis, action) in entries {
                    let cv = if *field == DistinctField::Cvs {
                        engine.cv_pairs += 1;
                        engine.interner.intern_retained(name)
                    } else {
                        engine.names.intern_retained(name)
                    };
                    let entry = CvEntry {
                        first: stamp(*first),
                        last: last.map(|l| l.map_or(0, stamp)),
                        first_action: *action,
                        visibility: Visibility::from_u8(*vis),
                    };
                    cvs.push((cv, entry));
                }
                groups.push(GroupState::rebuild(plan, cvs, now));
            }
            let hint = k.accounts.first().map(|(a, _)| a.as_str());
            let names = &mut engine.names;
            let table = &mut engine.tables[k.kind.index()];
            let thresholds = table.thresholds.handle(
                rule_ids
                    .iter()
                    .map(|i| rules.effective_threshold(&rules.rules[*i], &k.key, hint)),
            );
            let state = KeyState {
                key: SmallStr::new(&k.key),
                last_sec: k.last_sec,
                thresholds,
                firing: 0,
                evidence: KeyEvidence {
                    users: RecentSet::from_entries(&k.users, k.truncated, names),
                    ips: RecentSet::from_entries(&k.ips, k.truncated, names),
                    user_agents: RecentSet::from_entries(&k.user_agents, k.truncated, names),
                    accounts: RecentSet::from_entries(&k.accounts, k.truncated, names),
                },
            };
            let (group_states, progress): (Vec<GroupState>, Vec<Vec<RuleProgress>>) = groups.into_iter().unzip();
            let progress = progress.into_iter().flatten();
            let slot = table.insert(
                state,
                k.counts.iter().map(|b| CountWindow::from_buckets(b.iter().copied())),
                group_states,
                progress,
                k.last_sec + rules.max_window_secs(k.kind),
            );
            let state = table.slots[slot as usize].as_mut().expect("just inserted");
            for (w, id) in k.firing.iter().enumerate() {
                table.firing.set(&mut state.firing, slot, w, *id);
            }
        }
        for h in &snap.histories {
            let found = rules.rules.iter().position(|r| r.name == h.rule);
            let (Some(ri), true) = (found, found.is_some_and(|ri| engine.histories[ri].is_some())) else {
                return Err(SnapshotError::Inconsistent(format!(
                    "history of {} under {}, which is not a baseline rule",
                    h.key, h.rule
                )));
            };
            let rule = &rules.rules[ri];
            if h.newest_day > super::day_of(snap.max_ts.unwrap_or(0)) {
                return Err(mismatch(
                    rule.group_by,
                    &h.key,
                    format!("rule {}: history after the snapshot", h.rule),
                ));
            }
            let distinct = rule.measure.distinct_field().is_some();
            let values = super::values_of(rule, &mut engine.interner, &mut engine.names);
            let table = engine.histories[ri].as_mut().expect("checked above");
            let parts = (h.first_day, h.newest_day, h.days.clone(), h.open.clone());
            table
                .restore_key(&h.key, &parts, distinct, values)
                .map_err(|detail| mismatch(rule.group_by, &h.key, format!("rule {}: {detail}", h.rule)))?;
        }
        if let Some(wm) = engine.watermark() {
            engine.history_swept_day = super::day_of(wm);
        }
        engine.check_state()?;
        Ok(engine)
    }

    /// Checks every key's counters against the state they summarise: each `distinct_cvs`
    /// rule's count, cursors and queue positions against its group's queues and CV table
    /// (`GroupState::check`), each count window's running sum against its buckets, and
    /// the live (key, CV) pairs against the tables. Holds at any time between two events;
    /// `restore` refuses a snapshot whose state fails it. Walks the whole state.
    pub(crate) fn check_state(&self) -> Result<(), SnapshotError> {
        let mut pairs = 0u64;
        for kind in KeyKind::ALL {
            let table = &self.tables[kind.index()];
            let layout = &self.layouts[kind.index()];
            let rule_ids = self.rules.rules_of(kind);
            for slot in 0..table.slots.len() as u32 {
                let Some(key) = table.at(slot) else { continue };
                let fail = |detail: String| mismatch(kind, &key.state.key, detail);
                for (g, (plan, group)) in layout.plan.groups.iter().zip(key.groups).enumerate() {
                    if layout.plan.fields[g] == DistinctField::Cvs {
                        pairs += group.len() as u64;
                    }
                    let progress = &key.progress[layout.progress_range(g)];
                    group.check(plan, progress).map_err(|GroupMismatch { rule, detail }| {
                        fail(match rule {
                            Some(r) => {
                                let name = &self.rules.rules[rule_ids[plan.rules[r].slot]].name;
                                format!("rule {name}: {detail}")
                            }
                            None => format!("distinct group {g}: {detail}"),
                        })
                    })?;
                }
                for (w, &ri) in rule_ids.iter().enumerate() {
                    if layout.plan.place[w].is_none() {
                        let name = &self.rules.rules[ri].name;
                        key.counts[layout.count_place[w]]
                            .check()
                            .map_err(|detail| fail(format!("rule {name}: {detail}")))?;
                    }
                }
            }
        }
        if pairs != self.cv_pairs {
            return Err(SnapshotError::Mismatch {
                at: "the engine".into(),
                detail: format!(
                    "{} live (key, CV) pairs counted, the tables hold {pairs}",
                    self.cv_pairs
                ),
            });
        }
        Ok(())
    }
}

fn mismatch(kind: KeyKind, key: &str, detail: String) -> SnapshotError {
    SnapshotError::Mismatch {
        at: format!("{} key {key:?}", kind.as_str()),
        detail,
    }
}

/// What a key's snapshot must be for its state to be rebuilt faithfully, as of the
/// snapshot's newest second `now`: every second one a `Stamp` can hold and none after
/// the key's newest event (nor that after `now`), count buckets ascending and not empty,
/// each CV once per group with at least one access.
fn check_key_snapshot(k: &KeySnapshot, now: i64) -> Result<(), String> {
    if k.last_sec > now {
        return Err(format!(
            "its newest event (second {}) is after the snapshot's ({now})",
            k.last_sec
        ));
    }
    let in_range = |sec: i64| (0..=k.last_sec).contains(&sec) && unstamp(stamp(sec)) == sec;
    for (w, buckets) in k.counts.iter().enumerate() {
        let mut previous = None;
        for &(sec, n) in buckets {
            if !in_range(sec) || n == 0 || previous.is_some_and(|p| p >= sec) {
                return Err(format!("count window {w} has a bucket ({sec}, {n}) out of place"));
            }
            previous = Some(sec);
        }
    }
    for (g, entries) in k.groups.iter().enumerate() {
        let mut names = rustc_hash::FxHashSet::default();
        for (name, first, last, _, _) in entries {
            if !names.insert(name.as_str()) {
                return Err(format!("distinct group {g} holds CV {name} twice"));
            }
            if last.iter().all(Option::is_none) {
                return Err(format!("distinct group {g} holds CV {name} with no access"));
            }
            if !in_range(*first) || last.iter().flatten().any(|s| !in_range(*s)) {
                return Err(format!(
                    "distinct group {g} has CV {name} accessed at seconds {first}, {last:?}, outside 0..={}",
                    k.last_sec
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod props;
