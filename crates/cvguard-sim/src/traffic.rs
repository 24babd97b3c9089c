//! Turns the population into NDJSON events, one simulated hour at a time.

use std::fmt::Write as _;
use std::io::{self, Write};

use cvguard_core::timefmt::format_rfc3339_ms;

use crate::population::{local_weekday, Account, Actor, Population, DAY_MS, HOUR_MS, LOCAL_OFFSET_MS};
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
    /// When it is delivered: its event time, or a few seconds later for a second delivery.
    at: i64,
    seq: u64,
    text: String,
}

struct Hour<'a> {
    lines: Vec<Line>,
    seq: u64,
    cfg: &'a SimConfig,
}

/// Who acts: an account, as one of its users (an index into them, wrapping), from an address.
#[derive(Clone, Copy)]
struct By<'a> {
    account: &'a Account,
    user: usize,
    ip: &'a str,
}

impl<'a> By<'a> {
    /// From the account's own address.
    fn own(account: &'a Account, user: usize) -> By<'a> {
        By {
            account,
            user,
            ip: &account.ip,
        }
    }
}

impl Hour<'_> {
    fn push(&mut self, ts: i64, by: By<'_>, action: &str, cvs: &[u32], named: Option<bool>, id_hint: &str) {
        let By { account: a, user, ip } = by;
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
            r#""ip":"{ip}","user_agent":"{}","action":"{action}""#,
            a.user_agent
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
            at: ts,
            seq: self.seq,
            text,
        });
    }

    /// Delivers the lines from `first` on again, byte for byte (same `event_id`), `delay_ms`
    /// later, but inside the hour: a producer's retry.
    fn deliver_again(&mut self, first: usize, delay_ms: i64, end: i64) {
        for i in first..self.lines.len() {
            let line = &self.lines[i];
            let again = Line {
                at: (line.at + delay_ms).min(end - 1).max(line.at),
                seq: line.seq,
                text: line.text.clone(),
            };
            self.lines.push(again);
        }
    }

    /// A batch, split by visibility: each event says whether its CVs showed name and address.
    fn push_batch(&mut self, ts: i64, by: By<'_>, action: &str, cvs: &[u32], id_hint: &str) {
        let (named, anonymous): (Vec<u32>, Vec<u32>) = cvs.iter().partition(|cv| cv_named(**cv));
        if !named.is_empty() {
            self.push(ts, by, action, &named, Some(true), &format!("{id_hint}n"));
        }
        if !anonymous.is_empty() {
            self.push(ts, by, action, &anonymous, Some(false), &format!("{id_hint}a"));
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
        hour.lines.sort_by_key(|l| (l.at, l.seq));
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
                hour.push(ts, By::own(a, user), "cv_view", &[cv], Some(cv_named(cv)), "v");
                if rng.chance(if heavy { 0.25 } else { 0.15 }) {
                    let later = (ts + rng.range(5_000, 60_000) as i64).min(end - 1);
                    hour.push(later, By::own(a, user), "cv_download", &[cv], Some(cv_named(cv)), "d");
                }
                if rng.chance(0.03) {
                    let later = (ts + rng.range(5_000, 120_000) as i64).min(end - 1);
                    hour.push(
                        later,
                        By::own(a, user),
                        "contact_reveal",
                        &[cv],
                        Some(cv_named(cv)),
                        "c",
                    );
                }
            }
            for _ in 0..rng.poisson(mean / 4.0) {
                let ts = start + rng.range(0, HOUR_MS as u64) as i64;
                hour.push(ts, By::own(a, rng.range(0, 16) as usize), "cv_search", &[], None, "s");
            }
        }
        Actor::Partner { views_per_day } => {
            let pool = u64::from(hour.pool());
            for b in 0..rng.poisson(views_per_day / 24.0 / 50.0) {
                let ts = start + rng.range(0, HOUR_MS as u64) as i64;
                let cvs: Vec<u32> = (0..50).map(|_| rng.range(0, pool) as u32).collect();
                hour.push_batch(ts, By::own(a, 0), "cv_view", &cvs, &format!("p{b}"));
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
                hour.push(ts, By::own(a, 0), "cv_search", &[], None, &format!("hs{b}"));
                hour.push_batch(ts, By::own(a, 0), "cv_download", &cvs, &format!("h{b}"));
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
                hour.push_batch(ts, By::own(a, 0), "cv_view", &cvs, &format!("l{b}"));
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
                hour.push_batch(ts.min(end - 1), By::own(a, 0), "cv_view", &cvs, &format!("r{b}"));
            }
        }
        Actor::Surge { .. } | Actor::Fresh { .. } | Actor::SharedCredentials { .. } | Actor::Redelivered { .. } => {
            for p in plan(hour.cfg, a, start) {
                if p.ts < start || p.ts >= end {
                    continue;
                }
                let first = hour.lines.len();
                let by = By {
                    ip: p.ip.as_deref().unwrap_or(&a.ip),
                    ..By::own(a, p.user)
                };
                match p.cvs.as_slice() {
                    [] => hour.push(p.ts, by, p.action, &[], None, p.hint),
                    [one] => hour.push(p.ts, by, p.action, &[*one], Some(cv_named(*one)), p.hint),
                    many => hour.push_batch(p.ts, by, p.action, many, p.hint),
                }
                if let Some(delay) = p.again_after_ms {
                    hour.deliver_again(first, delay, end);
                }
            }
        }
    }
}

