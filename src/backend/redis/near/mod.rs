//! The near cache: values of hot keys held in the plugin, kept coherent by
//! Redis' server-assisted invalidation (`CLIENT TRACKING`, default mode).
//!
//! How it stays coherent (README, "Near cache", says why RESP2 + REDIRECT):
//! - Per node, a *listener* connection (`listener`) asks `CLIENT ID` and
//!   `SUBSCRIBE __redis__:invalidate`; only then is its id published in
//!   the node's [`Tracking`]. A data connection sends `CLIENT TRACKING on
//!   REDIRECT <id> OPTIN` in the same write as, and before, its first
//!   near-cache read against that listener, and every claimed read is
//!   `CLIENT CACHING yes` + `GET` + `PTTL` in one write (Redis then tracks
//!   that `GET`'s key for the connection), so every read that may be
//!   stored is tracked and its invalidation goes to a listener that is
//!   subscribed. OPTIN rather than tracking every read: Redis' tracking
//!   table then holds only keys we may hold (tracking every `GET` of a
//!   large key set cost Redis about 1.2 µs per `GET`, BENCHMARKS.md).
//! - A miss *claims* the key ([`store::Ticket`]) before its `GET` + `PTTL`
//!   pair is written; the value is stored only if the claim is still there
//!   when the reply arrives. Invalidations, flushes and this plugin's own
//!   writes remove claims as they remove values.
//! - Whatever breaks the chain from a stored value to its invalidation
//!   flushes everything (and bumps the epoch, refusing older claims): the
//!   listener lost (closed, unanswered `PING`), replaced or retired (a
//!   failover, a node leaving), and any armed data connection that breaks
//!   or is dropped (Redis forgets a gone client's tracked keys, so writes
//!   to them would notify nobody). Nothing is stored while a node has no
//!   listener.
//!
//! Why a read racing an invalidation cannot leave a stale value: Redis runs
//! commands one at a time. If our `GET` ran after the write, it read the
//! new value. If it ran before, the key was tracked for our connection at
//! that moment, so the write queues the invalidation to the listener before
//! it answers the writer; the claim was made before the `GET` was sent. The
//! two messages travel on different sockets and may be processed in either
//! order here: invalidation first removes the claim (the reply stores
//! nothing); reply first stores the value and the invalidation, processed
//! next, removes it. The residual window is therefore "from Redis
//! acknowledging the write until our listener has processed the
//! invalidation" — typically well under a millisecond on one host — plus,
//! when a connection is killed or a node dies, the time until we notice:
//! at once for a closed socket, at most [`listener::PING_EVERY`] + the
//! dead-peer bound for a silent one. `max_ttl` bounds everything. `PTTL`
//! is read right after `GET` on the same connection (another client may
//! run between the two: any write that could change the value or TTL then
//! invalidates the key, which was tracked by the `GET`), and the lifetime
//! counts from before the read was sent, so an entry never outlives Redis'
//! TTL.
//!
//! Not every miss is stored: [`doorkeeper`] lets a key in on its second
//! miss within about a cache's worth of others (its third once the cache
//! is full, when storing it evicts another), so a key set much larger
//! than the cache does not pay a claim, a `PTTL`, a copy and an eviction
//! per read for entries evicted before they are read again. A key not
//! admitted is read plainly and nothing is held for it.
//!
//! This module owns the store, the doorkeeper, the tracking state and
//! the listener; it does not choose nodes (the router does) nor
//! connections (the pool).

mod doorkeeper;
mod listener;
mod store;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use self::doorkeeper::Doorkeeper;
pub(super) use self::listener::listen;
use self::store::Store;
pub(super) use self::store::Ticket;
use super::resp;
use crate::backend::NearStats;

/// The near cache of one backend, shared by every node's tracking.
pub(super) struct Near {
    store: Store,
    doorkeeper: Doorkeeper,
    max_bytes: usize,
}

/// What a Get does after asking the near cache.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Held: the answer.
    Hit(Bytes),
    /// Missed lately too: read it tracked and store it.
    Admit,
    /// First miss lately: read it plainly, store nothing.
    Pass,
}

