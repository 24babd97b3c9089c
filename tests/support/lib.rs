//! Helpers for the end-to-end tests: find the built binary, run it, read its outputs.

pub mod kafka;
pub mod pg;
pub mod receiver;
pub mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The `cvguard` binary built in the same profile as this test (`make test` builds it
/// first), or `CVGUARD_BIN`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CVGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/cvguard
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let candidate = profile_dir.join("cvguard");
    assert!(
        candidate.is_file(),
        "{} is missing: build it first with `cargo build -p cvguard` (make test does)",
        candidate.display()
    );
    candidate
}

/// Runs `cvguard ARGS` from the workspace root and returns its output.
pub fn cvguard(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run cvguard")
}

/// Like `cvguard`, but fails the test with stderr when the exit status is not 0.
pub fn cvguard_ok(args: &[&str]) -> Output {
    let out = cvguard(args);
    assert!(
        out.status.success(),
        "cvguard {args:?} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// One line of the simulator's labels.csv.
#[derive(Debug, Clone)]
pub struct Label {
    pub key_kind: String,
    pub key: String,
    pub scenario: String,
    pub expected: String,
}

pub fn read_labels(path: &Path) -> Vec<Label> {
    let text = std::fs::read_to_string(path).expect("labels.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("key_kind,key,scenario,expected"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Label {
                key_kind: f[0].into(),
                key: f[1].into(),
                scenario: f[2].into(),
                expected: f[3].into(),
            }
        })
        .collect()
}

/// Alerts grouped by (key_kind, key).
pub fn by_key(alerts: &[serde_json::Value]) -> BTreeMap<(String, String), Vec<serde_json::Value>> {
    let mut map: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for a in alerts {
        let k = (
            a["key_kind"].as_str().unwrap().to_string(),
            a["key"].as_str().unwrap().to_string(),
        );
        map.entry(k).or_default().push(a.clone());
    }
    map
}

/// Every account some alert would suspend.
pub fn suspended_accounts(alerts: &[serde_json::Value]) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| a["action"] == "suspend")
        .flat_map(|a| a["suspend_accounts"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A small simulated board (`cvguard simulate` into `dir/sim`): three days, a werk.nl
/// harvester, an organisation ring, an allowlisted partner, a slow harvester and a few
/// hundred ordinary employers. The crash tests post it, the Kafka tests produce it.
pub fn simulate_small_board(dir: &Path) -> PathBuf {
    simulate_board(dir, &["--days", "3", "--employers", "300", "--agencies", "4"])
}

/// `cvguard simulate --out dir/sim` with these options; the folder it wrote.
pub fn simulate_board(dir: &Path, options: &[&str]) -> PathBuf {
    let out = dir.join("sim");
    cvguard_ok(&[&["simulate", "--out", out.to_str().unwrap()], options].concat());
    out
}

/// Every incident in the store of `config`, through the CLI (`incidents list -o json`).
pub fn list_incidents(config: &Path) -> Vec<serde_json::Value> {
    let out = cvguard_ok(&[
        "incidents",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
        "--limit",
        "1000",
    ]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Moves incident `id` to `status` through the CLI, as the SOC does.
pub fn set_incident(config: &Path, id: &str, status: &str, actor: &str) {
    cvguard_ok(&[
        "incidents",
        "set",
        id,
        status,
        "--actor",
        actor,
        "--config",
        config.to_str().unwrap(),
    ]);
}
