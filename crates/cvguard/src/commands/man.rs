//! `cvguard man --out DIR`: man pages from the command's own definition, so they cannot
//! fall behind `--help`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::Failure;

/// Writes `cvguard.1` and `cvguard-<command>.1` for each command (and sub-command).
pub fn write(command: clap::Command, out: &Path) -> Result<ExitCode, Failure> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = 0;
    page(&command, "cvguard", out, &mut written)?;
    eprintln!("wrote {written} man pages to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn page(command: &clap::Command, name: &str, out: &Path, written: &mut usize) -> Result<(), Failure> {
    // clap names are &'static without its `string` feature; a few pages, once per run.
    let named = command.clone().name(&*Box::leak(name.to_string().into_boxed_str()));
    let path = out.join(format!("{name}.1"));
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    clap_mangen::Man::new(named).render(&mut file)?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        page(sub, &format!("{name}-{}", sub.get_name()), out, written)?;
    }
    Ok(())
}
