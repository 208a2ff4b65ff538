//! The connections to one node: a fixed set of shared, pipelined
//! connections that the pool repairs and rotates itself.
//!
//! Why not a checkout pool: a cache lookup is one small command, and an
//! exclusive checkout (plus deadpool-redis' `UNWATCH`+`PING` recycle) costs a
//! round trip and serialises requests. Here `pool_size` pipelined
//! [`Connection`]s are shared and each request pipelines its single command
//! over one of them, so the hot path is one round trip with no checkout.
//! (The connection is our own rather than redis-rs' multiplexer: it batches
//! the commands that are ready into one write, and hands values back as
//! slices of the read buffer; see `connection`.)
//!
//! *Which connection*: the first one, in slot order, with fewer than
//! [`SATURATION`] requests in flight ([`choose`]); the next slot takes over
//! only when it is that busy (or gone). Batching is what makes a pipelined
//! connection cheap — one write and one Redis wake-up for every command
//! ready at that moment — and spreading requests round-robin over
//! `pool_size` connections split every batch `pool_size` ways (Get @64
//! lost a third of its throughput at pool_size 10, issue 16). The other
//! slots stay connected: they take the overflow, the retries after a
//! connection drops, and the load while a slot reconnects.
//!
//! What this module owns:
//! - *Retry*: a command whose connection broke runs again on another, within
//!   a budget ([`Pool::query`]); credentials Redis rejects are refreshed
//!   once.
//! - *Repair*: a connection that fails with an I/O error is dropped from its
//!   slot and the maintenance task reconnects it with backoff. A request
//!   that finds no connection while that first reconnect is under way waits
//!   for it (bounded by `pool_timeout`), so killed connections cost no
//!   errors. Once a reconnect has failed, the circuit is open: requests fail
//!   at once with `Unavailable` instead of each waiting for a connect
//!   timeout, until a reconnect succeeds.
//! - *Dead peers*: the same task checks every [`dead_after`]/4 for a
//!   connection whose next reply is overdue by more than [`dead_after`] (a
//!   black-holed peer: no RST, no error, just silence) or that broke while
//!   idle (TCP keepalive gave up, the server closed it), breaks it so its
//!   waiting requests are retried elsewhere, and replaces it.
//! - *Rotation*: when new credentials are published, the same task opens new
//!   connections with them and swaps each slot atomically; requests in flight
//!   finish on the old connection, which closes when its last user drops it.
//!   Then it reports the generation applied, so the credential source may
//!   revoke the old identity.
//! - *Its end*: the maintenance task ends at [`Phase::Stopped`]; the
//!   connections close once the last backend handle is gone too.
//!
//! It does not know commands (it sends whatever it is given), which node it
//! is (the router chose it), validation, key prefixes or deadlines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use futures_util::future::join_all;
use tokio::{
    sync::{Notify, watch},
    time::MissedTickBehavior,
};
use tracing::{debug, info, warn};

use super::{
    connection::{ConnError, Connection, Connector, unit},
    failure::{Class, classify, classify_reply},
    near::{self, Claim, Near, Redirect, Tracking},
    resp::Reply,
};
use crate::{
    backend::PoolStats,
    backoff::Backoff,
    credentials::{Credentials, CredentialsHandle},
    error::{Error, Result},
    shutdown::{Phase, Watch},
};

/// How a pool behaves; the same for every node.
#[derive(Clone, Debug)]
pub(super) struct PoolLimits {
    /// Connections (slots).
    pub(super) size: usize,
    /// Bounds each connect, and a request's wait for the first reconnect
    /// (`pool_timeout`).
    pub(super) connect_timeout: Duration,
    /// Bounds a request's wait for refreshed credentials.
    pub(super) operation_timeout: Duration,
    /// Extra attempts on another connection after a dropped connection.
    pub(super) max_retries: u32,
}

