//! The HTTP ingest pipeline (`[source] kind = "http"`): events posted as NDJSON are
//! parsed once, then routed by (key kind, key) to one of N shard threads, each running
//! one engine per key kind. So every (rule, key) lives on exactly one shard, as it does
//! with Kafka, and both cores are used.
//!
//! State is snapshotted per shard (periodically and on shutdown) and restored at start
//! when the shard count and rules are unchanged.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cvguard_core::{parse_event, Engine, EngineStats, KeyKind, RejectReason, RuleSet, StateSize, WindowValue};
use serde::Serialize;
use tracing::{info, warn};

use crate::snapshot_store::SnapshotStore;
use cvguard_respond::SinkSet;

/// The answer to one ingest request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub accepted: u64,
    pub rejected: BTreeMap<&'static str, u64>,
}

impl IngestReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

enum ShardMsg {
    Event {
        kind: KeyKind,
        line: Vec<u8>,
        clock: i64,
        arrived: Instant,
    },
    Flush(mpsc::Sender<()>),
    Reload([Option<Arc<RuleSet>>; 4]),
    Query(KeyKind, String, mpsc::Sender<Vec<WindowValue>>),
}

/// Per key kind, the rule set an engine of that kind runs (`None`: the kind has no rules).
fn per_kind(rules: &RuleSet) -> [Option<Arc<RuleSet>>; 4] {
    KeyKind::ALL.map(|k| (rules.rules_of_kind_count(k) > 0).then(|| Arc::new(rules.restricted_to(k))))
}

pub struct HttpPipeline {
    rules: std::sync::RwLock<Arc<RuleSet>>,
    metrics: Arc<crate::Metrics>,
    shards: Vec<SyncSender<ShardMsg>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Rejections counted at ingest, by reason index, plus accepted.
    ingest: Mutex<(u64, [u64; RejectReason::ALL.len()])>,
    stats: Arc<Mutex<Vec<(EngineStats, StateSize)>>>,
}

