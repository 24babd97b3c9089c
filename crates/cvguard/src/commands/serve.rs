//! `cvguard serve`: config, telemetry, store, sinks, source, engine, API; then wait for a
//! signal and drain. SIGHUP, or a change of the config or profile file, reloads the rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use cvguard_api::about::ConfigLog;
use cvguard_api::peers::Peers;
use cvguard_api::{router, ApiState, Tokens};
use cvguard_config::{Config, ConfigSource, Overrides, SourceKind};
use cvguard_core::RuleSet;
use cvguard_stream::http::{HttpOptions, HttpPipeline};
use cvguard_stream::kafka::{self, KafkaOptions};
use cvguard_stream::{Detection, Health, KafkaDetection, Metrics, SinkSet, SnapshotStore};
use tracing::{error, info, warn};

use crate::{telemetry, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML). Without it, the shipped default compiled into the binary.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Profile CSV to use instead of the config's `[profiles] path` (also on reloads): e.g.
    /// the `accounts.csv` that `cvguard simulate` wrote beside its events.
    #[arg(long, value_name = "FILE")]
    profiles: Option<PathBuf>,
    /// Write the process id to this file at start and remove it at a clean stop, for
    /// `kill -HUP $(cat FILE)` (reload) and `kill $(cat FILE)` (drain and stop).
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
}

/// The pid file, removed when the service stops (not after a crash: a stale file then
/// names a process that is gone, as with any daemon, and the next start overwrites it).
struct PidFile(PathBuf);

