//! Maps keyed by CV handle and string indexes, shaped so that no single insert can
//! stall the stream.
//!
//! A hash table that doubles rehashes every entry at once: for one key holding 150,000
//! CVs, or an interner holding millions of ids, that is tens of milliseconds in which
//! no event is decided. Both structures here split into independent shards (64 for a
//! key's CVs once it holds 4,096; 256 for the string indexes), so a doubling moves a
//! small part of the entries.

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};

use crate::interner::CvRef;

const SHARDS: usize = 64;
/// String indexes hold millions of entries (every CV id): more shards, so one shard's
/// doubling rehashes a few thousand strings.
const STR_SHARDS: usize = 256;
/// Up to this many entries a map is a plain vector, searched linearly: most keys touch
/// one or two CVs, and a vector of them costs a fraction of a hash table.
const SMALL: usize = 8;
/// Beyond this many entries a map splits into shards. Splitting moves every entry, so
/// it is a stall of its own: at 4,096 a heavy account, its org and its IP split in the
/// same event, for 0.6 ms.
const SPLIT: usize = 1024;

fn shard_of(cv: CvRef) -> usize {
    // Handles are dense integers; mix them so shards fill evenly.
    (cv.wrapping_mul(0x9E37_79B9) >> 26) as usize
}

/// A map from CV handle to `V`: a small vector, one table, or 64 tables.
#[derive(Debug)]
pub enum CvMap<V> {
    Small(Vec<(CvRef, V)>),
    One(FxHashMap<CvRef, V>),
    Sharded(Box<[FxHashMap<CvRef, V>]>),
}

impl<V> Default for CvMap<V> {
    fn default() -> Self {
        CvMap::Small(Vec::new())
    }
}

impl<V> CvMap<V> {
    pub fn len(&self) -> usize {
        match self {
            CvMap::Small(v) => v.len(),
            CvMap::One(m) => m.len(),
            CvMap::Sharded(s) => s.iter().map(|m| m.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for the entries and the tables' control bytes.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(CvRef, V)>();
        match self {
            CvMap::Small(v) => v.capacity() * entry,
            CvMap::One(m) => table_bytes(m.capacity(), entry),
            CvMap::Sharded(s) => {
                s.iter().map(|m| table_bytes(m.capacity(), entry)).sum::<usize>()
                    + s.len() * std::mem::size_of::<FxHashMap<CvRef, V>>()
            }
        }
    }

    pub fn get(&self, cv: CvRef) -> Option<&V> {
        match self {
            CvMap::Small(v) => v.iter().find(|(k, _)| *k == cv).map(|(_, x)| x),
            CvMap::One(m) => m.get(&cv),
            CvMap::Sharded(s) => s[shard_of(cv)].get(&cv),
        }
    }

    /// The value for `cv`, inserting `value` if absent; true when it was inserted.
    pub fn entry_or_insert(&mut self, cv: CvRef, value: V) -> (&mut V, bool) {
        self.grow_if_full();
        match self {
            CvMap::Small(v) => match v.iter().position(|(k, _)| *k == cv) {
                Some(i) => (&mut v[i].1, false),
                None => {
                    if v.capacity() == 0 {
                        v.reserve_exact(1);
                    }
                    v.push((cv, value));
                    let last = v.len() - 1;
                    (&mut v[last].1, true)
                }
            },
            CvMap::One(m) => insert_into(m, cv, value),
            CvMap::Sharded(s) => insert_into(&mut s[shard_of(cv)], cv, value),
        }
    }

    /// Applies `f` to the value of `cv`, if any, and removes it when `f` says so, with
    /// one lookup. Returns whether it was removed.
    pub fn update_or_remove(&mut self, cv: CvRef, f: impl FnOnce(&mut V) -> bool) -> bool {
        use std::collections::hash_map::Entry;
        let map = match self {
            CvMap::One(m) => m,
            CvMap::Sharded(s) => &mut s[shard_of(cv)],
            CvMap::Small(v) => {
                return match v.iter().position(|(k, _)| *k == cv) {
                    Some(i) => {
                        let remove = f(&mut v[i].1);
                        if remove {
                            v.swap_remove(i);
                        }
                        remove
                    }
                    None => false,
                };
            }
        };
        match map.entry(cv) {
            Entry::Occupied(mut o) => {
                let remove = f(o.get_mut());
                if remove {
                    o.remove();
                }
                remove
            }
            Entry::Vacant(_) => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (CvRef, &V)> + '_ {
        type Parts<'a, V> = (&'a [(CvRef, V)], &'a [FxHashMap<CvRef, V>]);
        let (small, maps): Parts<'_, V> = match self {
            CvMap::Small(v) => (v, &[]),
            CvMap::One(m) => (&[], std::slice::from_ref(m)),
            CvMap::Sharded(s) => (&[], s),
        };
        small
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(maps.iter().flat_map(|m| m.iter().map(|(k, v)| (*k, v))))
    }

    fn grow_if_full(&mut self) {
        let next = match self {
            CvMap::Small(v) if v.len() >= SMALL => {
                let mut m = FxHashMap::with_capacity_and_hasher(SMALL * 2, Default::default());
                m.extend(v.drain(..));
                CvMap::One(m)
            }
            CvMap::One(m) if m.len() >= SPLIT => {
                // Sized up front for half again their share, the size they would grow
                // to anyway: filled from empty, each shard rehashed several times.
                let room = SPLIT / SHARDS * 3 / 2;
                let mut shards: Vec<FxHashMap<CvRef, V>> = (0..SHARDS)
                    .map(|_| FxHashMap::with_capacity_and_hasher(room, Default::default()))
                    .collect();
                for (k, v) in m.drain() {
                    shards[shard_of(k)].insert(k, v);
                }
                CvMap::Sharded(shards.into_boxed_slice())
            }
            _ => return,
        };
        *self = next;
    }
}

/// What a hashbrown table (the std `HashMap`'s) of `capacity` entries of `entry` bytes
/// allocates: a bucket per entry with 1/8 spare (all but the smallest), a control byte
/// per bucket and a group's width of trailing control bytes.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * entry + buckets + 16
}

fn insert_into<V>(m: &mut FxHashMap<CvRef, V>, cv: CvRef, value: V) -> (&mut V, bool) {
    use std::collections::hash_map::Entry;
    match m.entry(cv) {
        Entry::Occupied(e) => (e.into_mut(), false),
        Entry::Vacant(e) => (e.insert(value), true),
    }
}

/// An index from strings to dense `u32` ids whose strings the caller keeps (so each
/// string is stored once), in 256 shards.
#[derive(Debug)]
pub struct StrIndex {
    /// (id, the low half of the string's hash). Growing a shard rehashes every entry:
    /// with the hash kept beside the id that reads the entry alone, where rehashing the
    /// strings took a cache miss per entry (a shard of 3,584 CV ids took 0.7-1 ms, and all
    /// 256 shards grow within a few thousand events of each other). The half hash also
    /// spares a string comparison on hashbrown's 1-in-128 tag collisions.
    shards: Box<[HashTable<(u32, u32)>]>,
    len: usize,
}

impl Default for StrIndex {
    fn default() -> Self {
        StrIndex {
            shards: (0..STR_SHARDS).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }
}

/// FxHash of the text with MurmurHash3's finaliser: Fx alone leaves the middle bits
/// (the shard) depending on few input bytes.
pub fn str_hash(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The shard from the high half, which the tables never see.
fn shard_of_hash(hash: u64) -> usize {
    ((hash >> 32) as usize) % STR_SHARDS
}

/// What a shard's table hashes by: the low half, twice. hashbrown places entries by the
/// low bits and filters candidates by the top seven, so both come from the low half,
/// from different bits while a shard has fewer than 2^25 buckets.
fn table_hash(low: u32) -> u64 {
    (u64::from(low) << 32) | u64::from(low)
}

impl StrIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated for the shards.
    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|t| t.allocation_size()).sum::<usize>()
            + self.shards.len() * std::mem::size_of::<HashTable<(u32, u32)>>()
    }

