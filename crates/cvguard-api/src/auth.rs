//! Bearer tokens: stored as SHA-256 hashes, compared in constant time, each with a role.
//! 401 when the token is missing or unknown, 403 when its role is not enough.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use cvguard_config::{Role, TokenSpec};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

    /// Checks every entry (no early exit), so the time taken says nothing about which
    /// token, if any, matched.
    fn find(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, role, expected) in &self.entries {
            if bool::from(expected.ct_eq(&hash)) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    /// The caller of a request that needs `needed`, or the status to answer.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        needed: Role,
    ) -> Result<Caller, (StatusCode, &'static str)> {
        if self.is_empty() {
            // No tokens configured: loopback clients only, with every role.
            return if peer.ip().is_loopback() {
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
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or((StatusCode::UNAUTHORIZED, "missing bearer token"))?;
        let caller = self.find(token).ok_or((StatusCode::UNAUTHORIZED, "unknown token"))?;
        if caller.role.allows(needed) {
            Ok(caller)
        } else {
            Err((StatusCode::FORBIDDEN, "this token's role may not do that"))
        }
    }
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
}