/// The connections to one node; see the module docs.
pub(super) struct Pool {
    /// The node as configured, for logs and errors (no credentials in it).
    address: String,
    connector: Connector,
    limits: PoolLimits,
    creds: CredentialsHandle,
    slots: Box<[Slot]>,
    /// Wakes the maintenance task when a slot was emptied.
    repair: Notify,
    /// Bumped after every reconnect attempt, so waiting requests look again.
    attempts: watch::Sender<u64>,
    /// Set when a reconnect failed and no slot is connected: fail fast.
    circuit_open: AtomicBool,
    /// The router no longer sends here (the master moved, the node left the
    /// cluster): the maintenance task ends, and the connections close with
    /// the last request that still holds the pool.
    retired: AtomicBool,
    /// A reply overdue by more than this means a dead peer ([`dead_after`]).
    dead_after: Duration,
    /// Connections replaced as dead so far, for metrics.
    dead: AtomicU64,
    /// Near cache on: this node's invalidation listener, as reads see it.
    tracking: Option<Arc<Tracking>>,
}

/// Requests in flight on one connection before the pool sends the next
/// request to another: up to this many share one connection's batches. A
/// standalone Redis runs commands one at a time whatever the number of
/// connections, so more connections add no Redis parallelism, only smaller
/// batches; the bound is there so that a connection slowed by a large
/// reply or a slow command does not queue everything behind it. 64 is the
/// most concurrent calls of one gateway instance in the benchmarks (4
/// HTTP/2 connections x 16 streams), all of which then batch together.
pub(super) const SATURATION: usize = 64;

/// The slot for the next request, from each slot's requests in flight
/// (`None`: not connected): the first with fewer than `saturation`, else
/// the least busy one; `None` when none is connected. See the module docs.
fn choose(loads: impl IntoIterator<Item = Option<usize>>, saturation: usize) -> Option<usize> {
    let mut least: Option<(usize, usize)> = None;
    for (idx, load) in loads.into_iter().enumerate() {
        let Some(load) = load else { continue };
        if load < saturation {
            return Some(idx);
        }
        if least.is_none_or(|(_, l)| load < l) {
            least = Some((idx, load));
        }
    }
    least.map(|(idx, _)| idx)
}

/// How many operation timeouts a reply may be overdue before its
/// connection is declared dead: every caller waiting on it gave up after
/// one, and up to three leave room for a slow but alive Redis (a large
/// reply, a short busy script) without keeping a dead one for long.
const DEAD_AFTER_TIMEOUTS: u32 = 3;

/// The least overdue time that declares a connection dead, for very short
/// operation timeouts: a scheduling hiccup or a GC-like pause of the host
/// is not a dead peer.
const DEAD_AFTER_FLOOR: Duration = Duration::from_secs(1);

