//! Keeps the incidents topic at the latest state of each incident. The worker publishes
//! an incident when it opens; afterwards its state changes in the store (acknowledged,
//! resolved, suspended by the platform, more CVs exposed), from this process or another
//! (the CLI, another instance). This feed reads those changes from the store and
//! publishes each incident again under its id, so the compacted topic ends at the latest.
//!
//! Changes are found by the store's `updated_at` (epoch ms, the writer's clock). The feed
//! remembers how far it published ([`Position`]) in a small file in the state folder,
//! written atomically after each page, so a restart publishes only what changed since,
//! not every incident again. A change can commit after a later one was read (a slower
//! transaction, another writer's clock): the feed reads again from a margin before its
//! newest change and skips what it already published at the same `updated_at`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cvguard_config::KafkaSection;
use cvguard_store::Store;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How far before its newest published change the feed reads again, for changes that
/// committed late. Changes older than this when they commit are published with the next
/// change of the same incident.
const MARGIN_MS: i64 = 5_000;
/// Incidents read per query.
const PAGE: i64 = 500;
const FORMAT: &str = "cvguard-incident-feed";

/// What the feed has published: the newest `updated_at`, and which (incident, updated_at)
/// it published within the margin before it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    format: String,
    /// The newest `updated_at` published.
    pub newest: i64,
    /// (updated_at, incident id) published at or after `newest - MARGIN_MS`.
    recent: BTreeSet<(i64, String)>,
}

impl Position {
    /// Where the next read starts.
    pub fn read_from(&self) -> i64 {
        self.newest - MARGIN_MS
    }

    /// Whether this state of the incident is still to be published.
    pub fn is_new(&self, updated_at: i64, id: &str) -> bool {
        updated_at >= self.read_from() && !self.recent.contains(&(updated_at, id.to_string()))
    }

    pub fn published(&mut self, updated_at: i64, id: &str) {
        self.recent.insert((updated_at, id.to_string()));
        self.newest = self.newest.max(updated_at);
        let from = self.read_from();
        self.recent.retain(|(at, _)| *at >= from);
    }

    /// The position saved in `path`; none (publish everything) when there is no file or it
    /// cannot be read.
    pub fn load(path: &Path) -> Position {
        let read = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Position>(&b).ok())
            .filter(|p| p.format == FORMAT);
        match read {
            Some(p) => p,
            None => {
                if path.exists() {
                    warn!(message = "Incident feed position unreadable; publishing every incident again.",
                        path = %path.display());
                }
                Position {
                    format: FORMAT.into(),
                    ..Position::default()
                }
            }
        }
    }

    /// Writes atomically: a temporary file, fsync, then rename over the old one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

/// The file in the state folder that keeps the feed's position.
pub fn position_file(state_dir: &Path) -> PathBuf {
    state_dir.join("incident-feed.json")
}

/// Runs the feed until `stop`, keeping its position in `file` (see [`position_file`]).
pub async fn run_with_position(store: Store, section: KafkaSection, file: PathBuf, stop: Arc<AtomicBool>) {
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
    let mut position = Position::load(&file);
    info!(
        message = "Incident feed started.",
        from_updated_at = position.read_from()
    );
    let mut limit = PAGE;
    let mut cursor = position.read_from();
    while !stop.load(Ordering::Relaxed) {
        let changes = match store.changed_since(cursor, limit).await {
            Ok(c) => c,
            Err(e) => {
                warn!(message = "Incident feed cannot read the store; will retry.", error = %e);
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let full = changes.len() as i64 == limit;
        let mut failed = false;
        let mut sent = 0;
        for (at, incident) in &changes {
            if !position.is_new(*at, &incident.id) {
                continue;
            }
            let Ok(json) = serde_json::to_vec(incident) else {
                continue;
            };
            let record = FutureRecord::to(&section.incidents_topic)
                .key(&incident.id)
                .payload(&json);
            match producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    position.published(*at, &incident.id);
                    sent += 1;
                }
                Err((e, _)) => {
                    warn!(message = "Publishing an incident state failed; will retry.", error = %e);
                    failed = true;
                    break;
                }
            }
        }
        if sent > 0 {
            if let Err(e) = position.save(&file) {
                warn!(message = "Saving the incident feed position failed; a restart publishes more again.",
                    path = %file.display(), error = %e);
            }
        }
        let last = changes.last().map(|(at, _)| *at);
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else if full {
            // More on the next page. A page whose rows all share one `updated_at` would
            // start at the same place again: read a larger one instead.
            match last {
                Some(at) if at > cursor => {
                    cursor = at;
                    limit = PAGE;
                }
                _ => limit *= 2,
            }
            continue;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        cursor = position.read_from();
        limit = PAGE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_published_once_and_a_late_commit_within_the_margin_still_is() {
        let mut p = Position::load(Path::new("/nonexistent/feed.json"));
        assert!(p.read_from() <= 0, "a first start publishes everything");
        assert!(p.is_new(1_000, "a"));
        p.published(1_000, "a");
        p.published(20_000, "b");
        assert!(!p.is_new(20_000, "b"), "the same state again");
        assert!(p.is_new(20_001, "b"), "a later state of the same incident");
        assert!(
            p.is_new(20_000, "c"),
            "another incident changed in the same millisecond"
        );
        assert!(p.is_new(17_000, "d"), "committed late, within the margin");
        assert!(!p.is_new(14_000, "e"), "older than the margin: not read again");
        assert_eq!(p.read_from(), 15_000);
        assert!(
            !p.recent.contains(&(1_000, "a".into())),
            "the set keeps only the margin"
        );
    }

    #[test]
    fn the_position_survives_a_restart_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = position_file(&dir.path().join("state"));
        let mut p = Position::load(&path);
        p.published(50_000, "x");
        p.published(50_000, "y");
        p.save(&path).unwrap();
        let back = Position::load(&path);
        assert_eq!(back, p);
        assert!(!back.is_new(50_000, "x"));
        assert!(back.is_new(50_000, "z"));
        std::fs::write(&path, b"{").unwrap();
        assert!(Position::load(&path).read_from() <= 0, "unreadable: publish everything");
    }
}
