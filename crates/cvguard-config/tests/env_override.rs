//! Environment overrides run in their own test binary: environment variables are
//! process-wide, and no other test should see these.

use cvguard_config::{load, ConfigSource, Origin, Overrides};

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
    let err = load(&ConfigSource::File(path.clone()), &Overrides::default()).unwrap_err();
    assert_eq!(err.issues[0].key.as_deref(), Some("engine.max_cv_ids"));
    assert_eq!(err.issues[0].origin, Origin::Env("CVGUARD__ENGINE__MAX_CV_IDS".into()));
    let text = err.to_string();
    assert!(
        text.contains("\n  environment variable CVGUARD__ENGINE__MAX_CV_IDS: key `engine.max_cv_ids`: invalid type"),
        "{text}"
    );
    std::env::remove_var("CVGUARD__ENGINE__MAX_CV_IDS");

    // An unknown key from the environment is the variable's; a value that reads as a
    // number stays text where text is wanted; a path from the environment is the working
    // directory's, not the file's.
    std::env::set_var("CVGUARD__ENGINE__DRY_RNU", "true");
    std::env::set_var("CVGUARD__KAFKA__GROUP_ID", "1234");
    std::env::set_var("CVGUARD__STATE__DIR", "here/state");
    let err = load(&ConfigSource::File(path.clone()), &Overrides::default()).unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].origin, Origin::Env("CVGUARD__ENGINE__DRY_RNU".into()));
    assert!(err.issues[0].message.contains("did you mean `dry_run`?"), "{err}");
    std::env::remove_var("CVGUARD__ENGINE__DRY_RNU");
    let cfg = load(&ConfigSource::File(path), &Overrides::default()).unwrap();
    assert_eq!(cfg.kafka.group_id.as_deref(), Some("1234"));
    assert_eq!(cfg.state.dir, "here/state");
}
