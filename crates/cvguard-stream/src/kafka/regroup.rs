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
//! A packed message has the key [`PACKED_KEY`] and a payload of records, each
//! `kind (u8, index in KeyKind::ALL) | timestamp (i64 LE, i64::MIN for none) |
//! length (u32 LE) | the event`. The event is in the compact form of [`encode_event`]:
//! it was parsed and validated on its input partition, and parsing its JSON again on
//! the repartition stage, once per key kind, cost as much as the first time.

use std::borrow::Cow;

use cvguard_core::{Event, KeyKind, Visibility};

/// The Kafka key of a packed message; also how a reader tells it from the older one
/// event per message form (`org_id|<org>` keys), which it still reads.
pub const PACKED_KEY: &[u8] = b"cvguard-packed-v1";

/// Flush a partition's buffer once it holds this much, well under the broker's default
/// message size limit (1 MB).
pub const FLUSH_BYTES: usize = 256 * 1024;

const HEADER: usize = 1 + 8 + 4;
const NO_TIMESTAMP: i64 = i64::MIN;

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
    buffers: Vec<Packed>,
}

/// One partition's buffer.
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
            buffers: (0..partitions.max(1)).map(|_| Packed::default()).collect(),
        }
    }

    /// Appends an event for `key`. When the event would take its partition's buffer past
    /// [`FLUSH_BYTES`], the buffer is returned first, to be sent before it: a packed
    /// message is then never larger than the flush size or than its one record, so
    /// packing never makes a message the broker refuses for its size.
    pub fn push(&mut self, kind: KeyKind, key: &str, payload: &[u8], timestamp: Option<i64>) -> Option<(i32, Packed)> {
        let partition = partition_of(kind, key, self.buffers.len() as i32);
        let buf = &mut self.buffers[partition as usize];
        let full =
            (buf.records > 0 && buf.bytes.len() + HEADER + payload.len() > FLUSH_BYTES).then(|| std::mem::take(buf));
        encode(&mut buf.bytes, kind, timestamp, payload);
        buf.records += 1;
        buf.timestamp = match (buf.timestamp, timestamp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        full.map(|f| (partition, f))
    }

    /// Takes one partition's buffer, leaving it empty.
    pub fn take(&mut self, partition: i32) -> Packed {
        std::mem::take(&mut self.buffers[partition as usize])
    }

    /// The partitions that hold records.
    pub fn filled(&self) -> Vec<i32> {
        (0..self.buffers.len() as i32)
            .filter(|p| self.buffers[*p as usize].records > 0)
            .collect()
    }
}

fn encode(out: &mut Vec<u8>, kind: KeyKind, timestamp: Option<i64>, payload: &[u8]) {
    let index = KeyKind::ALL.iter().position(|k| *k == kind).expect("a key kind") as u8;
    out.reserve(HEADER + payload.len());
    out.push(index);
    out.extend_from_slice(&timestamp.unwrap_or(NO_TIMESTAMP).to_le_bytes());
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
    pub payload: &'a [u8],
}

/// A packed message that does not parse: where, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    pub at: usize,
    pub why: &'static str,
}

/// The records of a packed message, in order; stops at the first malformed one.
pub fn records(mut bytes: &[u8]) -> impl Iterator<Item = Result<Record<'_>, Malformed>> {
    let total = bytes.len();
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let at = total - bytes.len();
        let fail = |why| Some(Err(Malformed { at, why }));
        if bytes.len() < HEADER {
            bytes = &[];
            return fail("truncated record header");
        }
        let Some(kind) = KeyKind::ALL.get(bytes[0] as usize).copied() else {
            bytes = &[];
            return fail("unknown key kind");
        };
        let ts = i64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &bytes[HEADER..];
        if rest.len() < len {
            bytes = &[];
            return fail("truncated record payload");
        }
        let (payload, tail) = rest.split_at(len);
        bytes = tail;
        Some(Ok(Record {
            kind,
            timestamp: (ts != NO_TIMESTAMP).then_some(ts),
            payload,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_with_their_kind_and_timestamp() {
        let mut p = Packer::new(1);
        assert!(p.push(KeyKind::OrgId, "org-1", br#"{"a":1}"#, Some(5)).is_none());
        assert!(p.push(KeyKind::Ip, "10.0.0.1", b"", None).is_none());
        assert!(p.push(KeyKind::UserId, "u", b"xyz", Some(-3)).is_none());
        let packed = p.take(0);
        assert_eq!(packed.records, 3);
        assert_eq!(packed.timestamp, Some(-3));
        let got: Vec<_> = records(&packed.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Record {
                    kind: KeyKind::OrgId,
                    timestamp: Some(5),
                    payload: br#"{"a":1}"#
                },
                Record {
                    kind: KeyKind::Ip,
                    timestamp: None,
                    payload: b""
                },
                Record {
                    kind: KeyKind::UserId,
                    timestamp: Some(-3),
                    payload: b"xyz"
                },
            ]
        );
        assert!(p.filled().is_empty(), "take empties the buffer");
    }

    #[test]
    fn a_truncated_or_unknown_record_is_reported_where_it_starts() {
        let mut p = Packer::new(1);
        assert!(p.push(KeyKind::OrgId, "o", b"0123456789", None).is_none());
        assert!(p.push(KeyKind::OrgId, "o", b"abc", None).is_none());
        let bytes = p.take(0).bytes;
        let first_len = HEADER + 10;
        let cut: Vec<_> = records(&bytes[..bytes.len() - 1]).collect();
        assert!(cut[0].is_ok());
        assert_eq!(
            cut[1],
            Err(Malformed {
                at: first_len,
                why: "truncated record payload"
            })
        );
        let mut bad = bytes.clone();
        bad[first_len] = 200;
        let got: Vec<_> = records(&bad).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Err(Malformed {
                at: first_len,
                why: "unknown key kind"
            })
        );
        assert_eq!(
            records(&bytes[..5]).collect::<Vec<_>>(),
            vec![Err(Malformed {
                at: 0,
                why: "truncated record header"
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
        assert!(p.push(KeyKind::OrgId, "o", &third, Some(1)).is_none());
        assert!(p.push(KeyKind::OrgId, "o", &third, Some(2)).is_none());
        let (at, full) = p
            .push(KeyKind::OrgId, "o", &third, Some(3))
            .expect("the third does not fit");
        assert_eq!(at, part);
        assert_eq!(full.records, 2);
        assert!(full.bytes.len() <= FLUSH_BYTES);
        assert_eq!(full.timestamp, Some(1));
        // The event that did not fit waits in a fresh buffer, sent after the full one.
        let rest = p.take(part);
        assert_eq!(rest.records, 1);
        assert_eq!(rest.timestamp, Some(3));
        // An event larger than the flush size travels alone.
        let big = vec![b'y'; FLUSH_BYTES + 1];
        assert!(p.push(KeyKind::OrgId, "o", &big, None).is_none());
        let (_, alone) = p
            .push(KeyKind::OrgId, "o", b"{}", None)
            .expect("the big one is handed back");
        assert_eq!(alone.records, 1);
    }
}
