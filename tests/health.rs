//! The detector's own health (#16), against the built binary: a source that stops sending
//! raises exactly one `silence` alarm and, when events return, exactly one resolution with
//! the same `alert_id`, in the sinks, `/metrics` and `/v1/health`; a firing alarm survives
//! a kill -9 and is resolved after the restart; a sink that fails raises `sink_failing`
//! and resolves it once it delivers again. Every wait polls a condition.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cvguard_tests::receiver::{Receiver, Reply};
use cvguard_tests::service::{free_port, http, Service};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    config: PathBuf,
}

impl Node {
    /// A service on HTTP ingest with a JSON-lines sink and `[health]` as given.
    fn new(health: &str, extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let port = free_port();
        let config = root.join("cvguard.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n\
                 [health]\n{health}\n[[sinks]]\nkind = \"jsonl\"\npath = \"{d}/alerts.jsonl\"\n{extra}\n\
                 [[rules]]\nname = \"views\"\ngroup_by = \"account_id\"\nmeasure = \"events\"\nactions = [\"cv_view\"]\nwindow = \"1h\"\nthreshold = 1000000\n",
                d = root.display()
            ),
        )
        .unwrap();
        Node {
            _dir: dir,
            root,
            port,
            config,
        }
    }

    fn start(&self) -> Service {
        let mut svc = Service::start(&self.config, self.port, &self.root.join("serve.log"));
        svc.wait_ready(WAIT);
        svc
    }

    /// Posts a few events stamped now.
    fn post(&self, n: usize) {
        let now = now_ms();
        let body: String = (0..n)
            .map(|i| {
                serde_json::json!({"ts": now, "account_id": "acct-a", "action": "cv_view",
                    "cv_id": format!("cv-{i}"), "event_id": format!("e-{now}-{i}")})
                .to_string()
                    + "\n"
            })
            .collect();
        let (code, text) = http(self.port, "POST", "/v1/events", body.as_bytes()).unwrap();
        assert_eq!(code, 202, "{text}");
    }

    /// The health alarms' system alerts in the sink, of `alarm`.
    fn alarms(&self, alarm: &str) -> Vec<Value> {
        let path = self.root.join("alerts.jsonl");
        if !path.exists() {
            return Vec::new();
        }
        cvguard_tests::read_jsonl(&path)
            .into_iter()
            .filter(|a| a["alarm"] == alarm)
            .collect()
    }

    fn gauge(&self, alarm: &str) -> Option<u8> {
        let (_, text) = http(self.port, "GET", "/metrics", b"").unwrap();
        let series = format!("cvguard_health_alarm{{alarm=\"{alarm}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    }

    fn report(&self, alarm: &str) -> Value {
        let (code, text) = http(self.port, "GET", "/v1/health", b"").unwrap();
        assert_eq!(code, 200, "{text}");
        let report: Value = serde_json::from_str(&text).unwrap();
        assert!(report["events_accepted_last_minute"].is_u64(), "{report}");
        report["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["alarm"] == alarm)
            .cloned()
            .unwrap_or_else(|| panic!("no {alarm} in {report}"))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as cvguard writes times, to epoch ms.
fn parse_time_ms(text: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { text[r].parse().unwrap_or_else(|_| panic!("bad time {text}")) };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

fn since_ms(alert: &Value) -> i64 {
    parse_time_ms(alert["since"].as_str().unwrap())
}

/// Polls `what` until it gives `Some`, or fails with the log.
fn poll<T>(svc: &Service, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}; log:\n{}",
            svc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Silence episodes that started at or after `from` (a start-up with no events yet has an
/// episode of its own, resolved by the first post).
fn episodes_since(alerts: &[Value], from: i64, status: &str) -> Vec<Value> {
    alerts
        .iter()
        .filter(|a| a["status"] == status && since_ms(a) >= from)
        .cloned()
        .collect()
}

#[test]
fn a_stalled_source_raises_one_silence_alarm_and_its_resolution() {
    let node = Node::new("silence = \"2s\"", "");
    let svc = node.start();
    node.post(5);
    // Every alarm's gauge is there from the start.
    for alarm in [
        "silence",
        "watermark_stalled",
        "consumer_lag",
        "rejected_share",
        "sink_failing",
        "store_unreachable",
    ] {
        assert!(node.gauge(alarm).is_some(), "no gauge for {alarm}");
    }
    node.post(5);
    let stopped = now_ms();

    let fired = poll(&svc, "one silence alarm", || {
        let firing = episodes_since(&node.alarms("silence"), stopped, "firing");
        (!firing.is_empty()).then_some(firing)
    });
    assert_eq!(fired.len(), 1, "{fired:?}");
    let fired = &fired[0];
    assert_eq!(fired["key_kind"], "system");
    assert_eq!(fired["rule"], "silence");
    assert!(fired["detail"].as_str().unwrap().contains("no event"), "{fired}");
    poll(&svc, "the gauge at 1", || {
        (node.gauge("silence") == Some(1)).then_some(())
    });
    let report = node.report("silence");
    assert_eq!(report["firing"], true, "{report}");
    assert_eq!(parse_time_ms(report["since"].as_str().unwrap()), since_ms(fired));

    // Events return: one resolution, with the firing alert's id.
    node.post(3);
    let resolved = poll(&svc, "the resolution", || {
        let r = episodes_since(&node.alarms("silence"), stopped, "resolved");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["alert_id"], fired["alert_id"]);
    assert!(resolved[0]["resolved_at"].is_string());
    poll(&svc, "the gauge at 0", || {
        (node.gauge("silence") == Some(0)).then_some(())
    });
    assert_eq!(node.report("silence")["firing"], false);
    // While events keep coming, no second firing: post for longer than health.silence.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        node.post(1);
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = node.alarms("silence");
    assert_eq!(episodes_since(&after, stopped, "firing").len(), 1, "{after:?}");
    assert_eq!(episodes_since(&after, stopped, "resolved").len(), 1, "{after:?}");
    // Every episode ever raised is resolved, once.
    let ids = |status: &str| -> Vec<Value> {
        after
            .iter()
            .filter(|a| a["status"] == status)
            .map(|a| a["alert_id"].clone())
            .collect()
    };
    assert_eq!(ids("firing"), ids("resolved"));
}

#[test]
fn a_firing_alarm_survives_a_kill_9_and_is_resolved_once_after_the_restart() {
    let node = Node::new("silence = \"2s\"", "");
    let mut svc = node.start();
    node.post(5);
    let stopped = now_ms();
    let fired = poll(&svc, "a silence alarm", || {
        episodes_since(&node.alarms("silence"), stopped, "firing").pop()
    });
    let kept = std::fs::read_to_string(node.root.join("state/health.json")).unwrap();
    assert!(kept.contains(fired["alert_id"].as_str().unwrap()), "{kept}");
    svc.kill9();

    // The restart continues the episode: still silent, no second firing alert ...
    let svc = node.start();
    poll(&svc, "the continued episode", || {
        (node.report("silence")["firing"] == true).then_some(())
    });
    assert_eq!(node.gauge("silence"), Some(1));
    // ... and resolves it under its own id when events return.
    node.post(3);
    let resolved = poll(&svc, "the resolution after the restart", || {
        episodes_since(&node.alarms("silence"), stopped, "resolved").pop()
    });
    assert_eq!(resolved["alert_id"], fired["alert_id"]);
    let alerts = node.alarms("silence");
    assert_eq!(episodes_since(&alerts, stopped, "firing").len(), 1, "{alerts:?}");
    assert_eq!(episodes_since(&alerts, stopped, "resolved").len(), 1, "{alerts:?}");
    poll(&svc, "nothing left firing in health.json", || {
        let kept = std::fs::read_to_string(node.root.join("state/health.json")).unwrap();
        (!kept.contains("silence")).then_some(())
    });
}

#[test]
fn a_failing_sink_raises_sink_failing_and_resolves_it_once_it_delivers() {
    // A webhook sink whose receiver fails the first five posts (one alert's attempts),
    // then answers 200. The silence alarm (no events at all) is the first thing sent.
    let receiver = Receiver::start(0, "unused", vec![Reply::Status(500); 5]);
    let node = Node::new(
        "silence = \"1s\"\nsink_failing_for = \"2s\"",
        &format!("[[sinks]]\nkind = \"webhook\"\nurl = \"{}\"\n", receiver.url("/alerts")),
    );
    let svc = node.start();
    let fired = poll(&svc, "sink_failing raised", || node.alarms("sink_failing").pop());
    assert_eq!(fired["status"], "firing");
    assert!(fired["detail"].as_str().unwrap().contains("webhook"), "{fired}");
    let resolved = poll(&svc, "sink_failing resolved", || {
        node.alarms("sink_failing")
            .into_iter()
            .find(|a| a["status"] == "resolved")
    });
    assert_eq!(resolved["alert_id"], fired["alert_id"]);
    assert_eq!(node.alarms("sink_failing").len(), 2);
    poll(&svc, "the gauge at 0", || {
        (node.gauge("sink_failing") == Some(0)).then_some(())
    });
}
