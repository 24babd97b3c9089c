//! `cvguard demo`: the werk.nl weekend, simulated and replayed with the shipped rules.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cvguard_config::{ConfigSource, Overrides};
use cvguard_core::{Alert, AlertAction, AlertReason, Engine};
use cvguard_respond::suspend::{dispatch, SuspendSettings};
use cvguard_respond::{Rails, Responder, SinkSet};
use cvguard_sim::{Actor, Population, SimConfig};
use cvguard_store::Store;

use crate::commands::simulate::write_all;
use crate::input::{self, Line, LineReader};
use crate::replay::key_label;
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the simulated traffic, profiles, labels and alerts.
    #[arg(long, default_value = "data/demo")]
    dir: PathBuf,
    /// The simulation's seed: the same seed tells the same story.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const HARVESTER: &str = "harvester-1";

mod month;

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let sim = SimConfig {
        seed: args.seed,
        ..SimConfig::default()
    };
    let t0 = Instant::now();
    let written = write_all(&sim, &args.dir, false)?;
    let sim_secs = t0.elapsed().as_secs_f64();

    // The shipped config, with the simulated profiles and a store in the demo folder; also
    // written out so `cvguard incidents ... --config data/demo/cvguard.toml` reads it.
    let db = args.dir.join("cvguard.db");
    let _ = std::fs::remove_file(&db);
    let config_path = args.dir.join("cvguard.toml");
    std::fs::write(
        &config_path,
        // Paths in a config file are relative to its folder: the store beside it.
        cvguard_config::EMBEDDED_DEFAULT.replace("sqlite://data/cvguard.db", "sqlite://cvguard.db"),
    )?;
    let config = cvguard_config::load(&ConfigSource::File(config_path.clone()), &Overrides::default())?;
    let rules = Arc::new(config.ruleset.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = rt
        .block_on(Store::connect(&config.store.url))
        .map_err(anyhow::Error::from)?;
    let receiver = DemoPlatform::start()?;
    let responder = Responder::new(
        store.clone(),
        rt.handle().clone(),
        Rails {
            webhook: true,
            max_per_hour: config.suspend.max_per_hour,
            cooldown: config.timing.suspend_cooldown,
        },
        SinkSet::default(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = rt.spawn(dispatch(
        store.clone(),
        SuspendSettings {
            url: receiver.url(),
            secret: DEMO_SECRET.as_bytes().to_vec(),
            timeout: Duration::from_secs(5),
            max_attempts: 5,
        },
        SinkSet::default(),
        stop.clone(),
    ));

    let (reader, _) = input::open(&written.events)?;
    let mut lines = LineReader::new(reader, config.ruleset.settings.limits.max_event_bytes);
    let mut engine = Engine::new(rules.clone());
    engine.track_exposure(true);
    let alerts_path = args.dir.join("alerts.jsonl");
    let mut alerts_file = BufWriter::new(File::create(&alerts_path)?);
    let mut alerts: Vec<Alert> = Vec::new();
    let mut out = Vec::new();
    let mut updates = Vec::new();
    // The platform suspends an account when it gets the call: its later requests are
    // refused, so they never reach the event stream.
    let mut suspended: BTreeSet<String> = BTreeSet::new();
    let mut refused = 0u64;
    let t1 = Instant::now();
    while let Some(line) = lines.next_line()? {
        let Line::Text(bytes) = line else { continue };
        if !suspended.is_empty() {
            if let Ok(ev) = cvguard_core::parse_event(bytes, &Default::default()) {
                if suspended.contains(ev.account_id.as_ref()) {
                    refused += 1;
                    continue;
                }
            }
        }
        engine.process_bytes(bytes, None, &mut out);
        for mut a in out.drain(..) {
            let now = crate::commands::replay::wall_clock_ms();
            responder.open(&mut a, now).map_err(anyhow::Error::from)?;
            if a.action == AlertAction::Suspend {
                suspended.extend(a.suspend_accounts.iter().cloned());
            }
            serde_json::to_writer(&mut alerts_file, &a).map_err(anyhow::Error::from)?;
            alerts_file.write_all(b"\n")?;
            alerts.push(a);
        }
        updates.extend(engine.take_updates());
        if updates.len() >= 256 {
            responder.apply_updates(&updates, 0).map_err(anyhow::Error::from)?;
            updates.clear();
        }
    }
    responder.apply_updates(&updates, 0).map_err(anyhow::Error::from)?;
    alerts_file.flush()?;
    let replay_secs = t1.elapsed().as_secs_f64();
    // Give the outbox a moment to deliver the suspend calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.calls() < suspended.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(dispatcher);

    let population = Population::new(&sim);
    let stats = engine.stats();
    let mut o = io::stdout().lock();
    writeln!(
        o,
        "cvguard demo: the werk.nl weekend, Friday 3 to Sunday 5 May 2024 (times CEST)"
    )?;
    writeln!(
        o,
        "  simulated {} events from {} accounts in {:.1} s; detected with the shipped rules, incidents recorded in SQLite, in {:.1} s ({} events/s)",
        group(stats.events),
        group(population.accounts.len() as u64),
        sim_secs,
        replay_secs,
        group((stats.events as f64 / replay_secs.max(1e-9)) as u64)
    )?;
    writeln!(o)?;

    let ok = tell_harvest(&mut o, &population, &alerts)?;
    let respond = Respond {
        rt: &rt,
        store: &store,
        platform: &receiver,
    };
    let incident_ok = tell_incident(&mut o, &respond, &alerts, refused, &args.dir, &config_path)?;
    writeln!(o)?;
    writeln!(o, "Also flagged")?;
    let mut shown = BTreeSet::new();
    for a in alerts
        .iter()
        .filter(|a| !(a.key == HARVESTER && a.key_kind == cvguard_core::KeyKind::AccountId))
    {
        if !shown.insert((a.key.clone(), a.rule.clone())) {
            continue;
        }
        let note = match (a.action, a.reason) {
            (AlertAction::Suspend, _) => "SUSPEND",
            (_, AlertReason::Allowlisted) => "alert (allowlisted, not suspended)",
            (_, AlertReason::DryRun) => "alert (dry run)",
            _ => "alert",
        };
        writeln!(
            o,
            "  {:<14} {:<12} {:<19} {:>7} {} in {:<4} {}  {}",
            a.key,
            key_label(a.key_kind),
            a.rule,
            group(a.value),
            measure_words(a.measure),
            a.window,
            local_time(a.event_time_ms),
            note
        )?;
    }

    let verdict = check_labels(&population, &alerts, !suspended.is_empty());
    writeln!(o)?;
    let heavy: Vec<&str> = population
        .labels
        .iter()
        .filter(|l| l.scenario == "legit_heavy")
        .map(|l| l.key.as_str())
        .collect();
    let heavy_flagged: Vec<&&str> = heavy.iter().filter(|k| alerts.iter().any(|a| a.key == **k)).collect();
    if heavy_flagged.is_empty() {
        writeln!(
            o,
            "Legitimate heavy users ({} staffing agencies, bigco-120 with 120 vacancies): no alerts.",
            heavy.len() - 1
        )?;
    } else {
        writeln!(o, "Legitimate heavy users flagged: {heavy_flagged:?}")?;
    }
    writeln!(
        o,
        "Ground truth: {}/{} labelled keys as expected; {} alerts on unlabelled accounts.",
        verdict.matched, verdict.labels, verdict.unexpected
    )?;
    writeln!(
        o,
        "Files: {} (alerts), {}",
        alerts_path.display(),
        written.events.display()
    )?;
    for problem in &verdict.problems {
        writeln!(o, "  MISMATCH: {problem}")?;
    }
    let month_ok = month::tell(&mut o, rules, args.seed)?;
    Ok(if ok && incident_ok && month_ok && verdict.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo's responding side: the store, its runtime and the platform's receiver.
struct Respond<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a Store,
    platform: &'a DemoPlatform,
}

fn tell_incident(
    o: &mut impl Write,
    respond: &Respond<'_>,
    alerts: &[Alert],
    refused: u64,
    dir: &std::path::Path,
    config_path: &std::path::Path,
) -> anyhow::Result<bool> {
    let Respond { rt, store, platform } = *respond;
    let Some(a) = alerts
        .iter()
        .find(|a| a.action == AlertAction::Suspend && a.key == HARVESTER)
    else {
        return Ok(false);
    };
    let Some(d) = rt.block_on(store.get(&a.alert_id))? else {
        return Ok(false);
    };
    let i = &d.incident;
    writeln!(o)?;
    writeln!(o, "Incident {} ({}, {} {})", i.id, i.rule, i.key_kind, i.key)?;
    writeln!(
        o,
        "  status {}, {}; notify the authority by {}",
        i.status,
        if i.suspended {
            "account SUSPENDED"
        } else {
            "suspension NOT confirmed"
        },
        i.notify_authority_by
    )?;
    let (calls, valid) = (platform.calls(), platform.valid());
    writeln!(
        o,
        "  platform receiver {}: {calls} suspend call(s), {valid} with a valid signature; {} later requests refused",
        platform.url(),
        group(refused)
    )?;
    let rows = rt.block_on(store.exposed_cvs(&i.id))?;
    let export = dir.join(format!("notify-{}.csv", i.id));
    let mut f = BufWriter::new(File::create(&export)?);
    cvguard_store::write_exposed_csv(&mut f, &rows)?;
    f.flush()?;
    let c = &i.cvs_by_visibility;
    writeln!(
        o,
        "  people to notify: {} ({} with name and address visible, {} anonymous), one row each in {}",
        group(rows.len() as u64),
        group(c.named as u64),
        group(c.anonymous as u64),
        export.display()
    )?;
    writeln!(o, "  cvguard incidents list --config {}", config_path.display())?;
    Ok(i.suspended && calls == 1 && valid == 1)
}

fn tell_harvest(o: &mut impl Write, population: &Population, alerts: &[Alert]) -> io::Result<bool> {
    let Some(Actor::Harvester { start_ms, .. }) =
        population.accounts.iter().find(|a| a.id == HARVESTER).map(|a| a.actor)
    else {
        writeln!(o, "(the harvest scenario is off)")?;
        return Ok(true);
    };
    writeln!(
        o,
        "The harvest: {HARVESTER} downloads 148,000 CVs in batches of 200 from {}",
        local_time(start_ms)
    )?;
    let mine: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.accounts.iter().any(|x| x == HARVESTER))
        .collect();
    if let Some(first) = mine.iter().find(|a| a.action == AlertAction::Alert) {
        writeln!(
            o,
            "  SOC alerted        {}  {:<18} after {} CVs",
            local_time(first.event_time_ms),
            first.rule,
            group(first.value)
        )?;
    }
    let Some(suspend) = mine.iter().find(|a| a.action == AlertAction::Suspend) else {
        writeln!(o, "  NOT SUSPENDED: check the rules")?;
        return Ok(false);
    };
    let vis = suspend.evidence.cvs_by_visibility.unwrap_or_default();
    writeln!(
        o,
        "  SUSPENDED          {}  {:<18} after {} distinct CVs ({} named, {} anonymous)",
        local_time(suspend.event_time_ms),
        suspend.rule,
        group(suspend.evidence.distinct_cvs.unwrap_or(suspend.value)),
        group(vis.named),
        group(vis.anonymous)
    )?;
    writeln!(
        o,
        "                     {} minutes after the first download; those {} people are the ones to notify.",
        (suspend.event_time_ms - start_ms) / 60_000,
        group(suspend.evidence.distinct_cvs.unwrap_or(suspend.value))
    )?;
    writeln!(
        o,
        "  May 2024, without cvguard: 148,000 CVs in two days, noticed two days later; 148,215 people notified."
    )?;
    Ok(true)
}

const DEMO_SECRET: &str = "demo-secret-not-for-production";

/// The platform's side of the suspend webhook, for the demo: a local HTTP server that
/// checks each call's signature and counts them.
struct DemoPlatform {
    port: u16,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    valid: Arc<std::sync::atomic::AtomicUsize>,
}

impl DemoPlatform {
    fn start() -> std::io::Result<DemoPlatform> {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let valid = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, v) = (calls.clone(), valid.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => continue,
                });
                let mut headers = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.trim().is_empty() {
                    headers.push(line.trim().to_string());
                    line.clear();
                }
                let get = |name: &str| {
                    headers
                        .iter()
                        .find_map(|h| h.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.trim().to_string())
                };
                let len: usize = get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                c.fetch_add(1, Ordering::Relaxed);
                let ts: i64 = get("x-cvguard-timestamp").and_then(|t| t.parse().ok()).unwrap_or(0);
                let sig = get("x-cvguard-signature").unwrap_or_default();
                let now = crate::commands::replay::wall_clock_ms() / 1000;
                let key = get("idempotency-key").unwrap_or_default();
                if cvguard_respond::sign::verify_request(DEMO_SECRET.as_bytes(), ts, &key, &body, &sig, now, 300) {
                    v.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Ok(DemoPlatform { port, calls, valid })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/internal/suspend", self.port)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    fn valid(&self) -> usize {
        self.valid.load(Ordering::Relaxed)
    }
}

pub struct Verdict {
    pub labels: usize,
    pub matched: usize,
    pub unexpected: usize,
    pub problems: Vec<String>,
}

/// Compares alerts with the simulator's ground truth. The simulator labels the harvest
/// as if it ran unchecked; once the harvester is suspended its later requests are
/// refused, so its IP no longer reaches the IP rule's threshold.
fn check_labels(population: &Population, alerts: &[Alert], harvest_stopped: bool) -> Verdict {
    let mut problems = Vec::new();
    let mut matched = 0;
    for l in &population.labels {
        let expected = if harvest_stopped && l.scenario == "harvest" && l.key_kind == "ip" {
            "none"
        } else {
            l.expected
        };
        let about: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.key_kind.as_str() == l.key_kind && a.key == l.key)
            .collect();
        let suspended = alerts
            .iter()
            .any(|a| a.action == AlertAction::Suspend && a.suspend_accounts.contains(&l.key));
        let ok = match expected {
            "suspend" => suspended,
            "alert" => !about.is_empty() && !suspended,
            _ => about.is_empty() && !suspended,
        };
        if ok {
            matched += 1;
        } else {
            problems.push(format!(
                "{} {} expected {}, got {} alerts (suspended: {suspended})",
                l.key_kind,
                l.key,
                l.expected,
                about.len()
            ));
        }
    }
    let labelled: BTreeSet<(&str, &str)> = population.labels.iter().map(|l| (l.key_kind, l.key.as_str())).collect();
    let unexpected = alerts
        .iter()
        .filter(|a| !labelled.contains(&(a.key_kind.as_str(), a.key.as_str())))
        .count();
    if unexpected > 0 {
        problems.push(format!("{unexpected} alerts on keys the simulation did not label"));
    }
    Verdict {
        labels: population.labels.len(),
        matched,
        unexpected,
        problems,
    }
}

fn measure_words(m: cvguard_core::Measure) -> &'static str {
    match m {
        cvguard_core::Measure::DistinctCvs => "distinct CVs",
        cvguard_core::Measure::Cvs => "CVs",
        cvguard_core::Measure::Events => "events",
        cvguard_core::Measure::DistinctAccounts => "distinct accounts",
        cvguard_core::Measure::DistinctUsers => "distinct users",
        cvguard_core::Measure::DistinctIps => "distinct IP addresses",
    }
}

/// `Sat 06:00` in CEST (UTC+2), the board's local time in May.
fn local_time(ms: i64) -> String {
    let local = ms + 2 * 3_600_000;
    let days = local.div_euclid(86_400_000);
    let day = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mins = local.rem_euclid(86_400_000) / 60_000;
    format!("{day} {:02}:{:02}", mins / 60, mins % 60)
}

/// 148000 -> "148,000".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
