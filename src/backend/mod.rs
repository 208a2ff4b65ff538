//! The storage seam: one small async trait, two implementations.
//!
//! [`Backend`] speaks full keys (prefix already applied) and plain bytes; it
//! knows nothing of gRPC, validation or prefixes — that is the service's job.
//! [`redis::RedisBackend`] talks to Redis or Valkey; [`memory::MemoryBackend`]
//! is an in-process map with TTLs for running without Redis and for tests.

mod keys;
pub mod memory;
pub mod redis;

use std::{future::Future, time::Duration};

use bytes::Bytes;

pub use self::keys::{KeyList, Keys};
use crate::error::Result;

/// A cache store. Every method is one logical operation; implementations
/// decide how many round trips it takes (the Redis one: one).
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`, or `None` on a miss.
    fn get(&self, key: String) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// Stores `value` under `key`, expiring after `ttl` (`None` = never),
    /// when `condition` holds; answers whether it was written (always true
    /// for [`SetCondition::Always`]). Check and write are one step: of
    /// concurrent `IfAbsent` calls on a missing key exactly one writes.
    fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: SetCondition,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Stores each key of `keys` with the `(value, ttl)` at its position in
    /// `entries`; not atomic across keys: on an error some may have been
    /// written. The service sends each key once.
    fn mset(&self, keys: Keys, entries: Vec<Entry>) -> impl Future<Output = Result<()>> + Send;

    /// Adds `delta` to the integer under `key` (a missing key counts as 0
    /// and is created expiring after `ttl`; an existing one keeps its TTL)
    /// and answers the sum. A value that is not an integer, or a sum out
    /// of `i64`, is [`Error::FailedPrecondition`](crate::error::Error). The
    /// key never exists without the TTL asked for.
    fn incr(
        &self,
        key: String,
        delta: i64,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The remaining TTL of `key`: `None` when it does not exist,
    /// `Some(None)` when it never expires.
    fn get_ttl(&self, key: String)
    -> impl Future<Output = Result<Option<Option<Duration>>>> + Send;

    /// Removes the TTL of `key`.
    fn persist(&self, key: String) -> impl Future<Output = Result<Persisted>> + Send;

    /// How many of `keys` exist (the service sends each key once).
    fn exists(&self, keys: Keys) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes `keys` and answers how many existed (a repeated key counts
    /// once; the service sends each key once anyway).
    fn delete(&self, keys: Keys) -> impl Future<Output = Result<u64>> + Send;

    /// Values of `keys` in order (one per position, repeats included),
    /// `None` for misses. Fails with `ReplyTooLarge` when the values add up
    /// to more than `max_reply_bytes`. (The service removes repeated keys
    /// first, so that one value asked for 250 times is fetched once.)
    fn mget(&self, keys: Keys) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send;

    /// Sets `key` to expire after `ttl`; `false` when it does not exist.
    fn expire(&self, key: String, ttl: Duration) -> impl Future<Output = Result<bool>> + Send;

    /// Checks the store answers with the current credentials (health).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    /// A snapshot of connection use, for metrics.
    fn pool_stats(&self) -> PoolStats;

    /// What the router did and each node's connections, for metrics; empty
    /// for a store without nodes.
    fn topology_stats(&self) -> TopologyStats {
        TopologyStats::default()
    }

    /// The near cache's counts, for metrics; `None` when there is none.
    fn near_stats(&self) -> Option<NearStats> {
        None
    }
}

/// The near cache's counts since start, and its size now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearStats {
    /// Gets answered from the near cache, and those that were not.
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped because Redis said so (or the channel was lost).
    pub invalidations: u64,
    /// Entries dropped to stay under `max_bytes`.
    pub evictions: u64,
    /// Bytes held (keys + values + per-entry overhead).
    pub bytes: usize,
    pub max_bytes: usize,
}

/// When a Set writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetCondition {
    /// Create or overwrite.
    #[default]
    Always,
    /// Only when the key does not exist (Redis `NX`).
    IfAbsent,
    /// Only when the key exists (Redis `XX`).
    IfPresent,
}

/// One entry of an MSet: value and TTL (`None` = never expires); its full
/// key is at the same position in the call's [`Keys`].
pub type Entry = (Bytes, Option<Duration>);

/// What a Persist found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The key exists.
    pub found: bool,
    /// It had a TTL, now removed.
    pub ttl_removed: bool,
}

/// Counts since start and per-node connections at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyStats {
    /// Cluster redirects followed: `MOVED` (the map changed) and `ASK`.
    pub moved: u64,
    pub ask: u64,
    /// Slot maps read (cluster).
    pub refreshes: u64,
    /// Master changes followed (sentinel).
    pub failovers: u64,
    /// Each node's address and its pool.
    pub nodes: Vec<(String, PoolStats)>,
}

/// Connection counts at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Configured connections.
    pub size: usize,
    /// Connected, no request in flight.
    pub idle: usize,
    /// Connected, at least one request in flight.
    pub in_use: usize,
    /// Not connected (reconnecting).
    pub disconnected: usize,
    /// Connections replaced because their peer stopped answering, since
    /// start (a counter; summed over nodes).
    pub dead: u64,
}

impl std::ops::Add for PoolStats {
    type Output = Self;

    /// Two nodes' pools as one.
    fn add(self, o: Self) -> Self {
        Self {
            size: self.size + o.size,
            idle: self.idle + o.idle,
            in_use: self.in_use + o.in_use,
            disconnected: self.disconnected + o.disconnected,
            dead: self.dead + o.dead,
        }
    }
}
