//! Sliding event-time windows at one-second granularity.
//!
//! Time inside a window is whole seconds. An entry at second `s` is inside a window of
//! `w` seconds at stream second `now` exactly when `s > now - w`. Callers expire with
//! `cutoff = now - w` before reading a value.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::event::Visibility;
use crate::interner::CvRef;

/// `events` and `cvs` measures: a running sum over per-second buckets.
#[derive(Debug, Default, Clone)]
pub struct CountWindow {
    /// (second, amount), ascending by second, one bucket per second at most.
    buckets: VecDeque<(i64, u64)>,
    total: u64,
}

impl CountWindow {
    pub fn add(&mut self, sec: i64, amount: u64) {
        if amount == 0 {
            return;
        }
        self.total += amount;
        match self.buckets.back_mut() {
            Some((last, n)) if *last == sec => *n += amount,
            Some((last, _)) if *last > sec => {
                // Out of order (within the allowed lateness): keep buckets sorted.
                match self.buckets.binary_search_by_key(&sec, |(s, _)| *s) {
                    Ok(i) => self.buckets[i].1 += amount,
                    Err(i) => self.buckets.insert(i, (sec, amount)),
                }
            }
            _ => self.buckets.push_back((sec, amount)),
        }
    }

    /// Drops every bucket at or before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        while let Some(&(sec, n)) = self.buckets.front() {
            if sec > cutoff {
                break;
            }
            self.total -= n;
            self.buckets.pop_front();
        }
    }

    pub fn value(&self) -> u64 {
        self.total
    }

    /// The value as if expired to `cutoff`, without changing anything (for reads).
    pub fn value_at(&self, cutoff: i64) -> u64 {
        self.buckets
            .iter()
            .rev()
            .take_while(|(s, _)| *s > cutoff)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn oldest(&self) -> Option<i64> {
        self.buckets.front().map(|(s, _)| *s)
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// (second, amount) buckets, oldest first: what a snapshot keeps.
    pub fn buckets(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.buckets.iter().copied()
    }

    /// Rebuilds a window from snapshot buckets (any order).
    pub fn from_buckets(buckets: impl IntoIterator<Item = (i64, u64)>) -> CountWindow {
        let mut w = CountWindow::default();
        for (sec, n) in buckets {
            w.add(sec, n);
        }
        w
    }
}

/// What a distinct window remembers of one CV while it is inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CvAccess {
    /// First access since the CV entered this window (seconds).
    pub first_sec: i64,
    /// Latest access (seconds); the CV leaves the window when this does.
    pub last_sec: i64,
    /// Most revealing visibility seen.
    pub visibility: Visibility,
    /// Action id of the first access.
    pub first_action: u8,
}

/// `distinct_cvs`: the exact set of CVs touched in the window.
#[derive(Debug, Default, Clone)]
pub struct DistinctWindow {
    seen: FxHashMap<CvRef, CvAccess>,
    /// (second, cv) for the latest access of each CV, ascending by second. A CV seen
    /// again later gets a newer entry; the older one is skipped when it expires.
    queue: VecDeque<(i64, CvRef)>,
    by_visibility: [u64; 3],
}

impl DistinctWindow {
    /// Records an access. Returns true when the CV is new to the window; the caller
    /// then owns one more reference to it.
    pub fn add(&mut self, sec: i64, cv: CvRef, visibility: Visibility, action: u8) -> bool {
        use std::collections::hash_map::Entry;
        match self.seen.entry(cv) {
            Entry::Occupied(mut e) => {
                let a = e.get_mut();
                if visibility > a.visibility {
                    self.by_visibility[a.visibility as usize] -= 1;
                    self.by_visibility[visibility as usize] += 1;
                    a.visibility = visibility;
                }
                if sec < a.first_sec {
                    a.first_sec = sec;
                    a.first_action = action;
                }
                if sec > a.last_sec {
                    a.last_sec = sec;
                    push_sorted(&mut self.queue, sec, cv);
                }
                false
            }
            Entry::Vacant(e) => {
                e.insert(CvAccess {
                    first_sec: sec,
                    last_sec: sec,
                    visibility,
                    first_action: action,
                });
                self.by_visibility[visibility as usize] += 1;
                push_sorted(&mut self.queue, sec, cv);
                true
            }
        }
    }

    /// Drops CVs whose latest access is at or before `cutoff`, handing each one to
    /// `released` so the caller can drop its reference.
    pub fn expire(&mut self, cutoff: i64, mut released: impl FnMut(CvRef)) {
        while let Some(&(sec, cv)) = self.queue.front() {
            if sec > cutoff {
                break;
            }
            self.queue.pop_front();
            if let Some(a) = self.seen.get(&cv) {
                if a.last_sec <= cutoff {
                    self.by_visibility[a.visibility as usize] -= 1;
                    self.seen.remove(&cv);
                    released(cv);
                }
            }
        }
    }

    /// Drops everything, handing each CV to `released`.
    pub fn clear(&mut self, mut released: impl FnMut(CvRef)) {
        for cv in self.seen.keys() {
            released(*cv);
        }
        self.seen.clear();
        self.queue.clear();
        self.by_visibility = [0; 3];
    }

    pub fn value(&self) -> u64 {
        self.seen.len() as u64
    }

    /// The value as if expired to `cutoff`, without changing anything (for reads).
    pub fn value_at(&self, cutoff: i64) -> u64 {
        self.seen.values().filter(|a| a.last_sec > cutoff).count() as u64
    }

    pub fn by_visibility(&self) -> [u64; 3] {
        self.by_visibility
    }

    pub fn oldest(&self) -> Option<i64> {
        // The earliest first access of a CV still inside; the queue front is a lower
        // bound on latest accesses, so scan only when asked (at alert time).
        self.seen.values().map(|a| a.first_sec).min()
    }

    pub fn accesses(&self) -> impl Iterator<Item = (CvRef, &CvAccess)> + '_ {
        self.seen.iter().map(|(cv, a)| (*cv, a))
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Applies `f` to every first-action id (after the rules' action numbering changed).
    pub fn remap_first_actions(&mut self, f: impl Fn(u8) -> u8) {
        for a in self.seen.values_mut() {
            a.first_action = f(a.first_action);
        }
    }

    /// Puts back a CV as a snapshot recorded it. The caller owns one reference to it.
    pub fn restore(&mut self, cv: CvRef, access: CvAccess) {
        self.by_visibility[access.visibility as usize] += 1;
        self.seen.insert(cv, access);
        push_sorted(&mut self.queue, access.last_sec, cv);
    }
}

fn push_sorted(queue: &mut VecDeque<(i64, CvRef)>, sec: i64, cv: CvRef) {
    match queue.back() {
        Some(&(last, _)) if last > sec => {
            let i = queue.partition_point(|(s, _)| *s <= sec);
            queue.insert(i, (sec, cv));
        }
        _ => queue.push_back((sec, cv)),
    }
}

#[cfg(test)]
mod tests;
