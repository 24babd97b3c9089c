//! `[health]`: when the detector's own health alarms fire (docs/OPERATIONS.md, "Detector
//! health"). The service's watchdog reads them; `replay` ignores them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[health]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `silence`: no event taken in for this long while the source is connected.
    #[serde(default = "default_silence")]
    pub silence: String,
    /// `watermark_stalled`: a partition's or part's event time not advancing for this long
    /// while it still receives events (or, on Kafka, has messages waiting).
    #[serde(default = "default_watermark_stall")]
    pub watermark_stall: String,
    /// `consumer_lag`: Kafka consumer lag above this many messages on some partition.
    #[serde(default = "default_max_lag")]
    pub max_lag: u64,
    /// `rejected_share`: rejected events above this share (0 to 1) of the events read over
    /// `rejected_window` ...
    #[serde(default = "default_max_rejected_share")]
    pub max_rejected_share: f64,
    #[serde(default = "default_rejected_window")]
    pub rejected_window: String,
    /// ... once at least this many events were read in the window (1 of 2 is no trend).
    #[serde(default = "default_rejected_min_events")]
    pub rejected_min_events: u64,
    /// `sink_failing`: an alert sink failing, or a suspend call undelivered, for this long.
    #[serde(default = "default_sink_failing_for")]
    pub sink_failing_for: String,
}

fn default_silence() -> String {
    "5m".into()
}
fn default_watermark_stall() -> String {
    "10m".into()
}
fn default_max_lag() -> u64 {
    100_000
}
fn default_max_rejected_share() -> f64 {
    0.05
}
fn default_rejected_window() -> String {
    "5m".into()
}
fn default_rejected_min_events() -> u64 {
    100
}
fn default_sink_failing_for() -> String {
    "2m".into()
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            silence: default_silence(),
            watermark_stall: default_watermark_stall(),
            max_lag: default_max_lag(),
            max_rejected_share: default_max_rejected_share(),
            rejected_window: default_rejected_window(),
            rejected_min_events: default_rejected_min_events(),
            sink_failing_for: default_sink_failing_for(),
        }
    }
}

/// `[health]` with its durations parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    pub silence: Duration,
    pub watermark_stall: Duration,
    pub max_lag: u64,
    pub max_rejected_share: f64,
    pub rejected_window: Duration,
    pub rejected_min_events: u64,
    pub sink_failing_for: Duration,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthSection::default().limits().expect("the defaults parse")
    }
}

impl HealthSection {
    /// The section parsed, or every problem as (key, message).
    pub fn limits(&self) -> Result<HealthLimits, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut duration = |key: &str, text: &str| match cvguard_core::rules::parse_duration(text) {
            Some(d) if d >= Duration::from_secs(1) => d,
            Some(_) => {
                problems.push((format!("health.{key}"), "must be at least 1s".to_string()));
                Duration::from_secs(1)
            }
            None => {
                problems.push((
                    format!("health.{key}"),
                    format!("`{text}` is not a duration; write it like `30s` or `5m`"),
                ));
                Duration::from_secs(1)
            }
        };
        let limits = HealthLimits {
            silence: duration("silence", &self.silence),
            watermark_stall: duration("watermark_stall", &self.watermark_stall),
            rejected_window: duration("rejected_window", &self.rejected_window),
            sink_failing_for: duration("sink_failing_for", &self.sink_failing_for),
            max_lag: self.max_lag,
            max_rejected_share: self.max_rejected_share,
            rejected_min_events: self.rejected_min_events,
        };
        let share = self.max_rejected_share;
        if !(share > 0.0 && share <= 1.0) {
            problems.push((
                "health.max_rejected_share".into(),
                format!("{share} is not a share; write one above 0 and at most 1, like 0.05"),
            ));
        }
        if self.max_lag == 0 {
            problems.push(("health.max_lag".into(), "must be at least 1".into()));
        }
        if self.rejected_min_events == 0 {
            problems.push(("health.rejected_min_events".into(), "must be at least 1".into()));
        }
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{load, ConfigSource, Overrides};

    fn problems(text: &str) -> Vec<String> {
        let source = ConfigSource::Text {
            name: "c.toml".into(),
            text: text.into(),
            base_dir: std::env::temp_dir(),
        };
        match load(&source, &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_bad_health_value_is_reported_with_its_line_and_key() {
        let found = problems(
            "[health]\nsilence = \"soon\"\nwatermark_stall = \"10m\"\nmax_rejected_share = 1.5\nmax_lag = 0\nsink_failing_for = \"0s\"\n",
        );
        let expect = [
            ("c.toml:2:", "health.silence", "not a duration"),
            ("c.toml:4:", "health.max_rejected_share", "not a share"),
            ("c.toml:5:", "health.max_lag", "at least 1"),
            ("c.toml:6:", "health.sink_failing_for", "at least 1s"),
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for ((at, key, says), p) in expect.iter().zip(&found) {
            assert!(p.starts_with(at) && p.contains(key) && p.contains(says), "{p}");
        }
        assert!(problems("[health]\nsilence = \"2s\"\n").is_empty());
    }
}
