//! The end-to-end benchmark (`make bench`): simulated job-board traffic through the
//! engine, as `cvguard replay` runs it, on one and two threads; per-event decision
//! latency; state memory per key and per live (key, CV) pair; memory over a long soak;
//! throughput against the size of the live state.
//! Prints the table docs/PERFORMANCE.md reports. Figures are measured here, never
//! asserted in tests.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use cvguard_benches::{live_heap_bytes, plain_parse_rate, rss, shipped_rules, single_cv_lines, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;
use cvguard_core::{Engine, HeapProfile, KeyKind, RuleSet};
use cvguard_sim::{Population, Scenarios, SimConfig};
use hdrhistogram::Histogram;

fn lines(buf: &[u8]) -> Vec<&[u8]> {
    buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect()
}

fn mixed_traffic() -> Vec<u8> {
    let cfg = SimConfig {
        days: 2,
        employers: 40_000,
        agencies: 40,
        scenarios: Scenarios::ALL,
        ..SimConfig::default()
    };
    let population = Population::new(&cfg);
    let mut out = Vec::new();
    cvguard_sim::write_events(&cfg, &population, &mut out).expect("in memory");
    out
}

struct Run {
    events: u64,
    secs: f64,
    /// Every event's decision time, and the same split by the event's size: one CV
    /// (views, reveals, searches) or many (batch downloads, whose one decision covers
    /// up to 200 CVs).
    latency: Histogram<u64>,
    single: Histogram<u64>,
    batch: Histogram<u64>,
    /// Events that started tracking a new key (whose state is allocated then).
    new_key: Histogram<u64>,
    /// The slowest decisions: nanoseconds, the event's CV count, its index.
    slowest: Vec<(u64, usize, usize)>,
    /// Every event's decision time, in input order.
    each: Vec<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds")
}

fn replay(rules: Arc<RuleSet>, lines: &[&[u8]], measure_latency: bool) -> (Run, Engine) {
    let mut engine = Engine::new(rules);
    let mut out = Vec::new();
    let (mut latency, mut single, mut batch, mut new_key) = (histogram(), histogram(), histogram(), histogram());
    let mut slowest: Vec<(u64, usize, usize)> = Vec::new();
    let mut each = Vec::with_capacity(if measure_latency { lines.len() } else { 0 });
    let t = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        if measure_latency {
            // The CV count is read outside the timed part.
            let cvs = cvguard_core::parse_event(l, &Default::default()).map_or(0, |e| e.cv_ids.len());
            let keys = engine.state_size().keys;
            let s = Instant::now();
            engine.process_bytes(l, None, &mut out);
            let ns = (s.elapsed().as_nanos() as u64).max(1);
            let _ = latency.record(ns);
            if engine.state_size().keys > keys {
                let _ = new_key.record(ns);
            }
            each.push(ns);
            let _ = if cvs > 1 { batch.record(ns) } else { single.record(ns) };
            if slowest.len() < 5 || ns > slowest[slowest.len() - 1].0 {
                slowest.push((ns, cvs, i));
                slowest.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
                slowest.truncate(5);
            }
        } else {
            engine.process_bytes(l, None, &mut out);
        }
        out.clear();
    }
    let secs = t.elapsed().as_secs_f64();
    (
        Run {
            events: lines.len() as u64,
            secs,
            latency,
            single,
            batch,
            new_key,
            slowest,
            each,
        },
        engine,
    )
}

/// Prints the latency rows of a measured run. `again` is a second run over the same
/// input: a decision slow in both runs is the engine's, one slow in a single run is
/// this machine's (another process, the hypervisor), so the longest stall is reported
/// both ways.
fn print_latency(run: &Run, again: &Run) {
    for (what, h) in [
        ("every event", &run.latency),
        ("single-CV events", &run.single),
        ("multi-CV events (batch downloads)", &run.batch),
        ("events that started a new key", &run.new_key),
    ] {
        if h.is_empty() {
            continue;
        }
        println!(
            "| decision latency, {what} ({}): p50 / p99 / p99.99 / max | {:.2} / {:.2} / {:.1} / {:.0} us |",
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.9999)),
            us(h.max())
        );
    }
    let slowest: Vec<String> = run
        .slowest
        .iter()
        .map(|(ns, cvs, i)| format!("{:.0} us ({cvs} CVs, event {i})", us(*ns)))
        .collect();
    println!("| the five slowest decisions | {} |", slowest.join(", "));
    let (worst, at) = run
        .each
        .iter()
        .zip(&again.each)
        .enumerate()
        .map(|(i, (a, b))| ((*a).min(*b), i))
        .max()
        .unwrap_or_default();
    println!(
        "| longest decision in both of two runs (the slower of each event's two times is dropped) | {:.0} us (event {at}); longest in one run: {:.0} and {:.0} us |",
        us(worst),
        us(run.latency.max()),
        us(again.latency.max())
    );
}

