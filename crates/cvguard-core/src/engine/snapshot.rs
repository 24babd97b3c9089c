//! Engine state as plain data, so a service can persist it and rebuild after a restart
//! without re-reading days of events. The encoding (file format, versioning) is the
//! adapter's; this is only the shape.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::{Engine, KeyState, KeyTable, Window};
use crate::event::Visibility;
use crate::recent::RecentSet;
use crate::rules::{KeyKind, RuleSet};
use crate::window::{CountWindow, CvAccess, DistinctWindow};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// `RuleSet::fingerprint` of the rules the state was built under.
    pub rules_fingerprint: u64,
    pub max_ts: Option<i64>,
    pub stats: StatsSnapshot,
    pub keys: Vec<KeySnapshot>,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySnapshot {
    pub kind: KeyKind,
    pub key: String,
    pub last_sec: i64,
    /// Per rule: the alert id (as a number) of the incident open while at or above.
    pub firing: Vec<Option<u64>>,
    pub windows: Vec<WindowSnapshot>,
    pub users: Vec<(String, i64)>,
    pub ips: Vec<(String, i64)>,
    pub user_agents: Vec<(String, i64)>,
    pub accounts: Vec<(String, i64)>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowSnapshot {
    Count(Vec<(i64, u64)>),
    /// (cv id, first second, last second, visibility, first action id)
    Distinct(Vec<(String, i64, i64, u8, u8)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot was taken under other rules (fingerprint {found:x}, expected {expected:x})")]
    OtherRules { found: u64, expected: u64 },
    #[error("the snapshot does not match its rules: {0}")]
    Inconsistent(String),
}

impl Engine {
    /// The whole state as plain data. Keys come out in a fixed order.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut keys = Vec::new();
        for kind in KeyKind::ALL {
            let table = &self.tables[kind.index()];
            let mut slots: Vec<&KeyState> = table.slots.iter().flatten().collect();
            slots.sort_by(|a, b| a.key.cmp(&b.key));
            for state in slots {
                keys.push(KeySnapshot {
                    kind,
                    key: state.key.to_string(),
                    last_sec: state.last_sec,
                    firing: state.firing.clone(),
                    windows: state
                        .windows
                        .iter()
                        .map(|w| match w {
                            Window::Count(c) => WindowSnapshot::Count(c.buckets().collect()),
                            Window::Distinct(d) => {
                                let mut v: Vec<_> = d
                                    .accesses()
                                    .map(|(cv, a)| {
                                        (
                                            self.interner.name(cv).to_string(),
                                            a.first_sec,
                                            a.last_sec,
                                            a.visibility as u8,
                                            a.first_action,
                                        )
                                    })
                                    .collect();
                                v.sort_unstable();
                                WindowSnapshot::Distinct(v)
                            }
                        })
                        .collect(),
                    users: state.users.entries(),
                    ips: state.ips.entries(),
                    user_agents: state.user_agents.entries(),
                    accounts: state.accounts.entries(),
                    truncated: state.users.truncated()
                        || state.ips.truncated()
                        || state.user_agents.truncated()
                        || state.accounts.truncated(),
                });
            }
        }
        let s = &self.stats;
        EngineSnapshot {
            rules_fingerprint: self.rules.fingerprint(),
            max_ts: self.max_ts,
            stats: StatsSnapshot {
                events: s.events,
                accepted: s.accepted,
                late: s.late,
                rejected: s.rejected.to_vec(),
                unmatched_action: s.unmatched_action,
                alerts: s.alerts,
                suspensions: s.suspensions,
            },
            keys,
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

        for k in &snap.keys {
            let rule_ids = rules.rules_of(k.kind);
            if k.windows.len() != rule_ids.len() || k.firing.len() != rule_ids.len() {
                return Err(SnapshotError::Inconsistent(format!(
                    "key {} has {} windows",
                    k.key,
                    k.windows.len()
                )));
            }
            let mut windows = Vec::with_capacity(k.windows.len());
            for w in &k.windows {
                windows.push(match w {
                    WindowSnapshot::Count(b) => Window::Count(CountWindow::from_buckets(b.iter().copied())),
                    WindowSnapshot::Distinct(entries) => {
                        let mut d = DistinctWindow::default();
                        for (name, first, last, vis, action) in entries {
                            let cv = engine.interner.intern(name);
                            engine.interner.retain(cv);
                            engine.cv_pairs += 1;
                            d.restore(
                                cv,
                                CvAccess {
                                    first_sec: *first,
                                    last_sec: *last,
                                    visibility: Visibility::from_u8(*vis),
                                    first_action: *action,
                                },
                            );
                        }
                        Window::Distinct(d)
                    }
                });
            }
            let hint = k.accounts.first().map(|(a, _)| a.as_str());
            let state = KeyState {
                key: k.key.as_str().into(),
                last_sec: k.last_sec,
                thresholds: rule_ids
                    .iter()
                    .map(|i| rules.effective_threshold(&rules.rules[*i], &k.key, hint))
                    .collect(),
                windows,
                firing: k.firing.clone(),
                users: RecentSet::from_entries(k.users.clone(), k.truncated),
                ips: RecentSet::from_entries(k.ips.clone(), k.truncated),
                user_agents: RecentSet::from_entries(k.user_agents.clone(), k.truncated),
                accounts: RecentSet::from_entries(k.accounts.clone(), k.truncated),
            };
            let table: &mut KeyTable = &mut engine.tables[k.kind.index()];
            let slot = table.slots.len() as u32;
            table.slots.push(Some(state));
            table.index.insert(k.key.as_str().into(), slot);
            table
                .expiry
                .push(Reverse((k.last_sec + rules.max_window_secs(k.kind), slot)));
        }
        Ok(engine)
    }
}
