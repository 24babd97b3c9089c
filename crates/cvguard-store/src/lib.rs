//! cvguard-store: incidents, the CVs each one exposed, what was done about them and by
//! whom, and the outbox of suspend calls. SQLite by default (`sqlite://data/cvguard.db`),
//! PostgreSQL for several instances (`postgres://...`), chosen by the URL's scheme.
//!
//! Times are epoch milliseconds in BIGINT columns and JSON is TEXT, so one set of
//! queries serves both databases.

mod model;
mod outbox;
mod schema;

use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_core::{Alert, Exposure, IncidentUpdate, Visibility};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use model::*;
pub use schema::Dialect;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{0}`: expected sqlite://PATH or postgres://...")]
    BadUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("no incident {0}")]
    NotFound(String),
    #[error("incident {id} is {from}; it cannot become {to}")]
    BadTransition { id: String, from: String, to: String },
}

/// The incident store behind one interface; the SQL implementation serves both
/// databases.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

/// Incident status: open -> acknowledged -> resolved | false_positive.
pub const STATUSES: [&str; 4] = ["open", "acknowledged", "resolved", "false_positive"];

fn transition_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("open", "acknowledged")
            | ("open", "resolved")
            | ("open", "false_positive")
            | ("acknowledged", "resolved")
            | ("acknowledged", "false_positive")
    )
}

const INCIDENT_COLUMNS: &str = "id, rule, key_kind, key, accounts, severity, status, action, reason, suspended, \
     opened_at, first_event_ms, last_event_ms, value_at_detection, latest_value, threshold, evidence, \
     notify_authority_by, cvs_named, cvs_anonymous, cvs_unknown";

/// Rows per multi-row INSERT of exposed CVs (5 parameters each, well under both limits).
const CV_CHUNK: usize = 400;

impl Store {
    /// Connects and migrates. `sqlite://PATH` creates the file (and its folder).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(file)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
            let url = if path.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        // SQLite has one writer: one connection per process serialises writes here instead
        // of failing a read-then-write transaction with "database is locked".
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { 8 })
            .connect(&url)
            .await?;
        let store = Store { pool, dialect };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS cvguard_schema (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM cvguard_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get::<Option<i64>, _>("v")?;
        let current = current.unwrap_or(0);
        for (i, sql) in schema::migrations(self.dialect).iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO cvguard_schema (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Records an incident for `alert` with the calls to make, in one transaction. A
    /// second call for the same alert id changes nothing and says so.
    pub async fn open_incident(
        &self,
        alert: &Alert,
        opened_at: i64,
        calls: &[OutboxItem],
    ) -> Result<Opened, StoreError> {
        let mut tx = self.pool.begin().await?;
        let evidence = serde_json::to_string(&alert.evidence).unwrap_or_default();
        let alert_json = serde_json::to_string(alert).unwrap_or_default();
        let first_ms = cvguard_core::timefmt::parse_rfc3339_ms(&alert.first_seen).unwrap_or(alert.event_time_ms);
        let inserted = sqlx::query(
            "INSERT INTO incidents (id, rule, key_kind, key, accounts, severity, status, action, reason, suspended, \
             opened_at, first_event_ms, last_event_ms, value_at_detection, latest_value, threshold, evidence, alert, \
             notify_authority_by, published, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, 0, $9, $10, $11, $12, $13, $14, $15, $16, $17, 0, $18) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&alert.alert_id)
        .bind(&alert.rule)
        .bind(alert.key_kind.as_str())
        .bind(&alert.key)
        .bind(serde_json::to_string(&alert.accounts).unwrap_or_default())
        .bind(alert.severity.as_str())
        .bind(alert.action.as_str())
        .bind(reason_str(alert))
        .bind(opened_at)
        .bind(first_ms)
        .bind(alert.event_time_ms)
        .bind(alert.value as i64)
        .bind(alert.value as i64)
        .bind(alert.threshold as i64)
        .bind(evidence)
        .bind(alert_json)
        .bind(opened_at + 72 * 3_600_000)
        .bind(opened_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let published: i64 = sqlx::query("SELECT published FROM incidents WHERE id = $1")
                .bind(&alert.alert_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("published")?;
            tx.rollback().await?;
            return Ok(Opened::Existing {
                published: published != 0,
            });
        }
        history(
            &mut tx,
            &alert.alert_id,
            opened_at,
            "cvguard",
            "opened",
            &format!(
                "{} {} reached {} (threshold {}); decided {} ({})",
                alert.key_kind.as_str(),
                alert.key,
                alert.value,
                alert.threshold,
                alert.action.as_str(),
                reason_str(alert)
            ),
        )
        .await?;
        for call in calls {
            sqlx::query(
                "INSERT INTO outbox (incident_id, kind, account_id, body, status, attempts, next_attempt_at, lease_until, \
                 last_error, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, '', $6, $7) \
                 ON CONFLICT (incident_id, kind, account_id) DO NOTHING",
            )
            .bind(&alert.alert_id)
            .bind(call.kind)
            .bind(&call.account_id)
            .bind(&call.body)
            .bind(opened_at)
            .bind(opened_at)
            .bind(opened_at)
            .execute(&mut *tx)
            .await?;
            action(
                &mut tx,
                &alert.alert_id,
                opened_at,
                call.kind,
                &call.account_id,
                "pending",
                "queued in the outbox",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Opened::New)
    }

    /// Records an action that needs no call (dry run, limit, cooldown, allowlist).
    pub async fn record_action(
        &self,
        incident_id: &str,
        at: i64,
        what: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        action(&mut tx, incident_id, at, what, target, outcome, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks incidents whose alerts the outputs acknowledged.
    pub async fn mark_published(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("UPDATE incidents SET published = 1 WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Adds exposed CVs and the latest value to open incidents. A CV already recorded
    /// keeps its first access; its visibility only becomes more revealing.
    pub async fn apply_updates(&self, updates: &[IncidentUpdate], now: i64) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let mut touched: Vec<&str> = Vec::new();
        for u in updates {
            for chunk in u.cvs.chunks(CV_CHUNK) {
                insert_cvs(&mut tx, &u.incident_id, chunk).await?;
            }
            sqlx::query(
                "UPDATE incidents SET latest_value = $1, \
                 last_event_ms = CASE WHEN last_event_ms < $2 THEN $3 ELSE last_event_ms END, updated_at = $4 WHERE id = $5",
            )
            .bind(u.value as i64)
            .bind(u.event_time_ms)
            .bind(u.event_time_ms)
            .bind(now)
            .bind(&u.incident_id)
            .execute(&mut *tx)
            .await?;
            if !touched.contains(&u.incident_id.as_str()) {
                touched.push(&u.incident_id);
            }
        }
        for id in touched {
            let rows = sqlx::query(
                "SELECT visibility, COUNT(*) AS n FROM incident_cvs WHERE incident_id = $1 GROUP BY visibility",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let mut c = VisibilityCounts::default();
            for r in rows {
                let n: i64 = r.try_get("n")?;
                match r.try_get::<String, _>("visibility")?.as_str() {
                    "named" => c.named = n,
                    "anonymous" => c.anonymous = n,
                    _ => c.unknown = n,
                }
            }
            sqlx::query("UPDATE incidents SET cvs_named = $1, cvs_anonymous = $2, cvs_unknown = $3 WHERE id = $4")
                .bind(c.named)
                .bind(c.anonymous)
                .bind(c.unknown)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list(&self, f: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let mut sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.status.is_some() {
            sql += &format!(" AND status = {}", next());
        }
        if f.rule.is_some() {
            sql += &format!(" AND rule = {}", next());
        }
        if f.key.is_some() {
            sql += &format!(" AND key = {}", next());
        }
        if f.from_ms.is_some() {
            sql += &format!(" AND opened_at >= {}", next());
        }
        if f.to_ms.is_some() {
            sql += &format!(" AND opened_at < {}", next());
        }
        sql += &format!(" ORDER BY opened_at DESC, id LIMIT {} OFFSET {}", next(), next());
        let mut q = sqlx::query(&sql);
        for s in [&f.status, &f.rule, &f.key].into_iter().flatten() {
            q = q.bind(s.clone());
        }
        for t in [f.from_ms, f.to_ms].into_iter().flatten() {
            q = q.bind(t);
        }
        let limit = if f.limit <= 0 { 100 } else { f.limit.min(1000) };
        let rows = q.bind(limit).bind(f.offset.max(0)).fetch_all(&self.pool).await?;
        rows.iter().map(incident_from_row).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<IncidentDetail>, StoreError> {
        let row = sqlx::query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let incident = incident_from_row(&row)?;
        let actions = sqlx::query(
            "SELECT at, action, target, outcome, detail FROM incident_actions WHERE incident_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ActionRecord {
                at: format_rfc3339_ms(r.try_get("at")?),
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                outcome: r.try_get("outcome")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let history =
            sqlx::query("SELECT at, actor, change, note FROM incident_history WHERE incident_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(HistoryRecord {
                        at: format_rfc3339_ms(r.try_get("at")?),
                        actor: r.try_get("actor")?,
                        change: r.try_get("change")?,
                        note: r.try_get("note")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(IncidentDetail {
            incident,
            actions,
            history,
        }))
    }

    /// Incidents changed at or after `since` (epoch ms), oldest change first, with the
    /// time of each change: a feed for publishing their latest state.
    pub async fn changed_since(&self, since: i64, limit: i64) -> Result<Vec<(i64, Incident)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS}, updated_at FROM incidents WHERE updated_at >= $1 ORDER BY updated_at, id LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("updated_at")?, incident_from_row(r)?)))
            .collect()
    }

    /// Every CV the incident exposed, one row per distinct CV, by first access.
    pub async fn exposed_cvs(&self, id: &str) -> Result<Vec<ExposedCv>, StoreError> {
        let rows = sqlx::query(
            "SELECT cv_id, first_access_ms, action, visibility FROM incident_cvs WHERE incident_id = $1 \
             ORDER BY first_access_ms, cv_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExposedCv {
                    cv_id: r.try_get("cv_id")?,
                    first_access: format_rfc3339_ms(r.try_get("first_access_ms")?),
                    action: r.try_get("action")?,
                    visibility: r.try_get("visibility")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Moves an incident along its lifecycle, recording who and why. Marking a
    /// suspended incident `false_positive` cancels suspend calls not yet made and queues
    /// an unsuspend call (built by `unsuspend_body`) for each account already suspended.
    pub async fn set_status(
        &self,
        id: &str,
        to: &str,
        actor: &str,
        note: &str,
        now: i64,
        unsuspend_body: &(dyn Fn(&Incident, &str) -> String + Sync),
    ) -> Result<Incident, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let incident = incident_from_row(&row)?;
        if !transition_allowed(&incident.status, to) {
            return Err(StoreError::BadTransition {
                id: id.into(),
                from: incident.status,
                to: to.into(),
            });
        }
        sqlx::query("UPDATE incidents SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(to)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        history(
            &mut tx,
            id,
            now,
            actor,
            &format!("status {} -> {to}", incident.status),
            note,
        )
        .await?;
        if to == "false_positive" {
            sqlx::query(
                "UPDATE outbox SET status = 'cancelled', updated_at = $1 WHERE incident_id = $2 AND kind = 'suspend' \
                 AND status IN ('pending', 'sending')",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let suspended: Vec<String> = sqlx::query(
                "SELECT account_id FROM outbox WHERE incident_id = $1 AND kind = 'suspend' AND status = 'delivered' ORDER BY account_id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("account_id"))
            .collect::<Result<_, _>>()?;
            for account in suspended {
                sqlx::query(
                    "INSERT INTO outbox (incident_id, kind, account_id, body, status, attempts, next_attempt_at, lease_until, \
                     last_error, created_at, updated_at) VALUES ($1, 'unsuspend', $2, $3, 'pending', 0, $4, 0, '', $5, $6) \
                     ON CONFLICT (incident_id, kind, account_id) DO NOTHING",
                )
                .bind(id)
                .bind(&account)
                .bind(unsuspend_body(&incident, &account))
                .bind(now)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                action(
                    &mut tx,
                    id,
                    now,
                    "unsuspend",
                    &account,
                    "pending",
                    "false positive; queued in the outbox",
                )
                .await?;
            }
        }
        tx.commit().await?;
        let detail = self.get(id).await?.ok_or_else(|| StoreError::NotFound(id.into()))?;
        Ok(detail.incident)
    }

    /// Records who changed what through the API.
    pub async fn audit(&self, at: i64, actor: &str, what: &str, target: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(at)
            .bind(actor)
            .bind(what)
            .bind(target)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The audit trail, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<(String, String, String, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    format_rfc3339_ms(r.try_get("at")?),
                    r.try_get("actor")?,
                    r.try_get("action")?,
                    r.try_get("target")?,
                    r.try_get("detail")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Whether the database answers (for /readyz).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1 AS one").fetch_one(&self.pool).await.is_ok()
    }
}

fn reason_str(alert: &Alert) -> &'static str {
    use cvguard_core::AlertReason::*;
    match alert.reason {
        RuleResponse => "rule_response",
        Allowlisted => "allowlisted",
        DryRun => "dry_run",
        SuspensionLimit => "suspension_limit",
        Cooldown => "cooldown",
    }
}

fn visibility_str(v: Visibility) -> &'static str {
    v.as_str()
}

async fn insert_cvs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    incident_id: &str,
    cvs: &[Exposure],
) -> Result<(), StoreError> {
    let mut sql =
        String::from("INSERT INTO incident_cvs (incident_id, cv_id, first_access_ms, action, visibility) VALUES ");
    for i in 0..cvs.len() {
        let b = i * 5;
        if i > 0 {
            sql.push(',');
        }
        sql += &format!("(${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5);
    }
    sql += " ON CONFLICT (incident_id, cv_id) DO UPDATE SET \
        action = CASE WHEN excluded.first_access_ms < incident_cvs.first_access_ms THEN excluded.action ELSE incident_cvs.action END, \
        first_access_ms = CASE WHEN excluded.first_access_ms < incident_cvs.first_access_ms THEN excluded.first_access_ms ELSE incident_cvs.first_access_ms END, \
        visibility = CASE WHEN excluded.visibility = 'named' OR incident_cvs.visibility = 'named' THEN 'named' \
            WHEN excluded.visibility = 'anonymous' OR incident_cvs.visibility = 'anonymous' THEN 'anonymous' ELSE 'unknown' END";
    let mut q = sqlx::query(&sql);
    for cv in cvs {
        q = q
            .bind(incident_id.to_string())
            .bind(cv.cv_id.clone())
            .bind(cv.first_access_ms)
            .bind(cv.action.clone())
            .bind(visibility_str(cv.visibility));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn history(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    at: i64,
    actor: &str,
    change: &str,
    note: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO incident_history (incident_id, at, actor, change, note) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(at)
        .bind(actor)
        .bind(change)
        .bind(note)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn action(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    at: i64,
    what: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO incident_actions (incident_id, at, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(at)
        .bind(what)
        .bind(target)
        .bind(outcome)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn incident_from_row(r: &AnyRow) -> Result<Incident, StoreError> {
    let accounts: String = r.try_get("accounts")?;
    let evidence: String = r.try_get("evidence")?;
    Ok(Incident {
        id: r.try_get("id")?,
        rule: r.try_get("rule")?,
        key_kind: r.try_get("key_kind")?,
        key: r.try_get("key")?,
        accounts: serde_json::from_str(&accounts).unwrap_or_default(),
        severity: r.try_get("severity")?,
        status: r.try_get("status")?,
        action: r.try_get("action")?,
        reason: r.try_get("reason")?,
        suspended: r.try_get::<i64, _>("suspended")? != 0,
        opened_at: format_rfc3339_ms(r.try_get("opened_at")?),
        first_event_time: format_rfc3339_ms(r.try_get("first_event_ms")?),
        last_event_time: format_rfc3339_ms(r.try_get("last_event_ms")?),
        value_at_detection: r.try_get("value_at_detection")?,
        latest_value: r.try_get("latest_value")?,
        threshold: r.try_get("threshold")?,
        cvs_by_visibility: VisibilityCounts {
            named: r.try_get("cvs_named")?,
            anonymous: r.try_get("cvs_anonymous")?,
            unknown: r.try_get("cvs_unknown")?,
        },
        notify_authority_by: format_rfc3339_ms(r.try_get("notify_authority_by")?),
        evidence: serde_json::from_str(&evidence).unwrap_or(serde_json::Value::Null),
    })
}
