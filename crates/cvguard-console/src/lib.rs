//! The SOC's web console (docs/CONSOLE.md): one HTML page, a few hand-written ES modules,
//! one style sheet and an SVG icon, all compiled into the binary, served at `/ui/` on the
//! API's listener. The assets need no token; every piece of data comes from the public API,
//! which the page calls with the analyst's bearer token.
//!
//! Every answer carries the same security headers: a Content-Security-Policy that allows
//! only this origin's own scripts, styles and connections (no inline script or style, no
//! frames, no forms posting anywhere), `nosniff`, no referrer, and no framing.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The policy for every console answer. `connect-src 'self'` is what the page's `fetch`
/// calls to the API need; `img-src data:` covers the icon a browser may inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console serves, under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("incidents.js", JS),
    asset!("views.js", JS),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

const INDEX: &[u8] = include_bytes!("../assets/index.html");

/// The paths the console answers, for tests and documentation: `/ui/` and each asset.
pub fn paths() -> Vec<String> {
    std::iter::once("/ui/".to_string())
        .chain(ASSETS.iter().map(|a| format!("/ui/{}", a.path)))
        .collect()
}

/// The console's routes: `/ui` redirects to `/ui/`, which serves the page; its assets
/// are beside it. Merge it into the API's router.
pub fn router() -> Router {
    let mut router = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { respond(INDEX, "text/html; charset=utf-8", "no-store") }),
        );
    for asset in ASSETS {
        // `no-cache`: the browser revalidates, so a new binary's files are never mixed
        // with an old page's.
        router = router.route(
            &format!("/ui/{}", asset.path),
            get(move || async move { respond(asset.body, asset.content_type, "no-cache") }),
        );
    }
    router.layer(axum::middleware::map_response(security_headers))
}

fn respond(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

/// The headers every console answer carries, the redirect included.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_the_security_headers() {
        for path in paths() {
            let r = get(&path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert!(h.contains_key(header::CONTENT_TYPE));
        }
        assert_eq!(get("/ui/").await.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn ui_redirects_to_the_page_and_the_root_is_left_alone() {
        let r = get("/ui").await;
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[header::LOCATION], "/ui/");
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(get("/").await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() {
        let html = std::str::from_utf8(INDEX).unwrap();
        let lower = html.to_ascii_lowercase();
        for tag in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(open.contains("src=\"/ui/"), "a script without a src of ours: {open}");
            assert!(tag[open.len() + 1..].starts_with("</script>"), "inline script: {open}");
        }
        assert!(!lower.contains("<style"), "inline <style>");
        assert!(!lower.contains(" style="), "a style attribute");
        let handler = lower.split(|c: char| c.is_whitespace()).find(|w| {
            w.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()))
        });
        assert_eq!(handler, None, "an inline event handler");
        assert!(
            !lower.contains("http://") && !lower.contains("https://"),
            "an outside URL"
        );
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<String> = paths();
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for (at, _) in text.match_indices("from \"") {
                let quoted = &text[at + 6..];
                let target = &quoted[..quoted.find('"').unwrap()];
                let target = target.strip_prefix("./").expect("relative imports only");
                assert!(
                    served.contains(&format!("/ui/{target}")),
                    "{} imports {target}, which is not served",
                    asset.path
                );
            }
        }
    }
}
