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

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl Dedupe {
    /// Whether `id` was accepted at an event time no earlier than `since`.
    pub fn seen(&self, id: &str, since: Millis) -> bool {
        let h = hash(id);
        self.ids
            .find(h, |(eh, _, eid)| *eh == h && &**eid == id)
            .is_some_and(|(_, at, _)| *at >= since)
    }

    /// Remembers `id` as accepted at `at`.
    pub fn accept(&mut self, id: &str, at: Millis) {
        let h = hash(id);
        match self.ids.find_mut(h, |(eh, _, eid)| *eh == h && &**eid == id) {
            Some(entry) => entry.1 = at,
            None => {
                self.ids.insert_unique(h, (h, at, id.into()), |(eh, _, _)| *eh);
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

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The remembered ids with the time each was accepted, oldest first (for snapshots).
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
        d.accept("e-1", 1_000);
        assert!(d.seen("e-1", 500));
        assert!(d.seen("e-1", 1_000));
        assert!(!d.seen("e-1", 1_001), "accepted before `since`");
        assert!(!d.seen("e-2", 0));
        d.expire(1_000);
        assert!(d.seen("e-1", 0), "not yet past the cutoff");
        d.expire(1_001);
        assert!(d.is_empty());
    }

    #[test]
    fn an_id_accepted_again_keeps_its_newer_time_through_the_older_ones_expiry() {
        let mut d = Dedupe::default();
        d.accept("e-1", 1_000);
        d.accept("e-1", 5_000);
        d.expire(2_000);
        assert!(d.seen("e-1", 4_000));
        assert_eq!(d.entries(), vec![("e-1".to_string(), 5_000)]);
        d.expire(6_000);
        assert!(d.is_empty());
    }
}
