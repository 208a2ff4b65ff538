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
mod near;
mod pool;
mod resp;
mod router;
mod settings;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;

pub use self::settings::{NearCache, RedisSettings, RedisTlsSettings};
use self::{
    commands::{Command, Expire, Get, GetTtl, Incr, KeyCount, MGet, MSet, Persist, Set},
    near::{Lookup, Near},
    router::Router,
};
use super::{
    Backend, Entry, KeyList, Keys, NearStats, Persisted, PoolStats, SetCondition, TopologyStats,
};
use crate::{credentials::CredentialsHandle, error::Result, shutdown::Watch};

/// The Redis backend. Cloning shares the pools.
#[derive(Clone)]
pub struct RedisBackend {
    router: Router,
    /// The near cache, when on (README, "Near cache").
    near: Option<Arc<Near>>,
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
        let near = settings.near_cache.as_ref().map(|n| n.0.clone());
        Ok(Self { router, near })
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

    /// Drops the near cache's entries for keys this plugin just wrote,
    /// before the write is answered: a Get through this plugin after the
    /// answer reads Redis (a read claimed earlier stores nothing). Every
    /// write goes through here, whatever its outcome (an error may still
    /// have written).
    fn forget(&self, keys: KeyList<'_>) {
        if let Some(near) = &self.near {
            near.forget(keys.iter());
        }
    }
}

impl Backend for RedisBackend {
    async fn get(&self, key: String) -> Result<Option<Bytes>> {
        let Some(near) = &self.near else {
            return self.router.send(&Get { key }).await;
        };
        match near.lookup(&key) {
            Lookup::Hit(value) => Ok(Some(value)),
            Lookup::Admit => self.router.get_tracked(&Get { key }).await,
            // Not missed lately: a plain read, nothing stored (near's
            // module docs say why).
            Lookup::Pass => self.router.send(&Get { key }).await,
        }
    }

    async fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: SetCondition,
    ) -> Result<bool> {
        let set = Set::new(key, value, ttl, condition);
        let result = self.router.send(&set).await;
        self.forget(set.keys());
        result
    }

    async fn mset(&self, keys: Keys, entries: Vec<Entry>) -> Result<()> {
        let mset = MSet::new(keys, entries);
        let result = self.router.send_multi(&mset).await;
        self.forget(mset.keys());
        result
    }

    async fn incr(&self, key: String, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let incr = Incr::new(key, delta, ttl);
        let result = self.router.send(&incr).await;
        self.forget(incr.keys());
        result
    }

    async fn get_ttl(&self, key: String) -> Result<Option<Option<Duration>>> {
        self.router.send(&GetTtl { key }).await
    }

    async fn persist(&self, key: String) -> Result<Persisted> {
        let persist = Persist { key };
        let result = self.router.send(&persist).await;
        self.forget(persist.keys());
        result
    }

    async fn exists(&self, keys: Keys) -> Result<u64> {
        self.router.send_multi(&KeyCount::exists(keys)).await
    }

    async fn delete(&self, keys: Keys) -> Result<u64> {
        let delete = KeyCount::delete(keys);
        let result = self.router.send_multi(&delete).await;
        self.forget(delete.keys());
        result
    }

    async fn mget(&self, keys: Keys) -> Result<Vec<Option<Bytes>>> {
        match &self.near {
            Some(near) => self.mget_near(near, keys).await,
            None => self.router.send_multi(&MGet { keys }).await,
        }
    }

    async fn expire(&self, key: String, ttl: Duration) -> Result<bool> {
        let expire = Expire::new(key, ttl);
        let result = self.router.send(&expire).await;
        self.forget(expire.keys());
        result
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

    fn near_stats(&self) -> Option<NearStats> {
        self.near.as_ref().map(|n| n.stats())
    }
}

impl RedisBackend {
    /// MGet with the near cache on: held keys answered here, the others
    /// with one MGET (not stored: an MGET reads no TTLs).
    async fn mget_near(&self, near: &Near, keys: Keys) -> Result<Vec<Option<Bytes>>> {
        let mut values: Vec<Option<Bytes>> = keys.iter().map(|k| near.get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(values);
        }
        let mut rest = Keys::with_capacity(missing.len(), keys.iter().map(str::len).sum());
        for key in missing.iter().filter_map(|&i| keys.get(i)) {
            rest.push("", key);
        }
        let fetched = self.router.send_multi(&MGet { keys: rest }).await?;
        for (i, value) in missing.into_iter().zip(fetched) {
            values[i] = value;
        }
        Ok(values)
    }
}
