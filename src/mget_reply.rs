//! `cache.v1.MGetResponse`, written by hand: the hits as a list of
//! (key, value) pairs instead of the `HashMap` prost generates for
//! `map<string, bytes>`.
//!
//! The service builds the reply from keys it already holds (the request's
//! own [`Key`] slices, [`crate::mget_request`]) and values sliced off
//! Redis' reply, so a map would only cost: SipHash of every key,
//! a table allocation, and inserts (6 % of an MGet 100's CPU). On the wire
//! a map is a repeated nested message `{1: key, 2: value}`; [`Hits`]
//! encodes exactly those bytes (prost's map rules included: an empty key or
//! value is left out of its entry), and decodes them with a map's meaning
//! (a repeated key: the last value wins), so clients read it as before.
//!
//! `build.rs` points the generated code at this type (`extern_path`), and
//! `pb` re-exports it. This module owns the message's encoding only, not
//! what the hits are (the service's) nor reflection (the descriptor still
//! says `map<string, bytes>`, which is what is on the wire).

use std::{fmt, ops::Index};

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{
        DecodeContext, WireType, bytes as pb_bytes, encode_key, encode_varint, encoded_len_varint,
        key_len, skip_field,
    },
};

use crate::mget_request::{Key, merge_key, within};

/// The reply to MGet: the hits, keyed by the caller's keys.
#[derive(Clone, Default, PartialEq)]
pub struct MGetResponse {
    /// Only the keys found; each key at most once.
    pub hits: Hits,
}

/// (key, value) pairs, each key once, in the order they were added.
/// Lookups by key scan the list: built for encoding a reply, and for
/// clients reading one (tests, examples), not as a general map.
#[derive(Clone, Default, PartialEq)]
pub struct Hits(Vec<(Key, Bytes)>);

/// The map field's number in `MGetResponse`.
const HITS: u32 = 1;

/// One map entry as decoded (client side); the server encodes from its
/// pairs without building these. The key is read as a [`Key`] (a slice,
/// UTF-8 checked, prost's error otherwise), the value as a slice.
#[derive(Debug, Default)]
struct Entry {
    key: Key,
    value: Bytes,
}

// === impl Hits ===

impl Hits {
    /// Room for `n` hits.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Appends a hit. The caller adds each key once (the service's batch
    /// removes repeated keys): the list is not checked, and a repeat would
    /// go on the wire twice (a map reader keeps the last).
    pub fn push(&mut self, key: Key, value: Bytes) {
        self.0.push((key, value));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value under `key`.
    pub fn get<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> Option<&Bytes> {
        let key = key.as_ref();
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> bool {
        self.get(key).is_some()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Bytes)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Adds a decoded entry with a map's meaning: a key already held
    /// takes the new value. Client side only, so the scan (quadratic in
    /// the hits of one reply) costs the server nothing.
    fn insert(&mut self, key: Key, value: Bytes) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, held)) => *held = value,
            None => self.0.push((key, value)),
        }
    }
}

impl<Q: AsRef<str> + ?Sized> Index<&Q> for Hits {
    type Output = Bytes;

    /// The value under `key`; panics when there is none, as a map does.
    fn index(&self, key: &Q) -> &Bytes {
        #[allow(clippy::expect_used)] // `Index`'s contract is to panic.
        self.get(key).expect("no hit for this key")
    }
}

impl IntoIterator for Hits {
    type Item = (Key, Bytes);
    type IntoIter = std::vec::IntoIter<(Key, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<Key>> FromIterator<(K, Bytes)> for Hits {
    /// Each key once, as [`Hits::push`].
    fn from_iter<I: IntoIterator<Item = (K, Bytes)>>(pairs: I) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl fmt::Debug for Hits {
    /// As a map, like the generated type; values by length only, so a
    /// test's failure message does not print megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens = self.0.iter().map(|(k, v)| (k, format!("{} B", v.len())));
        f.debug_map().entries(lens).finish()
    }
}

impl fmt::Debug for MGetResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MGetResponse")
            .field("hits", &self.hits)
            .finish()
    }
}

// === impl Message ===

/// The length of one entry's body: prost's map encoding leaves out a
/// field equal to its default (an empty key or value).
fn entry_len(key: &Key, value: &Bytes) -> usize {
    let key = if key.as_bytes().is_empty() {
        0
    } else {
        // A string on the wire is its bytes.
        pb_bytes::encoded_len(1, key.bytes())
    };
    let value = if value.is_empty() {
        0
    } else {
        pb_bytes::encoded_len(2, value)
    };
    key + value
}

