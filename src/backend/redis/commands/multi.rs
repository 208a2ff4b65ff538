//! The multi-key write of wave 2: [`MSet`] (one `SET` per entry, sent as
//! one unit), split by slot in a cluster like `MGET`/`DEL` ([`MultiKey`]).
//! (`EXISTS` is `KeyCount`, beside `DEL`.)

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{Command, MultiKey, set, unexpected};
use crate::{
    backend::redis::resp::Reply,
    backend::{Entry, KeyList, Keys, SetCondition},
    error::Result,
};

/// One `SET key value [PX ms]` per entry, adjacent on one connection: one
/// write, one round trip, not atomic across keys (Redis has no multi-key
/// SET with a TTL per key).
pub(in crate::backend::redis) struct MSet {
    keys: Keys,
    values: Vec<Bytes>,
    /// Milliseconds as sent, formatted once rather than on every retry.
    ttls_ms: Vec<Option<String>>,
}

impl MSet {
    /// The entries' full keys are `keys`, in the same order.
    pub(in crate::backend::redis) fn new(keys: Keys, entries: Vec<Entry>) -> Self {
        let n = entries.len();
        let (mut values, mut ttls_ms) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (value, ttl) in entries {
            values.push(value);
            ttls_ms.push(
                ttl.as_ref()
                    .map(Duration::as_millis)
                    .map(|ms| ms.to_string()),
            );
        }
        Self {
            keys,
            values,
            ttls_ms,
        }
    }

    fn encode_one(&self, i: usize, out: &mut BytesMut) {
        let ttl = self.ttls_ms[i].as_deref();
        set(
            out,
            self.keys.get(i).unwrap_or_default(),
            &self.values[i],
            ttl,
            SetCondition::Always,
        );
    }
}

/// `n` SETs answered OK: one `OK`, or an array of `n` of them.
fn all_ok(reply: Reply, n: usize) -> Result<()> {
    let is_ok = |r: &Reply| matches!(r, Reply::Status(ok) if &ok[..] == b"OK");
    match reply {
        ref one if n == 1 && is_ok(one) => Ok(()),
        Reply::Array(items) if items.len() == n && items.iter().all(is_ok) => Ok(()),
        other => Err(unexpected("SET", &other)),
    }
}

// === impl MSet ===

impl Command for MSet {
    type Output = ();

    fn keys(&self) -> KeyList<'_> {
        KeyList::Many(&self.keys)
    }

    fn encode(&self, out: &mut BytesMut) {
        for i in 0..self.keys.len() {
            self.encode_one(i, out);
        }
    }

    fn decode(&self, reply: Reply) -> Result<()> {
        all_ok(reply, self.keys.len())
    }

    fn replies(&self) -> usize {
        self.keys.len()
    }
}

impl MultiKey for MSet {
    fn encode_part(&self, indices: &[usize], out: &mut BytesMut) {
        for &i in indices {
            self.encode_one(i, out);
        }
    }

    fn part_replies(&self, indices: &[usize]) -> usize {
        indices.len()
    }

    fn empty(&self) {}

    fn fold_part(&self, indices: &[usize], reply: Reply, _output: &mut ()) -> Result<()> {
        all_ok(reply, indices.len())
    }

    fn finish(&self, output: (), _max_reply: usize) -> Result<()> {
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::commands::tests::wire;

    #[test]
    fn mset_sends_one_set_per_entry_with_its_own_ttl() {
        let mset = MSet::new(
            ["a", "b"].into_iter().collect(),
            vec![
                (Bytes::from_static(b"1"), None),
                (Bytes::from_static(b"2"), Some(Duration::from_millis(250))),
            ],
        );
        assert_eq!(
            wire(&mset),
            "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n\
             *5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$2\r\nPX\r\n$3\r\n250\r\n"
        );
        assert_eq!(mset.replies(), 2);
        assert_eq!(mset.part_replies(&[1]), 1);
        let ok = || Reply::Status(Bytes::from_static(b"OK"));
        assert!(mset.decode(Reply::Array(vec![ok(), ok()])).is_ok());
        assert!(mset.decode(Reply::Array(vec![ok()])).is_err(), "one short");
        assert!(mset.fold_part(&[0], ok(), &mut ()).is_ok());
    }
}
