//! The other instances of a Kafka consumer group. Each instance holds the keys of its own
//! partitions only; asked about a key it does not hold, or for the keys nearest a
//! threshold, it asks the others (registered in the store with their API's URL) with the
//! caller's own token, and says which instance answered.

use std::time::Duration;

use axum::http::HeaderMap;
use cvguard_store::Store;

/// Marks a request one instance sent another, so it is answered from local state and
/// never passed on again.
pub const FORWARDED: &str = "x-cvguard-forwarded";
/// How often an instance says it is alive.
const HEARTBEAT_MS: i64 = 5_000;
/// An instance not heard from for this long is gone.
pub const STALE_AFTER_MS: i64 = 4 * HEARTBEAT_MS;
/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Peers {
    /// This instance's id in the registry.
    pub me: String,
    store: Store,
    client: reqwest::Client,
}

/// One peer's answer.
pub struct PeerAnswer {
    pub instance: String,
    pub body: serde_json::Value,
}

impl Peers {
    pub fn new(me: String, store: Store) -> Peers {
        let client = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            // A peer's URL comes from the store: never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with rustls");
        Peers { me, store, client }
    }

    /// Says every 5 s, in the store, that this instance is alive at `api_url` holding
    /// `partitions()`; leaves the registry when `stop` is set.
    pub async fn heartbeat(
        self: std::sync::Arc<Self>,
        api_url: String,
        partitions: impl Fn() -> String + Send + 'static,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        let mut last = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let now = crate::handlers::now_ms();
            if now - last >= HEARTBEAT_MS {
                last = now;
                if let Err(e) = self.store.heartbeat(&self.me, &api_url, &partitions(), now).await {
                    tracing::warn!(message = "Could not record this instance in the registry.", error = %e);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.store.forget_instance(&self.me).await;
    }

    /// Whether this request came from a peer (answer it locally).
    pub fn forwarded(headers: &HeaderMap) -> bool {
        headers.contains_key(FORWARDED)
    }

    /// `GET path` on every other live instance with the caller's `Authorization`, the
    /// answers that were 200 and JSON, by instance id. A peer that fails is left out
    /// (logged): an answer from the rest is better than none.
    pub async fn ask_others(&self, path: &str, headers: &HeaderMap, now_ms: i64) -> Vec<PeerAnswer> {
        let instances = match self.store.instances(now_ms - STALE_AFTER_MS).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(message = "Could not read the instance registry.", error = %e);
                return Vec::new();
            }
        };
        let asks = instances
            .into_iter()
            .filter(|i| i.instance_id != self.me)
            .map(|i| {
                let mut req = self
                    .client
                    .get(format!("{}{path}", i.api_url.trim_end_matches('/')))
                    .header(FORWARDED, &self.me);
                if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
                    req = req.header(reqwest::header::AUTHORIZATION, auth.as_bytes());
                }
                async move {
                    let answer = async { req.send().await?.error_for_status()?.json::<serde_json::Value>().await }.await;
                    match answer {
                        Ok(body) => Some(PeerAnswer {
                            instance: i.instance_id,
                            body,
                        }),
                        Err(e) => {
                            // Without the URL's query: it may name a key.
                            tracing::warn!(message = "A peer instance did not answer.", instance = %i.instance_id, error = %e.without_url());
                            None
                        }
                    }
                }
            });
        futures::future::join_all(asks).await.into_iter().flatten().collect()
    }
}
