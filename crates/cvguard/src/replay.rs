//! Streams NDJSON through the engine: the loop `replay` and `demo` share.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use cvguard_core::{Alert, AlertAction, Engine, EngineStats, KeyKind, RejectReason};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::input::{Line, LineReader};

/// How far a replay is: a bar on a terminal, else a line on stderr every 10 seconds (a
/// replay of a month in a CI log or under `nohup` says it is alive). Both say which bytes
/// they count, as the summary does: "MB of events" are the lines as read (decompressed),
/// the share and the bar are of the file on disk (compressed, for a gzip file), the only
/// size known up front.
pub struct Progress {
    bar: Option<ProgressBar>,
    source: crate::input::Source,
    gzip: bool,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// `gzip`: the file is compressed (its size on disk is not the events' size).
    pub fn new(source: crate::input::Source, gzip: bool) -> Progress {
        let template = if gzip {
            "{bar:40} {bytes}/{total_bytes} of the gzip file {bytes_per_sec} eta {eta}"
        } else {
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        };
        let bar = io::stderr().is_terminal().then(|| match source.size {
            Some(len) => ProgressBar::new(len)
                .with_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())),
            None => ProgressBar::new_spinner(),
        });
        Progress {
            bar,
            source,
            gzip,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Bytes read from the file itself (compressed, for a gzip file).
    pub fn file_bytes(&self) -> u64 {
        self.source.read.load(Ordering::Relaxed)
    }

    pub fn tick(&mut self, events: u64, event_bytes: u64) {
        let read = self.file_bytes();
        match &self.bar {
            Some(bar) => bar.set_position(read),
            None if self.last_line.elapsed() >= Duration::from_secs(10) => {
                self.last_line = Instant::now();
                let file = if self.gzip { "of the gzip file" } else { "of the file" };
                let share = self
                    .source
                    .size
                    .filter(|s| *s > 0)
                    .map(|s| format!(" ({:.0}% {file} read)", read as f64 * 100.0 / s as f64))
                    .unwrap_or_default();
                eprintln!(
                    "replay: {events} events, {:.1} MB of events{share}, {:.0} s",
                    event_bytes as f64 / 1e6,
                    self.started.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Feeds every line to the engine and hands each alert to `on_alert` as it is decided.
/// Returns the bytes read (after decompression).
pub fn feed<R: BufRead>(
    engine: &mut Engine,
    lines: &mut LineReader<R>,
    clock_ms: Option<i64>,
    progress: &mut Progress,
    mut on_line: impl FnMut(&[u8]),
    mut on_alert: impl FnMut(&Alert) -> io::Result<()>,
) -> io::Result<u64> {
    let mut alerts = Vec::new();
    let mut since_tick = 0u32;
    let mut events = 0u64;
    while let Some(line) = lines.next_line()? {
        match line {
            Line::Text(bytes) => {
                engine.process_bytes(bytes, clock_ms, &mut alerts);
                on_line(bytes);
            }
            Line::TooLong => {
                engine.reject(RejectReason::TooLarge);
            }
        }
        for alert in alerts.drain(..) {
            on_alert(&alert)?;
        }
        since_tick += 1;
        events += 1;
        if since_tick == 65_536 {
            since_tick = 0;
            progress.tick(events, lines.consumed);
        }
    }
    progress.tick(events, lines.consumed);
    Ok(lines.consumed)
}

/// Hands every line to `on_line` (`None` for one too long to read), ticking `progress`:
/// the loop of the commands that feed their own engines (`backtest`, `tune`). Returns the
/// bytes read (after decompression).
pub fn for_each_line<R: BufRead>(
    lines: &mut LineReader<R>,
    progress: &mut Progress,
    mut on_line: impl FnMut(Option<&[u8]>),
) -> io::Result<u64> {
    let mut events = 0u64;
    while let Some(line) = lines.next_line()? {
        match line {
            Line::Text(bytes) => on_line(Some(bytes)),
            Line::TooLong => on_line(None),
        }
        events += 1;
        if events.is_multiple_of(65_536) {
            progress.tick(events, lines.consumed);
        }
    }
    progress.tick(events, lines.consumed);
    Ok(lines.consumed)
}

/// What the human summary needs to know about one suspension.
#[derive(Debug, Clone)]
pub struct SuspensionBrief {
    pub accounts: Vec<String>,
    pub rule: String,
    pub event_time: String,
    pub distinct_cvs: Option<u64>,
    pub named: u64,
    pub anonymous: u64,
}

/// Counts alerts by rule and action, and remembers each suspension, as they stream by.
#[derive(Debug, Default)]
pub struct AlertTally {
    pub by_rule_action: BTreeMap<(String, AlertAction), u64>,
    pub suspensions: Vec<SuspensionBrief>,
}

impl AlertTally {
    pub fn note(&mut self, alert: &Alert) {
        *self
            .by_rule_action
            .entry((alert.rule.clone(), alert.action))
            .or_default() += 1;
        if alert.action == AlertAction::Suspend {
            let vis = alert.evidence.cvs_by_visibility.unwrap_or_default();
            self.suspensions.push(SuspensionBrief {
                accounts: alert.suspend_accounts.clone(),
                rule: alert.rule.clone(),
                event_time: alert.event_time.clone(),
                distinct_cvs: alert.evidence.distinct_cvs,
                named: vis.named,
                anonymous: vis.anonymous,
            });
        }
    }
}

/// Writes the human summary of a replay. `bytes` are the events' (decompressed);
/// `file_bytes`, those read from a file that differs (gzip), are said beside them.
pub fn write_summary(
    w: &mut impl Write,
    stats: &EngineStats,
    tally: &AlertTally,
    bytes: u64,
    file_bytes: Option<u64>,
    elapsed: std::time::Duration,
) -> io::Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let compressed = file_bytes
        .filter(|f| *f != bytes)
        .map(|f| format!(" from {:.1} MB of gzip", f as f64 / 1e6))
        .unwrap_or_default();
    writeln!(
        w,
        "events read {}  accepted {}  rejected {}  late {}  duplicate {}  ({:.1} MB of events{compressed} in {:.2} s, \
         {:.0} events/s)",
        stats.events,
        stats.accepted,
        stats.rejected_total(),
        stats.late,
        stats.duplicates,
        bytes as f64 / 1e6,
        secs,
        stats.events as f64 / secs
    )?;
    for (reason, n) in stats.rejected_by_reason() {
        writeln!(w, "  rejected {:<24} {n}", reason.as_str())?;
    }
    if stats.unmatched_action > 0 {
        writeln!(w, "  accepted, no rule counts their action: {}", stats.unmatched_action)?;
    }
    let total: u64 = tally.by_rule_action.values().sum();
    writeln!(w, "alerts {total}")?;
    for ((rule, action), n) in &tally.by_rule_action {
        writeln!(w, "  {rule:<24} {:<8} {n}", action.as_str())?;
    }
    for s in &tally.suspensions {
        let cvs = s
            .distinct_cvs
            .map_or_else(|| "an unknown number of".to_string(), |n| n.to_string());
        writeln!(
            w,
            "suspend {} by {} at {}: {cvs} distinct CVs touched ({} named, {} anonymous)",
            s.accounts.join(","),
            s.rule,
            s.event_time,
            s.named,
            s.anonymous
        )?;
    }
    Ok(())
}

/// Key kind as people read it.
pub fn key_label(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::AccountId => "account",
        KeyKind::OrgId => "organisation",
        KeyKind::UserId => "user",
        KeyKind::Ip => "ip",
    }
}
