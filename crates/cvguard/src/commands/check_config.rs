//! `cvguard check-config [--config] FILE`: what an analyst runs before a change goes live.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cvguard_config::{redact_url, secret_kafka_property, Config, ConfigSource, LoadError, Overrides};
use serde_json::Value;

use crate::{Failure, EXIT_CONFIG, EXIT_NO_INPUT};

#[derive(clap::Args)]
pub struct Args {
    /// The config file (TOML); the same as --config. Without either, the default
    /// compiled into the binary.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// The config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `table`: the effective rules; `json`: the whole effective config, defaults
    /// included, paths absolute (credentials in URLs, secret query parameters and secret
    /// Kafka properties redacted). An invalid config with `json`: `{"file", "valid":
    /// false, "problems": [{severity, file, line, column, env, rule, key, message}]}` on
    /// stdout, exit 64 (66 when unreadable).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Refuse warnings too (a rule action no known event has): exit 64.
    #[arg(long)]
    strict: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let source = args
        .file
        .or(args.config)
        .map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let loaded = cvguard_config::load(&source, &Overrides::default()).and_then(|config| {
        if args.strict && !config.warnings.is_empty() {
            return Err(LoadError::from_warnings(config.source_name, config.warnings));
        }
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(e) if args.output == Output::Json => return print_problems(&e),
        Err(e) => return Err(e.into()),
    };
    for warning in &config.warnings {
        eprintln!("cvguard: warning: {warning}");
    }
    let printed = match args.output {
        Output::Table => print_rules(&config),
        Output::Json => print_json(&config),
    };
    match printed {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// An invalid config as JSON, for a tool (an editor, CI) that reads the problems.
fn print_problems(e: &LoadError) -> Result<ExitCode, Failure> {
    let mut o = io::stdout().lock();
    serde_json::to_writer_pretty(&mut o, &e.to_json()).map_err(io::Error::from)?;
    writeln!(o)?;
    let code = if e.is_unreadable() { EXIT_NO_INPUT } else { EXIT_CONFIG };
    Ok(ExitCode::from(code))
}

fn print_json(config: &Config) -> io::Result<()> {
    let mut all = config.effective();
    redact(&mut all);
    let mut o = io::stdout().lock();
    serde_json::to_writer_pretty(&mut o, &all)?;
    writeln!(o)
}

/// Credentials out of every URL and secret out of every Kafka property. Token hashes and
/// `secret_env` (a variable's name) are not secrets.
fn redact(all: &mut Value) {
    let redact_url_at = |url: Option<&mut Value>| {
        if let Some(Value::String(text)) = url {
            *text = redact_url(text);
        }
    };
    redact_url_at(all.pointer_mut("/store/url"));
    redact_url_at(all.pointer_mut("/suspend/url"));
    if let Some(Value::Array(sinks)) = all.get_mut("sinks") {
        for sink in sinks {
            redact_url_at(sink.get_mut("url"));
        }
    }
    if let Some(Value::Object(props)) = all.pointer_mut("/kafka/properties") {
        for (name, value) in props.iter_mut() {
            if secret_kafka_property(name) {
                *value = Value::String(cvguard_config::REDACTED.into());
            }
        }
    }
}

fn print_rules(config: &Config) -> io::Result<()> {
    let mut o = io::stdout().lock();
    let set = &config.ruleset;
    writeln!(o, "{}: ok", config.source_name)?;
    match &config.profiles_path {
        Some(p) => writeln!(o, "profiles: {} from {}", accounts(set.profiles.len()), p.display())?,
        None if config.profiles_embedded => writeln!(
            o,
            "profiles: {} ({})",
            cvguard_config::EMBEDDED_PROFILES_NAME,
            accounts(set.profiles.len())
        )?,
        None => writeln!(o, "profiles: none")?,
    }
    if set.settings.dry_run {
        writeln!(o, "dry run: on (no automatic suspension)")?;
    }
    writeln!(
        o,
        "rule                   group_by    measure            window  threshold  response per vacancy / segments"
    )?;
    for r in &set.rules {
        let mut extra = Vec::new();
        if let Some(p) = r.per_vacancy {
            extra.push(format!("{p} per vacancy"));
        }
        extra.extend(r.segments.iter().map(|(s, t)| format!("{s}={t}")));
        if let Some(b) = &r.baseline {
            extra.push(format!(
                "and at least {} x {} of its last {} daily values, once {} days old",
                b.factor, b.statistic, b.history_days, b.min_history_days
            ));
        }
        let response = if r.dry_run { "dry-run" } else { r.response.as_str() };
        writeln!(
            o,
            "{:<22} {:<11} {:<18} {:>6} {:>10}  {:<8} {}",
            r.name,
            r.group_by.as_str(),
            r.measure.as_str(),
            r.window_text,
            r.threshold,
            response,
            extra.join(", ")
        )?;
    }
    Ok(())
}

fn accounts(n: usize) -> String {
    format!("{n} account{}", if n == 1 { "" } else { "s" })
}
