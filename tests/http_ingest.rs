//! `cvguard serve` with the embedded default source: NDJSON over `POST /v1/events`.

use std::time::Duration;

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::service::{account_window, free_port, http, Service};

fn config(dir: &std::path::Path, port: u16, max_body: usize) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = {max_body}\n[state]\ndir = \"{}\"\n[store]\nurl = \"sqlite://{}/cvguard.db\"\n[[sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n{rules}",
            dir.join("state").display(),
            dir.display(),
            dir.join("alerts.jsonl").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn ingest_answers_counts_detects_and_keeps_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, 1 << 20);
    let mut svc = Service::start(&cfg, port, &dir.path().join("serve.log"));
    svc.wait_ready(Duration::from_secs(30));

    let body: String = (0..10)
        .map(|i| harvest_batch("harvester-1", i) + "\n")
        .collect::<String>()
        + "{broken\n[1]\n{\"ts\":1,\"account_id\":\"a\"}\n";
    let (code, text) = http(port, "POST", "/v1/events", body.as_bytes()).unwrap();
    assert_eq!(code, 202, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["accepted"], 10);
    assert_eq!(report["rejected"]["invalid_json"], 1);
    assert_eq!(report["rejected"]["not_an_object"], 1);
    assert_eq!(report["rejected"]["missing_action"], 1);

    // Nothing usable: 400 with the same report. Too big: 413.
    let (code, text) = http(port, "POST", "/v1/events", b"nope\n").unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("invalid_json"));
    let big = vec![b' '; (1 << 20) + 10];
    assert_eq!(http(port, "POST", "/v1/events", &big).unwrap().0, 413);

    // A clean stop snapshots the windows; after a restart the next 10 batches complete
    // the 4,000 and the harvester is suspended exactly at batch 20.
    assert!(svc.sigterm(Duration::from_secs(30)).success());
    let mut svc = Service::start(&cfg, port, &dir.path().join("serve.log"));
    svc.wait_ready(Duration::from_secs(30));
    let body: String = (10..25).map(|i| harvest_batch("harvester-1", i) + "\n").collect();
    assert_eq!(http(port, "POST", "/v1/events", body.as_bytes()).unwrap().0, 202);
    let alerts_path = dir.path().join("alerts.jsonl");
    let mut suspend = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&alerts_path).unwrap_or_default();
        suspend = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|a| a["action"] == "suspend");
        if suspend.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let suspend = suspend.unwrap_or_else(|| panic!("no suspension; log:\n{}", svc.log_text()));
    assert_eq!(suspend["value"], 4000);
    assert_eq!(suspend["event_id"], "harvester-1-b19");
    assert!(svc.sigterm(Duration::from_secs(30)).success());
}

