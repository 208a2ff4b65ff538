//! What to send for each cache operation, which keys it touches, and what
//! its reply means.
//!
//! One type per command ([`Get`], [`Set`], [`Delete`], [`MGet`],
//! [`Expire`], [`Ping`]) implementing [`Command`]: it writes itself into a
//! connection's output buffer (again on each retry), names its keys so a
//! router can pick the node that holds them, and turns the reply into the
//! [`Backend`](crate::backend::Backend) result. A reply of another shape is
//! [`unexpected`]: a bug or a foreign server, reported by shape, never by
//! value.
//!
//! This module does not send anything (the router and pool do) and does not
//! see error replies: those are failures, sorted in `failure`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::resp::{self, Reply};
use crate::error::{Error, Result};

/// One command and the meaning of its reply.
pub(super) trait Command: Sync {
    /// What the reply means to the caller.
    type Output;

    /// The keys the command touches, in the order it sends them: what a
    /// router routes by (a cluster: by their slots; a multi-key command
    /// whose keys live on several nodes is split there, one command of the
    /// same type per node, and the outputs merged). Empty: any node.
    fn keys(&self) -> &[String];

    /// Appends the command to `out`.
    fn encode(&self, out: &mut BytesMut);

    /// The meaning of a reply that is not an error reply.
    fn decode(&self, reply: Reply) -> Result<Self::Output>;
}

/// `GET key`: the value, or `None` on a miss.
pub(super) struct Get {
    pub(super) key: String,
}

/// `SET key value [PX ms]`.
pub(super) struct Set {
    key: String,
    value: Bytes,
    /// Milliseconds as sent, formatted once rather than on every retry.
    ttl_ms: Option<String>,
}

/// `DEL key...`: how many existed.
pub(super) struct Delete {
    pub(super) keys: Vec<String>,
}

/// `MGET key...`: one value or miss per key, in order.
pub(super) struct MGet {
    pub(super) keys: Vec<String>,
}

/// `PEXPIRE key ms`: `false` when the key does not exist.
pub(super) struct Expire {
    key: String,
    ttl_ms: String,
}

/// `PING`: the store answers with the current credentials.
pub(super) struct Ping;

impl Set {
    pub(super) fn new(key: String, value: Bytes, ttl: Option<Duration>) -> Self {
        let ttl_ms = ttl.map(|t| t.as_millis().to_string());
        Self { key, value, ttl_ms }
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

    fn keys(&self) -> &[String] {
        std::slice::from_ref(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"GET", std::iter::once(self.key.as_bytes()));
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        value("GET", reply)
    }
}

impl Command for Set {
    type Output = ();

    fn keys(&self) -> &[String] {
        std::slice::from_ref(&self.key)
    }

    fn encode(&self, out: &mut BytesMut) {
        let (key, value) = (self.key.as_bytes(), &self.value[..]);
        match &self.ttl_ms {
            Some(ms) => command(out, b"SET", [key, value, b"PX", ms.as_bytes()].into_iter()),
            None => command(out, b"SET", [key, value].into_iter()),
        }
    }

    fn decode(&self, reply: Reply) -> Result<()> {
        match reply {
            Reply::Status(ok) if &ok[..] == b"OK" => Ok(()),
            other => Err(unexpected("SET", &other)),
        }
    }
}

impl Command for Delete {
    type Output = u64;

    fn keys(&self) -> &[String] {
        &self.keys
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"DEL", self.keys.iter().map(|k| k.as_bytes()));
    }

    fn decode(&self, reply: Reply) -> Result<u64> {
        match reply {
            Reply::Int(n) if n >= 0 => Ok(n.unsigned_abs()),
            other => Err(unexpected("DEL", &other)),
        }
    }
}

impl Command for MGet {
    type Output = Vec<Option<Bytes>>;

    fn keys(&self) -> &[String] {
        &self.keys
    }

    fn encode(&self, out: &mut BytesMut) {
        command(out, b"MGET", self.keys.iter().map(|k| k.as_bytes()));
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        let items = match reply {
            Reply::Array(items) if items.len() == self.keys.len() => items,
            other => return Err(unexpected("MGET", &other)),
        };
        items.into_iter().map(|item| value("MGET", item)).collect()
    }
}

impl Command for Expire {
    type Output = bool;

    fn keys(&self) -> &[String] {
        std::slice::from_ref(&self.key)
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

    fn keys(&self) -> &[String] {
        &[]
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

/// Writes a command of `name` and `args`, without collecting them.
fn command<'a>(out: &mut BytesMut, name: &[u8], args: impl ExactSizeIterator<Item = &'a [u8]>) {
    resp::command_header(out, 1 + args.len());
    resp::arg(out, name);
    for a in args {
        resp::arg(out, a);
    }
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

    #[test]
    fn unexpected_replies_name_the_shape_not_the_value() {
        let e = unexpected("GET", &Reply::Bulk(Bytes::from_static(b"secret-value")));
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("bulk string reply to GET"), "{e}");
    }
}
