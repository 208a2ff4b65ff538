//! One node's invalidation listener: a connection that asks its `CLIENT
//! ID`, subscribes to `__redis__:invalidate`, publishes itself in the
//! node's [`Tracking`] and then drops what Redis says is invalid — a list
//! of keys, or nil for "everything" (`FLUSHALL`, `FLUSHDB`, and Redis
//! losing track of keys). A `PING` every [`PING_EVERY`] proves it alive;
//! [`MISSED_PINGS`] unanswered, a closed socket or an error reply is a
//! loss: the node stops claiming, the near cache is flushed, and the
//! listener reconnects with backoff.
//!
//! It does not arm data connections (the pool does, on their next near
//! read) and does not know the store's layout.

use std::{sync::Arc, time::Duration};

use tracing::{debug, warn};

use super::Tracking;
use crate::{
    backend::redis::{
        connection::{ConnError, Connector, PushStream},
        resp::Reply,
    },
    backoff::Backoff,
    credentials::CredentialsHandle,
    shutdown::{Phase, Watch},
};

/// How often the listener proves it is alive.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);

/// Unanswered pings that declare the listener lost: a silent peer is
/// found within about `PING_EVERY * (MISSED_PINGS + 1)`.
const MISSED_PINGS: u32 = 3;

/// The channel Redis publishes invalidations on in RESP2 redirect mode.
const CHANNEL: &[u8] = b"__redis__:invalidate";

/// Keeps a listener subscribed for `tracking`'s node until `shutdown`
/// reaches `Stopped` or the node is retired; the near cache never serves
/// from this node while it is not.
pub(in crate::backend::redis) async fn listen(
    tracking: Arc<Tracking>,
    connector: Connector,
    creds: CredentialsHandle,
    mut shutdown: Watch,
) {
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
    let mut failing = false;
    loop {
        let (ended, was_up) = tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => break,
            () = tracking.retired.notified() => break,
            ended = session(&tracking, &connector, &creds, &mut backoff) => ended,
        };
        tracking.down();
        let (host, port) = (&connector.host, connector.port);
        if was_up {
            warn!(%host, port, error = %ended,
                "near cache: invalidation listener lost; near cache flushed, reconnecting");
        } else if !failing {
            // Said once per outage: an ACL without the near-cache rules
            // would otherwise log every second.
            warn!(%host, port, error = %ended,
                "near cache: cannot subscribe to invalidations; nothing from this node is cached until it can (README, \"Near cache\", lists the ACL)");
        } else {
            debug!(%host, port, error = %ended, "near cache: invalidation listener still not subscribed");
        }
        failing = !was_up;
        tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => break,
            () = tracking.retired.notified() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    tracking.down();
}

/// One listener connection, from connect to loss; returns why it ended
/// and whether it had subscribed.
async fn session(
    tracking: &Tracking,
    connector: &Connector,
    creds: &CredentialsHandle,
    backoff: &mut Backoff,
) -> (ConnError, bool) {
    match subscribe(connector, creds).await {
        Ok((stream, id)) => {
            tracking.up(id);
            backoff.reset();
            debug!(id, "near cache: invalidation listener subscribed");
            (serve(tracking, stream).await, true)
        }
        Err(e) => (e, false),
    }
}

/// Drops what Redis says is invalid and proves the connection alive,
/// until it is not; returns why.
async fn serve(tracking: &Tracking, mut stream: PushStream) -> ConnError {
    let mut ticks = tokio::time::interval(PING_EVERY);
    ticks.tick().await;
    let mut unanswered = 0;
    loop {
        let reply = tokio::select! {
            reply = stream.next() => reply,
            _ = ticks.tick() => {
                if unanswered >= MISSED_PINGS {
                    return ConnError::Unresponsive(PING_EVERY * MISSED_PINGS);
                }
                unanswered += 1;
                if let Err(e) = stream.send(&[b"PING"]).await {
                    return e;
                }
                continue;
            }
        };
        match reply.map(|r| message(&r)) {
            Ok(Message::Keys(keys)) => tracking.near.store.invalidate(keys),
            Ok(Message::All) => tracking.near.flush(),
            Ok(Message::Pong) => unanswered = 0,
            Ok(Message::Other) => {}
            Ok(Message::Error(e)) => return ConnError::Server(e),
            Err(e) => return e,
        }
    }
}

