//! Logs through tracing, to stderr. `RUST_LOG` filters (default `info`); `[log] format
//! = "json"` (or `CVGUARD_LOG_FORMAT=json`) writes JSON lines for log shippers.

use tracing_subscriber::EnvFilter;

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
}
