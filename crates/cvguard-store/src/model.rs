//! What the store returns and takes: incidents, their actions and history, exposed CVs,
//! outbox calls, filters.

use serde::Serialize;

/// Whether opening an incident created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    New,
    /// Opened before (a replay after a crash or a rebalance); `published` says whether its
    /// alert was acknowledged by the outputs then.
    Existing {
        /// The incident it belongs to: the alert's own id, or the open incident of its
        /// (rule, key) that the store kept.
        incident_id: String,
        published: bool,
    },
}

/// A call to make for an incident: suspend or unsuspend one account, with its body.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub kind: &'static str,
    pub account_id: String,
    pub body: String,
}

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub incident_id: String,
    pub kind: String,
    pub account_id: String,
    pub body: String,
    pub attempts: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VisibilityCounts {
    pub named: i64,
    pub anonymous: i64,
    pub unknown: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: String,
    pub rule: String,
    pub key_kind: String,
    pub key: String,
    pub accounts: Vec<String>,
    pub severity: String,
    pub status: String,
    /// What was decided: `suspend` or `alert`.
    pub action: String,
    pub reason: String,
    pub suspended: bool,
    pub opened_at: String,
    pub first_event_time: String,
    pub last_event_time: String,
    pub value_at_detection: i64,
    pub latest_value: i64,
    pub threshold: i64,
    /// Which term of the rule set `threshold`: `rule`, `segment`, `per_vacancy` or
    /// `baseline`.
    pub threshold_source: String,
    /// For a baseline rule: how the key's history judged it at the crossing (statistic,
    /// its value, the daily values), as in the alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<serde_json::Value>,
    /// Time to detect, in event time: from the first event in the rule's window to the
    /// crossing.
    pub time_to_detect_ms: i64,
    pub cvs_by_visibility: VisibilityCounts,
    pub notify_authority_by: String,
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub at: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRecord {
    pub at: String,
    pub actor: String,
    pub change: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    pub actions: Vec<ActionRecord>,
    pub history: Vec<HistoryRecord>,
}

/// One person to notify: a CV the incident's key touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposedCv {
    pub cv_id: String,
    pub first_access: String,
    pub action: String,
    pub visibility: String,
}

/// One instance of a consumer group, as it last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub instance_id: String,
    /// The base URL of its API.
    pub api_url: String,
    /// The partitions it held (`topic/partition`, comma-separated).
    pub partitions: String,
    /// Epoch ms.
    pub seen_at: i64,
}

/// Filters for listing incidents; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub status: Option<String>,
    pub rule: Option<String>,
    pub key: Option<String>,
    pub severity: Option<String>,
    /// `account_id`, `org_id`, `user_id` or `ip`.
    pub key_kind: Option<String>,
    /// Opened at or after (epoch ms).
    pub from_ms: Option<i64>,
    /// Opened before (epoch ms).
    pub to_ms: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// Writes the people to notify as CSV: a header, then one row per distinct CV. The one
/// format for the CLI export, the API's affected.csv and the demo.
///
/// Safe to open in a spreadsheet: CV ids and actions come from events, so a field that a
/// spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return) gets a leading `'` (OWASP's advice on CSV injection), and a field
/// holding a separator (`,` or the `;` some locales use), a quote or a line break is
/// quoted, quotes doubled.
pub fn write_exposed_csv(w: &mut impl std::io::Write, rows: &[ExposedCv]) -> std::io::Result<()> {
    writeln!(w, "cv_id,first_access,action,visibility")?;
    for r in rows {
        let fields = [&r.cv_id, &r.first_access, &r.action, &r.visibility].map(|f| csv_field(f));
        writeln!(w, "{}", fields.join(","))?;
    }
    Ok(())
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    let neutral: std::borrow::Cow<'_, str> = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    };
    if neutral.contains([',', ';', '"', '\n', '\r']) {
        format!("\"{}\"", neutral.replace('"', "\"\"")).into()
    } else {
        neutral
    }
}
