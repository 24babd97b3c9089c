//! Turns the population into NDJSON events, one simulated hour at a time.

use std::fmt::Write as _;
use std::io::{self, Write};

use cvguard_core::timefmt::format_rfc3339_ms;

use crate::population::{local_weekday, Account, Actor, Population, HOUR_MS, LOCAL_OFFSET_MS};
use crate::rng::Rng;
use crate::SimConfig;

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSummary {
    pub events: u64,
    pub cv_ids: u64,
    pub bytes: u64,
}

/// Share of a weekday's activity in each local hour: office hours carry the day.
fn hour_weight(t: i64) -> f64 {
    let local_hour = ((t + LOCAL_OFFSET_MS).div_euclid(HOUR_MS)).rem_euclid(24);
    let by_hour = match local_hour {
        8..=17 => 1.0,
        7 | 18 | 19 => 0.3,
        _ => 0.01,
    };
    let by_day = match local_weekday(t) {
        5 => 0.08,
        6 => 0.03,
        _ => 1.0,
    };
    // A weekday's weights add up to 10 + 3 x 0.3 + 11 x 0.01.
    by_hour * by_day / 11.01
}

fn cv_name(index: u32) -> String {
    format!("cv-{index:07}")
}

/// Whether the CV's owner shows name and address (about 70% do).
fn cv_named(index: u32) -> bool {
    (index.wrapping_mul(2_654_435_761) >> 16) % 10 < 7
}

/// A step through the pool that visits every CV once before repeating (odd, and the
/// pool sizes used are not multiples of it), so attackers read distinct CVs.
const STRIDE: u64 = 7_919;

struct Line {
    ts: i64,
    seq: u64,
    text: String,
}

struct Hour<'a> {
    lines: Vec<Line>,
    seq: u64,
    cfg: &'a SimConfig,
}

