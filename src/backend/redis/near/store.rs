//! The near cache's memory: a sharded map from key to value with an expiry,
//! bounded in bytes, with *placeholders* that make a read racing an
//! invalidation harmless (module docs of `near`).
//!
//! Each shard is a `HashMap` under its own `Mutex` and a CLOCK queue (an
//! approximation of LRU: an entry read since the hand last passed gets a
//! second chance) that evicts while the shard holds more than its share of
//! `max_bytes`. An entry costs its key, its value and [`ENTRY_OVERHEAD`].
//!
//! This module knows no Redis, no listener and no metrics export: it counts
//! what happened and answers what it holds.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;

/// Bytes counted per entry on top of its key and value: the map slot, the
/// key's `Arc` header, up to two CLOCK queue slots and the allocator's
/// rounding. An estimate on the high side, so `max_bytes` is a real bound.
pub(super) const ENTRY_OVERHEAD: usize = 160;

/// Shards: enough that 64 streams on a few cores rarely meet on one lock.
const SHARDS: usize = 16;

/// A miss's claim on a key: the value read for it is stored only if the
/// claim is still there (no invalidation, flush or own write removed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    token: u64,
    /// When the read was sent: the entry's lifetime counts from here, so
    /// it never outlives what Redis said (PTTL is read later than this).
    at: Instant,
}

/// What the store did, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Entries dropped by an invalidation or a flush.
    pub(super) invalidations: u64,
    /// Entries dropped to stay under `max_bytes`.
    pub(super) evictions: u64,
    /// Bytes held now (keys + values + overhead).
    pub(super) bytes: usize,
}

enum Slot {
    /// Claimed by a read in flight.
    Pending,
    Ready {
        value: Bytes,
        expires: Instant,
    },
}

struct Entry {
    /// Unique per claim; a CLOCK queue item with another token is stale.
    token: u64,
    slot: Slot,
    /// Read since the CLOCK hand last passed it.
    referenced: bool,
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// Insertion order with second chances; items whose token no longer
    /// matches their key's entry are skipped (and compacted away).
    clock: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
}

/// The sharded store; see the module docs.
pub(super) struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Each shard's share of `max_bytes`.
    shard_max: usize,
    max_ttl: Duration,
    /// Bumped by every flush: a claim made before one is refused.
    epoch: AtomicU64,
    next_token: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicUsize,
}

