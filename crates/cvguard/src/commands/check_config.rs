//! `cvguard check-config FILE`: what an analyst runs before a change goes live.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use cvguard_config::{ConfigSource, Overrides};

use crate::Failure;

pub fn run(file: &Path) -> Result<ExitCode, Failure> {
    let config = cvguard_config::load(&ConfigSource::File(file.to_path_buf()), &Overrides::default())?;
    match print_rules(&config) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn print_rules(config: &cvguard_config::Config) -> io::Result<()> {
    let mut o = io::stdout().lock();
    let set = &config.ruleset;
    writeln!(o, "{}: ok", config.source_name)?;
    match &config.profiles_path {
        Some(p) => writeln!(o, "profiles: {} accounts from {}", set.profiles.len(), p.display())?,
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
