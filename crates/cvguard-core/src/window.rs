//! Sliding event-time windows at one-second granularity for the `events` and `cvs`
//! measures (`distinct_cvs` is in [`crate::distinct`]).
//!
//! Time inside a window is whole seconds. An entry at second `s` is inside a window of
//! `w` seconds at stream second `now` exactly when `s > now - w`. Callers expire with
//! `cutoff = now - w` before reading a value.

use std::collections::VecDeque;

/// `events` and `cvs` measures: a running sum over per-second buckets.
#[derive(Debug, Default, Clone)]
pub struct CountWindow {
    /// (second, amount), ascending by second, one bucket per second at most.
    buckets: VecDeque<(i64, u64)>,
    total: u64,
}

impl CountWindow {
    /// Bytes allocated for the buckets.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(i64, u64)>()
    }

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
            _ => {
                if self.buckets.capacity() == 0 {
                    self.buckets.reserve_exact(1);
                }
                self.buckets.push_back((sec, amount))
            }
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

    /// Checks that the running sum is the sum of the buckets, and that the buckets are
    /// ascending, one per second, none empty.
    pub fn check(&self) -> Result<(), String> {
        let mut sum = 0u64;
        let mut previous = None;
        for (i, &(sec, n)) in self.buckets.iter().enumerate() {
            if previous.is_some_and(|p| p >= sec) {
                return Err(format!("bucket {i} (second {sec}) is out of order"));
            }
            if n == 0 {
                return Err(format!("bucket {i} (second {sec}) is empty"));
            }
            previous = Some(sec);
            sum = sum
                .checked_add(n)
                .ok_or_else(|| format!("the buckets' sum overflows at bucket {i}"))?;
        }
        if sum != self.total {
            return Err(format!("running sum {} for buckets that add up to {sum}", self.total));
        }
        Ok(())
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

#[cfg(test)]
mod tests;
