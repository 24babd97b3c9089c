//! The effective config as one JSON value: every section with its defaults filled in,
//! paths as the service uses them (absolute), each rule with every key. Holds what the
//! file holds: a caller that prints it redacts credentials in URLs and secret librdkafka
//! properties.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::{Config, SinkSpec, EMBEDDED_PROFILES_NAME};

impl Config {
    /// Every section as it is in effect. `profiles` also says how many accounts were
    /// read and from where (`embedded config/accounts.csv` for the compiled-in ones).
    pub fn effective(&self) -> Value {
        let path = match (&self.profiles_path, self.profiles_embedded) {
            (Some(p), _) => Some(absolute(&p.display().to_string())),
            (None, true) => Some(EMBEDDED_PROFILES_NAME.to_string()),
            (None, false) => None,
        };
        let profiles = serde_json::json!({
            "path": path,
            "accounts": self.ruleset.profiles.len(),
        });
        let mut state = self.state.clone();
        state.dir = absolute(&state.dir);
        let mut store = self.store.clone();
        store.url = absolute_store_url(&store.url);
        let sinks: Vec<SinkSpec> = self
            .sinks
            .iter()
            .map(|sink| match sink {
                SinkSpec::Jsonl { path } => SinkSpec::Jsonl { path: absolute(path) },
                other => other.clone(),
            })
            .collect();
        serde_json::json!({
            "engine": to_value(&self.engine),
            "profiles": profiles,
            "allowlist": to_value(&self.allowlist),
            "rules": to_value(&self.rules),
            "source": to_value(&self.source),
            "http": to_value(&self.http),
            "state": to_value(&state),
            "service": to_value(&self.service),
            "kafka": to_value(&self.kafka),
            "sinks": to_value(&sinks),
            "store": to_value(&store),
            "suspend": to_value(&self.suspend),
            "log": to_value(&self.log),
            "health": to_value(&self.health),
        })
    }
}

/// A path as the process resolves it: relative ones against the working directory.
fn absolute(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    std::path::absolute(Path::new(path)).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

/// A SQLite URL's file made absolute; any other URL as it is.
fn absolute_store_url(url: &str) -> String {
    crate::paths::map_sqlite_file(url, absolute)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("config sections are plain data")
}
