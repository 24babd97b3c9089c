//! Reading NDJSON: plain or gzip, from a file or stdin, one bounded line at a time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

/// Opens `path` (`-` for stdin), decompressing gzip when the data starts with its magic
/// bytes, whatever the file is called. Returns the reader and the file size, if known.
pub fn open(path: &Path) -> io::Result<(Box<dyn BufRead>, Option<u64>)> {
    let (raw, size): (Box<dyn Read>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path)?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let mut buffered = BufReader::with_capacity(1 << 20, raw);
    let is_gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if is_gzip {
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buffered))),
            size,
        ))
    } else {
        Ok((Box::new(buffered), size))
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
}
