//! One process per state folder. Two `serve` processes on one `state.dir` would both
//! append to the ingest log and overwrite each other's snapshots: acknowledged events
//! lost with no error anywhere. The first to start holds an exclusive lock on
//! `state.dir/LOCK` for as long as it lives; a second one is refused before it opens
//! anything. The kernel drops the lock when the holder exits, however it exits (a kill -9
//! included), so a stale lock file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state folder.
pub const LOCK_FILE: &str = "LOCK";

/// Held for the life of the process that owns the folder.
#[derive(Debug)]
pub struct StateLock {
    // Dropping the file releases the lock.
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    #[error(
        "the state folder {dir} is in use by another cvguard process{holder}; \
         each running instance needs its own [state] dir"
    )]
    Held { dir: String, holder: String },
    #[error("locking the state folder {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

impl StateLock {
    /// Creates the folder if needed and takes its lock, or says who holds it. `what`
    /// names the holder in the file (`serve`, `replay --save-state`) for the next
    /// process's message.
    pub fn acquire(dir: &Path, what: &str) -> Result<StateLock, StateLockError> {
        let io = |source| StateLockError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let text = text.trim();
                let holder = if text.is_empty() {
                    String::new()
                } else {
                    format!(" ({text})")
                };
                return Err(StateLockError::Held {
                    dir: dir.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message a second process prints. Written after the lock
        // is ours, so it never names a process that did not get it.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "pid {}, cvguard {what}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "serve").unwrap();
        // Locks are per open file description: a second open in this process conflicts
        // as a second process would.
        let err = StateLock::acquire(dir.path(), "replay").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StateLockError::Held { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}, cvguard serve", std::process::id())),
            "{message}"
        );
        drop(first);
        StateLock::acquire(dir.path(), "replay").expect("free once the holder is gone");
    }
}
