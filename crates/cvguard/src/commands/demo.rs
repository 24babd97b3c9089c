//! `cvguard demo`: the werk.nl weekend, simulated and replayed with the shipped rules.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use cvguard_config::{ConfigSource, Overrides};
use cvguard_core::{Alert, AlertAction, AlertReason, Engine};
use cvguard_sim::{Actor, Population, SimConfig};
use indicatif::ProgressBar;

use crate::commands::simulate::write_all;
use crate::input::{self, LineReader};
use crate::replay::{feed, key_label};
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the simulated traffic, profiles, labels and alerts.
    #[arg(long, default_value = "data/demo")]
    dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const HARVESTER: &str = "harvester-1";

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let sim = SimConfig {
        seed: args.seed,
        ..SimConfig::default()
    };
    let t0 = Instant::now();
    let written = write_all(&sim, &args.dir, false)?;
    let sim_secs = t0.elapsed().as_secs_f64();

    let config = cvguard_config::load(
        &ConfigSource::embedded_default(),
        &Overrides {
            profiles_path: Some(written.accounts.clone()),
        },
    )?;
    let (reader, _) = input::open(&written.events)?;
    let mut lines = LineReader::new(reader, config.ruleset.settings.limits.max_event_bytes);
    let mut engine = Engine::new(Arc::new(config.ruleset));
    let alerts_path = args.dir.join("alerts.jsonl");
    let mut alerts_file = BufWriter::new(File::create(&alerts_path)?);
    let mut alerts: Vec<Alert> = Vec::new();
    let t1 = Instant::now();
    feed(&mut engine, &mut lines, None, &ProgressBar::hidden(), |a| {
        serde_json::to_writer(&mut alerts_file, a)?;
        alerts_file.write_all(b"\n")?;
        alerts.push(a.clone());
        Ok(())
    })?;
    alerts_file.flush()?;
    let replay_secs = t1.elapsed().as_secs_f64();

    let population = Population::new(&sim);
    let stats = engine.stats();
    let mut o = io::stdout().lock();
    writeln!(
        o,
        "cvguard demo: the werk.nl weekend, Friday 3 to Sunday 5 May 2024 (times CEST)"
    )?;
    writeln!(
        o,
        "  simulated {} events from {} accounts in {:.1} s; replayed with the shipped rules in {:.1} s ({} events/s)",
        group(stats.events),
        group(population.accounts.len() as u64),
        sim_secs,
        replay_secs,
        group((stats.events as f64 / replay_secs.max(1e-9)) as u64)
    )?;
    writeln!(o)?;

    let ok = tell_harvest(&mut o, &population, &alerts)?;
    writeln!(o)?;
    writeln!(o, "Also flagged")?;
    let mut shown = BTreeSet::new();
    for a in alerts
        .iter()
        .filter(|a| !(a.key == HARVESTER && a.key_kind == cvguard_core::KeyKind::AccountId))
    {
        if !shown.insert((a.key.clone(), a.rule.clone())) {
            continue;
        }
        let note = match (a.action, a.reason) {
            (AlertAction::Suspend, _) => "SUSPEND",
            (_, AlertReason::Allowlisted) => "alert (allowlisted, not suspended)",
            (_, AlertReason::DryRun) => "alert (dry run)",
            _ => "alert",
        };
        writeln!(
            o,
            "  {:<14} {:<12} {:<19} {:>7} {} in {:<4} {}  {}",
            a.key,
            key_label(a.key_kind),
            a.rule,
            group(a.value),
            measure_words(a.measure),
            a.window,
            local_time(a.event_time_ms),
            note
        )?;
    }

    let verdict = check_labels(&population, &alerts);
    writeln!(o)?;
    let heavy: Vec<&str> = population
        .labels
        .iter()
        .filter(|l| l.scenario == "legit_heavy")
        .map(|l| l.key.as_str())
        .collect();
    let heavy_flagged: Vec<&&str> = heavy.iter().filter(|k| alerts.iter().any(|a| a.key == **k)).collect();
    if heavy_flagged.is_empty() {
        writeln!(
            o,
            "Legitimate heavy users ({} staffing agencies, bigco-120 with 120 vacancies): no alerts.",
            heavy.len() - 1
        )?;
    } else {
        writeln!(o, "Legitimate heavy users flagged: {heavy_flagged:?}")?;
    }
    writeln!(
        o,
        "Ground truth: {}/{} labelled keys as expected; {} alerts on unlabelled accounts.",
        verdict.matched, verdict.labels, verdict.unexpected
    )?;
    writeln!(
        o,
        "Files: {} (alerts), {}",
        alerts_path.display(),
        written.events.display()
    )?;
    for problem in &verdict.problems {
        writeln!(o, "  MISMATCH: {problem}")?;
    }
    Ok(if ok && verdict.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tell_harvest(o: &mut impl Write, population: &Population, alerts: &[Alert]) -> io::Result<bool> {
    let Some(Actor::Harvester { start_ms, .. }) =
        population.accounts.iter().find(|a| a.id == HARVESTER).map(|a| a.actor)
    else {
        writeln!(o, "(the harvest scenario is off)")?;
        return Ok(true);
    };
    writeln!(
        o,
        "The harvest: {HARVESTER} downloads 148,000 CVs in batches of 200 from {}",
        local_time(start_ms)
    )?;
    let mine: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.accounts.iter().any(|x| x == HARVESTER))
        .collect();
    if let Some(first) = mine.iter().find(|a| a.action == AlertAction::Alert) {
        writeln!(
            o,
            "  SOC alerted        {}  {:<18} after {} CVs",
            local_time(first.event_time_ms),
            first.rule,
            group(first.value)
        )?;
    }
    let Some(suspend) = mine.iter().find(|a| a.action == AlertAction::Suspend) else {
        writeln!(o, "  NOT SUSPENDED: check the rules")?;
        return Ok(false);
    };
    let vis = suspend.evidence.cvs_by_visibility.unwrap_or_default();
    writeln!(
        o,
        "  SUSPENDED          {}  {:<18} after {} distinct CVs ({} named, {} anonymous)",
        local_time(suspend.event_time_ms),
        suspend.rule,
        group(suspend.evidence.distinct_cvs.unwrap_or(suspend.value)),
        group(vis.named),
        group(vis.anonymous)
    )?;
    writeln!(
        o,
        "                     {} minutes after the first download; those {} people are the ones to notify.",
        (suspend.event_time_ms - start_ms) / 60_000,
        group(suspend.evidence.distinct_cvs.unwrap_or(suspend.value))
    )?;
    writeln!(
        o,
        "  May 2024, without cvguard: 148,000 CVs in two days, noticed two days later; 148,215 people notified."
    )?;
    Ok(true)
}

