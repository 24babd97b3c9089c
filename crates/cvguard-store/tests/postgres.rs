//! The store scenarios on PostgreSQL (127.0.0.1:5432, started by scripts/pg-up.sh), each
//! in a database of its own, dropped afterwards.

mod scenarios;

/// `CVGUARD_TEST_POSTGRES`, else the local cluster's admin URL.
fn admin_url() -> String {
    std::env::var("CVGUARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct Database {
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, on a thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                sqlx::any::install_default_drivers();
                if let Ok(mut c) = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn fresh() -> (cvguard_store::Store, Database) {
    sqlx::any::install_default_drivers();
    let admin = admin_url();
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin}: {e}; run scripts/pg-up.sh (make test does)"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("cvguard_test_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    (cvguard_store::Store::connect(&url).await.unwrap(), Database { name })
}

all_scenarios!(fresh);