/// Randomness of the scenarios of issue #14: a stream of its own, so that they shift
/// nothing in the traffic of the other accounts.
const PLAN_SEED: u64 = 0x0014_5ce4_a410_0014;

/// One event of a scenario planned ahead: for a whole UTC day (`Surge`) or a whole session.
struct Planned {
    ts: i64,
    /// None: the account's own address.
    ip: Option<String>,
    user: usize,
    action: &'static str,
    cvs: Vec<u32>,
    hint: &'static str,
    /// Delivered a second time, this much later.
    again_after_ms: Option<i64>,
}

impl Planned {
    fn new(ts: i64, action: &'static str, cvs: Vec<u32>, hint: &'static str) -> Planned {
        Planned {
            ts,
            ip: None,
            user: 0,
            action,
            cvs,
            hint,
            again_after_ms: None,
        }
    }
}

/// FNV-1a: a fixed hash of an account id, to give each account its own stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every event of `a`'s plan that can fall in the hour from `start` (and possibly others,
/// which the caller leaves out). The same for every hour it is asked for, so a plan spanning
/// hours is cut into them exactly.
fn plan(cfg: &SimConfig, a: &Account, start: i64) -> Vec<Planned> {
    let root = Rng::new(cfg.seed ^ PLAN_SEED).fork(fnv1a(a.id.as_bytes()));
    let pool = cfg.cv_pool;
    let mut out = Vec::new();
    match a.actor {
        Actor::Surge {
            surge_ms,
            surge_days,
            batches,
            from_hour,
            hours,
            downloads,
            cv_offset,
            surge_ip,
        } => {
            let day_ms = start.div_euclid(DAY_MS) * DAY_MS;
            let mut rng = root.fork(day_ms.div_euclid(DAY_MS) as u64);
            quiet_day(&mut out, day_ms, pool, a.users.len(), &mut rng);
            let surge_day = (day_ms - surge_ms).div_euclid(DAY_MS);
            if day_ms >= surge_ms && surge_day < i64::from(surge_days) {
                let interval = hours * HOUR_MS / i64::from(batches);
                for k in 0..batches {
                    let ts = day_ms + from_hour * HOUR_MS + i64::from(k) * interval + rng.range(0, 60_000) as i64;
                    let first = u64::from(cv_offset) + (surge_day as u64 * u64::from(batches) + u64::from(k)) * 25;
                    let cvs = strided(first, 25, pool);
                    let user = k as usize % a.users.len();
                    let ip = surge_ip.map(str::to_string);
                    let search = ts - rng.range(3_000, 20_000) as i64;
                    out.push(Planned {
                        ip: ip.clone(),
                        user,
                        ..Planned::new(search, "cv_search", Vec::new(), "gs")
                    });
                    for cv in cvs.iter().take(downloads as usize) {
                        let later = ts + rng.range(10_000, 120_000) as i64;
                        out.push(Planned {
                            ip: ip.clone(),
                            user,
                            ..Planned::new(later, "cv_download", vec![*cv], "gd")
                        });
                    }
                    out.push(Planned {
                        ip,
                        user,
                        ..Planned::new(ts, "cv_view", cvs, "g")
                    });
                }
            }
        }
        Actor::Fresh {
            start_ms,
            total,
            cv_offset,
        } if start < start_ms + HOUR_MS && start + HOUR_MS > start_ms => {
            // Batches of 8 every four minutes, each after a search.
            let mut rng = root.fork(0);
            for b in 0..total.div_ceil(8) {
                let ts = start_ms + i64::from(b) * 240_000 + rng.range(0, 30_000) as i64;
                let n = (total - b * 8).min(8);
                let search = ts - rng.range(5_000, 20_000) as i64;
                out.push(Planned::new(search.max(start_ms), "cv_search", Vec::new(), "fs"));
                let cvs = strided(u64::from(cv_offset + b * 8), n, pool);
                out.push(Planned::new(ts, "cv_view", cvs, "f"));
            }
        }
        Actor::SharedCredentials {
            start_ms,
            ips,
            total,
            cv_offset,
        } if start < start_ms + HOUR_MS && start + HOUR_MS > start_ms => {
            // One batch from each address, all within 55 minutes.
            let mut rng = root.fork(0);
            let per_ip = total / ips;
            let interval = 50 * 60_000 / i64::from(ips);
            for k in 0..ips {
                let ts = start_ms + i64::from(k) * interval + rng.range(0, 20_000) as i64;
                let cvs = strided(u64::from(cv_offset + k * per_ip), per_ip, pool);
                out.push(Planned {
                    ip: Some(format!("203.0.113.{}", 100 + k)),
                    ..Planned::new(ts, "cv_view", cvs, "x")
                });
            }
        }
        Actor::Redelivered {
            start_ms,
            hours,
            per_hour,
            views,
            cv_offset,
        } if start < start_ms + hours * HOUR_MS + HOUR_MS && start + HOUR_MS > start_ms => {
            let mut rng = root.fork(0);
            let users = a.users.len();
            let interval = HOUR_MS / i64::from(per_hour);
            for i in 0..hours * i64::from(per_hour) {
                let ts = start_ms + i * interval + rng.range(0, 1_000) as i64;
                out.push(Planned {
                    user: i as usize % users,
                    again_after_ms: Some(rng.range(2_000, 7_000) as i64),
                    ..Planned::new(ts, "cv_search", Vec::new(), "rs")
                });
            }
            let every = hours * HOUR_MS / i64::from(views);
            for j in 0..views {
                let ts = start_ms + i64::from(j) * every + 4_500 + rng.range(0, 1_000) as i64;
                out.push(Planned {
                    user: j as usize % users,
                    again_after_ms: Some(rng.range(2_000, 7_000) as i64),
                    ..Planned::new(ts, "cv_view", strided(u64::from(cv_offset + j), 1, pool), "rv")
                });
            }
        }
        _ => {}
    }
    out
}

