//! The live windows of any key (account, org, user, IP) and the keys closest to a
//! threshold now, as the engines holding them read them: on a Kafka consumer group, from
//! whichever instance holds the key's partition (`peers.rs`).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvguard_core::{KeyKind, WindowValue};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{RequireRole, Viewer};
use crate::peers::Peers;
use crate::problem::Problem;
use crate::ApiState;

/// The most pairs `closest` answers with.
pub const MAX_CLOSEST: usize = 200;

fn busy(what: &str) -> Problem {
    // The shard holding the key is busy (a harvest, a store outage): say so rather than
    // answer that the key is not tracked.
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the engine holding {what} did not answer in time; retry"),
    )
    .retry_after("5")
}

/// A key kind as the API spells it in paths: `account`, `org`, `user`, `ip`.
fn kind_of(text: &str) -> Option<KeyKind> {
    match text {
        "account" => Some(KeyKind::AccountId),
        "org" => Some(KeyKind::OrgId),
        "user" => Some(KeyKind::UserId),
        "ip" => Some(KeyKind::Ip),
        _ => None,
    }
}

/// One window as the account view shows it.
pub(crate) fn window_json(w: &WindowValue, response: &str) -> serde_json::Value {
    let mut window = json!({
        "rule": w.rule,
        "measure": w.measure,
        "window": w.window,
        "value": w.value,
        "threshold": w.threshold,
        "threshold_source": w.threshold_source,
        "remaining": w.threshold.saturating_sub(w.value),
        "percent_of_threshold": if w.threshold > 0 { (w.value as f64 * 100.0 / w.threshold as f64).round() } else { 0.0 },
        "response": response,
    });
    // As on alerts and incidents: present for a baseline rule only.
    if let Some(b) = &w.baseline {
        window["baseline"] = json!(b);
    }
    window
}

/// The windows of one key, or the 503 that says its engine is busy.
pub(crate) async fn key_windows(s: &ApiState, kind: KeyKind, key: &str) -> Result<Vec<serde_json::Value>, Problem> {
    let detection = s.detection.clone();
    let owned = key.to_string();
    let windows = tokio::task::spawn_blocking(move || detection.query(kind, &owned))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| busy("this key"))?;
    let rules = s.rules.read().expect("rules").clone();
    Ok(windows
        .iter()
        .map(|w| {
            let response = rules
                .rules
                .iter()
                .find(|r| r.name == w.rule)
                .map_or("alert", |r| r.response.as_str());
            window_json(w, response)
        })
        .collect())
}

/// `GET /v1/keys/{kind}/{key}`: as `GET /v1/accounts/{id}`, for any key kind.
pub async fn key(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path((kind, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(k) = kind_of(&kind) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no key kind `{kind}`: account, org, user or ip"),
        ));
    };
    let windows = key_windows(&s, k, &key).await?;
    let local = json!({"key_kind": k, "key": key, "tracked": !windows.is_empty(), "windows": windows});
    let path = format!("/v1/keys/{kind}/{}", path_segment(&key));
    Ok(Json(from_owner(&s, local, &path, &headers).await).into_response())
}

/// A key's view from the instance that holds it: this one's when it tracks the key;
/// otherwise, on a consumer group, the peer's that does (`answered_by` names the
/// instance either way). A key nobody tracks answers `tracked: false` from here.
pub(crate) async fn from_owner(
    s: &ApiState,
    mut local: serde_json::Value,
    path: &str,
    headers: &HeaderMap,
) -> serde_json::Value {
    let Some(peers) = s.peers.as_ref() else {
        return local;
    };
    if local["tracked"] != true && !Peers::forwarded(headers) {
        let answers = peers.ask_others(path, headers, crate::handlers::now_ms()).await;
        if let Some(mut owner) = answers.into_iter().find(|a| a.body["tracked"] == true) {
            owner.body["answered_by"] = json!(owner.instance);
            return owner.body;
        }
    }
    local["answered_by"] = json!(peers.me);
    local
}

/// A path segment with everything but unreserved characters percent-encoded.
pub(crate) fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct ClosestQuery {
    limit: Option<String>,
}

/// `GET /v1/keys/closest?limit=N`: the (key, rule) pairs nearest their threshold now on
/// this instance's engines, largest share first.
pub async fn closest(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Query(q): Query<ClosestQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CLOSEST).contains(n))
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit: expected a whole number from 1 to {MAX_CLOSEST}, not `{text}`"),
                )
            })?,
    };
    let detection = s.detection.clone();
    let list = tokio::task::spawn_blocking(move || detection.closest(limit))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| busy("some keys"))?;
    let me = s.peers.as_ref().map(|p| p.me.clone());
    let mut keys: Vec<serde_json::Value> = list
        .iter()
        .map(|c| {
            let mut entry = json!({
                "key_kind": c.kind,
                "key": c.key,
                "rule": c.value.rule,
                "window": c.value.window,
                "value": c.value.value,
                "threshold": c.value.threshold,
                "threshold_source": c.value.threshold_source,
                "share": (c.share * 1000.0).round() / 1000.0,
            });
            if let Some(me) = &me {
                entry["answered_by"] = json!(me);
            }
            entry
        })
        .collect();
    // On a consumer group each instance ranks its own partitions' keys: merge theirs.
    if let (Some(peers), false) = (s.peers.as_ref(), Peers::forwarded(&headers)) {
        let path = format!("/v1/keys/closest?limit={limit}");
        for answer in peers.ask_others(&path, &headers, crate::handlers::now_ms()).await {
            for mut entry in answer.body["keys"].as_array().cloned().unwrap_or_default() {
                entry["answered_by"] = json!(answer.instance);
                keys.push(entry);
            }
        }
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        keys.sort_by(|a, b| {
            let share = |v: &serde_json::Value| v["share"].as_f64().unwrap_or(0.0);
            share(b)
                .total_cmp(&share(a))
                .then_with(|| text(&a["key_kind"]).cmp(&text(&b["key_kind"])))
                .then_with(|| text(&a["key"]).cmp(&text(&b["key"])))
                .then_with(|| text(&a["rule"]).cmp(&text(&b["rule"])))
        });
        keys.truncate(limit);
    }
    Ok(Json(json!({"keys": keys, "limit": limit})).into_response())
}
