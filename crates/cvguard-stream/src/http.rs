//! The HTTP ingest pipeline (`[source] kind = "http"`).
//!
//! A posted NDJSON body is validated, its accepted lines are appended to the ingest log
//! and fsynced (`ingest_log.rs`), and only then answered: a 202 means the events count
//! after any crash. The record goes, in log order, to every shard thread; a shard decides
//! the events of the keys it owns.
//!
//! Keys are spread over a fixed number of parts (`PARTS`), each with one engine per key
//! kind, its own snapshot and its own position in the log; a shard thread runs the parts
//! `p` with `p % shards == i`. So a part sees the same events in the same order whatever
//! the `workers` setting, and a restart with another worker count keeps every window.
//! At start each part is restored from its snapshot and the log is replayed from the
//! oldest part's position; a part skips records its snapshot already covers.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cvguard_core::{
    parse_event, Alert, Closest, Engine, EngineStats, IncidentUpdate, KeyKind, Outcome, RejectReason, RuleSet,
    StateSize, WindowValue,
};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::effects::{Effects, GaveUp};
use crate::ingest_log::IngestLog;
use crate::snapshot_store::SnapshotStore;
use cvguard_respond::SinkSet;

/// Parts the keys are spread over. Fixed: changing it would move keys between parts and
/// so between snapshots.
pub const PARTS: usize = 16;

/// How long a request waits for the shards' verdict (late counts) after its events are
/// durable. Past it the answer says `decided: false`; the events still count.
const DECIDE_WAIT: Duration = Duration::from_secs(5);

/// The answer to one ingest request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Events appended to the ingest log: they count after any crash.
    pub accepted: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    /// Accepted events older than some key's watermark: logged, counted, in no window.
    pub late: u64,
    /// Accepted events whose `event_id` was already accepted within
    /// `engine.dedupe_window`: a second delivery, counted once.
    pub duplicates: u64,
    /// Whether every shard decided the accepted events before the answer.
    pub decided: bool,
}

impl IngestReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Why nothing of a request was accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Too many bytes accepted and not yet decided: the client should retry later.
    #[error("ingest is {in_flight} bytes behind (limit {limit}); retry later")]
    Busy { in_flight: u64, limit: u64 },
    /// The ingest log could not be written (a full disk, an I/O error).
    #[error("the ingest log could not be written: {0}")]
    Log(std::io::Error),
    /// Still deciding the log's records from before the start: new events would come
    /// before older ones.
    #[error("catching up with the ingest log after a restart; retry shortly")]
    CatchingUp,
}

/// One record of the ingest log on its way through the shards.
struct Batch {
    seq: u64,
    clock_ms: i64,
    /// The accepted lines, each ending in `\n`.
    lines: Vec<u8>,
    arrived: Instant,
    /// Shards that have not finished it yet.
    pending: AtomicUsize,
    /// Per line: late for some key kind.
    late: Vec<AtomicBool>,
    /// Per line: a duplicate delivery for some key kind.
    duplicate: Vec<AtomicBool>,
    /// Told (late, duplicates) when the last shard finished (a live request waits on it).
    done: Mutex<Option<Sender<(u64, u64)>>>,
    in_flight: Arc<AtomicU64>,
    in_flight_gauge: prometheus::IntGauge,
    /// Late events since start, added to when the last shard finishes a live batch (a
    /// replayed one was counted by the process that accepted it).
    late_total: Arc<AtomicU64>,
    duplicate_total: Arc<AtomicU64>,
    live: bool,
}

impl Batch {
    fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let left = self.in_flight.fetch_sub(self.lines.len() as u64, Ordering::AcqRel) - self.lines.len() as u64;
            self.in_flight_gauge.set(left as i64);
            let count = |flags: &[AtomicBool]| flags.iter().filter(|f| f.load(Ordering::Relaxed)).count() as u64;
            // An event one engine found late and another a duplicate counts once, as a
            // duplicate (a second delivery is what it is).
            let duplicates = count(&self.duplicate);
            let late = self
                .late
                .iter()
                .zip(&self.duplicate)
                .filter(|(l, d)| l.load(Ordering::Relaxed) && !d.load(Ordering::Relaxed))
                .count() as u64;
            if self.live {
                self.late_total.fetch_add(late, Ordering::Relaxed);
                self.duplicate_total.fetch_add(duplicates, Ordering::Relaxed);
            }
            if let Some(tx) = self.done.lock().expect("batch").take() {
                let _ = tx.send((late, duplicates));
            }
        }
    }
}