/// The bound past which an overdue reply declares its connection dead:
/// [`DEAD_AFTER_TIMEOUTS`] operation timeouts, at least [`DEAD_AFTER_FLOOR`].
pub(super) fn dead_after(operation_timeout: Duration) -> Duration {
    operation_timeout
        .saturating_mul(DEAD_AFTER_TIMEOUTS)
        .max(DEAD_AFTER_FLOOR)
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

// === impl Pool ===

impl Pool {
    /// Builds the pool and starts its maintenance task, which ends at
    /// [`Phase::Stopped`]. Does not wait for Redis: the first connections
    /// open in the background (health shows when).
    pub(super) fn start(
        address: String,
        connector: Connector,
        limits: PoolLimits,
        creds: CredentialsHandle,
        shutdown: Watch,
        near: Option<Arc<Near>>,
    ) -> Arc<Self> {
        let slots = (0..limits.size).map(|_| Slot::default()).collect();
        let dead_after = dead_after(limits.operation_timeout);
        let tracking = near.map(Tracking::new);
        if let Some(t) = &tracking {
            let listen = near::listen(
                t.clone(),
                connector.clone(),
                creds.clone(),
                shutdown.clone(),
            );
            tokio::spawn(listen);
        }
        let pool = Arc::new(Self {
            address,
            connector,
            limits,
            creds,
            slots,
            repair: Notify::new(),
            attempts: watch::channel(0).0,
            circuit_open: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            dead_after,
            dead: AtomicU64::new(0),
            tracking,
        });
        tokio::spawn(maintain(pool.clone(), shutdown));
        pool
    }

    /// With TLS on, opens one connection now: fails only when the TLS
    /// handshake does (see `RedisBackend::check_tls`).
    pub(super) async fn check_tls(&self) -> Result<()> {
        if self.connector.tls.is_none() {
            return Ok(());
        }
        let creds = self.creds.current();
        match self.connector.connect(&creds).await {
            Err(e) if e.is_tls() => Err(Error::Unavailable(format!(
                "TLS to Redis at {} failed: {e}",
                self.address
            ))),
            _ => Ok(()),
        }
    }

    /// Runs the command `encode` writes on a shared connection: one round
    /// trip; on a dropped connection, again on another (up to
    /// `max_retries`); on rejected credentials, once more after one refresh.
    /// Returns any reply but an error reply, except those only the router
    /// can act on or judge (`MOVED`/`ASK`, and "cannot serve now":
    /// `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, ... which a cluster router
    /// retries); `failure::refusal` turns those into the caller's error.
    pub(super) async fn query(&self, encode: &(dyn Fn(&mut BytesMut) + Sync)) -> Result<Reply> {
        self.query_on(encode, 1, false).await
    }

    /// [`Pool::query`] for `n` commands sent as one unit (a pipelined
    /// MSet, a `MULTI ... EXEC`), answered as one reply (see
    /// `connection::unit`); on a dropped connection the whole unit goes
    /// again.
    pub(super) async fn query_unit(
        &self,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
    ) -> Result<Reply> {
        self.query_on(encode, n, false).await
    }

    /// [`Pool::query_unit`] after `ASKING` on the same connection (a
    /// cluster's ASK redirect).
    pub(super) async fn query_asking(
        &self,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
    ) -> Result<Reply> {
        self.query_on(encode, n, true).await
    }

    async fn query_on(
        &self,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
        asking: bool,
    ) -> Result<Reply> {
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            let (idx, live) = self.checkout().await?;
            let result = self.call_on(idx, &live, encode, n, asking).await;
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
                Class::Precondition(why) => return Err(Error::FailedPrecondition(why.into())),
                Class::Redirect | Class::NotReady => match err {
                    ConnError::Server(msg) => return Ok(Reply::Error(msg.into_bytes().into())),
                    other => return Err(Error::Unavailable(format!("redis: {other}"))),
                },
                Class::Auth if !refreshed => {
                    refreshed = true;
                    self.drop_conn(idx, &live);
                    let wait = self.limits.operation_timeout;
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

    /// Ends the maintenance task (see `retired`); requests already sent
    /// finish on their connections.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.repair.notify_one();
        if let Some(t) = &self.tracking {
            // Keys read here are no longer invalidated once the listener
            // goes: flush now rather than when it notices.
            t.down();
            t.retired.notify_one();
        }
    }

    /// The node's address as configured or announced.
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Sends the parts `encode` writes, adjacent on one connection, part
    /// `i` being `counts[i]` commands, and returns one reply per part in
    /// order (a part of several commands as `connection::unit` makes it),
    /// error replies included: one attempt, no retry, no sorting of error
    /// replies. The caller (a cluster router sending one node its parts of
    /// a multi-key call) resends what failed through [`Pool::query_unit`],
    /// which does both.
    pub(super) async fn query_batch(
        &self,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        counts: &[usize],
    ) -> Result<Vec<Reply>> {
        let (idx, live) = self.checkout().await?;
        let result = {
            let _busy = Busy::new(&self.slots[idx].inflight);
            let n = counts.iter().sum();
            live.conn
                .call_batch(encode, n)
                .await
                .map(|replies| by_part(replies, counts))
        };
        result.map_err(|e| {
            if classify(&e) == Class::Connection {
                self.drop_conn(idx, &live);
            }
            Error::Unavailable(format!("redis: {e}"))
        })
    }

    /// Near cache: sends the commands `encode` writes (`n` of them) on one
    /// connection, after claiming `key` (see `near`): when this node's
    /// listener is up, the connection's tracking is pointed at it first, in
    /// the same write, if it is not already. Returns the claim (none: do
    /// not store) and the replies. One attempt, as [`Pool::query_batch`].
    pub(super) async fn query_tracked(
        &self,
        key: &str,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
    ) -> Result<(Option<Claim>, Vec<Reply>)> {
        let (idx, live) = self.checkout().await?;
        let (claim, arm) = self.claim_on(key, &live.conn);
        // Tracking is OPTIN: only a claimed read is tracked (its value may
        // be stored), so Redis' tracking table holds only what we may hold.
        let caching = claim.is_some();
        let result = {
            let _busy = Busy::new(&self.slots[idx].inflight);
            let all = |out: &mut BytesMut| {
                if let Some(r) = &arm {
                    out.extend_from_slice(&r.command);
                }
                if caching {
                    out.extend_from_slice(CACHING_YES);
                }
                encode(out);
            };
            let extra = usize::from(arm.is_some()) + usize::from(caching);
            live.conn.call_batch(all, n + extra).await
        };
        let mut replies = match result {
            Ok(replies) => replies,
            Err(e) => {
                self.cancel(key, claim);
                if classify(&e) == Class::Connection {
                    self.drop_conn(idx, &live);
                }
                return Err(Error::Unavailable(format!("redis: {e}")));
            }
        };
        let claim = self.settle_tracking(key, (claim, caching), arm, &live.conn, &mut replies);
        Ok((claim, replies))
    }

    /// Takes the replies to `CLIENT TRACKING` (when `arm`) and `CLIENT
    /// CACHING yes` (when `caching`) off the front of `replies`; the claim
    /// survives only if both were accepted.
    fn settle_tracking(
        &self,
        key: &str,
        (mut claim, caching): (Option<Claim>, bool),
        arm: Option<Arc<Redirect>>,
        conn: &Connection,
        replies: &mut Vec<Reply>,
    ) -> Option<Claim> {
        if let Some(r) = arm {
            match replies.remove(0) {
                Reply::Status(ok) if &ok[..] == b"OK" => conn.set_tracking(r.generation),
                refused => {
                    warn_tracking_refused("CLIENT TRACKING", &refused);
                    self.cancel(key, claim.take());
                }
            }
        }
        if caching {
            let reply = replies.remove(0);
            if claim.is_some() && !matches!(&reply, Reply::Status(ok) if &ok[..] == b"OK") {
                warn_tracking_refused("CLIENT CACHING", &reply);
                self.cancel(key, claim.take());
            }
        }
        claim
    }

    /// Claims `key` for a read on `conn`, and says whether `conn` must be
    /// pointed at the listener first. No claim when the listener is down
    /// or `conn` already broke (its tracking could not be watched).
    fn claim_on(&self, key: &str, conn: &Connection) -> (Option<Claim>, Option<Arc<Redirect>>) {
        let Some(tracking) = &self.tracking else {
            return (None, None);
        };
        let Some(claim) = tracking.claim(key) else {
            return (None, None);
        };
        if conn.tracking() == claim.redirect.generation {
            return (Some(claim), None);
        }
        if !conn.watch_tracking(&tracking.on_lost()) {
            tracking.near.cancel(key, claim.ticket);
            return (None, None);
        }
        let redirect = claim.redirect.clone();
        (Some(claim), Some(redirect))
    }

    fn cancel(&self, key: &str, claim: Option<Claim>) {
        if let (Some(t), Some(c)) = (&self.tracking, claim) {
            t.near.cancel(key, c.ticket);
        }
    }

    /// The near cache of this node's reads, if on.
    pub(super) fn near(&self) -> Option<&Arc<Near>> {
        self.tracking.as_ref().map(|t| &t.near)
    }

    /// One attempt on the connection in slot `idx`, counted in flight.
    async fn call_on(
        &self,
        idx: usize,
        live: &Live,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
        asking: bool,
    ) -> std::result::Result<Reply, ConnError> {
        let _busy = Busy::new(&self.slots[idx].inflight);
        if asking {
            live.conn.call_asking(encode, n).await
        } else {
            live.conn.call_unit(encode, n).await
        }
    }

    /// A snapshot of the slots, for metrics.
    pub(super) fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            size: self.slots.len(),
            dead: self.dead.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for slot in self.slots.iter() {
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

    fn retry_budget(&self) -> u32 {
        let slots = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.limits.max_retries.saturating_add(slots)
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
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
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

    /// The connected slot [`choose`] picks. The loads are read without a
    /// lock, so requests arriving together may all pick a slot just under
    /// the bound and take it a little past it: harmless, it is a batching
    /// preference, not a limit.
    fn try_checkout(&self) -> Option<(usize, Arc<Live>)> {
        let loads = self.slots.iter().map(|slot| {
            let connected = slot.conn.load().is_some();
            connected.then(|| slot.inflight.load(Ordering::Relaxed))
        });
        let idx = choose(loads, SATURATION)?;
        match self.slots[idx].conn.load_full() {
            Some(live) => Some((idx, live)),
            // Emptied since it was looked at (a reconnect is under way):
            // any connected slot will do.
            None => self.slots.iter().enumerate().find_map(|(idx, slot)| {
                let live = slot.conn.load_full()?;
                Some((idx, live))
            }),
        }
    }

    /// Empties a slot if it still holds `dead`, and wakes the maintenance
    /// task.
    fn drop_conn(&self, idx: usize, dead: &Arc<Live>) {
        let prev = self.slots[idx]
            .conn
            .compare_and_swap(&Some(dead.clone()), None::<Arc<Live>>);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, dead)) {
            debug!(slot = idx, "redis connection dropped from pool");
        }
        self.repair.notify_one();
    }
}

// === upkeep: repair and rotation ===

impl Pool {
    /// One round of upkeep: reconnects empty slots and rotates stale ones,
    /// then updates the circuit and wakes waiting requests. Returns true when
    /// every slot is connected with the current credentials (which it then
    /// reports applied).
    async fn upkeep(&self) -> bool {
        let generation = self.creds.current().generation;
        let was_down = self.none_connected();
        let filled = self.fill().await;
        self.circuit_open
            .store(self.none_connected(), Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
        if filled {
            if was_down {
                info!(address = %self.address, "connected to redis");
            }
            self.creds.mark_applied(generation);
        }
        filled
    }

    fn none_connected(&self) -> bool {
        self.slots.iter().all(|s| s.conn.load().is_none())
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
            Class::NoPerm
            | Class::Precondition(_)
            | Class::TooLarge(_)
            | Class::Redirect
            | Class::Other => {
                warn!(error = %e, "redis refused the connection");
            }
        }
    }
}

// === dead peers ===

impl Pool {
    /// Breaks and empties every slot whose connection is dead (see the
    /// module docs); true when it emptied one, so the caller refills.
    fn reap_dead(&self, now: Instant) -> bool {
        let mut reaped = false;
        for (idx, slot) in self.slots.iter().enumerate() {
            let Some(live) = slot.conn.load_full() else {
                continue;
            };
            if self.is_dead(idx, &live.conn, now) {
                self.drop_conn(idx, &live);
                reaped = true;
            }
        }
        reaped
    }

    /// True when `conn` is to be replaced: breaks it when its reply is
    /// overdue; counts and logs the dead ones.
    fn is_dead(&self, idx: usize, conn: &Connection, now: Instant) -> bool {
        let address = &self.address;
        if let Some(waited) = conn.overdue(now, self.dead_after) {
            conn.declare_dead(waited);
            self.dead.fetch_add(1, Ordering::Relaxed);
            warn!(%address, slot = idx, ?waited, bound = ?self.dead_after,
                "redis connection declared dead: no reply within the bound; replacing it");
            return true;
        }
        match conn.broken() {
            None => false,
            Some(cause) if cause.is_keepalive_timeout() => {
                self.dead.fetch_add(1, Ordering::Relaxed);
                warn!(%address, slot = idx,
                    "redis connection declared dead by TCP keepalive; replacing it");
                true
            }
            Some(cause) => {
                debug!(%address, slot = idx, error = %cause, "idle redis connection broke; replacing it");
                true
            }
        }
    }
}

/// The pool's maintenance task: keeps every slot connected with the current
/// credentials, with exponential backoff while Redis is unreachable. Wakes
/// when a slot is emptied, credentials change or the dead-peer watchdog
/// ticks; ends at [`Phase::Stopped`], whatever it was doing.
/// `replies` grouped into one reply per part of `counts[i]` commands.
fn by_part(replies: Vec<Reply>, counts: &[usize]) -> Vec<Reply> {
    let mut replies = replies.into_iter();
    counts
        .iter()
        .map(|&c| match c {
            1 => replies.next().unwrap_or(Reply::Nil),
            c => unit(replies.by_ref().take(c).collect()),
        })
        .collect()
}

async fn maintain(pool: Arc<Pool>, mut shutdown: Watch) {
    let mut creds = pool.creds.clone();
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
    let mut source_alive = true;
    // One timer per pool rather than per connection: a connection's hot
    // path only notes a time, and a dead one is found within a quarter of
    // the bound after it passes.
    let mut watchdog = tokio::time::interval(pool.dead_after / 4);
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if pool.retired.load(Ordering::Acquire) {
            return;
        }
        let filled = tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            filled = pool.upkeep() => filled,
        };
        let delay = if filled {
            backoff.reset();
            Duration::ZERO
        } else {
            backoff.next_delay()
        };
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        // Until there is upkeep to do. New credentials end the backoff
        // too: after a revocation they are what the reconnect waited for.
        loop {
            tokio::select! {
                biased;
                () = shutdown.reached(Phase::Stopped) => return,
                () = pool.repair.notified(), if filled => break,
                () = &mut sleep, if !filled => break,
                alive = creds.changed(), if source_alive => {
                    source_alive = alive;
                    break;
                }
                _ = watchdog.tick() => if pool.reap_dead(Instant::now()) {
                    break;
                },
            }
        }
    }
}