    /// The id of `s` (hashed as `hash`), where `name` gives each id's string as bytes.
    pub fn find<'n>(&self, hash: u64, s: &str, name: impl Fn(u32) -> &'n [u8]) -> Option<u32> {
        let low = hash as u32;
        self.shards[shard_of_hash(hash)]
            .find(table_hash(low), |&(id, l)| l == low && name(id) == s.as_bytes())
            .map(|&(id, _)| id)
    }

    /// Adds `id` for a string not yet in the index.
    pub fn insert(&mut self, hash: u64, id: u32) {
        let low = hash as u32;
        self.shards[shard_of_hash(hash)].insert_unique(table_hash(low), (id, low), |&(_, l)| table_hash(l));
        self.len += 1;
    }

    pub fn remove(&mut self, hash: u64, id: u32) {
        let low = hash as u32;
        if let Ok(entry) = self.shards[shard_of_hash(hash)].find_entry(table_hash(low), |&(x, _)| x == id) {
            entry.remove();
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_keeps_its_contents_through_every_shape() {
        let mut m: CvMap<u64> = CvMap::default();
        for cv in 0..10_000u32 {
            let (v, new) = m.entry_or_insert(cv, u64::from(cv) * 3);
            assert!(new);
            *v += 1;
            if cv == 5 {
                assert!(matches!(m, CvMap::Small(_)));
            }
            if cv == 100 {
                assert!(matches!(m, CvMap::One(_)));
            }
        }
        assert!(matches!(m, CvMap::Sharded(_)));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(1234), Some(&(1234 * 3 + 1)));
        assert!(!m.entry_or_insert(1234, 0).1);
        assert!(m.update_or_remove(1234, |_| true));
        assert_eq!(m.get(1234), None);
        assert_eq!(m.iter().count(), 9_999);
        assert!(!m.update_or_remove(77, |v| {
            *v = 0;
            false
        }));
        assert_eq!(m.get(77), Some(&0));
        assert!(m.update_or_remove(77, |_| true));
        assert!(!m.update_or_remove(77, |_| true), "already gone");
        assert_eq!(m.iter().count(), 9_998);
        let sum: u64 = m.iter().map(|(_, v)| *v).sum();
        assert_eq!(
            sum,
            (0..10_000u64).map(|c| c * 3 + 1).sum::<u64>() - (1234 * 3 + 1) - (77 * 3 + 1)
        );
    }

    #[test]
    fn a_string_index_finds_inserts_and_removes() {
        let names: Vec<String> = (0..5000).map(|i| format!("cv-{i}")).collect();
        let name = |id: u32| names[id as usize].as_bytes();
        let mut idx = StrIndex::default();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(idx.find(str_hash(n), n, name), None);
            idx.insert(str_hash(n), i as u32);
        }
        assert_eq!(idx.len(), 5000);
        assert_eq!(idx.find(str_hash("cv-42"), "cv-42", name), Some(42));
        idx.remove(str_hash("cv-42"), 42);
        assert_eq!(idx.find(str_hash("cv-42"), "cv-42", name), None);
        assert_eq!(idx.find(str_hash("cv-43"), "cv-43", name), Some(43));
        assert_eq!(idx.len(), 4999);
    }
}
