//! Small capped sets of recently seen values (users, IPs, user agents, accounts) kept
//! per key for evidence. Capped because an attacker controls how many there are.
//!
//! Values are interned engine-wide ([`Interner`]) so a key holds only handles, and
//! found by a 64-bit hash of their text kept beside the handle: an event whose user, IP
//! and user agent a key has seen before (nearly all of them) never touches the large
//! engine-wide table, only the key's own short vector.

use rustc_hash::FxHashMap;

use crate::cvmap::str_hash;
use crate::distinct::{stamp, unstamp, Stamp};
use crate::interner::{Interner, Sym};

/// (hash of the value, value, latest stamp seen).
type Item = (u64, Sym, Stamp);

/// A set's values: most keys only ever see one user, one IP and one user agent, so the
/// first value is kept in the key itself. A vector for it cost an allocation per set
/// (three or four per key) and a pointer to follow on every event. Larger sets, and
/// what only they need, live behind one pointer, so a set is 24 bytes in the key.
#[derive(Debug, Clone)]
enum Items {
    One(Option<Item>),
    Many(Box<Many>),
}

#[derive(Debug, Clone, Default)]
struct Many {
    items: Vec<Item>,
    /// Position of each value by hash once the set is past `INDEX_FROM` values (an IP or
    /// org can have up to `cap` accounts): searching is then one lookup, not a scan.
    index: Option<FxHashMap<u64, u32>>,
    /// Set once a value could not be stored because the set was full.
    truncated: bool,
}

impl Default for Items {
    fn default() -> Self {
        Items::One(None)
    }
}

impl std::ops::Deref for Items {
    type Target = [Item];
    fn deref(&self) -> &[Item] {
        match self {
            Items::One(one) => one.as_slice(),
            Items::Many(m) => &m.items,
        }
    }
}

impl std::ops::DerefMut for Items {
    fn deref_mut(&mut self) -> &mut [Item] {
        match self {
            Items::One(one) => one.as_mut_slice(),
            Items::Many(m) => &mut m.items,
        }
    }
}

impl Items {
    fn push(&mut self, item: Item) {
        match self {
            Items::One(slot @ None) => *slot = Some(item),
            _ => self.many().items.push(item),
        }
    }

    /// The large form, made from the small one if need be.
    fn many(&mut self) -> &mut Many {
        if let Items::One(one) = self {
            *self = Items::Many(Box::new(Many {
                items: one.iter().copied().collect(),
                ..Many::default()
            }));
        }
        match self {
            Items::Many(m) => m,
            Items::One(_) => unreachable!("made large above"),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Item) -> bool) {
        match self {
            Items::One(one) => {
                if one.as_ref().is_some_and(|i| !keep(i)) {
                    *one = None;
                }
            }
            Items::Many(m) => m.items.retain(keep),
        }
    }

