//! cvguard's HTTP API: `POST /v1/events` (NDJSON ingest when the source is http),
//! `GET /healthz` (alive) and `GET /readyz` (source connected, rebuild finished).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cvguard_stream::http::HttpPipeline;
use cvguard_stream::Health;
use serde_json::json;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub health: Arc<Health>,
    /// The ingest pipeline, when events come over HTTP.
    pub ingest: Option<Arc<HttpPipeline>>,
}

/// The router; `max_body_bytes` bounds a request body (413 beyond it).
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let h = &s.health;
    let body = json!({
        "ready": h.ready(),
        "source_connected": h.source_connected.load(std::sync::atomic::Ordering::Relaxed),
        "rebuilding": h.rebuilding.load(std::sync::atomic::Ordering::Relaxed).max(0),
        "draining": h.draining.load(std::sync::atomic::Ordering::Relaxed),
    });
    let code = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// 202 with counts when at least one event was accepted; 400 (same body) when the body
/// held none; 409 when events come from Kafka instead.
async fn ingest(State(s): State<ApiState>, body: Bytes) -> Response {
    let Some(pipeline) = s.ingest.clone() else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "this instance reads events from Kafka; [source] kind is not \"http\""})),
        )
            .into_response();
    };
    if s.health.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "shutting down"}))).into_response();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Parsing and routing may wait for full shard queues: keep it off the async threads.
    let report = match tokio::task::spawn_blocking(move || pipeline.submit(&body, now)).await {
        Ok(r) => r,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let code = if report.accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = json!({"accepted": report.accepted, "rejected": report.rejected});
    (code, Json(body)).into_response()
}
