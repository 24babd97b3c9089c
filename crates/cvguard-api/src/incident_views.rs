//! What a SOC console needs of incidents beyond the list: counts by status, a live stream
//! of changes, an incident's exposure over time, and notes.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvguard_core::timefmt::{format_rfc3339_ms, parse_rfc3339_ms};
use futures::Stream;
use serde_json::json;

use crate::auth::{RequireRole, Responder, Viewer};
use crate::handlers::{note_of, now_ms, store_error};
use crate::problem::Problem;
use crate::ApiState;

/// How often the stream asks the store for changes: the store is the authority (several
/// instances write it), so the stream reads it rather than one instance's memory.
const STREAM_POLL: Duration = Duration::from_secs(1);
/// Changes read per poll; more wait for the next one.
const STREAM_BATCH: i64 = 200;
/// Points of an incident's timeline: enough for a chart, bounded whatever it exposed.
const TIMELINE_POINTS: usize = 500;

/// `GET /v1/incidents/counts`: every status with its number of incidents.
pub async fn counts(State(s): State<ApiState>, _caller: RequireRole<Viewer>) -> Result<Response, Problem> {
    let counts = s.store.count_by_status().await.map_err(store_error)?;
    let body: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(status, n)| (status.to_string(), json!(n)))
        .collect();
    Ok(Json(body).into_response())
}

/// `GET /v1/incidents/stream`: server-sent events, one `incident` event per change with
/// the incident as the list shows it and the change's time (epoch ms) as its id. A
/// client that reconnects with `Last-Event-ID` gets the changes from that time on (the
/// last one again included: at least once). Without it the stream starts now.
pub async fn stream(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let from = match headers.get("last-event-id") {
        None => now_ms(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: expected the id of an event this stream sent",
                )
            })?,
    };
    let store = s.store.clone();
    let events = futures::stream::unfold(
        Cursor {
            at: from,
            sent_at: BTreeSet::new(),
            queue: Vec::new(),
        },
        move |mut cursor| {
            let store = store.clone();
            async move {
                loop {
                    if let Some(event) = cursor.queue.pop() {
                        return Some((Ok(event), cursor));
                    }
                    match store.changed_since(cursor.at, STREAM_BATCH).await {
                        Ok(changes) => cursor.take(changes),
                        Err(e) => tracing::warn!(message = "Incident stream: store read failed.", error = %e),
                    }
                    if cursor.queue.is_empty() {
                        tokio::time::sleep(STREAM_POLL).await;
                    }
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

/// Where a stream is: the newest change time sent, and the incidents sent at exactly that
/// time (a later change of the same millisecond must still go out, a repeat must not).
struct Cursor {
    at: i64,
    sent_at: BTreeSet<String>,
    /// Events to send, last first.
    queue: Vec<Event>,
}

impl Cursor {
    fn take(&mut self, changes: Vec<(i64, cvguard_store::Incident)>) {
        let mut fresh = Vec::new();
        for (at, incident) in changes {
            if at < self.at || (at == self.at && self.sent_at.contains(&incident.id)) {
                continue;
            }
            if at > self.at {
                self.at = at;
                self.sent_at.clear();
            }
            self.sent_at.insert(incident.id.clone());
            let data = serde_json::to_string(&incident).expect("an incident is plain data");
            fresh.push(Event::default().event("incident").id(at.to_string()).data(data));
        }
        fresh.reverse();
        self.queue = fresh;
    }
}

/// `GET /v1/incidents/{id}/timeline`: the key's distinct CVs over event time from the
/// incident's exposure record, against its threshold, with the crossing and the decision.
pub async fn timeline(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let Some(detail) = s.store.get(&id).await.map_err(store_error)? else {
        return Err(Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}")));
    };
    let rows = s.store.exposed_cvs(&id).await.map_err(store_error)?;
    let times: Vec<i64> = rows.iter().filter_map(|r| parse_rfc3339_ms(&r.first_access)).collect();
    let i = &detail.incident;
    let crossed_at = parse_rfc3339_ms(&i.first_event_time).map(|t| format_rfc3339_ms(t + i.time_to_detect_ms));
    Ok(Json(json!({
        "incident": i.id,
        "rule": i.rule,
        "key_kind": i.key_kind,
        "key": i.key,
        "threshold": i.threshold,
        "threshold_source": i.threshold_source,
        "value_at_detection": i.value_at_detection,
        "crossed_at": crossed_at,
        "decided_at": i.opened_at,
        "points": cumulative(&times, TIMELINE_POINTS),
    }))
    .into_response())
}

/// The running count of `times` (sorted) as at most `max` points, each the count up to
/// and including its time; the last point always the total.
fn cumulative(times: &[i64], max: usize) -> Vec<serde_json::Value> {
    // A point once the count has moved on by at least `step` since the last one, only
    // where a time ends (CVs first read together, in one batch, are one step up).
    let step = times.len().div_ceil(max.max(1)).max(1);
    let mut points: Vec<serde_json::Value> = Vec::new();
    let mut shown = 0;
    for (n, t) in times.iter().enumerate() {
        let count = n + 1;
        let last_of_time = times.get(n + 1) != Some(t);
        if last_of_time && (count - shown >= step || count == times.len()) {
            points.push(json!({"at": format_rfc3339_ms(*t), "value": count}));
            shown = count;
        }
    }
    points
}

/// `POST /v1/incidents/{id}/note`: a note in the incident's history, its status as it is.
pub async fn add_note(
    State(s): State<ApiState>,
    RequireRole(who, _): RequireRole<Responder>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let note = note_of(&body)?;
    if note.trim().is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the body must be {\"note\": \"...\"} with some text",
        ));
    }
    if note.len() > MAX_NOTE_BYTES {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a note holds at most {MAX_NOTE_BYTES} bytes"),
        ));
    }
    let now = now_ms();
    s.store
        .add_note(&id, &who.name, &note, now)
        .await
        .map_err(store_error)?;
    if let Err(e) = s.store.audit(now, &who.name, "note", &id, &note).await {
        tracing::error!(message = "Audit write failed.", error = %e);
    }
    match s.store.get(&id).await.map_err(store_error)? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}"))),
    }
}

/// A note is for people: bounded so a client cannot grow the store without limit.
pub const MAX_NOTE_BYTES: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_is_bounded_ends_at_the_total_and_counts_ties_once() {
        let times: Vec<i64> = (0..2001).map(|i| i / 3).collect();
        let points = cumulative(&times, 500);
        assert!(points.len() <= 500, "{}", points.len());
        assert_eq!(points.last().unwrap()["value"], 2001);
        let values: Vec<u64> = points.iter().map(|p| p["value"].as_u64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]));
        // Each point counts everything up to its time: a multiple of 3 (ties whole).
        assert!(values.iter().all(|v| v % 3 == 0), "{values:?}");
        // Batches of 200 at one time each: every batch a point, from the first.
        let batches: Vec<i64> = (0..4200).map(|i| i / 200).collect();
        let points = cumulative(&batches, 500);
        let values: Vec<u64> = points.iter().map(|p| p["value"].as_u64().unwrap()).collect();
        assert_eq!(values, (1..=21).map(|b| b * 200).collect::<Vec<u64>>());
        assert_eq!(
            cumulative(&[5], 500),
            vec![json!({"at": format_rfc3339_ms(5), "value": 1})]
        );
        assert!(cumulative(&[], 500).is_empty());
    }
}
