//! The HTTP ingest log: what a 202 promises. Every accepted batch is appended here and
//! fsynced before the request is answered; the shards decide from it, their snapshots
//! record how far into it they are, and a restart replays it from there. Segments wholly
//! behind every snapshot are deleted.
//!
//! On disk: segment files `<first sequence number, 20 digits>.log`, each a run of
//! records `[payload length u32][crc32 u32][seq u64][clock ms i64][payload]`, little
//! endian, the CRC over seq, clock and payload. A record cut short by a crash (never one
//! that was acknowledged, since acknowledgement follows the fsync) is cut off at open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

const HEADER: usize = 4 + 4 + 8 + 8;
/// Larger than any body the API takes; a length above it is a torn or foreign record.
const MAX_RECORD: u32 = 1 << 30;

pub struct IngestLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// A new segment starts past this size, so trimming frees space in steps of about it.
    segment_bytes: u64,
}

struct Writer {
    file: File,
    /// First sequence number of the open segment.
    segment_start: u64,
    /// Bytes of the open segment that hold whole records.
    len: u64,
    next_seq: u64,
}

/// One record read back.
pub struct Record<'a> {
    pub seq: u64,
    pub clock_ms: i64,
    pub payload: &'a [u8],
}

impl IngestLog {
    /// Opens (or creates) the log in `dir`, cutting off a torn last record.
    pub fn open(dir: impl Into<PathBuf>, segment_bytes: u64) -> io::Result<IngestLog> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let segments = segments(&dir)?;
        let writer = match segments.last() {
            Some(&start) => {
                let path = segment_path(&dir, start);
                let (len, next_seq) = scan(&path, start)?;
                let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
                if file.metadata()?.len() > len {
                    warn!(message = "Ingest log ends in a torn record (a crash mid-write); cutting it off.",
                        segment = %path.display(), valid_bytes = len);
                    file.set_len(len)?;
                    file.sync_all()?;
                }
                file.seek(SeekFrom::Start(len))?;
                Writer {
                    file,
                    segment_start: start,
                    len,
                    next_seq,
                }
            }
            None => Writer {
                file: create_segment(&dir, 0)?,
                segment_start: 0,
                len: 0,
                next_seq: 0,
            },
        };
        Ok(IngestLog {
            dir,
            writer: Mutex::new(writer),
            segment_bytes,
        })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.writer.lock().expect("ingest log").next_seq
    }

    /// Appends one record and fsyncs it, then runs `then` with its sequence number while
    /// still holding the log, so that whatever `then` hands on goes in log order. On an
    /// error nothing is appended (a partial write is cut off again) and `then` is not run.
    pub fn append<T>(&self, clock_ms: i64, payload: &[u8], then: impl FnOnce(u64) -> T) -> io::Result<T> {
        let mut w = self.writer.lock().expect("ingest log");
        if w.len >= self.segment_bytes {
            let start = w.next_seq;
            w.file = create_segment(&self.dir, start)?;
            w.segment_start = start;
            w.len = 0;
        }
        let seq = w.next_seq;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|n| *n <= MAX_RECORD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ingest batch too large"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(&clock_ms.to_le_bytes());
        crc.update(payload);
        let mut head = [0u8; HEADER];
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16..24].copy_from_slice(&clock_ms.to_le_bytes());
        let written = w
            .file
            .write_all(&head)
            .and_then(|()| w.file.write_all(payload))
            .and_then(|()| w.file.sync_data());
        if let Err(e) = written {
            // A full disk can leave part of the record behind: cut back to the last whole
            // one, so the next append (once there is room) starts on a record boundary.
            let at = w.len;
            let _ = w
                .file
                .set_len(at)
                .and_then(|()| w.file.seek(SeekFrom::Start(at)).map(|_| ()));
            return Err(e);
        }
        w.len += (HEADER + payload.len()) as u64;
        w.next_seq += 1;
        Ok(then(seq))
    }

    /// Calls `f` for every record from `from` on, in order; stops at the first error `f`
    /// returns and gives it back.
    pub fn read_from<E>(&self, from: u64, mut f: impl FnMut(Record<'_>) -> Result<(), E>) -> io::Result<Result<(), E>> {
        let end = self.next_seq();
        let segments = segments(&self.dir)?;
        let mut buf = Vec::new();
        for (i, &start) in segments.iter().enumerate() {
            if segments.get(i + 1).is_some_and(|&next| next <= from) {
                continue;
            }
            let mut r = BufReader::with_capacity(1 << 20, File::open(segment_path(&self.dir, start))?);
            while let Some((seq, clock_ms)) = read_record(&mut r, &mut buf)? {
                if seq >= end {
                    return Ok(Ok(()));
                }
                if seq >= from {
                    if let Err(e) = f(Record {
                        seq,
                        clock_ms,
                        payload: &buf,
                    }) {
                        return Ok(Err(e));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    /// Deletes the segments whose every record comes before `seq`. The open segment stays.
    pub fn trim_before(&self, seq: u64) -> io::Result<usize> {
        let open = self.writer.lock().expect("ingest log").segment_start;
        let segments = segments(&self.dir)?;
        let mut removed = 0;
        for pair in segments.windows(2) {
            let (start, next) = (pair[0], pair[1]);
            if next <= seq && start < open {
                fs::remove_file(segment_path(&self.dir, start))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes on disk, for the metric.
    pub fn bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| fs::metadata(segment_path(&self.dir, *s)).ok())
            .map(|m| m.len())
            .sum()
    }
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(start) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
            found.push(start);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn create_segment(dir: &Path, start: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(segment_path(dir, start))?;
    // The new name must survive a crash too, or its records would vanish with it.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The length of the whole records in a segment, and the sequence number after them.
fn scan(path: &Path, start: u64) -> io::Result<(u64, u64)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut buf = Vec::new();
    let (mut len, mut next) = (0u64, start);
    while let Some((seq, _)) = read_record(&mut r, &mut buf)? {
        if seq != next {
            break;
        }
        len += (HEADER + buf.len()) as u64;
        next = seq + 1;
    }
    Ok((len, next))
}

/// Reads one whole, intact record into `buf`; `None` at the end or at a torn record.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<(u64, i64)>> {
    let mut head = [0u8; HEADER];
    if !read_full(r, &mut head)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let clock_ms = i64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    if len > MAX_RECORD {
        return Ok(None);
    }
    buf.clear();
    buf.resize(len as usize, 0);
    if !read_full(r, buf)? {
        return Ok(None);
    }
    let mut check = crc32fast::Hasher::new();
    check.update(&head[8..24]);
    check.update(buf);
    Ok((check.finalize() == crc).then_some((seq, clock_ms)))
}

/// Fills `buf`; false when the input ends first (a torn record or the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(log: &IngestLog, from: u64) -> Vec<(u64, i64, Vec<u8>)> {
        let mut out = Vec::new();
        log.read_from(from, |r| {
            out.push((r.seq, r.clock_ms, r.payload.to_vec()));
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
        out
    }

    #[test]
    fn records_come_back_in_order_from_any_point_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
        for i in 0..5u8 {
            assert_eq!(
                log.append(1000 + i64::from(i), &[i; 3], |seq| seq).unwrap(),
                u64::from(i)
            );
        }
        assert_eq!(all(&log, 3), vec![(3, 1003, vec![3; 3]), (4, 1004, vec![4; 3])]);
        drop(log);
        let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
        assert_eq!(log.next_seq(), 5);
        assert_eq!(all(&log, 0).len(), 5);
        assert_eq!(log.append(2000, b"x", |seq| seq).unwrap(), 5);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_goes_on_from_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
        log.append(1, b"first", |_| ()).unwrap();
        log.append(2, b"second", |_| ()).unwrap();
        drop(log);
        let path = segment_path(dir.path(), 0);
        let whole = fs::metadata(&path).unwrap().len();
        // A crash mid-write: half a header and some payload, or a flipped byte.
        for tail in [&b"\x05\x00\x00"[..], &[9u8; 40][..]] {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(tail).unwrap();
            drop(f);
            let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), whole);
            assert_eq!(log.next_seq(), 2);
            assert_eq!(all(&log, 0).len(), 2);
        }
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
        assert_eq!(
            all(&log, 0).iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
            vec![b"first".to_vec()]
        );
        assert_eq!(log.append(3, b"third", |seq| seq).unwrap(), 1);
    }

    #[test]
    fn trimming_removes_only_segments_wholly_behind() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::open(dir.path(), 64 << 20).unwrap();
        log.append(1, b"a", |_| ()).unwrap();
        // Force segments at 1 and 3 as a long run would.
        log.writer.lock().unwrap().len = 64 << 20;
        log.append(2, b"b", |_| ()).unwrap();
        log.append(3, b"c", |_| ()).unwrap();
        log.writer.lock().unwrap().len = 64 << 20;
        log.append(4, b"d", |_| ()).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![0, 1, 3]);
        assert_eq!(log.trim_before(2).unwrap(), 1);
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 3]);
        assert_eq!(log.trim_before(100).unwrap(), 1, "the open segment stays");
        assert_eq!(all(&log, 0).iter().map(|r| r.0).collect::<Vec<_>>(), vec![3]);
    }
}
