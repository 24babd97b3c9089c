//! Bearer tokens: stored as SHA-256 hashes, compared in constant time, each with a role.
//! 401 when the token is missing or unknown, 403 when its role is not enough. The scheme
//! `Bearer` is matched without regard to case (RFC 7235). Handlers say what they need
//! once, with the [`RequireRole`] extractor; it runs before the query or body is read.

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use cvguard_config::{Role, TokenSpec};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(String, Role, [u8; 32])>,
}

impl Tokens {
    pub fn new(specs: &[TokenSpec]) -> Tokens {
        Tokens {
            entries: specs
                .iter()
                .filter_map(|t| {
                    let bytes: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                    Some((t.name.clone(), t.role, bytes))
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compares the token's hash with every entry in constant time and without an early
    /// exit or a branch on the result, so the time taken says nothing about which token,
    /// if any, matched.
    fn find(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // 1-based index of the match, 0 for none, chosen without branching.
        let mut found = 0u32;
        for (i, (_, _, expected)) in self.entries.iter().enumerate() {
            found.conditional_assign(&(i as u32 + 1), expected.ct_eq(&hash));
        }
        let (name, role, _) = self.entries.get((found as usize).checked_sub(1)?)?;
        Some(Caller {
            name: name.clone(),
            role: *role,
        })
    }

    /// What a request's `Authorization` header carries after `Bearer ` (any case).
    fn bearer(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim_start().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The caller of a request that needs `needed`, or the status to answer.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        needed: Role,
    ) -> Result<Caller, (StatusCode, &'static str)> {
        if self.is_empty() {
            // No tokens configured: loopback clients only, with every role. An IPv4 client
            // of a `[::]` listener arrives as ::ffff:a.b.c.d, so compare its canonical form.
            // A page on another site can make a browser here send requests to a name of its
            // own that it points at 127.0.0.1 (DNS rebinding): answer only requests
            // addressed to an IP or `localhost`.
            if !addressed_to_this_host(headers) {
                return Err((
                    StatusCode::FORBIDDEN,
                    "no API tokens are configured: only requests addressed to an IP address or localhost are answered",
                ));
            }
            return if peer.ip().to_canonical().is_loopback() {
                Ok(Caller {
                    name: "loopback".into(),
                    role: Role::Admin,
                })
            } else {
                Err((
                    StatusCode::FORBIDDEN,
                    "no API tokens are configured: this API answers loopback clients only",
                ))
            };
        }
        let token =
            Self::bearer(headers).ok_or((StatusCode::UNAUTHORIZED, "expected `Authorization: Bearer <token>`"))?;
        let caller = self.find(token).ok_or((StatusCode::UNAUTHORIZED, "unknown token"))?;
        if caller.role.allows(needed) {
            Ok(caller)
        } else {
            Err((StatusCode::FORBIDDEN, "this token's role may not do that"))
        }
    }
}

/// The role an endpoint needs, as a type, for [`RequireRole`].
pub trait Needs {
    const ROLE: Role;
}

/// Reads incidents, accounts and rules.
pub struct Viewer;
/// Changes incidents.
pub struct Responder;
/// Posts events.
pub struct Ingest;

impl Needs for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Needs for Responder {
    const ROLE: Role = Role::Responder;
}
impl Needs for Ingest {
    const ROLE: Role = Role::Ingest;
}

/// The caller of a request whose token allows `R`'s role; else the request is answered
/// 401 or 403 (a problem) before any other extractor runs, so its body is never read.
pub struct RequireRole<R>(pub Caller, pub PhantomData<R>);

impl<R: Needs> FromRequestParts<crate::ApiState> for RequireRole<R> {
    type Rejection = crate::problem::Problem;

    async fn from_request_parts(parts: &mut Parts, state: &crate::ApiState) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() else {
            // The router must be served with `into_make_service_with_connect_info`.
            return Err(crate::problem::Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server cannot tell the client's address",
            ));
        };
        if cross_site_change(parts) {
            return Err(crate::problem::Problem::new(
                StatusCode::FORBIDDEN,
                "a cross-site request may not change anything",
            ));
        }
        state
            .tokens
            .authorize(&parts.headers, peer, R::ROLE)
            .map(|caller| RequireRole(caller, PhantomData))
            .map_err(|(code, message)| crate::problem::Problem::new(code, message))
    }
}

/// A request that would change something, sent by a browser on behalf of another site.
/// Bearer tokens are never sent by a browser on its own, so a forged request carries none
/// (401 already); this refuses it even when no tokens are configured and a loopback
/// browser would otherwise be admin. Clients that are not browsers send no
/// `Sec-Fetch-Site`.
fn cross_site_change(parts: &Parts) -> bool {
    let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    let site = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    // Browsers without Sec-Fetch-Site still send Origin on a cross-origin POST.
    let origin = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let foreign_origin = origin.is_some_and(|o| o == "null" || o.split_once("://").map(|(_, a)| a) != host);
    !safe && (matches!(site, Some("cross-site") | Some("same-site")) || foreign_origin)
}

/// Whether the request's `Host` is an IP address or `localhost` (any port), as a client
/// of this machine would write it; a missing Host (HTTP/1.0) counts as such.
fn addressed_to_this_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(axum::http::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A fresh random token (32 bytes from the OS, hex) and its SHA-256.
pub fn new_token() -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token = format!("cvg_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder().method(method).uri("/v1/incidents/x/ack");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_browser_request_from_another_origin_may_not_change_anything() {
        let host = ("host", "127.0.0.1:8088");
        assert!(
            !cross_site_change(&parts("POST", &[host])),
            "curl, a platform: no browser headers"
        );
        assert!(!cross_site_change(&parts(
            "POST",
            &[host, ("origin", "http://127.0.0.1:8088")]
        )));
        assert!(!cross_site_change(&parts(
            "POST",
            &[host, ("sec-fetch-site", "same-origin")]
        )));
        for foreign in [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "http://127.0.0.1:9999")],
            vec![host, ("origin", "null")],
        ] {
            assert!(cross_site_change(&parts("POST", &foreign)), "{foreign:?}");
            assert!(
                !cross_site_change(&parts("GET", &foreign)),
                "reads are not changes: {foreign:?}"
            );
        }
    }

