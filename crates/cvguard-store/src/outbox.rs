//! The outbox of suspend and unsuspend calls, and the queries the safety rails ask.

use sqlx::Row;

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
    pub async fn call_delivered(&self, row: &OutboxRow, now: i64, detail: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE outbox SET status = 'delivered', attempts = attempts + 1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        let suspended = i64::from(row.kind == "suspend");
        sqlx::query("UPDATE incidents SET suspended = $1, updated_at = $2 WHERE id = $3")
            .bind(suspended)
            .bind(now)
            .bind(&row.incident_id)
            .execute(&mut *tx)
            .await?;
        finish_call(tx, row, now, "delivered", detail).await
    }

    /// The call failed and may be tried again at `next_attempt_at`.
    pub async fn call_retry(
        &self,
        row: &OutboxRow,
        now: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = attempts + 1, next_attempt_at = $1, lease_until = 0, \
             last_error = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(now)
        .bind(row.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The call failed for good (a 4xx, or out of attempts).
    pub async fn call_failed(&self, row: &OutboxRow, now: i64, error: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(now)
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
        finish_call(tx, row, now, "failed", error).await
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

/// Records the call's outcome in the incident's action log and commits its transaction.
async fn finish_call(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    row: &OutboxRow,
    now: i64,
    outcome: &str,
    detail: &str,
) -> Result<(), StoreError> {
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
