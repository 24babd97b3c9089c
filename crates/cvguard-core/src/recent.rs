//! Small capped sets of recently seen values (users, IPs, user agents, accounts) kept
//! per key for evidence. Capped because an attacker controls how many there are.

use rustc_hash::FxHashMap;

#[derive(Debug, Clone, Default)]
pub struct RecentSet {
    /// value -> latest second seen.
    items: FxHashMap<Box<str>, i64>,
    /// Set once a value could not be stored because the set was full.
    truncated: bool,
}

impl RecentSet {
    /// Records `value` at `sec`. When the set is full, values at or before `cutoff` make
    /// room first; if none do, the set is marked truncated.
    pub fn note(&mut self, value: &str, sec: i64, cap: usize, cutoff: i64) {
        if let Some(last) = self.items.get_mut(value) {
            *last = (*last).max(sec);
            return;
        }
        if self.items.len() >= cap {
            self.items.retain(|_, last| *last > cutoff);
            if self.items.len() >= cap {
                self.truncated = true;
                return;
            }
        }
        self.items.insert(value.into(), sec);
    }

    /// Values seen after `cutoff`, sorted.
    pub fn live(&self, cutoff: i64) -> Vec<String> {
        let mut v: Vec<String> = self
            .items
            .iter()
            .filter(|(_, last)| **last > cutoff)
            .map(|(k, _)| k.to_string())
            .collect();
        v.sort_unstable();
        v
    }

    /// (value, latest second), sorted by value: what a snapshot keeps.
    pub fn entries(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self.items.iter().map(|(k, s)| (k.to_string(), *s)).collect();
        v.sort_unstable();
        v
    }

    pub fn from_entries(entries: Vec<(String, i64)>, truncated: bool) -> RecentSet {
        RecentSet {
            items: entries.into_iter().map(|(k, s)| (k.into_boxed_str(), s)).collect(),
            truncated,
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
        let mut s = RecentSet::default();
        s.note("a", 10, 2, 0);
        s.note("b", 20, 2, 0);
        s.note("c", 30, 2, 0);
        assert!(s.truncated());
        assert_eq!(s.live(0), vec!["a", "b"]);
        s.note("c", 30, 2, 15);
        assert_eq!(s.live(15), vec!["b", "c"]);
        s.note("b", 40, 2, 15);
        assert_eq!(s.live(35), vec!["b"]);
    }
}
