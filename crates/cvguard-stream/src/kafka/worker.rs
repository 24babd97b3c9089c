//! A worker thread owns the engines of the partitions routed to it and runs them:
//! parse, detect, publish, wait for acknowledgements, report what is durable, snapshot.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvguard_core::{parse_event, Alert, Engine, KeyKind, Outcome, RejectReason};
use tracing::{info, warn};

use super::align::{Align, EventTime, Progress};
use super::output::{repartition_kind, Outputs, Pending};
use super::regroup::{self, Packer, Packing, Record, Source};
use super::sources::{self, Applied};
use super::{Kinds, Tp};
use crate::health::Health;
use crate::snapshot_store::SnapshotStore;

/// Consumed messages on their way to a worker, copied out of librdkafka's buffers into
/// one byte buffer: two allocations per message, made on the consumer thread and freed
/// on a worker, cost more than the copy.
#[derive(Default)]
pub struct InBatch {
    bytes: Vec<u8>,
    msgs: Vec<InMsg>,
}

/// One consumed message; its key and payload are ranges of its batch's bytes.
pub struct InMsg {
    pub tp: Tp,
    /// When cvguard received it, for the decision-latency histogram.
    pub received: Instant,
    pub offset: i64,
    pub timestamp: Option<i64>,
    key: Option<std::ops::Range<usize>>,
    payload: Option<std::ops::Range<usize>>,
}

