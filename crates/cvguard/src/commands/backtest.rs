//! `cvguard backtest`: history through a candidate config (and the current one) with the
//! service's whole decision path, in event time; never calls anything.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cvguard_config::{Config, ConfigSource, Overrides};
use cvguard_respond::Rails;
use cvguard_workbench::backtest::{Backtest, BacktestResult, ConfigResult, RuleFigures, Setup};
use cvguard_workbench::labels::{self, Labels};

use crate::commands::text::printable;
use crate::input::{self, LineReader};
use crate::replay::{for_each_line, Progress};
use crate::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON document (the report's numbers, exactly).
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// The candidate config (TOML): the one whose effect you want to see.
    #[arg(long, value_name = "CANDIDATE")]
    config: PathBuf,
    /// The current config, to compare with: keys newly hit, no longer hit, decided earlier
    /// or later.
    #[arg(long, value_name = "CURRENT")]
    baseline: Option<PathBuf>,
    /// The history: NDJSON events, plain or gzip; `-` for stdin.
    #[arg(long, value_name = "HISTORY")]
    input: PathBuf,
    /// Account profile CSV for both configs (instead of each config's `[profiles] path`).
    #[arg(long, value_name = "FILE")]
    profiles: Option<PathBuf>,
    /// Ground truth (`key_kind,key,scenario,expected`, as `cvguard simulate` writes it):
    /// adds precision and recall per rule.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// False positives undone (`account_id,unsuspended_at` lines, RFC 3339): each starts
    /// the account's `[suspend] cooldown`, as an unsuspend in the service does.
    #[arg(long, value_name = "FILE")]
    unsuspends: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    /// Also write a self-contained HTML report here (charts as inline SVG, no network).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// Loads a config with the shared profile override, printing its warnings.
pub fn load_config(path: &Path, profiles: &Option<PathBuf>) -> Result<Config, Failure> {
    let config = cvguard_config::load(
        &ConfigSource::File(path.to_path_buf()),
        &Overrides {
            profiles_path: profiles.clone(),
        },
    )?;
    for w in &config.warnings {
        eprintln!("cvguard: warning: {}: {w}", path.display());
    }
    Ok(config)
}

/// Reads a small input file (labels, exclusions), 66 when it cannot be read.
pub fn read_small(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::NoInput(format!("cannot read {what} {}: {e}", path.display())))
}

/// A file's content that does not parse is a bad argument (64), with the file's name.
pub fn bad_file(path: &Path, e: String) -> Failure {
    Failure::Config(cvguard_config::ConfigError {
        file: path.display().to_string(),
        issues: vec![cvguard_core::ConfigIssue {
            rule: None,
            key: "(file)".into(),
            message: e,
        }],
    })
}

fn setup(path: &Path, config: Config, unsuspends: &[(String, i64)]) -> Setup {
    Setup {
        source: path.display().to_string(),
        rails: Rails {
            webhook: config.suspend.url.is_some(),
            max_per_hour: config.suspend.max_per_hour,
            cooldown: config.timing.suspend_cooldown,
        },
        rules: Arc::new(config.ruleset),
        unsuspends: unsuspends.to_vec(),
    }
}

/// Opens the history, 66 when it cannot be.
pub fn open_history(path: &Path, max_line: usize) -> Result<(LineReader<Box<dyn io::BufRead>>, Progress), Failure> {
    let (reader, source) =
        input::open(path).map_err(|e| Failure::NoInput(format!("cannot open input {}: {e}", path.display())))?;
    let progress = Progress::new(source, crate::commands::replay::is_gzip(path));
    Ok((LineReader::new(reader, max_line), progress))
}

