//! Keeps the incidents topic at the latest state of each incident. The worker publishes
//! an incident when it opens; afterwards its state changes in the store (acknowledged,
//! resolved, suspended by the platform, more CVs exposed), from this process or another
//! (the CLI, another instance). This feed reads those changes from the store and
//! publishes each incident again under its id, so the compacted topic ends at the latest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cvguard_config::KafkaSection;
use cvguard_store::Store;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

pub async fn run(store: Store, section: KafkaSection, stop: Arc<AtomicBool>) {
    let producer: FutureProducer = match super::client_config_without_consumer_keys(&section)
        .set("enable.idempotence", "true")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            warn!(message = "Incident feed cannot start; the incidents topic gets opening states only.", error = %e);
            return;
        }
    };
    // Changes are found by their `updated_at`; one at the same millisecond as the last
    // seen is published again rather than missed.
    let mut since = 0i64;
    while !stop.load(Ordering::Relaxed) {
        match store.changed_since(since, 500).await {
            Ok(changes) if !changes.is_empty() => {
                let full = changes.len() == 500;
                for (at, incident) in &changes {
                    let Ok(json) = serde_json::to_vec(incident) else {
                        continue;
                    };
                    let record = FutureRecord::to(&section.incidents_topic)
                        .key(&incident.id)
                        .payload(&json);
                    match producer.send(record, Duration::from_secs(10)).await {
                        Ok(_) => since = since.max(*at),
                        Err((e, _)) => {
                            warn!(message = "Publishing an incident state failed; will retry.", error = %e);
                            break;
                        }
                    }
                }
                if !full {
                    since += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => {
                warn!(message = "Incident feed cannot read the store; will retry.", error = %e);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
