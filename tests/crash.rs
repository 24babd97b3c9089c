//! Trust through faults (#13): the built binary on HTTP ingest with SQLite, killed with -9
//! at bad moments, restarted (once with another worker count), compared with an
//! uninterrupted run of the same simulated board: the same incidents with the same
//! exposed CVs, one suspend call per suspended account, no alert twice, no value above
//! what the input can give. And a full disk, freed again, loses no incident.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvguard_tests::read_labels;
use cvguard_tests::receiver::{Receiver, Reply};
use cvguard_tests::service::{free_port, http, Service};

const SECRET: &str = "crash-secret-71c2";
const WAIT: Duration = Duration::from_secs(60);
const CHUNK: usize = 5_000;

struct Node {
    dir: PathBuf,
    port: u16,
}

impl Node {
    fn new(dir: &Path, sim: &Path, suspend_url: &str, store_dir: &Path) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let node = Node {
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        node.write_config(sim, suspend_url, store_dir, 2);
        // The same part seed in every run: keys fall in the same parts, so each part's
        // newest event time, and with it what the account view reads, is the same.
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("state/parts.seed"), "5eed5eed5eed5eed\n").unwrap();
        node
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cvguard.toml")
    }

    fn write_config(&self, sim: &Path, suspend_url: &str, store_dir: &Path, workers: usize) {
        let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
        let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/state\"\nsnapshot_interval = \"1s\"\n\
             ingest_segment_bytes = 65536\n\
             [service]\nworkers = {workers}\nshutdown_timeout = \"10s\"\n\
             [store]\nurl = \"sqlite://{s}/cvguard.db\"\n\
             [suspend]\nurl = \"{suspend_url}\"\nsecret_env = \"CVGUARD_TEST_SUSPEND_SECRET\"\ntimeout = \"1s\"\nmax_per_hour = 1000\n\
             [[sinks]]\nkind = \"jsonl\"\npath = \"{d}/alerts.jsonl\"\n\
             [profiles]\npath = \"{sim}/accounts.csv\"\n{rules}",
            port = self.port,
            d = self.dir.display(),
            s = store_dir.display(),
            sim = sim.display(),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn start(&self) -> Service {
        let mut s = Service::start_env(
            &self.config(),
            self.port,
            &self.dir.join("serve.log"),
            &[("CVGUARD_TEST_SUSPEND_SECRET", SECRET)],
        );
        s.wait_ready(WAIT);
        s
    }

    fn post(&self, svc: &Service, chunk: &str) -> serde_json::Value {
        let (code, text) = http(self.port, "POST", "/v1/events", chunk.as_bytes())
            .unwrap_or_else(|e| panic!("POST failed: {e}; log:\n{}", svc.log_text()));
        assert_eq!(code, 202, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until every accepted event was decided by every shard.
    fn wait_decided(&self, svc: &Service) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, metrics) = http(self.port, "GET", "/metrics", b"").unwrap();
            if metrics.lines().any(|l| l == "cvguard_ingest_in_flight_bytes 0") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "events never decided; log:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        cvguard_tests::list_incidents(&self.config())
    }

    /// Waits until every event was decided and every suspend decision's call was
    /// delivered (the receiver answers).
    fn settled_incidents(&self, svc: &Service) -> Vec<serde_json::Value> {
        self.wait_decided(svc);
        let deadline = Instant::now() + WAIT;
        loop {
            let incidents = self.incidents();
            let waiting = incidents
                .iter()
                .filter(|i| i["action"] == "suspend" && i["suspended"] != true)
                .count();
            if waiting == 0 {
                return incidents;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} suspensions never delivered; log:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every account's history under the shipped history rule (`surge-24h`), as the
    /// account view shows it: its daily values and first day, by account (#14).
    fn histories(&self, sim: &Path) -> BTreeMap<String, serde_json::Value> {
        let accounts = std::fs::read_to_string(sim.join("accounts.csv")).unwrap();
        let mut out = BTreeMap::new();
        for account in accounts.lines().skip(1).filter_map(|l| l.split(',').next()) {
            let (code, text) = http(self.port, "GET", &format!("/v1/accounts/{account}"), b"").unwrap();
            assert_eq!(code, 200, "{text}");
            let view: serde_json::Value = serde_json::from_str(&text).unwrap();
            let history = view["windows"]
                .as_array()
                .and_then(|ws| ws.iter().find(|w| w["rule"] == "surge-24h"))
                .map(|w| w["baseline"].clone());
            if let Some(h) = history {
                out.insert(account.to_string(), h);
            }
        }
        out
    }

    fn alerts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn chunks(sim: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(sim.join("events.ndjson")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(CHUNK)
        .map(|c| c.iter().map(|l| format!("{l}\n")).collect())
        .collect()
}

/// What must be identical between runs: per (rule, key kind, key), the incident's value
/// at detection, latest value and exposed CVs by visibility.
fn summary(incidents: &[serde_json::Value]) -> BTreeMap<(String, String, String), String> {
    let mut out = BTreeMap::new();
    for i in incidents {
        let k = (
            i["rule"].as_str().unwrap().to_string(),
            i["key_kind"].as_str().unwrap().to_string(),
            i["key"].as_str().unwrap().to_string(),
        );
        let v = format!(
            "detected {} latest {} cvs {} action {} suspended {}",
            i["value_at_detection"], i["latest_value"], i["cvs_by_visibility"], i["action"], i["suspended"]
        );
        assert!(out.insert(k.clone(), v).is_none(), "two incidents for {k:?}");
    }
    out
}

/// Per key kind and key, the distinct CVs the input gives it: no distinct-CV value may
/// exceed it (a count wrapped below zero would).
fn distinct_cvs_in_input(sim: &Path) -> HashMap<(String, String), BTreeSet<String>> {
    let mut seen: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for line in std::fs::read_to_string(sim.join("events.ndjson")).unwrap().lines() {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut cvs: Vec<String> = ev["cv_ids"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        if let Some(cv) = ev["cv_id"].as_str() {
            cvs.push(cv.to_string());
        }
        for (kind, field) in [
            ("account_id", "account_id"),
            ("org_id", "org_id"),
            ("ip", "ip"),
            ("user_id", "user_id"),
        ] {
            if let Some(key) = ev[field].as_str() {
                seen.entry((kind.to_string(), key.to_string()))
                    .or_default()
                    .extend(cvs.iter().cloned());
            }
        }
    }
    seen
}

/// Compares two summaries, showing only what differs.
fn assert_same(
    got: &BTreeMap<(String, String, String), String>,
    want: &BTreeMap<(String, String, String), String>,
    log: &str,
) {
    let keys: BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k:?}\n  got  {:?}\n  want {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diff.is_empty(), "{}\nlog:\n{log}", diff.join("\n"));
}

fn suspend_calls(r: &Receiver) -> BTreeMap<String, usize> {
    let mut per_account = BTreeMap::new();
    for c in r.calls() {
        let body = c.json();
        if body["action"] == "suspend" && c.signature_ok {
            *per_account
                .entry(body["account_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    per_account
}

/// Sends the headers and half the body of a POST, leaving the request unfinished.
fn half_post(port: u16, body: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    s.flush().unwrap();
    s
}

/// What an uninterrupted run gives: the incidents' summary, the suspend calls per
/// account, and the (rule, key) pairs of the alerts published.
struct Reference {
    incidents: BTreeMap<(String, String, String), String>,
    calls: BTreeMap<String, usize>,
    alerts: BTreeSet<(String, String)>,
    /// Per account, its history under `surge-24h` at the end.
    histories: BTreeMap<String, serde_json::Value>,
}

/// The reference: the same input posted to a service that nothing interrupts. Both tests
/// here compare with it, so it runs once for both (the simulator is deterministic).
fn uninterrupted() -> &'static Reference {
    static REFERENCE: std::sync::OnceLock<Reference> = std::sync::OnceLock::new();
    REFERENCE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let sim = cvguard_tests::simulate_small_board(root.path());
        let receiver = Receiver::start(0, SECRET, vec![Reply::Status(500)]);
        let dir = root.path().join("calm");
        let node = Node::new(&dir, &sim, &receiver.url("/suspend"), &dir);
        let mut svc = node.start();
        for c in &chunks(&sim) {
            node.post(&svc, c);
        }
        let incidents = node.settled_incidents(&svc);
        let histories = node.histories(&sim);
        assert!(svc.sigterm(WAIT).success());
        Reference {
            histories,
            incidents: summary(&incidents),
            calls: suspend_calls(&receiver),
            alerts: alert_keys(&node.alerts()).into_iter().collect(),
        }
    })
}

fn alert_keys(alerts: &[serde_json::Value]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn kill_9_at_bad_moments_gives_the_incidents_and_suspensions_of_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let sim = cvguard_tests::simulate_small_board(root.path());
    let chunks = chunks(&sim);
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());

    let calm = uninterrupted();

    // The same input, killed with -9: right after the first suspend call reached the
    // platform (answered 500, so it is retried after the restart), with half a request
    // in flight, and right after a 202 before any snapshot could cover it; restarted
    // once with one worker instead of two.
    let receiver = Receiver::start(0, SECRET, vec![Reply::Status(500)]);
    let node_dir = root.path().join("crashy");
    let node = Node::new(&node_dir, &sim, &receiver.url("/suspend"), &node_dir);
    let mut svc = node.start();
    let mut killed_after_call = false;
    for (i, c) in chunks.iter().enumerate() {
        if i == 4 {
            let _unfinished = half_post(node.port, c);
            svc.kill9();
            node.write_config(&sim, &receiver.url("/suspend"), &node_dir, 1);
            svc = node.start();
        }
        node.post(&svc, c);
        if !killed_after_call && !receiver.calls().is_empty() {
            killed_after_call = true;
            svc.kill9();
            node.write_config(&sim, &receiver.url("/suspend"), &node_dir, 2);
            svc = node.start();
        }
        if i == 7 {
            svc.kill9();
            svc = node.start();
        }
    }
    assert!(killed_after_call, "no suspend call was made during the run");
    let incidents = node.settled_incidents(&svc);
    // The last start restored its parts from snapshots, and the log (in 64 KiB segments
    // here) was trimmed behind them: the run above is not a replay of the whole log.
    let (_, metrics) = http(node.port, "GET", "/metrics", b"").unwrap();
    assert!(
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cvguard_snapshot_restores_total{result=\"restored\"} "))
            .is_some_and(|n| n.parse::<u64>().unwrap() > 0),
        "no snapshot was restored:\n{metrics}"
    );
    let segments = std::fs::read_dir(node_dir.join("state/ingest")).unwrap().count();
    let logged: usize = chunks.iter().map(String::len).sum();
    assert!(
        segments < logged / 65536 / 2,
        "{segments} segments kept of {logged} bytes logged"
    );
    let log = svc.log_text();
    // Every account's daily values came through the crashes as they are without them.
    let histories = node.histories(&sim);
    assert!(
        calm.histories
            .values()
            .filter(|h| h["daily_values"].as_array().is_some_and(|d| d.len() == 2))
            .count()
            > 100,
        "the board's accounts have two days of history by its third day: {:?}",
        calm.histories.iter().take(3).collect::<Vec<_>>()
    );
    let differ: Vec<String> = histories
        .iter()
        .filter(|(account, h)| calm.histories.get(*account) != Some(*h))
        .map(|(account, h)| {
            let want = &calm.histories.get(account).map(|w| w["daily_values"].clone());
            format!("{account}: got {} want {want:?}", h["daily_values"])
        })
        .collect();
    assert!(
        differ.is_empty() && histories.len() == calm.histories.len(),
        "{differ:?}"
    );
    assert!(svc.sigterm(WAIT).success());

    assert_same(&summary(&incidents), &calm.incidents, &log);
    let calls = suspend_calls(&receiver);
    let calm_calls = calm.calls.clone();
    // Each account: the refused first call, then one that was delivered; never a second
    // suspension after a delivered one.
    assert_eq!(calls, calm_calls);
    let suspended: BTreeSet<&str> = incidents
        .iter()
        .filter(|i| i["suspended"] == true)
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(suspended.len(), calls.len());

    // The simulator's harvester is among them; the allowlisted partner is not.
    let labels = read_labels(&sim.join("labels.csv"));
    for l in labels.iter().filter(|l| l.expected == "suspend") {
        assert!(suspended.contains(l.key.as_str()), "{} not suspended", l.key);
    }
    assert!(!suspended.contains("partner-1"));

    let input = distinct_cvs_in_input(&sim);
    for i in &incidents {
        if i["rule"] == "search-scraping-1h" {
            continue; // counts events, not CVs
        }
        let key = (
            i["key_kind"].as_str().unwrap().to_string(),
            i["key"].as_str().unwrap().to_string(),
        );
        let most = input.get(&key).map_or(0, BTreeSet::len) as i64;
        assert!(
            i["latest_value"].as_i64().unwrap() <= most,
            "{i} above the input's {most}"
        );
    }

    // No alert twice; none that the uninterrupted run did not raise. The detector's own
    // health alarms (key_kind system: the store slow under this load, say) come as a
    // firing and a resolution of one episode: each at most once.
    let (system, detections): (Vec<_>, Vec<_>) = node.alerts().into_iter().partition(|a| a["key_kind"] == "system");
    let mut episodes = BTreeSet::new();
    for a in &system {
        let episode = (a["alert_id"].to_string(), a["status"].to_string());
        assert!(
            episodes.insert(episode.clone()),
            "a health alarm's {episode:?} twice: {system:?}"
        );
    }
    let crashy_alerts = alert_keys(&detections);
    let unique: BTreeSet<_> = crashy_alerts.iter().cloned().collect();
    let twice: Vec<_> = unique
        .iter()
        .filter(|k| crashy_alerts.iter().filter(|a| a == k).count() > 1)
        .collect();
    let shown: Vec<String> = node
        .alerts()
        .iter()
        .filter(|a| {
            twice
                .iter()
                .any(|(r, k)| a["rule"] == r.as_str() && a["key"] == k.as_str())
        })
        .map(|a| a.to_string())
        .collect();
    assert!(twice.is_empty(), "published twice: {twice:?}\n{}", shown.join("\n"));
    assert!(unique.is_subset(&calm.alerts));
}

/// The store on a disk that fills up: decisions wait (not ready, a metric, a system
/// alert), nothing is published unrecorded, and once space is freed every incident is
/// recorded and survives a kill -9.
#[test]
fn a_full_disk_freed_again_loses_no_incident() {
    let root = tempfile::tempdir().unwrap();
    let sim = cvguard_tests::simulate_small_board(root.path());
    let chunks = chunks(&sim);
    let disk = root.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs", disk.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "this test mounts a small tmpfs and needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());

    let calm = uninterrupted();

    let receiver = Receiver::start(0, SECRET, vec![Reply::Status(500)]);
    let node_dir = root.path().join("node");
    let node = Node::new(&node_dir, &sim, &receiver.url("/suspend"), &disk);
    let mut svc = node.start();
    // Fill the store's disk, leaving no room for a transaction.
    let filler = disk.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k"])
        .stderr(std::process::Stdio::null())
        .status();
    // The store fails; ingest goes on into the log (on another disk), decisions wait.
    for c in &chunks {
        let (code, text) = http(node.port, "POST", "/v1/events", c.as_bytes()).unwrap();
        assert_eq!(code, 202, "{text}");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, _) = http(node.port, "GET", "/readyz", b"").unwrap();
        let (_, metrics) = http(node.port, "GET", "/metrics", b"").unwrap();
        let failures: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("cvguard_store_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if code == 503 && failures > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never failed; log:\n{}",
            svc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The health watchdog raises the store's alarm within its one-second tick.
    let store_alarms = || -> Vec<_> {
        node.alerts()
            .into_iter()
            .filter(|a| a["rule"] == "store-unavailable")
            .collect()
    };
    while store_alarms().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no store-unavailable alert; log:\n{}",
            svc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let system = store_alarms();
    assert_eq!(system.len(), 1, "one system alert per outage");
    assert_eq!(system[0]["status"], "firing");
    // Nothing reached the platform or the sinks that the store does not know of.
    assert!(receiver.calls().is_empty());
    assert!(node.alerts().iter().all(|a| a["key_kind"] == "system"));

    // SIGTERM while the store is still down: the drain gives up at its deadline and says
    // so (exit non-zero) within the shutdown timeout (10 s here) and a few seconds.
    let status = svc.sigterm(Duration::from_secs(20));
    assert!(
        !status.success(),
        "a drain that could not record its decisions must not exit 0"
    );

    // Room again: a restart decides everything from the ingest log, and nothing is lost.
    std::fs::remove_file(&filler).unwrap();
    let mut svc = node.start();
    let incidents = node.settled_incidents(&svc);
    assert_same(&summary(&incidents), &calm.incidents, &svc.log_text());
    svc.kill9();
    let mut svc = node.start();
    node.wait_decided(&svc);
    assert_same(&summary(&node.incidents()), &calm.incidents, &svc.log_text());
    assert_eq!(suspend_calls(&receiver), calm.calls);
    assert!(svc.sigterm(WAIT).success());
}
