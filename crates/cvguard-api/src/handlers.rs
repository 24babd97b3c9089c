//! The request handlers. Each states the role it needs with [`RequireRole`]; every state
//! change is recorded in the store's audit trail with the token's name. Every error is a
//! [`Problem`].

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvguard_core::timefmt::parse_rfc3339_ms;
use cvguard_core::KeyKind;
use cvguard_store::{IncidentFilter, StoreError};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::auth::{RequireRole, Responder, Viewer};
use crate::problem::Problem;
use crate::ApiState;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn store_error(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound(id) => Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}")),
        e @ StoreError::BadTransition { .. } => Problem::new(StatusCode::CONFLICT, e.to_string()),
        e => {
            tracing::error!(message = "Store error.", error = %e);
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the incident store is unavailable").retry_after("5")
        }
    }
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

pub async fn readyz(State(s): State<ApiState>) -> Response {
    let h = &s.health;
    let store_ok = s.store.ping().await;
    let ready = h.ready() && store_ok;
    let source = h.source_connected.load(Ordering::Relaxed);
    let rebuilding = h.rebuilding.load(Ordering::Relaxed).max(0);
    let draining = h.draining.load(Ordering::Relaxed);
    let checks = [
        ("ready", json!(ready)),
        ("source_connected", json!(source)),
        ("store_reachable", json!(store_ok)),
        ("rebuilding", json!(rebuilding)),
        ("draining", json!(draining)),
    ];
    if ready {
        let body: serde_json::Map<String, serde_json::Value> =
            checks.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        return Json(body).into_response();
    }
    let why: Vec<&str> = [
        (!source, "the source is not connected"),
        (!h.started.load(Ordering::Relaxed), "still starting"),
        (rebuilding > 0, "windows are being rebuilt"),
        (draining, "draining for shutdown"),
        (
            !store_ok || h.store_failing.load(Ordering::Relaxed),
            "the incident store is failing",
        ),
        (h.ingest_log_failing(), "the ingest log could not be written"),
    ]
    .into_iter()
    .filter_map(|(bad, what)| bad.then_some(what))
    .collect();
    checks
        .into_iter()
        .fold(
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}", why.join("; ")),
            ),
            |p, (k, v)| p.with(k, v),
        )
        .into_response()
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], crate::OPENAPI)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    rule: Option<String>,
    key: Option<String>,
    severity: Option<String>,
    /// `account_id`, `org_id`, `user_id` or `ip`.
    key_kind: Option<String>,
    /// RFC 3339: opened at or after.
    from: Option<String>,
    /// RFC 3339: opened before.
    to: Option<String>,
    /// Read as text and parsed here, so a word for a number is told in our words, not
    /// serde's.
    limit: Option<String>,
    offset: Option<String>,
}

/// A page holds 1 to `MAX_LIMIT` incidents, 50 unless asked.
pub const DEFAULT_LIMIT: i64 = 50;

/// `limit` and `offset` as asked, or the 400 that says what is allowed: a page size out
/// of range is refused rather than quietly changed, so a client never misreads a page.
fn page(limit: Option<&str>, offset: Option<&str>) -> Result<(i64, i64), Problem> {
    let bad = |words: String| Problem::new(StatusCode::BAD_REQUEST, words);
    let limit = limit
        .map_or(Ok(DEFAULT_LIMIT), crate::filters::parse_limit)
        .map_err(bad)?;
    let offset = offset.map_or(Ok(0), crate::filters::parse_offset).map_err(bad)?;
    Ok((limit, offset))
}

