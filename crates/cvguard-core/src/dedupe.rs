//! Duplicate deliveries (issue #14): the `event_id`s an engine accepted in the last
//! `engine.dedupe_window` of event time, so an event delivered twice (Kafka is
//! at-least-once, a producer retries a POST) is applied once.
//!
//! Exact: the ids themselves are kept, not a hash an attacker could collide with. An id is
//! remembered while the engine's newest event time is at most `window` past the event
//! that was accepted with it; a repeat of it in that time is a duplicate.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::timefmt::Millis;

#[derive(Debug, Default)]
pub struct Dedupe {
    /// (hash of the id, event time it was accepted at, the id).
    ids: HashTable<(u64, Millis, Box<str>)>,
    /// (event time, hash) in the order accepted, to forget ids as time passes.
    order: VecDeque<(Millis, u64)>,
}

/// Ids are kept per account (`account` + U+001F + `id`): hashed and compared in parts,
/// so a lookup on the hot path builds no string.
const SEP: char = '\u{1f}';

fn hash(account: &str, id: &str) -> u64 {
    FxBuildHasher.hash_one((account, id))
}

fn is(stored: &str, account: &str, id: &str) -> bool {
    stored.len() == account.len() + SEP.len_utf8() + id.len()
        && stored.starts_with(account)
        && stored[account.len()..].starts_with(SEP)
        && stored.ends_with(id)
}

impl Dedupe {
    /// Whether `account`'s event `id` was accepted at an event time no earlier than `since`.
    pub fn seen(&self, account: &str, id: &str, since: Millis) -> bool {
        let h = hash(account, id);
        self.ids
            .find(h, |(eh, _, stored)| *eh == h && is(stored, account, id))
            .is_some_and(|(_, at, _)| *at >= since)
    }

    /// Remembers `account`'s event `id` as accepted at `at`.
    pub fn accept(&mut self, account: &str, id: &str, at: Millis) {
        let h = hash(account, id);
        match self
            .ids
            .find_mut(h, |(eh, _, stored)| *eh == h && is(stored, account, id))
        {
            Some(entry) => entry.1 = at,
            None => {
                let stored = format!("{account}{SEP}{id}").into_boxed_str();
                self.ids.insert_unique(h, (h, at, stored), |(eh, _, _)| *eh);
            }
        }
        self.order.push_back((at, h));
    }

    /// Forgets ids accepted before `cutoff`. An id accepted again since keeps its entry.
    pub fn expire(&mut self, cutoff: Millis) {
        while let Some(&(at, h)) = self.order.front() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            if let Ok(entry) = self.ids.find_entry(h, |(eh, eat, _)| *eh == h && *eat == at) {
                entry.remove();
            }
        }
    }

    /// Takes back an entry of `entries`.
    pub fn accept_entry(&mut self, stored: &str, at: Millis) {
        let (account, id) = stored.split_once(SEP).unwrap_or(("", stored));
        self.accept(account, id, at);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The remembered (account, id) pairs as `account` U+001F `id`, with the time each was
    /// accepted, oldest first (for snapshots; `accept_entry` takes them back).
    pub fn entries(&self) -> Vec<(String, Millis)> {
        let mut out: Vec<(String, Millis)> = self.ids.iter().map(|(_, at, id)| (id.to_string(), *at)).collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * std::mem::size_of::<(u64, Millis, Box<str>)>()
            + self.ids.iter().map(|(_, _, id)| id.len()).sum::<usize>()
            + self.order.capacity() * std::mem::size_of::<(Millis, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_seen_within_its_time_and_forgotten_after() {
        let mut d = Dedupe::default();
        d.accept("a", "e-1", 1_000);
        assert!(d.seen("a", "e-1", 500));
        assert!(d.seen("a", "e-1", 1_000));
        assert!(!d.seen("a", "e-1", 1_001), "accepted before `since`");
        assert!(!d.seen("a", "e-2", 0) && !d.seen("b", "e-1", 0));
        d.expire(1_000);
        assert!(d.seen("a", "e-1", 0), "not yet past the cutoff");
        d.expire(1_001);
        assert!(d.is_empty());
    }

    #[test]
    fn an_id_accepted_again_keeps_its_newer_time_through_the_older_ones_expiry() {
        let mut d = Dedupe::default();
        d.accept("a", "e-1", 1_000);
        d.accept("a", "e-1", 5_000);
        d.expire(2_000);
        assert!(d.seen("a", "e-1", 4_000));
        assert_eq!(d.entries(), vec![("a\u{1f}e-1".to_string(), 5_000)]);
        d.expire(6_000);
        assert!(d.is_empty());
    }
}
