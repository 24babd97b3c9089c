//! Short strings kept inline. CV ids, account ids and IPs are mostly 8-20 bytes: boxed,
//! each cost a heap allocation (a 32-byte chunk for a 10-byte id, plus the 16-byte box)
//! and, on every lookup that found it, a cache miss to compare it. Inline, the bytes sit
//! in the slot the lookup reads anyway.

/// Strings up to this many bytes are stored inline.
const INLINE: usize = 22;

/// A string stored inline when it fits in 22 bytes, else on the heap; 24 bytes either way.
#[derive(Clone)]
pub enum SmallStr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl SmallStr {
    pub fn new(s: &str) -> SmallStr {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            SmallStr::Heap(s.into())
        }
    }

    /// Bytes on the heap besides the 24 of the value itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            SmallStr::Inline { .. } => 0,
            SmallStr::Heap(s) => s.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SmallStr::Inline { len, bytes } => &bytes[..*len as usize],
            SmallStr::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Built from a `str` by `new`, so always UTF-8; checking again costs a few
            // nanoseconds on paths that build alerts and snapshots, not on lookups.
            SmallStr::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default(),
            SmallStr::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::ops::Deref for SmallStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_strings_come_back_unchanged() {
        for s in [
            "",
            "cv-0000001",
            "acc-1",
            "2001:db8::1",
            "é-multibyte-ü",
            &"x".repeat(22),
            &"y".repeat(23),
        ] {
            let small = SmallStr::new(s);
            assert_eq!(small.as_str(), s);
            assert_eq!(small.as_bytes(), s.as_bytes());
            assert_eq!(matches!(small, SmallStr::Inline { .. }), s.len() <= INLINE);
        }
    }

    #[test]
    fn it_is_no_larger_than_a_box_and_a_word() {
        assert_eq!(std::mem::size_of::<SmallStr>(), 24);
        assert_eq!(std::mem::size_of::<Option<SmallStr>>(), 24);
    }
}
