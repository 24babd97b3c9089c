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
use rdkafka::types::RDKafkaErrorCode;
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
    create_topic_at(&bootstrap(), name, partitions)
}

/// Creates a topic on the broker at `addr`.
pub fn create_topic_at(addr: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", addr).create().unwrap();
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
        Producer::at(&bootstrap())
    }

    /// A producer to the broker at `addr`.
    pub fn at(addr: &str) -> Producer {
        Producer {
            inner: ClientConfig::new()
                .set("bootstrap.servers", addr)
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

    /// Produces many messages at once (partition, key, payload) and waits for all their
    /// acknowledgements: one round trip per message would take minutes for a simulated board.
    pub fn send_many<'a>(&self, topic: &str, messages: impl IntoIterator<Item = (i32, &'a str, &'a [u8])>) {
        let mut pending = Vec::new();
        for (partition, key, payload) in messages {
            let mut r = FutureRecord::to(topic).key(key).payload(payload).partition(partition);
            loop {
                match self.inner.send_result(r) {
                    Ok(f) => break pending.push(f),
                    Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        self.inner.poll(Duration::from_millis(10));
                        r = back;
                    }
                    Err((e, _)) => panic!("produce to {topic}: {e}"),
                }
            }
        }
        for f in pending {
            futures::executor::block_on(f).unwrap().unwrap();
        }
    }
}

/// The partition the tests send an account's events to: FNV-1a of the account id, so every
/// run puts the same account on the same partition.
pub fn partition_for(account: &str, partitions: i32) -> i32 {
    let h = account.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % partitions as u64) as i32
}

/// Sum of the end offsets (high watermarks) of `topic`'s partitions.
pub fn end_offsets_total(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)
        .sum()
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
        Reader::at(&bootstrap(), topic, partitions)
    }

    /// Reads `topic` on the broker at `addr`.
    pub fn at(addr: &str, topic: &str, partitions: i32) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
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
    committed_total_at(&bootstrap(), group, topic, partitions)
}

/// `committed_total` on the broker at `addr`.
pub fn committed_total_at(addr: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
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
    /// The broker the service is configured with.
    pub bootstrap: String,
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
            bootstrap: bootstrap(),
        }
    }
}

/// A service config for these names: the shipped rules, Kafka source, one state folder.
/// `extra`: more `[kafka.properties]` lines.
pub fn write_config(path: &Path, names: &Names, port: u16, state_dir: &Path, partitions: i32, extra: &str) {
    write_config_with(path, names, port, state_dir, partitions, extra, "");
}

/// Like `write_config`, with more sections (`sections`, e.g. `[profiles]`) before the rules.
pub fn write_config_with(
    path: &Path,
    names: &Names,
    port: u16,
    state_dir: &Path,
    partitions: i32,
    extra: &str,
    sections: &str,
) {
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
{sections}
{rules}"#,
        state = state_dir.display(),
        events = names.events,
        alerts = names.alerts,
        incidents = names.incidents,
        dlq = names.dlq,
        repartition = names.repartition,
        bootstrap = names.bootstrap,
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

/// A broker of the test's own (`KAFKA_PORT=<port> scripts/kafka-up.sh`) that clients reach
/// through a relay, so a test can make the broker unreachable and reachable again without
/// losing what it stores (tansu's only local storage is in memory: a stopped tansu forgets
/// every topic). The broker advertises the relay's port, so every connection, the
/// bootstrap one and those to the broker it names, goes through the relay. Stopped with
/// `scripts/kafka-down.sh` when dropped.
pub struct PrivateBroker {
    broker_port: u16,
    relay: Relay,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let broker_port = crate::service::free_port();
        let relay_port = crate::service::free_port();
        let out = std::process::Command::new(crate::root().join("scripts/kafka-up.sh"))
            .env("KAFKA_PORT", broker_port.to_string())
            .env("KAFKA_ADVERTISED_PORT", relay_port.to_string())
            .output()
            .expect("run scripts/kafka-up.sh");
        assert!(
            out.status.success(),
            "kafka-up.sh on port {broker_port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PrivateBroker {
            broker_port,
            relay: Relay::start(relay_port, broker_port),
        }
    }

    /// The address clients use: the relay's.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.relay.port)
    }

    /// The broker becomes unreachable: open connections are cut, new ones refused.
    pub fn go_away(&self) {
        self.relay.cut();
    }

    /// The broker is reachable again, with everything it stored.
    pub fn come_back(&self) {
        self.relay.restore();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.relay.cut();
        let _ = std::process::Command::new(crate::root().join("scripts/kafka-down.sh"))
            .env("KAFKA_PORT", self.broker_port.to_string())
            .output();
    }
}

/// A TCP relay on 127.0.0.1:`port` to 127.0.0.1:`target`.
struct Relay {
    port: u16,
    shared: std::sync::Arc<RelayShared>,
}

struct RelayShared {
    target: u16,
    /// Bumped on every cut: connections and the accept loop of an older epoch stop.
    epoch: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl Relay {
    fn start(port: u16, target: u16) -> Relay {
        let relay = Relay {
            port,
            shared: std::sync::Arc::new(RelayShared {
                target,
                epoch: std::sync::atomic::AtomicU64::new(0),
                open: std::sync::Mutex::new(Vec::new()),
            }),
        };
        relay.restore();
        relay
    }

    fn restore(&self) {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("bind the relay port");
        listener.set_nonblocking(true).unwrap();
        let shared = self.shared.clone();
        let epoch = shared.epoch.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            while shared.epoch.load(Ordering::SeqCst) == epoch {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", shared.target)) else {
                            continue;
                        };
                        let mut open = shared.open.lock().unwrap();
                        open.push(client.try_clone().unwrap());
                        open.push(server.try_clone().unwrap());
                        drop(open);
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener is dropped here: new connections are refused.
        });
    }

    fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Let the accept loop see the new epoch and drop its listener.
        std::thread::sleep(Duration::from_millis(50));
    }
}
