//! `cvguard simulate`: traffic, profiles and labels for backtests and demos.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cvguard_sim::{write_accounts, write_events, write_labels, Population, Scenarios, SimConfig};
use flate2::write::GzEncoder;

use crate::Failure;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Folder to write events.ndjson (or .ndjson.gz), accounts.csv and labels.csv into,
    /// and beside them cvguard.toml: the shipped config with these profiles, its store,
    /// state and alerts in this folder, ready for `serve --config` or `replay --config`.
    #[arg(long, default_value = "data/sim")]
    pub out: PathBuf,
    /// The same seed gives the same board, byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Days of traffic, starting Friday 3 May 2024 00:00 UTC unless --start says otherwise.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// Start of simulated time (RFC 3339).
    #[arg(long)]
    pub start: Option<String>,
    /// Ordinary employer accounts.
    #[arg(long, default_value_t = 3000)]
    pub employers: usize,
    /// Staffing agency accounts.
    #[arg(long, default_value_t = 8)]
    pub agencies: usize,
    /// Attack scenarios: harvest, slow, org, partner, turned, ip_ring, shared_credentials,
    /// duplicates, recruiting_drive, all or none (comma separated); turned and
    /// recruiting_drive need --days 25 or more.
    #[arg(long, default_value = "all", value_parser = Scenarios::parse)]
    pub scenarios: Scenarios,
    /// Gzip the events.
    #[arg(long)]
    pub gzip: bool,
}

impl Args {
    pub fn sim_config(&self) -> Result<SimConfig, Failure> {
        let mut cfg = SimConfig {
            seed: self.seed,
            days: self.days,
            employers: self.employers,
            agencies: self.agencies,
            scenarios: self.scenarios,
            ..SimConfig::default()
        };
        if let Some(start) = &self.start {
            cfg.start_ms = cvguard_core::timefmt::parse_rfc3339_ms(start)
                .ok_or_else(|| Failure::Other(anyhow::anyhow!("--start `{start}` is not an RFC 3339 time")))?;
        }
        Ok(cfg)
    }
}

/// Files written by a simulation.
pub struct Written {
    pub events: PathBuf,
    pub accounts: PathBuf,
    pub labels: PathBuf,
    /// The shipped config with this board's profiles, and the store, state and alerts in
    /// the same folder: `cvguard serve --config <it>` runs the board as it is meant.
    pub config: PathBuf,
    pub summary: cvguard_sim::TrafficSummary,
}

pub fn write_all(cfg: &SimConfig, out: &Path, gzip: bool) -> anyhow::Result<Written> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let population = Population::new(cfg);
    let events = out.join(if gzip { "events.ndjson.gz" } else { "events.ndjson" });
    let file = File::create(&events).with_context(|| format!("cannot create {}", events.display()))?;
    let summary = if gzip {
        let mut w = GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
        let s = write_events(cfg, &population, &mut w)?;
        w.finish()?.flush()?;
        s
    } else {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let s = write_events(cfg, &population, &mut w)?;
        w.flush()?;
        s
    };
    let accounts = out.join("accounts.csv");
    let mut w = BufWriter::new(File::create(&accounts)?);
    write_accounts(&population, &mut w)?;
    w.flush()?;
    let labels = out.join("labels.csv");
    let mut w = BufWriter::new(File::create(&labels)?);
    write_labels(&population, &mut w)?;
    w.flush()?;
    let config = out.join("cvguard.toml");
    fs::write(&config, ready_config(out)?).with_context(|| format!("cannot create {}", config.display()))?;
    Ok(Written {
        events,
        accounts,
        labels,
        config,
        summary,
    })
}

/// The shipped config with every file it names in `dir` (absolute paths, so it works
/// from any working directory): the simulated profiles, the store, the state folder and
/// the alerts file.
pub fn ready_config(dir: &Path) -> anyhow::Result<String> {
    let dir = fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let d = dir.display().to_string().replace('\\', "/");
    let mut text = cvguard_config::EMBEDDED_DEFAULT.to_string();
    for (shipped, here) in [
        (
            "url = \"sqlite://data/cvguard.db\"",
            format!("url = \"sqlite://{d}/cvguard.db\""),
        ),
        ("dir = \"data/state\"", format!("dir = \"{d}/state\"")),
        ("path = \"data/alerts.jsonl\"", format!("path = \"{d}/alerts.jsonl\"")),
        ("path = \"accounts.csv\"", format!("path = \"{d}/accounts.csv\"")),
    ] {
        anyhow::ensure!(
            text.matches(shipped).count() == 1,
            "the shipped config no longer has `{shipped}` once; update ready_config"
        );
        text = text.replace(shipped, &here);
    }
    Ok(format!(
        "# Written by `cvguard simulate`: the shipped config (config/cvguard.toml), its files in this folder.\n{text}"
    ))
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let cfg = args.sim_config()?;
    let written = write_all(&cfg, &args.out, args.gzip)?;
    eprintln!(
        "wrote {} events ({} CV ids, {:.1} MB) to {}\nprofiles: {}\nlabels: {}\nconfig: {} (cvguard serve --config {})",
        written.summary.events,
        written.summary.cv_ids,
        written.summary.bytes as f64 / 1e6,
        written.events.display(),
        written.accounts.display(),
        written.labels.display(),
        written.config.display(),
        written.config.display()
    );
    Ok(ExitCode::SUCCESS)
}