/// A message of a batch, as the worker reads it.
pub struct Msg<'a> {
    pub tp: &'a Tp,
    pub received: Instant,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl InBatch {
    /// Room for a poll's worth of small messages up front, so the buffer rarely grows
    /// (and stays under glibc's default mmap threshold of 128 KiB when they are small).
    pub fn with_capacity(messages: usize) -> InBatch {
        InBatch {
            bytes: Vec::with_capacity(messages * 120),
            msgs: Vec::with_capacity(messages),
        }
    }

    pub fn push(
        &mut self,
        tp: Tp,
        received: Instant,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let mut copy = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let key = key.map(&mut copy);
        let payload = payload.map(&mut copy);
        self.msgs.push(InMsg {
            tp,
            received,
            offset,
            timestamp,
            key,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The messages in order, in runs of one partition each.
    fn runs(&self) -> impl Iterator<Item = &[InMsg]> {
        self.msgs.chunk_by(|a, b| a.tp == b.tp)
    }

    /// Appends a copy of a message of another batch.
    fn push_msg(&mut self, m: &Msg<'_>) {
        self.push(m.tp.clone(), m.received, m.offset, m.timestamp, m.key, m.payload);
    }

    fn view<'a>(&'a self, m: &'a InMsg) -> Msg<'a> {
        Msg {
            tp: &m.tp,
            received: m.received,
            offset: m.offset,
            timestamp: m.timestamp,
            key: m.key.clone().map(|r| &self.bytes[r]),
            payload: m.payload.clone().map(|r| &self.bytes[r]),
        }
    }
}

/// What a partition is: an input topic (account rules) or the repartition topic
/// (org, user and ip rules, one engine each, and the source offsets they applied).
pub enum Stage {
    Input(Box<Engine>),
    Repartition {
        engines: Vec<(KeyKind, Engine)>,
        applied: Applied,
    },
}

impl Stage {
    fn engines(&self) -> Vec<&Engine> {
        match self {
            Stage::Input(e) => vec![&**e],
            Stage::Repartition { engines, .. } => engines.iter().map(|(_, e)| e).collect(),
        }
    }

    fn engines_mut(&mut self) -> Vec<&mut Engine> {
        match self {
            Stage::Input(e) => vec![&mut **e],
            Stage::Repartition { engines, .. } => engines.iter_mut().map(|(_, e)| e).collect(),
        }
    }
}

pub struct PartWork {
    pub stage: Stage,
    /// Alerts from offsets below this were published before (by this or another
    /// instance): during the rebuild they are recomputed but not published again.
    pub suppress_below: i64,
    pub next_offset: Option<i64>,
    pub rebuilding: bool,
}

pub enum ToWorker {
    Assign(Tp, Box<PartWork>),
    /// Messages in partition order (several partitions may be mixed).
    Msgs(InBatch),
    /// Finish the partition's in-flight work, snapshot it, drop it, reply its next offset.
    Revoke(Tp, Sender<(Tp, Option<i64>)>),
    /// Finish everything in flight and snapshot every partition; reply their offsets.
    Flush(Sender<Vec<(Tp, i64)>>),
    /// New rules: reload every engine, keeping window state.
    Reload(Arc<Kinds>),
    /// The live windows of a key, if one of this worker's engines holds it.
    Query(cvguard_core::KeyKind, String, Sender<Vec<cvguard_core::WindowValue>>),
    Closest(usize, Sender<Vec<cvguard_core::Closest>>),
    /// Another worker's partitions moved on in event time: try held messages again.
    Wake,
    Stop,
}

/// Offsets whose effects are durable; `urgent` when alerts were among them.
pub struct Durable {
    pub tp: Tp,
    pub next_offset: i64,
    pub urgent: bool,
}

/// Counters a worker keeps about its partitions, summed for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerCounters {
    pub alerts_published: u64,
    pub alerts_suppressed: u64,
    pub dead_lettered: u64,
    pub repartitioned: u64,
    /// Re-keyed events skipped as repetitions of ones applied before (`sources.rs`).
    pub repeats_skipped: u64,
    /// The event time (ms) the partition has reached, for the health watchdog.
    pub newest_event_ms: Option<i64>,
}

pub struct Worker {
    pub rx: Receiver<ToWorker>,
    pub durable_tx: Sender<Durable>,
    pub outputs: Arc<Outputs>,
    /// Replaced on reload.
    pub kinds: Arc<Kinds>,
    pub store: SnapshotStore,
    pub snapshot_interval: Duration,
    pub health: Arc<Health>,
    pub stats: super::PartitionStats,
    /// Records each decision before it is published (`effects.rs`).
    pub effects: crate::Effects,
    /// The store stayed down until the shutdown deadline: no offset or snapshot moves
    /// past what was not recorded, so a restart decides it again.
    pub gave_up: bool,
    pub metrics: Arc<crate::Metrics>,
    /// Event-time alignment of input partitions while they catch up.
    pub align: Arc<Align>,
    /// This worker's place among `peers`.
    pub index: usize,
    /// Every worker's queue, to wake one that holds messages when this one moves on.
    pub peers: Vec<SyncSender<ToWorker>>,
}

/// What processing a batch produces and owes, kept by the worker between batches.
struct BatchOut {
    /// The current message's alerts.
    alerts: Vec<Alert>,
    packer: Packer,
    /// The current event in the compact form of the repartition topic.
    compact: Vec<u8>,
    pending: Pending,
    owed: Owed,
    meter: crate::metrics::LocalMeter,
}

/// What a batch owes the store before its offsets may be committed.
#[derive(Default)]
struct Owed {
    updates: Vec<cvguard_core::IncidentUpdate>,
    published: Vec<String>,
}

struct Live {
    work: PartWork,
    last_snapshot: Instant,
    changed: bool,
    counters: WorkerCounters,
}

impl Live {
    /// Where an input partition is, for alignment (`align.rs`); `None` for the
    /// repartition topic's.
    fn progress(&self) -> Option<Progress> {
        let Stage::Input(engine) = &self.work.stage else {
            return None;
        };
        Some(Progress {
            time: engine.watermark().map_or(EventTime::NotYet, |w| {
                EventTime::At(w + engine.rules().settings.allowed_lateness_ms)
            }),
            decided: self.work.next_offset.unwrap_or(0),
            rekeys_from: self.work.suppress_below,
        })
    }
}

/// Messages of a partition held back while it is ahead of the others in event time, in
/// order; `next` is the first not yet decided.
#[derive(Default)]
struct Held {
    batch: InBatch,
    next: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.batch.len() - self.next
    }
}

/// How many messages a worker handles before it looks at its timers.
const BATCH: usize = 2048;
/// Deliveries a worker lets pile up before it waits for their acknowledgements.
const MAX_PENDING: usize = 50_000;
/// How long a worker lets deliveries pile up (when no alert is among them). Waiting for
/// acknowledgements after every batch stalled the engine for a producer linger and a
/// broker round trip each time; offsets are committed on `commit_interval` anyway.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

impl Worker {
    pub fn run(mut self) {
        let mut parts: HashMap<Tp, Live> = HashMap::new();
        let mut out = BatchOut {
            alerts: Vec::new(),
            packer: Packer::new(self.outputs.repartition_partitions),
            compact: Vec::new(),
            pending: Pending::default(),
            owed: Owed::default(),
            meter: self.metrics.local(),
        };
        let mut touched: HashMap<Tp, bool> = HashMap::new();
        let mut held: HashMap<Tp, Held> = HashMap::new();
        let mut last_settle = Instant::now();
        loop {
            // Held partitions are tried again soon: another worker's may have moved on.
            let wait = if held.is_empty() { 200 } else { 5 };
            let first = match self.rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = first;
            let mut handled = 0;
            // Whether an input partition decided anything, which may let others go on.
            let mut moved = false;
            // One span per batch; alerts and store errors inside it carry the partition.
            let batch = tracing::debug_span!("batch", worker = %std::thread::current().name().unwrap_or("engine"));
            let _batch = batch.enter();
            while let Some(msg) = next.take() {
                match msg {
                    ToWorker::Msgs(batch) => {
                        // A partition's state and span are looked up once per run of its
                        // messages, not per message.
                        for run in batch.runs() {
                            let tp = &run[0].tp;
                            let Some(live) = parts.get_mut(tp) else { continue };
                            let _partition =
                                tracing::debug_span!("partition", topic = %tp.topic, partition = tp.partition)
                                    .entered();
                            let mut urgent = false;
                            let mut decided = 0;
                            let aligned = live.progress().is_some();
                            if !held.contains_key(tp) {
                                for m in run {
                                    if self.must_wait(tp, live, 0) {
                                        break;
                                    }
                                    urgent |= self.process(live, &batch.view(m), &mut out);
                                    decided += 1;
                                }
                            }
                            moved |= aligned && decided > 0;
                            if decided < run.len() {
                                let h = held.entry(tp.clone()).or_default();
                                for m in &run[decided..] {
                                    h.batch.push_msg(&batch.view(m));
                                }
                            }
                            if let Some(at) = live.progress() {
                                self.align.report(tp, at, held.get(tp).map_or(0, Held::len));
                            }
                            match touched.get_mut(tp) {
                                Some(u) => *u |= urgent,
                                None => {
                                    touched.insert(tp.clone(), urgent);
                                }
                            }
                        }
                        // Re-keyed events leave with the batch that accepted them: nothing
                        // waits in the packer past this point, so a revocation or a
                        // settle never commits an input offset ahead of them.
                        for p in out.packer.filled() {
                            self.outputs.repartition(p, out.packer.take(p), &mut out.pending);
                        }
                        out.meter.flush(&self.metrics);
                        handled += batch.len().saturating_sub(1);
                    }
                    ToWorker::Assign(tp, mut work) => {
                        let track = self.effects.records();
                        work.stage
                            .engines_mut()
                            .into_iter()
                            .for_each(|e| e.track_exposure(track));
                        if work.rebuilding {
                            self.health.rebuilding.fetch_add(1, Ordering::Relaxed);
                        }
                        info!(message = "Partition assigned.", topic = %tp.topic, partition = tp.partition,
                            start = ?work.next_offset, suppress_below = work.suppress_below, rebuilding = work.rebuilding);
                        parts.insert(
                            tp,
                            Live {
                                work: *work,
                                last_snapshot: Instant::now(),
                                changed: false,
                                counters: WorkerCounters::default(),
                            },
                        );
                    }
                    ToWorker::Revoke(tp, reply) => {
                        // Held messages were not decided: the next owner reads them again.
                        held.remove(&tp);
                        self.settle(&mut out.pending, &mut out.owed, &mut touched, &parts);
                        let next = parts.remove(&tp).and_then(|live| {
                            if live.work.rebuilding {
                                self.health.rebuilding.fetch_sub(1, Ordering::Relaxed);
                            }
                            self.snapshot(&tp, &live);
                            live.work.next_offset
                        });
                        self.stats.lock().expect("stats lock").remove(&tp);
                        info!(message = "Partition revoked.", topic = %tp.topic, partition = tp.partition, next = ?next);
                        let _ = reply.send((tp, next));
                    }
                    ToWorker::Stop => return,
                    ToWorker::Wake => {}
                    ToWorker::Reload(kinds) => {
                        for live in parts.values_mut() {
                            let track = self.effects.records();
                            match &mut live.work.stage {
                                Stage::Input(e) => {
                                    e.reload(kinds.account.clone());
                                }
                                Stage::Repartition { engines, .. } => {
                                    let mut old = std::mem::take(engines);
                                    for (kind, set) in &kinds.cross {
                                        match old.iter().position(|(k, _)| k == kind) {
                                            Some(i) => {
                                                let (k, mut e) = old.swap_remove(i);
                                                e.reload(set.clone());
                                                engines.push((k, e));
                                            }
                                            None => {
                                                let mut e = Engine::new(set.clone());
                                                e.track_exposure(track);
                                                engines.push((*kind, e));
                                            }
                                        }
                                    }
                                }
                            }
                            live.changed = true;
                        }
                        self.kinds = kinds;
                    }
                    ToWorker::Closest(limit, reply) => {
                        let lists = parts
                            .values()
                            .flat_map(|live| live.work.stage.engines())
                            .map(|e| e.closest(limit))
                            .collect();
                        let _ = reply.send(crate::merge_closest(lists, limit));
                    }
                    ToWorker::Query(kind, key, reply) => {
                        let mut found = Vec::new();
                        for live in parts.values() {
                            for e in live.work.stage.engines() {
                                let v = e.key_values(kind, &key);
                                if !v.is_empty() {
                                    found = v;
                                }
                            }
                        }
                        let _ = reply.send(found);
                    }
                    ToWorker::Flush(reply) => {
                        held.clear();
                        self.settle(&mut out.pending, &mut out.owed, &mut touched, &parts);
                        let mut offsets = Vec::new();
                        for (tp, live) in parts.iter_mut() {
                            self.snapshot(tp, live);
                            live.last_snapshot = Instant::now();
                            live.changed = false;
                            if let Some(n) = live.work.next_offset {
                                offsets.push((tp.clone(), n));
                            }
                        }
                        let _ = reply.send(offsets);
                    }
                }
                handled += 1;
                if handled < BATCH {
                    next = self.rx.try_recv().ok();
                }
            }
            if !held.is_empty() {
                moved |= self.decide_held(&mut parts, &mut held, &mut out, &mut touched);
            }
            self.align.set_holding(self.index, !held.is_empty());
            if moved && self.align.active() {
                for (i, peer) in self.peers.iter().enumerate() {
                    if i != self.index && self.align.is_holding(i) {
                        let _ = peer.try_send(ToWorker::Wake);
                    }
                }
            }
            // Acknowledgements are collected in bulk, alerts included: the store already
            // keeps an alert from going out twice, so committing its offset a few
            // milliseconds later costs nothing, while waiting after each one would stall
            // detection whenever alerts are frequent.
            if out.pending.len() >= MAX_PENDING || last_settle.elapsed() >= SETTLE_EVERY {
                self.settle(&mut out.pending, &mut out.owed, &mut touched, &parts);
                last_settle = Instant::now();
            }
            self.publish_stats(&parts);
            let interval = self.snapshot_interval;
            let due = move |live: &Live| live.changed && live.last_snapshot.elapsed() >= interval;
            if parts.values().any(due) {
                // A snapshot covers what the store must already have: the exposures its
                // events owe are recorded (and their deliveries acknowledged) first, as on
                // revocation. Restored after a kill -9, the engine does not owe them again.
                self.settle(&mut out.pending, &mut out.owed, &mut touched, &parts);
                last_settle = Instant::now();
            }
            for (tp, live) in parts.iter_mut() {
                if due(live) {
                    self.snapshot(tp, live);
                    live.last_snapshot = Instant::now();
                    live.changed = false;
                }
            }
        }
    }

    /// Whether an input partition must wait before deciding its next message, being too
    /// far ahead of the others in event time (`align.rs`); `held`: messages it holds.
    fn must_wait(&self, tp: &Tp, live: &Live, held: usize) -> bool {
        if !self.align.active() {
            return false;
        }
        match live.progress() {
            Some(at) => self.align.must_wait(tp, at, held),
            None => false,
        }
    }

    /// Decides held messages of partitions that may go on, in order; returns whether it
    /// decided any.
    fn decide_held(
        &mut self,
        parts: &mut HashMap<Tp, Live>,
        held: &mut HashMap<Tp, Held>,
        out: &mut BatchOut,
        touched: &mut HashMap<Tp, bool>,
    ) -> bool {
        let mut moved = false;
        for (tp, h) in held.iter_mut() {
            let Some(live) = parts.get_mut(tp) else {
                h.next = h.batch.len();
                continue;
            };
            let mut urgent = false;
            let start = h.next;
            while h.next < h.batch.len() && !self.must_wait(tp, live, h.len()) {
                let m = &h.batch.msgs[h.next];
                urgent |= self.process(live, &h.batch.view(m), out);
                h.next += 1;
            }
            if let Some(at) = live.progress() {
                self.align.report(tp, at, h.len());
            }
            if h.next > start {
                *touched.entry(tp.clone()).or_default() |= urgent;
                moved = true;
            }
        }
        held.retain(|_, h| h.len() > 0);
        for p in out.packer.filled() {
            self.outputs.repartition(p, out.packer.take(p), &mut out.pending);
        }
        out.meter.flush(&self.metrics);
        moved
    }

    /// Records exposed CVs, waits for every delivery, marks the incidents published,
    /// then reports the partitions' offsets as durable.
    fn settle(
        &mut self,
        pending: &mut Pending,
        owed: &mut Owed,
        touched: &mut HashMap<Tp, bool>,
        parts: &HashMap<Tp, Live>,
    ) {
        if self.gave_up {
            return;
        }
        let updates = std::mem::take(&mut owed.updates);
        if self.effects.record_updates(&updates).is_err() {
            self.give_up();
            return;
        }
        if !pending.is_empty() {
            self.outputs.await_all(pending);
        }
        let ids = std::mem::take(&mut owed.published);
        if self.effects.mark_published(&ids).is_err() {
            self.give_up();
            return;
        }
        for (tp, urgent) in touched.drain() {
            if let Some(next) = parts.get(&tp).and_then(|l| l.work.next_offset) {
                let _ = self.durable_tx.send(Durable {
                    tp,
                    next_offset: next,
                    urgent,
                });
            }
        }
    }

    fn give_up(&mut self) {
        if !self.gave_up {
            tracing::error!(message = "Worker stops committing: the incident store stayed down until the shutdown deadline. A restart decides the rest again from Kafka.");
        }
        self.gave_up = true;
    }

    fn publish_stats(&self, parts: &HashMap<Tp, Live>) {
        let mut stats = self.stats.lock().expect("stats lock");
        for (tp, live) in parts {
            let mut sum = cvguard_core::EngineStats::default();
            let mut size = cvguard_core::StateSize::default();
            let mut counters = live.counters;
            for e in live.work.stage.engines() {
                sum.add(e.stats());
                size.add(&e.state_size());
                counters.newest_event_ms = counters.newest_event_ms.max(crate::watchdog::newest_event_ms(e));
            }
            stats.insert(tp.clone(), (sum, counters, size));
        }
    }

    fn snapshot(&self, tp: &Tp, live: &Live) {
        if self.gave_up {
            return;
        }
        let Some(next) = live.work.next_offset else { return };
        if let Stage::Repartition { applied, .. } = &live.work.stage {
            // The source offsets first: a snapshot without them would count repetitions.
            if let Err(e) = sources::save(self.store.dir(), &tp.snapshot_name(), next, applied) {
                warn!(message = "Saving source offsets failed; no snapshot this time.", error = %e);
                return;
            }
        }
        let engines: Vec<_> = live.work.stage.engines().iter().map(|e| e.snapshot()).collect();
        if let Err(e) = self.store.save(&tp.snapshot_name(), next, &engines) {
            warn!(message = "Snapshot failed; the partition will rebuild from Kafka instead.", error = %e);
        }
    }

    /// Processes one message; returns true when it published an alert.
    fn process(&mut self, live: &mut Live, m: &Msg<'_>, out: &mut BatchOut) -> bool {
        let BatchOut {
            alerts,
            packer,
            compact,
            pending,
            owed,
            meter,
        } = out;
        let work = &mut live.work;
        if work.next_offset.is_some_and(|n| m.offset < n) {
            // Already processed (a re-delivery after a seek): skip.
            return false;
        }
        let replaying = m.offset < work.suppress_below;
        let payload = m.payload.unwrap_or_default();
        let source = (m.tp.topic.as_ref(), m.tp.partition, m.offset);
        alerts.clear();
        // Events decided: one per message, or each record of a packed one.
        let mut decisions = 1;
        match &mut work.stage {
            Stage::Input(engine) => {
                let limits = engine.rules().settings.limits;
                let outcome = match parse_event(payload, &limits) {
                    Err(reason) => engine.reject(reason),
                    Ok(ev) => {
                        let outcome = engine.process(&ev, m.timestamp, alerts);
                        if outcome == Outcome::Accepted && !replaying {
                            meter.accepted(crate::metrics::action_label(engine.rules(), &ev.action));
                            // Encoded once, however many key kinds it is re-keyed by.
                            compact.clear();
                            for (kind, rules) in &self.kinds.cross {
                                if let Some(key) = rules.key_for(*kind, &ev) {
                                    if compact.is_empty() {
                                        regroup::encode_event(compact, &ev);
                                    }
                                    let from = Source {
                                        topic: &m.tp.topic,
                                        partition: m.tp.partition,
                                        offset: m.offset,
                                    };
                                    if let Some((partition, full)) = packer.push(*kind, key, compact, m.timestamp, from)
                                    {
                                        self.outputs.repartition(partition, full, pending);
                                    }
                                    live.counters.repartitioned += 1;
                                }
                            }
                        }
                        outcome
                    }
                };
                if let (Outcome::Rejected(reason), false) = (outcome, replaying) {
                    self.dead_letter(source, m, payload, reason, pending, &mut live.counters);
                }
            }
            Stage::Repartition { engines, applied } => {
                if let Some(packing) = Packing::of_key(m.key) {
                    decisions = 0;
                    for record in regroup::records(packing, payload) {
                        if let Ok(Record {
                            kind,
                            source: Some(from),
                            ..
                        }) = &record
                        {
                            if !applied.admit(*kind, *from) {
                                if live.counters.repeats_skipped == 0 {
                                    info!(message = "Skipping re-keyed events this partition applied before (sent again after a restart).",
                                        topic = %m.tp.topic, partition = m.tp.partition, offset = m.offset,
                                        source_topic = from.topic, source_partition = from.partition, source_offset = from.offset);
                                }
                                live.counters.repeats_skipped += 1;
                                continue;
                            }
                        }
                        decisions += 1;
                        match record {
                            Ok(r) => match (
                                engines.iter_mut().find(|(k, _)| *k == r.kind),
                                regroup::decode_event(r.payload),
                            ) {
                                (Some((_, engine)), Some(ev)) => {
                                    engine.process(&ev, r.timestamp, alerts);
                                }
                                (None, _) => no_rules_for(m, r.kind.as_str()),
                                (_, None) => warn!(message = "Malformed re-keyed event; skipped.",
                                    topic = %m.tp.topic, partition = m.tp.partition, offset = m.offset),
                            },
                            Err(e) => {
                                warn!(message = "Malformed packed repartition message; the rest of it is skipped.",
                                topic = %m.tp.topic, partition = m.tp.partition, offset = m.offset, at = e.at, reason = e.why)
                            }
                        }
                    }
                } else {
                    // One event per message, as written before events were packed.
                    let kind = m.key.and_then(repartition_kind);
                    match engines.iter_mut().find(|(k, _)| Some(*k) == kind) {
                        Some((_, engine)) => {
                            engine.process_bytes(payload, m.timestamp, alerts);
                        }
                        None => no_rules_for(m, kind.map_or("none", KeyKind::as_str)),
                    }
                }
            }
        }
        if self.effects.records() {
            // Updates are idempotent in the store, so a rebuild records them again safely.
            for e in work.stage.engines_mut() {
                owed.updates.extend(e.take_updates());
            }
        }
        if !replaying {
            let latency = m.received.elapsed();
            for _ in 0..decisions {
                meter.decided(latency);
            }
        }
        work.next_offset = Some(m.offset + 1);
        live.changed = true;
        if work.rebuilding && m.offset + 1 >= work.suppress_below {
            work.rebuilding = false;
            self.health.rebuilding.fetch_sub(1, Ordering::Relaxed);
            info!(message = "Partition rebuilt.", topic = %m.tp.topic, partition = m.tp.partition, offset = m.offset);
        }
        if alerts.is_empty() {
            return false;
        }
        if replaying {
            live.counters.alerts_suppressed += alerts.len() as u64;
            return false;
        }
        if self.gave_up {
            return false;
        }
        let now = wall_clock_ms();
        let outputs = &self.outputs;
        match self.effects.decide(alerts, |a| outputs.alert(a, now, pending)) {
            Ok(ids) => {
                live.counters.alerts_suppressed += (alerts.len() - ids.len()) as u64;
                live.counters.alerts_published += ids.len() as u64;
                owed.published.extend(ids);
            }
            Err(_) => self.give_up(),
        }
        true
    }

    fn dead_letter(
        &self,
        source: (&str, i32, i64),
        m: &Msg<'_>,
        payload: &[u8],
        reason: RejectReason,
        pending: &mut Pending,
        counters: &mut WorkerCounters,
    ) {
        if self.outputs.dead_letter_topic.is_some() {
            self.outputs.dead_letter(source, m.key, payload, reason, pending);
            counters.dead_lettered += 1;
        }
    }
}

/// Re-keyed events of a kind this instance has no rules for (another instance's config,
/// or a reload that removed them) are skipped.
fn no_rules_for(m: &Msg<'_>, kind: &str) {
    warn!(message = "Repartitioned event for a key kind with no rules; skipped.",
        topic = %m.tp.topic, partition = m.tp.partition, offset = m.offset, key_kind = kind);
}

pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
