//! GET /v1/health (viewer): the detector's own health, as the watchdog last saw it (a
//! second ago at most): each alarm, firing or not and since when, and each partition's
//! or part's event time, event-time lag and consumer lag (docs/OPERATIONS.md).

use axum::extract::State;
use axum::Json;
use cvguard_stream::watchdog::Report;

use crate::auth::{RequireRole, Viewer};
use crate::ApiState;

pub async fn health(_caller: RequireRole<Viewer>, State(s): State<ApiState>) -> Json<Report> {
    Json(s.health.report.read().expect("health report").clone())
}