impl HttpPipeline {
    /// Starts `shards` threads, restoring each from its snapshot when possible.
    pub fn start(
        rules: Arc<RuleSet>,
        shards: usize,
        sinks: SinkSet,
        store: SnapshotStore,
        snapshot_interval: Duration,
        responder: Option<Arc<cvguard_respond::Responder>>,
        metrics: Arc<crate::Metrics>,
    ) -> HttpPipeline {
        let n = shards.max(1);
        let per_kind = per_kind(&rules);
        let stats = Arc::new(Mutex::new(vec![(EngineStats::default(), StateSize::default()); n]));
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let name = format!("http/shard-{i}-of-{n}");
            let mut engines = restore(&store, &name, &per_kind);
            for e in engines.iter_mut().flatten() {
                e.track_exposure(responder.is_some());
            }
            let responder = responder.clone();
            let metrics = metrics.clone();
            let (tx, rx) = mpsc::sync_channel::<ShardMsg>(16_384);
            senders.push(tx);
            let (sinks, store, stats) = (sinks.clone(), store.clone(), stats.clone());
            let handle = thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    let mut engines = engines;
                    let mut alerts = Vec::new();
                    let mut last_snapshot = Instant::now();
                    let mut changed = false;
                    loop {
                        match rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(ShardMsg::Event {
                                kind,
                                line,
                                clock,
                                arrived,
                            }) => {
                                let Some(engine) = engines[kind.index()].as_mut() else { continue };
                                engine.process_bytes(&line, Some(clock), &mut alerts);
                                metrics.decided(arrived.elapsed());
                                let now = wall_clock_ms();
                                for mut a in alerts.drain(..) {
                                    if let Some(r) = &responder {
                                        match r.open(&mut a, now) {
                                            Ok(true) => {}
                                            Ok(false) => continue,
                                            Err(e) => warn!(message = "Incident store failed; alert published without a record.", error = %e),
                                        }
                                    }
                                    metrics.alert(&a);
                                    info!(message = "Alert.", rule = %a.rule, key_kind = a.key_kind.as_str(),
                                        action = a.action.as_str(), value = a.value, alert_id = %a.alert_id);
                                    sinks.publish(&serde_json::to_vec(&a).expect("alerts serialize"));
                                    if let Some(r) = &responder {
                                        let _ = r.mark_published(std::slice::from_ref(&a.alert_id));
                                    }
                                }
                                if let Some(r) = &responder {
                                    let updates = engine.take_updates();
                                    if let Err(e) = r.apply_updates(&updates, now) {
                                        warn!(message = "Incident store failed; exposed CVs not recorded.", error = %e);
                                    }
                                }
                                changed = true;
                            }
                            Ok(ShardMsg::Flush(reply)) => {
                                save(&store, &name, &engines);
                                changed = false;
                                let _ = reply.send(());
                            }
                            Ok(ShardMsg::Reload(sets)) => {
                                for (slot, set) in engines.iter_mut().zip(sets) {
                                    match (slot.as_mut(), set) {
                                        (Some(e), Some(set)) => {
                                            e.reload(set);
                                        }
                                        (None, Some(set)) => {
                                            let mut e = Engine::new(set);
                                            e.track_exposure(responder.is_some());
                                            *slot = Some(e);
                                        }
                                        (_, None) => *slot = None,
                                    }
                                }
                                changed = true;
                            }
                            Ok(ShardMsg::Query(kind, key, reply)) => {
                                let values = engines[kind.index()].as_ref().map(|e| e.key_values(kind, &key)).unwrap_or_default();
                                let _ = reply.send(values);
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                        if changed && last_snapshot.elapsed() >= snapshot_interval {
                            save(&store, &name, &engines);
                            last_snapshot = Instant::now();
                            changed = false;
                        }
                        let mut sum = EngineStats::default();
                        let mut size = StateSize::default();
                        for e in engines.iter().flatten() {
                            sum.add(e.stats());
                            size.add(&e.state_size());
                        }
                        stats.lock().expect("stats")[i] = (sum, size);
                    }
                })
                .expect("spawn shard");
            handles.push(handle);
        }
        HttpPipeline {
            rules: std::sync::RwLock::new(rules),
            metrics,
            shards: senders,
            handles: Mutex::new(handles),
            ingest: Mutex::new((0, [0; RejectReason::ALL.len()])),
            stats,
        }
    }

    /// Parses an NDJSON body and routes each valid event; blocks when shards are full.
    pub fn submit(&self, body: &[u8], clock_ms: i64) -> IngestReport {
        let rules = self.rules.read().expect("rules").clone();
        let settings = rules.settings;
        let arrived = Instant::now();
        let mut report = IngestReport::default();
        let mut counted = [0u64; RejectReason::ALL.len()];
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev = match parse_event(line, &settings.limits) {
                Ok(ev) if ev.ts > clock_ms.saturating_add(settings.future_skew_ms) => Err(RejectReason::FutureTs),
                other => other,
            };
            match ev {
                Err(reason) => counted[reason.index()] += 1,
                Ok(ev) => {
                    report.accepted += 1;
                    self.metrics
                        .events_by_action
                        .with_label_values(&[crate::metrics::action_label(&rules, &ev.action)])
                        .inc();
                    for kind in rules.kinds() {
                        if let Some(key) = rules.key_for(kind, &ev) {
                            let shard = shard_of(kind, key, self.shards.len());
                            let _ = self.shards[shard].send(ShardMsg::Event {
                                kind,
                                line: line.to_vec(),
                                clock: clock_ms,
                                arrived,
                            });
                        }
                    }
                }
            }
        }
        for r in RejectReason::ALL {
            if counted[r.index()] > 0 {
                report.rejected.insert(r.as_str(), counted[r.index()]);
            }
        }
        let mut ingest = self.ingest.lock().expect("ingest");
        ingest.0 += report.accepted;
        for (a, b) in ingest.1.iter_mut().zip(counted) {
            *a += b;
        }
        report
    }

    /// Accepted events and ingest rejections by reason since start.
    pub fn ingest_counts(&self) -> (u64, [u64; RejectReason::ALL.len()]) {
        *self.ingest.lock().expect("ingest")
    }

    /// Engine stats and state size summed over shards.
    pub fn engine_stats(&self) -> (EngineStats, StateSize) {
        let mut sum = EngineStats::default();
        let mut size = StateSize::default();
        for (s, z) in self.stats.lock().expect("stats").iter() {
            sum.add(s);
            size.add(z);
        }
        (sum, size)
    }

    /// Swaps the rules on every shard, keeping window state (see `Engine::reload`).
    pub fn reload(&self, rules: Arc<RuleSet>) {
        let sets = per_kind(&rules);
        *self.rules.write().expect("rules") = rules;
        for s in &self.shards {
            let _ = s.send(ShardMsg::Reload(sets.clone()));
        }
    }

    /// The live windows of a key, from the shard that holds it.
    pub fn query(&self, kind: KeyKind, key: &str) -> Vec<WindowValue> {
        let (tx, rx) = mpsc::channel();
        let shard = shard_of(kind, key, self.shards.len());
        let _ = self.shards[shard].send(ShardMsg::Query(kind, key.to_string(), tx));
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }

    /// Finishes queued events and snapshots every shard.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        for s in &self.shards {
            let _ = s.send(ShardMsg::Flush(tx.clone()));
        }
        drop(tx);
        for () in rx.iter() {}
    }

    /// Flushes, then stops the shard threads.
    pub fn shutdown(self) {
        self.flush();
        drop(self.shards);
        for h in self.handles.into_inner().expect("handles") {
            let _ = h.join();
        }
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn shard_of(kind: KeyKind, key: &str, n: usize) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    kind.as_str().hash(&mut h);
    key.hash(&mut h);
    (h.finish() as usize) % n
}

type Engines = [Option<Engine>; 4];

fn restore(store: &SnapshotStore, name: &str, per_kind: &[Option<Arc<RuleSet>>; 4]) -> Engines {
    let fresh = || per_kind.clone().map(|r| r.map(Engine::new));
    let present: Vec<&Arc<RuleSet>> = per_kind.iter().flatten().collect();
    match store.load(name) {
        Ok(Some((_, snaps))) if snaps.len() == present.len() => {
            let restored: Result<Vec<Engine>, _> = present
                .iter()
                .zip(&snaps)
                .map(|(r, s)| Engine::restore((*r).clone(), s))
                .collect();
            match restored {
                Ok(engines) => {
                    info!(message = "Restored snapshot.", shard = name);
                    let mut it = engines.into_iter();
                    per_kind.clone().map(|r| r.and_then(|_| it.next()))
                }
                Err(e) => {
                    warn!(message = "Snapshot taken under other rules; starting empty.", shard = name, error = %e);
                    fresh()
                }
            }
        }
        Ok(Some(_)) => {
            warn!(message = "Snapshot has other key kinds; starting empty.", shard = name);
            fresh()
        }
        Ok(None) => fresh(),
        Err(e) => {
            warn!(message = "Snapshot unreadable; starting empty.", shard = name, error = %e);
            fresh()
        }
    }
}

fn save(store: &SnapshotStore, name: &str, engines: &Engines) {
    let snaps: Vec<_> = engines.iter().flatten().map(Engine::snapshot).collect();
    if let Err(e) = store.save(name, 0, &snaps) {
        warn!(message = "Snapshot failed.", shard = name, error = %e);
    }
}
