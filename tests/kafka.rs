//! `cvguard serve` against a real Kafka-compatible broker (tansu, from scripts/kafka-up.sh):
//! detection end to end, restarts, rebalances, organisations across partitions, poison
//! messages and a clean SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvguard_tests::kafka::{
    committed_total, committed_total_at, create_topic, create_topic_at, end_offsets_total, harvest_batch,
    partition_for, require_broker, wait_committed, write_config, write_config_with, Names, PrivateBroker, Producer,
    Reader,
};
use cvguard_tests::service::{free_port, http, Service};

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
    cvguard_tests::set_incident(&cfg, &id, "acknowledged", "soc");
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

/// Produces the board's events to `topic`, each account's on one partition; returns how many.
fn produce_board(sim: &Path, topic: &str) -> i64 {
    let text = std::fs::read_to_string(sim.join("events.ndjson")).unwrap();
    let lines: Vec<(String, &str)> = text
        .lines()
        .map(|l| {
            let ev: serde_json::Value = serde_json::from_str(l).unwrap();
            (ev["account_id"].as_str().unwrap().to_string(), l)
        })
        .collect();
    Producer::new().send_many(
        topic,
        lines
            .iter()
            .map(|(account, l)| (partition_for(account, PARTITIONS), account.as_str(), l.as_bytes())),
    );
    lines.len() as i64
}

/// One `serve` of a board over a shared events topic, with its own other topics, group,
/// state folder and store.
struct BoardRun {
    dir: PathBuf,
    names: Names,
    port: u16,
}

impl BoardRun {
    fn new(root: &Path, label: &str, events: &str, sim: &Path) -> BoardRun {
        let mut names = Names::new(label);
        names.events = events.to_string();
        for topic in [&names.alerts, &names.incidents, &names.dlq, &names.repartition] {
            create_topic(topic, PARTITIONS);
        }
        let dir = root.join(label);
        std::fs::create_dir_all(&dir).unwrap();
        let run = BoardRun {
            dir,
            names,
            port: free_port(),
        };
        write_config_with(
            &run.config(),
            &run.names,
            run.port,
            &run.dir.join("state"),
            PARTITIONS,
            "",
            &format!("[profiles]\npath = \"{}\"\n", sim.join("accounts.csv").display()),
        );
        run
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cvguard.toml")
    }

    fn start(&self) -> Service {
        let mut s = Service::start(&self.config(), self.port, &self.dir.join("serve.log"));
        s.wait_ready(LONG);
        s
    }

    /// Waits until every event, and every event re-keyed from them, is committed.
    fn wait_done(&self, events: i64, svc: &Service) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let wait = |topic: &str, total: i64| loop {
            let done = committed_total(&self.names.group, topic, PARTITIONS);
            if done >= total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {total} committed on {topic}; log:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        wait(&self.names.events, events);
        // Input offsets are committed only after their re-keyed events were acknowledged:
        // the repartition topic is complete now.
        wait(
            &self.names.repartition,
            end_offsets_total(&self.names.repartition, PARTITIONS),
        );
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        cvguard_tests::list_incidents(&self.config())
    }

