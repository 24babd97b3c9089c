//! Microbenchmarks: parsing, window updates, distinct sets with expiry, rule evaluation,
//! for small keys and for one huge key (an account with 150,000 live CVs).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cvguard_benches::{engine, single_cv_lines};
use cvguard_core::distinct::{Access, GroupPlan, GroupState, RuleProgress};
use cvguard_core::window::CountWindow;
use cvguard_core::{parse_event, ParseLimits, Visibility};

fn parsing(c: &mut Criterion) {
    let single = br#"{"ts":"2024-05-04T06:00:01.120Z","event_id":"e-981","account_id":"emp-48213","user_id":"u-7","ip":"198.51.100.66","action":"cv_view","cv_id":"cv-0000001","cv_visibility":"named"}"#;
    let ids: Vec<String> = (0..200).map(|i| format!("\"cv-{i:07}\"")).collect();
    let batch = format!(
        r#"{{"ts":1714795200000,"account_id":"h","action":"cv_download","cv_ids":[{}]}}"#,
        ids.join(",")
    );
    let limits = ParseLimits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_cv_rfc3339", |b| {
        b.iter(|| parse_event(black_box(single), &limits).unwrap())
    });
    g.bench_function("batch_200_cvs", |b| {
        b.iter(|| parse_event(black_box(batch.as_bytes()), &limits).unwrap())
    });
    g.finish();
}

fn windows(c: &mut Criterion) {
    let mut g = c.benchmark_group("window");
    g.bench_function("count_add_and_expire", |b| {
        let mut w = CountWindow::default();
        let mut sec = 0i64;
        b.iter(|| {
            sec += 1;
            w.add(sec, 1);
            w.expire(sec - 86_400);
            black_box(w.value())
        })
    });
    // The shipped account rules as one group: views and downloads over a long and a
    // medium window, downloads over an hour.
    let plan = GroupPlan::build(&[(0, 0b11, 150_000), (1, 0b10, 3600), (2, 0b11, 100_000)]).unwrap();
    let access = |class, sec| Access {
        class,
        sec,
        visibility: Visibility::Named,
        action: class as u8,
    };
    // A huge key: 150,000 live CVs; each step advances a second, expires one and adds one.
    g.bench_function("distinct_add_expire_150k_live", |b| {
        let mut w = GroupState::default();
        let mut rules: Vec<RuleProgress> = GroupState::new_progress(&plan).collect();
        let live = 150_000u32;
        for cv in 0..live {
            let sec = i64::from(cv);
            w.advance(&plan, &mut rules, sec, |_| {});
            w.add(&plan, &mut rules, sec, access((cv % 2) as usize, sec), cv);
        }
        let mut next = live;
        b.iter(|| {
            let sec = i64::from(next);
            w.advance(&plan, &mut rules, sec, |_| {});
            w.add(&plan, &mut rules, sec, access((next % 2) as usize, sec), next);
            next += 1;
            black_box(rules[0].value())
        })
    });
    g.bench_function("distinct_repeat_access_small_key", |b| {
        let mut w = GroupState::default();
        let mut rules: Vec<RuleProgress> = GroupState::new_progress(&plan).collect();
        let mut sec = 0i64;
        b.iter(|| {
            sec += 1;
            w.advance(&plan, &mut rules, sec, |_| {});
            w.add(&plan, &mut rules, sec, access(0, sec), (sec % 50) as u32);
            black_box(rules[0].value())
        })
    });
    g.finish();
}

fn engine_events(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    // Shipped rules (7, four key kinds), many small keys.
    let lines = single_cv_lines(200_000, 20_000, 400_000, 250, 7);
    let split: Vec<&[u8]> = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    g.throughput(Throughput::Elements(split.len() as u64));
    g.sample_size(10);
    g.bench_function("process_200k_single_cv_events_shipped_rules", |b| {
        b.iter_batched(
            engine,
            |mut e| {
                let mut out = Vec::new();
                for l in &split {
                    e.process_bytes(l, None, &mut out);
                    out.clear();
                }
                e
            },
            BatchSize::LargeInput,
        )
    });
    // One huge key: an account re-reading inside a 150,000-CV window (rule evaluation on a
    // key with every window populated).
    let mut huge = engine();
    let mut out = Vec::new();
    for i in 0..750u32 {
        let ids: Vec<String> = (0..200).map(|k| format!("\"cv-{:07}\"", i * 200 + k)).collect();
        let line = format!(
            r#"{{"ts":{},"account_id":"partner-1","action":"cv_view","cv_ids":[{}]}}"#,
            1_714_795_200_000i64 + i64::from(i) * 60_000,
            ids.join(",")
        );
        huge.process_bytes(line.as_bytes(), None, &mut out);
    }
    let mut t = 1_714_795_200_000i64 + 750 * 60_000;
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    g.bench_function("evaluate_huge_key_150k_live_cvs", |b| {
        b.iter(|| {
            t += 10;
            let line = format!(r#"{{"ts":{t},"account_id":"partner-1","action":"cv_view","cv_id":"cv-0000001"}}"#);
            huge.process_bytes(line.as_bytes(), None, &mut out);
            out.clear();
        })
    });
    g.finish();
}

/// What a 202 costs on HTTP ingest: appending a request's accepted lines to the ingest log
/// and fsyncing them (docs/PERFORMANCE.md, "Durable ingest"). On the disk the state
/// directory lives on, so the figure is the machine's as much as cvguard's.
fn ingest_log(c: &mut Criterion) {
    let line = br#"{"ts":"2024-05-04T06:00:01.120Z","event_id":"e-981","account_id":"emp-48213","user_id":"u-7","ip":"198.51.100.66","action":"cv_view","cv_id":"cv-0000001","cv_visibility":"named"}"#;
    let dir = tempfile::tempdir_in(".").expect("a temporary folder on this disk");
    let log = cvguard_stream::ingest_log::IngestLog::open(dir.path(), 64 << 20).expect("ingest log");
    let mut g = c.benchmark_group("ingest_log_append_fsync");
    for lines in [1usize, 100, 5_000] {
        let body: Vec<u8> = (0..lines).flat_map(|_| line.iter().copied().chain([b'\n'])).collect();
        g.throughput(Throughput::Elements(lines as u64));
        g.bench_function(format!("{lines}_lines"), |b| {
            b.iter(|| log.append(0, black_box(&body), |seq| seq).expect("append"))
        });
    }
    g.finish();
}

criterion_group!(benches, parsing, windows, engine_events, ingest_log);
criterion_main!(benches);
