//! Responding: incidents in the store, the signed suspend webhook with its outbox,
//! safety rails, false positives and the export of the people to notify. The service
//! runs as a process (HTTP ingest); the platform is a real local HTTP receiver.

use std::path::PathBuf;
use std::time::Duration;

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::receiver::{Receiver, Reply};
use cvguard_tests::service::{free_port, http, Service};
use cvguard_tests::{cvguard, cvguard_ok};

const SECRET: &str = "test-secret-3f9a";
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

/// A service config: HTTP ingest, the shipped rules (or `rules`), SQLite (or `store`),
/// the suspend webhook at `suspend_url`, a JSONL sink.
fn env(suspend_url: Option<&str>, extra: &str, rules: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    let rules = rules
        .map(str::to_string)
        .unwrap_or_else(|| shipped[shipped.find("[allowlist]").unwrap()..].to_string());
    let suspend = suspend_url.map_or(String::new(), |u| {
        format!("[suspend]\nurl = \"{u}\"\nsecret_env = \"CVGUARD_TEST_SUSPEND_SECRET\"\ntimeout = \"1s\"\nmax_attempts = 6\n")
    });
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n{suspend}{extra}\n[[sinks]]\nkind = \"jsonl\"\npath = \"{d}/alerts.jsonl\"\n{rules}",
        d = dir.path().display()
    );
    let config = dir.path().join("cvguard.toml");
    std::fs::write(&config, text).unwrap();
    Env { dir, port, config }
}

impl Env {
    fn start(&self) -> Service {
        let mut s = Service::start_env(
            &self.config,
            self.port,
            &self.dir.path().join("serve.log"),
            &[("CVGUARD_TEST_SUSPEND_SECRET", SECRET)],
        );
        s.wait_ready(WAIT);
        s
    }