impl Store {
    pub(super) fn new(max_bytes: usize, max_ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_max: (max_bytes / SHARDS).max(1),
            max_ttl,
            epoch: AtomicU64::new(0),
            next_token: AtomicU64::new(1),
            invalidations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // Nothing under a shard lock panics (map and queue operations), so
        // a poisoned lock still guards consistent state.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current epoch, read before the caller checks the invalidation
    /// channel is up (see `near` docs: that order makes a flush between the
    /// two refuse the claim).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The value under `key` if held and not expired at `now`.
    pub(super) fn get(&self, key: &str, now: Instant) -> Option<Bytes> {
        let mut shard = self.shard(key);
        let entry = shard.map.get_mut(key)?;
        match &entry.slot {
            Slot::Ready { value, expires } if now < *expires => {
                entry.referenced = true;
                Some(value.clone())
            }
            Slot::Ready { .. } => {
                let freed = shard.remove(key);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                None
            }
            Slot::Pending => None,
        }
    }

    /// Claims `key` for a read about to be sent at `at`, if no flush
    /// happened since `epoch` was read. A claim replaces an earlier one
    /// (whose read then stores nothing) but not a value.
    pub(super) fn claim(&self, key: &str, epoch: u64, at: Instant) -> Option<Ticket> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(key);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return None;
        }
        if matches!(shard.map.get(key), Some(e) if matches!(e.slot, Slot::Ready { .. })) {
            // Another read filled it meanwhile; this one need not store.
            return None;
        }
        let freed = shard.remove(key);
        let bytes = key.len() + ENTRY_OVERHEAD;
        shard.insert(key, token, Slot::Pending, bytes);
        let evicted = shard.evict(self.shard_max);
        self.account(bytes, freed + evicted.1, evicted.0);
        Some(Ticket { token, at })
    }

    /// Stores `value` for a claim that survived, living `pttl` (Redis' TTL
    /// in ms at the read: -1 none, -2 gone) bounded by `max_ttl`. True when
    /// stored.
    pub(super) fn fill(&self, key: &str, ticket: Ticket, value: &Bytes, pttl: i64) -> bool {
        let Some(life) = lifetime(pttl, self.max_ttl) else {
            self.cancel(key, ticket);
            return false;
        };
        // A copy: the reply's bytes share the connection's read buffer,
        // which a held slice would keep alive whole.
        let value = Bytes::copy_from_slice(value);
        let mut shard = self.shard(key);
        let Some(entry) = shard.map.get_mut(key) else {
            return false;
        };
        if entry.token != ticket.token || !matches!(entry.slot, Slot::Pending) {
            return false;
        }
        let grown = value.len();
        entry.bytes += grown;
        entry.slot = Slot::Ready {
            value,
            expires: ticket.at + life,
        };
        shard.bytes += grown;
        let evicted = shard.evict(self.shard_max);
        self.account(grown, evicted.1, evicted.0);
        true
    }

    /// Drops the claim of a read that failed (nothing to store).
    pub(super) fn cancel(&self, key: &str, ticket: Ticket) {
        let mut shard = self.shard(key);
        if shard.map.get(key).is_some_and(|e| e.token == ticket.token) {
            let freed = shard.remove(key);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// Drops `keys`' entries and claims; returns how many there were.
    pub(super) fn remove(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> u64 {
        let mut dropped = 0;
        for key in keys {
            let key = key.as_ref();
            let mut shard = self.shard(key);
            if shard.map.contains_key(key) {
                let freed = shard.remove(key);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                dropped += 1;
            }
        }
        dropped
    }

    /// [`Store::remove`] counted as invalidations (Redis said so).
    pub(super) fn invalidate(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) {
        let n = self.remove(keys);
        self.invalidations.fetch_add(n, Ordering::Relaxed);
    }

    /// Drops everything, claims included, and refuses claims made before.
    pub(super) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            dropped += shard.map.len() as u64;
            self.bytes.fetch_sub(shard.bytes, Ordering::Relaxed);
            *shard = Shard::default();
        }
        self.invalidations.fetch_add(dropped, Ordering::Relaxed);
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            invalidations: self.invalidations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn account(&self, added: usize, freed: usize, evicted: u64) {
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }
}

/// How long an entry read with `pttl` may live here: Redis' TTL less the
/// millisecond PTTL may round up by (Redis subtracts whole-ms clocks),
/// capped by `max_ttl`; none for a key that is gone (-2), about to go, or
/// any other negative.
fn lifetime(pttl: i64, max_ttl: Duration) -> Option<Duration> {
    match pttl {
        -1 => Some(max_ttl),
        ms if ms > 1 => Some(Duration::from_millis(ms.unsigned_abs() - 1).min(max_ttl)),
        _ => None,
    }
}

// === impl Shard ===

impl Shard {
    fn insert(&mut self, key: &str, token: u64, slot: Slot, bytes: usize) {
        let key: Arc<str> = key.into();
        self.clock.push_back((key.clone(), token));
        let entry = Entry {
            token,
            slot,
            referenced: false,
            bytes,
        };
        self.map.insert(key, entry);
        self.bytes += bytes;
        self.compact();
    }

    /// Removes `key`'s entry; returns the bytes freed.
    fn remove(&mut self, key: &str) -> usize {
        let freed = self.map.remove(key).map_or(0, |e| e.bytes);
        self.bytes -= freed;
        freed
    }

    /// Evicts by CLOCK until at most `max` bytes are held; returns how
    /// many entries and bytes went.
    fn evict(&mut self, max: usize) -> (u64, usize) {
        let (mut n, mut freed) = (0, 0);
        while self.bytes > max {
            let Some((key, token)) = self.clock.pop_front() else {
                break;
            };
            let Some(entry) = self.map.get_mut(&key) else {
                continue;
            };
            if entry.token != token {
                continue;
            }
            if std::mem::take(&mut entry.referenced) {
                self.clock.push_back((key, token));
                continue;
            }
            freed += self.remove(&key);
            n += 1;
        }
        (n, freed)
    }

    /// Drops stale queue items once they outnumber live entries, so the
    /// queue stays within twice the map (amortised O(1) per insert).
    fn compact(&mut self) {
        if self.clock.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.clock
                .retain(|(k, t)| map.get(k).is_some_and(|e| e.token == *t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn store() -> Store {
        Store::new(1 << 20, Duration::from_secs(60))
    }

    #[test]
    fn a_claim_that_survives_stores_the_value() {
        let s = store();
        let now = Instant::now();
        let t = s.claim("k", s.epoch(), now).expect("claim");
        assert!(s.fill("k", t, &v("old"), -1));
        assert_eq!(s.get("k", now), Some(v("old")));
    }

    /// The race: a read is sent, the key's invalidation arrives before the
    /// read's reply; the (old) value the reply carries is never stored.
    #[test]
    fn a_read_racing_an_invalidation_never_stores_what_it_read() {
        let s = store();
        let now = Instant::now();
        let t = s.claim("k", s.epoch(), now).expect("claim");
        s.invalidate(["k"]);
        assert!(!s.fill("k", t, &v("old"), -1), "stored a stale value");
        assert_eq!(s.get("k", now), None);
        assert_eq!(s.counts().invalidations, 1);
    }

    #[test]
    fn a_read_racing_a_flush_or_an_own_write_never_stores_what_it_read() {
        let s = store();
        let now = Instant::now();
        let t = s.claim("k", s.epoch(), now).expect("claim");
        s.flush();
        assert!(!s.fill("k", t, &v("old"), -1), "stored across a flush");
        let t = s.claim("k", s.epoch(), now).expect("claim");
        s.remove(["k"]);
        assert!(!s.fill("k", t, &v("old"), -1), "stored across a write");
        assert_eq!(s.get("k", now), None);
    }

    /// The epoch is read before the invalidation channel is checked; a
    /// flush (channel lost) in between refuses the claim outright.
    #[test]
    fn a_claim_with_an_epoch_from_before_a_flush_is_refused() {
        let s = store();
        let epoch = s.epoch();
        s.flush();
        assert_eq!(s.claim("k", epoch, Instant::now()), None);
        assert_eq!(s.counts().bytes, 0);
    }

    #[test]
    fn a_later_claim_supersedes_an_earlier_one() {
        let s = store();
        let now = Instant::now();
        let first = s.claim("k", s.epoch(), now).expect("first");
        let second = s.claim("k", s.epoch(), now).expect("second");
        assert!(!s.fill("k", first, &v("a"), -1));
        assert!(s.fill("k", second, &v("b"), -1));
        assert_eq!(s.get("k", now), Some(v("b")));
    }

    #[test]
    fn an_entry_lives_at_most_its_pttl_and_max_ttl_from_the_read() {
        let s = Store::new(1 << 20, Duration::from_secs(10));
        let at = Instant::now();
        let t = s.claim("short", s.epoch(), at).expect("claim");
        assert!(s.fill("short", t, &v("x"), 500));
        assert_eq!(
            s.get("short", at + Duration::from_millis(498)),
            Some(v("x"))
        );
        // PTTL 500 may mean 499.x ms: the entry goes 1 ms early.
        assert_eq!(s.get("short", at + Duration::from_millis(499)), None);
        let t = s.claim("long", s.epoch(), at).expect("claim");
        assert!(s.fill("long", t, &v("x"), 3_600_000));
        assert!(s.get("long", at + Duration::from_millis(9_999)).is_some());
        assert_eq!(s.get("long", at + Duration::from_secs(10)), None);
        let t = s.claim("none", s.epoch(), at).expect("claim");
        assert!(s.fill("none", t, &v("x"), -1));
        assert_eq!(s.get("none", at + Duration::from_secs(10)), None);
        let t = s.claim("gone", s.epoch(), at).expect("claim");
        assert!(!s.fill("gone", t, &v("x"), -2), "PTTL -2: expired between");
        assert_eq!(s.counts().bytes, 0, "expired entries freed");
    }

    #[test]
    fn memory_stays_under_max_bytes_and_read_entries_get_a_second_chance() {
        let max = 64 * 1024;
        let s = Store::new(max, Duration::from_secs(60));
        let now = Instant::now();
        let value = Bytes::from(vec![b'v'; 100]);
        let hot = "hot".to_string();
        let t = s.claim(&hot, s.epoch(), now).expect("claim");
        s.fill(&hot, t, &value, -1);
        for i in 0..10_000 {
            let key = format!("key-{i}");
            if let Some(t) = s.claim(&key, s.epoch(), now) {
                s.fill(&key, t, &value, -1);
            }
            assert!(s.get(&hot, now).is_some(), "hot key evicted at {i}");
            assert!(s.counts().bytes <= max, "{} bytes", s.counts().bytes);
        }
        let held: usize = s
            .shards
            .iter()
            .map(|sh| sh.lock().expect("lock").map.len())
            .sum();
        let per = 100 + 9 + ENTRY_OVERHEAD;
        assert!(held >= max / per / 2, "only {held} entries held");
        assert!(s.counts().evictions >= 10_000 - held as u64);
        let queued: usize = s
            .shards
            .iter()
            .map(|sh| sh.lock().expect("lock").clock.len())
            .sum();
        assert!(queued <= 2 * held + 64 * SHARDS, "queue {queued}");
    }
}