enum ShardMsg {
    Batch(Arc<Batch>),
    /// Snapshot every part now; reply whether the effects owed were recorded.
    Flush(Sender<Result<(), GaveUp>>),
    Reload(Arc<RuleSet>),
    Query(KeyKind, String, Sender<Vec<WindowValue>>),
    Closest(usize, Sender<Vec<Closest>>),
}

/// Per key kind, the rule set an engine of that kind runs (`None`: the kind has no rules).
pub(crate) fn per_kind(rules: &RuleSet) -> [Option<Arc<RuleSet>>; 4] {
    KeyKind::ALL.map(|k| (rules.rules_of_kind_count(k) > 0).then(|| Arc::new(rules.restricted_to(k))))
}

pub struct HttpPipeline {
    rules: std::sync::RwLock<Arc<RuleSet>>,
    metrics: Arc<crate::Metrics>,
    log: Arc<IngestLog>,
    shards: Vec<Sender<ShardMsg>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Rejections counted at ingest, by reason index, plus accepted.
    ingest: Mutex<(u64, [u64; RejectReason::ALL.len()])>,
    stats: Arc<Mutex<Vec<(EngineStats, StateSize)>>>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: u64,
    late_total: Arc<AtomicU64>,
    duplicate_total: Arc<AtomicU64>,
    effects: Effects,
    /// Keys the part hash (see `part_of`).
    seed: u64,
    /// Replaying the log's records from before the start; ingest waits for it.
    catching_up: AtomicBool,
    health: Arc<crate::Health>,
    progress: PartProgress,
}

/// Per part: (event time reached, events its engines took in), for the health watchdog.
type PartProgress = Arc<Mutex<Vec<(Option<i64>, u64)>>>;

/// What `HttpPipeline::start` needs.
pub struct HttpOptions {
    pub rules: Arc<RuleSet>,
    pub shards: usize,
    pub sinks: SinkSet,
    pub store: SnapshotStore,
    pub snapshot_interval: Duration,
    pub effects: Effects,
    pub metrics: Arc<crate::Metrics>,
    pub max_in_flight_bytes: u64,
    /// Counts the catch-up after a restart as rebuilding, so /readyz says not ready.
    pub health: Arc<crate::Health>,
    /// `state.ingest_segment_bytes`.
    pub segment_bytes: u64,
}

