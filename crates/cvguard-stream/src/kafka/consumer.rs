//! The consumer thread: polls, routes messages to workers by partition, handles
//! rebalances (rebuild on assignment, drain and commit on revocation) and commits the
//! offsets workers report durable.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cvguard_core::{Engine, KeyKind};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::align::{self, Align};
use super::output::Outputs;
use super::worker::{wall_clock_ms, Durable, InBatch, PartWork, Stage, ToWorker, Worker};
use super::{
    base_config, client_config_without_consumer_keys, ensure_topics, KafkaOptions, KafkaRunError, Kinds,
    PartitionStats, Tp,
};
use crate::health::Health;
use crate::snapshot_store::SnapshotStore;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared between the poll loop and the rebalance callbacks (which run inside poll).
struct Shared {
    workers: Vec<SyncSender<ToWorker>>,
    /// Replaced on reload; read at each assignment.
    kinds: std::sync::RwLock<Arc<Kinds>>,
    store: SnapshotStore,
    repartition_topic: String,
    health: Arc<Health>,
    metrics: Arc<crate::Metrics>,
    /// The committed offset of each assigned partition when it was assigned: never
    /// commit below it.
    floors: Mutex<HashMap<Tp, i64>>,
    /// Offsets reported durable and not yet committed.
    durable: Mutex<HashMap<Tp, i64>>,
    /// Event-time alignment of the input partitions while they catch up.
    align: Arc<Align>,
    /// Input partitions paused because their worker holds too many of their messages.
    paused: Mutex<std::collections::HashSet<Tp>>,
    /// Messages polled and not yet handed to their worker, one batch per worker. Handing
    /// over a batch instead of each message spares a thread wake-up per message; a
    /// rebalance flushes them first, so a worker sees a partition's messages before its
    /// revocation.
    outbox: Mutex<Vec<InBatch>>,
}

impl Shared {
    fn kinds(&self) -> Arc<Kinds> {
        self.kinds.read().expect("kinds").clone()
    }

    /// Partitions of a topic go round-robin to workers (from a per-topic start), so six
    /// input and six repartition partitions split three and three over two workers.
    fn worker_index(&self, tp: &Tp) -> usize {
        let mut h = rustc_hash::FxHasher::default();
        tp.topic.hash(&mut h);
        (h.finish() as usize).wrapping_add(tp.partition.max(0) as usize) % self.workers.len()
    }

    fn worker_for(&self, tp: &Tp) -> &SyncSender<ToWorker> {
        &self.workers[self.worker_index(tp)]
    }

    /// Queues a polled message for its worker; sent by `flush_outbox`. Returns how many
    /// that worker has waiting.
    fn queue(&self, tp: Tp, m: &BorrowedMessage<'_>) -> usize {
        let w = self.worker_index(&tp);
        let mut outbox = self.outbox.lock().expect("outbox");
        let batch = &mut outbox[w];
        if batch.is_empty() {
            // Handed over and replaced by an empty one: allocate room for the next.
            *batch = InBatch::with_capacity(HANDOFF);
        }
        batch.push(
            tp,
            Instant::now(),
            m.offset(),
            m.timestamp().to_millis(),
            m.key(),
            m.payload(),
        );
        batch.len()
    }

    fn flush_outbox(&self) {
        let mut outbox = self.outbox.lock().expect("outbox");
        for (w, batch) in outbox.iter_mut().enumerate() {
            if !batch.is_empty() {
                let _ = self.workers[w].send(ToWorker::Msgs(std::mem::take(batch)));
            }
        }
    }
}

/// Most messages handed to a worker at once.
const HANDOFF: usize = 512;

struct Ctx {
    shared: Arc<Shared>,
    metrics: Arc<crate::Metrics>,
}

