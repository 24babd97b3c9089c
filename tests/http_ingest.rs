//! `cvguard serve` with the embedded default source: NDJSON over `POST /v1/events`.

use std::time::Duration;

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::service::{free_port, http, Service};

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
