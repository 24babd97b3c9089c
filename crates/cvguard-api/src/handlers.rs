//! The request handlers. Each checks its caller's role first; every state change is
//! recorded in the store's audit trail with the token's name.

// Handlers answer early with a ready `Response`; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvguard_config::Role;
use cvguard_core::timefmt::parse_rfc3339_ms;
use cvguard_core::KeyKind;
use cvguard_store::{IncidentFilter, StoreError};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::auth::Caller;
use crate::{ApiState, Peer};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn error(code: StatusCode, message: &str) -> Response {
    let mut r = (code, Json(json!({ "error": message }))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    }
    r
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(id) => error(StatusCode::NOT_FOUND, &format!("no incident {id}")),
        e @ StoreError::BadTransition { .. } => error(StatusCode::CONFLICT, &e.to_string()),
        e => {
            tracing::error!(message = "Store error.", error = %e);
            error(StatusCode::SERVICE_UNAVAILABLE, "the incident store is unavailable")
        }
    }
}

fn caller(s: &ApiState, headers: &HeaderMap, peer: &Peer, needed: Role) -> Result<Caller, Response> {
    s.tokens
        .authorize(headers, peer.0, needed)
        .map_err(|(c, m)| error(c, m))
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

pub async fn readyz(State(s): State<ApiState>) -> Response {
    let h = &s.health;
    let store_ok = s.store.ping().await;
    let ready = h.ready() && store_ok;
    let body = json!({
        "ready": ready,
        "source_connected": h.source_connected.load(Ordering::Relaxed),
        "store_reachable": store_ok,
        "rebuilding": h.rebuilding.load(Ordering::Relaxed).max(0),
        "draining": h.draining.load(Ordering::Relaxed),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], crate::OPENAPI)
}

/// 202 with counts when at least one event was accepted; 400 (same body) when the body
/// held none; 409 when events come from Kafka instead.
pub async fn ingest(State(s): State<ApiState>, peer: Peer, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Ingest) {
        return r;
    }
    let Some(pipeline) = s.ingest.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this instance reads events from Kafka; [source] kind is not \"http\"",
        );
    };
    if s.health.draining.load(Ordering::Relaxed) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let now = now_ms();
    // Appending to the ingest log waits for an fsync: keep it off the async threads.
    let report = match tokio::task::spawn_blocking(move || pipeline.submit(&body, now)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Nothing was accepted: the client may send the same body again.
            let retry_after = match e {
                cvguard_stream::http::IngestError::Busy { .. } | cvguard_stream::http::IngestError::CatchingUp => "1",
                cvguard_stream::http::IngestError::Log(_) => "10",
            };
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static(retry_after));
            return r;
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let code = if report.accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        code,
        Json(json!({
            "accepted": report.accepted,
            "rejected": report.rejected,
            "late": report.late,
            "duplicates": report.duplicates,
            "decided": report.decided,
        })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    rule: Option<String>,
    key: Option<String>,
    /// RFC 3339: opened at or after.
    from: Option<String>,
    /// RFC 3339: opened before.
    to: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn list_incidents(
    State(s): State<ApiState>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Viewer) {
        return r;
    }
    let time = |t: &Option<String>, name: &str| match t {
        None => Ok(None),
        Some(text) => parse_rfc3339_ms(text)
            .map(Some)
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, &format!("`{name}` must be an RFC 3339 time"))),
    };
    let (from_ms, to_ms) = match (time(&q.from, "from"), time(&q.to, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if let Some(st) = &q.status {
        if !cvguard_store::STATUSES.contains(&st.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "status must be open, acknowledged, resolved or false_positive",
            );
        }
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0).max(0);
    let filter = IncidentFilter {
        status: q.status,
        rule: q.rule,
        key: q.key,
        from_ms,
        to_ms,
        limit,
        offset,
    };
    match s.store.list(&filter).await {
        Ok(list) => {
            let next = (list.len() as i64 == limit).then_some(offset + limit);
            Json(json!({"incidents": list, "limit": limit, "offset": offset, "next_offset": next})).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub async fn get_incident(
    State(s): State<ApiState>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Viewer) {
        return r;
    }
    match s.store.get(&id).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no incident {id}")),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct NoteBody {
    #[serde(default)]
    note: String,
}

async fn transition(s: ApiState, peer: Peer, headers: HeaderMap, id: String, body: Bytes, to: &str) -> Response {
    let who = match caller(&s, &headers, &peer, Role::Responder) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let note: NoteBody = if body.is_empty() {
        NoteBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be {{\"note\": \"...\"}}: {e}"),
                )
            }
        }
    };
    let now = now_ms();
    let unsuspend = |i: &cvguard_store::Incident, acc: &str| cvguard_respond::responder::unsuspend_body(i, acc, now);
    match s
        .store
        .set_status(&id, to, &who.name, &note.note, now, &unsuspend)
        .await
    {
        Ok(incident) => {
            if let Err(e) = s.store.audit(now, &who.name, to, &id, &note.note).await {
                tracing::error!(message = "Audit write failed.", error = %e);
            }
            tracing::info!(message = "Incident updated.", incident = %id, status = to, actor = %who.name);
            Json(incident).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `POST /v1/incidents/{id}/ack|resolve|false-positive`.
pub async fn change_status(
    State(s): State<ApiState>,
    peer: Peer,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let to = match verb.as_str() {
        "ack" => "acknowledged",
        "resolve" => "resolved",
        "false-positive" => "false_positive",
        _ => return error(StatusCode::NOT_FOUND, "expected ack, resolve or false-positive"),
    };
    transition(s, peer, headers, id, body, to).await
}

pub async fn affected_csv(
    State(s): State<ApiState>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Viewer) {
        return r;
    }
    match s.store.get(&id).await {
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no incident {id}")),
        Err(e) => return store_error(e),
        Ok(Some(_)) => {}
    }
    match s.store.exposed_cvs(&id).await {
        Ok(rows) => {
            let out = affected_csv_text(&rows);
            (
                [
                    (header::CONTENT_TYPE, "text/csv".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"affected-{id}.csv\""),
                    ),
                ],
                out,
            )
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

fn affected_csv_text(rows: &[cvguard_store::ExposedCv]) -> Vec<u8> {
    let mut out = Vec::new();
    cvguard_store::write_exposed_csv(&mut out, rows).expect("writing to memory");
    out
}

pub async fn account(State(s): State<ApiState>, peer: Peer, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Viewer) {
        return r;
    }
    let detection = s.detection.clone();
    let key = id.clone();
    let windows = tokio::task::spawn_blocking(move || detection.query(KeyKind::AccountId, &key))
        .await
        .ok()
        .flatten();
    let Some(windows) = windows else {
        // The shard holding the key is busy (a harvest, a store outage): say so rather
        // than answer that the account is not tracked.
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine holding this account did not answer in time; retry",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    };
    let rules = s.rules.read().expect("rules").clone();
    let list: Vec<serde_json::Value> = windows
        .iter()
        .map(|w| {
            let response = rules
                .rules
                .iter()
                .find(|r| r.name == w.rule)
                .map_or("alert", |r| r.response.as_str());
            json!({
                "rule": w.rule,
                "measure": w.measure,
                "window": w.window,
                "value": w.value,
                "threshold": w.threshold,
                "threshold_source": w.threshold_source,
                "baseline": w.baseline,
                "remaining": w.threshold.saturating_sub(w.value),
                "percent_of_threshold": if w.threshold > 0 { (w.value as f64 * 100.0 / w.threshold as f64).round() } else { 0.0 },
                "response": response,
            })
        })
        .collect();
    Json(json!({"account_id": id, "tracked": !list.is_empty(), "windows": list})).into_response()
}

pub async fn rules(State(s): State<ApiState>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(r) = caller(&s, &headers, &peer, Role::Viewer) {
        return r;
    }
    let rules = s.rules.read().expect("rules").clone();
    let list: Vec<serde_json::Value> = rules
        .rules
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "actions": r.actions,
                "group_by": r.group_by,
                "measure": r.measure,
                "window": r.window_text,
                "threshold": r.threshold,
                "per_vacancy": r.per_vacancy,
                "segments": r.segments,
                "response": r.response,
                "severity": r.severity,
                "dry_run": r.dry_run || rules.settings.dry_run,
                "description": r.description,
            })
        })
        .collect();
    Json(json!({"rules": list, "dry_run": rules.settings.dry_run})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cv_id: &str, action: &str) -> cvguard_store::ExposedCv {
        cvguard_store::ExposedCv {
            cv_id: cv_id.into(),
            first_access: "2024-05-04T04:00:00.000Z".into(),
            action: action.into(),
            visibility: "named".into(),
        }
    }

    #[test]
    fn the_affected_csv_neutralises_formulas_and_quotes_separators() {
        let rows = [
            row("cv-1", "cv_download"),
            row("=HYPERLINK(\"http://x\",\"y\")", "cv_download"),
            row("+1", "-2"),
            row("@SUM(A1)", "cv_view"),
            row("\tx", "cv_view"),
            row("\r=1", "cv_view"),
            row("a,b", "c;d"),
            row("say \"hi\"", "line\nbreak"),
            row("x=1", "cv_view"),
        ];
        let text = String::from_utf8(affected_csv_text(&rows)).unwrap();
        let expected = "cv_id,first_access,action,visibility\n\
            cv-1,2024-05-04T04:00:00.000Z,cv_download,named\n\
            \"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",2024-05-04T04:00:00.000Z,cv_download,named\n\
            '+1,2024-05-04T04:00:00.000Z,'-2,named\n\
            '@SUM(A1),2024-05-04T04:00:00.000Z,cv_view,named\n\
            '\tx,2024-05-04T04:00:00.000Z,cv_view,named\n\
            \"'\r=1\",2024-05-04T04:00:00.000Z,cv_view,named\n\
            \"a,b\",2024-05-04T04:00:00.000Z,\"c;d\",named\n\
            \"say \"\"hi\"\"\",2024-05-04T04:00:00.000Z,\"line\nbreak\",named\n\
            x=1,2024-05-04T04:00:00.000Z,cv_view,named\n";
        assert_eq!(text, expected);
    }
}