    fn index(&self) -> Option<&FxHashMap<u64, u32>> {
        match self {
            Items::Many(m) => m.index.as_ref(),
            Items::One(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RecentSet {
    items: Items,
}

/// Up to this many values a set is searched linearly.
const INDEX_FROM: usize = 16;

impl RecentSet {
    /// Bytes allocated beyond the first value, which is kept in the set itself.
    pub fn heap_bytes(&self) -> usize {
        match &self.items {
            Items::One(_) => 0,
            Items::Many(m) => {
                std::mem::size_of::<Many>()
                    + m.items.capacity() * std::mem::size_of::<Item>()
                    + m.index.as_ref().map_or(0, |i| {
                        crate::cvmap::table_bytes(i.capacity(), std::mem::size_of::<(u64, u32)>())
                    })
            }
        }
    }

    /// Records `value` (whose `str_hash` is `hash`) at `sec`. When the set is full,
    /// values at or before `cutoff` make room first; if none do, the set is marked
    /// truncated. A stored value holds one reference in `names`.
    pub fn note(&mut self, hash: u64, value: &str, sec: i64, cap: usize, cutoff: i64, names: &mut Interner) {
        let s = stamp(sec);
        if let Some(i) = self.position(hash) {
            let item = &mut self.items[i];
            item.2 = item.2.max(s);
            return;
        }
        if self.items.len() >= cap {
            let cut = stamp(cutoff);
            self.items.retain(|(_, v, last)| {
                let keep = *last > cut;
                if !keep {
                    names.release(*v);
                }
                keep
            });
            self.reindex();
            if self.items.len() >= cap {
                self.items.many().truncated = true;
                return;
            }
        }
        self.items.push((hash, names.intern_retained(value), s));
        if let Items::Many(m) = &mut self.items {
            match &mut m.index {
                Some(index) => {
                    index.insert(hash, (m.items.len() - 1) as u32);
                }
                None if m.items.len() > INDEX_FROM => self.reindex(),
                None => {}
            }
        }
    }

    fn position(&self, hash: u64) -> Option<usize> {
        match self.items.index() {
            Some(index) => index.get(&hash).map(|i| *i as usize),
            // Most events repeat the previous event's user, IP and user agent.
            None => self.items.iter().rposition(|(h, _, _)| *h == hash),
        }
    }

    fn reindex(&mut self) {
        if let Items::Many(m) = &mut self.items {
            m.index = (m.items.len() > INDEX_FROM).then(|| {
                m.items
                    .iter()
                    .enumerate()
                    .map(|(i, (h, _, _))| (*h, i as u32))
                    .collect()
            });
        }
    }

    /// Values seen after `cutoff`, sorted.
    pub fn live(&self, cutoff: i64, names: &Interner) -> Vec<String> {
        let cut = stamp(cutoff);
        let mut v: Vec<String> = self
            .items
            .iter()
            .filter(|(_, _, last)| *last > cut)
            .map(|(_, k, _)| names.name(*k).to_string())
            .collect();
        v.sort_unstable();
        v
    }

    /// (value, latest second), sorted by value: what a snapshot keeps.
    pub fn entries(&self, names: &Interner) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .items
            .iter()
            .map(|(_, k, s)| (names.name(*k).to_string(), unstamp(*s)))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn from_entries(entries: &[(String, i64)], truncated: bool, names: &mut Interner) -> RecentSet {
        let mut set = RecentSet::default();
        for (k, s) in entries {
            set.items.push((str_hash(k), names.intern_retained(k), stamp(*s)));
        }
        if truncated {
            set.items.many().truncated = true;
        }
        set.reindex();
        set
    }

    /// Drops every value, releasing its reference. A set marked truncated stays so.
    pub fn clear(&mut self, names: &mut Interner) {
        let truncated = self.truncated();
        for (_, v, _) in std::mem::take(&mut self.items).iter() {
            names.release(*v);
        }
        if truncated {
            self.items.many().truncated = true;
        }
    }

    pub fn truncated(&self) -> bool {
        matches!(&self.items, Items::Many(m) if m.truncated)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_makes_room_from_expired_values() {
        let mut names = Interner::default();
        let mut s = RecentSet::default();
        let note = |s: &mut RecentSet, v: &str, sec: i64, cutoff: i64, names: &mut Interner| {
            s.note(str_hash(v), v, sec, 2, cutoff, names)
        };
        note(&mut s, "a", 10, 0, &mut names);
        note(&mut s, "b", 20, 0, &mut names);
        note(&mut s, "c", 30, 0, &mut names);
        assert!(s.truncated());
        assert_eq!(s.live(0, &names), vec!["a", "b"]);
        note(&mut s, "c", 30, 15, &mut names);
        assert_eq!(s.live(15, &names), vec!["b", "c"]);
        assert_eq!(names.len(), 2, "a was released when it made room");
        note(&mut s, "b", 40, 15, &mut names);
        assert_eq!(s.live(35, &names), vec!["b"]);
        s.clear(&mut names);
        assert!(names.is_empty());
    }

    #[test]
    fn a_large_set_finds_its_values_through_the_index_after_making_room() {
        let mut names = Interner::default();
        let mut s = RecentSet::default();
        let value = |i: i64| format!("acc-{i}");
        for i in 0..100 {
            s.note(str_hash(&value(i)), &value(i), i, 100, 0, &mut names);
        }
        assert!(s.items.index().is_some());
        assert_eq!(std::mem::size_of::<RecentSet>(), 24);
        s.note(str_hash(&value(5)), &value(5), 500, 100, 0, &mut names);
        assert_eq!(s.len(), 100, "a known value is not added again");
        // Full: the values at or before second 49 make room for a new one.
        s.note(str_hash("new"), "new", 501, 100, 49, &mut names);
        assert_eq!(s.len(), 52);
        assert!(!s.truncated());
        s.note(str_hash(&value(60)), &value(60), 502, 100, 49, &mut names);
        s.note(str_hash("new"), "new", 503, 100, 49, &mut names);
        assert_eq!(s.len(), 52, "found again after the index was rebuilt");
        assert_eq!(s.live(501, &names), vec!["acc-60", "new"]);
        assert_eq!(names.len(), 52);
    }
}