pub struct Verdict {
    pub labels: usize,
    pub matched: usize,
    pub unexpected: usize,
    pub problems: Vec<String>,
}

/// Compares alerts with the simulator's ground truth.
fn check_labels(population: &Population, alerts: &[Alert]) -> Verdict {
    let mut problems = Vec::new();
    let mut matched = 0;
    for l in &population.labels {
        let about: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.key_kind.as_str() == l.key_kind && a.key == l.key)
            .collect();
        let suspended = alerts
            .iter()
            .any(|a| a.action == AlertAction::Suspend && a.suspend_accounts.contains(&l.key));
        let ok = match l.expected {
            "suspend" => suspended,
            "alert" => !about.is_empty() && !suspended,
            _ => about.is_empty() && !suspended,
        };
        if ok {
            matched += 1;
        } else {
            problems.push(format!(
                "{} {} expected {}, got {} alerts (suspended: {suspended})",
                l.key_kind,
                l.key,
                l.expected,
                about.len()
            ));
        }
    }
    let labelled: BTreeSet<(&str, &str)> = population.labels.iter().map(|l| (l.key_kind, l.key.as_str())).collect();
    let unexpected = alerts
        .iter()
        .filter(|a| !labelled.contains(&(a.key_kind.as_str(), a.key.as_str())))
        .count();
    if unexpected > 0 {
        problems.push(format!("{unexpected} alerts on keys the simulation did not label"));
    }
    Verdict {
        labels: population.labels.len(),
        matched,
        unexpected,
        problems,
    }
}

fn measure_words(m: cvguard_core::Measure) -> &'static str {
    match m {
        cvguard_core::Measure::DistinctCvs => "distinct CVs",
        cvguard_core::Measure::Cvs => "CVs",
        cvguard_core::Measure::Events => "events",
    }
}

/// `Sat 06:00` in CEST (UTC+2), the board's local time in May.
fn local_time(ms: i64) -> String {
    let local = ms + 2 * 3_600_000;
    let days = local.div_euclid(86_400_000);
    let day = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mins = local.rem_euclid(86_400_000) / 60_000;
    format!("{day} {:02}:{:02}", mins / 60, mins % 60)
}

/// 148000 -> "148,000".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
