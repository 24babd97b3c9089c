//! cvguard-store: incidents, the CVs each one exposed, what was done about them and by
//! whom, and the outbox of suspend calls. SQLite by default (`sqlite://data/cvguard.db`),
//! PostgreSQL for several instances (`postgres://...`), chosen by the URL's scheme.
//!
//! Times are epoch milliseconds in BIGINT columns and JSON is TEXT, so one set of
//! queries serves both databases.

mod model;
mod outbox;
mod schema;
mod tx;

use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_core::{Alert, Exposure, IncidentUpdate, Visibility};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyConnection;
use sqlx::{AnyPool, Row};

pub use model::*;
pub use schema::Dialect;
use tx::Tx;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{0}`: expected sqlite://PATH or postgres://...")]
    BadUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("no incident {0}")]
    NotFound(String),
    /// `Store::open_existing` of a SQLite file that is not there.
    #[error("no incident store at {0}")]
    Missing(String),
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
     notify_authority_by, cvs_named, cvs_anonymous, cvs_unknown, threshold_source, time_to_detect_ms";

/// Rows per multi-row INSERT of exposed CVs. Small on purpose: sqlx's SQLite driver looks
/// up each numbered parameter by a linear scan, so a statement's cost grows with the square
/// of its parameters (400 rows of 5 spent half of a harvest's time in
/// `sqlite3_bind_parameter_name`).
const CV_CHUNK: usize = 64;
/// PostgreSQL binds by position: larger statements cost no more per row.
const CV_CHUNK_POSTGRES: usize = 400;

impl Store {
    /// Connects and migrates. `sqlite://PATH` creates the file (and its folder).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::open(url, true).await
    }

    /// Connects to a store that must exist: a SQLite file that is not there is
    /// `StoreError::Missing` (nothing is created), so a command run with the wrong config
    /// or from the wrong folder says so instead of reading a new, empty store.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        Store::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            let special = file.starts_with(':');
            if !create && !special && !std::path::Path::new(file).is_file() {
                return Err(StoreError::Missing(file.to_string()));
            }
            if let Some(parent) = std::path::Path::new(file)
                .parent()
                .filter(|p| create && !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
            let url = match (path.contains('?'), create) {
                (true, _) => url.to_string(),
                (false, true) => format!("{url}?mode=rwc"),
                (false, false) => format!("{url}?mode=rw"),
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
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL: a commit appends instead of rewriting pages through a
                        // rollback journal; FULL: a commit survives a power cut too, since
                        // the suspend calls it queues cannot be taken back.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Store { pool, dialect };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A transaction whose connection is closed, not reused, unless it commits.
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx::begin(&self.pool, self.dialect).await?)
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
            let mut tx = self.begin().await?;
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

    /// Records an incident for `alert` with the calls to make, in one transaction.
    ///
    /// The store is the authority on whether a (rule, key) is open: a crossing for a
    /// (rule, key) that has an open or acknowledged incident updates that incident and
    /// queues nothing, whatever the engine remembered (a restart from an older snapshot, a
    /// re-delivery, a rebalance). A second call for the same alert id changes nothing.
    /// A suspend call is not queued for an account whose suspension is already queued,
    /// sent or delivered under another incident that is still open.
    pub async fn open_incident(
        &self,
        alert: &Alert,
        opened_at: i64,
        calls: &[OutboxItem],
    ) -> Result<Opened, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(existing) = known_incident(&mut tx, alert, opened_at).await? {
            tx.commit().await?;
            return Ok(existing);
        }
        let evidence = serde_json::to_string(&alert.evidence).unwrap_or_default();
        let alert_json = serde_json::to_string(alert).unwrap_or_default();
        let first_ms = cvguard_core::timefmt::parse_rfc3339_ms(&alert.first_seen).unwrap_or(alert.event_time_ms);
        sqlx::query(
            "INSERT INTO incidents (id, rule, key_kind, key, accounts, severity, status, action, reason, suspended, \
             opened_at, first_event_ms, last_event_ms, value_at_detection, latest_value, threshold, evidence, alert, \
             notify_authority_by, published, updated_at, threshold_source, time_to_detect_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, 0, $9, $10, $11, $12, $13, $14, $15, $16, $17, 0, $18, $19, $20)",
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
        .bind(alert.threshold_source.as_str())
        .bind(alert.time_to_detect_ms)
        .execute(&mut *tx)
        .await?;
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
            let in_force = match call.kind {
                "suspend" => suspension_in_force(&mut tx, &call.account_id).await?,
                _ => None,
            };
            let (outcome, detail) = match in_force {
                Some(other) => (
                    "already_suspended",
                    format!("suspension already queued or delivered under incident {other}"),
                ),
                None => {
                    sqlx::query(
                        "INSERT INTO outbox (incident_id, kind, account_id, body, status, attempts, next_attempt_at, \
                         lease_until, last_error, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, '', $6, $7) \
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
                    ("pending", "queued in the outbox".to_string())
                }
            };
            action(
                &mut tx,
                &alert.alert_id,
                opened_at,
                call.kind,
                &call.account_id,
                outcome,
                &detail,
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
        let mut tx = self.begin().await?;
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

    /// Adds exposed CVs and the latest value to incidents, in one transaction for the
    /// whole batch. A CV already recorded keeps its first access; its visibility only
    /// becomes more revealing. The per-visibility counts are kept running: each chunk
    /// reads back only the rows it touches, never the incident's whole list.
    pub async fn apply_updates(&self, updates: &[IncidentUpdate], now: i64) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let mut merged: std::collections::BTreeMap<String, Merged> = Default::default();
        let mut resolved: std::collections::HashMap<&str, String> = Default::default();
        for u in updates {
            let id = match resolved.get(u.incident_id.as_str()) {
                Some(id) => id.clone(),
                None => {
                    let id = incident_of(&mut tx, &u.incident_id).await?;
                    resolved.insert(&u.incident_id, id.clone());
                    id
                }
            };
            merged.entry(id).or_default().add(u);
        }
        for (id, m) in merged {
            let mut cvs: Vec<Exposure> = m.cvs.into_values().collect();
            cvs.sort_by(|a, b| a.cv_id.cmp(&b.cv_id));
            let mut delta = [0i64; 3];
            let chunk_rows = match self.dialect {
                Dialect::Sqlite => CV_CHUNK,
                Dialect::Postgres => CV_CHUNK_POSTGRES,
            };
            let mut changed = Vec::new();
            for chunk in cvs.chunks(chunk_rows) {
                let before = recorded(&mut tx, &id, chunk).await?;
                changed.clear();
                for cv in chunk {
                    let new = cv.visibility as usize;
                    match before.get(cv.cv_id.as_str()) {
                        None => {
                            delta[new] += 1;
                            changed.push(cv.clone());
                        }
                        Some(&(old, first)) => {
                            if new > old {
                                delta[old] -= 1;
                                delta[new] += 1;
                            }
                            // Re-reading a CV already recorded as revealing, and earlier,
                            // changes nothing: the common case while a harvest goes on.
                            if new > old || cv.first_access_ms < first {
                                changed.push(cv.clone());
                            }
                        }
                    }
                }
                if !changed.is_empty() {
                    insert_cvs(&mut tx, &id, &changed).await?;
                }
            }
            let [unknown, anonymous, named] = delta;
            sqlx::query(
                "UPDATE incidents SET latest_value = CASE WHEN last_event_ms <= $1 THEN $2 ELSE latest_value END, \
                 last_event_ms = CASE WHEN last_event_ms < $3 THEN $4 ELSE last_event_ms END, updated_at = $5, \
                 cvs_named = cvs_named + $6, cvs_anonymous = cvs_anonymous + $7, cvs_unknown = cvs_unknown + $8 \
                 WHERE id = $9",
            )
            // A batch of late exposures only (no value) leaves the latest value alone.
            .bind(m.value.map_or(i64::MIN, |(_, t)| t))
            .bind(m.value.map_or(0, |(v, _)| v as i64))
            .bind(m.event_time_ms)
            .bind(m.event_time_ms)
            .bind(now)
            .bind(named)
            .bind(anonymous)
            .bind(unknown)
            .bind(&id)
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
        if f.severity.is_some() {
            sql += &format!(" AND severity = {}", next());
        }
        if f.key_kind.is_some() {
            sql += &format!(" AND key_kind = {}", next());
        }
        if f.from_ms.is_some() {
            sql += &format!(" AND opened_at >= {}", next());
        }
        if f.to_ms.is_some() {
            sql += &format!(" AND opened_at < {}", next());
        }
        sql += &format!(" ORDER BY opened_at DESC, id LIMIT {} OFFSET {}", next(), next());
        let mut q = sqlx::query(&sql);
        for s in [&f.status, &f.rule, &f.key, &f.severity, &f.key_kind]
            .into_iter()
            .flatten()
        {
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

    /// Says this instance is alive, where its API is and which partitions it holds.
    pub async fn heartbeat(
        &self,
        instance_id: &str,
        api_url: &str,
        partitions: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (instance_id, api_url, partitions, seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (instance_id) DO UPDATE SET api_url = $5, partitions = $6, seen_at = $7",
        )
        .bind(instance_id)
        .bind(api_url)
        .bind(partitions)
        .bind(now)
        .bind(api_url)
        .bind(partitions)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The instances heard from at or after `since` (epoch ms), by id; older rows (a
    /// crashed instance's) are deleted.
    pub async fn instances(&self, since: i64) -> Result<Vec<Instance>, StoreError> {
        sqlx::query("DELETE FROM instances WHERE seen_at < $1")
            .bind(since)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT instance_id, api_url, partitions, seen_at FROM instances ORDER BY instance_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Instance {
                    instance_id: r.try_get("instance_id")?,
                    api_url: r.try_get("api_url")?,
                    partitions: r.try_get("partitions")?,
                    seen_at: r.try_get("seen_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// An instance that stops cleanly leaves the registry at once.
    pub async fn forget_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM instances WHERE instance_id = $1")
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many incidents are in each status, every status named (0 when none).
    pub async fn count_by_status(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM incidents GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts: Vec<(&'static str, i64)> = STATUSES.iter().map(|s| (*s, 0)).collect();
        for r in &rows {
            let status: String = r.try_get("status")?;
            let n: i64 = r.try_get("n")?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == status) {
                c.1 = n;
            }
        }
        Ok(counts)
    }

    /// Adds a note to an incident's history without changing its status; the incident
    /// counts as changed (its feed and stream show it again).
    pub async fn add_note(&self, id: &str, actor: &str, note: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query("UPDATE incidents SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(id.to_string()));
        }
        history(&mut tx, id, now, actor, "note", note).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Incidents changed after the change `(at, id)` (epoch ms, incident id), in the order
    /// (change time, id): a cursor that never stops at a millisecond in which more than
    /// `limit` incidents changed.
    pub async fn changed_after(&self, at: i64, id: &str, limit: i64) -> Result<Vec<(i64, Incident)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS}, updated_at FROM incidents \
             WHERE updated_at > $1 OR (updated_at = $2 AND id > $3) ORDER BY updated_at, id LIMIT $4"
        ))
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
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
        rows.iter().map(change_from_row).collect()
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
        let mut tx = self.begin().await?;
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

/// The incident an alert belongs to, if the store already has one: the alert's own
/// (a replay of the same crossing), one it was made an alias of, or the open incident of
/// its (rule, key), which then takes the alert's id as an alias and its value.
async fn known_incident(conn: &mut AnyConnection, alert: &Alert, now: i64) -> Result<Option<Opened>, StoreError> {
    let own = sqlx::query(
        "SELECT id, published FROM incidents WHERE id = $1 \
         UNION ALL SELECT i.id, i.published FROM incident_aliases a JOIN incidents i ON i.id = a.incident_id \
         WHERE a.alert_id = $2",
    )
    .bind(&alert.alert_id)
    .bind(&alert.alert_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = own {
        return Ok(Some(Opened::Existing {
            incident_id: row.try_get("id")?,
            published: row.try_get::<i64, _>("published")? != 0,
        }));
    }
    let open = sqlx::query(
        "SELECT id, published FROM incidents WHERE rule = $1 AND key_kind = $2 AND key = $3 \
         AND status IN ('open', 'acknowledged') ORDER BY opened_at, id LIMIT 1",
    )
    .bind(&alert.rule)
    .bind(alert.key_kind.as_str())
    .bind(&alert.key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = open else { return Ok(None) };
    let incident_id: String = row.try_get("id")?;
    sqlx::query("INSERT INTO incident_aliases (alert_id, incident_id) VALUES ($1, $2)")
        .bind(&alert.alert_id)
        .bind(&incident_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE incidents SET latest_value = CASE WHEN latest_value < $1 THEN $2 ELSE latest_value END, \
         last_event_ms = CASE WHEN last_event_ms < $3 THEN $4 ELSE last_event_ms END, updated_at = $5 WHERE id = $6",
    )
    .bind(alert.value as i64)
    .bind(alert.value as i64)
    .bind(alert.event_time_ms)
    .bind(alert.event_time_ms)
    .bind(now)
    .bind(&incident_id)
    .execute(&mut *conn)
    .await?;
    history(
        conn,
        &incident_id,
        now,
        "cvguard",
        "crossed again",
        &format!(
            "alert {} for the same rule and key while this incident is open: recorded here, nothing new queued",
            alert.alert_id
        ),
    )
    .await?;
    Ok(Some(Opened::Existing {
        incident_id,
        published: row.try_get::<i64, _>("published")? != 0,
    }))
}

/// The incident under which `account` is already suspended or about to be: a suspend call
/// that is pending, being sent or delivered, of an incident that is still open.
async fn suspension_in_force(conn: &mut AnyConnection, account: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT o.incident_id FROM outbox o JOIN incidents i ON i.id = o.incident_id \
         WHERE o.kind = 'suspend' AND o.account_id = $1 AND o.status IN ('pending', 'sending', 'delivered') \
         AND i.status IN ('open', 'acknowledged') ORDER BY o.id LIMIT 1",
    )
    .bind(account)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get("incident_id")).transpose()?)
}

/// The incident an engine's alert id stands for (itself unless it was made an alias).
async fn incident_of(conn: &mut AnyConnection, alert_id: &str) -> Result<String, StoreError> {
    let row = sqlx::query("SELECT incident_id FROM incident_aliases WHERE alert_id = $1")
        .bind(alert_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("incident_id")?,
        None => alert_id.to_string(),
    })
}

/// The visibility (as `Visibility as usize`) and first access already recorded for those
/// of `cvs` the incident has.
async fn recorded(
    conn: &mut AnyConnection,
    incident_id: &str,
    cvs: &[Exposure],
) -> Result<std::collections::HashMap<String, (usize, i64)>, StoreError> {
    let mut sql = String::from(
        "SELECT cv_id, visibility, first_access_ms FROM incident_cvs WHERE incident_id = $1 AND cv_id IN (",
    );
    for i in 0..cvs.len() {
        if i > 0 {
            sql.push(',');
        }
        sql += &format!("${}", i + 2);
    }
    sql.push(')');
    let mut q = sqlx::query(&sql).bind(incident_id.to_string());
    for cv in cvs {
        q = q.bind(cv.cv_id.clone());
    }
    let mut seen = std::collections::HashMap::with_capacity(cvs.len());
    for r in q.fetch_all(&mut *conn).await? {
        let v = match r.try_get::<String, _>("visibility")?.as_str() {
            "named" => Visibility::Named,
            "anonymous" => Visibility::Anonymous,
            _ => Visibility::Unknown,
        };
        seen.insert(r.try_get("cv_id")?, (v as usize, r.try_get("first_access_ms")?));
    }
    Ok(seen)
}

/// One incident's share of a batch of updates: each CV once, with its earliest access
/// and most revealing visibility, and the latest value.
#[derive(Default)]
struct Merged {
    cvs: std::collections::HashMap<String, Exposure>,
    /// The value of the newest update that has one, and its event time.
    value: Option<(u64, i64)>,
    event_time_ms: i64,
}

impl Merged {
    fn add(&mut self, u: &IncidentUpdate) {
        self.event_time_ms = self.event_time_ms.max(u.event_time_ms);
        if let Some(v) = u.value {
            if self.value.is_none_or(|(_, t)| u.event_time_ms >= t) {
                self.value = Some((v, u.event_time_ms));
            }
        }
        for cv in &u.cvs {
            match self.cvs.get_mut(&cv.cv_id) {
                None => {
                    self.cvs.insert(cv.cv_id.clone(), cv.clone());
                }
                Some(seen) => {
                    if cv.first_access_ms < seen.first_access_ms {
                        seen.first_access_ms = cv.first_access_ms;
                        seen.action = cv.action.clone();
                    }
                    seen.visibility = seen.visibility.max(cv.visibility);
                }
            }
        }
    }
}

async fn insert_cvs(conn: &mut AnyConnection, incident_id: &str, cvs: &[Exposure]) -> Result<(), StoreError> {
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
    q.execute(&mut *conn).await?;
    Ok(())
}

/// A change read from the incidents: its time (`updated_at`) and the incident.
fn change_from_row(r: &AnyRow) -> Result<(i64, Incident), StoreError> {
    Ok((r.try_get::<i64, _>("updated_at")?, incident_from_row(r)?))
}

async fn history(
    conn: &mut AnyConnection,
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
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn action(
    conn: &mut AnyConnection,
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
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn incident_from_row(r: &AnyRow) -> Result<Incident, StoreError> {
    let accounts: String = r.try_get("accounts")?;
    let evidence: serde_json::Value =
        serde_json::from_str(&r.try_get::<String, _>("evidence")?).unwrap_or(serde_json::Value::Null);
    let rule: String = r.try_get("rule")?;
    // A baseline rule's judgement at the crossing is in the evidence, with its window.
    let baseline = evidence["windows"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["rule"] == rule.as_str()))
        .and_then(|w| w.get("baseline"))
        .cloned();
    Ok(Incident {
        id: r.try_get("id")?,
        rule,
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
        threshold_source: r.try_get("threshold_source")?,
        time_to_detect_ms: r.try_get("time_to_detect_ms")?,
        cvs_by_visibility: VisibilityCounts {
            named: r.try_get("cvs_named")?,
            anonymous: r.try_get("cvs_anonymous")?,
            unknown: r.try_get("cvs_unknown")?,
        },
        notify_authority_by: format_rfc3339_ms(r.try_get("notify_authority_by")?),
        baseline,
        evidence,
    })
}