    fn post(&self, lines: &[String]) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let (code, text) = http(self.port, "POST", "/v1/events", body.as_bytes()).unwrap();
        assert_eq!(code, 202, "{text}");
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        let out = cvguard_ok(&[
            "incidents",
            "list",
            "--format",
            "json",
            "--config",
            self.config.to_str().unwrap(),
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn show(&self, id: &str) -> serde_json::Value {
        let out = cvguard_ok(&["incidents", "show", id, "--config", self.config.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_incident(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..150 {
            if let Some(i) = self.incidents().into_iter().find(|i| pred(i)) {
                return i;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no such incident; have {:?}", self.incidents());
    }

    fn sink_alerts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn harvest(n: u32) -> Vec<String> {
    (0..n).map(|i| harvest_batch("harvester-1", i)).collect()
}

fn suspend_calls(r: &Receiver) -> Vec<cvguard_tests::receiver::Received> {
    r.calls()
        .into_iter()
        .filter(|c| c.body.contains("\"action\":\"suspend\""))
        .collect()
}

#[test]
fn a_500_then_200_suspends_once_with_a_signed_idempotent_call_and_the_export_lists_every_cv() {
    let receiver = Receiver::start(0, SECRET, vec![Reply::Status(500)]);
    let e = env(Some(&receiver.url("/internal/suspend")), "", None);
    let _svc = e.start();
    e.post(&harvest(22));
    let calls = receiver.wait_for(2, WAIT);
    assert_eq!(calls.len(), 2, "one 500, then the retry");
    assert!(calls.iter().all(|c| c.signature_ok), "signatures verify");
    assert!(calls.iter().all(|c| c.path == "/internal/suspend"));
    let keys: Vec<&str> = calls.iter().map(|c| c.header("Idempotency-Key").unwrap()).collect();
    assert_eq!(keys[0], keys[1], "the retry carries the same key");
    let body = calls[1].json();
    assert_eq!(body["action"], "suspend");
    assert_eq!(body["account_id"], "harvester-1");
    assert_eq!(body["rule"], "mass-harvest-24h");
    assert_eq!(body["value"], 4000);
    assert_eq!(body["threshold"], 4000);
    // The key names the incident, the kind of call and the account, and nothing else.
    assert_eq!(
        keys[0],
        format!("{}:suspend:harvester-1", body["incident_id"].as_str().unwrap())
    );
    assert!(body["detected_at"].as_str().unwrap().ends_with('Z'));

    let inc = e.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["suspended"] == true);
    let id = inc["id"].as_str().unwrap();
    let detail = e.show(id);
    let outcomes: Vec<&str> = detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["pending", "delivered"]);
    assert!(detail["notify_authority_by"].as_str().unwrap() > detail["opened_at"].as_str().unwrap());

    // The export: every distinct CV touched from the window start, 22 batches x 200.
    std::thread::sleep(Duration::from_millis(500));
    let out = cvguard_ok(&[
        "incidents",
        "export",
        id,
        "--format",
        "csv",
        "--config",
        e.config.to_str().unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("cv_id,first_access,action,visibility"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 22 * 200);
    let anonymous = rows.iter().filter(|r| r.ends_with(",anonymous")).count();
    assert_eq!(anonymous, 8 * 200, "batches 0, 3, ..., 21 were anonymous");
    let detail = e.show(id);
    assert_eq!(detail["cvs_by_visibility"]["named"], 14 * 200);
    assert_eq!(detail["cvs_by_visibility"]["anonymous"], 8 * 200);
    assert!(rows[0].starts_with("cv-0000000,2024-05-04T04:00:00.000Z,cv_download,"));
}

#[test]
fn two_instances_sharing_postgresql_record_one_incident_and_make_one_suspend_call() {
    let db = cvguard_tests::pg::PgDatabase::create("cvguard_e2e");
    let receiver = Receiver::start(0, SECRET, vec![]);
    let a = env(Some(&receiver.url("/s")), "", None);
    let b = env(Some(&receiver.url("/s")), "", None);
    for e in [&a, &b] {
        let text = std::fs::read_to_string(&e.config).unwrap();
        let text = text.replace(&format!("sqlite://{}/cvguard.db", e.dir.path().display()), &db.url());
        std::fs::write(&e.config, text).unwrap();
    }
    let _sa = a.start();
    let _sb = b.start();
    // The same harvest reaches both (an at-least-once upstream): one incident, one call.
    a.post(&harvest(21));
    b.post(&harvest(21));
    receiver.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(suspend_calls(&receiver).len(), 1);
    let from_a = a.incidents();
    assert_eq!(
        from_a.iter().filter(|i| i["rule"] == "mass-harvest-24h").count(),
        1,
        "{from_a:?}"
    );
    assert_eq!(b.incidents().len(), from_a.len(), "both read the same store");
    a.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["suspended"] == true);
}

#[test]
fn a_400_is_not_retried_is_recorded_as_failed_and_alerted() {
    let receiver = Receiver::start(0, SECRET, vec![Reply::Status(400)]);
    let e = env(Some(&receiver.url("/s")), "", None);
    let _svc = e.start();
    e.post(&harvest(21));
    receiver.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.calls().len(), 1, "no retry after a 400");
    let inc = e.wait_incident(|i| i["rule"] == "mass-harvest-24h");
    let detail = e.show(inc["id"].as_str().unwrap());
    assert_eq!(detail["suspended"], false);
    assert_eq!(
        detail["actions"].as_array().unwrap().last().unwrap()["outcome"],
        "failed"
    );
    let alerts = e.sink_alerts();
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "suspend-webhook-failed" && a["key"] == "harvester-1"),
        "{alerts:?}"
    );
}

#[test]
fn a_receiver_that_is_down_then_up_and_one_slower_than_the_timeout_still_get_one_suspension() {
    // Down: nothing listens on the port yet.
    let port = free_port();
    let e = env(Some(&format!("http://127.0.0.1:{port}/s")), "", None);
    let _svc = e.start();
    e.post(&harvest(21));
    e.wait_incident(|i| i["rule"] == "mass-harvest-24h");
    std::thread::sleep(Duration::from_millis(1500));
    // Up, but the first answer comes after the 1 s timeout.
    let receiver = Receiver::start(port, SECRET, vec![Reply::Slow(Duration::from_secs(3), 200)]);
    let calls = receiver.wait_for(2, Duration::from_secs(40));
    assert!(calls.len() >= 2, "{calls:?}");
    let keys: std::collections::BTreeSet<&str> = calls.iter().map(|c| c.header("Idempotency-Key").unwrap()).collect();
    assert_eq!(keys.len(), 1, "every attempt is the same suspension");
    e.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["suspended"] == true);
}

#[test]
fn kill_9_between_decision_and_webhook_ends_in_exactly_one_suspend_call() {
    let port = free_port();
    let e = env(Some(&format!("http://127.0.0.1:{port}/s")), "", None);
    let mut svc = e.start();
    e.post(&harvest(21));
    // The decision is durable (incident and outbox row) but the platform is down.
    e.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["action"] == "suspend");
    svc.kill9();
    let receiver = Receiver::start(port, SECRET, vec![]);
    let _svc = e.start();
    let calls = receiver.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let calls_now = suspend_calls(&receiver);
    assert_eq!(calls_now.len(), 1, "{calls:?}");
    assert!(calls_now[0].signature_ok);
    e.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["suspended"] == true);
    // Restarting the service replays nothing into a second call.
    assert_eq!(
        e.incidents().iter().filter(|i| i["rule"] == "mass-harvest-24h").count(),
        1
    );
}

#[test]
fn the_blast_radius_limit_turns_the_third_suspension_into_one_critical_alert() {
    let rules = r#"
[[rules]]
name = "everyone"
actions = ["cv_view"]
group_by = "account_id"
measure = "events"
window = "1h"
threshold = 1
response = "suspend"
severity = "critical"
"#;
    let receiver = Receiver::start(0, SECRET, vec![]);
    let e = env(Some(&receiver.url("/s")), "", Some(rules));
    std::fs::write(
        &e.config,
        std::fs::read_to_string(&e.config)
            .unwrap()
            .replace("max_attempts = 6\n", "max_attempts = 6\nmax_per_hour = 2\n"),
    )
    .unwrap();
    let _svc = e.start();
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(r#"{{"ts":"2024-05-04T06:00:0{i}Z","account_id":"acc-{i}","action":"cv_view","cv_id":"cv-{i}"}}"#)
        })
        .collect();
    for l in &lines {
        e.post(std::slice::from_ref(l));
    }
    receiver.wait_for(2, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(suspend_calls(&receiver).len(), 2);
    let incidents = e.incidents();
    assert_eq!(incidents.len(), 5);
    let limited: Vec<_> = incidents.iter().filter(|i| i["reason"] == "suspension_limit").collect();
    assert_eq!(limited.len(), 3, "{incidents:?}");
    assert!(limited.iter().all(|i| i["action"] == "alert"));
    let alerts = e.sink_alerts();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a["rule"] == "suspension-limit-reached")
            .count(),
        1,
        "{alerts:?}"
    );
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a["reason"] == "suspension_limit" && a["rule"] == "everyone")
            .count(),
        3
    );
}

