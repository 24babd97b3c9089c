//! cvguard's HTTP API (docs/openapi.yaml): incidents and their lifecycle, the live
//! windows of an account, the effective rules, NDJSON ingest, health, readiness and
//! Prometheus metrics. Bearer tokens with roles guard everything under `/v1`. Every
//! error is an RFC 9457 problem (`problem.rs`).

pub mod about;
pub mod auth;
pub mod filters;
mod handlers;
mod health;
mod incident_views;
mod ingest;
mod keys;
mod metrics_text;
pub mod peers;
pub mod problem;

use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use cvguard_core::RuleSet;
use cvguard_respond::SinkSet;
use cvguard_store::Store;
use cvguard_stream::http::HttpPipeline;
use cvguard_stream::{Detection, Health, Metrics};

pub use auth::{new_token, Tokens};
use problem::Problem;

/// The OpenAPI document, served at /openapi.yaml.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub health: Arc<Health>,
    pub tokens: Arc<Tokens>,
    pub store: Store,
    pub detection: Arc<dyn Detection>,
    /// The ingest pipeline, when events come over HTTP.
    pub ingest: Option<Arc<HttpPipeline>>,
    /// The rules in force (replaced on reload).
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub metrics: Arc<Metrics>,
    pub sinks: SinkSet,
    /// The config's version and reload history (`GET /v1/config`).
    pub config_log: Arc<about::ConfigLog>,
    /// The other instances of a Kafka consumer group (`None` on HTTP ingest).
    pub peers: Option<Arc<peers::Peers>>,
}

/// The router; `max_body_bytes` bounds a request body, and an ingest body once
/// decompressed (413 beyond it). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let uploads = Arc::new(tokio::sync::Semaphore::new(INGEST_UPLOADS));
    Router::new()
        .route(
            "/v1/events",
            post(ingest::ingest).layer(axum::middleware::from_fn(move |req, next| {
                bounded_upload(uploads.clone(), req, next)
            })),
        )
        .route("/v1/incidents", get(handlers::list_incidents))
        .route("/v1/incidents/counts", get(incident_views::counts))
        .route("/v1/incidents/stream", get(incident_views::stream))
        .route("/v1/incidents/{id}", get(handlers::get_incident))
        .route("/v1/incidents/{id}/affected.csv", get(handlers::affected_csv))
        .route("/v1/incidents/{id}/timeline", get(incident_views::timeline))
        .route(
            "/v1/incidents/{id}/note",
            // A note's body is small: refused (413) before more than that is read.
            post(incident_views::add_note).layer(DefaultBodyLimit::max(incident_views::MAX_NOTE_BYTES + 1024)),
        )
        .route("/v1/incidents/{id}/{verb}", post(handlers::change_status))
        .route("/v1/accounts/{id}", get(handlers::account))
        .route("/v1/keys/closest", get(keys::closest))
        .route("/v1/keys/{kind}/{key}", get(keys::key))
        .route("/v1/rules", get(handlers::rules))
        .route("/v1/health", get(health::health))
        .route("/v1/config", get(about::config))
        .route("/v1/whoami", get(about::whoami))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics_text::metrics))
        .route("/openapi.yaml", get(handlers::openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(ingest::BodyLimit(max_body_bytes)))
        .layer(axum::middleware::from_fn(move |req, next| {
            problem::normalise(max_body_bytes, req, next)
        }))
        .with_state(state)
}

/// An unknown route: `normalise` makes it a problem naming the method and path.
async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// Ingest requests whose bodies may be read at once. A body (once its token is checked) is
/// read whole before ingest weighs it, so `http.max_in_flight_bytes` alone would let many concurrent uploads
/// (each up to `max_body_bytes`) hold far more memory; past this, a request waits briefly
/// for a turn and then answers 503 with `Retry-After`.
const INGEST_UPLOADS: usize = 4;
/// How long an ingest request may wait for a turn, and then take to arrive and be
/// decided: a client that trickles its body cannot hold a turn for ever.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

async fn bounded_upload(
    uploads: Arc<tokio::sync::Semaphore>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(Ok(_turn)) = tokio::time::timeout(UPLOAD_WAIT, uploads.acquire_owned()).await else {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "too many uploads at once; retry")
            .retry_after("1")
            .into_response();
    };
    match tokio::time::timeout(UPLOAD_DEADLINE, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::new(StatusCode::REQUEST_TIMEOUT, "the request took too long to arrive")
            .retry_after("1")
            .into_response(),
    }
}
