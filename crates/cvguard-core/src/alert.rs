//! Alert contract (docs/ALERTS.md): what the engine decides, one JSON object per line.

use serde::Serialize;

use crate::baseline::Statistic;
use crate::rules::{KeyKind, Measure, Severity};

/// What cvguard does about a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    Alert,
    Suspend,
}

impl AlertAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertAction::Alert => "alert",
            AlertAction::Suspend => "suspend",
        }
    }
}

/// Why the action is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertReason {
    /// The rule's `response` decided.
    RuleResponse,
    /// The rule says suspend, but every account involved is allowlisted.
    Allowlisted,
    /// The rule says suspend, but dry run is on (globally or for the rule).
    DryRun,
    /// The service's blast-radius limit (`suspend.max_per_hour`) was reached.
    SuspensionLimit,
    /// The account was unsuspended (a false positive) less than `suspend.cooldown` ago.
    Cooldown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable for the same crossing: a hash of rule, key, event time and event id.
    pub alert_id: String,
    pub rule: String,
    pub severity: Severity,
    pub key_kind: KeyKind,
    pub key: String,
    pub measure: Measure,
    /// As configured, e.g. `"24h"`.
    pub window: String,
    pub value: u64,
    /// The effective threshold for this key.
    pub threshold: u64,
    /// Which term of the rule set `threshold`.
    pub threshold_source: crate::ThresholdSource,
    /// A baseline rule's judgement of the key: the statistic, its value and the daily
    /// values it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineExplain>,
    pub action: AlertAction,
    pub reason: AlertReason,
    /// RFC 3339 time of the event that crossed the threshold.
    pub event_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Earliest event still inside the rule's window.
    pub first_seen: String,
    /// Time to detect, in event time: from `first_seen` to the crossing event.
    pub time_to_detect_ms: i64,
    /// Accounts involved: the account itself, or those seen under an org, user or ip key.
    pub accounts: Vec<String>,
    /// With `action = suspend`: the accounts to suspend (involved, not allowlisted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suspend_accounts: Vec<String>,
    pub evidence: Evidence,
    /// Event time of the crossing in epoch milliseconds (not serialized: `event_time` is).
    #[serde(skip)]
    pub event_time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Every window this key has, in config order.
    pub windows: Vec<WindowValue>,
    /// Distinct CVs in the crossing rule's window (or the key's longest distinct window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_cvs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cvs_by_visibility: Option<VisibilityCounts>,
    pub distinct_users: u64,
    pub distinct_ips: u64,
    pub distinct_user_agents: u64,
    pub users: Vec<String>,
    pub ips: Vec<String>,
    pub user_agents: Vec<String>,
    /// True when a set above hit its cap, so the counts are lower bounds.
    pub sets_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowValue {
    pub rule: String,
    pub measure: Measure,
    pub window: String,
    pub value: u64,
    /// The effective threshold. For a baseline rule not yet judging the key, its floor
    /// (the rule is silent for the key all the same: see `baseline.judged`).
    pub threshold: u64,
    pub threshold_source: crate::ThresholdSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineExplain>,
}

/// How a baseline rule judges its key on the day of the reading (docs/DETECTION.md):
/// enough to work out the effective threshold by hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineExplain {
    pub statistic: Statistic,
    /// The statistic of `daily_values`; absent while the key is not judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic_value: Option<f64>,
    pub factor: f64,
    /// `factor x statistic_value`, rounded up; absent while the key is not judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_threshold: Option<u64>,
    /// The rule's `threshold` with segments and `per_vacancy` applied: the threshold
    /// never goes below it.
    pub floor: u64,
    /// False while the key's first day is less than `min_history_days` ago: the rule
    /// does not fire for it.
    pub judged: bool,
    pub min_history_days: u32,
    /// The UTC day of the first event the rule counted for the key; absent when it has
    /// no history (none counted yet, or none kept: see `max_tracked_keys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_day: Option<String>,
    /// The UTC day of the first of `daily_values`; absent with `first_day`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_from: Option<String>,
    /// The key's value on each whole UTC day of its history, oldest first.
    pub daily_values: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct VisibilityCounts {
    pub named: u64,
    pub anonymous: u64,
    pub unknown: u64,
}

/// FNV-1a, 64 bit: small, fixed, and the same on every platform and release, which an
/// id that must be stable across runs and versions needs.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl KeyKind {
    /// The key kinds are part of the alert id so an org and an account of the same
    /// name never share one.
    pub(crate) fn id_byte(self) -> u8 {
        self as u8
    }
}
