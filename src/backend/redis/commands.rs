//! What to send for each cache operation, which keys it touches, and what
//! its reply means.
//!
//! One type per command ([`Get`], [`Set`], [`KeyCount`] for `DEL` and
//! `EXISTS`, [`MGet`], [`Expire`], [`Ping`]; [`MSet`] in `multi`, [`Incr`],
//! [`GetTtl`] and [`Persist`] in `single`) implementing [`Command`]: it writes itself into a
//! connection's output buffer (again on each retry), names its keys so a
//! router can pick the node that holds them, and turns the reply into the
//! [`Backend`](crate::backend::Backend) result. A reply of another shape is
//! [`unexpected`]: a bug or a foreign server, reported by shape, never by
//! value.
//!
//! A command may be several Redis commands sent as one unit ([`MSet`]'s
//! pipelined SETs, a `MULTI ... EXEC`): [`Command::replies`] says how many,
//! and the pool answers them as one reply.
//!
//! This module does not send anything (the router and pool do) and does not
//! see top-level error replies: those are failures, sorted in `failure`
//! (errors nested in an `EXEC` reply go there too).

mod multi;
mod single;

use std::time::Duration;

use bytes::{Bytes, BytesMut};

pub(super) use self::{
    multi::MSet,
    single::{GetTtl, Incr, Persist},
};
use super::resp::{self, Reply};
use crate::{
    backend::{KeyList, Keys, SetCondition},
    error::{Error, Result},
};

/// One command and the meaning of its reply.
pub(super) trait Command: Sync {
    /// What the reply means to the caller.
    type Output;

    /// The keys the command touches, in the order it sends them: what a
    /// router routes by (a cluster: by their slots; a multi-key command
    /// whose keys live on several nodes is split there, one command of the
    /// same type per node, and the outputs merged). Empty: any node.
    fn keys(&self) -> KeyList<'_>;

    /// Appends the command to `out`.
    fn encode(&self, out: &mut BytesMut);

    /// The meaning of a reply that is not an error reply.
    fn decode(&self, reply: Reply) -> Result<Self::Output>;

    /// How many commands `encode` writes: their replies come to `decode`
    /// as one array (or as the first error reply among them).
    fn replies(&self) -> usize {
        1
    }
}

/// A command over several keys that a cluster router splits: Redis
/// Cluster refuses a multi-key command whose keys hash to different slots
/// (`CROSSSLOT`), so each slot's keys go as one command of the same kind,
/// written straight from the indices of its keys (no sub-command is built,
/// no key copied), and each reply is folded into one output.
pub(super) trait MultiKey: Command {
    /// Appends the command over the keys at `indices` (into `keys()`).
    fn encode_part(&self, indices: &[usize], out: &mut BytesMut);

    /// How many commands `encode_part` writes for `indices` (see
    /// [`Command::replies`]).
    fn part_replies(&self, _indices: &[usize]) -> usize {
        1
    }

    /// The output before any part is folded in.
    fn empty(&self) -> Self::Output;

    /// Folds the reply to the part over `indices` into `output`.
    fn fold_part(&self, indices: &[usize], reply: Reply, output: &mut Self::Output) -> Result<()>;

    /// The folded output; fails as the unsplit command would have when the
    /// whole reply passes `max_reply` bytes.
    fn finish(&self, output: Self::Output, max_reply: usize) -> Result<Self::Output>;
}

/// `GET key`: the value, or `None` on a miss.
pub(super) struct Get {
    pub(super) key: String,
}

/// `SET key value [PX ms] [NX|XX]`: whether it was written.
pub(super) struct Set {
    key: String,
    value: Bytes,
    /// Milliseconds as sent, formatted once rather than on every retry.
    ttl_ms: Option<String>,
    condition: SetCondition,
}

/// `DEL key...` or `EXISTS key...`: how many of the keys existed (a
/// repeated key counts each time for EXISTS; the service sends each key
/// once). One type: the two differ only in the verb.
pub(super) struct KeyCount {
    verb: &'static str,
    pub(super) keys: Keys,
}

impl KeyCount {
    /// `DEL`: deletes the keys, counting those that existed.
    pub(super) fn delete(keys: Keys) -> Self {
        Self { verb: "DEL", keys }
    }

