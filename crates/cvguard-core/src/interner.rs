//! Strings (CV ids, and the users, IPs and user agents kept as evidence) interned once
//! for the whole engine and reference-counted by whatever holds them, so a CV touched
//! by many keys is stored once and freed when the last holder lets it go.

use crate::chunked::ChunkedVec;
use crate::cvmap::{str_hash, StrIndex};
use crate::smallstr::SmallStr;

/// A handle to an interned CV id.
pub type CvRef = u32;
/// A handle to any other interned string.
pub type Sym = u32;

#[derive(Debug, Default)]
pub struct Interner {
    index: StrIndex,
    names: ChunkedVec<Option<SmallStr>>,
    refs: ChunkedVec<u32>,
    free: Vec<u32>,
}

/// The interner of CV ids.
pub type CvInterner = Interner;

impl Interner {
    /// Returns the handle for `id`, creating it with no references if needed.
    /// A handle with no references is freed by the next `release` that reaches zero,
    /// so callers `retain` right after `intern` when they keep it.
    pub fn intern(&mut self, id: &str) -> u32 {
        let hash = str_hash(id);
        let names = &self.names;
        if let Some(r) = self
            .index
            .find(hash, id, |r| names[r as usize].as_ref().map_or(&[], SmallStr::as_bytes))
        {
            return r;
        }
        let boxed = SmallStr::new(id);
        let r = match self.free.pop() {
            Some(r) => {
                self.names[r as usize] = Some(boxed);
                self.refs[r as usize] = 0;
                r
            }
            None => {
                self.names.push(Some(boxed));
                self.refs.push(0);
                (self.names.len() - 1) as u32
            }
        };
        self.index.insert(hash, r);
        r
    }

    /// Interns and retains in one step: the caller keeps the handle.
    pub fn intern_retained(&mut self, id: &str) -> u32 {
        let r = self.intern(id);
        self.retain(r);
        r
    }

    pub fn retain(&mut self, r: u32) {
        self.refs[r as usize] += 1;
    }

    pub fn release(&mut self, r: u32) {
        let count = &mut self.refs[r as usize];
        *count -= 1;
        if *count == 0 {
            self.drop_handle(r);
        }
    }

    /// Frees a handle that was interned but never retained (every id of an event is
    /// interned before the windows decide whether they keep it).
    pub fn release_if_unused(&mut self, r: u32) {
        if self.refs[r as usize] == 0 && self.names[r as usize].is_some() {
            self.drop_handle(r);
        }
    }

    fn drop_handle(&mut self, r: u32) {
        if let Some(name) = self.names[r as usize].take() {
            self.index.remove(str_hash(&name), r);
            self.free.push(r);
        }
    }

    /// Bytes allocated for the strings, their counts and their index.
    pub fn heap_bytes(&self) -> usize {
        self.names.heap_bytes()
            + self.names.iter().flatten().map(SmallStr::heap_bytes).sum::<usize>()
            + self.refs.heap_bytes()
            + self.index.heap_bytes()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    pub fn name(&self, r: u32) -> &str {
        self.names[r as usize].as_ref().map_or("", SmallStr::as_str)
    }

    /// Live interned ids.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_frees_on_last_release() {
        let mut i = CvInterner::default();
        let a = i.intern("cv-1");
        assert_eq!(i.intern("cv-1"), a);
        i.retain(a);
        i.retain(a);
        i.release(a);
        assert_eq!(i.name(a), "cv-1");
        i.release(a);
        assert!(i.is_empty());
        let b = i.intern("cv-2");
        assert_eq!(b, a, "freed slot is reused");
        assert_eq!(i.name(b), "cv-2");
    }

    #[test]
    fn unused_handles_are_freed() {
        let mut i = CvInterner::default();
        let a = i.intern("cv-1");
        i.release_if_unused(a);
        assert!(i.is_empty());
        let b = i.intern("cv-2");
        i.retain(b);
        i.release_if_unused(b);
        assert_eq!(i.len(), 1);
    }
}
