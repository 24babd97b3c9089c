//! Environment overrides run in their own test binary: environment variables are
//! process-wide, and no other test should see these.

use cvguard_config::{load, ConfigSource, Overrides};

#[test]
fn cvguard_env_vars_override_file_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[engine]\ndry_run = false\nmax_cv_ids = 5\n[[rules]]\nname = \"r\"\nactions = [\"cv_view\"]\ngroup_by = \"account_id\"\nmeasure = \"events\"\nwindow = \"1h\"\nthreshold = 1\n",
    )
    .unwrap();
    std::env::set_var("CVGUARD__ENGINE__DRY_RUN", "true");
    std::env::set_var("CVGUARD__ENGINE__MAX_CV_IDS", "7");
    let cfg = load(&ConfigSource::File(path.clone()), &Overrides::default()).unwrap();
    assert!(cfg.engine.dry_run);
    assert_eq!(cfg.engine.max_cv_ids, 7);
    assert!(cfg.ruleset.settings.dry_run);

    std::env::set_var("CVGUARD__ENGINE__MAX_CV_IDS", "many");
    let err = load(&ConfigSource::File(path), &Overrides::default()).unwrap_err();
    assert_eq!(err.issues[0].key, "engine.max_cv_ids");
}
