//! The Redis/Valkey backend: [`RedisBackend`] implements
//! [`Backend`] in four layers, one file each:
//!
//! ```text
//! RedisBackend ─▶ commands (what to send, what the reply means)
//!              ─▶ router   (which node: standalone, Sentinel's master, a cluster's slot owner)
//!              ─▶ pool     (which connection: retry, repair, circuit, rotation)
//!              ─▶ connection + resp (one pipelined socket, the wire protocol)
//! ```
//!
//! `settings` turns config into what these need; `failure` sorts what goes
//! wrong into what to do about it. This module only wires them: it does not
//! own validation, key prefixes or deadlines (the service's).

mod commands;
mod connection;
mod failure;
mod pool;
mod resp;
mod router;
mod settings;

use std::time::Duration;

use bytes::Bytes;

pub use self::settings::{RedisSettings, RedisTlsSettings};
use self::{
    commands::{Delete, Exists, Expire, Get, GetTtl, Incr, MGet, MSet, Persist, Set},
    router::Router,
};
use super::{Backend, Entry, Persisted, PoolStats, SetCondition, TopologyStats};
use crate::{credentials::CredentialsHandle, error::Result, shutdown::Watch};

/// The Redis backend. Cloning shares the pools.
#[derive(Clone)]
pub struct RedisBackend {
    router: Router,
}

impl RedisBackend {
    /// Starts the pools and their maintenance tasks, which end when
    /// `shutdown` reaches `Stopped`. Does not wait for Redis: the first
    /// connections open in the background (health shows when).
    pub fn start(
        settings: RedisSettings,
        creds: CredentialsHandle,
        shutdown: Watch,
    ) -> Result<Self> {
        let settings = settings.with_implied_tls()?;
        let router = Router::start(&settings, creds, shutdown)?;
        Ok(Self { router })
    }

    /// With TLS on, opens one connection now so that a certificate Redis
    /// does not accept, or one we do not trust, stops start-up with a clear
    /// error instead of a plugin that never becomes healthy. Redis not
    /// answering yet is not an error here.
    pub async fn check_tls(&self) -> Result<()> {
        self.router.check_tls().await
    }

    /// Sentinel: master changes followed so far (for metrics); 0 in the
    /// other topologies.
    pub fn failovers_followed(&self) -> u64 {
        self.router.failovers()
    }
}

impl Backend for RedisBackend {
    async fn get(&self, key: String) -> Result<Option<Bytes>> {
        self.router.send(&Get { key }).await
    }

    async fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: SetCondition,
    ) -> Result<bool> {
        self.router
            .send(&Set::new(key, value, ttl, condition))
            .await
    }

    async fn mset(&self, entries: Vec<Entry>) -> Result<()> {
        self.router.send_multi(&MSet::new(entries)).await
    }

    async fn incr(&self, key: String, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        self.router.send(&Incr::new(key, delta, ttl)).await
    }

    async fn get_ttl(&self, key: String) -> Result<Option<Option<Duration>>> {
        self.router.send(&GetTtl { key }).await
    }

    async fn persist(&self, key: String) -> Result<Persisted> {
        self.router.send(&Persist { key }).await
    }

    async fn exists(&self, keys: Vec<String>) -> Result<u64> {
        self.router.send_multi(&Exists { keys }).await
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u64> {
        self.router.send_multi(&Delete { keys }).await
    }

    async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>> {
        self.router.send_multi(&MGet { keys }).await
    }

    async fn expire(&self, key: String, ttl: Duration) -> Result<bool> {
        self.router.send(&Expire::new(key, ttl)).await
    }

    async fn ping(&self) -> Result<()> {
        self.router.ping().await
    }

    fn pool_stats(&self) -> PoolStats {
        self.router.stats()
    }

    fn topology_stats(&self) -> TopologyStats {
        self.router.topology_stats()
    }
}
