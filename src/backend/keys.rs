//! [`Keys`]: a batch of full keys (prefix applied) held back to back in
//! one buffer, and [`KeyList`], the keys a single command touches.
//!
//! An MGet, Delete or Exists of 100 keys used to carry 100 prefixed
//! `String`s, one allocation each (with the decoded request keys, most of
//! the allocator's fifth of an MGet 100's CPU, BENCHMARKS.md). A batch is
//! two allocations whatever its size: the text and the end offsets.
//!
//! This module owns the layout only: which keys go in (validated, each
//! once, prefixed) is the service's business; routing by them the
//! router's.

use std::fmt;

/// Keys back to back in one `String`, with each key's end offset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys {
    text: String,
    /// `ends[i]` is where key `i` ends in `text` (and key `i + 1` starts).
    ends: Vec<usize>,
}

/// No keys: what [`KeyList::Many`] of a keyless command points at.
static EMPTY: Keys = Keys {
    text: String::new(),
    ends: Vec::new(),
};

// === impl Keys ===

impl Keys {
    /// Room for `keys` keys of `bytes` bytes in all, so that pushing them
    /// allocates nothing more.
    pub fn with_capacity(keys: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(keys),
        }
    }

    /// `prefix` + each of `keys`, which are UTF-8 (request keys already
    /// checked), in one buffer checked as UTF-8 once as a whole: one pass
    /// over a few kilobytes instead of a `str` conversion per key (which
    /// was 2 % of an MGet 100's CPU). `None` when a key was not UTF-8.
    pub fn prefixed<'k>(
        prefix: &str,
        keys: impl ExactSizeIterator<Item = &'k [u8]> + Clone,
    ) -> Option<Self> {
        let bytes = keys.clone().map(|k| prefix.len() + k.len()).sum();
        let (mut text, mut ends) = (Vec::with_capacity(bytes), Vec::with_capacity(keys.len()));
        for key in keys {
            text.extend_from_slice(prefix.as_bytes());
            text.extend_from_slice(key);
            ends.push(text.len());
        }
        // The ends fall between whole keys, so on char boundaries.
        let text = String::from_utf8(text).ok()?;
        Some(Self { text, ends })
    }

    /// Appends the key `prefix` + `key`.
    pub fn push(&mut self, prefix: &str, key: &str) {
        self.text.push_str(prefix);
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        // Offsets are only ever taken at the end of a pushed `&str`, so
        // both are char boundaries and in range.
        self.text.get(start..end)
    }

    /// The keys in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let key = &self.text[start..end];
            start = end;
            key
        })
    }
}

impl<S: AsRef<str>> FromIterator<S> for Keys {
    /// The keys as given (no prefix added).
    fn from_iter<I: IntoIterator<Item = S>>(keys: I) -> Self {
        let mut batch = Self::default();
        for key in keys {
            batch.push("", key.as_ref());
        }
        batch
    }
}

impl fmt::Debug for Keys {
    /// As a list of keys (keys are not secret; values never pass here).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The keys one command touches, borrowed: one key, or a batch (empty
/// for a command without keys).
#[derive(Debug, Clone, Copy)]
pub enum KeyList<'a> {
    One(&'a str),
    Many(&'a Keys),
}

// === impl KeyList ===

impl<'a> KeyList<'a> {
    /// No keys (any node answers).
    pub fn none() -> Self {
        Self::Many(&EMPTY)
    }

    pub fn len(self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(keys) => keys.len(),
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn first(self) -> Option<&'a str> {
        match self {
            Self::One(key) => Some(key),
            Self::Many(keys) => keys.get(0),
        }
    }

    /// The keys in order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (one, many) = match self {
            Self::One(key) => (Some(key), None),
            Self::Many(keys) => (None, Some(keys.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_prefixed_in_the_order_pushed() {
        let mut keys = Keys::with_capacity(3, 16);
        for k in ["a", "", "ccc"] {
            keys.push("p:", k);
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.iter().collect::<Vec<_>>(), ["p:a", "p:", "p:ccc"]);
        assert_eq!(keys.iter().len(), 3);
        assert_eq!(
            (keys.get(0), keys.get(2), keys.get(3)),
            (Some("p:a"), Some("p:ccc"), None)
        );
        let at_once = Keys::prefixed("p:", ["a", "", "ccc"].iter().map(|k| k.as_bytes()));
        assert_eq!(at_once, Some(keys.clone()));
        assert_eq!(Keys::prefixed("p:", [&b"\xff"[..]].into_iter()), None);
        let unicode: Keys = ["é", "ü🙂"].into_iter().collect();
        assert_eq!(unicode.iter().collect::<Vec<_>>(), ["é", "ü🙂"]);
        assert_eq!(unicode.get(1), Some("ü🙂"));
    }

    #[test]
    fn a_key_list_names_every_key_of_its_command() {
        let keys: Keys = ["x", "y"].into_iter().collect();
        assert_eq!(KeyList::Many(&keys).iter().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(KeyList::Many(&keys).first(), Some("x"));
        assert_eq!(KeyList::One("k").iter().collect::<Vec<_>>(), ["k"]);
        assert_eq!(KeyList::One("k").len(), 1);
        assert!(KeyList::none().is_empty());
        assert_eq!(KeyList::none().first(), None);
    }
}