/// Two threads, split by account as Kafka partitions are: each runs the account rules
/// of its half (the input stage; org, user and ip rules run in the repartition stage).
fn replay_two_threads(rules: &RuleSet, lines: &[&[u8]]) -> f64 {
    let account = Arc::new(rules.restricted_to(KeyKind::AccountId));
    let mut halves: [Vec<&[u8]>; 2] = [Vec::new(), Vec::new()];
    for l in lines {
        let ev = cvguard_core::parse_event(l, &Default::default()).expect("valid");
        let mut h = rustc_hash::FxHasher::default();
        ev.account_id.hash(&mut h);
        halves[(h.finish() % 2) as usize].push(l);
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        for half in &halves {
            let rules = account.clone();
            s.spawn(move || replay(rules, half, false));
        }
    });
    lines.len() as f64 / t.elapsed().as_secs_f64()
}

/// Engine throughput against the size of its live state, on the same single-CV traffic:
/// from state that fits in the caches to state hundreds of megabytes large. Each engine
/// takes the first half of 2,000,000 events untimed, so the timed half finds its state
/// built. Shows whether the engine is bound by its instructions or by memory.
fn working_set_sweep() {
    println!("| accounts / CVs drawn from | live keys / (key, CV) pairs | engine heap | replay, 1 thread, all rules | parse alone (`parse_event`) | replay as share of parse |");
    println!("|---|---|---|---|---|---|");
    for (accounts, cvs) in [(20, 100), (100, 1_000), (2_000, 20_000), (50_000, 2_000_000)] {
        let buf = single_cv_lines(2_000_000, accounts, cvs, 50, 7);
        let all = lines(&buf);
        let (warm, timed) = all.split_at(all.len() / 2);
        let heap_before = live_heap_bytes();
        let mut engine = Engine::new(shipped_rules());
        let mut out = Vec::new();
        for l in warm {
            engine.process_bytes(l, None, &mut out);
            out.clear();
        }
        let t = Instant::now();
        for l in timed {
            engine.process_bytes(l, None, &mut out);
            out.clear();
        }
        let rate = timed.len() as f64 / t.elapsed().as_secs_f64();
        let heap = live_heap_bytes().saturating_sub(heap_before);
        let limits = engine.rules().settings.limits;
        let t = Instant::now();
        let parsed = timed
            .iter()
            .filter(|l| cvguard_core::parse_event(l, &limits).is_ok())
            .count();
        let parse = parsed as f64 / t.elapsed().as_secs_f64();
        let size = engine.state_size();
        println!(
            "| {accounts} / {cvs} | {} / {} | {:.1} MB | {rate:.0} events/s | {parse:.0} events/s | {:.0}% |",
            size.keys,
            size.cv_pairs,
            heap as f64 / 1e6,
            rate * 100.0 / parse
        );
    }
}

/// The engine's own account of its heap, by part, per `unit`: where the bytes the
/// allocator counted go (the two totals agree).
fn print_heap_profile(profile: &HeapProfile, units: u64, unit: &str) {
    println!();
    println!(
        "heap by part, per {unit} ({units} of them; total {:.1} MB)",
        profile.total() as f64 / 1e6
    );
    println!("| part | bytes per {unit} |");
    println!("|---|---|");
    for (part, bytes) in &profile.parts {
        println!("| {part} | {:.1} |", *bytes as f64 / units.max(1) as f64);
    }
}

