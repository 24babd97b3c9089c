//! What the incident store would hold, kept in memory and in event time, so a backtest
//! applies the service's rails ([`Rails::judge`]) to the same facts the service asks its
//! store for (`cvguard-store`): the suspend calls queued in the last hour, each account's
//! last unsuspension, the open incident of a (rule, key) that a new crossing joins, and
//! the accounts whose suspension is in force under an open incident (not queued again).

use std::collections::VecDeque;

use cvguard_core::{Alert, AlertAction};
use cvguard_respond::rails::{Rails, Verdict, HOUR_MS};
use rustc_hash::{FxHashMap, FxHashSet};

/// What became of one crossing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new incident (index into the ledger's incidents), with the suspend calls it
    /// queued and the accounts whose suspension was already in force.
    New {
        incident: usize,
        queued: Vec<String>,
        already_suspended: Vec<String>,
    },
    /// The (rule, key) had an open incident: the crossing joins it, nothing is queued.
    Joined { incident: usize },
}

/// (rule, key kind, key): what an incident is open for.
type IncidentKey = (String, &'static str, String);

pub struct Ledger {
    rails: Rails,
    /// Event times of queued suspend calls, oldest first (kept for two hours).
    queued: VecDeque<i64>,
    /// Unsuspensions to come, by time.
    unsuspends: Vec<(i64, String)>,
    next_unsuspend: usize,
    last_unsuspend: FxHashMap<String, i64>,
    open: FxHashMap<IncidentKey, usize>,
    /// Per incident: its (rule, kind, key) and the accounts it suspended.
    incidents: Vec<(IncidentKey, Vec<String>)>,
    in_force: FxHashMap<String, usize>,
    limit_hours: FxHashSet<i64>,
    /// `suspension-limit-reached` system alerts (one per clock hour, as the service).
    pub limit_alerts: u64,
}

impl Ledger {
    /// `unsuspends`: (account, time) of false positives undone, which close the incidents
    /// that suspended the account and start its cooldown.
    pub fn new(rails: Rails, unsuspends: &[(String, i64)]) -> Ledger {
        let mut un: Vec<(i64, String)> = unsuspends.iter().map(|(a, t)| (*t, a.clone())).collect();
        un.sort();
        Ledger {
            rails,
            queued: VecDeque::new(),
            unsuspends: un,
            next_unsuspend: 0,
            last_unsuspend: FxHashMap::default(),
            open: FxHashMap::default(),
            incidents: Vec::new(),
            in_force: FxHashMap::default(),
            limit_hours: FxHashSet::default(),
            limit_alerts: 0,
        }
    }

    pub fn rails(&self) -> &Rails {
        &self.rails
    }

    fn catch_up(&mut self, now: i64) {
        while let Some((t, account)) = self.unsuspends.get(self.next_unsuspend) {
            if *t > now {
                break;
            }
            self.last_unsuspend.insert(account.clone(), *t);
            if let Some(incident) = self.in_force.remove(account) {
                let key = self.incidents[incident].0.clone();
                if self.open.get(&key) == Some(&incident) {
                    self.open.remove(&key);
                }
            }
            self.next_unsuspend += 1;
        }
        while self.queued.front().is_some_and(|t| *t < now - 2 * HOUR_MS) {
            self.queued.pop_front();
        }
    }

    /// Decides a crossing as the service's responder and store would, at its event time:
    /// the rails on a suspend decision (which may turn it into an alert), then a new
    /// incident with its calls, or the open incident it joins.
    pub fn record(&mut self, alert: &mut Alert) -> Recorded {
        let now = alert.event_time_ms;
        self.catch_up(now);
        if alert.action == AlertAction::Suspend {
            let last: Vec<Option<i64>> = alert
                .suspend_accounts
                .iter()
                .map(|a| self.last_unsuspend.get(a).copied())
                .collect();
            let recent = self.queued.iter().filter(|t| **t >= now - HOUR_MS).count() as i64;
            let verdict = self.rails.judge(&alert.suspend_accounts, &last, recent, now);
            verdict.apply(alert);
            if matches!(verdict, Verdict::Limited { .. }) && self.limit_hours.insert(now.div_euclid(HOUR_MS)) {
                self.limit_alerts += 1;
            }
        }
        let key = (alert.rule.clone(), alert.key_kind.as_str(), alert.key.clone());
        if let Some(&incident) = self.open.get(&key) {
            return Recorded::Joined { incident };
        }
        let incident = self.incidents.len();
        let mut queued = Vec::new();
        let mut already_suspended = Vec::new();
        if alert.action == AlertAction::Suspend && self.rails.webhook {
            for account in &alert.suspend_accounts {
                if self.in_force.contains_key(account) {
                    already_suspended.push(account.clone());
                } else {
                    self.in_force.insert(account.clone(), incident);
                    self.queued.push_back(now);
                    queued.push(account.clone());
                }
            }
        }
        self.incidents.push((key.clone(), queued.clone()));
        self.open.insert(key, incident);
        Recorded::New {
            incident,
            queued,
            already_suspended,
        }
    }
}
