//! Snapshot files: one per partition (or shard), written atomically, in a versioned
//! format that records the offset the state covers.
//!
//! Format: a first line of JSON header `{"format":"cvguard-snapshot","version":2,...}`,
//! then the engines as JSON. A file of another version, or taken under other rules, is
//! ignored (and the state rebuilt from Kafka), never half-read.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use cvguard_core::engine::EngineSnapshot;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "cvguard-snapshot";
/// 2: distinct state per key and group of rules, not per rule (cvguard 0.1, issue 6).
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format: String,
    pub version: u32,
    /// What the snapshot is of: `topic/partition`, or `http/shard-i-of-n`.
    pub name: String,
    /// The next offset to consume: the state covers every offset before it.
    pub next_offset: i64,
}

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("snapshot {path}: {message}")]
    Format { path: String, message: String },
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotStore {
        SnapshotStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{file}.snap"))
    }

    /// Writes atomically: a temporary file, fsync, then rename over the old one.
    pub fn save(&self, name: &str, next_offset: i64, engines: &[EngineSnapshot]) -> Result<(), SnapshotFileError> {
        let path = self.path(name);
        let io = |source| SnapshotFileError::Io {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = path.with_extension("snap.tmp");
        let written = (|| {
            let file = File::create(&tmp).map_err(io)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let header = SnapshotHeader {
                format: FORMAT.into(),
                version: VERSION,
                name: name.into(),
                next_offset,
            };
            serde_json::to_writer(&mut w, &header).map_err(|e| io(e.into()))?;
            w.write_all(b"\n").map_err(io)?;
            serde_json::to_writer(&mut w, engines).map_err(|e| io(e.into()))?;
            let file = w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)
        })();
        if written.is_err() {
            // A half-written file (a full disk) must not hold on to the space that is short.
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Reads a snapshot; `Ok(None)` when there is none.
    pub fn load(&self, name: &str) -> Result<Option<(SnapshotHeader, Vec<EngineSnapshot>)>, SnapshotFileError> {
        let path = self.path(name);
        let shown = path.display().to_string();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SnapshotFileError::Io { path: shown, source }),
        };
        let mut r = BufReader::new(file);
        let mut first = String::new();
        r.read_line(&mut first).map_err(|source| SnapshotFileError::Io {
            path: shown.clone(),
            source,
        })?;
        let format_err = |message: String| SnapshotFileError::Format {
            path: shown.clone(),
            message,
        };
        let header: SnapshotHeader =
            serde_json::from_str(&first).map_err(|e| format_err(format!("unreadable header: {e}")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(format_err(format!(
                "format {} version {}; this build reads {FORMAT} version {VERSION}",
                header.format, header.version
            )));
        }
        if header.name != name {
            return Err(format_err(format!("is of {}, not {name}", header.name)));
        }
        let engines: Vec<EngineSnapshot> =
            serde_json::from_reader(r).map_err(|e| format_err(format!("unreadable body: {e}")))?;
        Ok(Some((header, engines)))
    }

    /// The one restore of engines from a snapshot, for Kafka partitions and HTTP parts
    /// alike: one engine per rule set in `sets`, in that order, with the position the
    /// state covers. `None` when there is no snapshot or it cannot be used (unreadable,
    /// another format, other rules or key kinds, counters that disagree with their state):
    /// such a snapshot is refused with a log line and `cvguard_snapshot_restores_total
    /// {result="refused"}`, never half-used, and the caller rebuilds from its source.
    pub fn restore(
        &self,
        name: &str,
        sets: &[std::sync::Arc<cvguard_core::RuleSet>],
        metrics: &crate::Metrics,
    ) -> Option<(i64, Vec<cvguard_core::Engine>)> {
        let refused = |why: String| {
            metrics.snapshot_restores.with_label_values(&["refused"]).inc();
            tracing::warn!(message = "Snapshot refused; rebuilding the state from the source.", snapshot = name, reason = %why);
            None
        };
        let (header, snaps) = match self.load(name) {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => return refused(e.to_string()),
        };
        if snaps.len() != sets.len() {
            return refused(format!(
                "{} engines, the rules have {} key kinds",
                snaps.len(),
                sets.len()
            ));
        }
        let engines: Result<Vec<_>, _> = sets
            .iter()
            .zip(&snaps)
            .map(|(r, s)| cvguard_core::Engine::restore(r.clone(), s))
            .collect();
        match engines {
            Ok(engines) => {
                metrics.snapshot_restores.with_label_values(&["restored"]).inc();
                tracing::info!(
                    message = "Restored snapshot.",
                    snapshot = name,
                    next_offset = header.next_offset
                );
                Some((header.next_offset, engines))
            }
            Err(e) => refused(e.to_string()),
        }
    }

    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.path(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_that_cannot_be_put_in_place_leaves_no_half_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        // Its place is taken by a folder: the rename fails, as a write on a full disk would.
        std::fs::create_dir(store.path("p")).unwrap();
        assert!(store.save("p", 5, &[snap()]).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["p.snap".to_string()], "only the folder in its way");
    }

    fn snap() -> EngineSnapshot {
        EngineSnapshot {
            rules_fingerprint: 7,
            max_ts: Some(1000),
            watermark_ts: Some(1000),
            dedupe: Vec::new(),
            stats: cvguard_core::engine::snapshot::StatsSnapshot::default(),
            keys: Vec::new(),
            histories: Vec::new(),
        }
    }

    #[test]
    fn round_trips_and_refuses_other_versions_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("state"));
        assert!(store.load("cv-events/3").unwrap().is_none());
        store.save("cv-events/3", 42, &[snap()]).unwrap();
        let (h, engines) = store.load("cv-events/3").unwrap().unwrap();
        assert_eq!(h.next_offset, 42);
        assert_eq!(engines, vec![snap()]);

        let path = store.path("cv-events/3");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"version\":2", "\"version\":99");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            store.load("cv-events/3"),
            Err(SnapshotFileError::Format { .. })
        ));
        fs::write(&path, "garbage").unwrap();
        assert!(store.load("cv-events/3").is_err());
        store.remove("cv-events/3");
        assert!(store.load("cv-events/3").unwrap().is_none());
    }
}
