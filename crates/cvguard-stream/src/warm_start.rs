//! A warm start for `serve` on HTTP ingest (issue #14): `cvguard replay --save-state DIR`
//! decides past events into the state folder's parts, exactly as `serve` would have, so
//! the service starts with every key's windows and history instead of judging nobody by
//! history for `min_history`.
//!
//! Only into a state folder that has no state yet: the parts written here are where the
//! service's log starts, and an existing log or snapshot would be contradicted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cvguard_core::{parse_event, Engine, KeyKind, RuleSet};

use crate::http::{part_name, part_of, parts_seed, per_kind, PARTS};
use crate::snapshot_store::SnapshotStore;
use crate::state_lock::{StateLock, StateLockError};

/// What in `dir` is service state: a snapshot (of a part or a partition), an ingest log,
/// or the part seed a service (running now, perhaps) made at its start.
fn existing_state(dir: &Path) -> Option<String> {
    for made_by_serve in ["parts.seed", "ingest"] {
        if dir.join(made_by_serve).exists() {
            return Some(made_by_serve.to_string());
        }
    }
    let files = |d: &Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(d).map(|r| r.flatten().collect()).unwrap_or_default()
    };
    let snapshot = files(dir)
        .into_iter()
        .find(|f| f.path().extension().is_some_and(|e| e == "snap"));
    if let Some(f) = snapshot {
        return Some(f.file_name().to_string_lossy().into_owned());
    }
    None
}

/// The parts of a state folder being filled from past events.
pub struct WarmStart {
    store: SnapshotStore,
    seed: u64,
    rules: Arc<RuleSet>,
    parts: Vec<[Option<Engine>; 4]>,
    scratch: Vec<cvguard_core::Alert>,
    /// The state folder is this process's until the history is saved.
    _lock: StateLock,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmStartError {
    #[error("{0} already holds service state ({1}); warm-start an empty state folder")]
    NotEmpty(PathBuf, String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Locked(#[from] StateLockError),
}

impl WarmStart {
    /// Opens `dir` (the config's `state.dir`), which must hold no ingest log and no
    /// snapshot yet.
    pub fn new(dir: &Path, rules: Arc<RuleSet>) -> Result<WarmStart, WarmStartError> {
        // Held until saved: a `serve` started on the same folder meanwhile is refused.
        let lock = StateLock::acquire(dir, "replay --save-state")?;
        if let Some(found) = existing_state(dir) {
            return Err(WarmStartError::NotEmpty(dir.to_path_buf(), found));
        }
        let seed = parts_seed(dir).map_err(|e| WarmStartError::Io(dir.to_path_buf(), e))?;
        let sets = per_kind(&rules);
        let parts = (0..PARTS)
            .map(|_| {
                sets.clone().map(|set| {
                    set.map(|set| {
                        let mut e = Engine::new(set);
                        e.share_keys(PARTS);
                        e
                    })
                })
            })
            .collect();
        Ok(WarmStart {
            store: SnapshotStore::new(dir),
            seed,
            rules,
            parts,
            scratch: Vec::new(),
            _lock: lock,
        })
    }

    /// Decides one event line as a shard of `serve` would (`clock_ms` standing for its
    /// arrival); unreadable lines are skipped, as ingest refuses them.
    pub fn feed(&mut self, line: &[u8], clock_ms: Option<i64>) {
        let Ok(ev) = parse_event(line, &self.rules.settings.limits) else {
            return;
        };
        for kind in KeyKind::ALL {
            let Some(key) = self.rules.key_for(kind, &ev) else {
                continue;
            };
            let p = part_of(self.seed, kind, key);
            if let Some(engine) = self.parts[p][kind.index()].as_mut() {
                self.scratch.clear();
                engine.process(&ev, clock_ms, &mut self.scratch);
            }
        }
    }

    /// Writes every part's snapshot, positioned at the start of the (empty) ingest log.
    /// Returns the keys and histories written.
    pub fn save(self) -> Result<(u64, u64), WarmStartError> {
        let (mut keys, mut histories) = (0, 0);
        for (p, engines) in self.parts.iter().enumerate() {
            let snaps: Vec<_> = engines.iter().flatten().map(Engine::snapshot).collect();
            keys += snaps.iter().map(|s| s.keys.len() as u64).sum::<u64>();
            histories += snaps.iter().map(|s| s.histories.len() as u64).sum::<u64>();
            self.store.save(&part_name(p), 0, &snaps).map_err(|e| {
                WarmStartError::Io(self.store.dir().to_path_buf(), std::io::Error::other(e.to_string()))
            })?;
        }
        Ok((keys, histories))
    }
}