    #[test]
    fn without_tokens_only_requests_addressed_to_an_ip_or_localhost_are_answered() {
        let t = Tokens::new(&[]);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let with_host = |host: &str| {
            let mut m = HeaderMap::new();
            m.insert("host", host.parse().unwrap());
            m
        };
        for ok in [
            "127.0.0.1:8088",
            "localhost:8088",
            "LOCALHOST",
            "[::1]:8088",
            "10.1.2.3",
        ] {
            assert!(t.authorize(&with_host(ok), peer, Role::Admin).is_ok(), "{ok}");
        }
        for rebound in ["evil.example:8088", "evil.example", "127.0.0.1.nip.io:8088"] {
            assert_eq!(
                t.authorize(&with_host(rebound), peer, Role::Viewer).unwrap_err().0,
                StatusCode::FORBIDDEN,
                "{rebound}"
            );
        }
    }

    #[test]
    fn tokens_map_to_roles_and_statuses() {
        let (viewer, vh) = new_token().unwrap();
        let (ingest, ih) = new_token().unwrap();
        assert_ne!(viewer, ingest);
        let t = Tokens::new(&[
            TokenSpec {
                name: "soc".into(),
                role: Role::Viewer,
                sha256: vh,
            },
            TokenSpec {
                name: "platform".into(),
                role: Role::Ingest,
                sha256: ih,
            },
        ]);
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let h = |tok: &str| {
            let mut m = HeaderMap::new();
            m.insert("authorization", format!("Bearer {tok}").parse().unwrap());
            m
        };
        assert_eq!(t.authorize(&h(&viewer), peer, Role::Viewer).unwrap().name, "soc");
        assert_eq!(
            t.authorize(&h(&viewer), peer, Role::Responder).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            t.authorize(&h("nope"), peer, Role::Viewer).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            t.authorize(&HeaderMap::new(), peer, Role::Viewer).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(t.authorize(&h(&ingest), peer, Role::Ingest).unwrap().name, "platform");
        assert_eq!(
            t.authorize(&h(&ingest), peer, Role::Viewer).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let open = Tokens::new(&[]);
        assert!(open
            .authorize(&HeaderMap::new(), "127.0.0.1:1".parse().unwrap(), Role::Admin)
            .is_ok());
        assert_eq!(
            open.authorize(&HeaderMap::new(), peer, Role::Viewer).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    fn two_tokens() -> (Tokens, String, String) {
        let (a, ah) = new_token().unwrap();
        let (b, bh) = new_token().unwrap();
        let t = Tokens::new(&[
            TokenSpec {
                name: "first".into(),
                role: Role::Viewer,
                sha256: ah,
            },
            TokenSpec {
                name: "second".into(),
                role: Role::Admin,
                sha256: bh,
            },
        ]);
        (t, a, b)
    }

    fn auth(value: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let (t, a, b) = two_tokens();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let c = t.authorize(&auth(&format!("{scheme} {b}")), peer, Role::Admin).unwrap();
            assert_eq!(c.name, "second", "{scheme}");
        }
        assert_eq!(
            t.authorize(&auth(&format!("bearer   {a}")), peer, Role::Viewer)
                .unwrap()
                .name,
            "first"
        );
        for bad in [
            format!("Basic {a}"),
            format!("Bearer{a}"),
            "bearer ".to_string(),
            a.clone(),
        ] {
            assert_eq!(
                t.authorize(&auth(&bad), peer, Role::Viewer).unwrap_err().0,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }
    }

    #[test]
    fn every_entry_is_found_by_its_own_token_only() {
        let (t, a, b) = two_tokens();
        assert_eq!(t.find(&a).unwrap().name, "first");
        assert_eq!(t.find(&b).unwrap().name, "second");
        assert!(t.find("cvg_nope").is_none());
        assert!(Tokens::new(&[]).find(&a).is_none());
    }

    #[test]
    fn an_ipv4_mapped_loopback_client_is_loopback_and_a_mapped_remote_one_is_not() {
        let open = Tokens::new(&[]);
        let ok = |peer: &str| open.authorize(&HeaderMap::new(), peer.parse().unwrap(), Role::Admin);
        assert!(ok("[::ffff:127.0.0.1]:40000").is_ok());
        assert!(ok("[::1]:40000").is_ok());
        assert!(ok("127.0.0.1:40000").is_ok());
        assert_eq!(ok("[::ffff:10.0.0.1]:40000").unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(ok("[2001:db8::1]:40000").unwrap_err().0, StatusCode::FORBIDDEN);
    }
}
