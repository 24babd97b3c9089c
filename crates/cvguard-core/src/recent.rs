//! Small capped sets of recently seen values (users, IPs, user agents, accounts) kept
//! per key for evidence. Capped because an attacker controls how many there are.
//!
//! Values are interned engine-wide ([`Interner`]) so a key holds only handles, and
//! found by a 64-bit hash of their text kept beside the handle: an event whose user, IP
//! and user agent a key has seen before (nearly all of them) never touches the large
//! engine-wide table, only the key's own short vector.

use crate::cvmap::str_hash;
use crate::distinct::{stamp, unstamp, Stamp};
use crate::interner::{Interner, Sym};

#[derive(Debug, Clone, Default)]
pub struct RecentSet {
    /// (hash of the value, value, latest stamp seen).
    items: Vec<(u64, Sym, Stamp)>,
    /// Set once a value could not be stored because the set was full.
    truncated: bool,
}

impl RecentSet {
    /// Records `value` (whose `str_hash` is `hash`) at `sec`. When the set is full,
    /// values at or before `cutoff` make room first; if none do, the set is marked
    /// truncated. A stored value holds one reference in `names`.
    pub fn note(&mut self, hash: u64, value: &str, sec: i64, cap: usize, cutoff: i64, names: &mut Interner) {
        let s = stamp(sec);
        // Most events repeat the previous event's user, IP and user agent.
        if let Some(item) = self.items.iter_mut().rev().find(|(h, _, _)| *h == hash) {
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
            if self.items.len() >= cap {
                self.truncated = true;
                return;
            }
        }
        if self.items.capacity() == 0 {
            // Most keys only ever see one user, IP and user agent: room for one, not four.
            self.items.reserve_exact(1);
        }
        self.items.push((hash, names.intern_retained(value), s));
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
        RecentSet {
            items: entries
                .iter()
                .map(|(k, s)| (str_hash(k), names.intern_retained(k), stamp(*s)))
                .collect(),
            truncated,
        }
    }

    /// Drops every value, releasing its reference.
    pub fn clear(&mut self, names: &mut Interner) {
        for (_, v, _) in self.items.drain(..) {
            names.release(v);
        }
    }

    pub fn truncated(&self) -> bool {
        self.truncated
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
}
