//! `cvguard token new --role viewer --name X`: a fresh API token, printed once, and the
//! config lines that store only its hash.

use std::process::ExitCode;

use cvguard_config::Role;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Print a new random token and the `[[http.tokens]]` entry to paste into the config.
    New {
        /// What it may do: viewer reads, responder also acts on incidents, admin also
        /// changes suspensions, ingest may only POST events.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Who holds it; recorded as the actor of every change made with it.
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Viewer,
    Responder,
    Admin,
    Ingest,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let Sub::New { role, name } = args.command;
    let role = match role {
        RoleArg::Viewer => Role::Viewer,
        RoleArg::Responder => Role::Responder,
        RoleArg::Admin => Role::Admin,
        RoleArg::Ingest => Role::Ingest,
    };
    let (token, hash) = cvguard_api::new_token()?;
    println!("token (shown once; give it to {name}): {token}");
    println!();
    println!("[[http.tokens]]");
    println!("name = {}", serde_json::to_string(&name).unwrap_or_default());
    println!("role = \"{}\"", role.as_str());
    println!("sha256 = \"{hash}\"");
    Ok(ExitCode::SUCCESS)
}
