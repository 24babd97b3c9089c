//! A transaction that never leaves a connection in a state the driver misjudges.
//!
//! sqlx tracks a transaction's depth itself. When SQLite rolls a transaction back on its
//! own (a full disk, an I/O error) the driver still believes one is open, so every later
//! `begin()` on that connection becomes a SAVEPOINT and nothing reaches COMMIT again. So
//! the store issues BEGIN and COMMIT itself, and a transaction dropped without a
//! successful COMMIT takes its connection with it: the pool opens a fresh one, and the
//! database rolls back whatever the closed connection left open.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::AnyConnection;
use sqlx::{Any, AnyPool};

use crate::schema::Dialect;

pub struct Tx {
    conn: PoolConnection<Any>,
    committed: bool,
}

impl Tx {
    pub async fn begin(pool: &AnyPool, dialect: Dialect) -> Result<Tx, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        // IMMEDIATE takes SQLite's write lock up front: a read-then-write transaction
        // cannot then fail half-way with "database is locked".
        let begin = match dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        if let Err(e) = sqlx::query(begin).execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e);
        }
        Ok(Tx { conn, committed: false })
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}