    /// `EXISTS`: counts the keys that exist.
    pub(super) fn exists(keys: Keys) -> Self {
        Self {
            verb: "EXISTS",
            keys,
        }
    }
}

/// `MGET key...`: one value or miss per key, in order.
pub(super) struct MGet {
    pub(super) keys: Keys,
}

/// `PEXPIRE key ms`: `false` when the key does not exist.
pub(super) struct Expire {
    key: String,
    ttl_ms: String,
}

/// `PING`: the store answers with the current credentials.
pub(super) struct Ping;

impl Set {
    pub(super) fn new(
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: SetCondition,
    ) -> Self {
        let ttl_ms = ttl.map(|t| t.as_millis().to_string());
        Self {
            key,
            value,
            ttl_ms,
            condition,
        }
    }
}

impl Expire {
    pub(super) fn new(key: String, ttl: Duration) -> Self {
        let ttl_ms = ttl.as_millis().to_string();
        Self { key, ttl_ms }
    }
}

// === impl Command ===

impl Command for Get {
    type Output = Option<Bytes>;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"GET", std::iter::once(self.key.as_bytes()));
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        value("GET", reply)
    }
}

impl Command for Set {
    type Output = bool;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        set(
            out,
            &self.key,
            &self.value,
            self.ttl_ms.as_deref(),
            self.condition,
        );
    }

    fn decode(&self, reply: Reply) -> Result<bool> {
        match reply {
            Reply::Status(ok) if &ok[..] == b"OK" => Ok(true),
            // NX/XX: the condition did not hold.
            Reply::Nil if self.condition != SetCondition::Always => Ok(false),
            other => Err(unexpected("SET", &other)),
        }
    }
}

impl Command for KeyCount {
    type Output = u64;

    fn keys(&self) -> KeyList<'_> {
        KeyList::Many(&self.keys)
    }

    fn encode(&self, out: &mut BytesMut) {
        let keys = self.keys.iter().map(str::as_bytes);
        command(out, self.verb.as_bytes(), keys);
    }

    fn decode(&self, reply: Reply) -> Result<u64> {
        match reply {
            Reply::Int(n) if n >= 0 => Ok(n.unsigned_abs()),
            other => Err(unexpected(self.verb, &other)),
        }
    }
}

impl Command for MGet {
    type Output = Vec<Option<Bytes>>;

    fn keys(&self) -> KeyList<'_> {
        KeyList::Many(&self.keys)
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"MGET", self.keys.iter().map(str::as_bytes));
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        let items = match reply {
            Reply::Array(items) if items.len() == self.keys.len() => items,
            other => return Err(unexpected("MGET", &other)),
        };
        items.into_iter().map(|item| value("MGET", item)).collect()
    }
}

impl MultiKey for KeyCount {
    fn encode_part(&self, indices: &[usize], out: &mut BytesMut) {
        command(out, self.verb.as_bytes(), part(&self.keys, indices));
    }

    fn empty(&self) -> u64 {
        0
    }

    fn fold_part(&self, _indices: &[usize], reply: Reply, output: &mut u64) -> Result<()> {
        *output += self.decode(reply)?;
        Ok(())
    }

    fn finish(&self, output: u64, _max_reply: usize) -> Result<u64> {
        Ok(output)
    }
}

impl MultiKey for MGet {
    fn encode_part(&self, indices: &[usize], out: &mut BytesMut) {
        command(out, b"MGET", part(&self.keys, indices));
    }

    fn empty(&self) -> Self::Output {
        vec![None; self.keys.len()]
    }

    fn fold_part(&self, indices: &[usize], reply: Reply, output: &mut Self::Output) -> Result<()> {
        let items = match reply {
            Reply::Array(items) if items.len() == indices.len() => items,
            other => return Err(unexpected("MGET", &other)),
        };
        for (&i, item) in indices.iter().zip(items) {
            output[i] = value("MGET", item)?;
        }
        Ok(())
    }

    fn finish(&self, output: Self::Output, max_reply: usize) -> Result<Self::Output> {
        if reply_size(&output) > max_reply {
            return Err(Error::ReplyTooLarge(max_reply));
        }
        Ok(output)
    }
}

