//! The `cvguard` command. It only wires: config, inputs and outputs, the engine.

mod commands;
mod input;
mod replay;
mod telemetry;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit status for a bad config or bad arguments (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status for an input that cannot be opened (sysexits EX_NOINPUT).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit status for input with no usable event in it (sysexits EX_DATAERR).
pub const EXIT_NO_DATA: u8 = 65;

const EXIT_CODES: &str = "Exit status:
  0   ok
  1   any other failure (a store or broker that cannot be reached, a failed write)
  2   wrong arguments (usage)
  64  invalid config: every problem listed with file, line, rule and key
  65  replay, backtest, tune: the input held no usable event
  66  a config file, input or incident that does not exist";

#[derive(Parser)]
#[command(
    name = "cvguard",
    version,
    about = "Stops mass harvesting of CVs on job boards",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay NDJSON events (plain or .gz) through the engine; alerts as JSON lines.
    Replay(commands::replay::Args),
    /// Backtest a candidate config against history with the service's whole decision path
    /// (allowlist, dry run, blast-radius limit, cooldown), against the current config with
    /// --baseline; precision and recall with --labels.
    Backtest(commands::backtest::Args),
    /// Propose thresholds per rule and segment from every key's peak value over history,
    /// as a TOML fragment to review (never edits a config).
    Tune(commands::tune::Args),
    /// Write simulated job-board traffic, an account profile file, ground-truth labels and a
    /// ready cvguard.toml beside them.
    Simulate(commands::simulate::Args),
    /// Simulate the werk.nl weekend, replay it with the shipped config and tell the story.
    Demo(commands::demo::Args),
    /// Run the service: consume events (Kafka or HTTP), detect, publish alerts.
    Serve(commands::serve::Args),
    /// Read the incident store: list, show, export the people to notify.
    Incidents(commands::incidents::Args),
    /// API tokens: `token new --role viewer --name soc-dashboard`.
    Token(commands::token::Args),
    /// Validate a config file and print the effective rules (or, with -o json, the whole
    /// effective config); exit 64 with every problem, 66 when the file cannot be read.
    CheckConfig(commands::check_config::Args),
    /// Print a shell completion script: `cvguard completions bash > /etc/bash_completion.d/cvguard`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (cvguard.1 and one per command) into a folder: `cvguard man
    /// --out /usr/local/share/man/man1`.
    Man {
        /// The folder to write them into (made if missing); required, so that nothing is
        /// written where it was not asked for. `--out .` for the current directory.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

/// Errors the commands return, each with its exit status.
#[derive(Debug)]
pub enum Failure {
    /// A config that cannot be read (66) or is invalid (64).
    Load(cvguard_config::LoadError),
    Config(cvguard_config::ConfigError),
    NoInput(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

impl From<cvguard_config::LoadError> for Failure {
    fn from(e: cvguard_config::LoadError) -> Self {
        Failure::Load(e)
    }
}

impl From<cvguard_config::ConfigError> for Failure {
    fn from(e: cvguard_config::ConfigError) -> Self {
        Failure::Config(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => commands::replay::run(args),
        Command::Backtest(args) => commands::backtest::run(args),
        Command::Tune(args) => commands::tune::run(args),
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Incidents(args) => commands::incidents::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cvguard", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => commands::man::write(Cli::command(), &out, EXIT_CODES),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Load(e)) if e.is_unreadable() => {
            eprintln!("cvguard: {e}");
            ExitCode::from(EXIT_NO_INPUT)
        }
        Err(Failure::Load(e)) => {
            eprintln!("cvguard: invalid config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Config(e)) => {
            eprintln!("cvguard: invalid config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::NoInput(msg)) => {
            eprintln!("cvguard: {msg}");
            ExitCode::from(EXIT_NO_INPUT)
        }
        Err(Failure::Other(e)) => {
            eprintln!("cvguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help` (and so in the man
    /// pages and completions made from the same definition).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "cvguard", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
