//! The demo's second story (issue #14): a month on a small board. An established
//! employer account turned harvester stays under every fixed threshold and is caught by
//! its own history; a legitimate recruiting drive, which history alone would flag, is
//! explained by its open vacancies.
//!
//! The month is simulated straight into the engine (no 300 MB file): the simulator writes
//! NDJSON into a sink that decides each line as it is completed.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use cvguard_core::{AccountProfile, Alert, BaselineExplain, Engine, KeyKind, Profiles, RuleSet};
use cvguard_sim::{Population, Scenarios, SimConfig};

use super::{check_labels, group, local_time};

/// `Fri 24 May 10:20`, local time (CEST).
fn local_day(ms: i64) -> String {
    let date = cvguard_core::timefmt::format_rfc3339_ms(ms + 2 * 3_600_000);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m: usize = date[5..7].parse().unwrap_or(1);
    let (day, time) = local_time(ms)
        .split_once(' ')
        .map(|(d, t)| (d.to_string(), t.to_string()))
        .unwrap_or_default();
    format!("{day} {} {} {time}", date[8..10].trim_start_matches('0'), month[m - 1])
}

const TURNED: &str = "turned-1";
const DRIVE: &str = "drive-120";
const HISTORY_RULE: &str = "surge-24h";

/// Decides each NDJSON line written to it, and keeps what the story needs.
struct Decide {
    engine: Engine,
    partial: Vec<u8>,
    out: Vec<Alert>,
    alerts: Vec<Alert>,
    /// Per watched account, per rule: its peak.
    peaks: BTreeMap<&'static str, BTreeMap<String, Peak>>,
}

/// The highest value a rule reached for a key, with its threshold and history then.
type Peak = (u64, u64, Option<BaselineExplain>);

impl Decide {
    fn line(&mut self, line: &[u8]) {
        self.engine.process_bytes(line, None, &mut self.out);
        self.alerts.append(&mut self.out);
        for account in [TURNED, DRIVE] {
            // Cheap filter first: the watched accounts are a few thousand lines of a million.
            if !line.windows(account.len()).any(|w| w == account.as_bytes()) {
                continue;
            }
            let peaks = self.peaks.entry(account).or_default();
            for w in self.engine.key_values(KeyKind::AccountId, account) {
                let peak = peaks.entry(w.rule).or_insert((0, w.threshold, None));
                if w.value > peak.0 {
                    *peak = (w.value, w.threshold, w.baseline);
                }
            }
        }
    }
}

impl Write for Decide {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.line(&rest[..end]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..end]);
                self.line(&line);
                line.clear();
                self.partial = line;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Tells the story; false when the history rule missed the turned account or anything
/// else disagrees with the simulation's ground truth.
pub fn tell(o: &mut impl Write, rules: Arc<RuleSet>, seed: u64) -> anyhow::Result<bool> {
    let sim = SimConfig {
        seed,
        days: 30,
        employers: 300,
        agencies: 4,
        scenarios: Scenarios {
            turned: true,
            recruiting_drive: true,
            ..Scenarios::NONE
        },
        ..SimConfig::default()
    };
    let population = Population::new(&sim);
    // The shipped rules, with this board's profiles (as its CRM export would give them).
    let mut rules = (*rules).clone();
    rules.profiles = Profiles::from_records(population.accounts.iter().map(|a| {
        let profile = AccountProfile {
            segment: a.segment.clone(),
            org_id: a.org_id.clone(),
            open_vacancies: a.open_vacancies,
        };
        (a.id.clone(), profile)
    }));
    let mut decide = Decide {
        engine: Engine::new(Arc::new(rules)),
        partial: Vec::new(),
        out: Vec::new(),
        alerts: Vec::new(),
        peaks: BTreeMap::new(),
    };
    let started = Instant::now();
    cvguard_sim::write_events(&sim, &population, &mut decide)?;
    let secs = started.elapsed().as_secs_f64();
    let Decide {
        engine, alerts, peaks, ..
    } = decide;

    writeln!(o)?;
    writeln!(
        o,
        "A month on a smaller board, 3 May to 1 June 2024: detection that knows normal"
    )?;
    writeln!(
        o,
        "  simulated and detected {} events from {} accounts in {:.1} s",
        group(engine.stats().events),
        group(population.accounts.len() as u64),
        secs
    )?;

    let fixed_peaks = |account: &str| -> Vec<String> {
        let Some(p) = peaks.get(account) else { return Vec::new() };
        ["mass-harvest-24h", "slow-harvest-48h", "download-burst-1h"]
            .iter()
            .filter_map(|r| p.get(*r).map(|(v, t, _)| format!("{r} {} of {}", group(*v), group(*t))))
            .collect()
    };
    let mine = |account: &str| -> Vec<&Alert> {
        alerts
            .iter()
            .filter(|a| a.key_kind == KeyKind::AccountId && a.key == account)
            .collect()
    };

    writeln!(
        o,
        "  {TURNED}: a one-vacancy employer reading up to 20 CVs a working day for three weeks, then 2,400 a day"
    )?;
    writeln!(o, "    fixed rules at their peak: {}", fixed_peaks(TURNED).join(", "))?;
    let turned = mine(TURNED);
    let caught = turned.iter().find(|a| a.rule == HISTORY_RULE);
    let only_history = turned.iter().all(|a| a.rule == HISTORY_RULE);
    match caught.and_then(|a| Some((a, a.baseline.as_ref()?))) {
        Some((a, b)) => {
            let statistic = b.statistic_value.unwrap_or(0.0);
            let times = if statistic > 0.0 {
                format!(", {:.0} times its normal day", a.value as f64 / statistic)
            } else {
                String::new()
            };
            writeln!(
                o,
                "    CAUGHT  {}  {HISTORY_RULE} (history rule) after {} distinct CVs in 24 hours{times}",
                local_day(a.event_time_ms),
                group(a.value)
            )?;
            writeln!(
                o,
                "            judged against its normal day ({} of its last {} days: {statistic} CVs): threshold max(floor {}, {} x {statistic}) = {},",
                b.statistic,
                b.daily_values.len(),
                group(b.floor),
                b.factor,
                group(a.threshold)
            )?;
            writeln!(
                o,
                "            a tenth of the fixed daily rule's: a rule that knows each account's normal can afford a low floor"
            )?;
        }
        None => writeln!(o, "    NOT CAUGHT: check {HISTORY_RULE}")?,
    }
    if !only_history {
        writeln!(
            o,
            "    (a fixed rule fired too: the scenario no longer stays under them)"
        )?;
    }

    let drive = peaks.get(DRIVE).and_then(|p| p.get(HISTORY_RULE));
    if let Some((value, threshold, Some(b))) = drive {
        writeln!(
            o,
            "  {DRIVE}: a recruiting drive, 120 open vacancies, {} CVs in 24 hours: history alone would flag it at {},",
            group(*value),
            group(b.baseline_threshold.unwrap_or(0))
        )?;
        writeln!(
            o,
            "    but 50 per vacancy puts its threshold at {}: {}",
            group(*threshold),
            if mine(DRIVE).is_empty() { "no alert" } else { "ALERTED" }
        )?;
    }
    let verdict = check_labels(&population, &alerts, false);
    writeln!(
        o,
        "  Ground truth: {}/{} labelled keys as expected; {} alerts on unlabelled accounts.",
        verdict.matched, verdict.labels, verdict.unexpected
    )?;
    for problem in &verdict.problems {
        writeln!(o, "  MISMATCH: {problem}")?;
    }
    Ok(caught.is_some() && only_history && verdict.problems.is_empty())
}
