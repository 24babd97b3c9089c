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

/// A read-only command must not make a store where there is none (#15).
#[tokio::test]
async fn open_existing_creates_nothing_and_opens_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data/cvguard.db");
    let url = format!("sqlite://{}", file.display());
    match cvguard_store::Store::open_existing(&url).await {
        Err(cvguard_store::StoreError::Missing(path)) => assert_eq!(path, file.display().to_string()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a store that is not there"),
    }
    assert!(!dir.path().join("data").exists(), "nothing created");
    drop(cvguard_store::Store::connect(&url).await.unwrap());
    let store = cvguard_store::Store::open_existing(&url).await.unwrap();
    assert!(store
        .list(&cvguard_store::IncidentFilter::default())
        .await
        .unwrap()
        .is_empty());
}
