//! The outbox of suspend and unsuspend calls, and the queries the safety rails ask.
//!
//! A call goes `pending -> sending` (claimed with a lease) `-> delivered | failed`, or back
//! to `pending` to be retried; marking its incident a false positive moves a suspend call
//! that is `pending` or `sending` to `cancelled`. Every change names the status it expects
//! (compare-and-set), so an outcome that arrives after the call moved on cannot undo that
//! move: a cancelled call stays cancelled, a delivered one delivered.

use cvguard_core::timefmt::format_rfc3339_ms;
use sqlx::{AnyConnection, Row};

use crate::tx::Tx;
use crate::{action, OutboxRow, Store, StoreError};

impl Store {
    /// Claims up to `limit` calls that are due: pending ones whose time has come, and
    /// ones another sender claimed but did not finish before its lease ran out.
    pub async fn claim_due(&self, now: i64, lease_ms: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let ids: Vec<i64> = sqlx::query(
            "SELECT id FROM outbox WHERE (status = 'pending' AND next_attempt_at <= $1) \
             OR (status = 'sending' AND lease_until < $2) ORDER BY id LIMIT $3",
        )
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        let mut claimed = Vec::new();
        for id in ids {
            let won = sqlx::query(
                "UPDATE outbox SET status = 'sending', lease_until = $1, updated_at = $2 WHERE id = $3 AND \
                 ((status = 'pending' AND next_attempt_at <= $4) OR (status = 'sending' AND lease_until < $5))",
            )
            .bind(now + lease_ms)
            .bind(now)
            .bind(id)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if won == 1 {
                let r =
                    sqlx::query("SELECT id, incident_id, kind, account_id, body, attempts FROM outbox WHERE id = $1")
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await?;
                claimed.push(OutboxRow {
                    id: r.try_get("id")?,
                    incident_id: r.try_get("incident_id")?,
                    kind: r.try_get("kind")?,
                    account_id: r.try_get("account_id")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get("attempts")?,
                });
            }
        }
        Ok(claimed)
    }