impl ClientContext for Ctx {
    /// librdkafka's global errors. Every broker down (stopped, unreachable, refusing
    /// connections) makes the source not ready until one answers again (`consume`).
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if self.shared.health.source_connected.swap(false, Ordering::Relaxed) {
                error!(message = "Kafka unreachable: every broker is down. Not ready until one answers; nothing is consumed or committed meanwhile.", reason);
            }
        } else {
            warn!(message = "Kafka client error.", error = %error, reason);
        }
    }

    /// librdkafka's statistics: consumer lag per partition, from the broker's high
    /// watermark (which tansu's memory engine reports wrongly; no test relies on it).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            revoke(&self.shared, consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => assign(&self.shared, consumer, tpl),
            Rebalance::Error(e) => error!(message = "Rebalance error.", error = %e),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp {
            topic: Arc::from(e.topic()),
            partition: e.partition(),
        })
        .collect()
}

/// Revocation: each worker finishes the partition's in-flight work and snapshots it;
/// then its offset is committed and its state dropped.
fn revoke(shared: &Shared, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
    shared.flush_outbox();
    let (tx, rx) = mpsc::channel();
    let list = tps(tpl);
    for tp in &list {
        let _ = shared.worker_for(tp).send(ToWorker::Revoke(tp.clone(), tx.clone()));
    }
    drop(tx);
    let mut commit = TopicPartitionList::new();
    let mut floors = shared.floors.lock().expect("floors");
    for tp in &list {
        shared.align.revoke(tp);
        shared.paused.lock().expect("paused").remove(tp);
    }
    for (tp, next) in rx.iter() {
        let floor = floors.remove(&tp).unwrap_or(-1);
        shared.durable.lock().expect("durable").remove(&tp);
        if let Some(n) = next.filter(|n| *n > floor) {
            let _ = commit.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(n));
        }
    }
    drop(floors);
    if commit.count() > 0 {
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            warn!(message = "Commit on revocation failed; the next owner replays a little more.", error = %e);
        }
    }
}

/// The valid offsets in a list the broker answered.
fn offsets_of(tpl: &TopicPartitionList) -> HashMap<Tp, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) if n >= 0 => Some((
                Tp {
                    topic: Arc::from(e.topic()),
                    partition: e.partition(),
                },
                n,
            )),
            _ => None,
        })
        .collect()
}

/// Assignment: decide where each partition starts and what to suppress, hand it to its
/// worker, and assign again with explicit offsets.
fn assign(shared: &Shared, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
    let list = tps(tpl);
    let committed: HashMap<Tp, i64> = match consumer.committed_offsets(tpl.clone(), BROKER_TIMEOUT) {
        Ok(c) => offsets_of(&c),
        Err(e) => {
            warn!(message = "Could not read committed offsets; rebuilding from the look-back.", error = %e);
            HashMap::new()
        }
    };
    // Where the look-back starts: now minus the longest window and the lateness. The
    // broker may answer an earlier offset than asked (tansu's memory engine answers 0):
    // events older than the windows then simply expire.
    let since = wall_clock_ms() - shared.kinds().max_window.as_millis() as i64;
    let mut lookup = TopicPartitionList::new();
    for tp in &list {
        let _ = lookup.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(since));
    }
    let by_time: HashMap<Tp, i64> = match consumer.offsets_for_times(lookup, BROKER_TIMEOUT) {
        Ok(r) => offsets_of(&r),
        Err(e) => {
            warn!(message = "offsets-for-times failed; rebuilding from the beginning.", error = %e);
            HashMap::new()
        }
    };

    let mut assignment = TopicPartitionList::new();
    for tp in list {
        let floor = committed.get(&tp).copied();
        let (stage, snap_offset) = build_stage(shared, &tp);
        let start = match (snap_offset, floor) {
            (Some(s), _) => s,
            (None, Some(c)) => by_time.get(&tp).copied().unwrap_or(0).min(c),
            (None, None) => by_time.get(&tp).copied().unwrap_or(0),
        };
        let suppress_below = floor.unwrap_or(0).max(snap_offset.unwrap_or(0));
        shared
            .floors
            .lock()
            .expect("floors")
            .insert(tp.clone(), floor.unwrap_or(-1));
        let offset = if start == 0 {
            Offset::Beginning
        } else {
            Offset::Offset(start)
        };
        let _ = assignment.add_partition_offset(&tp.topic, tp.partition, offset);
        if *tp.topic != *shared.repartition_topic {
            shared.align.assign(tp.clone(), start, suppress_below);
        }
        shared.paused.lock().expect("paused").remove(&tp);
        let work = PartWork {
            stage,
            suppress_below,
            next_offset: Some(start),
            rebuilding: start < suppress_below,
        };
        let _ = shared.worker_for(&tp).send(ToWorker::Assign(tp, Box::new(work)));
    }
    if let Err(e) = consumer.assign(&assignment) {
        error!(message = "Assigning with explicit offsets failed.", error = %e);
    }
    // A partition paused under an earlier assignment starts unpaused.
    let _ = consumer.resume(&assignment);
    // Which partitions are catching up, before any of them runs ahead.
    read_ends(shared, consumer);
    shared.health.started.store(true, Ordering::Relaxed);
}

