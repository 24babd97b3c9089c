//! `cvguard serve` against a real Kafka-compatible broker (tansu, from scripts/kafka-up.sh):
//! detection end to end, restarts, rebalances, organisations across partitions, poison
//! messages and a clean SIGTERM.

use std::time::Duration;

use cvguard_tests::kafka::{
    create_topic, harvest_batch, require_broker, wait_committed, write_config, Names, Producer, Reader,
};
use cvguard_tests::service::{free_port, Service};

const PARTITIONS: i32 = 6;
const LONG: Duration = Duration::from_secs(60);

struct Setup {
    dir: tempfile::TempDir,
    names: Names,
}

fn setup(test: &str) -> Setup {
    require_broker();
    let names = Names::new(test);
    // Operators create topics before they start a group; instances racing to create the
    // same topics at once is not what is under test.
    for topic in [
        &names.events,
        &names.alerts,
        &names.incidents,
        &names.dlq,
        &names.repartition,
    ] {
        create_topic(topic, PARTITIONS);
    }
    Setup {
        dir: tempfile::tempdir().unwrap(),
        names,
    }
}

impl Setup {
    /// Starts instance `i` with its own state folder and port.
    fn start(&self, i: usize) -> Service {
        self.start_with(i, "")
    }

    /// Starts instance `i` with extra `[kafka.properties]` lines.
    fn start_with(&self, i: usize, properties: &str) -> Service {
        let port = free_port();
        let config = self.dir.path().join(format!("cvguard-{i}.toml"));
        let state = self.dir.path().join(format!("state-{i}"));
        write_config(&config, &self.names, port, &state, PARTITIONS, properties);
        let mut s = Service::start(&config, port, &self.dir.path().join(format!("serve-{i}.log")));
        s.wait_ready(LONG);
        s
    }
}

/// Sends `n` 200-CV batch downloads by harvester-1 to one partition of the events topic.
fn send_harvest(s: &Setup, producer: &Producer, partition: i32, n: u32) {
    for i in 0..n {
        producer.send(
            &s.names.events,
            Some(partition),
            "harvester-1",
            harvest_batch("harvester-1", i).as_bytes(),
        );
    }
}

fn alerts_about<'a>(alerts: &'a [serde_json::Value], key: &str, rule: &str) -> Vec<&'a serde_json::Value> {
    alerts.iter().filter(|a| a["key"] == key && a["rule"] == rule).collect()
}

#[test]
fn events_produced_to_kafka_are_detected_and_sigterm_commits_and_exits_0() {
    let s = setup("e2e");
    let mut svc = s.start(0);
    let producer = Producer::new();
    send_harvest(&s, &producer, 2, 25);
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    let found = alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["action"] == "suspend"));
    assert!(found, "no suspension; log:\n{}", svc.log_text());
    let all = alerts.json();
    let suspend = all.iter().find(|a| a["action"] == "suspend").unwrap();
    assert_eq!(suspend["key"], "harvester-1");
    assert_eq!(suspend["rule"], "mass-harvest-24h");
    assert_eq!(suspend["value"], 4000, "suspended after 20 batches of 200");
    // The alert's Kafka key is the alert's key.
    assert!(alerts.seen.iter().any(|r| r.key.as_deref() == Some("harvester-1")));

    // The incidents topic has the incident under the alert's id.
    let id = suspend["alert_id"].as_str().unwrap().to_string();
    let mut incidents = Reader::new(&s.names.incidents, PARTITIONS);
    assert!(incidents.until(LONG, |seen| seen.iter().any(|r| r.key.as_deref() == Some(id.as_str()))));
    let incident = incidents
        .seen
        .iter()
        .find(|r| r.key.as_deref() == Some(id.as_str()))
        .unwrap()
        .json();
    assert_eq!(incident["status"], "open");
    assert_eq!(incident["value_at_detection"], 4000);
    assert!(incident["notify_authority_by"].as_str().unwrap() > incident["opened_at"].as_str().unwrap());

    // A change made elsewhere (the CLI, on the same store) reaches the compacted topic:
    // its last record for the incident is the latest state.
    let cfg = s.dir.path().join("cvguard-0.toml");
    cvguard_tests::cvguard_ok(&[
        "incidents",
        "set",
        &id,
        "acknowledged",
        "--actor",
        "soc",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let acked = incidents.until(LONG, |seen| {
        seen.iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(id.as_str()))
            .is_some_and(|r| r.json()["status"] == "acknowledged")
    });
    assert!(acked, "the incidents topic did not get the acknowledged state");

    // The workers' metrics reach /metrics (they are added up once per batch).
    let value = |name: &str| {
        let (code, text) = cvguard_tests::service::http(svc.port, "GET", "/metrics", b"").unwrap();
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let downloads = "cvguard_events_by_action_total{action=\"cv_download\"}";
    let deadline = std::time::Instant::now() + LONG;
    while value(downloads) < 25.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(value(downloads), 25.0);
    // One decision per input event, and one per packed message of re-keyed events.
    assert!(value("cvguard_decision_latency_seconds_count") >= 25.0);

    // SIGTERM: drain, commit everything consumed, exit 0.
    let status = svc.sigterm(Duration::from_secs(30));
    assert!(status.success(), "exit {status}; log:\n{}", svc.log_text());
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 25, Duration::from_secs(5));
    assert!(svc.log_text().contains("Stopped."));
}

