//! The effective config as one JSON value: every section with its defaults filled in,
//! paths resolved, each rule with every key. Holds what the file holds: a caller that
//! prints it redacts credentials in URLs and secret librdkafka properties.

use serde::Serialize;
use serde_json::Value;

use crate::Config;

impl Config {
    /// Every section as it is in effect. `profiles` also says how many accounts were
    /// read and from where.
    pub fn effective(&self) -> Value {
        let profiles = serde_json::json!({
            "path": self.profiles_path.as_ref().map(|p| p.display().to_string()),
            "accounts": self.ruleset.profiles.len(),
        });
        serde_json::json!({
            "engine": to_value(&self.engine),
            "profiles": profiles,
            "allowlist": to_value(&self.allowlist),
            "rules": to_value(&self.rules),
            "source": to_value(&self.source),
            "http": to_value(&self.http),
            "state": to_value(&self.state),
            "service": to_value(&self.service),
            "kafka": to_value(&self.kafka),
            "sinks": to_value(&self.sinks),
            "store": to_value(&self.store),
            "suspend": to_value(&self.suspend),
            "log": to_value(&self.log),
        })
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("config sections are plain data")
}
