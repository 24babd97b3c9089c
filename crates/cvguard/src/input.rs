//! Reading NDJSON: plain or gzip, from a file or stdin, one bounded line at a time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

/// What an opened input says about how far it has been read.
pub struct Source {
    /// The file's size on disk (compressed, for a gzip file); unknown for stdin.
    pub size: Option<u64>,
    /// Bytes read from the file itself so far (compressed, for a gzip file): what to
    /// compare with `size`.
    pub read: Arc<AtomicU64>,
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens `path` (`-` for stdin), decompressing gzip when the data starts with its magic
/// bytes, whatever the file is called. Returns the reader and how far it has been read.
pub fn open(path: &Path) -> io::Result<(Box<dyn BufRead>, Source)> {
    let read = Arc::new(AtomicU64::new(0));
    let (inner, size): (Box<dyn Read>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path)?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let raw = Counted {
        inner,
        read: read.clone(),
    };
    let source = Source { size, read };
    let mut buffered = BufReader::with_capacity(1 << 20, raw);
    let is_gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if is_gzip {
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buffered))),
            source,
        ))
    } else {
        Ok((Box::new(buffered), source))
    }
}

/// One line as read.
pub enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than the limit; its bytes were skipped, not kept.
    TooLong,
}

/// Splits a stream into lines of at most `max` bytes without ever holding a longer one
/// in memory, so one giant line cannot exhaust memory or stall the stream.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    /// Bytes consumed from the underlying (decompressed) stream.
    pub consumed: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(4096),
            max,
            consumed: 0,
        }
    }

    /// The next non-empty line, without its `\n` or `\r\n`; `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            self.buf.clear();
            let mut too_long = false;
            let mut saw_any = false;
            loop {
                let chunk = self.inner.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                saw_any = true;
                let (take, done) = match memchr_newline(chunk) {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                if !too_long {
                    if self.buf.len() + take > self.max + 2 {
                        too_long = true;
                        self.buf.clear();
                    } else {
                        self.buf.extend_from_slice(&chunk[..take]);
                    }
                }
                self.inner.consume(take);
                self.consumed += take as u64;
                if done {
                    break;
                }
            }
            if !saw_any {
                return Ok(None);
            }
            if too_long {
                return Ok(Some(Line::TooLong));
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line::Text(&self.buf)));
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, max: usize) -> Vec<String> {
        let mut r = LineReader::new(io::Cursor::new(input.as_bytes().to_vec()), max);
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(match line {
                Line::Text(t) => String::from_utf8_lossy(t).into_owned(),
                Line::TooLong => "<too long>".into(),
            });
        }
        out
    }

    #[test]
    fn splits_skips_blank_lines_and_bounds_length() {
        assert_eq!(lines("a\r\n\n  \nbb\nccc", 10), vec!["a", "bb", "ccc"]);
        assert_eq!(
            lines("short\nthis one is too long\nok\n", 8),
            vec!["short", "<too long>", "ok"]
        );
    }

    /// Progress compares like with like: a gzip file's compressed bytes read with its
    /// compressed size, not the decompressed stream with it ("802 MiB / 123 MiB").
    #[test]
    fn a_gzip_input_reports_compressed_bytes_read_against_its_size() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..20_000 {
            writeln!(gz, "{{\"ts\":{i},\"account_id\":\"a\",\"action\":\"cv_view\"}}").unwrap();
        }
        let compressed = gz.finish().unwrap();
        std::fs::write(&path, &compressed).unwrap();
        let (reader, source) = open(&path).unwrap();
        let mut r = LineReader::new(reader, 1024);
        let mut n = 0;
        while r.next_line().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 20_000);
        assert_eq!(source.size, Some(compressed.len() as u64));
        assert_eq!(source.read.load(Ordering::Relaxed), compressed.len() as u64);
        assert!(
            r.consumed > 10 * compressed.len() as u64,
            "the decompressed stream is larger"
        );
    }
}