/// An ordinary small employer's UTC day: on most working days 10 to 20 distinct CVs read
/// in office hours (a few also downloaded) and a few searches; nothing at weekends.
fn quiet_day(out: &mut Vec<Planned>, day_ms: i64, pool: u32, users: usize, rng: &mut Rng) {
    if local_weekday(day_ms + 12 * HOUR_MS) >= 5 || rng.chance(0.15) {
        return;
    }
    let n = rng.range(10, 21) as usize;
    let mut cvs: Vec<u32> = Vec::with_capacity(n);
    while cvs.len() < n {
        // Popular CVs are read far more often than the rest.
        let cv = ((pool as f64) * rng.unit().powf(2.5)) as u32;
        if !cvs.contains(&cv) {
            cvs.push(cv);
        }
    }
    // 08:00 to 18:00 local.
    let office = |rng: &mut Rng| day_ms + 6 * HOUR_MS + rng.range(0, 10 * HOUR_MS as u64) as i64;
    for cv in cvs {
        let ts = office(rng);
        let user = rng.range(0, users as u64) as usize;
        out.push(Planned {
            user,
            ..Planned::new(ts, "cv_view", vec![cv], "qv")
        });
        if rng.chance(0.15) {
            let later = ts + rng.range(5_000, 60_000) as i64;
            out.push(Planned {
                user,
                ..Planned::new(later, "cv_download", vec![cv], "qd")
            });
        }
    }
    for _ in 0..n / 4 {
        let ts = office(rng);
        out.push(Planned::new(ts, "cv_search", Vec::new(), "qs"));
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
