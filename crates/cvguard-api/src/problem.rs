//! One error body for every error the API answers: RFC 9457 problem details
//! (`application/problem+json`). The handlers build a [`Problem`]; whatever axum answers on
//! its own (a query or body it could not read, an unknown route, a method the route does
//! not have) passes through [`normalise`] and leaves in the same shape, its headers kept.
//!
//! Every problem has `type` (`about:blank`: the status says what went wrong), `title` (the
//! status's reason phrase), `status`, `detail`, and `error`, the same text as `detail`:
//! the body errors had before problem details, kept so that clients reading `.error` go on
//! working. Some carry more members (ingest's 400 its counts, /readyz its checks).

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error answer: a status, a sentence for a person, and any extension members.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    members: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        let mut headers = Vec::new();
        if status == StatusCode::UNAUTHORIZED {
            headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        Problem {
            status,
            detail: detail.into(),
            members: Map::new(),
            headers,
        }
    }

    /// An extension member beside the standard ones.
    pub fn with(mut self, name: &str, value: Value) -> Problem {
        self.members.insert(name.to_string(), value);
        self
    }

    pub fn header(mut self, name: HeaderName, value: &'static str) -> Problem {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// `Retry-After` in seconds: nothing was done, the same request may be sent again then.
    pub fn retry_after(self, seconds: &'static str) -> Problem {
        self.header(header::RETRY_AFTER, seconds)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "error": self.detail,
        });
        let object = body.as_object_mut().expect("an object");
        for (k, v) in &self.members {
            object.entry(k.clone()).or_insert_with(|| v.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("JSON values serialize");
        let mut r = (self.status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response();
        for (name, value) in self.headers {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(CONTENT_TYPE.as_bytes()))
}

/// The longest piece of a request path quoted back in a detail.
const QUOTED_PATH: usize = 200;
/// axum's own error bodies are one line; anything longer is cut.
const FRAMEWORK_BODY: usize = 4096;

/// Turns every error response that is not yet a problem (axum's text/plain rejections of
/// a query or body, the empty 404 of an unknown route and 405 of a method a route does not
/// have) into one, keeping its status and headers.
pub async fn normalise(max_body_bytes: usize, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let mut path = req.uri().path().to_string();
    if path.len() > QUOTED_PATH {
        let cut = (0..=QUOTED_PATH).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
        path.truncate(cut);
        path.push_str("...");
    }
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, FRAMEWORK_BODY).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = match status {
        StatusCode::NOT_FOUND if text.is_empty() => format!("no such resource: {method} {path}"),
        // axum adds `Allow` after this layer: the detail points to it.
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}; `Allow` lists what is"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than http.max_body_bytes ({max_body_bytes} bytes)")
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("Error").to_string(),
        _ => text,
    };
    let mut problem = Problem::new(status, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_has_the_standard_members_the_old_error_member_and_its_extensions() {
        let p = Problem::new(StatusCode::BAD_REQUEST, "no event in the body was usable")
            .with("accepted", json!(0))
            .with("status", json!("not an override"));
        assert_eq!(
            p.body(),
            json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": "no event in the body was usable",
                "error": "no event in the body was usable",
                "accepted": 0,
            })
        );
    }

    #[test]
    fn a_401_names_its_scheme_and_a_busy_answer_says_when_to_retry() {
        let r = Problem::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let r = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy")
            .retry_after("1")
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