fn filter(q: ListQuery) -> Result<IncidentFilter, Problem> {
    let time = |t: &Option<String>, name: &str| match t {
        None => Ok(None),
        Some(text) => parse_rfc3339_ms(text)
            .map(Some)
            .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, format!("`{name}` must be an RFC 3339 time"))),
    };
    let from_ms = time(&q.from, "from")?;
    let to_ms = time(&q.to, "to")?;
    let status = q
        .status
        .as_deref()
        .map(crate::filters::parse_status)
        .transpose()
        .map_err(|words| Problem::new(StatusCode::BAD_REQUEST, words))?;
    let bad = |words: String| Problem::new(StatusCode::BAD_REQUEST, words);
    let severity = q
        .severity
        .as_deref()
        .map(crate::filters::parse_severity)
        .transpose()
        .map_err(bad)?;
    let key_kind = q
        .key_kind
        .as_deref()
        .map(crate::filters::parse_key_kind)
        .transpose()
        .map_err(bad)?;
    let (limit, offset) = page(q.limit.as_deref(), q.offset.as_deref())?;
    Ok(IncidentFilter {
        status: status.map(str::to_string),
        rule: q.rule,
        key: q.key,
        severity: severity.map(str::to_string),
        key_kind: key_kind.map(str::to_string),
        from_ms,
        to_ms,
        limit,
        offset,
    })
}

pub async fn list_incidents(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    // A query axum cannot read (a word for a number, a key twice) is a 400 problem
    // (`problem::normalise`), answered after the token is checked.
    Query(q): Query<ListQuery>,
) -> Result<Response, Problem> {
    let filter = filter(q)?;
    let (limit, offset) = (filter.limit, filter.offset);
    let list = s.store.list(&filter).await.map_err(store_error)?;
    // A full page may have a next one; past i64 there is none to ask for.
    let next = if list.len() as i64 == limit {
        offset.checked_add(limit)
    } else {
        None
    };
    Ok(Json(json!({"incidents": list, "limit": limit, "offset": offset, "next_offset": next})).into_response())
}

pub async fn get_incident(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    match s.store.get(&id).await.map_err(store_error)? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}"))),
    }
}

/// The note of a status change: an empty body, or a JSON object whose `note`, if any, is a
/// string. (A derived `Deserialize` would also take an array, `["..."]`.)
pub(crate) fn note_of(body: &[u8]) -> Result<String, Problem> {
    if body.is_empty() {
        return Ok(String::new());
    }
    let bad = |why: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"note\": \"...\"}} or empty: {why}"),
        )
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(e) => Err(bad(e.to_string())),
        Ok(serde_json::Value::Object(mut fields)) => match fields.remove("note") {
            None => Ok(String::new()),
            Some(serde_json::Value::String(note)) => Ok(note),
            Some(_) => Err(bad("`note` is not a string".into())),
        },
        Ok(_) => Err(bad("not a JSON object".into())),
    }
}

/// `POST /v1/incidents/{id}/ack|resolve|false-positive`.
pub async fn change_status(
    State(s): State<ApiState>,
    RequireRole(who, _): RequireRole<Responder>,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let to = match verb.as_str() {
        "ack" => "acknowledged",
        "resolve" => "resolved",
        "false-positive" => "false_positive",
        _ => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no action `{verb}` on an incident: ack, resolve or false-positive"),
            ))
        }
    };
    let note = note_of(&body)?;
    let now = now_ms();
    let unsuspend = |i: &cvguard_store::Incident, acc: &str| cvguard_respond::responder::unsuspend_body(i, acc, now);
    let incident = s
        .store
        .set_status(&id, to, &who.name, &note, now, &unsuspend)
        .await
        .map_err(store_error)?;
    if let Err(e) = s.store.audit(now, &who.name, to, &id, &note).await {
        tracing::error!(message = "Audit write failed.", error = %e);
    }
    tracing::info!(message = "Incident updated.", incident = %id, status = to, actor = %who.name);
    Ok(Json(incident).into_response())
}

pub async fn affected_csv(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if s.store.get(&id).await.map_err(store_error)?.is_none() {
        return Err(Problem::new(StatusCode::NOT_FOUND, format!("no incident {id}")));
    }
    let rows = s.store.exposed_cvs(&id).await.map_err(store_error)?;
    // Ids are the store's own, but a header must never be built from arbitrary text.
    let name: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"affected-{name}.csv\""),
            ),
        ],
        affected_csv_text(&rows),
    )
        .into_response())
}

fn affected_csv_text(rows: &[cvguard_store::ExposedCv]) -> Vec<u8> {
    let mut out = Vec::new();
    cvguard_store::write_exposed_csv(&mut out, rows).expect("writing to memory");
    out
}

