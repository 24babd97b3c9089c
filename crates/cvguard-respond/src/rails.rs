//! The safety rails between a suspend decision and the call to the platform: the cooldown
//! after an unsuspend and the blast-radius limit. Pure (no store, no clock): the service's
//! [`Responder`](crate::Responder) asks the store for the facts and `cvguard backtest` keeps
//! them itself in event time, and both decide here, so "suspended" in a backtest means what
//! the service would have done.

use std::time::Duration;

use cvguard_core::{Alert, AlertAction, AlertReason};

pub const HOUR_MS: i64 = 3_600_000;

/// The rails' settings (`[suspend]`).
#[derive(Debug, Clone)]
pub struct Rails {
    /// Whether a suspend URL is configured; without one, decisions are recorded only (and,
    /// as no call is ever queued, the blast-radius limit, which counts queued calls, never
    /// trips).
    pub webhook: bool,
    pub max_per_hour: u32,
    pub cooldown: Duration,
}

/// What the rails make of a suspend decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Suspend these accounts (those of the decision not in their cooldown).
    Suspend(Vec<String>),
    /// Every account was unsuspended less than `cooldown` ago: alert only.
    Cooldown,
    /// `recent` suspensions were queued in the last hour and these would pass
    /// `max_per_hour`: alert only.
    Limited { recent: i64 },
}

impl Rails {
    /// Judges a suspend decision of `accounts` at `now` (ms): `last_unsuspend[i]` is when
    /// `accounts[i]` was last unsuspended, if ever; `recent` the suspend calls queued since
    /// `now - 1h`.
    pub fn judge(&self, accounts: &[String], last_unsuspend: &[Option<i64>], recent: i64, now: i64) -> Verdict {
        let cooldown = self.cooldown.as_millis() as i64;
        let kept: Vec<String> = accounts
            .iter()
            .zip(last_unsuspend)
            .filter(|(_, last)| !matches!(last, Some(t) if now - t < cooldown))
            .map(|(a, _)| a.clone())
            .collect();
        if kept.is_empty() {
            Verdict::Cooldown
        } else if recent + kept.len() as i64 > i64::from(self.max_per_hour) {
            Verdict::Limited { recent }
        } else {
            Verdict::Suspend(kept)
        }
    }
}

impl Verdict {
    /// Makes the alert say what was decided.
    pub fn apply(&self, alert: &mut Alert) {
        match self {
            Verdict::Suspend(kept) => alert.suspend_accounts = kept.clone(),
            Verdict::Cooldown | Verdict::Limited { .. } => {
                alert.action = AlertAction::Alert;
                alert.reason = match self {
                    Verdict::Cooldown => AlertReason::Cooldown,
                    _ => AlertReason::SuspensionLimit,
                };
                alert.suspend_accounts.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rails(max: u32) -> Rails {
        Rails {
            webhook: true,
            max_per_hour: max,
            cooldown: Duration::from_secs(3600),
        }
    }

    fn accounts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_account_unsuspended_within_the_cooldown_is_dropped_and_alone_it_is_a_cooldown() {
        let r = rails(10);
        let now = 10 * HOUR_MS;
        let a = accounts(&["a", "b"]);
        assert_eq!(
            r.judge(&a, &[Some(now - HOUR_MS + 1), None], 0, now),
            Verdict::Suspend(accounts(&["b"]))
        );
        assert_eq!(
            r.judge(&a, &[Some(now - HOUR_MS), None], 0, now),
            Verdict::Suspend(a.clone())
        );
        assert_eq!(r.judge(&a[..1], &[Some(now - 5)], 0, now), Verdict::Cooldown);
    }

    #[test]
    fn the_limit_counts_the_calls_of_the_last_hour_and_this_decisions_accounts() {
        let r = rails(3);
        let a = accounts(&["a", "b"]);
        assert_eq!(r.judge(&a, &[None, None], 1, 0), Verdict::Suspend(a.clone()));
        assert_eq!(r.judge(&a, &[None, None], 2, 0), Verdict::Limited { recent: 2 });
    }
}
