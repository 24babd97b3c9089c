//! Traffic and helpers shared by the benchmarks.

use std::sync::Arc;

use cvguard_core::{Engine, RuleSet};

/// The shipped rules with the example profiles, as the engine sees them.
pub fn shipped_rules() -> Arc<RuleSet> {
    let cfg =
        cvguard_config::load(&cvguard_config::ConfigSource::Embedded, &Default::default()).expect("shipped config");
    Arc::new(cfg.ruleset)
}

pub fn engine() -> Engine {
    Engine::new(shipped_rules())
}

/// A small, fixed PRNG (xorshift) so every run sees the same traffic.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `n` single-CV view events, one per `step_ms`, from `accounts` heavy-tailed accounts over
/// `cvs` CVs, epoch-ms timestamps: the shape of most job-board traffic.
pub fn single_cv_lines(n: usize, accounts: u64, cvs: u64, step_ms: i64, seed: u64) -> Vec<u8> {
    let mut r = Xorshift(seed | 1);
    let t0: i64 = 1_714_694_400_000;
    let mut out = Vec::with_capacity(n * 110);
    for i in 0..n {
        // Squaring a uniform draw gives a heavy head: a few accounts do most views.
        let u = (r.next_u64() % 1_000_000) as f64 / 1_000_000.0;
        let acc = ((u * u) * accounts as f64) as u64;
        let cv = r.next_u64() % cvs;
        let line = format!(
            "{{\"ts\":{},\"account_id\":\"acc-{acc}\",\"action\":\"cv_view\",\"cv_id\":\"cv-{cv:07}\",\"ip\":\"10.0.{}.{}\"}}\n",
            t0 + i as i64 * step_ms,
            (acc / 250) % 250,
            acc % 250
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// A plain serde_json parse of the contract into borrowed fields, events/s: the anchor
/// every figure of docs/PERFORMANCE.md is read against.
pub fn plain_parse_rate(lines: &[&[u8]]) -> f64 {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Ev<'a> {
        ts: serde_json::Value,
        #[serde(borrow)]
        account_id: &'a str,
        #[serde(borrow)]
        action: &'a str,
        #[serde(borrow, default)]
        cv_id: Option<&'a str>,
        #[serde(borrow, default)]
        cv_ids: Vec<&'a str>,
    }
    let t = std::time::Instant::now();
    let mut n = 0usize;
    for l in lines {
        if serde_json::from_slice::<Ev<'_>>(l).is_ok() {
            n += 1;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Resident set size and its peak, in bytes, from /proc/self/status.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Counts live heap bytes, to measure the engine's state exactly (RSS also counts what the
/// allocator keeps after earlier runs in the same process).
pub struct CountingAlloc;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Heap bytes allocated and not yet freed.
pub fn live_heap_bytes() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

#[allow(unsafe_code)]
// SAFETY: forwards every call unchanged to the system allocator; only adds counting.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}