impl Hour<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        ts: i64,
        a: &Account,
        user: usize,
        action: &str,
        cvs: &[u32],
        named: Option<bool>,
        id_hint: &str,
    ) {
        self.seq += 1;
        let mut text = String::with_capacity(200 + cvs.len() * 14);
        let _ = write!(
            text,
            // Unique per event (the hour's sequence number after the time): a platform's
            // ids are, and cvguard counts an id seen again as a second delivery.
            r#"{{"ts":"{}","event_id":"{}-{}-{}","account_id":"{}","user_id":"{}","#,
            format_rfc3339_ms(ts),
            id_hint,
            ts,
            self.seq,
            a.id,
            a.users[user % a.users.len()]
        );
        if let Some(org) = &a.org_id {
            let _ = write!(text, r#""org_id":"{org}","#);
        }
        let _ = write!(
            text,
            r#""ip":"{}","user_agent":"{}","action":"{action}""#,
            a.ip, a.user_agent
        );
        match cvs {
            [] => {}
            [one] => {
                let _ = write!(text, r#","cv_id":"{}""#, cv_name(*one));
            }
            many => {
                text.push_str(r#","cv_ids":["#);
                for (i, cv) in many.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    let _ = write!(text, r#""{}""#, cv_name(*cv));
                }
                text.push(']');
            }
        }
        if let Some(named) = named {
            let _ = write!(
                text,
                r#","cv_visibility":"{}""#,
                if named { "named" } else { "anonymous" }
            );
        }
        text.push('}');
        self.lines.push(Line {
            ts,
            seq: self.seq,
            text,
        });
    }

    /// A batch, split by visibility: each event says whether its CVs showed name and address.
    fn push_batch(&mut self, ts: i64, a: &Account, user: usize, action: &str, cvs: &[u32], id_hint: &str) {
        let (named, anonymous): (Vec<u32>, Vec<u32>) = cvs.iter().partition(|cv| cv_named(**cv));
        if !named.is_empty() {
            self.push(ts, a, user, action, &named, Some(true), &format!("{id_hint}n"));
        }
        if !anonymous.is_empty() {
            self.push(ts, a, user, action, &anonymous, Some(false), &format!("{id_hint}a"));
        }
    }

    fn pool(&self) -> u32 {
        self.cfg.cv_pool
    }
}

/// Writes every event of the simulation as NDJSON, in event-time order.
pub fn write_events(cfg: &SimConfig, population: &Population, out: &mut impl Write) -> io::Result<TrafficSummary> {
    let root = Rng::new(cfg.seed).fork(100);
    let mut summary = TrafficSummary::default();
    let hours = i64::from(cfg.days) * 24;
    for h in 0..hours {
        let start = cfg.start_ms + h * HOUR_MS;
        let mut hour = Hour {
            lines: Vec::new(),
            seq: 0,
            cfg,
        };
        for (i, account) in population.accounts.iter().enumerate() {
            let mut rng = root.fork(((h as u64) << 24) ^ i as u64);
            generate(&mut hour, account, start, &mut rng);
        }
        hour.lines.sort_by_key(|l| (l.ts, l.seq));
        for line in &hour.lines {
            out.write_all(line.text.as_bytes())?;
            out.write_all(b"\n")?;
            summary.events += 1;
            summary.bytes += line.text.len() as u64 + 1;
        }
        summary.cv_ids += hour
            .lines
            .iter()
            .map(|l| l.text.matches("\"cv-").count() as u64)
            .sum::<u64>();
    }
    Ok(summary)
}

fn generate(hour: &mut Hour<'_>, a: &Account, start: i64, rng: &mut Rng) {
    let end = start + HOUR_MS;
    match a.actor {
        Actor::Employer { views_per_day } => {
            let heavy = a.segment.is_some();
            let mean = views_per_day * hour_weight(start);
            let pool = hour.pool();
            for _ in 0..rng.poisson(mean) {
                let ts = start + rng.range(0, HOUR_MS as u64) as i64;
                let user = rng.range(0, 16) as usize;
                // Popular CVs are read far more often than the rest.
                let cv = ((pool as f64) * rng.unit().powf(2.5)) as u32;
                hour.push(ts, a, user, "cv_view", &[cv], Some(cv_named(cv)), "v");
                if rng.chance(if heavy { 0.25 } else { 0.15 }) {
                    let later = (ts + rng.range(5_000, 60_000) as i64).min(end - 1);
                    hour.push(later, a, user, "cv_download", &[cv], Some(cv_named(cv)), "d");
                }
                if rng.chance(0.03) {
                    let later = (ts + rng.range(5_000, 120_000) as i64).min(end - 1);
                    hour.push(later, a, user, "contact_reveal", &[cv], Some(cv_named(cv)), "c");
                }
            }
            for _ in 0..rng.poisson(mean / 4.0) {
                let ts = start + rng.range(0, HOUR_MS as u64) as i64;
                hour.push(ts, a, rng.range(0, 16) as usize, "cv_search", &[], None, "s");
            }
        }
        Actor::Partner { views_per_day } => {
            let pool = u64::from(hour.pool());
            for b in 0..rng.poisson(views_per_day / 24.0 / 50.0) {
                let ts = start + rng.range(0, HOUR_MS as u64) as i64;
                let cvs: Vec<u32> = (0..50).map(|_| rng.range(0, pool) as u32).collect();
                hour.push_batch(ts, a, 0, "cv_view", &cvs, &format!("p{b}"));
            }
        }
        Actor::Harvester {
            start_ms,
            batches,
            interval_s,
            cv_offset,
        } => {
            for b in scheduled(start_ms, interval_s, batches, start, end) {
                let ts = start_ms + i64::from(b) * interval_s * 1000 + rng.range(0, 3000) as i64;
                let ts = ts.min(end - 1);
                let first = u64::from(cv_offset) + u64::from(b) * 200;
                let cvs = strided(first, 200, hour.pool());
                hour.push(ts, a, 0, "cv_search", &[], None, &format!("hs{b}"));
                hour.push_batch(ts, a, 0, "cv_download", &cvs, &format!("h{b}"));
            }
        }
        Actor::SlowAndLow {
            start_ms,
            hours,
            batch,
            interval_s,
            cv_offset,
        } => {
            let total = (hours * 3600 / interval_s) as u32;
            for b in scheduled(start_ms, interval_s, total, start, end) {
                let ts = start_ms + i64::from(b) * interval_s * 1000;
                let first = u64::from(cv_offset) + u64::from(b) * u64::from(batch);
                let cvs = strided(first, batch, hour.pool());
                hour.push_batch(ts, a, 0, "cv_view", &cvs, &format!("l{b}"));
            }
        }
        Actor::Ring {
            start_ms,
            total,
            cv_offset,
        } => {
            let batches = total / 10;
            let interval_s = 12 * 3600 / i64::from(batches);
            for b in scheduled(start_ms, interval_s, batches, start, end) {
                let ts = start_ms + i64::from(b) * interval_s * 1000 + rng.range(0, 1000) as i64;
                let first = u64::from(cv_offset) + u64::from(b) * 10;
                let cvs = strided(first, 10, hour.pool());
                hour.push_batch(ts.min(end - 1), a, 0, "cv_view", &cvs, &format!("r{b}"));
            }
        }
    }
}

/// Batch numbers `b < count` whose time `start_ms + b * interval` falls in [from, to).
fn scheduled(start_ms: i64, interval_s: i64, count: u32, from: i64, to: i64) -> impl Iterator<Item = u32> {
    let step = interval_s * 1000;
    let first = if from <= start_ms {
        0
    } else {
        (from - start_ms + step - 1) / step
    };
    let last = if to <= start_ms {
        0
    } else {
        (to - start_ms + step - 1) / step
    };
    (first.max(0) as u32..(last.max(0) as u32).min(count)).filter(move |b| {
        let t = start_ms + i64::from(*b) * step;
        t >= from && t < to
    })
}

/// `n` distinct CVs: positions `first..first+n` of a walk through the pool with STRIDE.
fn strided(first: u64, n: u32, pool: u32) -> Vec<u32> {
    (0..u64::from(n))
        .map(|k| ((first + k) * STRIDE % u64::from(pool)) as u32)
        .collect()
}