/// What issue #14's rules cost: throughput with and without them on the same input, three
/// alternated runs each, and the bytes a history and a kept event id take.
fn print_issue_14_cost(rules: &Arc<RuleSet>, lines: &[&[u8]], engine: &Engine) {
    const NEW: [&str; 3] = ["surge-24h", "accounts-per-ip-24h", "ips-per-account-1h"];
    let variants = [
        (
            format!("without {}", NEW.join(", ")),
            Arc::new(rules.retaining(b"before-14", |r| !NEW.contains(&r.name.as_str()))),
        ),
        (
            "without surge-24h".to_string(),
            Arc::new(rules.retaining(b"no-history", |r| r.name != "surge-24h")),
        ),
        ("all".to_string(), rules.clone()),
    ];
    let mut rates = vec![Vec::new(); variants.len()];
    for _ in 0..3 {
        for ((_, set), rates) in variants.iter().zip(&mut rates) {
            let (run, _) = replay(set.clone(), lines, false);
            rates.push(format!("{:.0}", run.events as f64 / run.secs));
        }
    }
    for ((name, _), rates) in variants.iter().zip(&rates) {
        println!(
            "| replay, 1 thread, shipped rules {name} (3 alternated runs) | {} events/s |",
            rates.join(", ")
        );
    }
    // Deduplication at its busiest: the most ids kept at once, and the table's bytes then.
    let mut busiest = (0usize, 0u64);
    let mut probe = Engine::new(rules.clone());
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        probe.process_bytes(l, None, &mut out);
        out.clear();
        if i % 20_000 == 0 && probe.dedupe_ids() > busiest.0 {
            let bytes = probe
                .heap_profile()
                .parts
                .iter()
                .find(|(p, _)| p.starts_with("event ids"))
                .map_or(0, |(_, b)| *b);
            busiest = (probe.dedupe_ids(), bytes);
        }
    }
    println!(
        "| dedupe at its busiest (10 minutes of event time): event ids kept / bytes each | {} / {:.0} |",
        busiest.0,
        busiest.1 as f64 / busiest.0.max(1) as f64
    );
    let snap = engine.snapshot();
    let profile = engine.heap_profile();
    let part = |name: &str| {
        profile
            .parts
            .iter()
            .find(|(p, _)| p.starts_with(name))
            .map_or(0, |(_, b)| *b)
    };
    let histories = snap.histories.len().max(1) as f64;
    let days: usize = rules
        .rules
        .iter()
        .filter_map(|r| r.baseline.map(|b| b.history_days as usize + 1))
        .max()
        .unwrap_or(1);
    println!(
        "| history: (rule, key) pairs / bytes each (daily values, key, table) / per day kept | {} / {:.0} / {:.1} |",
        snap.histories.len(),
        part("baseline histories") as f64 / histories,
        part("baseline histories") as f64 / histories / days as f64
    );
    let open: usize = snap.histories.iter().flat_map(|h| &h.open).map(|(_, v)| v.len()).sum();
    println!(
        "| history: distinct CVs of open days held / bytes each | {} / {:.1} |",
        open,
        part("baseline: distinct") as f64 / open.max(1) as f64
    );
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() {
    // cargo bench passes --bench; nothing else to parse.
    let rules = shipped_rules();
    println!(
        "cvguard end-to-end benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    if std::env::var_os("CVGUARD_BENCH_SWEEP_ONLY").is_some() {
        working_set_sweep();
        return;
    }

    // 1. The mixed traffic of the simulator: views, 200-CV batches, searches, 48 hours.
    let t = Instant::now();
    let mixed = mixed_traffic();
    let mixed_lines = lines(&mixed);
    println!(
        "mixed traffic: {} events, {:.0} MB, 48 h of event time (simulated in {:.1} s)",
        mixed_lines.len(),
        mixed.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let plain = plain_parse_rate(&mixed_lines);
    let (run, engine) = replay(rules.clone(), &mixed_lines, false);
    let (lat, _) = replay(rules.clone(), &mixed_lines, true);
    let (lat_again, _) = replay(rules.clone(), &mixed_lines, true);
    let (one_account, _) = replay(Arc::new(rules.restricted_to(KeyKind::AccountId)), &mixed_lines, false);
    let two = replay_two_threads(&rules, &mixed_lines);
    let mb = mixed.len() as f64 / 1e6;
    println!("| figure | value |");
    println!("|---|---|");
    println!("| plain serde_json parse, 1 thread | {:.0} events/s |", plain);
    println!(
        "| replay, 1 thread, all shipped rules | {:.0} events/s, {:.0} MB/s |",
        run.events as f64 / run.secs,
        mb / run.secs
    );
    println!(
        "| replay, 1 thread, account rules only | {:.0} events/s |",
        one_account.events as f64 / one_account.secs
    );
    println!(
        "| replay, 2 threads, account rules split by account | {:.0} events/s |",
        two
    );
    print_latency(&lat, &lat_again);
    let size = engine.state_size();
    println!(
        "| state at the end: keys / live (key, CV) pairs / interned CVs | {} / {} / {} |",
        size.keys, size.cv_pairs, size.interned_cvs
    );
    print_issue_14_cost(&rules, &mixed_lines, &engine);
    drop(engine);
    drop(mixed_lines);
    drop(mixed);

    // 2. Single-CV events: the throughput target's shape.
    println!();
    let single = single_cv_lines(3_000_000, 50_000, 2_000_000, 60, 11);
    let single_lines = lines(&single);
    println!(
        "single-CV traffic: {} events, {:.0} MB, {:.0} h of event time",
        single_lines.len(),
        single.len() as f64 / 1e6,
        single_lines.len() as f64 * 0.06 / 3600.0
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| plain serde_json parse, 1 thread | {:.0} events/s |",
        plain_parse_rate(&single_lines)
    );
    let heap_before = live_heap_bytes();
    let (run, engine) = replay(rules.clone(), &single_lines, false);
    let heap_state = live_heap_bytes().saturating_sub(heap_before);
    println!(
        "| replay, 1 thread, all shipped rules | {:.0} events/s |",
        run.events as f64 / run.secs
    );
    let (lat, _) = replay(rules.clone(), &single_lines, true);
    let (lat_again, _) = replay(rules.clone(), &single_lines, true);
    print_latency(&lat, &lat_again);
    let (acc, _) = replay(Arc::new(rules.restricted_to(KeyKind::AccountId)), &single_lines, false);
    println!(
        "| replay, 1 thread, account rules only | {:.0} events/s |",
        acc.events as f64 / acc.secs
    );
    println!(
        "| replay, 2 threads, account rules split by account | {:.0} events/s |",
        replay_two_threads(&rules, &single_lines)
    );
    let size = engine.state_size();
    println!(
        "| live state: keys / (key, CV) pairs / interned CVs | {} / {} / {} |",
        size.keys, size.cv_pairs, size.interned_cvs
    );
    println!(
        "| heap of the engine state: total / per live pair (all included) | {:.0} MB / {:.0} bytes |",
        heap_state as f64 / 1e6,
        heap_state as f64 / size.cv_pairs.max(1) as f64
    );
    let pair_profile = (engine.heap_profile(), size.cv_pairs);
    drop(engine);
    // Per key: many keys with one CV each in a 1-hour window.
    let few = single_cv_lines(200_000, 10_000_000, 10_000_000, 10, 3);
    let few_lines = lines(&few);
    let before = live_heap_bytes();
    let (_, engine) = replay(rules.clone(), &few_lines, false);
    let size = engine.state_size();
    println!(
        "| heap per tracked key (keys with one or two CVs; four key kinds) | {:.0} bytes over {} keys |",
        live_heap_bytes().saturating_sub(before) as f64 / size.keys.max(1) as f64,
        size.keys
    );
    let key_profile = (engine.heap_profile(), size.keys);
    drop(engine);
    println!(
        "| peak RSS of this benchmark process | {:.0} MB |",
        rss().1 as f64 / 1e6
    );
    print_heap_profile(&pair_profile.0, pair_profile.1, "live (key, CV) pair");
    print_heap_profile(&key_profile.0, key_profile.1, "tracked key");

    // 3. A soak: 96 hours of steady simulated traffic; state must flatten once the
    // longest window (48 h) is full.
    println!();
    println!("soak: live pairs and RSS every 12 h of simulated time (longest window 48 h)");
    let soak = single_cv_lines(1_440_000, 20_000, 2_000_000, 240, 5);
    let soak_lines = lines(&soak);
    let mut engine = Engine::new(rules);
    let mut out = Vec::new();
    let per_12h = (12 * 3600 * 1000 / 240) as usize;
    print!("| hours |");
    let mut row_pairs = String::from("| live pairs |");
    let mut row_rss = String::from("| engine heap MB |");
    let soak_base = live_heap_bytes();
    for (i, l) in soak_lines.iter().enumerate() {
        engine.process_bytes(l, None, &mut out);
        out.clear();
        if (i + 1) % per_12h == 0 {
            print!(" {} |", (i + 1) / per_12h * 12);
            row_pairs += &format!(" {} |", engine.state_size().cv_pairs);
            row_rss += &format!(" {:.0} |", live_heap_bytes().saturating_sub(soak_base) as f64 / 1e6);
        }
    }
    println!();
    println!("|{}", "---|".repeat(1 + soak_lines.len() / per_12h));
    println!("{row_pairs}");
    println!("{row_rss}");
    drop(engine);

    // 4. Throughput against the size of the live state.
    println!();
    println!("working set: single-CV replay, all rules, by how much state the engine holds");
    working_set_sweep();
}
