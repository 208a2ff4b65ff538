//! What a cluster node's error reply asks of the router: follow a
//! redirect (`MOVED`, `ASK`), wait and retry (`TRYAGAIN`, `CLUSTERDOWN`,
//! `LOADING`, ...), or give up. Only parsing; the router acts.

use crate::backend::redis::{
    failure::{Class, classify_reply},
    resp::Reply,
};

/// What to do about an error reply a node handed back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// The slot lives on `address` now: update the map and resend there.
    Moved { slot: u16, address: String },
    /// This one command goes to `address`, after `ASKING`; the map stays.
    Ask { address: String },
    /// The node cannot serve now (a slot being migrated for a multi-key
    /// command, the cluster down, a node loading): retry after a pause.
    Retry,
}

impl Redirect {
    /// Sorts an error reply; `None` for one that is not the router's.
    pub(super) fn parse(msg: &[u8]) -> Option<Self> {
        match classify_reply(msg) {
            Class::Redirect => Self::parse_target(msg),
            Class::NotReady => Some(Self::Retry),
            _ => None,
        }
    }

    /// `MOVED 3999 127.0.0.1:6381` / `ASK 3999 127.0.0.1:6381`.
    fn parse_target(msg: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(msg).ok()?;
        let mut words = text.split_ascii_whitespace();
        let (kind, slot, address) = (words.next()?, words.next()?, words.next()?);
        let slot: u16 = slot.parse().ok()?;
        let address = address.to_string();
        match Reply::error_code(msg) {
            "MOVED" if kind == "MOVED" => Some(Self::Moved { slot, address }),
            "ASK" if kind == "ASK" => Some(Self::Ask { address }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_sort_into_what_to_do() {
        assert_eq!(
            Redirect::parse(b"MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                address: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            Redirect::parse(b"ASK 12 10.0.0.2:7000"),
            Some(Redirect::Ask {
                address: "10.0.0.2:7000".into()
            })
        );
        assert_eq!(
            Redirect::parse(b"TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::Retry)
        );
        assert_eq!(
            Redirect::parse(b"CLUSTERDOWN The cluster is down"),
            Some(Redirect::Retry)
        );
        assert_eq!(
            Redirect::parse(b"LOADING Redis is loading the dataset in memory"),
            Some(Redirect::Retry)
        );
        assert_eq!(Redirect::parse(b"MOVED nonsense"), None);
        assert_eq!(Redirect::parse(b"WRONGTYPE Operation against a key"), None);
    }
}
