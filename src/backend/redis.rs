//! The Redis/Valkey backend: a fixed set of shared, pipelined connections
//! that the plugin repairs and rotates itself.
//!
//! Why not a checkout pool: a cache lookup is one small command, and an
//! exclusive checkout (plus deadpool-redis' `UNWATCH`+`PING` recycle) costs a
//! round trip and serialises requests. Here `pool_size` pipelined
//! [`Connection`]s are shared: each request picks the next one round-robin
//! and pipelines its single command over it, so the hot path is one round
//! trip with no checkout. (The connection is our own rather than redis-rs'
//! multiplexer: it batches the commands that are ready into one write, and
//! hands values back as slices of the read buffer; see `connection`.)
//!
//! What this module owns:
//! - *Repair*: a connection that fails with an I/O error is dropped from its
//!   slot and a background task reconnects it with backoff. A request that
//!   finds no connection while that first reconnect is under way waits for
//!   it (bounded by `pool_timeout`), so killed connections cost no errors.
//!   Once a reconnect has failed, the circuit is open: requests fail at once
//!   with `Unavailable` instead of each waiting for a connect timeout, until
//!   a reconnect succeeds.
//! - *Rotation*: when new credentials are published, the same task opens new
//!   connections with them and swaps each slot atomically; requests in flight
//!   finish on the old connection, which closes when its last user drops it.
//!   Then it reports the generation applied, so the credential source may
//!   revoke the old identity.
//! - *Classification*: Redis errors become [`Error`] variants; NOPERM is
//!   permission denied, WRONGPASS/NOAUTH triggers one credential refresh.
//!
//! It does not own validation, key prefixes or deadlines (the service's).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use rustls::pki_types::ServerName;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{Backend, PoolStats};
use super::{
    connection::{ConnError, Connection, Connector, Tls},
    resp::{self, Reply},
};
use crate::{
    backoff::Backoff,
    config::address::parse_address,
    credentials::{Credentials, CredentialsHandle},
    error::{Error, Result},
};

/// Where and how to connect; built from `backend` config.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub address: String,
    pub database: u32,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    /// Extra attempts on another connection after a dropped connection.
    pub max_retries: u32,
    /// TLS settings; `rediss://` addresses imply TLS with system roots.
    pub tls: Option<RedisTlsSettings>,
    /// Largest reply accepted for one command, framing included; larger
    /// ones fail that command with [`Error::ReplyTooLarge`].
    pub max_reply_bytes: usize,
}

/// TLS towards Redis.
#[derive(Clone)]
pub struct RedisTlsSettings {
    /// Roots, client certificate, verification (see `tls::redis_client_config`).
    pub config: Arc<rustls::ClientConfig>,
    /// Name to verify instead of the address' host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for RedisTlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The Redis backend. Cloning shares the pool.
#[derive(Clone)]
pub struct RedisBackend {
    pool: Arc<Pool>,
}

struct Pool {
    settings: RedisSettings,
    connector: Connector,
    creds: CredentialsHandle,
    slots: Box<[Slot]>,
    /// Round-robin cursor; relaxed ordering is enough, fairness is best effort.
    next: AtomicUsize,
    /// Wakes the repair task when a slot was emptied (and when the pool is
    /// dropped, so the task sees that and ends).
    repair: Arc<Notify>,
    /// Bumped after every reconnect attempt, so waiting requests look again.
    attempts: watch::Sender<u64>,
    /// Set when a reconnect failed and no slot is connected: fail fast.
    circuit_open: AtomicBool,
}

#[derive(Default)]
struct Slot {
    conn: ArcSwapOption<Live>,
    /// Requests currently using this slot's connection, for pool metrics.
    inflight: AtomicUsize,
}

struct Live {
    conn: Connection,
    generation: u64,
}

/// What to do about a failed command.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    NoPerm,
    Auth,
    /// Redis is there but cannot serve now (loading after a restart, busy
    /// script, replica without master): unavailable, not a bug.
    NotReady,
    Connection,
    /// The reply passed `max_reply_bytes`: this command fails, the
    /// connection stays (the rest of the reply is skipped).
    TooLarge(usize),
    Other,
}

/// Classifies an error reply by its code.
fn classify_reply(msg: &[u8]) -> Class {
    match Reply::error_code(msg) {
        "NOPERM" => Class::NoPerm,
        "WRONGPASS" | "NOAUTH" => Class::Auth,
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" => Class::NotReady,
        _ => Class::Other,
    }
}