pub async fn account(
    State(s): State<ApiState>,
    _caller: RequireRole<Viewer>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let list = crate::keys::key_windows(&s, KeyKind::AccountId, &id).await?;
    let local = json!({"account_id": id, "tracked": !list.is_empty(), "windows": list});
    let path = format!("/v1/keys/account/{}", crate::keys::path_segment(&id));
    let mut view = crate::keys::from_owner(&s, local, &path, &headers).await;
    // A peer answered in the key view's shape: keep the account view's.
    if let Some(obj) = view.as_object_mut() {
        obj.remove("key");
        obj.remove("key_kind");
        obj.insert("account_id".into(), json!(id));
    }
    Ok(Json(view).into_response())
}

pub async fn rules(State(s): State<ApiState>, _caller: RequireRole<Viewer>) -> Response {
    let rules = s.rules.read().expect("rules").clone();
    let fired = alerts_by_rule(&s.metrics);
    let list: Vec<serde_json::Value> = rules
        .rules
        .iter()
        .map(|r| {
            let mut rule = json!({
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
                "alerts_total": fired.get(r.name.as_str()).copied().unwrap_or(0),
            });
            if let Some(b) = &r.baseline {
                rule["baseline"] = json!({
                    "history_days": b.history_days,
                    "statistic": b.statistic,
                    "factor": b.factor,
                    "min_history_days": b.min_history_days,
                });
            }
            rule
        })
        .collect();
    Json(json!({"rules": list, "dry_run": rules.settings.dry_run})).into_response()
}

/// Alerts decided since start by rule (`cvguard_alerts_total` summed over severity and
/// action).
fn alerts_by_rule(metrics: &cvguard_stream::Metrics) -> std::collections::HashMap<String, u64> {
    use prometheus::core::Collector;
    let mut by_rule = std::collections::HashMap::new();
    for family in metrics.alerts.collect() {
        for m in family.get_metric() {
            if let Some(rule) = m.get_label().iter().find(|l| l.name() == "rule") {
                *by_rule.entry(rule.value().to_string()).or_insert(0) += m.get_counter().get_value() as u64;
            }
        }
    }
    by_rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_an_empty_body_or_an_object_with_a_string_note() {
        assert_eq!(note_of(b"").unwrap(), "");
        assert_eq!(note_of(b"{}").unwrap(), "");
        assert_eq!(note_of(br#"{"note":"on it","x":1}"#).unwrap(), "on it");
        for bad in [
            &b"[]"[..],
            br#"["x"]"#,
            b"null",
            b"5",
            br#"{"note":null}"#,
            br#"{"note":5}"#,
            b"{",
        ] {
            let p = note_of(bad).unwrap_err();
            assert_eq!(p.status(), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn paging_takes_what_is_asked_within_range_and_refuses_the_rest() {
        assert_eq!(page(None, None).unwrap(), (50, 0));
        assert_eq!(page(Some("1"), Some("0")).unwrap(), (1, 0));
        let max = i64::MAX.to_string();
        assert_eq!(page(Some("1000"), Some(&max)).unwrap(), (1000, i64::MAX));
        for (limit, offset, says) in [
            (
                Some("0"),
                None,
                "limit: expected a whole number from 1 to 1000, not `0`",
            ),
            (
                Some("-1"),
                None,
                "limit: expected a whole number from 1 to 1000, not `-1`",
            ),
            (
                Some("1001"),
                None,
                "limit: expected a whole number from 1 to 1000, not `1001`",
            ),
            (
                Some("abc"),
                None,
                "limit: expected a whole number from 1 to 1000, not `abc`",
            ),
            (None, Some("-5"), "offset: expected a whole number ≥ 0, not `-5`"),
            (None, Some("x"), "offset: expected a whole number ≥ 0, not `x`"),
        ] {
            let p = page(limit, offset).unwrap_err();
            assert_eq!((p.status(), p.detail()), (StatusCode::BAD_REQUEST, says));
        }
    }

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
