//! The repartition topic's record format: accepted events re-keyed by org, user or ip,
//! packed many to a Kafka message.
//!
//! Producing each re-keyed event as a message of its own tripled the messages the
//! broker and both librdkafka clients handle (the shipped rules re-key every event twice),
//! and that, not detection, bounded `serve`. A worker instead packs what one batch of
//! input re-keys into one message per repartition partition. The partition is chosen
//! here, by a stable hash of the key, so every instance and version sends a key to the
//! same partition; order within a source partition is kept, as before.
//!
//! A packed message has the key [`PACKED_KEY`] (`cvguard-packed-v2`) and a payload of a
//! topic table, `count (u8) | each: length (u16 LE) | UTF-8 name`, then records, each
//! `kind (u8, index in KeyKind::ALL) | timestamp (i64 LE, i64::MIN for none) | source
//! topic (u8, index in the table) | source partition (i32 LE) | source offset (i64 LE) |
//! length (u32 LE) | the event`. The event is in the compact form of [`encode_event`]:
//! it was parsed and validated on its input partition, and parsing its JSON again on
//! the repartition stage, once per key kind, cost as much as the first time.
//!
//! The source (input topic, partition, offset) is what makes the repartition stage
//! idempotent: after a crash, input partitions re-process from their committed offsets
//! and send some re-keyed events again, under new repartition offsets. A repartition
//! partition remembers, per key kind and source partition, the highest source offset it
//! applied (`sources.rs`), and skips a record at or below it. Version 1 records
//! (`cvguard-packed-v1`: `kind | timestamp | length | event`, no source) are still read,
//! so an upgrade loses none in flight; they cannot be told from a repetition.

use std::borrow::Cow;

use cvguard_core::{Event, KeyKind, Visibility};

/// The Kafka key of a packed message; also how a reader tells it from the older forms,
/// which it still reads: [`PACKED_KEY_V1`], and one event per message (`org_id|<org>` keys).
pub const PACKED_KEY: &[u8] = b"cvguard-packed-v2";
/// Packed records without their source, as written before version 2.
pub const PACKED_KEY_V1: &[u8] = b"cvguard-packed-v1";

/// Flush a partition's buffer once it holds this much, well under the broker's default
/// message size limit (1 MB).
pub const FLUSH_BYTES: usize = 256 * 1024;

const HEADER_V1: usize = 1 + 8 + 4;
const HEADER: usize = 1 + 8 + 1 + 4 + 8 + 4;
const NO_TIMESTAMP: i64 = i64::MIN;
/// Topics one packed message can name (its table's count is a u8).
const MAX_TOPICS: usize = u8::MAX as usize;

/// Which record format a repartition message is in, from its key; `None` for the one
/// event per message form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    V1,
    V2,
}

impl Packing {
    pub fn of_key(key: Option<&[u8]>) -> Option<Packing> {
        match key {
            Some(k) if k == PACKED_KEY => Some(Packing::V2),
            Some(k) if k == PACKED_KEY_V1 => Some(Packing::V1),
            _ => None,
        }
    }
}

/// Where a re-keyed event was read: its input topic, partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The repartition partition of a key: FNV-1a of `kind|key`. Part of the wire contract
/// between instances: changing it would split a key's state over two partitions.
pub fn partition_of(kind: KeyKind, key: &str, partitions: i32) -> i32 {
    let bytes = kind.as_str().bytes().chain(std::iter::once(b'|')).chain(key.bytes());
    (fnv1a(bytes) % partitions.max(1) as u64) as i32
}

/// 64-bit FNV-1a: simple, stable, and specified outside this code.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Re-keyed events waiting to be produced, one buffer per repartition partition.
pub struct Packer {
    buffers: Vec<Buffer>,
}

/// One partition's records before their topic table is put in front.
#[derive(Debug, Default)]
struct Buffer {
    topics: Vec<Box<str>>,
    bytes: Vec<u8>,
    records: usize,
    timestamp: Option<i64>,
}

impl Buffer {
    fn table_len(&self) -> usize {
        1 + self.topics.iter().map(|t| 2 + t.len()).sum::<usize>()
    }

    /// The message's payload: the topic table, then the records.
    fn finish(self) -> Packed {
        let mut bytes = Vec::with_capacity(self.table_len() + self.bytes.len());
        bytes.push(self.topics.len() as u8);
        for t in &self.topics {
            bytes.extend_from_slice(&(t.len() as u16).to_le_bytes());
            bytes.extend_from_slice(t.as_bytes());
        }
        bytes.extend_from_slice(&self.bytes);
        Packed {
            bytes,
            records: self.records,
            timestamp: self.timestamp,
        }
    }
}