fn classify(e: &ConnError) -> Class {
    match e {
        ConnError::Server(msg) => classify_reply(msg.as_bytes()),
        // The connection is fine, Redis is just not reading: fail fast
        // rather than queue more, and keep the connection.
        ConnError::Backlog(_) => Class::NotReady,
        ConnError::TooLarge(max) => Class::TooLarge(*max),
        _ => Class::Connection,
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

// === impl RedisBackend ===

impl RedisBackend {
    /// Builds the pool and starts its repair task. Does not wait for Redis:
    /// the first connections open in the background (health shows when).
    pub fn start(settings: RedisSettings, creds: CredentialsHandle) -> Result<Self> {
        let settings = with_implied_tls(settings)?;
        let connector = connector(&settings)?;
        let slots = (0..settings.pool_size).map(|_| Slot::default()).collect();
        let pool = Arc::new(Pool {
            settings,
            connector,
            creds,
            slots,
            next: AtomicUsize::new(0),
            repair: Arc::new(Notify::new()),
            attempts: watch::channel(0).0,
            circuit_open: AtomicBool::new(false),
        });
        tokio::spawn(maintain(Arc::downgrade(&pool), pool.creds.clone()));
        Ok(Self { pool })
    }

    /// With TLS on, opens one connection now so that a certificate Redis
    /// does not accept, or one we do not trust, stops start-up with a clear
    /// error instead of a plugin that never becomes healthy. Redis not
    /// answering yet is not an error here.
    pub async fn check_tls(&self) -> Result<()> {
        if self.pool.settings.tls.is_none() {
            return Ok(());
        }
        let creds = self.pool.creds.current();
        match self.pool.connector.connect(&creds).await {
            Err(e) if e.is_tls() => Err(Error::Unavailable(format!(
                "TLS to Redis at {} failed: {e}",
                self.pool.settings.address
            ))),
            _ => Ok(()),
        }
    }

    /// Runs the command `encode` writes; see [`Pool::query`].
    async fn query(&self, encode: &(dyn Fn(&mut BytesMut) + Sync)) -> Result<Reply> {
        self.pool.query(encode).await
    }
}

/// Writes a command of `name` and `args` keys, without collecting them.
fn command<'a>(out: &mut BytesMut, name: &[u8], args: impl ExactSizeIterator<Item = &'a [u8]>) {
    resp::command_header(out, 1 + args.len());
    resp::arg(out, name);
    for a in args {
        resp::arg(out, a);
    }
}

/// Fills in TLS for `rediss://` addresses given without TLS settings:
/// system roots, no client certificate.
fn with_implied_tls(mut s: RedisSettings) -> Result<RedisSettings> {
    let (_, _, tls_implied) = parse_address(&s.address).map_err(Error::Internal)?;
    if tls_implied && s.tls.is_none() {
        let config = crate::tls::redis_client_config(&crate::config::RedisTls::default())
            .map_err(|e| Error::Internal(format!("redis tls: {e}")))?;
        s.tls = Some(RedisTlsSettings {
            config: Arc::new(config),
            server_name: None,
        });
    }
    Ok(s)
}

fn connector(s: &RedisSettings) -> Result<Connector> {
    let (host, port, _) = parse_address(&s.address).map_err(Error::Internal)?;
    let tls = match &s.tls {
        Some(t) => {
            // The certificate is checked against this name; the socket
            // still goes to the configured host.
            let name = t.server_name.clone().unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name)
                .map_err(|e| Error::Internal(format!("redis tls server name: {e}")))?;
            Some(Tls {
                config: t.config.clone(),
                server_name,
            })
        }
        None => None,
    };
    Ok(Connector {
        host,
        port,
        database: s.database,
        tls,
        timeout: s.connect_timeout,
        max_reply: s.max_reply_bytes,
    })
}

impl Backend for RedisBackend {
    async fn get(&self, key: String) -> Result<Option<Bytes>> {
        let reply = self
            .query(&|out| command(out, b"GET", std::iter::once(key.as_bytes())))
            .await?;
        match reply {
            Reply::Bulk(value) => Ok(Some(value)),
            Reply::Nil => Ok(None),
            other => Err(unexpected("GET", &other)),
        }
    }