/// `CLIENT CACHING yes`, written right before a claimed `GET`: with
/// tracking in OPTIN mode Redis tracks the keys of the next command only.
const CACHING_YES: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nyes\r\n";

/// Redis refused `CLIENT TRACKING` or `CLIENT CACHING` (`command`): reads
/// still work, nothing is stored. An ACL without `+client|tracking` or
/// `+client|caching` (or a server without them) is said once; a listener
/// that went away meanwhile (its id no longer exists) is routine and only
/// debug.
fn warn_tracking_refused(command: &str, reply: &Reply) {
    static SAID: AtomicBool = AtomicBool::new(false);
    let why = match reply {
        Reply::Error(msg) => String::from_utf8_lossy(msg).into_owned(),
        _ => "an unexpected reply".into(),
    };
    if why.contains("redirect to does not exist") {
        debug!(%why, "near cache: listener gone before CLIENT TRACKING arrived");
    } else if !SAID.swap(true, Ordering::Relaxed) {
        warn!(%why, command, "near cache: redis refused a tracking command; reads are not cached (README, \"Near cache\", lists the ACL)");
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
    use crate::{credentials, secret::Secret, shutdown::Shutdown};

    #[test]
    fn a_batch_of_units_answers_one_reply_per_part() {
        let ok = || Reply::Status(bytes::Bytes::from_static(b"OK"));
        let moved = || Reply::Error(bytes::Bytes::from_static(b"MOVED 1 127.0.0.1:1"));
        let replies = vec![
            Reply::Int(1),
            ok(),
            ok(),
            moved(),
            Reply::Error("EXECABORT".into()),
        ];
        let parts = by_part(replies, &[1, 2, 2]);
        assert_eq!(parts.len(), 3);
        assert!(matches!(parts[0], Reply::Int(1)));
        assert!(matches!(&parts[1], Reply::Array(items) if items.len() == 2));
        // A unit with an error answers its first error: the cause, which
        // the EXECABORT after it only repeats.
        assert!(matches!(&parts[2], Reply::Error(msg) if msg.starts_with(b"MOVED")));
    }

    /// A loopback port nothing listens on: every connect is refused at once.
    fn refusing_connector() -> Connector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        Connector {
            host: "127.0.0.1".into(),
            port,
            database: 0,
            tls: None,
            timeout: Duration::from_millis(500),
            max_reply: 1 << 20,
            require_master: false,
        }
    }

    #[test]
    fn requests_gather_on_the_first_connection_until_it_is_saturated() {
        let at = |loads: &[Option<usize>]| choose(loads.iter().copied(), 4);
        assert_eq!(at(&[Some(0), Some(0), Some(0)]), Some(0), "idle pool");
        assert_eq!(at(&[Some(3), Some(0), Some(0)]), Some(0), "busy, not full");
        assert_eq!(at(&[Some(4), Some(0), Some(0)]), Some(1), "spill over");
        assert_eq!(at(&[Some(4), Some(2), Some(0)]), Some(1), "fill the next");
        assert_eq!(at(&[Some(9), Some(4), Some(0)]), Some(2));
    }

    #[test]
    fn a_saturated_pool_takes_the_least_busy_connection() {
        let at = |loads: &[Option<usize>]| choose(loads.iter().copied(), 4);
        assert_eq!(at(&[Some(9), Some(5), Some(7)]), Some(1));
        assert_eq!(at(&[Some(5), Some(5)]), Some(0), "ties: the first");
    }

    #[test]
    fn disconnected_slots_are_skipped() {
        let at = |loads: &[Option<usize>]| choose(loads.iter().copied(), 4);
        assert_eq!(at(&[None, Some(3), Some(0)]), Some(1));
        assert_eq!(at(&[None, Some(9), None, Some(6)]), Some(3));
        assert_eq!(at(&[None, None]), None);
        assert_eq!(at(&[]), None, "no slots");
    }

    #[test]
    fn dead_after_is_three_operation_timeouts_at_least_one_second() {
        let ms = Duration::from_millis;
        assert_eq!(dead_after(ms(500)), ms(1500));
        assert_eq!(dead_after(ms(5000)), ms(15_000));
        assert_eq!(dead_after(ms(100)), ms(1000), "floor");
        assert_eq!(dead_after(Duration::MAX), Duration::MAX, "no overflow");
    }

    #[tokio::test]
    async fn upkeep_runs_until_stopped_and_then_lets_the_pool_go() {
        let shutdown = Shutdown::new();
        let limits = PoolLimits {
            size: 2,
            connect_timeout: Duration::from_millis(500),
            operation_timeout: Duration::from_millis(500),
            max_retries: 1,
        };
        let creds = credentials::fixed("", &Secret::new(""));
        let pool = Pool::start(
            "127.0.0.1".into(),
            refusing_connector(),
            limits,
            creds,
            shutdown.watch(),
            None,
        );
        // The task is alive and working: reconnect attempts go on (and
        // fail, so it is in its backoff) while the phase is Serving.
        let mut attempts = pool.attempts.subscribe();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), attempts.changed())
                .await
                .expect("an attempt within 5 s")
                .expect("pool alive");
        }
        assert!(pool.circuit_open.load(Ordering::Acquire), "connects failed");
        assert_eq!(Arc::strong_count(&pool), 2, "the task holds the pool");

        shutdown.advance(Phase::Stopped);
        let ended = async {
            while Arc::strong_count(&pool) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), ended)
            .await
            .expect("the task ends at Stopped and drops its handle");
    }
}