#[test]
fn kill_9_mid_harvest_keeps_the_windows_and_raises_no_duplicate() {
    let s = setup("kill9");
    let mut svc = s.start(0);
    let producer = Producer::new();
    let send = |from: u32, to: u32| {
        for i in from..to {
            producer.send(
                &s.names.events,
                Some(1),
                "harvester-1",
                harvest_batch("harvester-1", i).as_bytes(),
            );
        }
    };
    // 10 batches: 2,000 downloads, the burst alert (1,500 in an hour) but no suspension yet.
    send(0, 10);
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(alerts.until(LONG, |seen| seen
        .iter()
        .any(|r| r.json()["rule"] == "download-burst-1h")));
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 10, LONG);
    svc.kill9();

    // Restart: the 24h window must still hold those 2,000, so the suspension comes at
    // batch 20 exactly as without the crash.
    let mut svc = s.start(0);
    send(10, 25);
    assert!(
        alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["action"] == "suspend")),
        "no suspension after restart; log:\n{}",
        svc.log_text()
    );
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 25, LONG);
    // Crash again after the suspension, restart, feed more: still one of each.
    svc.kill9();
    let _svc = s.start(0);
    send(25, 30);
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 30, LONG);
    alerts.poll_for(Duration::from_secs(2));
    let all = alerts.json();
    let burst = alerts_about(&all, "harvester-1", "download-burst-1h");
    let suspend = alerts_about(&all, "harvester-1", "mass-harvest-24h");
    assert_eq!(burst.len(), 1, "{burst:?}");
    assert_eq!(suspend.len(), 1, "{suspend:?}");
    assert_eq!(suspend[0]["value"], 4000);
    assert_eq!(
        suspend[0]["event_id"], "harvester-1-b19",
        "the same crossing as without the crash"
    );
}

#[test]
fn two_instances_one_killed_the_other_takes_over_rebuilds_and_catches_the_harvest() {
    let s = setup("failover");
    let mut a = s.start(0);
    let mut b = s.start(1);
    let producer = Producer::new();
    let partition = 4;
    for i in 0..12 {
        producer.send(
            &s.names.events,
            Some(partition),
            "harvester-1",
            harvest_batch("harvester-1", i).as_bytes(),
        );
    }
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 12, LONG);
    // Kill whichever instance owns the harvester's partition.
    // The owner is the instance whose latest word on the partition is "assigned" (the
    // first member held every partition before the second joined).
    let owns = |svc: &Service| {
        svc.log_text()
            .lines()
            .filter(|l| l.contains(&s.names.events) && l.contains(&format!("partition={partition} ")))
            .rev()
            .find(|l| l.contains("Partition assigned.") || l.contains("Partition revoked."))
            .is_some_and(|l| l.contains("Partition assigned."))
    };
    let (victim, survivor) = if owns(&a) { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(
        owns(victim),
        "neither instance logged partition {partition}:\n{}\n---\n{}",
        victim.log_text(),
        survivor.log_text()
    );
    victim.kill9();
    for i in 12..25 {
        producer.send(
            &s.names.events,
            Some(partition),
            "harvester-1",
            harvest_batch("harvester-1", i).as_bytes(),
        );
    }
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(
        alerts.until(Duration::from_secs(90), |seen| seen
            .iter()
            .any(|r| r.json()["action"] == "suspend")),
        "survivor did not catch the harvest; log:\n{}",
        survivor.log_text()
    );
    alerts.poll_for(Duration::from_secs(1));
    let all = alerts.json();
    let suspend = alerts_about(&all, "harvester-1", "mass-harvest-24h");
    assert_eq!(suspend.len(), 1);
    assert_eq!(
        suspend[0]["value"], 4000,
        "the survivor rebuilt the window instead of starting at zero"
    );
    assert_eq!(alerts_about(&all, "harvester-1", "download-burst-1h").len(), 1);
    assert!(
        survivor.log_text().contains("Partition rebuilt."),
        "{}",
        survivor.log_text()
    );
}