    /// Re-keyed events the repartition engines applied, over their whole history: the sum of
    /// their counters in the snapshots written at shutdown (restored counters included).
    fn re_keyed_events_applied(&self) -> u64 {
        let prefix: String = self
            .names
            .repartition
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut sum = 0;
        for entry in std::fs::read_dir(self.dir.join("state")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !(name.starts_with(&prefix) && name.ends_with(".snap")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let (_, body) = text.split_once('\n').unwrap();
            let engines: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
            sum += engines
                .iter()
                .map(|e| e["stats"]["events"].as_u64().unwrap())
                .sum::<u64>();
        }
        sum
    }

    /// The alerts topic: (rule, key) -> distinct alert ids.
    fn alert_ids(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        let mut reader = Reader::new(&self.names.alerts, PARTITIONS);
        reader.poll_for(Duration::from_secs(3));
        let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for a in reader.json() {
            out.entry((a["rule"].as_str().unwrap().into(), a["key"].as_str().unwrap().into()))
                .or_default()
                .insert(a["alert_id"].as_str().unwrap().into());
        }
        out
    }
}

type IncidentKey = (String, String, String);

/// Per (rule, key kind, key): how many incidents, and for account keys (one partition, in
/// order) what was detected. Re-keyed kinds merge six partitions in an order that timing
/// decides, so their crossing event is not compared, only that they crossed once.
fn incident_summary(incidents: &[serde_json::Value]) -> BTreeMap<IncidentKey, String> {
    let mut count: BTreeMap<IncidentKey, (usize, String)> = BTreeMap::new();
    for i in incidents {
        let key = (
            i["rule"].as_str().unwrap().to_string(),
            i["key_kind"].as_str().unwrap().to_string(),
            i["key"].as_str().unwrap().to_string(),
        );
        let detail = if key.1 == "account_id" {
            format!(
                "detected {} at {} action {} cvs {}",
                i["value_at_detection"], i["first_event_time"], i["action"], i["cvs_by_visibility"]
            )
        } else {
            String::new()
        };
        let e = count.entry(key).or_insert((0, detail));
        e.0 += 1;
    }
    count
        .into_iter()
        .map(|(k, (n, detail))| (k, format!("{n} incident(s) {detail}")))
        .collect()
}

fn assert_same_summary(got: &BTreeMap<IncidentKey, String>, want: &BTreeMap<IncidentKey, String>, what: &str) {
    let keys: BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k:?}\n  got  {:?}\n  want {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

#[test]
fn kill_9_halfway_through_a_board_gives_the_incidents_of_an_uninterrupted_run_and_of_replay() {
    require_broker();
    let root = tempfile::tempdir().unwrap();
    let sim = cvguard_tests::simulate_small_board(root.path());
    let events = format!("events-{}", cvguard_tests::service::unique("board"));
    create_topic(&events, PARTITIONS);
    let started = Instant::now();
    let stage = |what: &str| eprintln!("{what} after {:?}", started.elapsed());
    let total = produce_board(&sim, &events);
    stage("produced");

    // The two runs are independent (own group, topics, state and store): they run side by
    // side, which also keeps the suite short.
    let calm = BoardRun::new(root.path(), "calm", &events, &sim);
    let crashy = BoardRun::new(root.path(), "crashy", &events, &sim);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut svc = calm.start();
            calm.wait_done(total, &svc);
            stage("uninterrupted run done");
            assert!(svc.sigterm(LONG).success(), "{}", svc.log_text());
        });
        let mut svc = crashy.start();
        let deadline = Instant::now() + LONG;
        while committed_total(&crashy.names.group, &events, PARTITIONS) < total / 2 {
            assert!(Instant::now() < deadline, "never halfway; log:\n{}", svc.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        stage("halfway");
        svc.kill9();
        let mut svc = crashy.start();
        stage("restarted");
        crashy.wait_done(total, &svc);
        stage("killed run done");
        assert!(svc.sigterm(LONG).success(), "{}", svc.log_text());
    });

    // Every re-keyed event was applied once: the ones sent again after the crash were
    // skipped, not counted a second time.
    let applied = crashy.re_keyed_events_applied();
    assert!(applied > 0);
    assert_eq!(
        applied,
        calm.re_keyed_events_applied(),
        "re-keyed events applied, killed -9 vs uninterrupted"
    );

    let calm_incidents = incident_summary(&calm.incidents());
    let crashy_incidents = incident_summary(&crashy.incidents());
    assert_same_summary(&crashy_incidents, &calm_incidents, "killed -9 vs uninterrupted");

    // No (rule, key) alerted twice on the alerts topic (a crash may repeat a delivery,
    // under the same alert id).
    for run in [&calm, &crashy] {
        let twice: Vec<_> = run.alert_ids().into_iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(twice.is_empty(), "{}: alerted twice: {twice:?}", run.dir.display());
    }

