//! The store scenarios on SQLite, each in its own file.

mod scenarios;

async fn fresh() -> (cvguard_store::Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cvguard.db", dir.path().display());
    (cvguard_store::Store::connect(&url).await.unwrap(), dir)
}

all_scenarios!(fresh);

#[tokio::test]
async fn migrations_are_idempotent_and_bad_urls_are_refused() {
    let (store, dir) = fresh().await;
    drop(store);
    let url = format!("sqlite://{}/cvguard.db", dir.path().display());
    cvguard_store::Store::connect(&url).await.unwrap();
    assert!(matches!(
        cvguard_store::Store::connect("mysql://x").await,
        Err(cvguard_store::StoreError::BadUrl(_))
    ));
}