impl PidFile {
    /// Refuses a file that names another live process: `kill $(cat FILE)` must reach the
    /// service that wrote it, not whichever started last.
    fn write(path: PathBuf) -> anyhow::Result<PidFile> {
        if let Some(pid) = read_pid(&path).filter(|&p| p != std::process::id() && running_cvguard(p)) {
            anyhow::bail!(
                "the pid file {} names process {pid}, which is running; stop it or choose another --pidfile",
                path.display()
            );
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only a file that still names this process: another one may have taken it over.
        if read_pid(&self.0) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether a cvguard process with this id runs (Linux: its /proc entry's program name).
/// After a crash the file's pid may have gone to another program (pid 1 in a container):
/// that is a stale file, not a running service.
fn running_cvguard(pid: u32) -> bool {
    std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).is_ok_and(|cmdline| {
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let name = program.rsplit(|b| *b == b'/').next().unwrap_or_default();
        name.starts_with(b"cvguard")
    })
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    // Load (and refuse) the config before binding anything.
    let source = args
        .config
        .map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let overrides = Overrides {
        profiles_path: args.profiles,
    };
    let config = cvguard_config::load(&source, &overrides)?;
    telemetry::init(config.log.format);
    for w in &config.warnings {
        warn!(message = "Config warning.", problem = %w);
    }
    // Refuse a second process before anything is opened: the state folder first (two
    // writers of one ingest log lose acknowledged events), then the address, then the
    // pid file, so a start that fails leaves the running service's files alone.
    let _state =
        cvguard_stream::StateLock::acquire(Path::new(&config.state.dir), "serve").map_err(anyhow::Error::from)?;
    let listener = std::net::TcpListener::bind(&config.http.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("binding {} ([http] listen)", config.http.listen))?;
    let _pidfile = args.pidfile.map(PidFile::write).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let timeout = config.timing.shutdown_timeout;
    let served = runtime.block_on(serve(config, source, overrides, listener));
    // Dropping a runtime waits for its blocking tasks for ever; a drain that overran the
    // timeout must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2).min(timeout));
    served?;
    if telemetry::panicked() {
        return Err(Failure::Other(anyhow::anyhow!("a thread panicked; see the log")));
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config: Config,
    source: ConfigSource,
    overrides: Overrides,
    listener: std::net::TcpListener,
) -> Result<(), Failure> {
    let workers = match config.service.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    // A webhook sink that would sign with an unset secret is a config error (exit 64),
    // like the suspend webhook's.
    let issues = cvguard_respond::sinks::secret_issues(&config.sinks);
    if !issues.is_empty() {
        return Err(Failure::Config(cvguard_config::ConfigError {
            file: config.source_name.clone(),
            issues,
        }));
    }
    let sinks = SinkSet::start(&config.sinks, &config.kafka).context("opening sinks")?;
    let snapshots = SnapshotStore::new(&config.state.dir);
    let store = cvguard_store::Store::connect(&config.store.url)
        .await
        .with_context(|| format!("opening the incident store {}", redact_url(&config.store.url)))?;
    let suspend = crate::commands::suspend_settings(&config)?;
    let responder = Arc::new(cvguard_respond::Responder::new(
        store.clone(),
        tokio::runtime::Handle::current(),
        cvguard_respond::Rails {
            webhook: suspend.is_some(),
            max_per_hour: config.suspend.max_per_hour,
            cooldown: config.timing.suspend_cooldown,
        },
        sinks.clone(),
    ));
    let dispatcher_stop = Arc::new(AtomicBool::new(false));
    let dispatcher = suspend.map(|settings| {
        tokio::spawn(cvguard_respond::suspend::dispatch(
            store.clone(),
            settings,
            sinks.clone(),
            dispatcher_stop.clone(),
        ))
    });
    // Keeps each open incident's Alertmanager alert alive and resolves it when it closes.
    tokio::spawn(cvguard_respond::alertmanager::run(store.clone(), config.sinks.clone()));
    let metrics = Arc::new(Metrics::new());
    metrics.seed(&config.ruleset);
    let health = Arc::new(Health::default());
    let effects = cvguard_stream::Effects::new(Some(responder.clone()), sinks.clone(), metrics.clone(), health.clone());
    let shutdown = Arc::new(AtomicBool::new(false));
    let rules = Arc::new(config.ruleset.clone());
    info!(message = "Starting.", pid = std::process::id(), config = %config.source_name, source = ?config.source.kind, rules = rules.rules.len(), workers);

    let mut ingest = None;
    let mut kafka_handle = None;
    let mut peers = None;
    let detection: Arc<dyn Detection> = match config.source.kind {
        SourceKind::Http => {
            let pipeline = HttpPipeline::start(HttpOptions {
                rules: rules.clone(),
                shards: workers,
                sinks: sinks.clone(),
                store: snapshots,
                snapshot_interval: config.timing.snapshot_interval,
                effects: effects.clone(),
                metrics: metrics.clone(),
                max_in_flight_bytes: config.http.max_in_flight_bytes as u64,
                health: health.clone(),
                segment_bytes: config.state.ingest_segment_bytes,
            })
            .with_context(|| format!("opening the ingest log in {}", config.state.dir))?;
            health.source_connected.store(true, Ordering::Relaxed);
            health.started.store(true, Ordering::Relaxed);
            ingest = Some(pipeline.clone());
            pipeline
        }
        SourceKind::Kafka => {
            let stats: kafka::PartitionStats = Arc::new(Mutex::new(Default::default()));
            let opts = KafkaOptions {
                section: config.kafka.clone(),
                rules: rules.clone(),
                workers,
                snapshot_interval: config.timing.snapshot_interval,
                commit_interval: config.timing.commit_interval,
                store: snapshots,
                sinks: sinks.clone(),
                health: health.clone(),
                shutdown: shutdown.clone(),
                effects: effects.clone(),
                metrics: metrics.clone(),
            };
            let handle = tokio::task::spawn_blocking(move || kafka::start(opts, stats.clone()).map(|h| (h, stats)))
                .await
                .context("starting the consumer")?
                .context("starting the consumer")?;
            tokio::spawn(kafka::incident_feed::run_with_position(
                store.clone(),
                config.kafka.clone(),
                kafka::incident_feed::position_file(std::path::Path::new(&config.state.dir)),
                dispatcher_stop.clone(),
            ));
            // Every instance of the group answers for every key: it registers where its API
            // is, and asks the others for keys it does not hold.
            let me = Arc::new(Peers::new(instance_id(), store.clone()));
            let listens_everywhere = config
                .http
                .listen
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified());
            if config.service.advertise_url.is_none() && listens_everywhere {
                warn!(
                    message = "[http] listen is a wildcard address and [service] advertise_url is unset: other instances cannot reach this one to ask about its keys; set advertise_url."
                );
            }
            let held = handle.1.clone();
            tokio::spawn(
                me.clone().heartbeat(
                    config
                        .service
                        .advertise_url
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", config.http.listen)),
                    move || {
                        let mut list: Vec<String> = held
                            .lock()
                            .expect("stats")
                            .keys()
                            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                            .collect();
                        list.sort();
                        list.join(",")
                    },
                    shutdown.clone(),
                ),
            );
            peers = Some(me);
            let detection = Arc::new(KafkaDetection {
                control: handle.0.control(),
                stats: handle.1,
                repartition_topic: config.kafka.repartition_topic.clone(),
            });
            kafka_handle = Some(handle.0);
            detection
        }
    };

    let tokens = Arc::new(Tokens::new(&config.http.tokens));
    if tokens.is_empty() {
        warn!(
            message =
                "No API tokens configured: every loopback client is admin. Behind a reverse proxy on this host that means every client; configure tokens (`cvguard token new`)."
        );
    }
    let listener = tokio::net::TcpListener::from_std(listener).context("serving the bound address")?;
    info!(message = "Listening.", address = %config.http.listen);
    let live_rules = Arc::new(RwLock::new(rules));
    let config_log = Arc::new(ConfigLog::new(
        &config.source_name,
        &config.effective(),
        cvguard_stream::effects::wall_clock_ms(),
    ));
    let app = router(
        ApiState {
            health: health.clone(),
            tokens,
            store: store.clone(),
            detection: detection.clone(),
            ingest: ingest.clone(),
            rules: live_rules.clone(),
            metrics: metrics.clone(),
            sinks: sinks.clone(),
            config_log: config_log.clone(),
            peers,
        },
        config.http.max_body_bytes,
    )
    .merge(cvguard_console::router());
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        let stop = async move {
            while !server_shutdown.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop)
            .await
    });
    // The detector's own health (#16): alarms raised once and resolved once, on a 1 s tick.
    let watchdog = cvguard_stream::watchdog::Watchdog::new(cvguard_stream::watchdog::WatchdogOptions {
        limits: config.health.limits().expect("validated with the config"),
        detection: detection.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        effects: effects.clone(),
        sinks: sinks.clone(),
        store: store.clone(),
        state_dir: PathBuf::from(&config.state.dir),
        kafka: config.source.kind == SourceKind::Kafka,
    });
    tokio::spawn(watchdog.run());
    let reloader = tokio::spawn(watch_config(
        config.clone(),
        source,
        overrides,
        Reloadable {
            detection,
            rules: live_rules,
            metrics: metrics.clone(),
            log: config_log,
        },
        shutdown.clone(),
    ));
    let latency_metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            latency_metrics.log_latency();
        }
    });

    // Wait for SIGTERM or SIGINT, or for the consumer to stop on its own.
    let consumer_done = async {
        loop {
            if kafka_handle.as_ref().is_some_and(|h| h.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // A panicked engine or consumer thread leaves keys unwatched: stop (non-zero) rather
    // than run blind; a restart decides the rest again from the ingest log or Kafka.
    let a_thread_panicked = async {
        while !telemetry::panicked() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown_signal() => info!(message = "Signal received; draining."),
        _ = consumer_done => warn!(message = "The consumer stopped."),
        _ = a_thread_panicked => error!(message = "A thread panicked; stopping."),
    }
    let timeout = config.timing.shutdown_timeout;
    // Store retries stop a quarter of the timeout before it ends, so what could not be
    // recorded is left to the next start (from the ingest log or Kafka) and the process
    // still exits in time.
    health.begin_shutdown(cvguard_stream::effects::wall_clock_ms() + (timeout * 3 / 4).as_millis() as i64);
    shutdown.store(true, Ordering::Relaxed);
    reloader.abort();
    // Stop taking requests first, so the ingest pipeline has no other owner left.
    if tokio::time::timeout(timeout, server).await.is_err() {
        warn!(message = "HTTP server did not stop in time.");
    }
    let drain = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if let Some(h) = kafka_handle {
            let summary = h.join()?;
            info!(message = "Consumer drained.", messages = summary.messages);
        }
        if let Some(p) = ingest {
            match Arc::try_unwrap(p) {
                Ok(p) => p.shutdown().map_err(anyhow::Error::msg)?,
                Err(p) => p.flush()?,
            }
        }
        Ok(())
    });
    match tokio::time::timeout(timeout, drain).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            error!(message = "Draining failed.", error = %e);
            return Err(Failure::Other(e));
        }
        Ok(Err(e)) => return Err(Failure::Other(e.into())),
        Err(_) => {
            error!(message = "Drain did not finish within the shutdown timeout; exiting.", timeout = ?timeout);
            return Err(Failure::Other(anyhow::anyhow!("shutdown timeout")));
        }
    }
    dispatcher_stop.store(true, Ordering::Relaxed);
    if let Some(d) = dispatcher {
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
    metrics.log_latency();
    info!(message = "Stopped.");
    Ok(())
}