/// A partition's engines: restored from its snapshot when one exists under the same
/// rules, else fresh. Returns the snapshot's next offset when restored.
fn build_stage(shared: &Shared, tp: &Tp) -> (Stage, Option<i64>) {
    let kinds = &shared.kinds();
    let repartition = *tp.topic == *shared.repartition_topic;
    let sets: Vec<Arc<cvguard_core::RuleSet>> = if repartition {
        kinds.cross.iter().map(|(_, r)| r.clone()).collect()
    } else {
        vec![kinds.account.clone()]
    };
    let (next, engines) = match shared.store.restore(&tp.snapshot_name(), &sets, &shared.metrics) {
        Some((next, engines)) => (Some(next), engines),
        None => (None, sets.into_iter().map(Engine::new).collect()),
    };
    let stage = if repartition {
        let applied = match next {
            Some(n) => super::sources::load(shared.store.dir(), &tp.snapshot_name(), n).unwrap_or_else(|| {
                warn!(message = "The snapshot has no source offsets (taken before they were kept): re-keyed events sent again after a crash may count twice.",
                    snapshot = %tp.snapshot_name(), next_offset = n);
                Default::default()
            }),
            None => Default::default(),
        };
        Stage::Repartition {
            engines: kinds.cross.iter().map(|(k, _)| *k).zip(engines).collect(),
            applied,
        }
    } else {
        Stage::Input(Box::new(engines.into_iter().next().expect("one engine")))
    };
    (stage, next)
}

/// What a run processed, for the log line at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    pub messages: u64,
}

/// A running Kafka source: the consumer thread and its workers.
pub struct KafkaHandle {
    control: KafkaControl,
    thread: thread::JoinHandle<Result<RunSummary, KafkaRunError>>,
}

/// Reload and query a running Kafka source; cheap to clone.
#[derive(Clone)]
pub struct KafkaControl {
    shared: Arc<Shared>,
}

impl KafkaHandle {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the consumer to drain and stop (after `shutdown` was set).
    pub fn join(self) -> Result<RunSummary, KafkaRunError> {
        self.thread.join().unwrap_or(Ok(RunSummary::default()))
    }

    pub fn control(&self) -> KafkaControl {
        self.control.clone()
    }
}

impl KafkaControl {
    /// Swaps the rules in every partition's engines, keeping window state.
    pub fn reload(&self, rules: &cvguard_core::RuleSet) {
        let kinds = Arc::new(Kinds::new(rules));
        self.shared.align.set_skew(kinds.alignment_skew_ms());
        *self.shared.kinds.write().expect("kinds") = kinds.clone();
        for w in &self.shared.workers {
            let _ = w.send(ToWorker::Reload(kinds.clone()));
        }
    }

