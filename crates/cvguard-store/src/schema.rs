//! The schema, per dialect. Migrations run at start-up, in order, once each; the applied
//! version is kept in `cvguard_schema`.

/// Which SQL dialect a URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Migration `i` (1-based) for a dialect. Only auto-increment keys differ.
pub fn migrations(d: Dialect) -> Vec<String> {
    let serial = match d {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    vec![
        format!(
            r#"
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    key_kind TEXT NOT NULL,
    key TEXT NOT NULL,
    accounts TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    suspended BIGINT NOT NULL DEFAULT 0,
    opened_at BIGINT NOT NULL,
    first_event_ms BIGINT NOT NULL,
    last_event_ms BIGINT NOT NULL,
    value_at_detection BIGINT NOT NULL,
    latest_value BIGINT NOT NULL,
    threshold BIGINT NOT NULL,
    evidence TEXT NOT NULL,
    alert TEXT NOT NULL,
    notify_authority_by BIGINT NOT NULL,
    cvs_named BIGINT NOT NULL DEFAULT 0,
    cvs_anonymous BIGINT NOT NULL DEFAULT 0,
    cvs_unknown BIGINT NOT NULL DEFAULT 0,
    published BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents (status, opened_at);
CREATE INDEX IF NOT EXISTS incidents_by_key ON incidents (key_kind, key);
CREATE INDEX IF NOT EXISTS incidents_by_rule ON incidents (rule, opened_at);
CREATE TABLE IF NOT EXISTS incident_cvs (
    incident_id TEXT NOT NULL,
    cv_id TEXT NOT NULL,
    first_access_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    visibility TEXT NOT NULL,
    PRIMARY KEY (incident_id, cv_id)
);
CREATE TABLE IF NOT EXISTS incident_actions (
    id {serial},
    incident_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_actions_by_incident ON incident_actions (incident_id, id);
CREATE TABLE IF NOT EXISTS incident_history (
    id {serial},
    incident_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    change TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_history_by_incident ON incident_history (incident_id, id);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial},
    incident_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    account_id TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (incident_id, kind, account_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS system_alerts (
    name TEXT NOT NULL,
    period BIGINT NOT NULL,
    PRIMARY KEY (name, period)
);
CREATE TABLE IF NOT EXISTS audit (
    id {serial},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#
        ),
        // 2: the store decides whether a crossing opens an incident. A (rule, key) with an open
        // incident keeps it, whatever restarted; the crossing's own alert id becomes an alias
        // of it, so the engine's later updates under that id reach the same incident.
        r#"
CREATE INDEX IF NOT EXISTS incidents_open_by_rule_key ON incidents (rule, key_kind, key, status);
CREATE TABLE IF NOT EXISTS incident_aliases (
    alert_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL
);
"#
        .to_string(),
        // 3: why an incident fired (which term set the threshold) and how fast it was seen.
        r#"
ALTER TABLE incidents ADD COLUMN threshold_source TEXT NOT NULL DEFAULT 'rule';
ALTER TABLE incidents ADD COLUMN time_to_detect_ms BIGINT NOT NULL DEFAULT 0
"#
        .to_string(),
        // 4: the console's live stream reads incidents by when they last changed.
        "CREATE INDEX IF NOT EXISTS incidents_by_change ON incidents (updated_at, id)".to_string(),
        // 5: the instances of a Kafka consumer group and where their APIs are, so any one of
        // them can answer for a key on another's partitions.
        r#"
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    api_url TEXT NOT NULL,
    partitions TEXT NOT NULL,
    seen_at BIGINT NOT NULL
)
"#
        .to_string(),
    ]
}
