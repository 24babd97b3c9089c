//! `cvguard serve`: config, telemetry, sinks, source, engine, API; then wait for a
//! signal and drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cvguard_api::{router, ApiState};
use cvguard_config::{ConfigSource, Overrides, SourceKind};
use cvguard_stream::http::HttpPipeline;
use cvguard_stream::kafka::{self, KafkaOptions};
use cvguard_stream::{Health, SinkSet, SnapshotStore};
use tracing::{error, info, warn};

use crate::{telemetry, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML). Without it, the shipped default compiled into the binary.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    // Load (and refuse) the config before binding anything.
    let source = args
        .config
        .map_or_else(ConfigSource::embedded_default, ConfigSource::File);
    let config = cvguard_config::load(&source, &Overrides::default())?;
    telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: cvguard_config::Config) -> Result<(), Failure> {
    let workers = match config.service.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let sinks = SinkSet::start(&config.sinks, &config.kafka).context("opening sinks")?;
    let store = SnapshotStore::new(&config.state.dir);
    let incidents = cvguard_store::Store::connect(&config.store.url)
        .await
        .with_context(|| format!("opening the incident store {}", redact_url(&config.store.url)))?;
    let suspend = crate::commands::suspend_settings(&config)?;
    let responder = Arc::new(cvguard_respond::Responder::new(
        incidents.clone(),
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
            incidents.clone(),
            settings,
            sinks.clone(),
            dispatcher_stop.clone(),
        ))
    });
    let health = Arc::new(Health::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let rules = Arc::new(config.ruleset.clone());
    info!(message = "Starting.", config = %config.source_name, source = ?config.source.kind, rules = rules.rules.len(), workers);

    let mut ingest = None;
    let mut kafka_thread = None;
    match config.source.kind {
        SourceKind::Http => {
            let pipeline = HttpPipeline::start(
                rules,
                workers,
                sinks.clone(),
                store,
                config.timing.snapshot_interval,
                Some(responder.clone()),
            );
            health.source_connected.store(true, Ordering::Relaxed);
            health.started.store(true, Ordering::Relaxed);
            ingest = Some(Arc::new(pipeline));
        }
        SourceKind::Kafka => {
            let opts = KafkaOptions {
                section: config.kafka.clone(),
                rules,
                workers,
                snapshot_interval: config.timing.snapshot_interval,
                commit_interval: config.timing.commit_interval,
                store,
                sinks: sinks.clone(),
                health: health.clone(),
                shutdown: shutdown.clone(),
                responder: Some(responder.clone()),
            };
            let stats = Arc::new(Mutex::new(Default::default()));
            kafka_thread = Some(
                std::thread::Builder::new()
                    .name("kafka-consumer".into())
                    .spawn(move || kafka::run(opts, stats))
                    .context("starting the consumer")?,
            );
        }
    }

    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    info!(message = "Listening.", address = %config.http.listen);
    let app = router(
        ApiState {
            health: health.clone(),
            ingest: ingest.clone(),
        },
        config.http.max_body_bytes,
    );
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        let stop = async move {
            while !server_shutdown.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        axum::serve(listener, app).with_graceful_shutdown(stop).await
    });

    // Wait for SIGTERM or SIGINT, or for the consumer to stop on its own.
    let consumer_done = async {
        loop {
            if kafka_thread.as_ref().is_some_and(|t| t.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown_signal() => info!(message = "Signal received; draining."),
        _ = consumer_done => warn!(message = "The consumer stopped."),
    }
    health.draining.store(true, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    // Stop taking requests first, so the ingest pipeline has no other owner left.
    let timeout = config.timing.shutdown_timeout;
    if tokio::time::timeout(timeout, server).await.is_err() {
        warn!(message = "HTTP server did not stop in time.");
    }
    let drain = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if let Some(t) = kafka_thread {
            match t.join() {
                Ok(Ok(summary)) => info!(message = "Consumer drained.", messages = summary.messages),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => anyhow::bail!("the consumer thread panicked"),
            }
        }
        if let Some(p) = ingest {
            match Arc::try_unwrap(p) {
                Ok(p) => p.shutdown(),
                Err(p) => p.flush(),
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
    info!(message = "Stopped.");
    Ok(())
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