/// The counters mean what docs/METRICS.md says: each event once, whichever key kinds it
/// reaches, rejections at ingest included, late ones apart, and the 202 says how many
/// were late (#13).
#[test]
fn metrics_count_each_event_once_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, 1 << 20);
    let mut svc = Service::start(&cfg, port, &dir.path().join("serve.log"));
    svc.wait_ready(Duration::from_secs(30));
    let event = |sec: i64, cv: usize| {
        serde_json::json!({
            "ts": (1_714_780_800 + sec) * 1000, "account_id": "acct-a", "org_id": "org-a",
            "user_id": "user-a", "ip": "192.0.2.7", "action": "cv_view", "cv_id": format!("cv-{cv}"),
            "event_id": format!("e-{sec}")
        })
        .to_string()
    };
    let mut body: String = (0..10).map(|i| event(i, i as usize) + "\n").collect();
    body += "{broken\n{\"ts\":\"2024-05-04T00:00:00Z\",\"account_id\":\"a\"}\n";
    body += &serde_json::json!({"ts": "2099-01-01T00:00:00Z", "account_id": "a", "action": "cv_view"}).to_string();
    let (code, text) = http(port, "POST", "/v1/events", body.as_bytes()).unwrap();
    assert_eq!(code, 202, "{text}");
    // Three of them delivered again (a producer's retry): counted once (#14).
    let again: String = (0..3).map(|i| event(i, i as usize) + "\n").collect();
    let (code, text) = http(port, "POST", "/v1/events", again.as_bytes()).unwrap();
    assert_eq!(code, 202, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["duplicates"].as_u64()),
        (Some(3), Some(3)),
        "{text}"
    );
    // Ten minutes before the newest: behind the watermark (allowed lateness 5 minutes).
    let (code, text) = http(port, "POST", "/v1/events", (event(-600, 99) + "\n").as_bytes()).unwrap();
    assert_eq!(code, 202, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["late"].as_u64()),
        (Some(1), Some(1)),
        "{text}"
    );

    let (_, metrics) = http(port, "GET", "/metrics", b"").unwrap();
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert_eq!(value("cvguard_events_total{outcome=\"accepted\"}"), 10);
    assert_eq!(value("cvguard_events_total{outcome=\"late\"}"), 1);
    assert_eq!(value("cvguard_events_total{outcome=\"duplicate\"}"), 3);
    assert_eq!(value("cvguard_events_total{outcome=\"rejected\"}"), 3);
    assert_eq!(value("cvguard_events_late_total"), 1);
    assert_eq!(value("cvguard_events_rejected_total{reason=\"invalid_json\"}"), 1);
    assert_eq!(value("cvguard_events_rejected_total{reason=\"missing_action\"}"), 1);
    assert_eq!(value("cvguard_events_rejected_total{reason=\"future_ts\"}"), 1);
    assert_eq!(value("cvguard_events_by_action_total{action=\"cv_view\"}"), 14);
    assert_eq!(value("cvguard_suspensions_total{outcome=\"queued\"}"), 0);
    assert_eq!(value("cvguard_store_errors_total{operation=\"open_incident\"}"), 0);
    assert_eq!(value("cvguard_ingest_refused_total{reason=\"busy\"}"), 0);
    assert_eq!(value("cvguard_ingest_in_flight_bytes"), 0);
    assert!(svc.sigterm(Duration::from_secs(30)).success());
}

/// A body is read whole before ingest can weigh it against `max_in_flight_bytes`, so at
/// most a few uploads are read at once: four clients trickling their bodies hold every
/// turn, and a fifth is told to retry instead of adding its body to memory (#13).
#[test]
fn uploads_read_at_once_are_bounded_and_the_rest_told_to_retry() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, 1 << 20);
    let mut svc = Service::start(&cfg, port, &dir.path().join("serve.log"));
    svc.wait_ready(Duration::from_secs(30));
    let trickling: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{\"ts\":")
                .unwrap();
            s
        })
        .collect();
    // Each of them holds a turn only once the server took it: poll until a fifth is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = harvest_batch("h", 0) + "\n";
        write!(
            s,
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "never refused: {answer}");
    };
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    // Once the trickling clients go, ingest takes bodies again.
    drop(trickling);
    let body = harvest_batch("h", 1) + "\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http(port, "POST", "/v1/events", body.as_bytes()).unwrap().0 != 202 {
        assert!(std::time::Instant::now() < deadline, "ingest did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(svc.sigterm(Duration::from_secs(30)).success());
}

/// The 24-hour distinct-CV count the service reports for an account.
fn mass_harvest_value(port: u16, account: &str) -> serde_json::Value {
    account_window(port, account, "mass-harvest-24h")["value"].clone()
}

