//! `cvguard incidents list|show|export`: read the incident store named by the config.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cvguard_config::{ConfigSource, Overrides};
use cvguard_store::{IncidentFilter, Store};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Incidents, newest first.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        /// open, acknowledged, resolved or false_positive.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// One incident with its actions and history, as JSON.
    Show {
        id: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Move an incident on: acknowledged, resolved or false-positive (which unsuspends).
    Set {
        id: String,
        #[arg(value_enum)]
        status: Status,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Who is making the change (recorded in the history).
        #[arg(long, default_value = "cli")]
        actor: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The people to notify: one row per distinct CV (cv_id,first_access,action,visibility).
    Export {
        id: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Status {
    Acknowledged,
    Resolved,
    FalsePositive,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
}

fn open(config: Option<PathBuf>) -> Result<(tokio::runtime::Runtime, Store), Failure> {
    let source = config.map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let config = cvguard_config::load(&source, &Overrides::default())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let store = rt
        .block_on(Store::connect(&config.store.url))
        .with_context(|| format!("opening {}", crate::commands::serve::redact_url(&config.store.url)))?;
    Ok((rt, store))
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let mut out = io::stdout().lock();
    let result = match args.command {
        Sub::List {
            config,
            status,
            rule,
            limit,
            format,
        } => {
            let (rt, store) = open(config)?;
            let filter = IncidentFilter {
                status,
                rule,
                limit,
                ..IncidentFilter::default()
            };
            let list = rt.block_on(store.list(&filter)).context("listing incidents")?;
            match format {
                ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list).unwrap_or_default()),
                ListFormat::Table => (|| {
                    writeln!(
                        out,
                        "{:<18} {:<15} {:<20} {:<12} {:<18} {:>8} {:<8} {:>9} {:>9}  opened",
                        "id", "status", "rule", "key_kind", "key", "value", "action", "named", "anonymous"
                    )?;
                    for i in &list {
                        writeln!(
                            out,
                            "{:<18} {:<15} {:<20} {:<12} {:<18} {:>8} {:<8} {:>9} {:>9}  {}",
                            i.id,
                            i.status,
                            i.rule,
                            i.key_kind,
                            i.key,
                            i.latest_value,
                            if i.suspended { "SUSPENDED" } else { i.action.as_str() },
                            i.cvs_by_visibility.named,
                            i.cvs_by_visibility.anonymous,
                            i.opened_at
                        )?;
                    }
                    Ok(())
                })(),
            }
        }
        Sub::Show { id, config } => {
            let (rt, store) = open(config)?;
            match rt.block_on(store.get(&id)).context("reading the incident")? {
                Some(d) => writeln!(out, "{}", serde_json::to_string_pretty(&d).unwrap_or_default()),
                None => return Err(Failure::NoInput(format!("no incident {id}"))),
            }
        }
        Sub::Set {
            id,
            status,
            config,
            actor,
            note,
        } => {
            let (rt, store) = open(config)?;
            let to = match status {
                Status::Acknowledged => "acknowledged",
                Status::Resolved => "resolved",
                Status::FalsePositive => "false_positive",
            };
            let now = crate::commands::replay::wall_clock_ms();
            let body = |i: &cvguard_store::Incident, acc: &str| cvguard_respond::responder::unsuspend_body(i, acc, now);
            match rt.block_on(store.set_status(&id, to, &actor, &note, now, &body)) {
                Ok(i) => {
                    rt.block_on(store.audit(now, &actor, to, &id, &note)).context("audit")?;
                    writeln!(out, "{} is now {}", i.id, i.status)
                }
                Err(cvguard_store::StoreError::NotFound(_)) => {
                    return Err(Failure::NoInput(format!("no incident {id}")))
                }
                Err(e) => return Err(Failure::Other(e.into())),
            }
        }
        Sub::Export {
            id,
            config,
            format: ExportFormat::Csv,
        } => {
            let (rt, store) = open(config)?;
            if rt.block_on(store.get(&id)).context("reading the incident")?.is_none() {
                return Err(Failure::NoInput(format!("no incident {id}")));
            }
            let rows = rt.block_on(store.exposed_cvs(&id)).context("reading exposed CVs")?;
            cvguard_store::write_exposed_csv(&mut out, &rows)
        }
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
