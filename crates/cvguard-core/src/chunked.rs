//! A growable array in fixed-size chunks: pushing never moves what is already stored.
//!
//! The engine's slabs (key states, interned names) reach millions of entries; a `Vec`
//! that doubles copies all of them at once, tens of megabytes in the middle of the
//! stream. Here growth allocates one more chunk.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

#[derive(Debug)]
pub struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(value);
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }

    /// Bytes allocated for the chunks (not what the elements own).
    pub fn heap_bytes(&self) -> usize {
        chunks_bytes(&self.chunks)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

/// The chunks' allocations and that of the vector holding them.
#[allow(clippy::ptr_arg)] // its capacity, not only its length
fn chunks_bytes<T>(chunks: &Vec<Vec<T>>) -> usize {
    chunks
        .iter()
        .map(|c| c.capacity() * std::mem::size_of::<T>())
        .sum::<usize>()
        + chunks.capacity() * std::mem::size_of::<Vec<T>>()
}

/// Equal-width rows in fixed-size chunks: what every key of one kind has in the same
/// number (a rule state per rule, a group per group), kept beside the other keys' rather
/// than behind a pointer in each key. A key's rows are found from its slot number alone,
/// so reading them does not wait for the key's own slot to arrive from memory first, and
/// a key costs no allocation of its own for them.
#[derive(Debug)]
pub struct ChunkedRows<T> {
    width: usize,
    chunks: Vec<Vec<T>>,
    rows: usize,
}

impl<T> ChunkedRows<T> {
    pub fn new(width: usize) -> ChunkedRows<T> {
        ChunkedRows {
            width,
            chunks: Vec::new(),
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a row of exactly `width` items.
    pub fn push_row(&mut self, row: impl IntoIterator<Item = T>) {
        if self.rows.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK * self.width));
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        let before = chunk.len();
        chunk.extend(row);
        assert_eq!(chunk.len() - before, self.width, "a row has the table's width");
        self.rows += 1;
    }

    pub fn row(&self, i: usize) -> &[T] {
        let at = (i & (CHUNK - 1)) * self.width;
        &self.chunks[i >> CHUNK_BITS][at..at + self.width]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        let at = (i & (CHUNK - 1)) * self.width;
        &mut self.chunks[i >> CHUNK_BITS][at..at + self.width]
    }

    /// Bytes allocated for the chunks (not what the items own).
    pub fn heap_bytes(&self) -> usize {
        chunks_bytes(&self.chunks)
    }

    /// Replaces row `i` with `row` (exactly `width` items).
    pub fn set_row(&mut self, i: usize, row: impl IntoIterator<Item = T>) {
        let mut n = 0;
        for (slot, value) in self.row_mut(i).iter_mut().zip(row) {
            *slot = value;
            n += 1;
        }
        assert_eq!(n, self.width, "a row has the table's width");
    }
}

impl<T> Default for ChunkedRows<T> {
    fn default() -> Self {
        ChunkedRows::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_stay_where_they_were_put() {
        let mut v = ChunkedVec::default();
        for i in 0..10_000u32 {
            v.push(i);
        }
        let first = &v[0] as *const u32;
        for i in 10_000..20_000u32 {
            v.push(i);
        }
        assert_eq!(first, &v[0] as *const u32, "growth moved nothing");
        assert_eq!(v.len(), 20_000);
        assert_eq!(v[4095], 4095);
        assert_eq!(v[4096], 4096);
        v[12_345] = 7;
        assert_eq!(v.iter().filter(|x| **x == 7).count(), 2);
        assert_eq!(v.iter().count(), 20_000);
    }

    #[test]
    fn rows_keep_their_width_and_place() {
        let mut rows = ChunkedRows::new(3);
        for i in 0..10_000u32 {
            rows.push_row([i, i + 1, i + 2]);
        }
        assert_eq!(rows.rows(), 10_000);
        assert_eq!(rows.row(4095), &[4095, 4096, 4097]);
        assert_eq!(rows.row(4096), &[4096, 4097, 4098]);
        rows.row_mut(9_999)[1] = 0;
        assert_eq!(rows.row(9_999), &[9_999, 0, 10_001]);
        rows.set_row(17, [7, 8, 9]);
        assert_eq!(rows.row(17), &[7, 8, 9]);
        assert_eq!(rows.row(16), &[16, 17, 18]);
        let mut empty: ChunkedRows<u32> = ChunkedRows::new(0);
        empty.push_row([]);
        assert_eq!(empty.row(0), &[] as &[u32]);
    }
}

/// A double-ended queue that, once large, grows and shrinks by fixed chunks.
///
/// A distinct group's queue holds one entry per access in its longest window: for a
/// harvesting account, a million. A `VecDeque` that doubles copies all of it into fresh
/// pages at once (0.7 ms for a harvester's queue in the e2e benchmark). Small queues,
/// which are most, stay a plain `VecDeque`; past one chunk the queue becomes a
/// sequence of full chunks, and growth allocates one more.
#[derive(Debug, Clone)]
pub enum ChunkedDeque<T> {
    Flat(VecDeque<T>),
    /// Boxed, so that the many small queues stay the size of a `VecDeque`.
    Chunked(Box<Chunks<T>>),
}

/// Every chunk holds `CHUNK` entries except the last; the first has `head` of them
/// already popped.
#[derive(Debug, Clone)]
pub struct Chunks<T> {
    chunks: VecDeque<Vec<T>>,
    head: usize,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque::Flat(VecDeque::new())
    }
}

impl<T: Copy> From<Vec<T>> for ChunkedDeque<T> {
    fn from(v: Vec<T>) -> Self {
        let mut q = ChunkedDeque::default();
        for x in v {
            q.push_back(x);
        }
        q
    }
}

impl<T: Copy> ChunkedDeque<T> {
    pub fn len(&self) -> usize {
        match self {
            ChunkedDeque::Flat(q) => q.len(),
            ChunkedDeque::Chunked(c) => c.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for the entries.
    pub fn heap_bytes(&self) -> usize {
        match self {
            ChunkedDeque::Flat(q) => q.capacity() * std::mem::size_of::<T>(),
            ChunkedDeque::Chunked(c) => {
                std::mem::size_of::<Chunks<T>>()
                    + c.chunks
                        .iter()
                        .map(|v| v.capacity() * std::mem::size_of::<T>())
                        .sum::<usize>()
                    + c.chunks.capacity() * std::mem::size_of::<Vec<T>>()
            }
        }
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        match self {
            ChunkedDeque::Flat(q) => q.get(i),
            ChunkedDeque::Chunked(c) => {
                if i >= c.len {
                    return None;
                }
                let at = c.head + i;
                c.chunks[at >> CHUNK_BITS].get(at & (CHUNK - 1))
            }
        }
    }

    pub fn front(&self) -> Option<&T> {
        self.get(0)
    }

    pub fn back(&self) -> Option<&T> {
        match self {
            ChunkedDeque::Flat(q) => q.back(),
            ChunkedDeque::Chunked(c) => c.chunks.back().and_then(|chunk| chunk.last()),
        }
    }

    pub fn push_back(&mut self, value: T) {
        match self {
            ChunkedDeque::Flat(q) if q.len() < CHUNK => {
                if q.capacity() == 0 {
                    // Most queues hold few entries: room for one, not the four a first
                    // push takes.
                    q.reserve_exact(1);
                }
                q.push_back(value);
            }
            ChunkedDeque::Flat(q) => {
                // Full: its entries become the first chunk, without a copy of the rest.
                let first: Vec<T> = std::mem::take(q).into();
                let mut second = Vec::with_capacity(CHUNK);
                second.push(value);
                *self = ChunkedDeque::Chunked(Box::new(Chunks {
                    chunks: VecDeque::from([first, second]),
                    head: 0,
                    len: CHUNK + 1,
                }));
            }
            ChunkedDeque::Chunked(c) => {
                if c.chunks.back().is_none_or(|chunk| chunk.len() == CHUNK) {
                    c.chunks.push_back(Vec::with_capacity(CHUNK));
                }
                c.chunks.back_mut().expect("a chunk with room").push(value);
                c.len += 1;
            }
        }
    }

    pub fn pop_front(&mut self) -> Option<T> {
        match self {
            ChunkedDeque::Flat(q) => q.pop_front(),
            ChunkedDeque::Chunked(c) => {
                if c.len == 0 {
                    return None;
                }
                let value = c.chunks[0][c.head];
                c.head += 1;
                c.len -= 1;
                if c.head == CHUNK || c.len == 0 {
                    c.chunks.pop_front();
                    c.head = 0;
                }
                Some(value)
            }
        }
    }

    /// The number of leading entries for which `pred` holds (they must come first).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        match self {
            ChunkedDeque::Flat(q) => q.partition_point(pred),
            ChunkedDeque::Chunked(c) => {
                let (mut lo, mut hi) = (0, c.len);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if pred(self.get(mid).expect("in range")) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        }
    }

    /// Inserts at position `at`, moving the entries after it back by one: cheap near the
    /// back, where late accesses land.
    pub fn insert(&mut self, at: usize, value: T) {
        if let ChunkedDeque::Flat(q) = self {
            if q.len() < CHUNK {
                q.insert(at, value);
                return;
            }
        }
        let last = self.len();
        self.push_back(value);
        let ChunkedDeque::Chunked(c) = self else {
            unreachable!("a full queue is chunked once pushed to")
        };
        let (chunks, head) = (&mut c.chunks, c.head);
        let mut i = last;
        while i > at {
            let (to, from) = (head + i, head + i - 1);
            chunks[to >> CHUNK_BITS][to & (CHUNK - 1)] = chunks[from >> CHUNK_BITS][from & (CHUNK - 1)];
            i -= 1;
        }
        let to = head + at;
        chunks[to >> CHUNK_BITS][to & (CHUNK - 1)] = value;
    }
}

#[cfg(test)]
mod deque_tests {
    use super::*;

    /// The same operations on a `VecDeque` and a `ChunkedDeque` give the same contents,
    /// through the switch to chunks, chunk boundaries and emptying.
    #[test]
    fn behaves_as_a_vecdeque_through_every_shape() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut q: ChunkedDeque<u64> = ChunkedDeque::default();
        let mut next = 0u64;
        let mut chunked_steps = 0;
        for step in 0..200_000u64 {
            // Phases: mostly pushing, then mostly popping, so the queue crosses the chunk
            // size and empties again, more than once.
            let pushing = (step / 25_000) % 2 == 0;
            match rand(100) {
                r if r < if pushing { 70 } else { 30 } => {
                    next += 1;
                    model.push_back(next);
                    q.push_back(next);
                }
                r if r < 95 => assert_eq!(q.pop_front(), model.pop_front()),
                _ => {
                    // A late entry near the back, in order (queues are sorted by time).
                    let at = model.len().saturating_sub(rand(5) as usize);
                    let value = match at {
                        0 => model.front().copied().unwrap_or(next),
                        _ => model[at - 1],
                    };
                    model.insert(at, value);
                    q.insert(at, value);
                }
            }
            chunked_steps += usize::from(matches!(q, ChunkedDeque::Chunked(_)));
            assert_eq!(q.len(), model.len());
            assert_eq!(q.front(), model.front());
            assert_eq!(q.back(), model.back());
            if step % 997 == 0 {
                assert!(q.len() < CHUNK || matches!(q, ChunkedDeque::Chunked(_)));
                for i in 0..model.len() {
                    assert_eq!(q.get(i), model.get(i), "step {step}, entry {i}");
                }
                assert_eq!(q.get(model.len()), None);
                let cut = rand(next + 1);
                assert_eq!(q.partition_point(|v| *v <= cut), model.partition_point(|v| *v <= cut));
            }
        }
        assert!(
            chunked_steps > 50_000,
            "the chunked form was exercised: {chunked_steps} steps"
        );
        let v: Vec<u64> = (0..10_000).collect();
        let from: ChunkedDeque<u64> = v.clone().into();
        assert!((0..10_000).all(|i| from.get(i) == v.get(i)));
    }
}
