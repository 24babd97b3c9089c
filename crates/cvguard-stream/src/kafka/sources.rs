//! What a repartition partition has applied: per key kind and source (input topic and
//! partition), the highest input offset whose re-keyed event it gave its engine.
//!
//! After a crash, input partitions re-process from their committed offsets and send the
//! events re-keyed since then again, under new repartition offsets. Counted twice, and
//! after later events, they moved the repartition engines' watermark and windows, so
//! org, user and ip keys decided differently after a kill -9 than without it. A record
//! at or below its source's applied offset is a repetition and is skipped. Records of
//! one source reach a repartition partition in input order (one producer per input
//! partition, idempotent; failed deliveries are a suffix and are sent again in order),
//! so the highest offset is all that needs keeping.
//!
//! The map belongs to the engines' state: it is saved beside the partition's snapshot
//! (`<name>.sources.json`, written atomically before the snapshot) under the snapshot's
//! next offset, and restored with it. The file keeps the last few generations, so a
//! crash between the two writes still finds the one that matches the snapshot on disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use cvguard_core::KeyKind;
use serde::{Deserialize, Serialize};

use super::regroup::Source;

const FORMAT: &str = "cvguard-sources";
const VERSION: u32 = 1;
/// Generations kept in the file: the snapshot on disk is the newest or, after a failed
/// or interrupted snapshot write, one of the ones before it.
const GENERATIONS: usize = 3;

/// Per source topic, the highest offset applied; most deployments have one input topic.
type ByTopic = Vec<(Box<str>, i64)>;

/// Per key kind and source partition, the highest source offset applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    by_partition: HashMap<(KeyKind, i32), ByTopic, rustc_hash::FxBuildHasher>,
}

impl Applied {
    /// Whether a record of `kind` read at `source` is new; if so, it is noted as applied.
    pub fn admit(&mut self, kind: KeyKind, source: Source<'_>) -> bool {
        let topics = self.by_partition.entry((kind, source.partition)).or_default();
        match topics.iter_mut().find(|(t, _)| **t == *source.topic) {
            Some((_, highest)) if source.offset <= *highest => false,
            Some((_, highest)) => {
                *highest = source.offset;
                true
            }
            None => {
                topics.push((source.topic.into(), source.offset));
                true
            }
        }
    }

    fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .by_partition
            .iter()
            .flat_map(|((kind, partition), topics)| {
                topics.iter().map(|(topic, offset)| Entry {
                    kind: *kind,
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: *offset,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.kind.index(), &a.topic, a.partition).cmp(&(b.kind.index(), &b.topic, b.partition)));
        out
    }

    fn from_entries(entries: &[Entry]) -> Applied {
        let mut applied = Applied::default();
        for e in entries {
            applied.admit(
                e.kind,
                Source {
                    topic: &e.topic,
                    partition: e.partition,
                    offset: e.offset,
                },
            );
        }
        applied
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kind: KeyKind,
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Generation {
    /// The snapshot's next offset this map goes with.
    next_offset: i64,
    applied: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SourcesFile {
    format: String,
    version: u32,
    name: String,
    /// Oldest first.
    generations: Vec<Generation>,
}

/// `<dir>/<name>.sources.json`, with the name made safe as the snapshot's own file name.
fn path(dir: &Path, name: &str) -> PathBuf {
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
    dir.join(format!("{file}.sources.json"))
}

fn read(path: &Path, name: &str) -> Option<SourcesFile> {
    let text = fs::read(path).ok()?;
    let file: SourcesFile = serde_json::from_slice(&text).ok()?;
    (file.format == FORMAT && file.version == VERSION && file.name == name).then_some(file)
}

/// Saves the map that goes with the snapshot of `name` at `next_offset`; call it before
/// the snapshot itself is written, and write no snapshot when it fails.
pub fn save(dir: &Path, name: &str, next_offset: i64, applied: &Applied) -> std::io::Result<()> {
    let path = path(dir, name);
    let mut generations = read(&path, name).map(|f| f.generations).unwrap_or_default();
    generations.retain(|g| g.next_offset != next_offset);
    generations.push(Generation {
        next_offset,
        applied: applied.entries(),
    });
    let excess = generations.len().saturating_sub(GENERATIONS);
    generations.drain(..excess);
    let file = SourcesFile {
        format: FORMAT.into(),
        version: VERSION,
        name: name.into(),
        generations,
    };
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)
}

/// The map saved with the snapshot of `name` at `next_offset`, if there is one.
pub fn load(dir: &Path, name: &str, next_offset: i64) -> Option<Applied> {
    let file = read(&path(dir, name), name)?;
    let generation = file.generations.iter().find(|g| g.next_offset == next_offset)?;
    Some(Applied::from_entries(&generation.applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(topic: &str, partition: i32, offset: i64) -> Source<'_> {
        Source {
            topic,
            partition,
            offset,
        }
    }

    #[test]
    fn a_record_at_or_below_its_sources_highest_offset_is_a_repetition() {
        let mut a = Applied::default();
        assert!(a.admit(KeyKind::OrgId, src("events", 0, 10)));
        assert!(a.admit(KeyKind::OrgId, src("events", 0, 11)));
        assert!(!a.admit(KeyKind::OrgId, src("events", 0, 11)), "the same record again");
        assert!(
            !a.admit(KeyKind::OrgId, src("events", 0, 3)),
            "sent again after a crash"
        );
        // The same input event re-keyed by another kind, another partition or topic is new.
        assert!(a.admit(KeyKind::Ip, src("events", 0, 11)));
        assert!(a.admit(KeyKind::OrgId, src("events", 1, 11)));
        assert!(a.admit(KeyKind::OrgId, src("other", 0, 11)));
        assert!(a.admit(KeyKind::OrgId, src("events", 0, 12)));
    }

    #[test]
    fn the_map_comes_back_with_the_snapshot_it_was_saved_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applied::default();
        assert!(load(dir.path(), "rep/3", 5).is_none(), "nothing saved yet");
        a.admit(KeyKind::OrgId, src("events", 0, 10));
        save(dir.path(), "rep/3", 5, &a).unwrap();
        let at_5 = a.clone();
        for next in 6..10 {
            a.admit(KeyKind::UserId, src("events", 2, next));
            save(dir.path(), "rep/3", next, &a).unwrap();
        }
        assert_eq!(load(dir.path(), "rep/3", 9), Some(a.clone()));
        assert!(
            load(dir.path(), "rep/3", 7).is_some(),
            "the generations before are kept"
        );
        assert!(load(dir.path(), "rep/3", 5).is_none(), "only the last few");
        assert!(load(dir.path(), "rep/4", 9).is_none(), "another partition's");
        // The same offset saved again replaces its generation.
        save(dir.path(), "rep/3", 9, &at_5).unwrap();
        assert_eq!(load(dir.path(), "rep/3", 9), Some(at_5));
        // A damaged file is no map, not a wrong one.
        fs::write(path(dir.path(), "rep/3"), b"{").unwrap();
        assert!(load(dir.path(), "rep/3", 9).is_none());
    }
}