impl Near {
    pub(super) fn new(max_bytes: usize, max_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            store: Store::new(max_bytes, max_ttl),
            doorkeeper: Doorkeeper::new(max_bytes),
            max_bytes,
        })
    }

    /// The held value of `key`, counted as a hit or a miss (MGet: its
    /// misses are not stored, so the doorkeeper is not asked).
    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        self.store
            .get(key, self.store.hash(key), Instant::now)
            .value
    }

    /// A Get's lookup: the held value, or on a miss whether to claim and
    /// store the read (see [`doorkeeper`]). One hash serves both.
    pub(super) fn lookup(&self, key: &str) -> Lookup {
        let hash = self.store.hash(key);
        let found = self.store.get(key, hash, Instant::now);
        match found.value {
            Some(value) => Lookup::Hit(value),
            None if self.doorkeeper.admit(hash, found.full) => Lookup::Admit,
            None => Lookup::Pass,
        }
    }

    /// Stores what a claimed read returned: `value` (a miss stores
    /// nothing) with Redis' `pttl` in ms.
    pub(super) fn fill(&self, key: &str, ticket: Ticket, value: Option<&Bytes>, pttl: i64) {
        match value {
            Some(v) => {
                self.store.fill(key, ticket, v, pttl);
            }
            None => self.store.cancel(key, ticket),
        }
    }

    /// Drops a claim whose read failed.
    pub(super) fn cancel(&self, key: &str, ticket: Ticket) {
        self.store.cancel(key, ticket);
    }

    /// Drops the entries of keys this plugin writes, before the write is
    /// answered (and before it is sent: a read in flight then stores
    /// nothing either).
    pub(super) fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        self.store.remove(keys);
    }

    /// Drops everything (a lost invalidation path); see the module docs.
    pub(super) fn flush(&self) {
        self.store.flush();
    }

    pub(super) fn stats(&self) -> NearStats {
        let c = self.store.counts();
        NearStats {
            hits: c.hits,
            misses: c.misses,
            invalidations: c.invalidations,
            evictions: c.evictions,
            bytes: c.bytes,
            max_bytes: self.max_bytes,
        }
    }
}

/// One node's invalidation channel as data connections see it.
pub(super) struct Tracking {
    pub(super) near: Arc<Near>,
    /// The subscribed listener, `None` while there is none. Read by every
    /// claimed read: one atomic load, no lock to meet on.
    redirect: ArcSwapOption<Redirect>,
    next_generation: AtomicU64,
    /// Ends the listener (the node's pool was retired).
    pub(super) retired: Notify,
}

/// A listener that is subscribed: what data connections redirect to.
pub(super) struct Redirect {
    /// Unique per listener connection of this process; an armed data
    /// connection remembers the one it points at.
    pub(super) generation: u64,
    /// `CLIENT TRACKING on REDIRECT <id> OPTIN`, encoded once.
    pub(super) command: Bytes,
}

/// What a near-cache read on one node needs: its claim and, when the
/// connection is not yet pointed at the current listener, the command that
/// points it there.
pub(super) struct Claim {
    pub(super) ticket: Ticket,
    pub(super) redirect: Arc<Redirect>,
}

impl Tracking {
    pub(super) fn new(near: Arc<Near>) -> Arc<Self> {
        Arc::new(Self {
            near,
            redirect: ArcSwapOption::empty(),
            next_generation: AtomicU64::new(1),
            retired: Notify::new(),
        })
    }

    /// Claims `key` for a read about to be sent, if this node's listener is
    /// subscribed. The epoch is read before the listener is looked at:
    /// a loss in between flushes after clearing the redirect, so the
    /// claim is refused or removed (see `store`).
    pub(super) fn claim(&self, key: &str) -> Option<Claim> {
        let epoch = self.near.store.epoch();
        let redirect = self.redirect.load_full()?;
        let ticket = self.near.store.claim(key, epoch, Instant::now())?;
        Some(Claim { ticket, redirect })
    }

    /// A listener with client `id` is subscribed: publish it. The cache is
    /// flushed first, so nothing read under an earlier listener survives.
    pub(super) fn up(&self, id: i64) {
        self.near.flush();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let id = id.to_string();
        let mut command = BytesMut::new();
        resp::encode(
            &mut command,
            &[
                b"CLIENT",
                b"TRACKING",
                b"on",
                b"REDIRECT",
                id.as_bytes(),
                b"OPTIN",
            ],
        );
        let redirect = Arc::new(Redirect {
            generation,
            command: command.freeze(),
        });
        self.redirect.store(Some(redirect));
    }

    /// The listener is gone: stop claiming, then flush (this order: see
    /// [`Tracking::claim`]).
    pub(super) fn down(&self) {
        self.redirect.store(None);
        self.near.flush();
    }

    /// A flush for a data connection whose tracking ended; cheap to clone
    /// into the connection.
    pub(super) fn on_lost(self: &Arc<Self>) -> Arc<dyn Fn() + Send + Sync> {
        let near = self.near.clone();
        Arc::new(move || near.flush())
    }
}