fn modified(path: &Option<PathBuf>) -> Option<SystemTime> {
    path.as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
}

/// This process's id in the consumer group's instance registry: host, pid and start time.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "cvguard".into());
    format!(
        "{host}-{}-{:x}",
        std::process::id(),
        cvguard_stream::effects::wall_clock_ms()
    )
}

/// What a reload changes in the running service.
struct Reloadable {
    detection: Arc<dyn Detection>,
    /// The rules the API shows.
    rules: Arc<RwLock<Arc<RuleSet>>>,
    metrics: Arc<Metrics>,
    /// The version and reload history `GET /v1/config` shows.
    log: Arc<ConfigLog>,
}

/// Reloads the rules on SIGHUP and when the config or profile file changes. A config that
/// does not validate is refused: the running rules stay, every problem is logged with
/// its file, rule and key, and `cvguard_config_reloads_total{result="error"}` counts it.
/// Only the detection sections (engine, profiles, allowlist, rules) change live; the
/// others need a restart.
async fn watch_config(
    started: Config,
    source: ConfigSource,
    overrides: Overrides,
    live: Reloadable,
    shutdown: Arc<AtomicBool>,
) {
    let Reloadable {
        detection,
        rules: live,
        metrics,
        log,
    } = live;
    use tokio::signal::unix::{signal, SignalKind};
    let running = restart_only(&started);
    let mut profiles = started.profiles_path.clone();
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let file = match &source {
        ConfigSource::File(p) => Some(p.clone()),
        _ => None,
    };
    let mut seen = (modified(&file), modified(&profiles));
    loop {
        let by_signal = tokio::select! {
            _ = hup.recv() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        if shutdown.load(Ordering::Relaxed) {
            return;
        }
        let now = (modified(&file), modified(&profiles));
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        let (source, overrides) = (source.clone(), overrides.clone());
        let loaded = tokio::task::spawn_blocking(move || cvguard_config::load(&source, &overrides)).await;
        match loaded {
            Ok(Ok(config)) => {
                // Compared with what started, not with the last reload: the warning
                // stays until a restart applies the change.
                let pending: Vec<String> = restart_only(&config)
                    .iter()
                    .filter(|(section, value)| running.get(*section) != Some(value))
                    .map(|(section, _)| format!("[{section}]"))
                    .collect();
                for w in &config.warnings {
                    warn!(message = "Config warning.", problem = %w);
                }
                let effective = config.effective();
                let rules = Arc::new(config.ruleset);
                let d = detection.clone();
                let r = rules.clone();
                let _ = tokio::task::spawn_blocking(move || d.reload(r)).await;
                *live.write().expect("rules") = rules.clone();
                metrics.seed(&rules);
                profiles = config.profiles_path.clone();
                seen = (modified(&file), modified(&profiles));
                metrics.config_reloads.with_label_values(&["success"]).inc();
                log.reloaded(&effective, by_signal, cvguard_stream::effects::wall_clock_ms());
                info!(
                    message = "Config reloaded.",
                    rules = rules.rules.len(),
                    trigger = if by_signal { "SIGHUP" } else { "file change" }
                );
                if !pending.is_empty() {
                    warn!(
                        message = "Config sections changed that apply only after a restart; the running service keeps the ones it started with.",
                        sections = %pending.join(", ")
                    );
                }
            }
            Ok(Err(e)) => {
                metrics.config_reloads.with_label_values(&["error"]).inc();
                log.refused(
                    e.issues.iter().map(ToString::to_string).collect(),
                    by_signal,
                    cvguard_stream::effects::wall_clock_ms(),
                );
                for issue in &e.issues {
                    // The problem names its file, line, rule and key, as check-config does.
                    error!(message = "Config reload refused; the running rules stay.", problem = %issue);
                }
            }
            Err(_) => {}
        }
    }
}

/// The sections a reload does not apply (everything but engine, profiles, allowlist and
/// rules), as in effect.
fn restart_only(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(mut sections) = config.effective() else {
        unreachable!("the effective config is an object")
    };
    for live in ["engine", "profiles", "allowlist", "rules"] {
        sections.remove(live);
    }
    sections
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