#[test]
fn false_positive_unsuspends_and_the_cooldown_keeps_the_account_from_being_suspended_again() {
    let receiver = Receiver::start(0, SECRET, vec![]);
    let e = env(Some(&receiver.url("/s")), "", None);
    let _svc = e.start();
    e.post(&harvest(21));
    let inc = e.wait_incident(|i| i["rule"] == "mass-harvest-24h" && i["suspended"] == true);
    let id = inc["id"].as_str().unwrap().to_string();
    let cfg = e.config.to_str().unwrap();
    cvguard_ok(&[
        "incidents",
        "set",
        &id,
        "false-positive",
        "--actor",
        "soc-bob",
        "--note",
        "agency",
        "--config",
        cfg,
    ]);
    let calls = receiver.wait_for(2, WAIT);
    let unsuspend: Vec<_> = calls
        .iter()
        .filter(|c| c.body.contains("\"action\":\"unsuspend\""))
        .collect();
    assert_eq!(unsuspend.len(), 1);
    assert!(unsuspend[0].signature_ok);
    assert_ne!(
        unsuspend[0].header("Idempotency-Key"),
        calls[0].header("Idempotency-Key")
    );
    e.wait_incident(|i| i["id"] == id.as_str() && i["suspended"] == false && i["status"] == "false_positive");
    let detail = e.show(&id);
    let changes: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["actor"].as_str().unwrap())
        .collect();
    assert_eq!(changes, vec!["cvguard", "soc-bob"]);
    // A second harvest by the same account a day later: alert only, reason cooldown.
    let later: Vec<String> = (0..21)
        .map(|i| {
            harvest_batch("harvester-1", i)
                .replace("\"ts\":1714", "\"ts\":1715")
                .replace("cv-0", "cv-9")
        })
        .collect();
    e.post(&later);
    let again = e.wait_incident(|i| i["id"] != id.as_str() && i["rule"] == "mass-harvest-24h");
    assert_eq!(again["action"], "alert");
    assert_eq!(again["reason"], "cooldown");
    assert_eq!(suspend_calls(&receiver).len(), 1);
    // Bad transitions are refused.
    let out = cvguard(&["incidents", "set", &id, "acknowledged", "--config", cfg]);
    assert!(!out.status.success());
}

