//! A growable array in fixed-size chunks: pushing never moves what is already stored.
//!
//! The engine's slabs (key states, interned names) reach millions of entries; a `Vec`
//! that doubles copies all of them at once, tens of megabytes in the middle of the
//! stream. Here growth allocates one more chunk.

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
}
