//! A cache client for tests that make plain calls: one method per RPC taking
//! plain keys and values, replies unwrapped, errors as `tonic::Status`.
//!
//! Tests about the raw request itself (odd fields, metadata, deadlines)
//! build the request literal and use [`Cache::raw`] or `CacheClient`.

use std::time::{Duration, Instant};

use redis_cache_plugin::pb::{
    DeleteRequest, Entry, ExistsRequest, ExpireRequest, GetRequest, GetResponse, GetTtlRequest,
    GetTtlResponse, IncrRequest, MGetRequest, MGetResponse, MSetRequest, PersistRequest,
    PersistResponse, SetCondition, SetRequest, cache_client::CacheClient,
};
use tonic::{Status, transport::Channel};

/// A TTL as the API carries it.
pub fn ttl(d: Duration) -> Option<prost_types::Duration> {
    Some(d.try_into().expect("ttl fits the API's Duration"))
}

/// A Set of `value` under `key` with the default TTL.
pub fn set_req(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: value.to_vec().into(),
        ttl: None,
        condition: 0,
    }
}

fn strings<K: ToString>(keys: impl IntoIterator<Item = K>) -> Vec<String> {
    keys.into_iter().map(|k| k.to_string()).collect()
}

/// `CacheClient<Channel>` with plain-call helpers.
#[derive(Clone)]
pub struct Cache {
    pub raw: CacheClient<Channel>,
}

impl Cache {
    pub fn new(raw: CacheClient<Channel>) -> Self {
        Self { raw }
    }

    /// A client on an already connected `channel`.
    pub fn on(channel: Channel) -> Self {
        Self::new(CacheClient::new(channel))
    }

    /// Connects to the plaintext gRPC port at `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Self {
        let raw = CacheClient::connect(format!("http://{addr}")).await;
        Self::new(raw.expect("connect to the plugin"))
    }

    /// Waits (bounded) until the plugin answers a Get: its backend
    /// connection is up. For plugins whose health is not the question.
    pub async fn wait_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.get("warmup").await;
            if r.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "plugin never served: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Retries a Set every 20 ms until one succeeds (true) or `within`
    /// passes (false): recovery after a fault.
    pub async fn set_succeeds_within(&mut self, key: &str, value: &[u8], within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.set(key, value).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub async fn get(&mut self, key: &str) -> Result<GetResponse, Status> {
        let req = GetRequest { key: key.into() };
        self.raw.get(req).await.map(tonic::Response::into_inner)
    }

    /// Set with the default TTL.
    pub async fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Status> {
        self.raw.set(set_req(key, value)).await.map(drop)
    }

    /// Set with `ttl` as sent (`None` = the default TTL).
    pub async fn set_ttl(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<prost_types::Duration>,
    ) -> Result<(), Status> {
        let req = SetRequest {
            ttl,
            ..set_req(key, value)
        };
        self.raw.set(req).await.map(drop)
    }

    pub async fn mget<K: ToString>(
        &mut self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<MGetResponse, Status> {
        let req = MGetRequest {
            keys: strings(keys).into_iter().map(Into::into).collect(),
        };
        self.raw.m_get(req).await.map(tonic::Response::into_inner)
    }

    /// Deletes `keys`; how many existed.
    pub async fn delete<K: ToString>(
        &mut self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Status> {
        let req = DeleteRequest {
            keys: strings(keys),
        };
        let reply = self.raw.delete(req).await?;
        Ok(reply.into_inner().deleted)
    }

    /// Expire with `ttl` as sent; whether the key existed.
    pub async fn expire(
        &mut self,
        key: &str,
        ttl: Option<prost_types::Duration>,
    ) -> Result<bool, Status> {
        let req = ExpireRequest {
            key: key.into(),
            ttl,
        };
        let reply = self.raw.expire(req).await?;
        Ok(reply.into_inner().found)
    }

    /// Set under `condition` with `ttl` as sent; whether it was written.
    pub async fn set_if(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<prost_types::Duration>,
        condition: SetCondition,
    ) -> Result<bool, Status> {
        let req = SetRequest {
            ttl,
            condition: condition.into(),
            ..set_req(key, value)
        };
        Ok(self.raw.set(req).await?.into_inner().written)
    }

    /// MSet of `(key, value, ttl as sent)` entries.
    pub async fn mset(
        &mut self,
        entries: &[(&str, &[u8], Option<prost_types::Duration>)],
    ) -> Result<(), Status> {
        let entries = entries
            .iter()
            .map(|&(key, value, ttl)| Entry {
                key: key.into(),
                value: value.to_vec().into(),
                ttl,
            })
            .collect();
        self.raw.m_set(MSetRequest { entries }).await.map(drop)
    }

    /// Incr by `delta`, `ttl` as sent; the new value.
    pub async fn incr(
        &mut self,
        key: &str,
        delta: i64,
        ttl: Option<prost_types::Duration>,
    ) -> Result<i64, Status> {
        let req = IncrRequest {
            key: key.into(),
            delta,
            ttl,
        };
        Ok(self.raw.incr(req).await?.into_inner().value)
    }

    pub async fn get_ttl(&mut self, key: &str) -> Result<GetTtlResponse, Status> {
        let req = GetTtlRequest { key: key.into() };
        self.raw.get_ttl(req).await.map(tonic::Response::into_inner)
    }

    pub async fn persist(&mut self, key: &str) -> Result<PersistResponse, Status> {
        let req = PersistRequest { key: key.into() };
        self.raw.persist(req).await.map(tonic::Response::into_inner)
    }

    /// How many of `keys` exist.
    pub async fn exists<K: ToString>(
        &mut self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Status> {
        let req = ExistsRequest {
            keys: strings(keys),
        };
        Ok(self.raw.exists(req).await?.into_inner().count)
    }
}