/// The incident id of the first suspend call the receiver saw.
fn incident_of(call: &cvguard_tests::receiver::Received) -> String {
    call.json()["incident_id"].as_str().unwrap().to_string()
}

fn mark_false_positive(e: &Env, id: &str) {
    cvguard_ok(&[
        "incidents",
        "set",
        id,
        "false-positive",
        "--actor",
        "soc-bob",
        "--config",
        e.config.to_str().unwrap(),
    ]);
}

/// Sets the suspend call's timeout.
fn suspend_timeout(e: &Env, timeout: &str) {
    let text = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(
        &e.config,
        text.replace(
            "timeout = \"1s\"\nmax_attempts",
            &format!("timeout = \"{timeout}\"\nmax_attempts"),
        ),
    )
    .unwrap();
}

#[test]
fn a_false_positive_marked_while_the_suspend_call_is_in_flight_is_undone_when_the_platform_suspends_anyway() {
    // The platform takes 4 s to answer 200; the SOC marks the incident a false positive meanwhile.
    let receiver = Receiver::start(0, SECRET, vec![Reply::Slow(Duration::from_secs(4), 200)]);
    let e = env(Some(&receiver.url("/s")), "", None);
    suspend_timeout(&e, "15s");
    let _svc = e.start();
    e.post(&harvest(21));
    let first = receiver.wait_for(1, WAIT);
    let id = incident_of(&first[0]);
    mark_false_positive(&e, &id);
    assert_eq!(receiver.calls().len(), 1, "still in flight when it was marked");
    // The suspension happened all the same: an unsuspend undoes it.
    let calls = receiver.wait_for(2, WAIT);
    let unsuspend: Vec<_> = calls
        .iter()
        .filter(|c| c.body.contains("\"action\":\"unsuspend\""))
        .collect();
    assert_eq!(unsuspend.len(), 1, "{calls:?}");
    assert!(unsuspend[0].signature_ok);
    assert_eq!(
        unsuspend[0].header("Idempotency-Key"),
        Some(format!("{id}:unsuspend:harvester-1").as_str())
    );
    assert_eq!(unsuspend[0].json()["account_id"], "harvester-1");
    assert_eq!(unsuspend[0].json()["reason"], "false_positive");
    e.wait_incident(|i| i["id"] == id.as_str() && i["status"] == "false_positive" && i["suspended"] == false);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(suspend_calls(&receiver).len(), 1, "the suspend was not sent again");
    let actions = e.show(&id)["actions"].as_array().unwrap().clone();
    let outcomes: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("suspend", "pending"),
            ("suspend", "delivered"),
            ("unsuspend", "pending"),
            ("unsuspend", "delivered")
        ]
    );
    assert!(
        actions[1]["detail"]
            .as_str()
            .unwrap()
            .contains("after the incident was marked false positive"),
        "{actions:?}"
    );
}

