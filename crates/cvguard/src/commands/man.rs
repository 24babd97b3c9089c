//! `cvguard man --out DIR`: man pages from the command's own definition, so they cannot
//! fall behind `--help`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::Failure;

/// Writes `cvguard.1` and `cvguard-<command>.1` for each command (and sub-command), each
/// with an EXIT STATUS section made from `exit_codes` (the `--help` text: a heading line,
/// then `  CODE  meaning` lines).
pub fn write(command: clap::Command, out: &Path, exit_codes: &str) -> Result<ExitCode, Failure> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = 0;
    // The exit codes have a section of their own, not clap's EXTRA.
    let command = command.after_help(None::<&str>);
    page(&command, "cvguard", out, exit_codes, &mut written)?;
    eprintln!("wrote {written} man pages to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn page(command: &clap::Command, name: &str, out: &Path, exit_codes: &str, written: &mut usize) -> Result<(), Failure> {
    // clap names are &'static without its `string` feature; a few pages, once per run.
    // No `help` sub-command: it has no page of its own (`--help` is the same text).
    let named = command
        .clone()
        .name(&*Box::leak(name.to_string().into_boxed_str()))
        .disable_help_subcommand(true);
    let path = out.join(format!("{name}.1"));
    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let has_args = named.get_arguments().any(|a| !a.is_hide_set());
    let has_subcommands = named.get_subcommands().any(|s| !s.is_hide_set());
    let has_version = named.get_version().is_some();
    let man = clap_mangen::Man::new(named);
    man.render_title(&mut file)?;
    man.render_name_section(&mut file)?;
    man.render_synopsis_section(&mut file)?;
    man.render_description_section(&mut file)?;
    if has_args {
        man.render_options_section(&mut file)?;
    }
    if has_subcommands {
        man.render_subcommands_section(&mut file)?;
    }
    exit_status(&mut file, exit_codes)?;
    if has_version {
        man.render_version_section(&mut file)?;
    }
    file.flush()?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        page(sub, &format!("{name}-{}", sub.get_name()), out, exit_codes, written)?;
    }
    Ok(())
}

/// The EXIT STATUS section: one tagged paragraph per `  CODE  meaning` line.
fn exit_status(w: &mut impl Write, exit_codes: &str) -> std::io::Result<()> {
    writeln!(w, ".SH \"EXIT STATUS\"")?;
    for line in exit_codes.lines().skip(1) {
        let Some((code, meaning)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        writeln!(w, ".TP\n\\fB{}\\fR\n{}", roff_text(code), roff_text(meaning.trim()))?;
    }
    Ok(())
}

/// Text safe in a roff body line: backslashes escaped, no line taken for a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