/// 65 with the reason when the history held no usable event.
pub fn no_usable_event(path: &Path, read: u64) -> ExitCode {
    let why = match read {
        0 => "it is empty".to_string(),
        1 => "its one line was rejected".to_string(),
        n => format!("all {n} lines were rejected"),
    };
    eprintln!("cvguard: no usable event in {}: {why}", path.display());
    ExitCode::from(crate::EXIT_NO_DATA)
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let candidate = load_config(&args.config, &args.profiles)?;
    let baseline = args
        .baseline
        .as_ref()
        .map(|p| load_config(p, &args.profiles))
        .transpose()?;
    let labels = match &args.labels {
        Some(p) => Some(Labels::parse(&read_small(p, "labels")?).map_err(|e| bad_file(p, e))?),
        None => None,
    };
    let unsuspends = match &args.unsuspends {
        Some(p) => labels::parse_unsuspends(&read_small(p, "unsuspends")?).map_err(|e| bad_file(p, e))?,
        None => Vec::new(),
    };
    let max_line = candidate.ruleset.settings.limits.max_event_bytes.max(
        baseline
            .as_ref()
            .map_or(0, |b| b.ruleset.settings.limits.max_event_bytes),
    );
    let (mut lines, mut progress) = open_history(&args.input, max_line)?;
    let mut backtest = Backtest::new(
        setup(&args.config, candidate, &unsuspends),
        args.baseline
            .as_ref()
            .zip(baseline)
            .map(|(p, c)| setup(p, c, &unsuspends)),
    );
    let started = Instant::now();
    let bytes = for_each_line(&mut lines, &mut progress, |line| match line {
        Some(bytes) => backtest.feed(bytes),
        None => backtest.too_long(),
    })
    .context("reading the input")?;
    progress.finish();
    let elapsed = started.elapsed();
    if backtest.usable_events() == 0 {
        return Ok(no_usable_event(&args.input, backtest.events_read()));
    }
    let result = backtest.finish(labels.as_ref());
    eprintln!(
        "backtest: {} events ({:.1} MB) through {} config{} in {:.2} s",
        result.candidate.events.read,
        bytes as f64 / 1e6,
        if result.baseline.is_some() { 2 } else { 1 },
        if result.baseline.is_some() { "s" } else { "" },
        elapsed.as_secs_f64()
    );
    let mut out = io::stdout().lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &result).context("writing JSON")?;
            writeln!(out)?;
        }
        Output::Table => write_table(&mut out, &result)?,
    }
    if let Some(path) = &args.report {
        let html = cvguard_workbench::html::backtest_report(&result);
        std::fs::write(path, html).with_context(|| format!("writing the report {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), cvguard_core::timefmt::format_duration_ms)
}

fn share(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.2}", x))
}

fn rows(w: &mut impl Write, r: &ConfigResult) -> io::Result<()> {
    writeln!(
        w,
        "{} ({})",
        printable(&r.config),
        if r.webhook {
            "suspend webhook configured"
        } else {
            "no [suspend] url: suspensions recorded, never sent, and max_per_hour never trips"
        }
    )?;
    writeln!(
        w,
        "  {:<24} {:>7} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>10} {:>9} {:>6} {:>6}",
        "rule",
        "alerts",
        "incidents",
        "keys",
        "suspend",
        "limited",
        "cooldwn",
        "dry_run",
        "allowlst",
        "med.decide",
        "med.CVs",
        "prec",
        "recall"
    )?;
    let line = |w: &mut dyn Write, f: &RuleFigures| -> io::Result<()> {
        writeln!(
            w,
            "  {:<24} {:>7} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>10} {:>9} {:>6} {:>6}",
            printable(&f.rule),
            f.alerts,
            f.incidents,
            f.keys_hit,
            f.suspensions,
            f.suspension_limit,
            f.cooldown,
            f.dry_run,
            f.allowlisted,
            ms(f.median_time_to_decide_ms),
            f.median_cvs_exposed.map_or_else(|| "-".into(), |v| v.to_string()),
            share(f.score.as_ref().and_then(|s| s.precision)),
            share(f.score.as_ref().and_then(|s| s.recall)),
        )
    };
    for f in &r.rules {
        line(w, f)?;
    }
    line(w, &r.total)?;
    if let Some(s) = &r.total.score {
        for k in &s.false_positive_keys {
            writeln!(w, "  false positive: {}", printable(k))?;
        }
        for k in &s.missed_keys {
            writeln!(w, "  missed attack:  {}", printable(k))?;
        }
    }
    if r.limit_alerts > 0 {
        writeln!(w, "  suspension-limit-reached alerts: {}", r.limit_alerts)?;
    }
    writeln!(w, "  incidents:")?;
    for i in &r.incidents {
        writeln!(
            w,
            "    {} {:<20} {}:{}  {} ({})  {} CVs, decided {} after the window's first event{}",
            i.decided_at,
            printable(&i.rule),
            i.key_kind.as_str(),
            printable(&i.key),
            i.action.as_str(),
            serde_json::to_value(i.reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            i.cvs_exposed.map_or_else(|| "?".into(), |v| v.to_string()),
            cvguard_core::timefmt::format_duration_ms(i.time_to_decide_ms),
            if i.suspended.is_empty() {
                String::new()
            } else {
                format!("; suspends {}", printable(&i.suspended.join(",")))
            }
        )?;
    }
    Ok(())
}

fn write_table(w: &mut impl Write, r: &BacktestResult) -> io::Result<()> {
    write!(w, "candidate: ")?;
    rows(w, &r.candidate)?;
    if let (Some(b), Some(d)) = (&r.baseline, &r.diff) {
        write!(w, "\nbaseline: ")?;
        rows(w, b)?;
        writeln!(
            w,
            "\ndifference (candidate against baseline, per rule and key): {} newly hit, {} no longer hit, {} decided earlier, {} later, {} unchanged",
            d.newly_hit.len(),
            d.no_longer_hit.len(),
            d.decided_earlier.len(),
            d.decided_later.len(),
            d.unchanged
        )?;
        for h in &d.newly_hit {
            writeln!(
                w,
                "  + {:<20} {}:{} at {} ({})",
                printable(&h.rule),
                h.key_kind.as_str(),
                printable(&h.key),
                h.decided_at,
                h.action.as_str()
            )?;
        }
        for h in &d.no_longer_hit {
            writeln!(
                w,
                "  - {:<20} {}:{} (was {} at {})",
                printable(&h.rule),
                h.key_kind.as_str(),
                printable(&h.key),
                h.action.as_str(),
                h.decided_at
            )?;
        }
        for s in d.decided_earlier.iter().chain(&d.decided_later) {
            let when = if s.earlier_by_ms > 0 { "earlier" } else { "later" };
            let cvs = s.cvs_change().map_or_else(String::new, |c| format!(", {c}"));
            writeln!(
                w,
                "  ~ {:<20} {}:{} {} {when}{cvs}",
                printable(&s.rule),
                s.key_kind.as_str(),
                printable(&s.key),
                cvguard_core::timefmt::format_duration_ms(s.earlier_by_ms.abs()),
            )?;
        }
        if !d.newly_suspended.is_empty() {
            writeln!(w, "  newly suspended: {}", printable(&d.newly_suspended.join(", ")))?;
        }
        if !d.no_longer_suspended.is_empty() {
            writeln!(
                w,
                "  no longer suspended: {}",
                printable(&d.no_longer_suspended.join(", "))
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cvguard_core::{AlertAction, AlertReason, KeyKind, Measure};
    use cvguard_workbench::backtest::Incident;

    use super::*;

    #[test]
    fn keys_from_the_history_cannot_steer_the_terminal() {
        let key = "evil\u{1b}[31m\u{202e}1-retsevrah";
        let incident = Incident {
            id: "i-1".into(),
            rule: "mass-harvest-24h".into(),
            key_kind: KeyKind::AccountId,
            key: key.into(),
            decided_at: "2025-01-01T00:00:02.000Z".into(),
            decided_at_ms: 2_000,
            action: AlertAction::Suspend,
            reason: AlertReason::RuleResponse,
            measure: Measure::DistinctCvs,
            window: "24h".into(),
            suspended: vec![key.into()],
            already_suspended: Vec::new(),
            value: 4001,
            threshold: 4000,
            first_seen: "2025-01-01T00:00:00.000Z".into(),
            time_to_decide_ms: 2_000,
            cvs_exposed: Some(4001),
            joined: 0,
            series: Vec::new(),
        };
        let mut r = BacktestResult::default();
        r.candidate.incidents.push(incident);
        let mut out = Vec::new();
        write_table(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text:?}");
        assert!(
            text.contains("account_id:evil\\u{1b}[31m\\u{202e}1-retsevrah"),
            "{text}"
        );
    }
}
