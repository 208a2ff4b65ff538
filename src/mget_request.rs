//! `cache.v1.MGetRequest`, written by hand: its keys as [`Key`]s, slices
//! of the request's own bytes, instead of one `String` each.
//!
//! prost decodes `repeated string keys` into a `String` per key: for an
//! MGet of 100 keys, 100 allocations and copies before the service sees
//! the request. Here each key is a [`Bytes`] slice of the buffer tonic
//! decoded from (`copy_to_bytes` of a `BytesMut` splits it, no copy),
//! checked as UTF-8 once, at decode, failing with prost's own error. The
//! service hands the same slices back in the reply's hits (the reply
//! type, `mget_reply`, which imports [`Key`] from here: this module knows
//! nothing of it), so an MGet's keys are never copied into a
//! `String` at all.
//!
//! `build.rs` points the generated code at this type (`extern_path`), and
//! `pb` re-exports it. This module owns the message's encoding and the
//! [`Key`] type; what a valid key is (the service's) it does not check.

use std::{borrow::Borrow, fmt, hash, ops::Deref};

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{
        DecodeContext, WireType, bytes as pb_bytes, encode_key, encode_varint, encoded_len_varint,
        key_len, skip_field, string,
    },
};

/// The request of MGet: the keys to read (1..`max_batch_keys`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MGetRequest {
    pub keys: Vec<Key>,
}

/// A key as it came on the wire: UTF-8 bytes, shared with the buffer they
/// were decoded from. Reads as a `str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(Bytes);

/// The keys field's number in `MGetRequest`.
const KEYS: u32 = 1;

// === impl Key ===

impl Key {
    /// `bytes` as a key, when they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Every `Key` was checked as UTF-8 when made (`from_utf8`, or from
        // a `str`), so this never falls back; without `unsafe` the check
        // is repeated, which the hot path avoids by using `as_bytes`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes (to encode without a copy of the handle's target).
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(key: &str) -> Self {
        Self(Bytes::copy_from_slice(key.as_bytes()))
    }
}

impl From<String> for Key {
    fn from(key: String) -> Self {
        Self(Bytes::from(key))
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.as_str().to_owned()
    }
}