/// One partition's packed message.
#[derive(Debug, Default)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub records: usize,
    /// The earliest timestamp among the records: the message's own, so a look-back by
    /// time on the repartition topic never starts after one of them.
    pub timestamp: Option<i64>,
}

impl Packer {
    pub fn new(partitions: i32) -> Packer {
        Packer {
            buffers: (0..partitions.max(1)).map(|_| Buffer::default()).collect(),
        }
    }

    /// Appends an event for `key`, read at `source`. When the event would take its
    /// partition's buffer past [`FLUSH_BYTES`] (or its topic table past [`MAX_TOPICS`]),
    /// the buffer is returned first, to be sent before it: a packed message is then never
    /// larger than the flush size or than its one record, so packing never makes a message
    /// the broker refuses for its size.
    pub fn push(
        &mut self,
        kind: KeyKind,
        key: &str,
        payload: &[u8],
        timestamp: Option<i64>,
        source: Source<'_>,
    ) -> Option<(i32, Packed)> {
        let partition = partition_of(kind, key, self.buffers.len() as i32);
        let buf = &mut self.buffers[partition as usize];
        // Topic names are at most 249 bytes in Kafka; a longer one could not be read back.
        let topic = &source.topic[..source.topic.len().min(u16::MAX as usize)];
        let known = buf.topics.iter().position(|t| **t == *topic);
        let growth = HEADER + payload.len() + if known.is_some() { 0 } else { 2 + topic.len() };
        let full = (buf.records > 0
            && (buf.table_len() + buf.bytes.len() + growth > FLUSH_BYTES
                || (known.is_none() && buf.topics.len() == MAX_TOPICS)))
            .then(|| std::mem::take(buf).finish());
        let index = match buf.topics.iter().position(|t| **t == *topic) {
            Some(i) => i,
            None => {
                buf.topics.push(topic.into());
                buf.topics.len() - 1
            }
        };
        encode(&mut buf.bytes, kind, timestamp, index as u8, source, payload);
        buf.records += 1;
        buf.timestamp = match (buf.timestamp, timestamp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        full.map(|f| (partition, f))
    }

    /// Takes one partition's packed message, leaving its buffer empty.
    pub fn take(&mut self, partition: i32) -> Packed {
        std::mem::take(&mut self.buffers[partition as usize]).finish()
    }

    /// The partitions that hold records.
    pub fn filled(&self) -> Vec<i32> {
        (0..self.buffers.len() as i32)
            .filter(|p| self.buffers[*p as usize].records > 0)
            .collect()
    }
}

fn encode(out: &mut Vec<u8>, kind: KeyKind, timestamp: Option<i64>, topic: u8, source: Source<'_>, payload: &[u8]) {
    let index = KeyKind::ALL.iter().position(|k| *k == kind).expect("a key kind") as u8;
    out.reserve(HEADER + payload.len());
    out.push(index);
    out.extend_from_slice(&timestamp.unwrap_or(NO_TIMESTAMP).to_le_bytes());
    out.push(topic);
    out.extend_from_slice(&source.partition.to_le_bytes());
    out.extend_from_slice(&source.offset.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends `ev` in compact form: `ts (i64 LE) | visibility (u8) | account_id | action |
/// event_id | user_id | org_id | ip | user_agent | CV count (u32 LE) | CV ids`, each
/// string as `length (u32 LE) | UTF-8 bytes`, an absent one as length `u32::MAX`.
pub fn encode_event(out: &mut Vec<u8>, ev: &Event<'_>) {
    fn put(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&ABSENT.to_le_bytes()),
        }
    }
    out.extend_from_slice(&ev.ts.to_le_bytes());
    out.push(ev.visibility as u8);
    put(out, Some(&ev.account_id));
    put(out, Some(&ev.action));
    for field in [&ev.event_id, &ev.user_id, &ev.org_id, &ev.ip, &ev.user_agent] {
        put(out, field.as_deref());
    }
    out.extend_from_slice(&(ev.cv_ids.len() as u32).to_le_bytes());
    for id in &ev.cv_ids {
        put(out, Some(id));
    }
}

const ABSENT: u32 = u32::MAX;

/// The event of a record's payload, borrowing its strings; `None` if it is malformed.
pub fn decode_event(bytes: &[u8]) -> Option<Event<'_>> {
    let mut r = Reader(bytes);
    let ts = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let visibility = Visibility::from_u8(r.take(1)?[0]);
    let account_id = r.string()??;
    let action = r.string()??;
    let mut optional = [None, None, None, None, None];
    for field in &mut optional {
        *field = r.string()?;
    }
    let [event_id, user_id, org_id, ip, user_agent] = optional;
    let count = r.u32()? as usize;
    // Each id takes at least its 4-byte length: a count beyond that is corrupt, and
    // must not size an allocation.
    if count > r.0.len() / 4 {
        return None;
    }
    let mut cv_ids = Vec::with_capacity(count);
    for _ in 0..count {
        cv_ids.push(r.string()??);
    }
    r.0.is_empty().then_some(Event {
        ts,
        account_id,
        action,
        cv_ids,
        event_id,
        user_id,
        org_id,
        ip,
        user_agent,
        visibility,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// `Some(None)` for an absent string, `None` when the bytes are malformed.
    fn string(&mut self) -> Option<Option<Cow<'a, str>>> {
        let len = self.u32()?;
        if len == ABSENT {
            return Some(None);
        }
        let text = std::str::from_utf8(self.take(len as usize)?).ok()?;
        Some(Some(Cow::Borrowed(text)))
    }
}

/// One record of a packed message.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: KeyKind,
    pub timestamp: Option<i64>,
    /// Where the event was read; `None` in version 1 records.
    pub source: Option<Source<'a>>,
    pub payload: &'a [u8],
}