    /// The call was answered 2xx: done, and the incident's suspension state follows.
    ///
    /// `Ok(None)` when recorded; `Ok(Some(status))` when the call was no longer in flight
    /// (another sender finished it, or a false positive cancelled it meanwhile) and keeps
    /// that status. A suspend cancelled while in flight was carried out all the same: that
    /// is recorded, and an unsuspend is queued to undo it.
    pub async fn call_delivered(&self, row: &OutboxRow, now: i64, detail: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, updated_at = $1 \
             WHERE id = $2 AND status = 'sending'",
        )
        .bind(now)
        .bind(row.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            let status = status_of(&mut tx, row.id).await?;
            if status == "cancelled" && row.kind == "suspend" {
                undo_late_suspend(&mut tx, row, now, detail).await?;
            }
            tx.commit().await?;
            return Ok(Some(status));
        }
        let suspended = i64::from(row.kind == "suspend");
        sqlx::query("UPDATE incidents SET suspended = $1, updated_at = $2 WHERE id = $3")
            .bind(suspended)
            .bind(now)
            .bind(&row.incident_id)
            .execute(&mut *tx)
            .await?;
        finish_call(tx, row, now, "delivered", detail).await?;
        Ok(None)
    }

    /// The call failed and may be tried again at `next_attempt_at`. `Ok(Some(status))`
    /// when it was no longer in flight and keeps that status (a cancelled call stays
    /// cancelled).
    pub async fn call_retry(
        &self,
        row: &OutboxRow,
        now: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = attempts + 1, next_attempt_at = $1, lease_until = 0, \
             last_error = $2, updated_at = $3 WHERE id = $4 AND status = 'sending'",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(now)
        .bind(row.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let result = if moved == 0 {
            Some(status_of(&mut tx, row.id).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(result)
    }

    /// The call failed for good (a 4xx, or out of attempts). `Ok(Some(status))` when it
    /// was no longer in flight and keeps that status.
    pub async fn call_failed(&self, row: &OutboxRow, now: i64, error: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = $1, updated_at = $2 \
             WHERE id = $3 AND status = 'sending'",
        )
        .bind(error)
        .bind(now)
        .bind(row.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            let status = status_of(&mut tx, row.id).await?;
            tx.commit().await?;
            return Ok(Some(status));
        }
        finish_call(tx, row, now, "failed", error).await?;
        Ok(None)
    }

    /// Suspend calls queued since `since` (for the blast-radius limit).
    pub async fn suspensions_since(&self, since: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE kind = 'suspend' AND created_at >= $1")
                .bind(since)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// When `account` was last unsuspended (queued), if ever.
    pub async fn last_unsuspend(&self, account: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT MAX(created_at) AS t FROM outbox WHERE kind = 'unsuspend' AND account_id = $1")
                .bind(account)
                .fetch_one(&self.pool)
                .await?
                .try_get::<Option<i64>, _>("t")?,
        )
    }

    /// True the first time `name` is raised in `period`; false after.
    pub async fn raise_once(&self, name: &str, period: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO system_alerts (name, period) VALUES ($1, $2) ON CONFLICT (name, period) DO NOTHING",
        )
        .bind(name)
        .bind(period)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// When the oldest call still waiting to be delivered (pending, or being sent) was
    /// queued; `None` when none waits. The health watchdog's `sink_failing`.
    pub async fn oldest_waiting_call(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT MIN(created_at) AS t FROM outbox WHERE status IN ('pending', 'sending')")
                .fetch_one(&self.pool)
                .await?
                .try_get::<Option<i64>, _>("t")?,
        )
    }

    /// Outbox rows by status, for tests and metrics.
    pub async fn outbox_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT kind, status, COUNT(*) AS n FROM outbox GROUP BY kind, status ORDER BY kind, status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("status")?, r.try_get("n")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// The status of outbox row `id` ("missing" if it is gone).
async fn status_of(conn: &mut AnyConnection, id: i64) -> Result<String, StoreError> {
    Ok(sqlx::query("SELECT status FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("status"))
        .transpose()?
        .unwrap_or_else(|| "missing".into()))
}

/// A suspend call was in flight when its incident became a false positive, and the platform
/// carried it out: the account is suspended although the SOC said it should not be. The
/// call stays cancelled (the decision was withdrawn); the suspension is recorded, and an
/// unsuspend is queued exactly as the false positive queues one for a call delivered before
/// it. Its body is the suspend's, with `action` `unsuspend` and `reason` `false_positive`.
async fn undo_late_suspend(
    conn: &mut AnyConnection,
    row: &OutboxRow,
    now: i64,
    detail: &str,
) -> Result<(), StoreError> {
    let queued = sqlx::query(
        "INSERT INTO outbox (incident_id, kind, account_id, body, status, attempts, next_attempt_at, lease_until, \
         last_error, created_at, updated_at) VALUES ($1, 'unsuspend', $2, $3, 'pending', 0, $4, 0, '', $5, $6) \
         ON CONFLICT (incident_id, kind, account_id) DO NOTHING",
    )
    .bind(&row.incident_id)
    .bind(&row.account_id)
    .bind(unsuspend_body(row, now))
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if queued == 0 {
        // Already undone: another sender of the same call reported it first.
        return Ok(());
    }
    sqlx::query("UPDATE incidents SET suspended = 1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&row.incident_id)
        .execute(&mut *conn)
        .await?;
    action(
        conn,
        &row.incident_id,
        now,
        "suspend",
        &row.account_id,
        "delivered",
        &format!("{detail}, after the incident was marked false positive"),
    )
    .await?;
    action(
        conn,
        &row.incident_id,
        now,
        "unsuspend",
        &row.account_id,
        "pending",
        "false positive, suspended while it was marked; queued in the outbox",
    )
    .await
}

/// The unsuspend undoing the suspend call `row`: its body with `action`, `reason` and
/// `detected_at` replaced.
fn unsuspend_body(row: &OutboxRow, now: i64) -> String {
    let mut body = match serde_json::from_str::<serde_json::Value>(&row.body) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    for (k, v) in [
        ("action", "unsuspend".to_string()),
        ("incident_id", row.incident_id.clone()),
        ("account_id", row.account_id.clone()),
        ("reason", "false_positive".to_string()),
        ("detected_at", format_rfc3339_ms(now)),
    ] {
        body.insert(k.into(), v.into());
    }
    serde_json::Value::Object(body).to_string()
}

/// Records the call's outcome in the incident's action log and commits its transaction.
async fn finish_call(mut tx: Tx, row: &OutboxRow, now: i64, outcome: &str, detail: &str) -> Result<(), StoreError> {
    action(
        &mut tx,
        &row.incident_id,
        now,
        &row.kind,
        &row.account_id,
        outcome,
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
