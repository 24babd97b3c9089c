//! A key's own history in `serve` on HTTP ingest (#14): a warm start from
//! `replay --save-state`, the history's judgement on the alert, the incident and the
//! account view, kept through a kill -9; and a key too new to be judged stays quiet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvguard_tests::service::{account_window, free_port, http, Service};

const WAIT: Duration = Duration::from_secs(60);
/// Monday 6 May 2024, 00:00 UTC.
const DAY0: i64 = 1_714_953_600_000;
const DAY: i64 = 86_400_000;

/// `n` views by `account` on `day`, one fresh CV each, ten seconds apart from 09:00, from
/// the `from`th of the day on.
fn views(account: &str, day: i64, from: u32, n: u32) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"event_id\":\"{account}-d{day}-{i}\",\"account_id\":\"{account}\",\"action\":\"cv_view\",\"cv_ids\":[\"cv-{account}-{day}-{i}\"]}}\n",
                DAY0 + day * DAY + 9 * 3_600_000 + i64::from(i) * 10_000
            )
        })
        .collect()
}

fn config(dir: &Path, port: u16) -> PathBuf {
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
    let path = dir.join("cvguard.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n\
             [[sinks]]\nkind = \"jsonl\"\npath = \"{d}/alerts.jsonl\"\n{rules}",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

fn post(port: u16, body: &str) {
    let (code, text) = http(port, "POST", "/v1/events", body.as_bytes()).unwrap();
    assert_eq!(code, 202, "{text}");
}

fn wait_decided(svc: &Service) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = http(svc.port, "GET", "/metrics", b"").unwrap();
        if metrics.lines().any(|l| l == "cvguard_ingest_in_flight_bytes 0") {
            return;
        }
        assert!(Instant::now() < deadline, "never decided; log:\n{}", svc.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_warm_started_history_judges_an_account_through_a_kill_9_and_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let cfg = config(d, port);
    let state = d.join("state");

    // Ten days of 100 distinct CVs a day: the account's normal, decided into the state
    // folder before the service ever runs.
    let history: String = (0..10).map(|day| views("steady-1", day, 0, 100)).collect();
    std::fs::write(d.join("history.ndjson"), history).unwrap();
    let saved = |extra: &[&str]| {
        let mut args = vec!["replay", "--config", cfg.to_str().unwrap(), "--input"];
        args.push(d.join("history.ndjson").to_str().unwrap().to_string().leak());
        args.extend_from_slice(extra);
        cvguard_tests::cvguard(&args)
    };
    let out = saved(&["--save-state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 baseline histories"));
    // A state folder with state is never overwritten.
    let again = saved(&["--save-state", state.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds service state"));

    let mut svc = Service::start(&cfg, port, &d.join("serve.log"));
    svc.wait_ready(WAIT);
    // Day 10: 8 x p90 of [100 x 10] = 800, above the floor of 400.
    post(port, &views("steady-1", 10, 0, 500));
    // A fresh account reading far more than the floor: not judged before 7 days.
    post(port, &views("fresh-1", 10, 0, 900));
    wait_decided(&svc);
    let w = account_window(port, "steady-1", "surge-24h");
    assert_eq!((w["value"].as_u64(), w["threshold"].as_u64()), (Some(500), Some(800)));
    assert_eq!(w["threshold_source"], "baseline");
    assert_eq!(w["baseline"]["daily_values"], serde_json::json!(vec![100; 10]));
    assert_eq!(w["baseline"]["first_day"], "2024-05-06");
    let fresh = account_window(port, "fresh-1", "surge-24h");
    assert_eq!(fresh["baseline"]["judged"], false);

    // Killed with the day's reading half done: the history comes back from the warm
    // snapshot and the ingest log.
    svc.kill9();
    let mut svc = Service::start(&cfg, port, &d.join("serve.log"));
    svc.wait_ready(WAIT);
    post(port, &views("steady-1", 10, 500, 300));
    wait_decided(&svc);

    let alerts: Vec<serde_json::Value> = std::fs::read_to_string(d.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let surge: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["rule"] == "surge-24h").collect();
    assert_eq!(surge.len(), 1, "{alerts:?}\n{}", svc.log_text());
    let a = surge[0];
    assert_eq!(a["key"], "steady-1");
    assert_eq!((a["value"].as_u64(), a["threshold"].as_u64()), (Some(800), Some(800)));
    assert_eq!(
        a["event_id"], "steady-1-d10-799",
        "the 800th CV of the day, not earlier"
    );
    assert_eq!(a["threshold_source"], "baseline");
    assert_eq!(a["baseline"]["statistic_value"], 100.0);
    assert_eq!(a["baseline"]["floor"], 400);
    assert!(
        alerts.iter().all(|a| a["key"] != "fresh-1"),
        "a key younger than min_history is not judged: {alerts:?}"
    );

    // The incident says the same.
    let incidents = cvguard_tests::list_incidents(&cfg);
    let incident = incidents
        .iter()
        .find(|i| i["rule"] == "surge-24h")
        .expect("an incident");
    assert_eq!(incident["threshold_source"], "baseline");
    assert_eq!(incident["baseline"]["daily_values"], serde_json::json!(vec![100; 10]));
    assert!(svc.sigterm(Duration::from_secs(30)).success());
}
