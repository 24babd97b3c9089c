//! `POST /v1/events`: NDJSON, as sent or gzip-compressed (`Content-Encoding: gzip`, what
//! log shippers send). The decompressed body is held to `http.max_body_bytes` like a plain
//! one: decoding stops one byte past it and answers 413, so a small gzip bomb costs no
//! more memory than the largest body allowed.

use std::io::Read;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cvguard_stream::http::{IngestError, IngestReport};
use serde_json::json;

use crate::auth::{Ingest, RequireRole};
use crate::problem::Problem;
use crate::ApiState;

/// `http.max_body_bytes`, for the handlers that read bodies themselves.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A content coding ingest can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
}

/// The codings applied to the body, in the order they were applied (RFC 9110 8.4);
/// `identity` adds none. Anything else is 415.
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Problem> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                out.push(Coding::Gzip);
            } else if !name.eq_ignore_ascii_case("identity") {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Encoding `{name}` is not supported: send gzip or no encoding"),
                )
                .header(header::ACCEPT_ENCODING, "gzip"));
            }
        }
    }
    Ok(out)
}

/// Gunzips `data` (every member: shippers concatenate them) into at most `limit` bytes.
fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, Problem> {
    // The last member's trailer holds its size (mod 2^32): a hint that saves growing the
    // buffer to twice what it holds, never trusted past the limit.
    let hint = data.last_chunk::<4>().map_or(0, |t| u32::from_le_bytes(*t) as usize);
    let mut out = Vec::with_capacity(hint.min(limit + 1));
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    match decoder.read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body decompresses to more than http.max_body_bytes ({limit} bytes); send smaller parts"),
        )),
        Ok(_) => Ok(out),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid gzip: {e}"),
        )),
    }
}

/// The body as NDJSON: codings undone, and ending with a line break, so that the last
/// line is weighed like every other one.
fn ndjson(body: Bytes, codings: &[Coding], limit: usize) -> Result<Bytes, Problem> {
    let mut data = body;
    for coding in codings.iter().rev() {
        data = match coding {
            Coding::Gzip => Bytes::from(gunzip(&data, limit)?),
        };
    }
    if data.is_empty() || data.ends_with(b"\n") {
        return Ok(data);
    }
    let mut terminated = Vec::with_capacity(data.len() + 1);
    terminated.extend_from_slice(&data);
    terminated.push(b'\n');
    Ok(Bytes::from(terminated))
}

fn refused(e: &IngestError) -> Problem {
    // Nothing was accepted: the client may send the same body again.
    let retry_after = match e {
        IngestError::Busy { .. } | IngestError::CatchingUp => "1",
        IngestError::Log(_) => "10",
    };
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(retry_after)
}

fn counts(report: &IngestReport) -> [(&'static str, serde_json::Value); 5] {
    [
        ("accepted", json!(report.accepted)),
        ("rejected", json!(report.rejected)),
        // Unknown until the shards decided: null, not a 0 that reads as "none".
        ("late", report.decided.then_some(report.late).into()),
        ("duplicates", report.decided.then_some(report.duplicates).into()),
        ("decided", json!(report.decided)),
    ]
}

/// 202 with counts when at least one event was accepted; 400 (a problem with the same
/// counts) when the body held none; 409 when events come from Kafka instead.
pub async fn ingest(
    State(s): State<ApiState>,
    _caller: RequireRole<Ingest>,
    Extension(BodyLimit(limit)): Extension<BodyLimit>,
    headers: HeaderMap,
    // Read once the token is checked; over `max_body_bytes` it is a 413 problem
    // (`problem::normalise`).
    body: Bytes,
) -> Response {
    let codings = match codings(&headers) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    let Some(pipeline) = s.ingest.clone() else {
        return Problem::new(
            StatusCode::CONFLICT,
            "this instance reads events from Kafka; [source] kind is not \"http\"",
        )
        .into_response();
    };
    if s.health.draining.load(Ordering::Relaxed) {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            .retry_after("1")
            .into_response();
    }
    let now = crate::handlers::now_ms();
    // Decompressing takes CPU and appending to the ingest log waits for an fsync: keep
    // both off the async threads.
    let submitted = tokio::task::spawn_blocking(move || {
        let body = ndjson(body, &codings, limit)?;
        pipeline.submit(&body, now).map_err(|e| refused(&e))
    })
    .await;
    let report = match submitted {
        Ok(Ok(r)) => r,
        Ok(Err(problem)) => return problem.into_response(),
        Err(_) => {
            return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "ingest failed; see the service log")
                .into_response()
        }
    };
    if report.accepted == 0 {
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "no event in the body was usable; `rejected` counts them by reason (docs/EVENTS.md)",
        );
        for (name, value) in counts(&report) {
            problem = problem.with(name, value);
        }
        return problem.into_response();
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::Value::Object(
            counts(&report).into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn encoding(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn gzip_x_gzip_and_identity_are_undone_in_any_case_and_anything_else_is_415() {
        assert_eq!(codings(&HeaderMap::new()).unwrap(), []);
        assert_eq!(codings(&encoding(&["GZip"])).unwrap(), [Coding::Gzip]);
        assert_eq!(codings(&encoding(&["x-gzip, identity"])).unwrap(), [Coding::Gzip]);
        assert_eq!(
            codings(&encoding(&["gzip", "gzip"])).unwrap(),
            [Coding::Gzip, Coding::Gzip]
        );
        for bad in ["br", "deflate", "gzip, zstd"] {
            let p = codings(&encoding(&[bad])).unwrap_err();
            assert_eq!(p.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
            let r = p.into_response();
            assert_eq!(r.headers()[header::ACCEPT_ENCODING], "gzip");
        }
    }

    #[test]
    fn a_gzip_body_is_decoded_whole_across_members_and_ends_with_a_line_break() {
        let mut two = gz(b"{\"a\":1}\n");
        two.extend(gz(b"{\"b\":2}"));
        let body = ndjson(Bytes::from(two), &[Coding::Gzip], 1 << 20).unwrap();
        assert_eq!(&*body, b"{\"a\":1}\n{\"b\":2}\n");
        let twice = gz(&gz(b"x\n"));
        assert_eq!(
            &*ndjson(Bytes::from(twice), &[Coding::Gzip, Coding::Gzip], 100).unwrap(),
            b"x\n"
        );
        assert_eq!(&*ndjson(Bytes::from_static(b"y"), &[], 100).unwrap(), b"y\n");
        assert_eq!(&*ndjson(Bytes::from_static(b""), &[], 100).unwrap(), b"");
    }

    #[test]
    fn a_body_that_decompresses_past_the_limit_is_413_and_never_held_whole() {
        let bomb = gz(&vec![b'\n'; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let p = gunzip(&bomb, 1 << 20).unwrap_err();
        assert_eq!(p.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(p.detail().contains("1048576 bytes"), "{}", p.detail());
        // Exactly at the limit is fine.
        assert_eq!(gunzip(&gz(&[b'\n'; 1000]), 1000).unwrap().len(), 1000);
        assert_eq!(
            gunzip(&gz(&[b'\n'; 1001]), 1000).unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn a_body_that_is_not_gzip_is_400() {
        let p = gunzip(b"{\"ts\":1}\n", 100).unwrap_err();
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        assert!(p.detail().starts_with("the body is not valid gzip"), "{}", p.detail());
        let mut cut = gz(b"{\"ts\":1}\n");
        cut.truncate(cut.len() - 4);
        assert_eq!(gunzip(&cut, 100).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
