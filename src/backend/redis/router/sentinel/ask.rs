//! Asking the sentinels where the master is: `SENTINEL
//! get-master-addr-by-name` on each of them at once, each bounded by
//! `connect_timeout`, and which of their answers to believe ([`choose`]).
//!
//! Owns the sentinels' connectors and their credentials (never logged).
//! Not owned here: when to ask (`follow`), the subscription (`subscribe`),
//! or the data nodes' pools.

use std::time::Duration;

use futures_util::future::join_all;

use crate::{
    backend::redis::{connection::Connector, resp::Reply, settings::RedisSettings},
    credentials::Credentials,
    error::Result,
};

/// The sentinels of one master, and how to log in to them.
pub(super) struct Sentinels {
    /// `(address as configured, connector)`, in config order.
    pub(super) nodes: Vec<(String, Connector)>,
    /// `sentinel_username`/`sentinel_password`; anonymous when empty.
    pub(super) creds: Credentials,
    /// `sentinel_master`.
    pub(super) master_name: String,
    /// Bounds one question (connect and handshake are bounded apart).
    timeout: Duration,
}

/// What one sentinel said: the master's `host:port`, or why not.
pub(super) type Answer = std::result::Result<String, String>;

impl Sentinels {
    /// Connectors for every sentinel in `settings.addresses`: database 0,
    /// no ROLE check (sentinels are not data nodes), TLS as configured.
    pub(super) fn new(settings: &RedisSettings) -> Result<Self> {
        let nodes = settings
            .addresses
            .iter()
            .map(|address| {
                let mut connector = settings.connector(address)?;
                connector.database = 0;
                connector.require_master = false;
                Ok((address.clone(), connector))
            })
            .collect::<Result<_>>()?;
        let username = &settings.sentinel_username;
        Ok(Self {
            nodes,
            creds: Credentials {
                username: (!username.is_empty()).then(|| username.clone()),
                password: settings.sentinel_password.clone(),
                generation: 0,
                valid_until: None,
            },
            master_name: settings.sentinel_master.clone(),
            timeout: settings.connect_timeout,
        })
    }

    /// Asks every sentinel at once; one answer each, in config order. A
    /// sentinel that is down or slow costs at most twice the connect
    /// timeout, and does not hold up the others.
    pub(super) async fn ask_all(&self) -> Vec<Answer> {
        join_all(self.nodes.iter().map(|(_, c)| self.ask(c))).await
    }

    async fn ask(&self, connector: &Connector) -> Answer {
        let conn = connector
            .connect(&self.creds)
            .await
            .map_err(|e| e.to_string())?;
        let name = self.master_name.as_bytes();
        let call = conn.call(|out| {
            crate::backend::redis::resp::encode(
                out,
                &[b"SENTINEL", b"get-master-addr-by-name", name],
            )
        });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => master_address(&reply, &self.master_name),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within connect_timeout".into()),
        }
    }
}

/// `host:port` from a `get-master-addr-by-name` reply (`[ip, port]`).
fn master_address(reply: &Reply, name: &str) -> Answer {
    match reply {
        Reply::Array(items) => match items.as_slice() {
            [Reply::Bulk(host), Reply::Bulk(port)] => {
                let host = String::from_utf8_lossy(host);
                let port: u16 = std::str::from_utf8(port)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .ok_or("a master address with a bad port")?;
                Ok(join_host_port(&host, port))
            }
            _ => Err("a master address that is not [host, port]".into()),
        },
        Reply::Nil => Err(format!("does not monitor a master named {name:?}")),
        Reply::Error(msg) => Err(String::from_utf8_lossy(msg).into_owned()),
        _ => Err("an unexpected reply to get-master-addr-by-name".into()),
    }
}

/// `host:port`, with an IPv6 host in brackets (as sentinels name them:
/// a bare IP and a port).
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Which master to use, given the sentinels' answers and the master in use
/// (if any). The most frequent answer wins (ties: config order). When the
/// master in use is `suspect` (its pool lost every connection, or a call
/// failed), an answer naming another node wins over it even from one
/// sentinel: right after a failover only the leader knows the new master
/// for a moment, and the others still name the dead one. A wrong pick is
/// safe: the new pool's `ROLE` check refuses a node that is not a master,
/// which makes it suspect in turn.
pub(super) fn choose(answers: &[Answer], current: Option<&str>, suspect: bool) -> Option<String> {
    let named: Vec<&str> = answers.iter().filter_map(|a| a.as_deref().ok()).collect();
    let others: Vec<&str> = match current {
        Some(cur) if suspect => named.iter().copied().filter(|a| *a != cur).collect(),
        _ => Vec::new(),
    };
    let pool = if others.is_empty() { named } else { others };
    most_frequent(&pool).map(str::to_string)
}

/// The value seen most often; the earliest of equals.
fn most_frequent<'a>(values: &[&'a str]) -> Option<&'a str> {
    let count = |v: &str| values.iter().filter(|x| **x == v).count();
    let mut best: Option<(&str, usize)> = None;
    for v in values {
        let n = count(v);
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((v, n));
        }
    }
    best.map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn ok(a: &str) -> Answer {
        Ok(a.to_string())
    }

    #[test]
    fn the_majority_wins_unless_the_master_in_use_is_suspect() {
        let answers = [ok("a:1"), ok("b:2"), ok("a:1"), Err("down".into())];
        assert_eq!(choose(&answers, None, false).as_deref(), Some("a:1"));
        assert_eq!(choose(&answers, Some("a:1"), false).as_deref(), Some("a:1"));
        // Only the leader knows the new master yet: follow it.
        assert_eq!(choose(&answers, Some("a:1"), true).as_deref(), Some("b:2"));
        // Everyone still names the suspect: keep it (nothing better).
        assert_eq!(
            choose(&[ok("a:1"), ok("a:1")], Some("a:1"), true).as_deref(),
            Some("a:1")
        );
        assert_eq!(choose(&[Err("down".into())], Some("a:1"), true), None);
        assert_eq!(
            choose(&[ok("b:2"), ok("c:3")], None, false).as_deref(),
            Some("b:2")
        );
    }

    #[test]
    fn master_addresses_parse_and_refusals_say_why() {
        let bulk = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
        let pair = |h, p| Reply::Array(vec![bulk(h), bulk(p)]);
        assert_eq!(
            master_address(&pair("127.0.0.1", "6379"), "m"),
            ok("127.0.0.1:6379")
        );
        assert_eq!(master_address(&pair("::1", "6379"), "m"), ok("[::1]:6379"));
        assert!(master_address(&pair("h", "x"), "m").is_err());
        let unknown = master_address(&Reply::Nil, "m").unwrap_err();
        assert!(unknown.contains("\"m\""), "{unknown}");
        let refused = Reply::Error(Bytes::from_static(b"NOPERM no"));
        assert_eq!(master_address(&refused, "m"), Err("NOPERM no".into()));
    }
}