#[test]
fn a_suspend_call_cancelled_by_a_false_positive_while_it_timed_out_is_not_sent_again() {
    // The first answer comes after the 3 s timeout; the incident is marked a false positive
    // before that. The retry the timeout asks for must not revive the cancelled call.
    let receiver = Receiver::start(0, SECRET, vec![Reply::Slow(Duration::from_secs(6), 200)]);
    let e = env(Some(&receiver.url("/s")), "", None);
    suspend_timeout(&e, "3s");
    let _svc = e.start();
    e.post(&harvest(21));
    let first = receiver.wait_for(1, WAIT);
    let id = incident_of(&first[0]);
    mark_false_positive(&e, &id);
    // Past the timeout and any backoff (0.25-0.5 s after the first attempt).
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(suspend_calls(&receiver).len(), 1, "{:?}", receiver.calls());
    let inc = e.wait_incident(|i| i["id"] == id.as_str());
    assert_eq!(inc["status"], "false_positive");
    assert_eq!(inc["suspended"], false);
}

#[test]
fn a_redirect_is_not_followed_by_the_suspend_call_nor_by_the_webhook_sink() {
    // Both answer 302 to a path that would answer 200: followed, it would count as done.
    let platform = Receiver::start(0, SECRET, vec![Reply::Redirect(302, "/followed")]);
    let hook = Receiver::start(0, SECRET, vec![Reply::Redirect(307, "/followed")]);
    let extra = format!(
        "[[sinks]]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_env = \"CVGUARD_TEST_SUSPEND_SECRET\"\ntimeout = \"1s\"\n",
        hook.url("/alerts")
    );
    let e = env(Some(&platform.url("/s")), &extra, None);
    let _svc = e.start();
    e.post(&harvest(21));
    let inc = e.wait_incident(|i| i["rule"] == "mass-harvest-24h");
    platform.wait_for(1, WAIT);
    hook.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let paths = |r: &Receiver| r.calls().iter().map(|c| c.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&platform), vec!["/s"], "not followed, not retried");
    let hook_paths = paths(&hook);
    assert!(!hook_paths.iter().any(|p| p == "/followed"), "{hook_paths:?}");
    assert_eq!(hook_paths[0], "/alerts");
    // The first alert was given up after the redirect, not retried: each alert arrives once.
    let ids: Vec<String> = hook
        .calls()
        .iter()
        .map(|c| c.header("Idempotency-Key").unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let detail = e.show(inc["id"].as_str().unwrap());
    assert_eq!(detail["suspended"], false);
    let last = detail["actions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "failed");
    assert!(last["detail"].as_str().unwrap().contains("302"), "{last}");
    assert!(
        e.sink_alerts()
            .iter()
            .any(|a| a["rule"] == "suspend-webhook-failed" && a["key"] == "harvester-1"),
        "{:?}",
        e.sink_alerts()
    );
}

#[test]
fn a_webhook_sink_whose_secret_variable_is_unset_refuses_to_start() {
    let extra = "[[sinks]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_env = \"CVGUARD_TEST_UNSET_SINK_SECRET\"\n";
    let e = env(None, extra, None);
    let mut child = std::process::Command::new(cvguard_tests::bin())
        .args(["serve", "--config", e.config.to_str().unwrap()])
        .env_remove("CVGUARD_TEST_UNSET_SINK_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started with a webhook sink that would send unsigned");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("sinks[0].secret_env") && err.contains("CVGUARD_TEST_UNSET_SINK_SECRET"),
        "{err}"
    );
}

#[test]
fn without_a_secret_in_the_environment_a_suspend_url_is_a_config_error() {
    let e = env(Some("http://127.0.0.1:1/s"), "", None);
    let out = std::process::Command::new(cvguard_tests::bin())
        .args(["serve", "--config", e.config.to_str().unwrap()])
        .env_remove("CVGUARD_TEST_SUSPEND_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("suspend.secret_env") && err.contains("CVGUARD_TEST_SUSPEND_SECRET"),
        "{err}"
    );
    assert!(!err.contains(SECRET));
}

