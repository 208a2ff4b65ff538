//! The single-key commands of wave 2: [`Incr`] and [`Persist`] (each a
//! `MULTI ... EXEC` where one command cannot say it all) and [`GetTtl`].
//!
//! Why a transaction and not a Lua script: `MULTI`/`EXEC` needs no script
//! cache (no `NOSCRIPT` fallback, no `SCRIPT LOAD` per node), works where
//! scripting is disabled, and the ACL grants two plain commands instead of
//! the power to run any script. The four commands are written adjacent in
//! one write on the shared connection, so no other request's command falls
//! inside the transaction: still one round trip.

use std::time::Duration;

use bytes::BytesMut;

use super::{Command, command, unexpected};
use crate::{
    backend::{KeyList, Persisted, redis::failure, redis::resp::Reply},
    error::Result,
};

/// `INCRBY key delta`; with a TTL, `MULTI; SET key 0 NX PX ms; INCRBY key
/// delta; EXEC`: the key is created with its TTL and incremented in one
/// atomic step, so it never exists without the TTL asked for, and a key
/// that exists keeps its own.
pub(in crate::backend::redis) struct Incr {
    key: String,
    delta: String,
    ttl_ms: Option<String>,
}

/// `PTTL key`: `-2` no key, `-1` no expiry, else milliseconds left.
pub(in crate::backend::redis) struct GetTtl {
    pub(in crate::backend::redis) key: String,
}

/// `MULTI; PERSIST key; EXISTS key; EXEC`: PERSIST alone answers 0 both
/// for a missing key and for one without a TTL; EXISTS in the same
/// transaction tells them apart with no other write in between.
pub(in crate::backend::redis) struct Persist {
    pub(in crate::backend::redis) key: String,
}

impl Incr {
    pub(in crate::backend::redis) fn new(key: String, delta: i64, ttl: Option<Duration>) -> Self {
        Self {
            key,
            delta: delta.to_string(),
            ttl_ms: ttl.map(|t| t.as_millis().to_string()),
        }
    }
}

/// The items of `EXEC`'s reply to a transaction of `n` commands, after the
/// `OK` of `MULTI` and a `QUEUED` for each.
fn exec_items(name: &str, reply: Reply, n: usize) -> Result<Vec<Reply>> {
    let mut replies = match reply {
        Reply::Array(r) if r.len() == n + 2 => r,
        other => return Err(unexpected(name, &other)),
    };
    match replies.pop() {
        Some(Reply::Array(items)) if items.len() == n => Ok(items),
        // EXEC answers nil only for a WATCH that failed; we never WATCH.
        Some(other) => Err(unexpected(name, &other)),
        None => Err(unexpected(name, &Reply::Nil)),
    }
}

/// An integer item of a reply; an error item is the command's failure.
fn int(name: &str, item: Reply) -> Result<i64> {
    match item {
        Reply::Int(n) => Ok(n),
        Reply::Error(msg) => Err(failure::nested(&msg)),
        other => Err(unexpected(name, &other)),
    }
}

fn multi(out: &mut BytesMut) {
    command(out, b"MULTI", std::iter::empty());
}

fn exec(out: &mut BytesMut) {
    command(out, b"EXEC", std::iter::empty());
}

// === impl Command ===

impl Command for Incr {
    type Output = i64;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        let incrby = [self.key.as_bytes(), self.delta.as_bytes()];
        let Some(ms) = &self.ttl_ms else {
            return command(out, b"INCRBY", incrby.into_iter());
        };
        multi(out);
        let create = [self.key.as_bytes(), b"0", b"PX", ms.as_bytes(), b"NX"];
        command(out, b"SET", create.into_iter());
        command(out, b"INCRBY", incrby.into_iter());
        exec(out);
    }

    fn decode(&self, reply: Reply) -> Result<i64> {
        if self.ttl_ms.is_none() {
            return int("INCRBY", reply);
        }
        let mut items = exec_items("INCRBY", reply, 2)?;
        match items.pop() {
            Some(sum) => int("INCRBY", sum),
            None => Err(unexpected("INCRBY", &Reply::Nil)),
        }
    }

    fn replies(&self) -> usize {
        if self.ttl_ms.is_some() { 4 } else { 1 }
    }
}

impl Command for GetTtl {
    type Output = Option<Option<Duration>>;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"PTTL", std::iter::once(self.key.as_bytes()));
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        match self.millis(reply)? {
            -2 => Ok(None),
            -1 => Ok(Some(None)),
            ms if ms >= 0 => Ok(Some(Some(Duration::from_millis(ms.unsigned_abs())))),
            ms => Err(unexpected("PTTL", &Reply::Int(ms))),
        }
    }
}