    async fn set(&self, key: String, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let ms = ttl.map(|t| t.as_millis().to_string());
        let reply = self
            .query(&|out| {
                resp::command_header(out, if ms.is_some() { 5 } else { 3 });
                resp::arg(out, b"SET");
                resp::arg(out, key.as_bytes());
                resp::arg(out, &value);
                if let Some(ms) = &ms {
                    resp::arg(out, b"PX");
                    resp::arg(out, ms.as_bytes());
                }
            })
            .await?;
        match reply {
            Reply::Status(ok) if &ok[..] == b"OK" => Ok(()),
            other => Err(unexpected("SET", &other)),
        }
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u64> {
        let reply = self
            .query(&|out| command(out, b"DEL", keys.iter().map(|k| k.as_bytes())))
            .await?;
        match reply {
            Reply::Int(n) if n >= 0 => Ok(n.unsigned_abs()),
            other => Err(unexpected("DEL", &other)),
        }
    }

    async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>> {
        let reply = self
            .query(&|out| command(out, b"MGET", keys.iter().map(|k| k.as_bytes())))
            .await?;
        let items = match reply {
            Reply::Array(items) if items.len() == keys.len() => items,
            other => return Err(unexpected("MGET", &other)),
        };
        items
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(value) => Ok(Some(value)),
                Reply::Nil => Ok(None),
                other => Err(unexpected("MGET", &other)),
            })
            .collect()
    }

    async fn expire(&self, key: String, ttl: Duration) -> Result<bool> {
        let ms = ttl.as_millis().to_string();
        let reply = self
            .query(&|out| {
                command(out, b"PEXPIRE", [key.as_bytes(), ms.as_bytes()].into_iter());
            })
            .await?;
        match reply {
            Reply::Int(n) => Ok(n == 1),
            other => Err(unexpected("PEXPIRE", &other)),
        }
    }

    async fn ping(&self) -> Result<()> {
        match self.query(&|out| resp::encode(out, &[b"PING"])).await? {
            Reply::Status(pong) if &pong[..] == b"PONG" => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    fn pool_stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            size: self.pool.slots.len(),
            ..PoolStats::default()
        };
        for slot in self.pool.slots.iter() {
            match (
                slot.conn.load().is_some(),
                slot.inflight.load(Ordering::Relaxed),
            ) {
                (false, _) => stats.disconnected += 1,
                (true, 0) => stats.idle += 1,
                (true, _) => stats.in_use += 1,
            }
        }
        stats
    }
}

// === impl Pool ===