/// A packed message that does not parse: where, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    pub at: usize,
    pub why: &'static str,
}

/// The records of a packed message, in order; stops at the first malformed one.
pub fn records(packing: Packing, bytes: &[u8]) -> impl Iterator<Item = Result<Record<'_>, Malformed>> {
    let total = bytes.len();
    let (topics, mut rest, mut broken_table) = match packing {
        Packing::V1 => (Vec::new(), bytes, false),
        Packing::V2 => match topic_table(bytes) {
            Some((topics, rest)) => (topics, rest, false),
            None => (Vec::new(), &[][..], true),
        },
    };
    std::iter::from_fn(move || {
        if std::mem::take(&mut broken_table) {
            return Some(Err(Malformed {
                at: 0,
                why: "malformed topic table",
            }));
        }
        if rest.is_empty() {
            return None;
        }
        let at = total - rest.len();
        let fail = |why| Some(Err(Malformed { at, why }));
        let header = match packing {
            Packing::V1 => HEADER_V1,
            Packing::V2 => HEADER,
        };
        if rest.len() < header {
            rest = &[];
            return fail("truncated record header");
        }
        let Some(kind) = KeyKind::ALL.get(rest[0] as usize).copied() else {
            rest = &[];
            return fail("unknown key kind");
        };
        let ts = i64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let source = match packing {
            Packing::V1 => None,
            Packing::V2 => {
                let Some(topic) = topics.get(rest[9] as usize).copied() else {
                    rest = &[];
                    return fail("unknown source topic");
                };
                Some(Source {
                    topic,
                    partition: i32::from_le_bytes(rest[10..14].try_into().expect("4 bytes")),
                    offset: i64::from_le_bytes(rest[14..22].try_into().expect("8 bytes")),
                })
            }
        };
        let len = u32::from_le_bytes(rest[header - 4..header].try_into().expect("4 bytes")) as usize;
        let body = &rest[header..];
        if body.len() < len {
            rest = &[];
            return fail("truncated record payload");
        }
        let (payload, tail) = body.split_at(len);
        rest = tail;
        Some(Ok(Record {
            kind,
            timestamp: (ts != NO_TIMESTAMP).then_some(ts),
            source,
            payload,
        }))
    })
}