impl HttpPipeline {
    /// Opens the ingest log, restores every part and starts the shard threads; then
    /// replays the log from the oldest part's position on a thread of its own, while the
    /// API already answers (/readyz 503, ingest 503 until it is done).
    pub fn start(o: HttpOptions) -> std::io::Result<Arc<HttpPipeline>> {
        let health = o.health.clone();
        let n = o.shards.clamp(1, PARTS);
        let log = Arc::new(IngestLog::open(o.store.dir().join("ingest"), o.segment_bytes)?);
        let seed = parts_seed(o.store.dir())?;
        let sets = per_kind(&o.rules);
        let present: Vec<Arc<RuleSet>> = sets.iter().flatten().cloned().collect();
        let mut parts: Vec<Option<Part>> = (0..PARTS)
            .map(|p| {
                let name = part_name(p);
                let (next, engines) = match o.store.restore(&name, &present, &o.metrics) {
                    Some((next, engines)) => (next.max(0) as u64, Some(engines)),
                    None => (0, None),
                };
                let mut it = engines.map(Vec::into_iter);
                let mut engines = sets.clone().map(|set| {
                    set.map(|set| match it.as_mut() {
                        Some(it) => it.next().expect("one engine per present kind"),
                        None => Engine::new(set),
                    })
                });
                for e in engines.iter_mut().flatten() {
                    e.track_exposure(o.effects.records());
                    e.share_keys(PARTS);
                }
                Some(Part {
                    name,
                    next,
                    engines,
                    dirty: false,
                })
            })
            .collect();
        let positions: Vec<u64> = parts.iter().flatten().map(|p| p.next).collect();
        let replay_from = positions.iter().copied().min().unwrap_or(0);
        let (writer, jobs) = mpsc::channel();
        let unsaved: Arc<Vec<AtomicBool>> = Arc::new((0..PARTS).map(|_| AtomicBool::new(false)).collect());
        let snapshot_writer = {
            let (store, log, unsaved) = (o.store.clone(), log.clone(), unsaved.clone());
            let log_bytes = o.metrics.ingest_log_bytes.clone();
            thread::Builder::new()
                .name("snapshots".into())
                .spawn(move || write_snapshots(jobs, store, log, positions, &unsaved, log_bytes))?
        };
        let stats = Arc::new(Mutex::new(vec![(EngineStats::default(), StateSize::default()); n]));
        let in_flight = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Mutex::new(vec![(None, 0); PARTS]));
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, rx) = mpsc::channel::<ShardMsg>();
            senders.push(tx);
            let mine: Vec<(usize, Part)> = (0..PARTS)
                .filter(|p| p % n == i)
                .map(|p| (p, parts[p].take().expect("each part goes to one shard")))
                .collect();
            let shard = Shard {
                index: i,
                shards: n,
                parts: mine,
                rules: o.rules.clone(),
                effects: o.effects.clone(),
                sinks: o.sinks.clone(),
                metrics: o.metrics.clone(),
                stats: stats.clone(),
                writer: writer.clone(),
                unsaved: unsaved.clone(),
                snapshot_interval: o.snapshot_interval,
                gave_up: false,
                told_key_limit: false,
                seed,
                progress: progress.clone(),
            };
            handles.push(
                thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || shard.run(rx))?,
            );
        }
        drop(writer);
        handles.push(snapshot_writer);
        let pipeline = HttpPipeline {
            rules: std::sync::RwLock::new(o.rules),
            metrics: o.metrics,
            log,
            shards: senders,
            handles: Mutex::new(handles),
            ingest: Mutex::new((0, [0; RejectReason::ALL.len()])),
            stats,
            in_flight,
            max_in_flight: o.max_in_flight_bytes.max(1),
            late_total: Arc::new(AtomicU64::new(0)),
            duplicate_total: Arc::new(AtomicU64::new(0)),
            effects: o.effects.clone(),
            catching_up: AtomicBool::new(true),
            health: o.health.clone(),
            seed,
            progress,
        };
        pipeline.metrics.ingest_log_bytes.set(pipeline.log.bytes() as i64);
        let pipeline = Arc::new(pipeline);
        health.rebuilding.fetch_add(1, Ordering::Relaxed);
        let catch_up = pipeline.clone();
        thread::Builder::new().name("catch-up".into()).spawn(move || {
            match catch_up.replay(replay_from) {
                Ok(()) => {
                    catch_up.catching_up.store(false, Ordering::Release);
                    health.rebuilding.fetch_sub(1, Ordering::Relaxed);
                }
                // Left not ready on purpose: an unreadable log needs an operator.
                Err(e) => error!(message = "The ingest log could not be replayed; staying not ready.", error = %e),
            }
        })?;
        Ok(pipeline)
    }

    /// Hands the log's records from `from` on to the shards, as at the time they were
    /// accepted, keeping no more than the in-flight limit in memory.
    fn replay(&self, from: u64) -> std::io::Result<()> {
        let started = Instant::now();
        let mut records = 0u64;
        let end = self.log.next_seq();
        if from < end {
            info!(message = "Replaying the ingest log.", from, to = end);
        }
        self.log
            .read_from(from, |r| {
                while self.in_flight.load(Ordering::Acquire) > self.max_in_flight {
                    thread::sleep(Duration::from_millis(5));
                }
                self.in_flight.fetch_add(r.payload.len() as u64, Ordering::AcqRel);
                self.route(r.seq, r.clock_ms, r.payload.to_vec(), None);
                records += 1;
                Ok::<(), ()>(())
            })?
            .ok();
        // Ready means caught up: the API answers from state that includes every
        // acknowledged event.
        while self.in_flight.load(Ordering::Acquire) > 0 {
            thread::sleep(Duration::from_millis(5));
        }
        if records > 0 {
            info!(message = "Ingest log replayed.", records, elapsed = ?started.elapsed());
        }
        Ok(())
    }

    fn route(&self, seq: u64, clock_ms: i64, lines: Vec<u8>, done: Option<Sender<(u64, u64)>>) {
        // The caller reserved `lines.len()` bytes of `in_flight`; the last shard to finish
        // the batch gives them back.
        let count = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        self.metrics
            .ingest_in_flight_bytes
            .set(self.in_flight.load(Ordering::Relaxed) as i64);
        let live = done.is_some();
        let batch = Arc::new(Batch {
            seq,
            clock_ms,
            lines,
            arrived: Instant::now(),
            pending: AtomicUsize::new(self.shards.len()),
            late: (0..count).map(|_| AtomicBool::new(false)).collect(),
            duplicate: (0..count).map(|_| AtomicBool::new(false)).collect(),
            done: Mutex::new(done),
            in_flight: self.in_flight.clone(),
            in_flight_gauge: self.metrics.ingest_in_flight_bytes.clone(),
            late_total: self.late_total.clone(),
            duplicate_total: self.duplicate_total.clone(),
            live,
        });
        for s in &self.shards {
            if s.send(ShardMsg::Batch(batch.clone())).is_err() {
                // A shard that ended (a panic) will not finish it; the request must not wait.
                batch.finish();
            }
        }
    }

    /// Validates an NDJSON body, appends its accepted events to the ingest log (fsync),
    /// hands them to the shards and waits briefly for their verdict. Nothing is accepted
    /// when ingest is too far behind or the log cannot be written.
    pub fn submit(&self, body: &[u8], clock_ms: i64) -> Result<IngestReport, IngestError> {
        if self.catching_up.load(Ordering::Acquire) {
            self.metrics.ingest_refused.with_label_values(&["catching_up"]).inc();
            return Err(IngestError::CatchingUp);
        }
        // Reserve the body's bytes first, atomically: requests arriving together cannot
        // all pass a check made before any of them was counted. So bytes in flight stay
        // under the limit plus one body. A last line without a line break gets one in the
        // log, so it is reserved too.
        let reserved = body.len() as u64 + u64::from(!body.is_empty() && !body.ends_with(b"\n"));
        let in_flight = self.in_flight.fetch_add(reserved, Ordering::AcqRel);
        if in_flight > self.max_in_flight {
            self.in_flight.fetch_sub(reserved, Ordering::AcqRel);
            self.metrics.ingest_refused.with_label_values(&["busy"]).inc();
            return Err(IngestError::Busy {
                in_flight,
                limit: self.max_in_flight,
            });
        }
        let rules = self.rules.read().expect("rules").clone();
        let settings = rules.settings;
        let mut report = IngestReport::default();
        let mut counted = [0u64; RejectReason::ALL.len()];
        let mut accepted = Vec::with_capacity(body.len());
        let mut by_action: Vec<(String, u64)> = Vec::new();
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
                    let label = crate::metrics::action_label(&rules, &ev.action);
                    match by_action.iter_mut().find(|(a, _)| *a == label) {
                        Some((_, n)) => *n += 1,
                        None => by_action.push((label.to_string(), 1)),
                    }
                    accepted.extend_from_slice(line);
                    accepted.push(b'\n');
                }
            }
        }
        for r in RejectReason::ALL {
            if counted[r.index()] > 0 {
                report.rejected.insert(r.as_str(), counted[r.index()]);
            }
        }
        // Keep reserved only what goes to the shards.
        self.in_flight
            .fetch_sub(reserved - accepted.len() as u64, Ordering::AcqRel);
        let waiter = if report.accepted > 0 {
            let (tx, rx) = mpsc::channel();
            let appended = self.log.append(clock_ms, &accepted, |seq| {
                self.route(seq, clock_ms, accepted.clone(), Some(tx));
            });
            if let Err(e) = appended {
                self.in_flight.fetch_sub(accepted.len() as u64, Ordering::AcqRel);
                self.health
                    .ingest_log_failed_at_ms
                    .store(crate::effects::wall_clock_ms(), Ordering::Relaxed);
                self.metrics.ingest_refused.with_label_values(&["log"]).inc();
                error!(message = "Ingest log write failed; the request is refused and nothing accepted.", error = %e);
                return Err(IngestError::Log(e));
            }
            self.health.ingest_log_failed_at_ms.store(0, Ordering::Relaxed);
            Some(rx)
        } else {
            None
        };
        for (label, n) in by_action {
            self.metrics
                .events_by_action
                .with_label_values(&[label.as_str()])
                .inc_by(n);
        }
        {
            let mut ingest = self.ingest.lock().expect("ingest");
            ingest.0 += report.accepted;
            for (a, b) in ingest.1.iter_mut().zip(counted) {
                *a += b;
            }
        }
        self.metrics.ingest_log_bytes.set(self.log.bytes() as i64);
        report.decided = true;
        if let Some(rx) = waiter {
            // While the store fails, decisions wait for it: the events are durable, and
            // the client need not wait too.
            let wait = if self.effects.store_failing() {
                Duration::ZERO
            } else {
                DECIDE_WAIT
            };
            match rx.recv_timeout(wait) {
                Ok((late, duplicates)) => {
                    report.late = late;
                    report.duplicates = duplicates;
                }
                Err(_) => report.decided = false,
            }
        }
        Ok(report)
    }

    /// Accepted events and ingest rejections by reason since start.
    pub fn ingest_counts(&self) -> (u64, [u64; RejectReason::ALL.len()]) {
        *self.ingest.lock().expect("ingest")
    }

    /// Each event once: accepted into the log (less those late for some key kind), late,
    /// or rejected at ingest. Replayed records are not counted again.
    pub fn event_counts(&self) -> crate::EventCounts {
        let (accepted, rejected) = self.ingest_counts();
        let late = self.late_total.load(Ordering::Relaxed).min(accepted);
        let duplicate = self.duplicate_total.load(Ordering::Relaxed).min(accepted - late);
        crate::EventCounts {
            accepted: accepted - late - duplicate,
            late,
            duplicate,
            rejected,
        }
    }

    /// Each part's event time and events taken in, for the health watchdog.
    pub fn sources(&self) -> Vec<crate::watchdog::SourceObservation> {
        let progress = self.progress.lock().expect("progress");
        progress
            .iter()
            .enumerate()
            .map(|(p, (watermark_ms, events))| crate::watchdog::SourceObservation {
                name: part_name(p),
                watermark_ms: *watermark_ms,
                events: *events,
                lag: None,
            })
            .collect()
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
        *self.rules.write().expect("rules") = rules.clone();
        for s in &self.shards {
            let _ = s.send(ShardMsg::Reload(rules.clone()));
        }
    }

    /// The live windows of a key, from the shard that holds it.
    pub fn query(&self, kind: KeyKind, key: &str) -> Option<Vec<WindowValue>> {
        let (tx, rx) = mpsc::channel();
        let shard = part_of(self.seed, kind, key) % self.shards.len();
        let _ = self.shards[shard].send(ShardMsg::Query(kind, key.to_string(), tx));
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// The `limit` (key, rule) pairs closest to their threshold across every shard;
    /// `None` when some shard did not answer in time.
    pub fn closest(&self, limit: usize) -> Option<Vec<Closest>> {
        let (tx, rx) = mpsc::channel();
        for s in &self.shards {
            let _ = s.send(ShardMsg::Closest(limit, tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lists = Vec::new();
        for _ in 0..self.shards.len() {
            lists.push(
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()?,
            );
        }
        Some(crate::merge_closest(lists, limit))
    }

    /// Finishes queued events and snapshots every part. An error says some shard could
    /// not record its effects before the shutdown deadline: its snapshot was not moved,
    /// so a restart decides those events again from the log.
    pub fn flush(&self) -> Result<(), GaveUp> {
        let (tx, rx) = mpsc::channel();
        for s in &self.shards {
            let _ = s.send(ShardMsg::Flush(tx.clone()));
        }
        drop(tx);
        rx.iter().collect()
    }

    /// Flushes, then stops the shard threads. An error if a shard panicked or gave up.
    pub fn shutdown(self) -> Result<(), String> {
        let flushed = self.flush();
        drop(self.shards);
        let mut panicked = 0;
        for h in self.handles.into_inner().expect("handles") {
            if h.join().is_err() {
                panicked += 1;
            }
        }
        match (flushed, panicked) {
            (Ok(()), 0) => Ok(()),
            (Err(e), _) => Err(e.to_string()),
            (_, n) => Err(format!("{n} shard thread(s) panicked")),
        }
    }
}

pub(crate) fn part_name(p: usize) -> String {
    format!("http/part-{p}-of-{PARTS}")
}

/// The part a key belongs to: fixed for a key, whatever the number of shards. The hash is
/// keyed by a secret of the state folder (`parts_seed`): each part holds a 16th of
/// `engine.max_tracked_keys`, and with a public hash an ingest client could fill the one
/// part a victim's key lives in with fresh ids and blind detection for it.
pub fn part_of(seed: u64, kind: KeyKind, key: &str) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    seed.hash(&mut h);
    kind.as_str().hash(&mut h);
    key.hash(&mut h);
    (h.finish() as usize) % PARTS
}

/// The state folder's part seed: made at random on first use and kept, since the parts'
/// snapshots depend on it.
pub(crate) fn parts_seed(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::hash::BuildHasher;
    let path = dir.join("parts.seed");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            u64::from_str_radix(text.trim(), 16).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            // RandomState is seeded from the OS's randomness once per process.
            let seed = std::collections::hash_map::RandomState::new().hash_one(wall_clock_nanos());
            let tmp = path.with_extension("tmp");
            {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, format!("{seed:016x}\n").as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(seed)
        }
        Err(e) => Err(e),
    }
}

fn wall_clock_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct Part {
    name: String,
    /// The next log record this part has not decided.
    next: u64,
    engines: [Option<Engine>; 4],
    /// Some event of its keys was decided since its last snapshot.
    dirty: bool,
}

struct Shard {
    index: usize,
    shards: usize,
    /// (part number, part), the parts `p % shards == index`.
    parts: Vec<(usize, Part)>,
    rules: Arc<RuleSet>,
    effects: Effects,
    sinks: SinkSet,
    metrics: Arc<crate::Metrics>,
    stats: Arc<Mutex<Vec<(EngineStats, StateSize)>>>,
    /// Where snapshots are written, off the deciding thread.
    writer: Sender<SaveJob>,
    /// Per part, set by the writer when its snapshot failed: copy it again next time.
    unsaved: Arc<Vec<AtomicBool>>,
    snapshot_interval: Duration,
    /// The store stayed down past the shutdown deadline: nothing more is decided or
    /// snapshotted, so a restart decides again from the log.
    gave_up: bool,
    /// The key limit's system alert went out (once per process and shard).
    told_key_limit: bool,
    /// Keys the part hash (see `part_of`).
    seed: u64,
    progress: PartProgress,
}

impl Shard {
    fn run(mut self, rx: Receiver<ShardMsg>) {
        let mut alerts = Vec::new();
        let mut updates = Vec::new();
        let mut last_snapshot = Instant::now();
        let mut changed = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(ShardMsg::Batch(batch)) => {
                    if !self.gave_up {
                        if let Err(GaveUp) = self.decide(&batch, &mut alerts, &mut updates) {
                            error!(message = "Shard stops deciding: the incident store stayed down until the shutdown deadline. A restart decides the rest again from the ingest log.",
                                shard = self.index);
                            self.gave_up = true;
                        }
                        changed = true;
                    }
                    batch.finish();
                }
                Ok(ShardMsg::Flush(reply)) => {
                    self.snapshot(Some(reply));
                    last_snapshot = Instant::now();
                    changed = false;
                }
                Ok(ShardMsg::Reload(rules)) => {
                    self.reload(rules);
                    changed = true;
                }
                Ok(ShardMsg::Closest(limit, reply)) => {
                    let lists = self
                        .parts
                        .iter()
                        .flat_map(|(_, part)| part.engines.iter().flatten())
                        .map(|e| e.closest(limit))
                        .collect();
                    let _ = reply.send(crate::merge_closest(lists, limit));
                }
                Ok(ShardMsg::Query(kind, key, reply)) => {
                    let values = self
                        .parts
                        .iter()
                        .find(|(p, _)| *p == part_of(self.seed, kind, &key))
                        .and_then(|(_, part)| part.engines[kind.index()].as_ref())
                        .map(|e| e.key_values(kind, &key))
                        .unwrap_or_default();
                    let _ = reply.send(values);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if changed && last_snapshot.elapsed() >= self.snapshot_interval {
                self.snapshot(None);
                last_snapshot = Instant::now();
                changed = false;
            }
            self.publish_stats();
        }
    }

    /// Decides one log record's events for the keys of this shard's parts, records the
    /// effects, and moves the parts' positions past it.
    fn decide(
        &mut self,
        batch: &Batch,
        alerts: &mut Vec<Alert>,
        updates: &mut Vec<IncidentUpdate>,
    ) -> Result<(), GaveUp> {
        let limits = self.rules.settings.limits;
        for (i, line) in batch.lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let Ok(ev) = parse_event(line, &limits) else { continue };
            for kind in KeyKind::ALL {
                let Some(key) = self.rules.key_for(kind, &ev) else {
                    continue;
                };
                let p = part_of(self.seed, kind, key);
                if p % self.shards != self.index {
                    continue;
                }
                let Some((_, part)) = self.parts.iter_mut().find(|(q, _)| *q == p) else {
                    continue;
                };
                if part.next > batch.seq {
                    continue; // the part's snapshot already covers this record
                }
                let Some(engine) = part.engines[kind.index()].as_mut() else {
                    continue;
                };
                part.dirty = true;
                alerts.clear();
                match engine.process(&ev, Some(batch.clock_ms), alerts) {
                    Outcome::Late => batch.late[i].store(true, Ordering::Relaxed),
                    Outcome::Duplicate => batch.duplicate[i].store(true, Ordering::Relaxed),
                    _ => {}
                }
                if !alerts.is_empty() {
                    let sinks = &self.sinks;
                    let ids = self.effects.decide(alerts, |a| {
                        sinks.publish(&serde_json::to_vec(a).expect("alerts serialize"));
                    })?;
                    self.effects.mark_published(&ids)?;
                }
            }
            // Latency once per event: on the shard that owns its account.
            if self
                .rules
                .key_for(KeyKind::AccountId, &ev)
                .is_some_and(|a| part_of(self.seed, KeyKind::AccountId, a) % self.shards == self.index)
            {
                // Replayed records were decided before a restart: not a latency to report.
                if batch.live {
                    self.metrics.decided(batch.arrived.elapsed());
                }
            }
        }
        // One store transaction per shard and record for the CVs open incidents exposed.
        for (_, part) in &mut self.parts {
            for e in part.engines.iter_mut().flatten() {
                updates.extend(e.take_updates());
            }
        }
        self.effects.record_updates(updates)?;
        updates.clear();
        for (_, part) in &mut self.parts {
            part.next = part.next.max(batch.seq + 1);
        }
        Ok(())
    }

    /// Hands a copy of every part that changed to the snapshot writer; a part that did
    /// not change moves its position on without a new file (the records it skips hold
    /// nothing of its keys). With `done`, replies once the writer has finished them.
    fn snapshot(&mut self, done: Option<Sender<Result<(), GaveUp>>>) {
        if self.gave_up {
            if let Some(done) = done {
                let _ = done.send(Err(GaveUp));
            }
            return;
        }
        for (p, part) in &mut self.parts {
            part.dirty |= self.unsaved[*p].swap(false, Ordering::Relaxed);
            let copy = part
                .dirty
                .then(|| part.engines.iter().flatten().map(Engine::snapshot).collect());
            let _ = self.writer.send(SaveJob::Part {
                part: *p,
                name: part.name.clone(),
                next: part.next,
                copy,
            });
            part.dirty = false;
        }
        if let Some(done) = done {
            let _ = self.writer.send(SaveJob::Done(done));
        }
    }

    fn reload(&mut self, rules: Arc<RuleSet>) {
        let sets = per_kind(&rules);
        for (_, part) in &mut self.parts {
            // Its snapshot was taken under the old rules, which a restart would refuse.
            part.dirty = true;
            for (slot, set) in part.engines.iter_mut().zip(sets.clone()) {
                match (slot.as_mut(), set) {
                    (Some(e), Some(set)) => {
                        e.reload(set);
                    }
                    (None, Some(set)) => {
                        let mut e = Engine::new(set);
                        e.track_exposure(self.effects.records());
                        e.share_keys(PARTS);
                        *slot = Some(e);
                    }
                    (_, None) => *slot = None,
                }
            }
        }
        self.rules = rules;
    }

    fn publish_stats(&mut self) {
        let mut sum = EngineStats::default();
        let mut size = StateSize::default();
        for (_, part) in &self.parts {
            for e in part.engines.iter().flatten() {
                sum.add(e.stats());
                size.add(&e.state_size());
            }
        }
        if sum.keys_refused > 0 && !self.told_key_limit {
            self.told_key_limit = true;
            self.effects.system_alert(
                "key-limit-reached",
                "engine.max_tracked_keys",
                "a key kind reached engine.max_tracked_keys: events of new keys of that kind are not tracked for it",
            );
        }
        self.stats.lock().expect("stats")[self.index] = (sum, size);
        let mut progress = self.progress.lock().expect("progress");
        for (p, part) in &self.parts {
            let engines = || part.engines.iter().flatten();
            progress[*p] = (
                engines().filter_map(crate::watchdog::newest_event_ms).max(),
                engines().map(|e| e.stats().events).sum(),
            );
        }
    }
}