impl Pool {
    /// Runs the command `encode` writes on a shared connection: one round
    /// trip; on a dropped connection, again on another (up to
    /// `max_retries`); on rejected credentials, once more after one refresh.
    /// Returns any reply but an error reply.
    async fn query(&self, encode: &(dyn Fn(&mut BytesMut) + Sync)) -> Result<Reply> {
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            let (idx, live) = self.checkout().await?;
            let result = {
                let _busy = Busy::new(&self.slots[idx].inflight);
                live.conn.call(encode).await
            };
            let (class, err) = match result {
                Ok(Reply::Error(msg)) => (
                    classify_reply(&msg),
                    ConnError::Server(String::from_utf8_lossy(&msg).into_owned()),
                ),
                Ok(reply) => return Ok(reply),
                Err(e) => (classify(&e), e),
            };
            match class {
                Class::NoPerm => return Err(Error::PermissionDenied),
                Class::NotReady => return Err(Error::Unavailable(format!("redis: {err}"))),
                Class::Auth if !refreshed => {
                    refreshed = true;
                    self.drop_conn(idx, &live);
                    let wait = self.settings.operation_timeout;
                    if !self
                        .creds
                        .refresh_after_rejection(live.generation, wait)
                        .await
                    {
                        return Err(Error::Auth);
                    }
                }
                Class::Auth => return Err(Error::Auth),
                // Every dead connection in the pool is tried and dropped
                // before `max_retries` counts: after CLIENT KILL or a Redis
                // restart they all fail at once, and the next checkout then
                // waits for the reconnect instead of failing the call.
                Class::Connection if retries < self.retry_budget() => {
                    retries += 1;
                    debug!(error = %err, "redis connection dropped; retrying on another");
                    self.drop_conn(idx, &live);
                }
                Class::Connection => {
                    self.drop_conn(idx, &live);
                    return Err(Error::Unavailable("connection to Redis lost".into()));
                }
                Class::TooLarge(max) => return Err(Error::ReplyTooLarge(max)),
                Class::Other => return Err(Error::Internal(format!("redis: {err}"))),
            }
        }
    }

    fn retry_budget(&self) -> u32 {
        let slots = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.settings.max_retries.saturating_add(slots)
    }

    /// Picks the next connected slot. With none connected: while a reconnect
    /// is under way, waits for it (up to `pool_timeout`); once one has
    /// failed, the circuit is open and this fails at once.
    async fn checkout(&self) -> Result<(usize, Arc<Live>)> {
        if let Some(found) = self.try_checkout() {
            return Ok(found);
        }
        self.repair.notify_one();
        let mut attempts = self.attempts.subscribe();
        let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
        while !self.circuit_open.load(Ordering::Acquire) {
            let next = tokio::time::timeout_at(deadline, attempts.changed());
            if !matches!(next.await, Ok(Ok(()))) {
                break;
            }
            if let Some(found) = self.try_checkout() {
                return Ok(found);
            }
        }
        Err(Error::Unavailable("not connected to Redis".into()))
    }

    fn try_checkout(&self) -> Option<(usize, Arc<Live>)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start + i) % n).find_map(|idx| {
            let live = self.slots[idx].conn.load_full()?;
            Some((idx, live))
        })
    }

    /// Empties a slot if it still holds `dead`, and wakes the repair task.
    fn drop_conn(&self, idx: usize, dead: &Arc<Live>) {
        let prev = self.slots[idx]
            .conn
            .compare_and_swap(&Some(dead.clone()), None::<Arc<Live>>);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, dead)) {
            debug!(slot = idx, "redis connection dropped from pool");
        }
        self.repair.notify_one();
    }

    /// Slots that are empty or on an older credential generation.
    fn stale_slots(&self, generation: u64) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .conn
                    .load()
                    .as_ref()
                    .is_none_or(|l| l.generation < generation)
            })
            .collect()
    }

    /// Opens connections for every stale slot with the current credentials
    /// and swaps them in. Returns true when every slot is current.
    async fn fill(&self) -> bool {
        let creds = self.creds.current();
        let stale = self.stale_slots(creds.generation);
        if stale.is_empty() {
            return true;
        }
        // Expired credentials (or the placeholder before Vault's first
        // answer) cannot authenticate; wait for new ones instead.
        if !creds.is_valid(std::time::Instant::now()) {
            return false;
        }
        let opened = join_all(stale.iter().map(|_| self.connector.connect(&creds))).await;
        let mut all_ok = true;
        for (idx, result) in stale.into_iter().zip(opened) {
            match result {
                Ok(conn) => {
                    let live = Live {
                        conn,
                        generation: creds.generation,
                    };
                    self.slots[idx].conn.store(Some(Arc::new(live)));
                }
                Err(e) => {
                    all_ok = false;
                    self.on_connect_error(&e, &creds);
                }
            }
        }
        all_ok
    }

    fn on_connect_error(&self, e: &ConnError, creds: &Credentials) {
        match classify(e) {
            Class::Auth => {
                warn!(user = ?creds.username, "redis rejected credentials; asking for new ones");
                self.creds.request_refresh();
            }
            // A certificate we do not trust, or ours refused: will not heal
            // by retrying.
            Class::Connection if e.is_tls() => warn!(error = %e, "TLS to redis failed"),
            // Unreachable or restarting: expected during an outage, and the
            // health status already says so.
            Class::Connection | Class::NotReady => debug!(error = %e, "redis connect failed"),
            // Redis answered and refused (SELECT not allowed, AUTH without a
            // password set, ...): retrying will not help, say why.
            Class::NoPerm | Class::TooLarge(_) | Class::Other => {
                warn!(error = %e, "redis refused the connection");
            }
        }
    }
}

/// The pool's background task: keeps every slot connected with the current
/// credentials, with exponential backoff while Redis is unreachable. Ends
/// when the pool is dropped.
async fn maintain(pool: std::sync::Weak<Pool>, mut creds: CredentialsHandle) {
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
    let mut source_alive = true;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let generation = p.creds.current().generation;
        let was_down = p.slots.iter().all(|s| s.conn.load().is_none());
        let filled = p.fill().await;
        let none_connected = p.slots.iter().all(|s| s.conn.load().is_none());
        p.circuit_open.store(none_connected, Ordering::Release);
        p.attempts.send_modify(|n| *n += 1);
        if filled {
            if was_down {
                info!(address = %p.settings.address, "connected to redis");
            }
            p.creds.mark_applied(generation);
            backoff.reset();
            let repair = p.repair.clone();
            drop(p);
            tokio::select! {
                () = repair.notified() => {}
                alive = creds.changed(), if source_alive => source_alive = alive,
            }
        } else {
            drop(p);
            // New credentials end the backoff: after a revocation they are
            // what the reconnect was waiting for.
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                alive = creds.changed(), if source_alive => source_alive = alive,
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.repair.notify_one();
    }
}

/// Counts a request on a slot for as long as it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
            classify_reply(b"WRONGTYPE Operation against a key"),
            Class::Other
        );
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

    #[test]
    fn unexpected_replies_name_the_shape_not_the_value() {
        let e = unexpected("GET", &Reply::Bulk(Bytes::from_static(b"secret-value")));
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("bulk string reply to GET"), "{e}");
    }
}