impl Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Key {
    /// Hashes and compares as the `str` (`Hash` below agrees).
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl hash::Hash for Key {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Key {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Message ===

/// Names the message and field a decode error arose in, as prost's
/// generated code does (its error then reads `MGetRequest.keys: ...`).
pub(crate) fn within(
    message: &'static str,
    field: &'static str,
) -> impl FnOnce(DecodeError) -> DecodeError {
    move |mut e| {
        e.push(message, field);
        e
    }
}

/// Reads one length-delimited field as a [`Key`]: a slice of `buf`, or
/// prost's error for a string that is not UTF-8 (the codec answers it
/// `INVALID_ARGUMENT`, as before).
pub(crate) fn merge_key(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<Key, DecodeError> {
    let mut bytes = Bytes::new();
    pb_bytes::merge(wire_type, &mut bytes, buf, ctx.clone())?;
    Key::from_utf8(bytes).map_err(|_| not_utf8(ctx))
}

/// prost's own error for a string that is not UTF-8, got by asking its
/// string decoder (the error's kind is not public), so a caller sees the
/// same message as with the generated type.
#[cold]
fn not_utf8(ctx: DecodeContext) -> DecodeError {
    let mut scratch = String::new();
    // Length 1, then a byte that no UTF-8 sequence starts with.
    let invalid: &[u8] = &[1, 0xff];
    match string::merge(
        WireType::LengthDelimited,
        &mut scratch,
        &mut &invalid[..],
        ctx,
    ) {
        Err(e) => e,
        // Unreachable: prost refuses 0xff as a string.
        #[allow(deprecated)] // The only public way to make a DecodeError.
        Ok(()) => DecodeError::new("invalid string value: data is not UTF-8 encoded"),
    }
}

impl Message for MGetRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // A string on the wire is its bytes; each element goes, empty or
        // not. Written from the slice: prost's `bytes::encode` would clone
        // the `Bytes` (an atomic increment and decrement) to append it.
        for key in &self.keys {
            encode_key(KEYS, WireType::LengthDelimited, buf);
            encode_varint(key.0.len() as u64, buf);
            buf.put_slice(&key.0);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != KEYS {
            return skip_field(wire_type, tag, buf, ctx);
        }
        let key = merge_key(wire_type, buf, ctx).map_err(within("MGetRequest", "keys"))?;
        self.keys.push(key);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.keys
            .iter()
            .map(|k| key_len(KEYS) + encoded_len_varint(k.0.len() as u64) + k.0.len())
            .sum()
    }

    fn clear(&mut self) {
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What prost generates for `repeated string keys = 1`: the type this
    /// module replaces, as the reference for the wire (under the same
    /// name, which prost's errors carry).
    mod generated {
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct MGetRequest {
            #[prost(string, repeated, tag = "1")]
            pub(super) keys: Vec<String>,
        }
    }
    use self::generated::MGetRequest as Generated;

    fn strings() -> Vec<String> {
        // Empty (still sent: a repeated field sends every element),
        // non-ASCII, and one past a byte of length varint.
        vec!["a".into(), String::new(), "ü🙂".into(), "k".repeat(300)]
    }

    #[test]
    fn keys_encode_the_same_bytes_as_the_generated_type() {
        let ours = MGetRequest {
            keys: strings().into_iter().map(Key::from).collect(),
        };
        let generated = Generated { keys: strings() };
        assert_eq!(ours.encoded_len(), generated.encoded_len());
        assert_eq!(ours.encode_to_vec(), generated.encode_to_vec());
    }

    #[test]
    fn each_decodes_what_the_other_encoded() {
        let generated = Generated { keys: strings() };
        let wire = Bytes::from(generated.encode_to_vec());
        let ours = MGetRequest::decode(wire.clone()).expect("ours reads it");
        assert_eq!(ours.keys, strings());
        let back = Generated::decode(&ours.encode_to_vec()[..]).expect("generated reads ours");
        assert_eq!(back, generated);
    }

    #[test]
    fn decoded_keys_are_slices_of_the_request_not_copies() {
        let wire = Bytes::from(Generated { keys: strings() }.encode_to_vec());
        let ours = MGetRequest::decode(wire.clone()).expect("decode");
        let inside = wire.as_ptr_range();
        assert!(
            ours.keys
                .iter()
                .filter(|k| !k.is_empty())
                .all(|k| inside.contains(&k.as_bytes().as_ptr())),
            "a key was copied out of the request buffer"
        );
    }

    #[test]
    fn a_key_that_is_not_utf8_is_refused_with_prosts_error() {
        // Field 1, length 2: "a" then a byte no UTF-8 sequence starts with.
        let wire: &[u8] = &[0x0a, 0x02, b'a', 0xff];
        let generated = Generated::decode(wire).expect_err("generated refuses it");
        let ours = MGetRequest::decode(wire).expect_err("ours refuses it");
        assert_eq!(ours, generated);
        assert_eq!(ours.to_string(), generated.to_string());
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // Field 2 (varint 5), then field 3 (a string), around one key.
        let mut wire = vec![0x10, 0x05];
        wire.extend(
            Generated {
                keys: vec!["k".into()],
            }
            .encode_to_vec(),
        );
        wire.extend([0x1a, 0x01, b'x']);
        let ours = MGetRequest::decode(&wire[..]).expect("decode");
        assert_eq!(ours.keys, ["k"]);
    }

    #[test]
    fn keys_hash_and_compare_as_their_str() {
        use std::collections::HashSet;
        let set: HashSet<Key> = ["a", "b"].into_iter().map(Key::from).collect();
        assert!(set.contains("a") && !set.contains("c"));
        assert_eq!(Key::from("x"), "x");
        assert!(Key::from_utf8(Bytes::from_static(&[0xff])).is_err());
    }
}