/// Starts `cvguard serve` with these arguments and expects it to refuse: its exit status
/// and stderr.
fn refused_start(config: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(cvguard_tests::bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(args)
        .current_dir(cvguard_tests::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second service must not start; stderr:\n{stderr}"
    );
    stderr
}

/// Two processes on one state folder would both append to the ingest log and overwrite
/// each other's snapshots; a second start on the same port or pid file must leave the
/// running service's files alone. Each is refused before it opens anything, and a kill -9
/// of the holder never leaves the folder locked.
#[test]
fn a_second_service_is_refused_and_the_first_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let (port, other_port) = (free_port(), free_port());
    let cfg = config(dir.path(), port, 1 << 20);
    let pidfile = dir.path().join("cvguard.pid");
    let pidfile_arg = pidfile.to_str().unwrap();
    let log = dir.path().join("serve.log");
    let mut first = Service::start_with(&cfg, port, &log, &[], &["--pidfile", pidfile_arg]);
    first.wait_ready(Duration::from_secs(30));
    let first_pid = first.pid().to_string();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), first_pid);
    let body: String = (0..10).map(|i| harvest_batch("harvester-1", i) + "\n").collect();
    assert_eq!(http(port, "POST", "/v1/events", body.as_bytes()).unwrap().0, 202);

    // Same state folder, another port: refused, naming the holder.
    let same_state = dir.path().join("same-state.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &same_state,
        text.replace(&format!(":{port}\""), &format!(":{other_port}\"")),
    )
    .unwrap();
    let stderr = refused_start(&same_state, &[]);
    assert!(stderr.contains("is in use by another cvguard process"), "{stderr}");
    assert!(stderr.contains(&format!("pid {first_pid}, cvguard serve")), "{stderr}");

    // Another state folder, the same port and pid file: refused at the address, before
    // restoring or creating any state, and the pid file still names the first.
    let other_state = dir.path().join("other-state");
    let same_port = dir.path().join("same-port.toml");
    std::fs::write(
        &same_port,
        text.replace(
            &dir.path().join("state").display().to_string(),
            &other_state.display().to_string(),
        ),
    )
    .unwrap();
    let stderr = refused_start(&same_port, &["--pidfile", pidfile_arg]);
    assert!(stderr.contains(&format!("binding 127.0.0.1:{port}")), "{stderr}");
    assert!(
        !other_state.join("ingest").exists(),
        "a refused start opened an ingest log"
    );
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), first_pid);

    // Another folder and port, the same pid file: refused while its process runs.
    let other_everything = dir.path().join("other.toml");
    let text_other = std::fs::read_to_string(&same_port).unwrap();
    std::fs::write(
        &other_everything,
        text_other.replace(&format!(":{port}\""), &format!(":{other_port}\"")),
    )
    .unwrap();
    let stderr = refused_start(&other_everything, &["--pidfile", pidfile_arg]);
    assert!(
        stderr.contains(&format!("names process {first_pid}, which is running")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), first_pid);

    // The first service took every event: more are acknowledged, then it dies hard. The
    // kernel released its lock, so a restart on the folder (and the stale pid file) works
    // and counts all 15 batches.
    let body: String = (10..15).map(|i| harvest_batch("harvester-1", i) + "\n").collect();
    assert_eq!(http(port, "POST", "/v1/events", body.as_bytes()).unwrap().0, 202);
    assert_eq!(mass_harvest_value(port, "harvester-1"), 3000);
    first.kill9();
    let mut again = Service::start_with(&cfg, port, &log, &[], &["--pidfile", pidfile_arg]);
    again.wait_ready(Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        again.pid().to_string()
    );
    assert_eq!(mass_harvest_value(port, "harvester-1"), 3000);
    assert!(again.sigterm(Duration::from_secs(30)).success());
    assert!(!pidfile.exists(), "a clean stop removes its pid file");

    // A stale pid file whose pid went to another program (pid 1, as in a container after
    // a crash) does not keep the service from starting.
    std::fs::write(&pidfile, "1\n").unwrap();
    let mut after_crash = Service::start_with(&cfg, port, &log, &[], &["--pidfile", pidfile_arg]);
    after_crash.wait_ready(Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        after_crash.pid().to_string()
    );
    assert!(after_crash.sigterm(Duration::from_secs(30)).success());
}
