//! What a SOC console needs of incidents beyond the list: counts by status, a live stream
//! of changes, an incident's exposure over time, and notes.

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
/// the incident as the list shows it. An event's id is its change, `<epoch ms>-<incident
/// id>`: a client that reconnects with `Last-Event-ID` gets every change after it (an
/// id of epoch ms alone: every change from that time on). Without it the stream starts
/// now.
pub async fn stream(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let cursor = match headers.get("last-event-id") {
        None => Cursor::from_time(now_ms()),
        Some(v) => v.to_str().ok().and_then(Cursor::parse).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID: expected the id of an event this stream sent",
            )
        })?,
    };
    let store = s.store.clone();
    let events = futures::stream::unfold(cursor, move |mut cursor| {
        let store = store.clone();
        async move {
            loop {
                if let Some(event) = cursor.queue.pop() {
                    return Some((Ok(event), cursor));
                }
                match store.changed_after(cursor.at, &cursor.id, STREAM_BATCH).await {
                    Ok(changes) => cursor.take(changes),
                    Err(e) => tracing::warn!(message = "Incident stream: store read failed.", error = %e),
                }
                if cursor.queue.is_empty() {
                    tokio::time::sleep(STREAM_POLL).await;
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

/// Where a stream is: the last change sent, as (change time, incident id). Changes are
/// read strictly after it in that order, so however many share a millisecond, each is
/// sent once and the stream moves on.
struct Cursor {
    at: i64,
    id: String,
    /// Events to send, last first.
    queue: Vec<Event>,
}

impl Cursor {
    /// Every change from `at` on (ids sort after "").
    fn from_time(at: i64) -> Cursor {
        Cursor {
            at: at - 1,
            id: String::from("\u{10ffff}"),
            queue: Vec::new(),
        }
    }

    /// `<ms>-<id>` as this stream writes it, or `<ms>`.
    fn parse(text: &str) -> Option<Cursor> {
        let text = text.trim();
        let (at, id) = match text.split_once('-') {
            Some((at, id)) if !id.is_empty() => (at, Some(id)),
            Some(_) => return None,
            None => (text, None),
        };
        let at: i64 = at.parse().ok().filter(|t| *t >= 0)?;
        Some(match id {
            Some(id) => Cursor {
                at,
                id: id.to_string(),
                queue: Vec::new(),
            },
            None => Cursor::from_time(at),
        })
    }

    fn take(&mut self, changes: Vec<(i64, cvguard_store::Incident)>) {
        let mut fresh = Vec::new();
        for (at, incident) in changes {
            self.at = at;
            self.id = incident.id.clone();
            let data = serde_json::to_string(&incident).expect("an incident is plain data");
            fresh.push(
                Event::default()
                    .event("incident")
                    .id(format!("{at}-{}", incident.id))
                    .data(data),
            );
        }
        fresh.reverse();
        self.queue = fresh;
    }
}

/// `GET /v1/incidents/{id}/timeline`: the rule's window value for the key over event
/// time, against its threshold, with the crossing and the decision. Worked out from the
/// incident's exposure record (each CV's first access and first action): at each time,
/// the CVs first read inside the rule's window by one of its actions. A CV read again
/// later is counted from its first read only, so the line can run below the engine's
/// value; a rule that counts something other than distinct CVs (events, IPs) has no
/// such record and answers no points (`measure` says why).
pub async fn timeline(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let Some(detail) = s.store.get(&id).await.map_err(store_error)? else {
        return Err(Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}")));
    };
    let i = &detail.incident;
    // The rule as it is in force; an incident of a rule since removed is drawn with every
    // action over its whole life.
    let rule = s
        .rules
        .read()
        .expect("rules")
        .rules
        .iter()
        .find(|r| r.name == i.rule)
        .cloned();
    let (measure, window_secs, actions) = match &rule {
        Some(r) => (r.measure, Some(r.window_secs), Some(r.actions.clone())),
        None => (cvguard_core::Measure::DistinctCvs, None, None),
    };
    let points = if measure == cvguard_core::Measure::DistinctCvs {
        let rows = s.store.exposed_cvs(&id).await.map_err(store_error)?;
        let mut times: Vec<i64> = rows
            .iter()
            .filter(|r| actions.as_ref().is_none_or(|a| a.contains(&r.action)))
            .filter_map(|r| parse_rfc3339_ms(&r.first_access))
            .collect();
        times.sort_unstable();
        in_window(&times, window_secs.map(|w| w * 1000), TIMELINE_POINTS)
    } else {
        Vec::new()
    };
    let crossed_at = parse_rfc3339_ms(&i.first_event_time).map(|t| format_rfc3339_ms(t + i.time_to_detect_ms));
    Ok(Json(json!({
        "incident": i.id,
        "rule": i.rule,
        "measure": measure,
        "window": rule.as_ref().map(|r| r.window_text.clone()),
        "key_kind": i.key_kind,
        "key": i.key,
        "threshold": i.threshold,
        "threshold_source": i.threshold_source,
        "value_at_detection": i.value_at_detection,
        "crossed_at": crossed_at,
        "decided_at": i.opened_at,
        "points": points,
    }))
    .into_response())
}

/// The number of `times` (sorted, epoch ms) inside a sliding window of `window_ms`
/// ending at each time (`None`: since the first), as at most `max` points: a point where
/// each time ends, thinned evenly when there are more, the highest always kept.
fn in_window(times: &[i64], window_ms: Option<i64>, max: usize) -> Vec<serde_json::Value> {
    let mut steps: Vec<(i64, usize)> = Vec::new();
    let mut start = 0;
    for (n, t) in times.iter().enumerate() {
        if times.get(n + 1) == Some(t) {
            continue;
        }
        if let Some(w) = window_ms {
            // Inside the window ending at t: first reads after t - w.
            while times[start] <= t - w {
                start += 1;
            }
        }
        steps.push((*t, n + 1 - start));
    }
    let keep = max.max(2);
    if steps.len() > keep {
        let peak = steps.iter().enumerate().max_by_key(|(_, (_, v))| *v).map(|(i, _)| i);
        let last = steps.len() - 1;
        let stride = steps.len().div_ceil(keep - 1);
        steps = steps
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % stride == 0 || Some(*i) == peak || *i == last)
            .map(|(_, s)| s)
            .collect();
    }
    steps
        .into_iter()
        .map(|(t, v)| json!({"at": format_rfc3339_ms(t), "value": v}))
        .collect()
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
    fn a_timeline_counts_first_reads_inside_the_window_bounded_with_its_peak() {
        let values = |points: &[serde_json::Value]| -> Vec<u64> {
            points.iter().map(|p| p["value"].as_u64().unwrap()).collect()
        };
        // Batches of 200 CVs a second apart: with no window, every batch a step up.
        let batches: Vec<i64> = (0..4200).map(|i| (i / 200) * 1000).collect();
        assert_eq!(
            values(&in_window(&batches, None, 500)),
            (1..=21).map(|b| b * 200).collect::<Vec<u64>>()
        );
        // A 3 s window holds the last three batches: 200, 400, then 600 from there on.
        let windowed = values(&in_window(&batches, Some(3000), 500));
        assert_eq!(&windowed[..4], &[200, 400, 600, 600]);
        assert!(windowed[3..].iter().all(|v| *v == 600));
        // Bounded, the peak kept.
        let mut times: Vec<i64> = (0..10_000).collect();
        times.extend(std::iter::repeat_n(5_000, 50));
        times.sort_unstable();
        let points = in_window(&times, Some(100), 500);
        assert!(points.len() <= 501, "{}", points.len());
        assert_eq!(values(&points).into_iter().max(), Some(150));
        assert!(in_window(&[], Some(10), 500).is_empty());
    }
}