/// A snapshot to write, or a position to move on.
enum SaveJob {
    Part {
        part: usize,
        name: String,
        next: u64,
        /// `None`: the part did not change since its last snapshot.
        copy: Option<Vec<cvguard_core::engine::EngineSnapshot>>,
    },
    /// Everything sent before is written: reply.
    Done(Sender<Result<(), GaveUp>>),
}

/// Writes snapshots in the order the shards sent them and trims the ingest log behind
/// the oldest part. A part whose last write failed keeps its old position (and so the
/// log behind it) until a write succeeds.
fn write_snapshots(
    jobs: Receiver<SaveJob>,
    store: SnapshotStore,
    log: Arc<IngestLog>,
    mut saved: Vec<u64>,
    unsaved: &[AtomicBool],
    log_bytes: prometheus::IntGauge,
) {
    let mut failed = vec![false; saved.len()];
    let mut oldest = saved.iter().copied().min().unwrap_or(0);
    for job in jobs {
        match job {
            SaveJob::Part { part, name, next, copy } => match copy {
                Some(engines) => match store.save(&name, next as i64, &engines) {
                    Ok(()) => {
                        saved[part] = next;
                        failed[part] = false;
                    }
                    Err(e) => {
                        failed[part] = true;
                        unsaved[part].store(true, Ordering::Relaxed);
                        warn!(message = "Snapshot failed; the ingest log is kept from the last one.", part = %name, error = %e);
                    }
                },
                None if !failed[part] => saved[part] = saved[part].max(next),
                None => {}
            },
            SaveJob::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
        let now_oldest = saved.iter().copied().min().unwrap_or(0);
        if now_oldest > oldest {
            oldest = now_oldest;
            if let Err(e) = log.trim_before(oldest) {
                warn!(message = "Trimming the ingest log failed.", error = %e);
            }
            log_bytes.set(log.bytes() as i64);
        }
    }
}