/// A real Prometheus Alertmanager from Debian's package (scripts/prometheus-tools.sh
/// installs it), on a free port, killed on drop.
struct Alertmanager {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one with `config` (YAML) and waits until it is ready; None (the test skips,
    /// saying why) when there is no binary.
    fn start(config: &str) -> Option<Alertmanager> {
        let Some(bin) = ["prometheus-alertmanager", "alertmanager"].into_iter().find(|b| {
            std::process::Command::new("which")
                .arg(b)
                .output()
                .is_ok_and(|o| o.status.success())
        }) else {
            eprintln!("SKIPPED: no alertmanager binary; scripts/prometheus-tools.sh could not install Debian's prometheus-alertmanager");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let file = dir.path().join("am.yml");
        std::fs::write(&file, config).unwrap();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.path={}", dir.path().join("am-data").display()))
            .arg("--cluster.listen-address=")
            // Times in its API in UTC, as `epoch_ms` reads them.
            .env("TZ", "UTC")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager { port, child, _dir: dir };
        for _ in 0..100 {
            if http(port, "GET", "/-/ready", b"").is_ok_and(|(c, _)| c == 200) {
                return Some(am);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Alertmanager did not get ready on port {port}");
    }

    fn sink(&self) -> String {
        format!(
            "[[sinks]]\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.port
        )
    }

    /// Its active alerts, from its own API (resolved ones are not listed).
    fn alerts(&self) -> Vec<serde_json::Value> {
        let (code, body) = http(self.port, "GET", "/api/v2/alerts", b"").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn alert(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        self.alerts().into_iter().find(|a| pred(a))
    }

    fn wait_alert(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..150 {
            if let Some(a) = self.alert(&pred) {
                return a;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no such alert in Alertmanager; it has {:?}", self.alerts());
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Epoch milliseconds of a UTC time as Alertmanager writes it (`2024-05-04T05:01:46.748Z`).
fn epoch_ms(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    assert!(t.ends_with('Z'), "not UTC: {t}");
    let frac = t[19..t.len() - 1].trim_start_matches('.');
    let ms = format!("{frac:0<3}")[..3].parse::<i64>().unwrap();
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + ms
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn alerts_reach_a_real_alertmanager_through_its_v2_api() {
    let Some(am) = Alertmanager::start("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n") else {
        return;
    };
    let e = env(None, &am.sink(), None);
    let _svc = e.start();
    e.post(&harvest(21));
    let a = am.wait_alert(|a| a["labels"]["alertname"] == "mass-harvest-24h" && a["labels"]["key"] == "harvester-1");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["key_kind"], "account_id");
    assert_eq!(a["annotations"]["action"], "suspend");
    assert_eq!(a["annotations"]["threshold"], "4000");
    assert!(a["annotations"]["value"].as_str().unwrap().parse::<u64>().unwrap() >= 4000);
}

/// Issue #13: Alertmanager resolves an alert without `endsAt` by itself after its
/// `resolve_timeout`. An open incident's alert must stay active (it ends 4 resend
/// intervals after each post, and is posted again while open), and be resolved when the
/// incident is. resolve_timeout is 5 s and the resend interval 1 s here: each post's
/// `endsAt` is only 4 s ahead, so an alert still active after 10 s was posted again.
#[test]
fn an_open_incidents_alert_outlives_alertmanagers_resolve_timeout_and_resolves_when_the_incident_does() {
    const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
    // Alertmanager's own notifications, to see the resolve reach the SOC too.
    let soc = Receiver::start(0, SECRET, vec![]);
    let config = format!(
        "global:\n  resolve_timeout: {}s\nroute:\n  receiver: soc\n  group_by: [incident_id]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: soc\n    webhook_configs:\n      - url: {}\n        send_resolved: true\n",
        RESOLVE_TIMEOUT.as_secs(),
        soc.url("/alertmanager")
    );
    let Some(am) = Alertmanager::start(&config) else {
        return;
    };
    let e = env(None, &(am.sink() + "resend_interval = \"1s\"\n"), None);
    let _svc = e.start();
    e.post(&harvest(21));
    let incident = e.wait_incident(|i| i["rule"] == "mass-harvest-24h");
    let id = incident["id"].as_str().unwrap().to_string();
    let of_incident = |a: &serde_json::Value| a["labels"]["incident_id"] == id.as_str();

    let a = am.wait_alert(of_incident);
    let arrived = std::time::Instant::now();
    // One label set per incident, stable for its life; no CV id, no evidence.
    assert_eq!(
        a["labels"],
        serde_json::json!({"alertname": "mass-harvest-24h", "incident_id": id, "key_kind": "account_id",
                           "key": "harvester-1", "severity": "critical"})
    );
    let first_ends_at = epoch_ms(a["endsAt"].as_str().unwrap());
    assert!(first_ends_at > now_ms(), "endsAt is set, in the future: {a}");

    // Active at every look until well past the resolve timeout.
    let mut last = a;
    while arrived.elapsed() < RESOLVE_TIMEOUT * 2 {
        last = am
            .alert(of_incident)
            .unwrap_or_else(|| panic!("the open incident's alert ended after {:?}", arrived.elapsed()));
        assert_eq!(last["status"]["state"], "active", "{last}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Posted again while open: its end moved on, past the first post's.
    assert!(
        epoch_ms(last["endsAt"].as_str().unwrap()) > first_ends_at + 4_000,
        "not re-sent: {last}"
    );
    cvguard_ok(&[
        "incidents",
        "set",
        &id,
        "resolved",
        "--actor",
        "soc-alice",
        "--config",
        e.config.to_str().unwrap(),
    ]);
    let ends_at = epoch_ms(last["endsAt"].as_str().unwrap());
    let mut gone = false;
    for _ in 0..150 {
        if am.alert(of_incident).is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone,
        "no resolve reached Alertmanager within 15 s of the incident's close (serve spawns \
         cvguard_respond::alertmanager::run, which posts it)"
    );
    assert!(now_ms() < ends_at, "resolved by cvguard, not expired at its endsAt");
    // And Alertmanager told its receiver so.
    let mut resolved = None;
    for _ in 0..150 {
        resolved = soc.calls().into_iter().map(|c| c.json()).find(|n| {
            n["status"] == "resolved"
                && n["alerts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["labels"]["incident_id"] == id.as_str()))
        });
        if resolved.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resolved.is_some(), "no resolved notification; got {:?}", soc.calls());
}

#[test]
fn the_generic_webhook_sink_posts_signed_alerts_and_a_failing_one_never_blocks_detection() {
    let good = Receiver::start(0, SECRET, vec![Reply::Status(503)]);
    // A sink that answers nothing useful at all: a port with nothing listening.
    let dead = free_port();
    let extra = format!(
        "[[sinks]]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_env = \"CVGUARD_TEST_SUSPEND_SECRET\"\ntimeout = \"1s\"\n[[sinks]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/x\"\ntimeout = \"1s\"\n",
        good.url("/alerts")
    );
    let e = env(None, &extra, None);
    let _svc = e.start();
    e.post(&harvest(21));
    // Detection and the JSONL sink go on while one webhook is down.
    e.wait_incident(|i| i["rule"] == "mass-harvest-24h");
    let calls = good.wait_for(3, WAIT);
    let alerts: Vec<serde_json::Value> = calls.iter().skip(1).map(|c| c.json()).collect();
    assert!(calls.iter().all(|c| c.signature_ok), "signed with the sink's secret");
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "mass-harvest-24h" && a["action"] == "suspend"),
        "{alerts:?}"
    );
    let retried = &calls[1];
    assert_eq!(
        retried.header("Idempotency-Key"),
        calls[0].header("Idempotency-Key"),
        "the 503 was retried"
    );
    assert!(e.sink_alerts().iter().any(|a| a["rule"] == "mass-harvest-24h"));
}
