//! The storage seam: one small async trait, two implementations.
//!
//! [`Backend`] speaks full keys (prefix already applied) and plain bytes; it
//! knows nothing of gRPC, validation or prefixes — that is the service's job.
//! [`redis::RedisBackend`] talks to Redis or Valkey; [`memory::MemoryBackend`]
//! is an in-process map with TTLs for running without Redis and for tests.

pub mod memory;
pub mod redis;

use std::{future::Future, time::Duration};

use bytes::Bytes;

use crate::error::Result;

/// A cache store. Every method is one logical operation; implementations
/// decide how many round trips it takes (the Redis one: one).
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`, or `None` on a miss.
    fn get(&self, key: String) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// Stores `value` under `key`, expiring after `ttl` (`None` = never).
    fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes `keys` and answers how many existed (a repeated key counts
    /// once; the service sends each key once anyway).
    fn delete(&self, keys: Vec<String>) -> impl Future<Output = Result<u64>> + Send;

    /// Values of `keys` in order (one per position, repeats included),
    /// `None` for misses. Fails with `ReplyTooLarge` when the values add up
    /// to more than `max_reply_bytes`. (The service removes repeated keys
    /// first, so that one value asked for 250 times is fetched once.)
    fn mget(&self, keys: Vec<String>) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send;

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
