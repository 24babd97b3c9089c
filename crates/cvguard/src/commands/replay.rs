//! `cvguard replay`: a backtest. Never calls the suspend webhook.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cvguard_config::{ConfigSource, Overrides};
use cvguard_core::Engine;
use cvguard_stream::warm_start::WarmStart;

use crate::input::{self, LineReader};
use crate::replay::{feed, write_summary, AlertTally, Progress};
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML). Without it, the shipped default compiled into the binary.
    #[arg(long)]
    config: Option<PathBuf>,
    /// NDJSON events, plain or gzip; `-` for stdin.
    #[arg(long)]
    input: PathBuf,
    /// Write alerts here (JSON lines) instead of stdout.
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// Profile CSV to use instead of the config's `[profiles] path`.
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// The present, for rejecting events from the future (RFC 3339). Default: now.
    #[arg(long)]
    now: Option<String>,
    /// Also decide the events into this state folder (the config's `state.dir`, empty),
    /// as `serve` on HTTP ingest would have: the service then starts with these windows
    /// and histories (a warm start) instead of learning them from nothing.
    #[arg(long, value_name = "DIR")]
    save_state: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let source = args
        .config
        .map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let config = cvguard_config::load(
        &source,
        &Overrides {
            profiles_path: args.profiles,
        },
    )?;
    for w in &config.warnings {
        eprintln!("cvguard: warning: {w}");
    }
    let clock_ms = match &args.now {
        Some(text) => Some(
            cvguard_core::timefmt::parse_rfc3339_ms(text)
                .ok_or_else(|| Failure::Other(anyhow::anyhow!("--now `{text}` is not an RFC 3339 time")))?,
        ),
        None => Some(wall_clock_ms()),
    };
    let (reader, source) = input::open(&args.input)
        .map_err(|e| Failure::NoInput(format!("cannot open input {}: {e}", args.input.display())))?;
    let max_line = config.ruleset.settings.limits.max_event_bytes;
    let mut lines = LineReader::new(reader, max_line);

    let mut out: Box<dyn Write> = match &args.alerts {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create alerts file {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut progress = Progress::new(source, is_gzip(&args.input));
    let rules = Arc::new(config.ruleset);
    let mut warm = match &args.save_state {
        Some(_) if config.source.kind == cvguard_config::SourceKind::Kafka => {
            return Err(Failure::Other(anyhow::anyhow!(
                "--save-state writes HTTP ingest state; a Kafka service rebuilds its state from the topics' retention (docs/DETECTION.md)"
            )))
        }
        Some(dir) => Some(WarmStart::new(dir, rules.clone()).map_err(|e| Failure::Other(e.into()))?),
        None => None,
    };
    let mut engine = Engine::new(rules);
    let mut tally = AlertTally::default();
    let started = Instant::now();
    let on_line = |line: &[u8]| {
        if let Some(w) = warm.as_mut() {
            w.feed(line, clock_ms);
        }
    };
    let bytes = feed(&mut engine, &mut lines, clock_ms, &mut progress, on_line, |alert| {
        tally.note(alert);
        serde_json::to_writer(&mut out, alert)?;
        out.write_all(b"\n")
    })
    .context("reading the input")?;
    out.flush().context("writing alerts")?;
    progress.finish();
    if let (Some(w), Some(dir)) = (warm, &args.save_state) {
        let (keys, histories) = w.save().map_err(|e| Failure::Other(e.into()))?;
        eprintln!(
            "state saved to {}: {keys} keys, {histories} baseline histories; start `cvguard serve` with state.dir = {}",
            dir.display(),
            dir.display()
        );
    }
    write_summary(
        &mut io::stderr().lock(),
        engine.stats(),
        &tally,
        bytes,
        Some(progress.file_bytes()),
        started.elapsed(),
    )?;
    let s = engine.stats();
    if s.accepted + s.late + s.duplicates == 0 {
        let why = match s.events {
            0 => "it is empty".to_string(),
            1 => "its one line was rejected: see the reason above".to_string(),
            n => format!("all {n} lines were rejected: see the reasons above"),
        };
        let input = if args.input.as_os_str() == "-" {
            "stdin".to_string()
        } else {
            args.input.display().to_string()
        };
        eprintln!("cvguard: no usable event in {input}: {why}");
        return Ok(ExitCode::from(crate::EXIT_NO_DATA));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a file starts with gzip's magic bytes (as `input::open` decides); stdin is
/// not peeked at, and its progress has no size to compare with anyway.
pub fn is_gzip(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 2];
    path.as_os_str() != "-"
        && File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && magic == [0x1f, 0x8b]
}

pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
