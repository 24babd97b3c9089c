//! CV ids, interned once for the whole engine and reference-counted by the windows
//! that hold them, so a CV touched by many keys is stored once and freed when the
//! last window lets it go.

use rustc_hash::FxHashMap;

/// A handle to an interned CV id.
pub type CvRef = u32;

#[derive(Debug, Default)]
pub struct CvInterner {
    ids: FxHashMap<Box<str>, CvRef>,
    names: Vec<Option<Box<str>>>,
    refs: Vec<u32>,
    free: Vec<CvRef>,
}

impl CvInterner {
    /// Returns the handle for `id`, creating it with no references if needed.
    /// A handle with no references is freed by the next `release` that reaches zero,
    /// so callers `retain` right after `intern` when they keep it.
    pub fn intern(&mut self, id: &str) -> CvRef {
        if let Some(r) = self.ids.get(id) {
            return *r;
        }
        let boxed: Box<str> = id.into();
        let r = match self.free.pop() {
            Some(r) => {
                self.names[r as usize] = Some(boxed.clone());
                self.refs[r as usize] = 0;
                r
            }
            None => {
                self.names.push(Some(boxed.clone()));
                self.refs.push(0);
                (self.names.len() - 1) as CvRef
            }
        };
        self.ids.insert(boxed, r);
        r
    }

    pub fn retain(&mut self, r: CvRef) {
        self.refs[r as usize] += 1;
    }

    pub fn release(&mut self, r: CvRef) {
        let count = &mut self.refs[r as usize];
        *count -= 1;
        if *count == 0 {
            self.drop_handle(r);
        }
    }

    /// Frees a handle that was interned but never retained (every id of an event is
    /// interned before the windows decide whether they keep it).
    pub fn release_if_unused(&mut self, r: CvRef) {
        if self.refs[r as usize] == 0 && self.names[r as usize].is_some() {
            self.drop_handle(r);
        }
    }

    fn drop_handle(&mut self, r: CvRef) {
        if let Some(name) = self.names[r as usize].take() {
            self.ids.remove(&name);
            self.free.push(r);
        }
    }

    pub fn name(&self, r: CvRef) -> &str {
        self.names[r as usize].as_deref().unwrap_or("")
    }

    /// Live interned ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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
