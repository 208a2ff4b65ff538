//! An in-process cache with the same semantics as the Redis backend: binary
//! values, per-key TTLs, misses for expired keys.
//!
//! Expired entries are dropped lazily on access and by a periodic sweep, so
//! memory does not hold keys nobody reads again. It has no size bound beyond
//! the service's limits: it is meant for development and tests, not for
//! production traffic. Like the Redis backend it refuses an MGet whose
//! values add up to more than `max_reply_bytes`, so both answer alike.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Backend, PoolStats};
use crate::error::{Error, Result};

/// How often expired keys are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

type Map = HashMap<String, Entry>;

/// The in-process backend. Cloning shares the same map.
#[derive(Clone)]
pub struct MemoryBackend {
    map: Arc<Mutex<Map>>,
    /// Largest sum of values one MGet may answer.
    max_reply: usize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            max_reply: usize::MAX,
        }
    }
}

impl MemoryBackend {
    /// An empty cache with a background sweeper (needs a Tokio runtime).
    pub fn new() -> Self {
        let backend = Self::default();
        let weak = Arc::downgrade(&backend.map);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let Some(map) = weak.upgrade() else { return };
                let now = Instant::now();
                if let Ok(mut map) = map.lock() {
                    map.retain(|_, e| e.live(now));
                }
            }
        });
        backend
    }

    /// Refuses MGets whose values add up to more than `max` bytes
    /// (`backend.max_reply_bytes`).
    pub fn max_reply_bytes(mut self, max: usize) -> Self {
        self.max_reply = max;
        self
    }

    fn lock(&self) -> Result<MutexGuard<'_, Map>> {
        // A poisoned lock means a panic mid-update; the map's entries are
        // each written whole, so the data is still consistent.
        Ok(self.map.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn live_get(map: &mut Map, key: &str, now: Instant) -> Option<Bytes> {
        match map.get(key) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
}

impl Backend for MemoryBackend {
    async fn get(&self, key: String) -> Result<Option<Bytes>> {
        let now = Instant::now();
        Ok(Self::live_get(&mut *self.lock()?, &key, now))
    }

    async fn set(&self, key: String, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let expires_at = match ttl {
            Some(ttl) => Some(
                Instant::now()
                    .checked_add(ttl)
                    .ok_or_else(|| Error::InvalidArgument("ttl: out of range".into()))?,
            ),
            None => None,
        };
        self.lock()?.insert(key, Entry { value, expires_at });
        Ok(())
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u64> {
        let now = Instant::now();
        let mut map = self.lock()?;
        let existed = keys
            .iter()
            .filter_map(|k| map.remove(k))
            .filter(|e| e.live(now))
            .count();
        Ok(existed as u64)
    }

    async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>> {
        let now = Instant::now();
        let mut map = self.lock()?;
        let values: Vec<_> = keys
            .iter()
            .map(|k| Self::live_get(&mut map, k, now))
            .collect();
        let total = values.iter().flatten().map(Bytes::len).sum::<usize>();
        if total > self.max_reply {
            return Err(Error::ReplyTooLarge(self.max_reply));
        }
        Ok(values)
    }

    async fn expire(&self, key: String, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.lock()?;
        match map.get_mut(&key) {
            Some(e) if e.live(now) => {
                e.expires_at = now.checked_add(ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let b = MemoryBackend::new();
        b.set(
            "k".into(),
            Bytes::from_static(b"v"),
            Some(Duration::from_millis(100)),
        )
        .await
        .expect("set");
        assert!(b.get("k".into()).await.expect("get").is_some());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(b.get("k".into()).await.expect("get").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn delete_counts_only_live_keys() {
        let b = MemoryBackend::new();
        b.set("a".into(), Bytes::new(), None).await.expect("set");
        b.set("b".into(), Bytes::new(), Some(Duration::from_millis(1)))
            .await
            .expect("set");
        tokio::time::advance(Duration::from_millis(2)).await;
        let n = b
            .delete(vec!["a".into(), "b".into(), "c".into()])
            .await
            .expect("delete");
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_mget_over_max_reply_bytes_is_refused() {
        let b = MemoryBackend::new().max_reply_bytes(10);
        b.set("a".into(), Bytes::from_static(b"123456"), None)
            .await
            .expect("set");
        let one = b.mget(vec!["a".into(), "b".into()]).await.expect("6 bytes");
        assert_eq!(one[0].as_deref(), Some(&b"123456"[..]));
        let err = b.mget(vec!["a".into(), "a".into()]).await.unwrap_err();
        assert!(matches!(err, Error::ReplyTooLarge(10)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn expire_on_missing_key_is_false() {
        let b = MemoryBackend::new();
        assert!(
            !b.expire("nope".into(), Duration::from_secs(1))
                .await
                .expect("expire")
        );
    }
}
