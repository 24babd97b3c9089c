//! From decision to record: the safety rails (cooldown after an unsuspend, the
//! blast-radius limit), the incident with its outbox calls, and the exposed CVs. Called
//! synchronously by the engine workers, so offsets are committed only after the
//! incident is durable.

use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_core::{Alert, AlertAction, AlertReason, IncidentUpdate};
use cvguard_store::{Opened, OutboxItem, Store, StoreError};
use serde_json::json;
use tracing::warn;

use crate::sinks::SinkSet;
use crate::suspend::CallBody;

use crate::rails::{Rails, Verdict, HOUR_MS};

pub struct Responder {
    store: Store,
    rt: tokio::runtime::Handle,
    rails: Rails,
    sinks: SinkSet,
    /// Serialises suspend decisions so that counting recent suspensions and queueing a
    /// new one is atomic within this instance (across instances sharing PostgreSQL the
    /// limit may be overshot by the number of instances deciding in the same moment).
    deciding: tokio::sync::Mutex<()>,
}

impl Responder {
    pub fn new(store: Store, rt: tokio::runtime::Handle, rails: Rails, sinks: SinkSet) -> Responder {
        Responder {
            store,
            rt,
            rails,
            sinks,
            deciding: tokio::sync::Mutex::new(()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies the rails to a suspend decision (possibly turning it into an alert with
    /// reason `cooldown` or `suspension_limit`), then records the incident and its calls.
    /// Returns whether the alert still has to be published: true for a new incident, or
    /// one recorded before whose alert never reached the outputs.
    pub fn open(&self, alert: &mut Alert, now: i64) -> Result<bool, StoreError> {
        self.rt.block_on(self.open_async(alert, now))
    }

    async fn open_async(&self, alert: &mut Alert, now: i64) -> Result<bool, StoreError> {
        let _turn = if alert.action == AlertAction::Suspend {
            Some(self.deciding.lock().await)
        } else {
            None
        };
        let mut limited_note = None;
        if alert.action == AlertAction::Suspend {
            let mut last_unsuspend = Vec::with_capacity(alert.suspend_accounts.len());
            for account in &alert.suspend_accounts {
                last_unsuspend.push(self.store.last_unsuspend(account).await?);
            }
            let recent = self.store.suspensions_since(now - HOUR_MS).await?;
            let verdict = self.rails.judge(&alert.suspend_accounts, &last_unsuspend, recent, now);
            verdict.apply(alert);
            if let Verdict::Limited { recent } = verdict {
                limited_note = Some(recent);
                if self.store.raise_once("suspension-limit-reached", now / HOUR_MS).await? {
                    self.limit_alert(recent, now);
                }
            }
        }
        let calls: Vec<OutboxItem> = if alert.action == AlertAction::Suspend && self.rails.webhook {
            alert
                .suspend_accounts
                .iter()
                .map(|account| OutboxItem {
                    kind: "suspend",
                    account_id: account.clone(),
                    body: suspend_body(alert, account, now),
                })
                .collect()
        } else {
            Vec::new()
        };
        match self.store.open_incident(alert, now, &calls).await? {
            Opened::New => {
                let note = match (alert.action, alert.reason) {
                    (AlertAction::Suspend, _) if !self.rails.webhook => {
                        Some(("not_sent", "no [suspend] url configured".to_string()))
                    }
                    (_, AlertReason::DryRun) => Some(("dry_run", "would suspend".to_string())),
                    (_, AlertReason::Allowlisted) => Some(("allowlisted", "allowlisted: alert only".to_string())),
                    (_, AlertReason::Cooldown) => Some(("cooldown", "unsuspended recently: alert only".to_string())),
                    (_, AlertReason::SuspensionLimit) => Some((
                        "limited",
                        format!(
                            "{} suspensions in the last hour: alert only",
                            limited_note.unwrap_or_default()
                        ),
                    )),
                    _ => None,
                };
                if let Some((outcome, detail)) = note {
                    for account in &alert.accounts {
                        self.store
                            .record_action(&alert.alert_id, now, "suspend", account, outcome, &detail)
                            .await?;
                    }
                }
                Ok(true)
            }
            Opened::Existing { incident_id, published } => {
                // Should it go out again, the alert speaks for the incident the store kept.
                alert.alert_id = incident_id;
                Ok(!published)
            }
        }
    }

    /// Adds exposed CVs and latest values to open incidents.
    pub fn apply_updates(&self, updates: &[IncidentUpdate], now: i64) -> Result<(), StoreError> {
        self.rt.block_on(self.store.apply_updates(updates, now))
    }

    /// Marks incidents whose alerts the outputs acknowledged.
    pub fn mark_published(&self, ids: &[String]) -> Result<(), StoreError> {
        self.rt.block_on(self.store.mark_published(ids))
    }

    fn limit_alert(&self, recent: i64, now: i64) {
        warn!(
            message = "Suspension limit reached: further suspensions this hour become alerts.",
            recent,
            limit = self.rails.max_per_hour
        );
        let alert = json!({
            "alert_id": format!("suspension-limit-{}", now / HOUR_MS),
            "rule": "suspension-limit-reached",
            "severity": "critical",
            "key_kind": "system",
            "key": "suspend.max_per_hour",
            "value": recent,
            "threshold": self.rails.max_per_hour,
            "action": "alert",
            "reason": "suspension_limit",
            "event_time": format_rfc3339_ms(now),
        });
        self.sinks.publish(alert.to_string().as_bytes());
    }
}

/// The body of a suspend call for `account`.
pub fn suspend_body(alert: &Alert, account: &str, now: i64) -> String {
    let reason = format!(
        "{} reached {} distinct-window value {} >= {} ({})",
        alert.key, alert.rule, alert.value, alert.threshold, alert.window
    );
    serde_json::to_string(&CallBody {
        action: "suspend",
        incident_id: &alert.alert_id,
        account_id: account,
        rule: &alert.rule,
        value: alert.value,
        threshold: alert.threshold,
        reason: &reason,
        detected_at: &format_rfc3339_ms(now),
    })
    .unwrap_or_default()
}

/// The body of an unsuspend call after a false positive.
pub fn unsuspend_body(incident: &cvguard_store::Incident, account: &str, now: i64) -> String {
    serde_json::to_string(&CallBody {
        action: "unsuspend",
        incident_id: &incident.id,
        account_id: account,
        rule: &incident.rule,
        value: incident.value_at_detection as u64,
        threshold: incident.threshold as u64,
        reason: "false_positive",
        detected_at: &format_rfc3339_ms(now),
    })
    .unwrap_or_default()
}
