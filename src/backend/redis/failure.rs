//! What a failed command means for the caller: an error reply or a
//! connection error, sorted into what to do about it ([`Class`]).
//!
//! NOPERM is permission denied; WRONGPASS/NOAUTH asks for one credential
//! refresh; LOADING/BUSY/MASTERDOWN/TRYAGAIN/READONLY is "Redis cannot
//! serve now"; a broken connection is retried on another. The pool acts on the class
//! (`pool`); a router that follows redirects (MOVED/ASK in a cluster) gets
//! its classes here too, next to the ones it must not confuse them with.
//!
//! This module only sorts; it neither retries nor builds client-facing
//! errors, and it never looks past the error code of a reply.

use super::{connection::ConnError, resp::Reply};
use crate::error::Error;

/// What to do about a failed command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    NoPerm,
    Auth,
    /// Redis is there but cannot serve now (loading after a restart, busy
    /// script, replica without master): unavailable, not a bug.
    NotReady,
    Connection,
    /// A cluster node says another node serves the key (`MOVED`), or does
    /// for this one command (`ASK`): the router's to follow.
    Redirect,
    /// The stored value does not allow the command (INCRBY on a value that
    /// is no integer or of another type, a sum out of range): the caller's
    /// failed precondition, described in our words (Redis' may quote more).
    Precondition(&'static str),
    /// The reply passed `max_reply_bytes`: this command fails, the
    /// connection stays (the rest of the reply is skipped).
    TooLarge(usize),
    Other,
}

/// Classifies an error reply by its code.
pub(super) fn classify_reply(msg: &[u8]) -> Class {
    match Reply::error_code(msg) {
        "NOPERM" => Class::NoPerm,
        "WRONGPASS" | "NOAUTH" => Class::Auth,
        // READONLY: a demoted master refusing a write (Sentinel failover).
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" => {
            Class::NotReady
        }
        "MOVED" | "ASK" => Class::Redirect,
        "WRONGTYPE" => Class::Precondition("the key holds a value of another type"),
        "ERR" if msg.starts_with(b"ERR value is not an integer") => {
            Class::Precondition("the value is not an integer or out of range")
        }
        "ERR" if msg.starts_with(b"ERR increment or decrement would overflow") => {
            Class::Precondition("increment or decrement would overflow")
        }
        _ => Class::Other,
    }
}

/// The caller's error for an error reply nested in a reply (an item of
/// `EXEC`'s array): what the pool would have made of it at the top level.
pub(super) fn nested(msg: &[u8]) -> Error {
    match classify_reply(msg) {
        Class::NoPerm => Error::PermissionDenied,
        Class::Precondition(why) => Error::FailedPrecondition(why.into()),
        Class::Auth | Class::NotReady | Class::Redirect => refusal(msg),
        _ => Error::Internal(format!("redis: {}", String::from_utf8_lossy(msg))),
    }
}

/// The caller's error for an error reply the pool hands back to the router
/// (see `Pool::query`) when the router does not act on it.
pub(super) fn refusal(msg: &[u8]) -> Error {
    let text = String::from_utf8_lossy(msg);
    match classify_reply(msg) {
        Class::Redirect => Error::Internal(format!(
            "redis answered {}: the server is a cluster node (set backend.topology: cluster)",
            Reply::error_code(msg)
        )),
        _ => Error::Unavailable(format!("redis: {text}")),
    }
}

/// Classifies a connection error (an error reply in the handshake by its
/// code, like any other).
pub(super) fn classify(e: &ConnError) -> Class {
    match e {
        ConnError::Server(msg) => classify_reply(msg.as_bytes()),
        // The connection is fine, Redis is just not reading: fail fast
        // rather than queue more, and keep the connection.
        ConnError::Backlog(_) => Class::NotReady,
        ConnError::TooLarge(max) => Class::TooLarge(*max),
        // The master moved: the sentinel router re-asks the sentinels.
        ConnError::NotMaster(_) => Class::NotReady,
        _ => Class::Connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_classify_by_what_to_do() {
        assert_eq!(
            classify_reply(b"NOPERM User x has no permissions"),
            Class::NoPerm
        );
        assert_eq!(
            classify_reply(b"WRONGPASS invalid username-password pair"),
            Class::Auth
        );
        assert_eq!(
            classify_reply(b"NOAUTH Authentication required."),
            Class::Auth
        );
        assert_eq!(classify_reply(b"LOADING Redis is loading"), Class::NotReady);
        assert_eq!(
            classify_reply(b"CLUSTERDOWN The cluster is down"),
            Class::NotReady
        );
        assert_eq!(
            classify_reply(b"READONLY You can't write against a read only replica."),
            Class::NotReady
        );
        assert_eq!(
            classify_reply(b"MOVED 3999 127.0.0.1:6381"),
            Class::Redirect
        );
        assert_eq!(classify_reply(b"ASK 3999 127.0.0.1:6381"), Class::Redirect);
        assert!(matches!(
            classify_reply(b"WRONGTYPE Operation against a key"),
            Class::Precondition(_)
        ));
        assert!(matches!(
            classify_reply(b"ERR value is not an integer or out of range"),
            Class::Precondition(_)
        ));
        assert!(matches!(
            classify_reply(b"ERR increment or decrement would overflow"),
            Class::Precondition(_)
        ));
        assert_eq!(classify_reply(b"ERR unknown command"), Class::Other);
        let io = ConnError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(classify(&io), Class::Connection);
        assert_eq!(classify(&ConnError::Closed), Class::Connection);
        assert_eq!(classify(&ConnError::TimedOut), Class::Connection);
        assert_eq!(classify(&ConnError::Backlog(9)), Class::NotReady);
        assert_eq!(classify(&ConnError::TooLarge(64)), Class::TooLarge(64));
        assert_eq!(
            classify(&ConnError::Server("WRONGPASS x".into())),
            Class::Auth
        );
    }
}
