//! Who is calling, and which config is in force: its version, when it was loaded, and
//! what each reload since did.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvguard_core::timefmt::format_rfc3339_ms;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{RequireRole, Viewer};
use crate::ApiState;

/// Reloads kept for `GET /v1/config`, newest last.
const RELOADS_KEPT: usize = 50;

/// The config in force and the reloads since start, written by the service, read by the API.
#[derive(Debug, Default)]
pub struct ConfigLog {
    inner: Mutex<ConfigState>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct ConfigState {
    version: String,
    source: String,
    loaded_at: String,
    reloads: VecDeque<Reload>,
}

#[derive(Debug, Clone, Serialize)]
struct Reload {
    at: String,
    result: &'static str,
    trigger: &'static str,
    /// The version after a reload that applied; absent for a refused one.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    problems: Vec<String>,
}

/// A config's version: the first 12 hex digits of the SHA-256 of its effective form, so
/// any change a reload applies (a threshold, a profile count) is a new version.
pub fn version_of(effective: &serde_json::Value) -> String {
    let digest = Sha256::digest(effective.to_string().as_bytes());
    hex::encode(&digest[..6])
}

impl ConfigLog {
    pub fn new(source: &str, effective: &serde_json::Value, now_ms: i64) -> ConfigLog {
        ConfigLog {
            inner: Mutex::new(ConfigState {
                version: version_of(effective),
                source: source.to_string(),
                loaded_at: format_rfc3339_ms(now_ms),
                reloads: VecDeque::new(),
            }),
        }
    }

    /// A reload that applied `effective`.
    pub fn reloaded(&self, effective: &serde_json::Value, by_signal: bool, now_ms: i64) {
        let mut s = self.inner.lock().expect("config log");
        s.version = version_of(effective);
        s.loaded_at = format_rfc3339_ms(now_ms);
        let version = Some(s.version.clone());
        push(
            &mut s.reloads,
            Reload {
                at: format_rfc3339_ms(now_ms),
                result: "success",
                trigger: trigger(by_signal),
                version,
                problems: Vec::new(),
            },
        );
    }

    /// A reload refused for `problems` (each a whole line: file, line, rule, key).
    pub fn refused(&self, problems: Vec<String>, by_signal: bool, now_ms: i64) {
        let mut s = self.inner.lock().expect("config log");
        push(
            &mut s.reloads,
            Reload {
                at: format_rfc3339_ms(now_ms),
                result: "error",
                trigger: trigger(by_signal),
                version: None,
                problems,
            },
        );
    }
}

fn trigger(by_signal: bool) -> &'static str {
    if by_signal {
        "SIGHUP"
    } else {
        "file change"
    }
}

fn push(reloads: &mut VecDeque<Reload>, r: Reload) {
    if reloads.len() == RELOADS_KEPT {
        reloads.pop_front();
    }
    reloads.push_back(r);
}

/// `GET /v1/whoami`: the caller's token name and role, for a client that shows only the
/// actions its role allows.
pub async fn whoami(RequireRole(who, _): RequireRole<Viewer>) -> Response {
    Json(json!({"name": who.name, "role": who.role})).into_response()
}

/// `GET /v1/config`: the version in force, its source, and the reloads since start.
pub async fn config(State(s): State<ApiState>, _caller: RequireRole<Viewer>) -> Response {
    let state = s.config_log.inner.lock().expect("config log").clone();
    Json(state).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_follows_the_config_and_the_log_keeps_the_last_reloads() {
        let a = json!({"rules": [{"threshold": 4000}]});
        let b = json!({"rules": [{"threshold": 2000}]});
        assert_eq!(version_of(&a), version_of(&a.clone()));
        assert_ne!(version_of(&a), version_of(&b));
        let log = ConfigLog::new("c.toml", &a, 0);
        for i in 0..RELOADS_KEPT + 3 {
            log.refused(vec![format!("problem {i}")], false, i as i64);
        }
        log.reloaded(&b, true, 99);
        let s = log.inner.lock().unwrap().clone();
        assert_eq!(s.version, version_of(&b));
        assert_eq!(s.reloads.len(), RELOADS_KEPT);
        assert_eq!(s.reloads.back().unwrap().trigger, "SIGHUP");
        assert_eq!(s.reloads.front().unwrap().problems, vec!["problem 4".to_string()]);
    }
}