/// The size of the one `MGET` reply these values would have been, framing
/// included, as the connection counts it against `max_reply_bytes`.
fn reply_size(values: &[Option<Bytes>]) -> usize {
    let digits = |n: usize| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let header = 3 + digits(values.len());
    values.iter().fold(header, |total, v| {
        total
            + match v {
                Some(v) => 5 + digits(v.len()) + v.len(),
                None => 5,
            }
    })
}

impl Command for Expire {
    type Output = bool;

    fn keys(&self) -> KeyList<'_> {
        KeyList::One(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        let args = [self.key.as_bytes(), self.ttl_ms.as_bytes()];
        command(out, b"PEXPIRE", args.into_iter());
    }

    fn decode(&self, reply: Reply) -> Result<bool> {
        match reply {
            Reply::Int(n) => Ok(n == 1),
            other => Err(unexpected("PEXPIRE", &other)),
        }
    }
}

impl Command for Ping {
    type Output = ();

    fn keys(&self) -> KeyList<'_> {
        KeyList::none()
    }

    fn encode(&self, out: &mut BytesMut) {
        resp::encode(out, &[b"PING"]);
    }

    fn decode(&self, reply: Reply) -> Result<()> {
        match reply {
            Reply::Status(pong) if &pong[..] == b"PONG" => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }
}

// === helpers ===

/// Writes `SET key value [PX ms] [NX|XX]`.
fn set(out: &mut BytesMut, key: &str, value: &[u8], ttl_ms: Option<&str>, when: SetCondition) {
    let mut args: [&[u8]; 5] = [key.as_bytes(), value, b"", b"", b""];
    let mut n = 2;
    if let Some(ms) = ttl_ms {
        args[2] = b"PX";
        args[3] = ms.as_bytes();
        n = 4;
    }
    match when {
        SetCondition::Always => {}
        SetCondition::IfAbsent => (args[n], n) = (b"NX", n + 1),
        SetCondition::IfPresent => (args[n], n) = (b"XX", n + 1),
    }
    command(out, b"SET", args[..n].iter().copied());
}

/// Writes a command of `name` and `args`, without collecting them.
fn command<'a>(out: &mut BytesMut, name: &[u8], args: impl ExactSizeIterator<Item = &'a [u8]>) {
    resp::command_header(out, 1 + args.len());
    resp::arg(out, name);
    for a in args {
        resp::arg(out, a);
    }
}

/// The keys at `indices` (into `keys`), as arguments.
fn part<'a>(keys: &'a Keys, indices: &'a [usize]) -> impl ExactSizeIterator<Item = &'a [u8]> {
    // A split's indices come from the same batch's keys.
    indices
        .iter()
        .map(|&i| keys.get(i).map_or(&b""[..], str::as_bytes))
}

/// A value or a miss, as GET and each MGET item answer.
fn value(command: &str, reply: Reply) -> Result<Option<Bytes>> {
    match reply {
        Reply::Bulk(value) => Ok(Some(value)),
        Reply::Nil => Ok(None),
        other => Err(unexpected(command, &other)),
    }
}

