//! A real Kafka-compatible broker for the tests: the tansu started by
//! `scripts/kafka-up.sh` (make test runs it), on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// `CVGUARD_TEST_KAFKA`, else the address kafka-up.sh uses.
pub fn bootstrap() -> String {
    std::env::var("CVGUARD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Fails the test with the fix when no broker answers.
pub fn require_broker() {
    let addr = bootstrap();
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!("no Kafka-compatible broker on {addr}: run scripts/kafka-up.sh (make test does)");
    }
}

pub fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let r = futures::executor::block_on(admin.create_topics([&topic], &opts)).unwrap();
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

pub struct Producer {
    inner: FutureProducer,
}

impl Default for Producer {
    fn default() -> Self {
        Producer::new()
    }
}

impl Producer {
    pub fn new() -> Producer {
        Producer {
            inner: ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("enable.idempotence", "true")
                .create()
                .unwrap(),
        }
    }

    /// Produces and waits for the acknowledgement.
    pub fn send(&self, topic: &str, partition: Option<i32>, key: &str, payload: &[u8]) {
        let mut r = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(p) = partition {
            r = r.partition(p);
        }
        let f = self.inner.send_result(r).map_err(|(e, _)| e).unwrap();
        futures::executor::block_on(f).unwrap().unwrap();
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Read {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Reads a topic from the beginning, keeping everything it has seen.
pub struct Reader {
    consumer: BaseConsumer,
    pub seen: Vec<Read>,
}

impl Reader {
    pub fn new(topic: &str, partitions: i32) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", crate::service::unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Polls for `d`.
    pub fn poll_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(50)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default()).to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.seen.push(Read {
                    partition: m.partition(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }

    /// Polls until `done(seen)` or the timeout; returns whether it was met.
    pub fn until(&mut self, timeout: Duration, done: impl Fn(&[Read]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.seen) {
                return true;
            }
            self.poll_for(Duration::from_millis(200));
        }
        done(&self.seen)
    }

    pub fn json(&self) -> Vec<serde_json::Value> {
        self.seen.iter().map(Read::json).collect()
    }
}

/// Sum of the offsets `group` has committed on `topic`'s partitions.
pub fn committed_total(group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    c.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) if n > 0 => n,
            _ => 0,
        })
        .sum()
}

/// Waits until `group` has committed `expected` messages in all on `topic`.
pub fn wait_committed(group: &str, topic: &str, partitions: i32, expected: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = 0;
    while Instant::now() < deadline {
        last = committed_total(group, topic, partitions);
        if last >= expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("group {group} committed {last} of {expected} on {topic}");
}

/// Topic and group names of one test's service.
pub struct Names {
    pub events: String,
    pub alerts: String,
    pub incidents: String,
    pub dlq: String,
    pub repartition: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let u = crate::service::unique(test);
        Names {
            events: format!("events-{u}"),
            alerts: format!("alerts-{u}"),
            incidents: format!("incidents-{u}"),
            dlq: format!("dlq-{u}"),
            repartition: format!("repartition-{u}"),
            group: format!("cvguard-{u}"),
        }
    }
}

/// A service config for these names: the shipped rules, Kafka source, one state folder.
pub fn write_config(path: &Path, names: &Names, port: u16, state_dir: &Path, partitions: i32, extra: &str) {
    let shipped = std::fs::read_to_string(crate::root().join("config/cvguard.toml")).unwrap();
    // Keep the shipped rules and allowlist; drop its profile file, use the test's own.
    let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
    let text = format!(
        r#"
[source]
kind = "kafka"
[http]
listen = "127.0.0.1:{port}"
[state]
dir = "{state}"
snapshot_interval = "1s"
[store]
url = "sqlite://{state}/cvguard.db"
[service]
commit_interval = "200ms"
shutdown_timeout = "20s"
[kafka]
topics = ["{events}"]
alerts_topic = "{alerts}"
incidents_topic = "{incidents}"
dead_letter_topic = "{dlq}"
repartition_topic = "{repartition}"
partitions = {partitions}
[kafka.properties]
"bootstrap.servers" = "{bootstrap}"
"group.id" = "{group}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{extra}
{rules}"#,
        state = state_dir.display(),
        events = names.events,
        alerts = names.alerts,
        incidents = names.incidents,
        dlq = names.dlq,
        repartition = names.repartition,
        bootstrap = bootstrap(),
        group = names.group,
    );
    std::fs::write(path, text).unwrap();
}

/// Event time of batch 0 of the test harvest: Saturday 4 May 2024, 06:00 CEST.
pub const HARVEST_T0: i64 = 1_714_795_200_000;

/// Batch `i` of a werk.nl-style harvest: 200 distinct CV downloads, one batch every 195 s.
pub fn harvest_batch(account: &str, i: u32) -> String {
    let ids: Vec<String> = (0..200).map(|k| format!("\"cv-{:07}\"", i * 200 + k)).collect();
    format!(
        r#"{{"ts":{},"event_id":"{account}-b{i}","account_id":"{account}","action":"cv_download","cv_ids":[{}],"cv_visibility":"{}","ip":"198.51.100.66"}}"#,
        HARVEST_T0 + i64::from(i) * 195_000,
        ids.join(","),
        if i.is_multiple_of(3) { "anonymous" } else { "named" }
    )
}
