//! `cvguard tune`: every key's peak value per rule and segment over history, and a
//! threshold proposed from it, printed as a TOML fragment (never written into a config).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cvguard_workbench::labels;
use cvguard_workbench::tune::{Distribution, Method, TuneResult, Tuner};

use crate::commands::backtest::{bad_file, load_config, no_usable_event, open_history, read_small, Output};
use crate::commands::text::printable;
use crate::replay::for_each_line;
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// The config whose rules to tune (TOML); it is only read.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The history: NDJSON events, plain or gzip; `-` for stdin.
    #[arg(long, value_name = "HISTORY")]
    input: PathBuf,
    /// Account profile CSV (instead of the config's `[profiles] path`): segments and
    /// vacancies decide which keys are fitted together.
    #[arg(long, value_name = "FILE")]
    profiles: Option<PathBuf>,
    /// Propose the lowest threshold at which at most N keys a week of history would have
    /// been hit (per rule and segment).
    #[arg(long, value_name = "N", conflicts_with = "quantile", value_parser = at_least_zero)]
    target_alerts_per_week: Option<f64>,
    /// Propose the nearest-rank Q-quantile of the keys' peaks times --margin (the default,
    /// with Q = 0.999).
    #[arg(long, value_name = "Q", value_parser = a_quantile)]
    quantile: Option<f64>,
    /// The margin a quantile is multiplied by (and a baseline rule's value/statistic).
    #[arg(long, value_name = "M", default_value = "1.5", value_parser = above_zero)]
    margin: f64,
    /// Keys to leave out of the fit: a labels.csv (its attacks: expected alert or
    /// suspend) or `key_kind,key` lines. They are still listed among the keys hit.
    #[arg(long, value_name = "FILE")]
    exclude: Option<PathBuf>,
    /// Output format on stdout: the table on stderr and the TOML fragment on stdout, or
    /// one JSON document (with the fragment in `toml`).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    /// Also write a self-contained HTML report here (charts as inline SVG, no network).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let config = load_config(&args.config, &args.profiles)?;
    // The flags' ranges are checked by clap (exit 2, as every wrong flag value).
    let method = match (args.target_alerts_per_week, args.quantile) {
        (Some(per_week), _) => Method::AlertsPerWeek { per_week },
        (None, q) => Method::Quantile {
            q: q.unwrap_or(0.999),
            margin: args.margin,
        },
    };
    let exclude = match &args.exclude {
        Some(p) => labels::parse_exclude(&read_small(p, "exclusions")?).map_err(|e| bad_file(p, e))?,
        None => Default::default(),
    };
    let (mut lines, mut progress) = open_history(&args.input, config.ruleset.settings.limits.max_event_bytes)?;
    let mut tuner = Tuner::new(Arc::new(config.ruleset));
    for_each_line(&mut lines, &mut progress, |line| match line {
        Some(bytes) => tuner.feed(bytes),
        None => tuner.too_long(),
    })
    .context("reading the input")?;
    progress.finish();
    if tuner.usable_events() == 0 {
        return Ok(no_usable_event(&args.input, tuner.events_read()));
    }
    let result = tuner.finish(method, &exclude);
    match args.output {
        Output::Json => {
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &result).context("writing JSON")?;
            writeln!(out)?;
        }
        Output::Table => {
            write_table(&mut io::stderr().lock(), &result)?;
            io::stdout().lock().write_all(result.toml.as_bytes())?;
        }
    }
    if let Some(path) = &args.report {
        let html = cvguard_workbench::html::tune_report(&result);
        std::fs::write(path, html).with_context(|| format!("writing the report {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("expected a number, not `{text}`"))
}

fn a_quantile(text: &str) -> Result<f64, String> {
    number(text).and_then(|q| {
        (0.0..=1.0)
            .contains(&q)
            .then_some(q)
            .ok_or_else(|| format!("expected a number from 0 to 1, not {q}"))
    })
}

fn above_zero(text: &str) -> Result<f64, String> {
    number(text).and_then(|m| {
        (m > 0.0)
            .then_some(m)
            .ok_or_else(|| format!("expected a number above 0, not {m}"))
    })
}

fn at_least_zero(text: &str) -> Result<f64, String> {
    number(text).and_then(|n| {
        (n >= 0.0)
            .then_some(n)
            .ok_or_else(|| format!("expected a number of 0 or more, not {n}"))
    })
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn dist_cells(d: &Distribution<u64>) -> String {
    format!(
        "{:>6} {:>7} {:>7} {:>7} {:>7} {:>7}",
        d.n,
        cell(d.p50),
        cell(d.p90),
        cell(d.p99),
        cell(d.p999),
        cell(d.max)
    )
}

fn write_table(w: &mut impl Write, r: &TuneResult) -> io::Result<()> {
    writeln!(
        w,
        "peak values over {:.1} days ({} events; {} keys excluded from the fit)",
        r.history_days, r.events, r.excluded_keys
    )?;
    writeln!(
        w,
        "{:<22} {:<20} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>5} {:>5}",
        "rule", "segment", "keys", "p50", "p90", "p99", "p99.9", "max", "current", "proposed", "hit", "hit'"
    )?;
    for g in &r.groups {
        writeln!(
            w,
            "{:<22} {:<20} {} {:>8} {:>8} {:>5} {:>5}",
            printable(&g.rule),
            printable(&g.segment),
            dist_cells(&g.peaks),
            g.current,
            g.proposed,
            g.hit_now,
            g.hit_by_proposal.len()
        )?;
        if let (Some(d), Some(f)) = (&g.ratios, g.proposed_factor) {
            writeln!(
                w,
                "  value/statistic while judged: n {} p50 {} p90 {} p99 {} max {}; factor {} -> {f}",
                d.n,
                cell(d.p50.map(|x| format!("{x:.2}"))),
                cell(d.p90.map(|x| format!("{x:.2}"))),
                cell(d.p99.map(|x| format!("{x:.2}"))),
                cell(d.max.map(|x| format!("{x:.2}"))),
                g.current_factor.unwrap_or_default()
            )?;
        }
        for h in g.hit_by_proposal.iter().rev().take(10) {
            writeln!(
                w,
                "  would hit {} (peak {} at {}){}",
                printable(&h.key),
                h.peak,
                h.at,
                if h.excluded { " [excluded]" } else { "" }
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cvguard_core::KeyKind;
    use cvguard_workbench::tune::{Group, Hit};

    use super::*;

    #[test]
    fn keys_and_names_from_the_history_cannot_steer_the_terminal() {
        let r = TuneResult {
            method: Method::Quantile { q: 0.99, margin: 1.5 },
            history_days: 1.0,
            first_event: None,
            last_event: None,
            events: 1,
            accepted: 1,
            excluded_keys: 0,
            groups: vec![Group {
                rule: "mass-harvest-24h".into(),
                key_kind: KeyKind::AccountId,
                segment: "seg\u{1b}[2J".into(),
                window: "24h".into(),
                peaks: Distribution::default(),
                ratios: None,
                current: 4000,
                proposed: 3000,
                current_factor: None,
                proposed_factor: None,
                why: String::new(),
                all_peaks: Vec::new(),
                hit_now: 0,
                hit_by_proposal: vec![Hit {
                    key: "evil\u{1b}[31m\u{202e}1-retsevrah".into(),
                    peak: 5000,
                    at: "2025-01-01T00:00:00.000Z".into(),
                    excluded: false,
                }],
            }],
            toml: String::new(),
        };
        let mut out = Vec::new();
        write_table(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text:?}");
        assert!(text.contains("would hit evil\\u{1b}[31m\\u{202e}1-retsevrah"), "{text}");
    }
}
