//! cvguard's HTTP API (docs/openapi.yaml): incidents and their lifecycle, the live
//! windows of an account, the effective rules, NDJSON ingest, health, readiness and
//! Prometheus metrics. Bearer tokens with roles guard everything under `/v1`.

pub mod auth;
mod handlers;
mod metrics_text;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use cvguard_core::RuleSet;
use cvguard_respond::SinkSet;
use cvguard_store::Store;
use cvguard_stream::http::HttpPipeline;
use cvguard_stream::{Detection, Health, Metrics};

pub use auth::{new_token, Tokens};

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
}

/// The router; `max_body_bytes` bounds a request body (413 beyond it). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/events", post(handlers::ingest))
        .route("/v1/incidents", get(handlers::list_incidents))
        .route("/v1/incidents/{id}", get(handlers::get_incident))
        .route("/v1/incidents/{id}/affected.csv", get(handlers::affected_csv))
        .route("/v1/incidents/{id}/{verb}", post(handlers::change_status))
        .route("/v1/accounts/{id}", get(handlers::account))
        .route("/v1/rules", get(handlers::rules))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics_text::metrics))
        .route("/openapi.yaml", get(handlers::openapi))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The peer address type the router expects from `into_make_service_with_connect_info`.
pub type Peer = axum::extract::ConnectInfo<SocketAddr>;