    /// The `limit` pairs closest to their threshold on this instance's partitions;
    /// `None` when some worker did not answer in time.
    pub fn closest(&self, limit: usize) -> Option<Vec<cvguard_core::Closest>> {
        let (tx, rx) = mpsc::channel();
        for w in &self.shared.workers {
            let _ = w.send(ToWorker::Closest(limit, tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lists = Vec::new();
        for _ in 0..self.shared.workers.len() {
            lists.push(
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()?,
            );
        }
        Some(crate::merge_closest(lists, limit))
    }

    /// The live windows of a key from whichever partition's engine holds it.
    pub fn query(&self, kind: KeyKind, key: &str) -> Vec<cvguard_core::WindowValue> {
        let (tx, rx) = mpsc::channel();
        for w in &self.shared.workers {
            let _ = w.send(ToWorker::Query(kind, key.to_string(), tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if !v.is_empty() {
                found = v;
            }
        }
        found
    }
}

/// Starts the consumer group on a thread of its own. It runs until `opts.shutdown` is
/// set, then drains: finishes in-flight work, snapshots, commits and leaves the group.
pub fn start(opts: KafkaOptions, stats: PartitionStats) -> Result<KafkaHandle, KafkaRunError> {
    ensure_topics(&opts.section)?;
    let section = &opts.section;
    let mut producer_config = client_config_without_consumer_keys(section);
    producer_config.set("enable.idempotence", "true");
    if producer_config.get("linger.ms").is_none() {
        // Alerts leave within a millisecond; under load the producer still batches the
        // re-keyed events, as their rate fills a batch within that time.
        producer_config.set("linger.ms", "1");
    }
    if producer_config.get("message.max.bytes").is_none() {
        // librdkafka's default (1,000,000) is below the largest event accepted (1 MiB by
        // default): leave room for it, its packing header or its dead-letter headers.
        let room = opts.rules.settings.limits.max_event_bytes + 64 * 1024;
        producer_config.set("message.max.bytes", room.max(1_000_000).to_string());
    }
    if producer_config.get("message.timeout.ms").is_none() {
        // A delivery that cannot complete is reported (and sent again) after 30 s instead
        // of librdkafka's 5 minutes, so a stuck broker shows in the logs quickly.
        producer_config.set("message.timeout.ms", "30000");
    }
    let producer: FutureProducer = producer_config.create()?;
    let repartition_partitions = super::partition_count(&producer, &section.repartition_topic)?;
    let kinds = Arc::new(Kinds::new(&opts.rules));
    let align = Arc::new(Align::new(kinds.alignment_skew_ms()));
    let outputs = Arc::new(Outputs {
        producer,
        alerts_topic: section.alerts_topic.clone(),
        incidents_topic: section.incidents_topic.clone(),
        dead_letter_topic: section.dead_letter_topic.clone(),
        repartition_topic: section.repartition_topic.clone(),
        repartition_partitions,
        sinks: opts.sinks.clone(),
    });

    let (durable_tx, durable_rx) = mpsc::channel::<Durable>();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..opts.workers.max(1))
        .map(|_| mpsc::sync_channel::<ToWorker>(8192))
        .unzip();
    let mut handles = Vec::new();
    for (i, rx) in receivers.into_iter().enumerate() {
        let worker = Worker {
            rx,
            durable_tx: durable_tx.clone(),
            outputs: outputs.clone(),
            kinds: kinds.clone(),
            store: opts.store.clone(),
            snapshot_interval: opts.snapshot_interval,
            health: opts.health.clone(),
            stats: stats.clone(),
            effects: opts.effects.clone(),
            gave_up: false,
            metrics: opts.metrics.clone(),
            align: align.clone(),
            index: i,
            peers: senders.clone(),
        };
        handles.push(
            thread::Builder::new()
                .name(format!("engine-{i}"))
                .spawn(move || worker.run())
                .expect("spawn worker"),
        );
    }
    drop(durable_tx);

    let shared = Arc::new(Shared {
        outbox: Mutex::new((0..senders.len()).map(|_| InBatch::default()).collect()),
        workers: senders,
        kinds: std::sync::RwLock::new(kinds),
        store: opts.store.clone(),
        repartition_topic: section.repartition_topic.clone(),
        health: opts.health.clone(),
        metrics: opts.metrics.clone(),
        floors: Mutex::new(HashMap::new()),
        durable: Mutex::new(HashMap::new()),
        align,
        paused: Mutex::new(Default::default()),
    });
    let mut config = base_config(section);
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if config.get("auto.offset.reset").is_none() {
        config.set("auto.offset.reset", "earliest");
    }
    if config.get("partition.assignment.strategy").is_none() {
        // Eager assignment: cooperative-sticky leaves partitions unassigned on tansu.
        config.set("partition.assignment.strategy", "range");
    }
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", "5000");
    }
    if config.get("fetch.wait.max.ms").is_none() {
        // librdkafka's 500 ms default is how long a fetch may wait on a quiet partition;
        // tansu holds a fetch for that long even when data arrives, which put half a
        // second between an event and its alert.
        config.set("fetch.wait.max.ms", "10");
    }
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx {
        shared: shared.clone(),
        metrics: opts.metrics.clone(),
    })?;
    let mut topics: Vec<String> = section.topics.clone();
    if !shared.kinds().cross.is_empty() {
        topics.push(section.repartition_topic.clone());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    opts.health.source_connected.store(true, Ordering::Relaxed);
    info!(message = "Consuming.", topics = ?topics, workers = shared.workers.len());
    let loop_shared = shared.clone();
    let thread = thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || Ok(consume(consumer, loop_shared, opts, durable_rx, handles)))
        .expect("spawn consumer");
    Ok(KafkaHandle {
        control: KafkaControl { shared },
        thread,
    })
}

fn consume(
    consumer: BaseConsumer<Ctx>,
    shared: Arc<Shared>,
    opts: KafkaOptions,
    durable_rx: Receiver<Durable>,
    handles: Vec<thread::JoinHandle<()>>,
) -> RunSummary {
    let mut summary = RunSummary::default();
    let mut partitions = Partitions::default();
    let mut last_commit = Instant::now();
    let mut urgent = false;
    let mut last_probe = Instant::now();
    let probe_topic = opts.section.topics.first().cloned();
    let mut last_ends = Instant::now();
    let mut aligning = false;
    while !opts.shutdown.load(Ordering::Relaxed) {
        if !opts.health.source_connected.load(Ordering::Relaxed) && last_probe.elapsed() >= PROBE_EVERY {
            // librdkafka says when every broker is down, not when one is back: ask one.
            last_probe = Instant::now();
            if consumer.fetch_metadata(probe_topic.as_deref(), PROBE_EVERY).is_ok() {
                connected(&opts.health);
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                connected(&opts.health);
                // Take what else is already fetched, without waiting, then hand it over.
                let mut next = Some(Ok(m));
                while let Some(polled) = next.take() {
                    match polled {
                        Ok(m) => {
                            summary.messages += 1;
                            let tp = partitions.get(m.topic(), m.partition());
                            if shared.queue(tp, &m) >= HANDOFF {
                                break;
                            }
                        }
                        Err(e) => warn!(message = "Consumer error.", error = %e),
                    }
                    next = consumer.poll(Duration::ZERO);
                }
                shared.flush_outbox();
            }
            Some(Err(e)) => warn!(message = "Consumer error.", error = %e),
            None => {}
        }
        urgent |= collect_durable(&shared, &durable_rx);
        if last_ends.elapsed() >= ENDS_EVERY && opts.health.source_connected.load(Ordering::Relaxed) {
            last_ends = Instant::now();
            let now = read_ends(&shared, &consumer);
            if now != aligning {
                aligning = now;
                info!(
                    message = if now {
                        "Input partitions are catching up: each waits for the slowest within the allowed lateness of event time, so org, user and ip windows see their events in time order."
                    } else {
                        "Input partitions caught up: no alignment."
                    }
                );
            }
        }
        pause_holding(&shared, &consumer);
        // Offsets after alerts go out early, but asynchronously: the store keeps an alert
        // from being published twice, and a synchronous commit held up polling for a
        // broker round trip after every batch with an alert (seconds of delay for the
        // alerts behind it when alerts are frequent).
        if urgent || last_commit.elapsed() >= opts.commit_interval {
            commit(&shared, &consumer, CommitMode::Async);
            last_commit = Instant::now();
            urgent = false;
        }
    }

    info!(message = "Draining: finishing in-flight work, snapshotting, committing.");
    opts.health.draining.store(true, Ordering::Relaxed);
    shared.flush_outbox();
    let (tx, rx) = mpsc::channel();
    for w in &shared.workers {
        let _ = w.send(ToWorker::Flush(tx.clone()));
    }
    drop(tx);
    for offsets in rx.iter() {
        let mut durable = shared.durable.lock().expect("durable");
        for (tp, n) in offsets {
            durable.insert(tp, n);
        }
    }
    collect_durable(&shared, &durable_rx);
    commit(&shared, &consumer, CommitMode::Sync);
    consumer.unsubscribe();
    drop(consumer);
    for w in &shared.workers {
        let _ = w.send(ToWorker::Stop);
    }
    for h in handles {
        let _ = h.join();
    }
    summary
}

/// How often the input partitions' end offsets are read, to know which are catching up.
const ENDS_EVERY: Duration = Duration::from_secs(1);

/// Reads the input partitions' end offsets (one request); returns whether alignment is on.
fn read_ends(shared: &Shared, consumer: &BaseConsumer<Ctx>) -> bool {
    let list = shared.align.partitions();
    if list.is_empty() {
        return shared.align.set_ends(&HashMap::new());
    }
    let mut tpl = TopicPartitionList::new();
    for tp in &list {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::End);
    }
    match consumer.offsets_for_times(tpl, PROBE_EVERY) {
        Ok(ends) => shared.align.set_ends(&offsets_of(&ends)),
        Err(e) => {
            warn!(message = "Reading end offsets failed; alignment keeps the last ones.", error = %e);
            shared.align.active()
        }
    }
}

/// Pauses input partitions whose worker holds too many of their messages back, and
/// resumes them once it holds fewer than half as many.
fn pause_holding(shared: &Shared, consumer: &BaseConsumer<Ctx>) {
    let (over, under) = shared.align.held_over(align::HOLD_PAUSE);
    let mut paused = shared.paused.lock().expect("paused");
    let mut pause = TopicPartitionList::new();
    for tp in over {
        if paused.insert(tp.clone()) {
            let _ = pause.add_partition(&tp.topic, tp.partition);
        }
    }
    let mut resume = TopicPartitionList::new();
    for tp in under {
        if paused.remove(&tp) {
            let _ = resume.add_partition(&tp.topic, tp.partition);
        }
    }
    if pause.count() > 0 {
        if let Err(e) = consumer.pause(&pause) {
            warn!(message = "Pausing partitions failed.", error = %e);
        }
    }
    if resume.count() > 0 {
        if let Err(e) = consumer.resume(&resume) {
            warn!(message = "Resuming partitions failed.", error = %e);
        }
    }
}

/// How often a disconnected consumer asks a broker for metadata, and how long it waits.
const PROBE_EVERY: Duration = Duration::from_secs(1);

fn connected(health: &Health) {
    if !health.source_connected.swap(true, Ordering::Relaxed) {
        info!(message = "Kafka answers again.");
    }
}

/// One shared `Tp` per partition, so routing a message allocates nothing.
#[derive(Default)]
struct Partitions(Vec<Tp>);

impl Partitions {
    fn get(&mut self, topic: &str, partition: i32) -> Tp {
        if let Some(tp) = self.0.iter().find(|t| t.partition == partition && *t.topic == *topic) {
            return tp.clone();
        }
        let tp = Tp {
            topic: Arc::from(topic),
            partition,
        };
        self.0.push(tp.clone());
        tp
    }
}

fn collect_durable(shared: &Shared, rx: &Receiver<Durable>) -> bool {
    let mut urgent = false;
    let mut durable = shared.durable.lock().expect("durable");
    while let Ok(d) = rx.try_recv() {
        urgent |= d.urgent;
        let slot = durable.entry(d.tp).or_insert(d.next_offset);
        *slot = (*slot).max(d.next_offset);
    }
    urgent
}

fn commit(shared: &Shared, consumer: &BaseConsumer<Ctx>, mode: CommitMode) {
    let floors = shared.floors.lock().expect("floors");
    let mut durable = shared.durable.lock().expect("durable");
    let mut tpl = TopicPartitionList::new();
    let mut done = Vec::new();
    for (tp, n) in durable.iter() {
        // Only partitions still ours, and never below what was committed before.
        match floors.get(tp) {
            Some(floor) if n > floor => {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*n));
                done.push(tp.clone());
            }
            Some(_) => done.push(tp.clone()),
            None => done.push(tp.clone()),
        }
    }
    drop(floors);
    if tpl.count() == 0 {
        durable.clear();
        return;
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            for tp in done {
                durable.remove(&tp);
            }
        }
        Err(e) => warn!(message = "Commit failed; will retry.", error = %e),
    }
}