/// Writes a length-delimited field from a slice: what prost's
/// `bytes::encode` writes, without the `Bytes` clone (an atomic increment
/// and decrement of the shared buffer's count) it makes to append one.
fn put_field(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

impl Message for Entry {
    fn encode_raw(&self, _buf: &mut impl BufMut) {
        // Never encoded: the reply writes its pairs directly.
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => merge_key(wire_type, buf, ctx).map(|key| self.key = key),
            2 => pb_bytes::merge(wire_type, &mut self.value, buf, ctx),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        field.map_err(within("MGetResponse", "hits"))
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Message for MGetResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (key, value) in &self.hits.0 {
            encode_key(HITS, WireType::LengthDelimited, buf);
            encode_varint(entry_len(key, value) as u64, buf);
            if !key.as_bytes().is_empty() {
                put_field(1, key.as_bytes(), buf);
            }
            if !value.is_empty() {
                put_field(2, value, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != HITS {
            return skip_field(wire_type, tag, buf, ctx);
        }
        let mut entry = Entry::default();
        prost::encoding::message::merge(wire_type, &mut entry, buf, ctx)?;
        self.hits.insert(entry.key, entry.value);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.hits.0.iter().fold(0, |total, (key, value)| {
            let len = entry_len(key, value);
            total + key_len(HITS) + encoded_len_varint(len as u64) + len
        })
    }

    fn clear(&mut self) {
        self.hits.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// What prost generates for `map<string, bytes> hits = 1`: the type
    /// this module replaces, as the reference for the wire.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(map = "string, bytes", tag = "1")]
        hits: HashMap<String, Bytes>,
    }

    fn pairs() -> Vec<(String, Bytes)> {
        vec![
            ("a".into(), Bytes::from_static(b"1")),
            // prost leaves an empty value (and an empty key) out of the entry.
            ("empty".into(), Bytes::new()),
            ("".into(), Bytes::from_static(b"no key")),
            // Past one byte of length varint.
            ("big".into(), Bytes::from(vec![7u8; 300])),
        ]
    }

    #[test]
    fn one_hit_encodes_the_same_bytes_as_the_generated_map() {
        for (k, v) in pairs() {
            let ours = MGetResponse {
                hits: Hits(vec![(k.clone().into(), v.clone())]),
            };
            let generated = Generated {
                hits: HashMap::from([(k.clone(), v)]),
            };
            assert_eq!(ours.encoded_len(), generated.encoded_len(), "{k:?}");
            assert_eq!(ours.encode_to_vec(), generated.encode_to_vec(), "{k:?}");
        }
    }

    #[test]
    fn each_decodes_what_the_other_encoded() {
        let ours = MGetResponse {
            hits: pairs().into_iter().collect(),
        };
        let generated = Generated {
            hits: pairs().into_iter().collect(),
        };
        // A map's order is its hasher's: compare decoded, not bytes.
        let read = Generated::decode(&ours.encode_to_vec()[..]).expect("generated reads ours");
        assert_eq!(read, generated);
        assert_eq!(ours.encoded_len(), generated.encoded_len());
        let read = MGetResponse::decode(&generated.encode_to_vec()[..]).expect("ours reads it");
        assert_eq!(read.hits.len(), generated.hits.len());
        for (k, v) in &generated.hits {
            assert_eq!(read.hits.get(k), Some(v), "{k:?}");
        }
    }

    #[test]
    fn a_repeated_key_on_the_wire_keeps_the_last_value_as_a_map_does() {
        let twice = MGetResponse {
            hits: Hits(vec![
                (Key::from("k"), Bytes::from_static(b"first")),
                (Key::from("k"), Bytes::from_static(b"last")),
            ]),
        };
        let wire = twice.encode_to_vec();
        let generated = Generated::decode(&wire[..]).expect("generated");
        let ours = MGetResponse::decode(&wire[..]).expect("ours");
        assert_eq!(generated.hits.len(), 1);
        assert_eq!(ours.hits.len(), 1);
        assert_eq!(ours.hits["k"], generated.hits["k"]);
        assert_eq!(&ours.hits["k"][..], b"last");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // Field 2 (varint 5), then one hit: a newer server's reply.
        let mut wire = vec![0x10, 0x05];
        wire.extend(
            MGetResponse {
                hits: Hits(vec![(Key::from("k"), Bytes::from_static(b"v"))]),
            }
            .encode_to_vec(),
        );
        let read = MGetResponse::decode(&wire[..]).expect("decode");
        assert_eq!(read.hits.get("k").map(|v| &v[..]), Some(&b"v"[..]));
    }
}
