//! Following `+switch-master`: one task per sentinel holds a subscription
//! and switches the router the moment a sentinel announces a new master
//! (the sentinel has promoted it by then).
//!
//! The pipelined `Connection` matches each reply to a command and would
//! break on a push, so this reads a `PushStream` (same handshake) itself. A
//! subscription that drops is made again with backoff, and each new one
//! wakes `follow` (a switch may have been missed meanwhile). A sentinel
//! that goes silent without closing the socket is noticed by a `PING`
//! every [`KEEPALIVE`] that got no answer by the next one.
//!
//! Not owned here: asking for the master (`ask`), the switch (`Inner`).

use std::{sync::Arc, time::Duration};

use tracing::debug;

use super::{Inner, ask::join_host_port};
use crate::{
    backend::redis::{connection::ConnError, resp::Reply},
    backoff::Backoff,
    shutdown::{Phase, Watch},
};

/// The channel Sentinel announces failovers on.
const CHANNEL: &[u8] = b"+switch-master";

/// How often a quiet subscription is checked with a `PING`.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The subscription on sentinel `index`; ends at [`Phase::Stopped`].
pub(super) async fn subscribe(inner: Arc<Inner>, index: usize, mut shutdown: Watch) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let address = &inner.sentinels.nodes[index].0;
    loop {
        let ended = tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            ended = listen(&inner, index, &mut backoff) => ended,
        };
        debug!(sentinel = %address, error = %ended, "sentinel subscription lost; subscribing again");
        tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Subscribes and follows announcements until the subscription fails;
/// returns why.
async fn listen(inner: &Inner, index: usize, backoff: &mut Backoff) -> ConnError {
    let (_, connector) = &inner.sentinels.nodes[index];
    let mut stream = match connector.connect_push(&inner.sentinels.creds).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Err(e) = stream.send(&[b"SUBSCRIBE", CHANNEL]).await {
        return e;
    }
    let mut heard = false;
    let mut subscribed = false;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let event = tokio::select! {
            reply = stream.next() => Some(reply),
            _ = keepalive.tick() => None,
        };
        match event {
            Some(Ok(Reply::Error(msg))) => {
                return ConnError::Server(String::from_utf8_lossy(&msg).into_owned());
            }
            Some(Ok(reply)) => {
                heard = true;
                if !subscribed && is_confirmation(&reply) {
                    subscribed = true;
                    backoff.reset();
                    inner.ask_now.notify_one();
                }
                if let Some(new) = switched_to(&reply, &inner.sentinels.master_name) {
                    // Sentinel has promoted it by now: whatever the router used
                    // before, this is the master.
                    inner.switch_to(&new, "+switch-master", |_| true);
                }
            }
            Some(Err(e)) => return e,
            None if !heard => return ConnError::TimedOut,
            None => {
                heard = false;
                if let Err(e) = stream.send(&[b"PING"]).await {
                    return e;
                }
            }
        }
    }
}

/// `["subscribe", "+switch-master", n]`.
fn is_confirmation(reply: &Reply) -> bool {
    matches!(reply, Reply::Array(items)
        if matches!(items.first(), Some(Reply::Bulk(kind)) if &kind[..] == b"subscribe"))
}

/// The new master's `host:port` from `["message", "+switch-master",
/// "<name> <old ip> <old port> <new ip> <new port>"]` about `name`.
fn switched_to(reply: &Reply, name: &str) -> Option<String> {
    let Reply::Array(items) = reply else {
        return None;
    };
    let [Reply::Bulk(kind), Reply::Bulk(channel), Reply::Bulk(text)] = items.as_slice() else {
        return None;
    };
    if &kind[..] != b"message" || &channel[..] != CHANNEL {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [master, _, _, host, port] if *master == name => {
            Some(join_host_port(host, port.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn only_switches_of_our_master_are_followed() {
        let message =
            |text| Reply::Array(vec![bulk("message"), bulk("+switch-master"), bulk(text)]);
        let ours = message("m 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(switched_to(&ours, "m").as_deref(), Some("127.0.0.1:6380"));
        assert_eq!(switched_to(&ours, "other"), None);
        let v6 = message("m ::1 6379 ::1 6381");
        assert_eq!(switched_to(&v6, "m").as_deref(), Some("[::1]:6381"));
        assert_eq!(switched_to(&message("m 127.0.0.1 6379"), "m"), None);
        let confirmation = Reply::Array(vec![
            bulk("subscribe"),
            bulk("+switch-master"),
            Reply::Int(1),
        ]);
        assert!(is_confirmation(&confirmation));
        assert_eq!(switched_to(&confirmation, "m"), None);
        let pong = Reply::Array(vec![bulk("pong"), bulk("")]);
        assert!(!is_confirmation(&pong));
    }
}