/// A reply of the wrong shape for the command: a bug or a foreign server.
/// Names the shape only; values never reach logs.
fn unexpected(command: &str, reply: &Reply) -> Error {
    let shape = match reply {
        Reply::Nil => "nil",
        Reply::Status(_) => "status",
        Reply::Error(_) => "error",
        Reply::Int(_) => "integer",
        Reply::Bulk(_) => "bulk string",
        Reply::Array(_) => "array",
    };
    Error::Internal(format!("unexpected {shape} reply to {command}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command as it goes on the wire (ASCII in these tests).
    pub(super) fn wire(command: &impl Command) -> String {
        let mut out = BytesMut::new();
        command.encode(&mut out);
        String::from_utf8(out.to_vec()).expect("ascii")
    }

    #[test]
    fn commands_encode_their_arguments_in_order() {
        let v = || Bytes::from_static(b"v");
        let set = Set::new("k".into(), v(), None, SetCondition::Always);
        assert_eq!(wire(&set), "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let ttl = Some(Duration::from_millis(1500));
        let set = Set::new("k".into(), v(), ttl, SetCondition::Always);
        assert!(
            wire(&set).ends_with("$2\r\nPX\r\n$4\r\n1500\r\n"),
            "{}",
            wire(&set)
        );
        let nx = Set::new("k".into(), v(), ttl, SetCondition::IfAbsent);
        assert!(wire(&nx).starts_with("*6\r\n"), "{}", wire(&nx));
        assert!(wire(&nx).ends_with("1500\r\n$2\r\nNX\r\n"), "{}", wire(&nx));
        let xx = Set::new("k".into(), v(), None, SetCondition::IfPresent);
        assert!(
            wire(&xx).ends_with("$1\r\nv\r\n$2\r\nXX\r\n"),
            "{}",
            wire(&xx)
        );
        let expire = Expire::new("k".into(), Duration::from_secs(2));
        assert_eq!(
            wire(&expire),
            "*3\r\n$7\r\nPEXPIRE\r\n$1\r\nk\r\n$4\r\n2000\r\n"
        );
        let keys = ["a", "b"].into_iter().collect();
        let mget = MGet { keys };
        assert_eq!(wire(&mget), "*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(wire(&Ping), "*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn commands_name_every_key_they_touch_for_the_router() {
        let listed = |keys: KeyList<'_>| keys.iter().map(String::from).collect::<Vec<_>>();
        let keys: Keys = ["a", "b", "a"].into_iter().collect();
        let mget = MGet { keys: keys.clone() };
        assert_eq!(listed(mget.keys()), ["a", "b", "a"]);
        assert_eq!(listed(KeyCount::delete(keys).keys()), ["a", "b", "a"]);
        assert_eq!(listed(Get { key: "g".into() }.keys()), ["g"]);
        let set = Set::new("s".into(), Bytes::new(), None, SetCondition::Always);
        assert_eq!(listed(set.keys()), ["s"]);
        assert_eq!(
            listed(Expire::new("e".into(), Duration::ZERO).keys()),
            ["e"]
        );
        assert!(Ping.keys().is_empty(), "any node answers PING");
    }

    #[test]
    fn replies_decode_by_shape() {
        let hit = Reply::Bulk(Bytes::from_static(b"v"));
        let get = Get { key: "k".into() };
        assert_eq!(
            get.decode(hit.clone()).expect("hit"),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(get.decode(Reply::Nil).expect("miss"), None);
        let mget = MGet {
            keys: ["a", "b"].into_iter().collect(),
        };
        let items = Reply::Array(vec![hit.clone(), Reply::Nil]);
        assert_eq!(mget.decode(items).expect("mget").len(), 2);
        // One item short is a foreign server, not a shorter answer.
        let short = Reply::Array(vec![hit]);
        assert!(mget.decode(short).is_err());
        assert!(
            KeyCount::delete(Keys::default())
                .decode(Reply::Int(-1))
                .is_err()
        );
        assert!(
            Expire::new("k".into(), Duration::ZERO)
                .decode(Reply::Int(1))
                .expect("int")
        );
    }

    #[test]
    fn a_conditional_set_not_written_answers_nil() {
        let set = |c| Set::new("k".into(), Bytes::new(), None, c);
        let ok = || Reply::Status(Bytes::from_static(b"OK"));
        assert!(set(SetCondition::IfAbsent).decode(ok()).expect("ok"));
        assert!(!set(SetCondition::IfAbsent).decode(Reply::Nil).expect("nil"));
        assert!(
            !set(SetCondition::IfPresent)
                .decode(Reply::Nil)
                .expect("nil")
        );
        assert!(set(SetCondition::Always).decode(Reply::Nil).is_err());
    }

    #[test]
    fn unexpected_replies_name_the_shape_not_the_value() {
        let e = unexpected("GET", &Reply::Bulk(Bytes::from_static(b"secret-value")));
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("bulk string reply to GET"), "{e}");
    }

    #[test]
    fn exists_sums_its_parts() {
        let exists = KeyCount::exists(["a", "b"].into_iter().collect());
        assert_eq!(
            wire(&exists),
            "*3\r\n$6\r\nEXISTS\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        let mut total = exists.empty();
        exists
            .fold_part(&[0], Reply::Int(1), &mut total)
            .expect("int");
        exists
            .fold_part(&[1], Reply::Int(0), &mut total)
            .expect("int");
        assert_eq!(total, 1);
    }
}