impl GetTtl {
    /// The reply as Redis gives it: milliseconds left, -1 without expiry,
    /// -2 when gone (the near cache reads it with the value and applies
    /// its own rule to it).
    pub(in crate::backend::redis) fn millis(&self, reply: Reply) -> Result<i64> {
        match reply {
            Reply::Int(ms) => Ok(ms),
            other => Err(unexpected("PTTL", &other)),
        }
    }
}

impl Command for Persist {
    type Output = Persisted;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        multi(out);
        command(out, b"PERSIST", std::iter::once(self.key.as_bytes()));
        command(out, b"EXISTS", std::iter::once(self.key.as_bytes()));
        exec(out);
    }

    fn decode(&self, reply: Reply) -> Result<Persisted> {
        let mut items = exec_items("PERSIST", reply, 2)?.into_iter();
        let mut next = || int("PERSIST", items.next().unwrap_or(Reply::Nil));
        let (removed, exists) = (next()?, next()?);
        Ok(Persisted {
            found: exists == 1,
            ttl_removed: removed == 1,
        })
    }

    fn replies(&self) -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::commands::tests::wire;
    use bytes::Bytes;

    fn status(s: &'static str) -> Reply {
        Reply::Status(Bytes::from_static(s.as_bytes()))
    }

    /// What the pool hands a transaction of two commands: MULTI's OK, two
    /// QUEUED, then EXEC's array.
    fn transaction(items: Vec<Reply>) -> Reply {
        Reply::Array(vec![
            status("OK"),
            status("QUEUED"),
            status("QUEUED"),
            Reply::Array(items),
        ])
    }

    #[test]
    fn incr_with_a_ttl_creates_and_adds_in_one_transaction() {
        let incr = Incr::new("k".into(), -3, Some(Duration::from_secs(2)));
        assert_eq!(
            wire(&incr),
            "*1\r\n$5\r\nMULTI\r\n\
             *6\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n0\r\n$2\r\nPX\r\n$4\r\n2000\r\n$2\r\nNX\r\n\
             *3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$2\r\n-3\r\n\
             *1\r\n$4\r\nEXEC\r\n"
        );
        assert_eq!(incr.replies(), 4);
        let created = transaction(vec![status("OK"), Reply::Int(-3)]);
        assert_eq!(incr.decode(created).expect("sum"), -3);
        let existed = transaction(vec![Reply::Nil, Reply::Int(7)]);
        assert_eq!(incr.decode(existed).expect("sum"), 7);
        let not_int = Reply::Error(Bytes::from_static(
            b"ERR value is not an integer or out of range",
        ));
        let err = incr
            .decode(transaction(vec![Reply::Nil, not_int]))
            .unwrap_err();
        assert!(
            matches!(err, crate::error::Error::FailedPrecondition(_)),
            "{err}"
        );
    }

    #[test]
    fn incr_without_a_ttl_is_one_incrby() {
        let incr = Incr::new("k".into(), 5, None);
        assert_eq!(wire(&incr), "*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$1\r\n5\r\n");
        assert_eq!(incr.replies(), 1);
        assert_eq!(incr.decode(Reply::Int(5)).expect("sum"), 5);
    }

    #[test]
    fn pttl_tells_a_miss_from_no_expiry() {
        let t = GetTtl { key: "k".into() };
        assert_eq!(t.decode(Reply::Int(-2)).expect("miss"), None);
        assert_eq!(t.decode(Reply::Int(-1)).expect("no expiry"), Some(None));
        let left = t.decode(Reply::Int(1500)).expect("ttl");
        assert_eq!(left, Some(Some(Duration::from_millis(1500))));
        assert!(t.decode(Reply::Int(-3)).is_err());
    }

    #[test]
    fn persist_reports_found_and_ttl_removed() {
        let p = Persist { key: "k".into() };
        let case = |removed, exists| {
            p.decode(transaction(vec![Reply::Int(removed), Reply::Int(exists)]))
                .expect("persist")
        };
        assert_eq!(
            case(1, 1),
            Persisted {
                found: true,
                ttl_removed: true
            }
        );
        assert_eq!(
            case(0, 1),
            Persisted {
                found: true,
                ttl_removed: false
            }
        );
        assert_eq!(case(0, 0), Persisted::default());
    }
}
