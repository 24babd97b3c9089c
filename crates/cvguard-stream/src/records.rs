//! What the service publishes besides the alert itself.

use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_core::Alert;
use serde::Serialize;

/// The GDPR deadline for telling the supervisory authority: 72 hours after detection.
pub const NOTIFY_AUTHORITY_WITHIN_MS: i64 = 72 * 3_600_000;

/// The state of an incident as published on the incidents topic (key = incident id).
#[derive(Debug, Clone, Serialize)]
pub struct IncidentRecord<'a> {
    pub incident_id: &'a str,
    pub status: &'static str,
    pub rule: &'a str,
    pub severity: &'static str,
    pub key_kind: &'static str,
    pub key: &'a str,
    pub accounts: &'a [String],
    pub action: &'static str,
    pub value_at_detection: u64,
    pub threshold: u64,
    /// Processing time of the decision.
    pub opened_at: String,
    pub first_event_time: &'a str,
    pub last_event_time: &'a str,
    pub notify_authority_by: String,
    pub alert: &'a Alert,
}

/// An incident opened by `alert`; its id is the alert id, so a replayed crossing maps to
/// the same incident.
pub fn incident_opened(alert: &Alert, opened_at_ms: i64) -> IncidentRecord<'_> {
    IncidentRecord {
        incident_id: &alert.alert_id,
        status: "open",
        rule: &alert.rule,
        severity: alert.severity.as_str(),
        key_kind: alert.key_kind.as_str(),
        key: &alert.key,
        accounts: &alert.accounts,
        action: alert.action.as_str(),
        value_at_detection: alert.value,
        threshold: alert.threshold,
        opened_at: format_rfc3339_ms(opened_at_ms),
        first_event_time: &alert.first_seen,
        last_event_time: &alert.event_time,
        notify_authority_by: format_rfc3339_ms(opened_at_ms + NOTIFY_AUTHORITY_WITHIN_MS),
        alert,
    }
}
