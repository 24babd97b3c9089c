//! `cvguard incidents list|show|set|export`: the incident store named by the config. The
//! store must exist: these commands never create one (a new, empty store read by mistake
//! would look like "no incidents").

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cvguard_config::{redact_url, ConfigSource, Overrides};
use cvguard_store::{IncidentFilter, Store, StoreError};

use crate::commands::text::printable;
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
        /// Config file whose `[store] url` to read. Without it, the shipped default's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only incidents in this status: open, acknowledged, resolved or false_positive
        /// (the API's `status` filter, read by the same parser).
        #[arg(long, value_parser = cvguard_api::filters::parse_status)]
        status: Option<&'static str>,
        /// Only incidents of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// How many, at most (1 to 1000, as the API's `limit`, read by the same parser).
        #[arg(long, default_value = "50", value_parser = cvguard_api::filters::parse_limit)]
        limit: i64,
        /// `table` for people, `json` for programs.
        #[arg(short = 'o', long = "output", alias = "format", value_enum, default_value = "table")]
        output: Output,
    },
    /// One incident with its actions and history.
    Show {
        /// The incident's id (from `incidents list`).
        id: String,
        /// Config file whose `[store] url` to read. Without it, the shipped default's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `json` (the incident as the API gives it) or `table` (its main fields, one a line).
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Output,
    },
    /// Change an incident's status, as the SOC's decision (recorded with actor and note).
    Set {
        /// The incident's id (from `incidents list`).
        id: String,
        /// The new status: a false positive also lifts the suspension it caused.
        #[arg(value_enum)]
        status: Status,
        /// Config file whose `[store] url` to write. Without it, the shipped default's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Who is making the change (recorded in the history).
        #[arg(long, default_value = "cli")]
        actor: String,
        /// Why, in a few words (recorded in the history).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The people to notify: every CV the incident's key touched, one row each.
    Export {
        /// The incident's id (from `incidents list`).
        id: String,
        /// Config file whose `[store] url` to read. Without it, the shipped default's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The export's format: `csv` (safe to open in a spreadsheet) or `json` (an array of
        /// rows with the same columns).
        #[arg(short = 'o', long = "output", alias = "format", value_enum, default_value = "csv")]
        output: ExportFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Status {
    Acknowledged,
    Resolved,
    #[value(name = "false_positive", alias = "false-positive")]
    FalsePositive,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
}

/// The store the config names, which must exist (exit 66 when it does not).
fn open(config_file: Option<PathBuf>) -> Result<(tokio::runtime::Runtime, Store), Failure> {
    let source = config_file
        .clone()
        .map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let config = cvguard_config::load(&source, &Overrides::default())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let url = &config.store.url;
    let store = match rt.block_on(Store::open_existing(url)) {
        Ok(store) => store,
        Err(StoreError::Missing(path)) => {
            let from = store_url_origin(config_file.as_deref());
            return Err(Failure::NoInput(format!(
                "no incident store at {path} ({from}); pass --config FILE of the running service"
            )));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("opening {}", redact_url(url)))
                .into())
        }
    };
    Ok((rt, store))
}

/// Where `[store] url` came from, for the message about a missing store.
fn store_url_origin(config_file: Option<&Path>) -> String {
    let var = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .find(|k| k.eq_ignore_ascii_case("CVGUARD__STORE__URL"));
    match (var, config_file) {
        (Some(var), _) => format!("the environment variable {var}"),
        (None, Some(file)) => format!("[store] url of {}", file.display()),
        (None, None) => "the embedded default config's [store] url, relative to the working directory".into(),
    }
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let mut out = io::stdout().lock();
    let result = match args.command {
        Sub::List {
            config,
            status,
            rule,
            limit,
            output,
        } => {
            let (rt, store) = open(config)?;
            let filter = IncidentFilter {
                status: status.map(str::to_string),
                rule,
                limit,
                ..IncidentFilter::default()
            };
            let list = rt.block_on(store.list(&filter)).context("listing incidents")?;
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list).unwrap_or_default()),
                Output::Table => (|| {
                    writeln!(
                        out,
                        "{:<18} {:<15} {:<20} {:<12} {:<18} {:>8} {:<8} {:>9} {:>9}  opened",
                        "id", "status", "rule", "key_kind", "key", "value", "action", "named", "anonymous"
                    )?;
                    for i in &list {
                        writeln!(
                            out,
                            "{:<18} {:<15} {:<20} {:<12} {:<18} {:>8} {:<8} {:>9} {:>9}  {}",
                            printable(&i.id),
                            i.status,
                            printable(&i.rule),
                            i.key_kind,
                            printable(&i.key),
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
        Sub::Show { id, config, output } => {
            let (rt, store) = open(config)?;
            match rt.block_on(store.get(&id)).context("reading the incident")? {
                Some(d) if output == Output::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&d).unwrap_or_default())
                }
                Some(d) => show_table(&mut out, &d),
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
        Sub::Export { id, config, output } => {
            let (rt, store) = open(config)?;
            if rt.block_on(store.get(&id)).context("reading the incident")?.is_none() {
                return Err(Failure::NoInput(format!("no incident {id}")));
            }
            let rows = rt.block_on(store.exposed_cvs(&id)).context("reading exposed CVs")?;
            match output {
                ExportFormat::Csv => cvguard_store::write_exposed_csv(&mut out, &rows),
                ExportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
            }
        }
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// An incident's main fields, one a line, then its actions and history.
fn show_table(out: &mut impl Write, d: &cvguard_store::IncidentDetail) -> io::Result<()> {
    let i = &d.incident;
    let c = &i.cvs_by_visibility;
    for (field, value) in [
        ("id", i.id.clone()),
        ("status", i.status.clone()),
        ("rule", i.rule.clone()),
        ("key", format!("{} {}", i.key_kind, i.key)),
        ("accounts", i.accounts.join(", ")),
        ("decided", format!("{} ({})", i.action, i.reason)),
        ("suspended", i.suspended.to_string()),
        (
            "value",
            format!(
                "{} at detection, {} latest; threshold {} ({})",
                i.value_at_detection, i.latest_value, i.threshold, i.threshold_source
            ),
        ),
        ("first event", i.first_event_time.clone()),
        ("opened", i.opened_at.clone()),
        (
            "people to notify",
            format!("{} named, {} anonymous, {} unknown", c.named, c.anonymous, c.unknown),
        ),
        ("notify authority by", i.notify_authority_by.clone()),
    ] {
        writeln!(out, "{field:<20} {}", printable(&value))?;
    }
    for a in &d.actions {
        // A detail may start with its outcome ("allowlisted: alert only"): said once.
        let detail = a.detail.strip_prefix(&format!("{}: ", a.outcome)).unwrap_or(&a.detail);
        writeln!(
            out,
            "action               {} {} {} {}: {}",
            a.at,
            a.action,
            printable(&a.target),
            a.outcome,
            printable(detail)
        )?;
    }
    for h in &d.history {
        writeln!(
            out,
            "history              {} {} {}: {}",
            h.at,
            printable(&h.actor),
            printable(&h.change),
            printable(&h.note)
        )?;
    }
    Ok(())
}