/// A version 2 message's topic table and the bytes after it.
fn topic_table(bytes: &[u8]) -> Option<(Vec<&str>, &[u8])> {
    let mut r = Reader(bytes);
    let count = r.take(1)?[0];
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        topics.push(std::str::from_utf8(r.take(len as usize)?).ok()?);
    }
    Some((topics, r.0))
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
    fn records_come_back_in_order_with_their_kind_timestamp_and_source() {
        let mut p = Packer::new(1);
        assert!(p
            .push(KeyKind::OrgId, "org-1", br#"{"a":1}"#, Some(5), src("events", 2, 40))
            .is_none());
        assert!(p.push(KeyKind::Ip, "10.0.0.1", b"", None, src("other", 0, 7)).is_none());
        assert!(p
            .push(KeyKind::UserId, "u", b"xyz", Some(-3), src("events", 5, i64::MAX))
            .is_none());
        let packed = p.take(0);
        assert_eq!(packed.records, 3);
        assert_eq!(packed.timestamp, Some(-3));
        let got: Vec<_> = records(Packing::V2, &packed.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Record {
                    kind: KeyKind::OrgId,
                    timestamp: Some(5),
                    source: Some(src("events", 2, 40)),
                    payload: br#"{"a":1}"#
                },
                Record {
                    kind: KeyKind::Ip,
                    timestamp: None,
                    source: Some(src("other", 0, 7)),
                    payload: b""
                },
                Record {
                    kind: KeyKind::UserId,
                    timestamp: Some(-3),
                    source: Some(src("events", 5, i64::MAX)),
                    payload: b"xyz"
                },
            ]
        );
        // Each topic is named once, in the table in front.
        let table = 1 + (2 + "events".len()) + (2 + "other".len());
        assert_eq!(packed.bytes.len(), table + 3 * HEADER + 7 + 3);
        assert!(p.filled().is_empty(), "take empties the buffer");
    }

    /// Version 1 (`kind | timestamp | length | event`, no source), as written before
    /// records carried their source, is still read.
    #[test]
    fn version_1_records_are_still_read_without_a_source() {
        let mut v1 = Vec::new();
        for (kind, ts, payload) in [(1u8, 5i64, &b"abc"[..]), (3, NO_TIMESTAMP, b"")] {
            v1.push(kind);
            v1.extend_from_slice(&ts.to_le_bytes());
            v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v1.extend_from_slice(payload);
        }
        assert_eq!(Packing::of_key(Some(b"cvguard-packed-v1")), Some(Packing::V1));
        assert_eq!(Packing::of_key(Some(PACKED_KEY)), Some(Packing::V2));
        assert_eq!(Packing::of_key(Some(b"org_id|o")), None);
        let got: Vec<_> = records(Packing::V1, &v1).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Record {
                    kind: KeyKind::ALL[1],
                    timestamp: Some(5),
                    source: None,
                    payload: b"abc"
                },
                Record {
                    kind: KeyKind::ALL[3],
                    timestamp: None,
                    source: None,
                    payload: b""
                },
            ]
        );
    }

    #[test]
    fn a_truncated_or_unknown_record_is_reported_where_it_starts() {
        let mut p = Packer::new(1);
        assert!(p
            .push(KeyKind::OrgId, "o", b"0123456789", None, src("t", 0, 1))
            .is_none());
        assert!(p.push(KeyKind::OrgId, "o", b"abc", None, src("t", 0, 2)).is_none());
        let bytes = p.take(0).bytes;
        let table = 1 + 2 + 1;
        let second = table + HEADER + 10;
        let cut: Vec<_> = records(Packing::V2, &bytes[..bytes.len() - 1]).collect();
        assert!(cut[0].is_ok());
        assert_eq!(
            cut[1],
            Err(Malformed {
                at: second,
                why: "truncated record payload"
            })
        );
        let mut bad = bytes.clone();
        bad[second] = 200;
        let got: Vec<_> = records(Packing::V2, &bad).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Err(Malformed {
                at: second,
                why: "unknown key kind"
            })
        );
        let mut bad = bytes.clone();
        bad[second + 9] = 1;
        assert_eq!(
            records(Packing::V2, &bad).nth(1),
            Some(Err(Malformed {
                at: second,
                why: "unknown source topic"
            }))
        );
        assert_eq!(
            records(Packing::V2, &bytes[..table + 5]).collect::<Vec<_>>(),
            vec![Err(Malformed {
                at: table,
                why: "truncated record header"
            })]
        );
        assert_eq!(
            records(Packing::V2, &bytes[..2]).collect::<Vec<_>>(),
            vec![Err(Malformed {
                at: 0,
                why: "malformed topic table"
            })]
        );
    }

    #[test]
    fn a_key_always_lands_on_one_partition_and_keys_spread() {
        let a = partition_of(KeyKind::OrgId, "org-7", 6);
        assert_eq!(a, partition_of(KeyKind::OrgId, "org-7", 6));
        // The same text under another kind is another key.
        let spread: std::collections::HashSet<i32> = (0..600)
            .map(|i| partition_of(KeyKind::Ip, &format!("10.0.{}.{}", i / 256, i % 256), 6))
            .collect();
        assert_eq!(spread.len(), 6);
        // Instances of different versions must agree on where a key goes: the hash is
        // FNV-1a, checked against the published test vectors.
        assert_eq!(fnv1a(b"".iter().copied()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a".iter().copied()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar".iter().copied()), 0x8594_4171_f739_67e8);
        let whole = fnv1a(b"org_id|org-7".iter().copied());
        assert_eq!(
            partition_of(KeyKind::OrgId, "org-7", 1_000_003),
            (whole % 1_000_003) as i32
        );
    }

    fn event<'a>(cv_ids: Vec<Cow<'a, str>>, optional: Option<Cow<'a, str>>) -> Event<'a> {
        Event {
            ts: 1_714_694_400_123,
            account_id: Cow::Borrowed("acc-1"),
            action: Cow::Borrowed("cv_download"),
            cv_ids,
            event_id: optional.clone(),
            user_id: optional.clone(),
            org_id: Some(Cow::Borrowed("org-ü")),
            ip: optional.clone(),
            user_agent: optional,
            visibility: Visibility::Named,
        }
    }

    #[test]
    fn an_event_comes_back_from_its_compact_form_unchanged() {
        let escaped: Cow<'_, str> = Cow::Owned("line\nbreak \"quoted\" 😀".to_string());
        for ev in [
            event(vec![], None),
            event(vec![Cow::Borrowed("cv-1")], Some(Cow::Borrowed(""))),
            event(
                (0..200).map(|i| Cow::Owned(format!("cv-{i:07}"))).collect(),
                Some(escaped.clone()),
            ),
        ] {
            let mut bytes = Vec::new();
            encode_event(&mut bytes, &ev);
            assert_eq!(decode_event(&bytes), Some(ev));
        }
    }

    #[test]
    fn a_corrupt_compact_event_is_refused_not_misread() {
        let mut bytes = Vec::new();
        encode_event(
            &mut bytes,
            &event(vec![Cow::Borrowed("cv-1"), Cow::Borrowed("cv-2")], None),
        );
        // Every truncation, and trailing bytes, are refused.
        for cut in 0..bytes.len() {
            assert_eq!(decode_event(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_event(&longer), None);
        // A CV count far beyond what the bytes can hold is refused before allocating.
        let count_at = bytes.len() - 2 * (4 + 4) - 4;
        let mut huge = bytes.clone();
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_event(&huge), None);
        // Bytes that are not UTF-8 where a string is expected.
        let mut bad = bytes.clone();
        let account_at = 8 + 1 + 4;
        bad[account_at] = 0xff;
        assert_eq!(decode_event(&bad), None);
    }

    #[test]
    fn a_full_buffer_is_handed_back_before_the_event_that_would_overfill_it() {
        let mut p = Packer::new(2);
        let part = partition_of(KeyKind::OrgId, "o", 2);
        let third = vec![b'x'; FLUSH_BYTES / 3];
        let at = |offset| src("events", 0, offset);
        assert!(p.push(KeyKind::OrgId, "o", &third, Some(1), at(1)).is_none());
        assert!(p.push(KeyKind::OrgId, "o", &third, Some(2), at(2)).is_none());
        let (got, full) = p
            .push(KeyKind::OrgId, "o", &third, Some(3), at(3))
            .expect("the third does not fit");
        assert_eq!(got, part);
        assert_eq!(full.records, 2);
        assert!(full.bytes.len() <= FLUSH_BYTES);
        assert_eq!(full.timestamp, Some(1));
        // The event that did not fit waits in a fresh buffer, sent after the full one,
        // with a topic table of its own.
        let rest = p.take(part);
        assert_eq!(rest.records, 1);
        assert_eq!(rest.timestamp, Some(3));
        let r: Vec<_> = records(Packing::V2, &rest.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(r[0].source, Some(at(3)));
        // An event larger than the flush size travels alone.
        let big = vec![b'y'; FLUSH_BYTES + 1];
        assert!(p.push(KeyKind::OrgId, "o", &big, None, at(4)).is_none());
        let (_, alone) = p
            .push(KeyKind::OrgId, "o", b"{}", None, at(5))
            .expect("the big one is handed back");
        assert_eq!(alone.records, 1);
    }

    #[test]
    fn a_full_topic_table_is_handed_back_before_a_new_topic() {
        let mut p = Packer::new(1);
        let names: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("t{i}")).collect();
        for n in &names[..MAX_TOPICS] {
            assert!(p.push(KeyKind::OrgId, "o", b"e", None, src(n, 0, 1)).is_none());
        }
        let (_, full) = p
            .push(KeyKind::OrgId, "o", b"e", None, src(&names[MAX_TOPICS], 0, 1))
            .expect("no room for a 256th topic");
        assert_eq!(full.records, MAX_TOPICS);
        let sources: Vec<_> = records(Packing::V2, &full.bytes)
            .map(|r| r.unwrap().source.unwrap().topic)
            .collect();
        assert_eq!(
            sources,
            names[..MAX_TOPICS].iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(p.take(0).records, 1);
    }
}