#[test]
fn an_organisation_spread_over_partitions_and_instances_is_alerted_once() {
    let s = setup("org");
    let a = s.start(0);
    let b = s.start(1);
    let producer = Producer::new();
    // Four accounts of org-ring on four partitions, 2,200 distinct CVs each: every
    // account stays under its own 4,000, the organisation passes 8,000.
    let mut sent = 0;
    for batch in 0..22u32 {
        for acc in 0..4u32 {
            let ids: Vec<String> = (0..100)
                .map(|k| format!("\"cv-{acc}-{:05}\"", batch * 100 + k))
                .collect();
            let line = format!(
                r#"{{"ts":{},"account_id":"ring-{acc}","org_id":"org-ring","action":"cv_view","cv_ids":[{}]}}"#,
                cvguard_tests::kafka::HARVEST_T0 + i64::from(batch) * 60_000 + i64::from(acc),
                ids.join(",")
            );
            producer.send(
                &s.names.events,
                Some(acc as i32),
                &format!("ring-{acc}"),
                line.as_bytes(),
            );
            sent += 1;
        }
    }
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, sent, LONG);
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(
        alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["key"] == "org-ring")),
        "no org alert; logs:\n{}\n---\n{}",
        a.log_text(),
        b.log_text()
    );
    alerts.poll_for(Duration::from_secs(3));
    let all = alerts.json();
    let org = alerts_about(&all, "org-ring", "org-harvest-24h");
    assert_eq!(org.len(), 1, "{all:?}");
    assert_eq!(org[0]["value"], 8000);
    assert_eq!(org[0]["accounts"].as_array().unwrap().len(), 4);
    assert!(
        all.iter().all(|a| a["key_kind"] != "account_id"),
        "no account alone crossed: {all:?}"
    );
}

#[test]
fn an_event_too_large_to_re_key_is_logged_and_the_partition_moves_on() {
    // The producer refuses messages over its `message.max.bytes`; sending one again can
    // never succeed, so it must not hold up the events behind it.
    let s = setup("too-large");
    let svc = s.start_with(0, r#""message.max.bytes" = "12000""#);
    let producer = Producer::new();
    let ids: Vec<String> = (0..1000).map(|k| format!("\"cv-giant-{k:05}\"")).collect();
    let giant = format!(
        r#"{{"ts":{},"account_id":"giant-1","action":"cv_view","cv_ids":[{}],"ip":"203.0.113.9"}}"#,
        cvguard_tests::kafka::HARVEST_T0,
        ids.join(",")
    );
    assert!(giant.len() > 12_000);
    producer.send(&s.names.events, Some(3), "giant-1", giant.as_bytes());
    send_harvest(&s, &producer, 3, 20);
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(
        alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["action"] == "suspend")),
        "the harvest behind the large event was not caught; log:\n{}",
        svc.log_text()
    );
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 21, LONG);
    assert!(svc.log_text().contains("Message too large"), "{}", svc.log_text());
}

#[test]
fn re_keyed_events_in_the_one_event_form_from_before_packing_are_still_counted() {
    // An upgrade must not lose re-keyed events already on the repartition topic: before
    // they were packed, each was its own message keyed `org_id|<org>`.
    let s = setup("legacy");
    let svc = s.start(0);
    let producer = Producer::new();
    for batch in 0..80u32 {
        let ids: Vec<String> = (0..100).map(|k| format!("\"cv-{:05}\"", batch * 100 + k)).collect();
        let line = format!(
            r#"{{"ts":{},"account_id":"old-{}","org_id":"org-legacy","action":"cv_view","cv_ids":[{}]}}"#,
            cvguard_tests::kafka::HARVEST_T0 + i64::from(batch) * 60_000,
            batch % 4,
            ids.join(",")
        );
        producer.send(&s.names.repartition, Some(2), "org_id|org-legacy", line.as_bytes());
    }
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(
        alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["key"] == "org-legacy")),
        "no org alert; log:\n{}",
        svc.log_text()
    );
    let all = alerts.json();
    let org = alerts_about(&all, "org-legacy", "org-harvest-24h");
    assert_eq!(org.len(), 1, "{all:?}");
    assert_eq!(org[0]["value"], 8000);
}

#[test]
fn a_poison_message_goes_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let s = setup("poison");
    let _svc = s.start(0);
    let producer = Producer::new();
    producer.send(&s.names.events, Some(3), "harvester-1", b"{this is not json");
    producer.send(
        &s.names.events,
        Some(3),
        "harvester-1",
        br#"{"ts":"2024-05-04T06:00:00Z","account_id":""}"#,
    );
    send_harvest(&s, &producer, 3, 20);
    let mut dlq = Reader::new(&s.names.dlq, PARTITIONS);
    assert!(dlq.until(LONG, |seen| seen.len() >= 2));
    let reasons: Vec<String> = dlq
        .seen
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "cvguard-reject-reason")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(reasons, vec!["invalid_json", "invalid_account_id"]);
    assert_eq!(dlq.seen[0].payload, b"{this is not json", "forwarded unchanged");
    assert!(dlq.seen[0]
        .headers
        .iter()
        .any(|(k, v)| k == "cvguard-source" && v.ends_with("/3/0")));
    // Events after the poison were processed: the harvest is still caught.
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["action"] == "suspend")));
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 22, LONG);
}