    // The re-keyed kinds cross where replay of the same file crosses.
    let replayed = root.path().join("replay.jsonl");
    cvguard_tests::cvguard_ok(&[
        "replay",
        "--config",
        calm.config().to_str().unwrap(),
        "--input",
        sim.join("events.ndjson").to_str().unwrap(),
        "--alerts",
        replayed.to_str().unwrap(),
    ]);
    let re_keyed = |keys: Vec<(String, String, String)>| -> BTreeSet<(String, String, String)> {
        keys.into_iter().filter(|k| k.1 != "account_id").collect()
    };
    let replay_keys = re_keyed(
        cvguard_tests::read_jsonl(&replayed)
            .iter()
            .map(|a| {
                (
                    a["rule"].as_str().unwrap().to_string(),
                    a["key_kind"].as_str().unwrap().to_string(),
                    a["key"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    );
    assert_eq!(re_keyed(calm_incidents.keys().cloned().collect()), replay_keys);
    assert_eq!(re_keyed(crashy_incidents.keys().cloned().collect()), replay_keys);
    // The issue's cases: the allowlisted partner's organisation, and a ring of accounts on
    // several partitions that reaches the threshold with its last event.
    for org in ["org-partner", "org-ring"] {
        assert!(replay_keys.iter().any(|k| k.2 == org), "{replay_keys:?}");
    }
}

/// How long the broker stays away. The issue says 60 s; 20 s is three times the group's
/// session timeout (6 s) and twice librdkafka's longest reconnect backoff (10 s), so the
/// same things happen (the member is evicted, every connection fails and comes back),
/// and the suite stays short.
const OUTAGE: Duration = Duration::from_secs(20);

#[test]
fn the_broker_going_away_mid_harvest_loses_nothing_and_readyz_says_not_ready_meanwhile() {
    require_broker();
    let broker = PrivateBroker::start();
    let addr = broker.addr();
    let mut names = Names::new("outage");
    names.bootstrap = addr.clone();
    for topic in [
        &names.events,
        &names.alerts,
        &names.incidents,
        &names.dlq,
        &names.repartition,
    ] {
        create_topic_at(&addr, topic, PARTITIONS);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("cvguard.toml");
    write_config(&config, &names, port, &dir.path().join("state"), PARTITIONS, "");
    let mut svc = Service::start(&config, port, &dir.path().join("serve.log"));
    svc.wait_ready(LONG);
    let ready = || matches!(cvguard_tests::service::http(port, "GET", "/readyz", b""), Ok((200, _)));

    // The first half of the harvest: 12 batches of 200, the burst alert, no suspension.
    let producer = Producer::at(&addr);
    for i in 0..12 {
        producer.send(
            &names.events,
            Some(2),
            "harvester-1",
            harvest_batch("harvester-1", i).as_bytes(),
        );
    }
    let committed = |n: i64| {
        let deadline = Instant::now() + LONG;
        while committed_total_at(&addr, &names.group, &names.events, PARTITIONS) < n {
            assert!(
                Instant::now() < deadline,
                "{n} never committed; log:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    committed(12);

    // The broker goes away; the platform keeps producing (its client buffers).
    broker.go_away();
    let went = Instant::now();
    let rest = {
        let (addr, topic) = (addr.clone(), names.events.clone());
        std::thread::spawn(move || {
            let producer = Producer::at(&addr);
            for i in 12..25 {
                producer.send(
                    &topic,
                    Some(2),
                    "harvester-1",
                    harvest_batch("harvester-1", i).as_bytes(),
                );
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready() {
        assert!(
            Instant::now() < deadline,
            "/readyz still ready 10 s after the broker went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let noticed = went.elapsed();
    while went.elapsed() < OUTAGE {
        assert!(!ready(), "/readyz said ready while the broker was away");
        std::thread::sleep(Duration::from_millis(250));
    }
    broker.come_back();

    // Nothing lost: every event is consumed, the suspension comes at the same CV count as
    // without the outage, once, and the service is ready again.
    rest.join().unwrap();
    committed(25);
    let mut alerts = Reader::at(&addr, &names.alerts, PARTITIONS);
    assert!(
        alerts.until(LONG, |seen| seen.iter().any(|r| r.json()["action"] == "suspend")),
        "no suspension after the broker came back; log:\n{}",
        svc.log_text()
    );
    alerts.poll_for(Duration::from_secs(2));
    let all = alerts.json();
    let suspend = alerts_about(&all, "harvester-1", "mass-harvest-24h");
    let ids: BTreeSet<&str> = suspend.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{suspend:?}");
    assert_eq!(suspend[0]["value"], 4000);
    assert_eq!(suspend[0]["event_id"], "harvester-1-b19");
    let deadline = Instant::now() + LONG;
    while !ready() {
        assert!(Instant::now() < deadline, "never ready again; log:\n{}", svc.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = svc.log_text();
    assert!(log.contains("every broker is down"), "{log}");
    assert!(log.contains("Kafka answers again."), "{log}");
    eprintln!("not ready {noticed:?} after the broker went away");
    assert!(svc.sigterm(LONG).success(), "{}", svc.log_text());
}

#[test]
fn a_restart_publishes_only_incidents_changed_since_the_feed_last_published() {
    let s = setup("feed");
    let mut svc = s.start(0);
    let producer = Producer::new();
    send_harvest(&s, &producer, 1, 25);
    let mut incidents = Reader::new(&s.names.incidents, PARTITIONS);
    let suspended = |seen: &[cvguard_tests::kafka::Read]| {
        seen.iter()
            .find(|r| r.json()["action"] == "suspend")
            .and_then(|r| r.key.clone())
    };
    assert!(
        incidents.until(LONG, |seen| suspended(seen).is_some()),
        "no incident; log:\n{}",
        svc.log_text()
    );
    let id = suspended(&incidents.seen).unwrap();
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 25, LONG);
    // Every change is published; then nothing changes any more.
    let records = |r: &mut Reader| {
        r.poll_for(Duration::from_secs(3));
        r.seen.iter().filter(|m| m.key.as_deref() == Some(id.as_str())).count()
    };
    let mut before = records(&mut incidents);
    while records(&mut incidents) != before {
        before = records(&mut incidents);
    }
    assert!(svc.sigterm(LONG).success());

    // A restart publishes none of it again.
    let restarted = |svc: &Service, starts: usize| {
        let deadline = Instant::now() + LONG;
        while svc.log_text().matches("Incident feed started.").count() < starts {
            assert!(
                Instant::now() < deadline,
                "feed never started; log:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut svc = s.start(0);
    restarted(&svc, 2);
    assert_eq!(
        records(&mut incidents),
        before,
        "a restart published the incident again"
    );

    // A change made while running is published once, and not again after a restart.
    let cfg = s.dir.path().join("cvguard-0.toml");
    cvguard_tests::set_incident(&cfg, &id, "acknowledged", "soc");
    assert!(incidents.until(LONG, |seen| seen
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(id.as_str()))
        .is_some_and(|r| r.json()["status"] == "acknowledged")));
    assert_eq!(records(&mut incidents), before + 1, "the change published once");
    assert!(svc.sigterm(LONG).success());
    let svc = s.start(0);
    restarted(&svc, 3);
    assert_eq!(
        records(&mut incidents),
        before + 1,
        "a restart published the change again"
    );
}

/// A search by `pager-1`, one every 5 s of event time, with its own id.
fn search(i: u32) -> String {
    format!(
        r#"{{"ts":{},"event_id":"pager-1-s{i}","account_id":"pager-1","org_id":"org-pager","action":"cv_search","ip":"203.0.113.7"}}"#,
        cvguard_tests::kafka::HARVEST_T0 + i64::from(i) * 5_000
    )
}

#[test]
fn a_second_delivery_after_a_kill_9_counts_once_for_the_account_and_is_never_re_keyed() {
    // search-scraping-1h (account, 600 events an hour) and an ip rule of the same shape: a
    // redelivered search counted again would fire both 100 searches early.
    let s = setup("dedupe");
    let port = free_port();
    let config = s.dir.path().join("cvguard-0.toml");
    let state = s.dir.path().join("state-0");
    let ip_rule = r#"
[[rules]]
name = "searches-per-ip-1h"
actions = ["cv_search"]
group_by = "ip"
measure = "events"
window = "1h"
threshold = 600
"#;
    write_config_with(&config, &s.names, port, &state, PARTITIONS, "", ip_rule);
    let log = |i: usize| s.dir.path().join(format!("serve-{i}.log"));
    let mut svc = Service::start(&config, port, &log(0));
    svc.wait_ready(LONG);
    let producer = Producer::new();
    let send = |range: std::ops::Range<u32>| {
        let lines: Vec<String> = range.map(search).collect();
        producer.send_many(&s.names.events, lines.iter().map(|l| (5, "pager-1", l.as_bytes())));
    };
    send(0..400);
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 400, LONG);
    svc.kill9();

    // The producer retries the last 100 after the crash (well within the 10-minute dedupe
    // window of event time), then the account goes on.
    let mut svc = Service::start(&config, port, &log(1));
    svc.wait_ready(LONG);
    send(300..400);
    send(400..600);
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 700, LONG);
    let mut alerts = Reader::new(&s.names.alerts, PARTITIONS);
    assert!(
        alerts.until(LONG, |seen| seen.len() >= 2),
        "expected the account and ip alerts; log:\n{}",
        svc.log_text()
    );
    alerts.poll_for(Duration::from_secs(2));
    let all = alerts.json();
    for (key, rule) in [("pager-1", "search-scraping-1h"), ("203.0.113.7", "searches-per-ip-1h")] {
        let fired = alerts_about(&all, key, rule);
        assert_eq!(fired.len(), 1, "{rule}: {all:?}");
        assert_eq!(fired[0]["value"], 600);
        assert_eq!(
            fired[0]["event_id"], "pager-1-s599",
            "{rule} fired on the 600th distinct search, not on a redelivery"
        );
    }
    // The 100 redeliveries are counted as duplicates (the ids accepted before the crash
    // came back from the snapshot or the rebuild).
    let duplicates = || {
        let (_, text) = cvguard_tests::service::http(svc.port, "GET", "/metrics", b"").unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("cvguard_events_total{outcome=\"duplicate\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + LONG;
    while duplicates() < 100.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(duplicates(), 100.0);
}

/// Each instance of a consumer group holds only its own partitions' keys, yet a SOC
/// analyst may ask any of them: the one that does not hold a key asks the one that does
/// (both registered in the shared store) and says which instance answered; the keys
/// nearest a threshold are merged from both.
#[test]
fn any_instance_of_a_group_answers_for_every_key() {
    let s = setup("peers");
    let db = cvguard_tests::pg::PgDatabase::create("cvguard_peers");
    let start = |i: usize| {
        let port = free_port();
        let config = s.dir.path().join(format!("cvguard-{i}.toml"));
        let state = s.dir.path().join(format!("state-{i}"));
        write_config(&config, &s.names, port, &state, PARTITIONS, "");
        // One store for the group, as in production.
        let text = std::fs::read_to_string(&config).unwrap();
        let sqlite = format!("url = \"sqlite://{}/cvguard.db\"", state.display());
        assert!(text.contains(&sqlite));
        std::fs::write(&config, text.replace(&sqlite, &format!("url = \"{}\"", db.url()))).unwrap();
        let mut svc = Service::start(&config, port, &s.dir.path().join(format!("serve-{i}.log")));
        svc.wait_ready(LONG);
        svc
    };
    let a = start(0);
    let b = start(1);
    let producer = Producer::new();
    send_harvest(&s, &producer, 4, 12);
    wait_committed(&s.names.group, &s.names.events, PARTITIONS, 12, LONG);

    // Both answer with the same windows; exactly one of them holds the account, and the
    // other names it as the instance that answered.
    let view = |svc: &Service| -> serde_json::Value {
        let (code, text) = http(svc.port, "GET", "/v1/accounts/harvester-1", b"").unwrap();
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let mut views = (view(&a), view(&b));
    for _ in 0..100 {
        if views.0["tracked"] == true && views.1["tracked"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        views = (view(&a), view(&b));
    }
    let (va, vb) = views;
    assert_eq!(va["tracked"], true, "{va}\n{}", a.log_text());
    assert_eq!(vb["tracked"], true, "{vb}\n{}", b.log_text());
    assert_eq!(va["windows"], vb["windows"]);
    assert_eq!(va["answered_by"], vb["answered_by"], "one owner");
    let mass = va["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == "mass-harvest-24h")
        .unwrap();
    assert_eq!(mass["value"], 2400);

    // The keys nearest a threshold: the harvester's account tops the list on both.
    for svc in [&a, &b] {
        let (code, text) = http(svc.port, "GET", "/v1/keys/closest?limit=3", b"").unwrap();
        assert_eq!(code, 200, "{text}");
        let closest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let top = &closest["keys"][0];
        assert_eq!(top["key"], "harvester-1", "{closest}");
        assert_eq!(top["answered_by"], va["answered_by"], "{closest}");
    }
    // A key nobody holds: not tracked, answered by the instance asked.
    let (_, text) = http(b.port, "GET", "/v1/keys/account/nobody", b"").unwrap();
    let nobody: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(nobody["tracked"], false);
}
