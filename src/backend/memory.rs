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

use super::{Backend, Entry as MSetEntry, Keys, Persisted, PoolStats, SetCondition};
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

    /// The live entry under `key`; an expired one is removed (absent).
    fn live_mut<'m>(map: &'m mut Map, key: &str, now: Instant) -> Option<&'m mut Entry> {
        if map.get(key).is_some_and(|e| !e.live(now)) {
            map.remove(key);
        }
        map.get_mut(key)
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

    async fn set(
        &self,
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
        condition: SetCondition,
    ) -> Result<bool> {
        let now = Instant::now();
        let expires_at = expiry(now, ttl)?;
        let mut map = self.lock()?;
        let present = Self::live_mut(&mut map, &key, now).is_some();
        let write = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !present,
            SetCondition::IfPresent => present,
        };
        if write {
            map.insert(key, Entry { value, expires_at });
        }
        Ok(write)
    }

    async fn mset(&self, keys: Keys, entries: Vec<MSetEntry>) -> Result<()> {
        let now = Instant::now();
        let entries = keys
            .iter()
            .zip(entries)
            .map(|(k, (value, ttl))| {
                Ok((
                    k.to_owned(),
                    Entry {
                        value,
                        expires_at: expiry(now, ttl)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.lock()?.extend(entries);
        Ok(())
    }

    async fn incr(&self, key: String, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let now = Instant::now();
        let expires_at = expiry(now, ttl)?;
        let mut map = self.lock()?;
        let Some(entry) = Self::live_mut(&mut map, &key, now) else {
            let value = Bytes::from(delta.to_string());
            map.insert(key, Entry { value, expires_at });
            return Ok(delta);
        };
        let sum = parse_integer(&entry.value)?
            .checked_add(delta)
            .ok_or_else(|| Error::FailedPrecondition(OVERFLOW.into()))?;
        entry.value = Bytes::from(sum.to_string());
        Ok(sum)
    }

    async fn get_ttl(&self, key: String) -> Result<Option<Option<Duration>>> {
        let now = Instant::now();
        let mut map = self.lock()?;
        Ok(Self::live_mut(&mut map, &key, now).map(|e| remaining(e, now)))
    }

    async fn persist(&self, key: String) -> Result<Persisted> {
        let now = Instant::now();
        let mut map = self.lock()?;
        Ok(match Self::live_mut(&mut map, &key, now) {
            Some(e) => Persisted {
                found: true,
                ttl_removed: e.expires_at.take().is_some(),
            },
            None => Persisted::default(),
        })
    }

    async fn exists(&self, keys: Keys) -> Result<u64> {
        let now = Instant::now();
        let mut map = self.lock()?;
        let found = keys
            .iter()
            .filter(|k| Self::live_mut(&mut map, k, now).is_some())
            .count();
        Ok(found as u64)
    }

    async fn delete(&self, keys: Keys) -> Result<u64> {
        let now = Instant::now();
        let mut map = self.lock()?;
        let existed = keys
            .iter()
            .filter_map(|k| map.remove(k))
            .filter(|e| e.live(now))
            .count();
        Ok(existed as u64)
    }

    async fn mget(&self, keys: Keys) -> Result<Vec<Option<Bytes>>> {
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

/// Redis' words for a value Incr cannot add to, and for a sum past `i64`.
const NOT_INTEGER: &str = "the value is not an integer or out of range";
const OVERFLOW: &str = "increment or decrement would overflow";

/// When an entry written at `now` with `ttl` expires.
fn expiry(now: Instant, ttl: Option<Duration>) -> Result<Option<Instant>> {
    ttl.map(|ttl| {
        now.checked_add(ttl)
            .ok_or_else(|| Error::InvalidArgument("ttl: out of range".into()))
    })
    .transpose()
}

/// A stored value as Redis' INCRBY reads it: a decimal `i64`, no spaces,
/// no leading `+` or zeros.
fn parse_integer(value: &[u8]) -> Result<i64> {
    let not_integer = || Error::FailedPrecondition(NOT_INTEGER.into());
    let text = std::str::from_utf8(value).map_err(|_| not_integer())?;
    let n: i64 = text.parse().map_err(|_| not_integer())?;
    // Redis refuses "+1", "01", "-0": only the canonical form round-trips.
    if n.to_string() != text {
        return Err(not_integer());
    }
    Ok(n)
}

/// The TTL left on a live entry in whole milliseconds, rounded down as
/// Redis' PTTL does; `None` = no expiry.
fn remaining(e: &Entry, now: Instant) -> Option<Duration> {
    e.expires_at.map(|t| {
        let left = t.saturating_duration_since(now);
        Duration::from_millis(left.as_millis() as u64)
    })
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
            SetCondition::Always,
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
        b.set("a".into(), Bytes::new(), None, SetCondition::Always)
            .await
            .expect("set");
        let one_ms = Some(Duration::from_millis(1));
        b.set("b".into(), Bytes::new(), one_ms, SetCondition::Always)
            .await
            .expect("set");
        tokio::time::advance(Duration::from_millis(2)).await;
        let n = b
            .delete(["a", "b", "c"].into_iter().collect())
            .await
            .expect("delete");
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_mget_over_max_reply_bytes_is_refused() {
        let b = MemoryBackend::new().max_reply_bytes(10);
        b.set(
            "a".into(),
            Bytes::from_static(b"123456"),
            None,
            SetCondition::Always,
        )
        .await
        .expect("set");
        let one = b
            .mget(["a", "b"].into_iter().collect())
            .await
            .expect("6 bytes");
        assert_eq!(one[0].as_deref(), Some(&b"123456"[..]));
        let err = b.mget(["a", "a"].into_iter().collect()).await.unwrap_err();
        assert!(matches!(err, Error::ReplyTooLarge(10)), "{err}");
    }

    #[test]
    fn only_canonical_decimal_integers_count_as_integers() {
        assert_eq!(parse_integer(b"-42").ok(), Some(-42));
        assert_eq!(parse_integer(b"0").ok(), Some(0));
        for bad in [&b"+1"[..], b"01", b"-0", b" 1", b"1.5", b"", b"x", b"\xff"] {
            assert!(parse_integer(bad).is_err(), "{bad:?}");
        }
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
