//! Logs through tracing, to stderr. `RUST_LOG` filters (default `info`); `[log] format
//! = "json"` (or `CVGUARD_LOG_FORMAT=json`) writes JSON lines for log shippers.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Whether any thread panicked: `serve` then exits non-zero, whatever else went well.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::Relaxed)
}

pub fn init(format: cvguard_config::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == cvguard_config::LogFormat::Json
        || std::env::var("CVGUARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A panic on an engine or consumer thread must not pass unnoticed: it is logged like
    // any other error (so log shippers see it) and makes the exit code non-zero.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::Relaxed);
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(message = "Thread panicked.", thread = %thread, panic = %info);
        default_hook(info);
    }));
}