/// Connects, asks the connection's id and subscribes; returns once Redis
/// confirmed the subscription (from then on nothing sent to the id is
/// lost).
async fn subscribe(
    connector: &Connector,
    creds: &CredentialsHandle,
) -> Result<(PushStream, i64), ConnError> {
    let mut stream = connector.connect_push(&creds.current()).await?;
    stream.send(&[b"CLIENT", b"ID"]).await?;
    let id = match stream.next().await? {
        Reply::Int(id) => id,
        other => return Err(refused(&other, "CLIENT ID")),
    };
    stream.send(&[b"SUBSCRIBE", CHANNEL]).await?;
    match stream.next().await? {
        Reply::Array(items) if matches!(items.first(), Some(Reply::Bulk(k)) if &k[..] == b"subscribe") => {
            Ok((stream, id))
        }
        other => Err(refused(&other, "SUBSCRIBE")),
    }
}

fn refused(reply: &Reply, command: &str) -> ConnError {
    match reply {
        Reply::Error(msg) => ConnError::Server(String::from_utf8_lossy(msg).into_owned()),
        _ => ConnError::Server(format!("unexpected reply to {command}")),
    }
}

/// What one push on the listener means.
#[derive(Debug, PartialEq)]
enum Message {
    /// These keys changed (keys that are not UTF-8 were never ours).
    Keys(Vec<String>),
    /// Everything changed: a nil invalidation.
    All,
    Pong,
    /// Subscription confirmations and anything else harmless.
    Other,
    Error(String),
}

fn message(reply: &Reply) -> Message {
    let Reply::Array(items) = reply else {
        return match reply {
            Reply::Error(msg) => Message::Error(String::from_utf8_lossy(msg).into_owned()),
            _ => Message::Other,
        };
    };
    match items.as_slice() {
        [Reply::Bulk(kind), Reply::Bulk(channel), payload]
            if &kind[..] == b"message" && &channel[..] == CHANNEL =>
        {
            invalidation(payload)
        }
        [Reply::Bulk(kind), ..] if kind.eq_ignore_ascii_case(b"pong") => Message::Pong,
        _ => Message::Other,
    }
}

/// The payload of an invalidation: an array of keys, a single key (old
/// servers), or nil for all.
fn invalidation(payload: &Reply) -> Message {
    let utf8 = |b: &bytes::Bytes| std::str::from_utf8(b).ok().map(str::to_owned);
    match payload {
        Reply::Nil => Message::All,
        Reply::Array(keys) => Message::Keys(
            keys.iter()
                .filter_map(|k| match k {
                    Reply::Bulk(b) => utf8(b),
                    _ => None,
                })
                .collect(),
        ),
        Reply::Bulk(b) => Message::Keys(utf8(b).into_iter().collect()),
        _ => Message::Other,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn push(payload: Reply) -> Reply {
        Reply::Array(vec![bulk("message"), bulk("__redis__:invalidate"), payload])
    }

    #[test]
    fn invalidations_name_keys_or_everything() {
        let keys = push(Reply::Array(vec![bulk("a"), bulk("b")]));
        assert_eq!(message(&keys), Message::Keys(vec!["a".into(), "b".into()]));
        assert_eq!(message(&push(Reply::Nil)), Message::All);
        assert_eq!(message(&push(bulk("k"))), Message::Keys(vec!["k".into()]));
        let pong = Reply::Array(vec![bulk("pong"), bulk("")]);
        assert_eq!(message(&pong), Message::Pong);
        let other = Reply::Array(vec![bulk("message"), bulk("elsewhere"), Reply::Nil]);
        assert_eq!(message(&other), Message::Other, "another channel");
    }
}
