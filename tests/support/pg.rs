//! A database of its own on the local PostgreSQL (scripts/pg-up.sh starts it), dropped
//! when the guard goes.

use std::process::Command;

pub struct PgDatabase {
    pub name: String,
}

fn psql(sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .expect("psql (scripts/pg-up.sh installs PostgreSQL)")
}

impl PgDatabase {
    pub fn create(prefix: &str) -> PgDatabase {
        let name = crate::service::unique(prefix).replace('-', "_");
        let out = psql(&format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "creating {name}: {}; run scripts/pg-up.sh (make test does)",
            String::from_utf8_lossy(&out.stderr)
        );
        PgDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}
