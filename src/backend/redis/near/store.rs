//! The near cache's memory: a sharded table from key to value with an
//! expiry, bounded in bytes, with *placeholders* that make a read racing an
//! invalidation harmless (module docs of `near`).
//!
//! Each shard is a hash table under its own `Mutex` and a CLOCK queue (an
//! approximation of LRU: an entry read since the hand last passed gets a
//! second chance) that evicts while the shard holds more than its share of
//! `max_bytes`. An entry costs its key, its value and [`ENTRY_OVERHEAD`].
//!
//! A key is hashed once per lookup ([`Store::hash`]): the hash picks the
//! shard, finds the entry, and (in `near`) feeds the doorkeeper. Entries
//! keep their hash, so growing a table or evicting never hashes a key
//! again. The counters live in the shards, under the lock a call takes
//! anyway: a miss touches no cache line that every other call writes too
//! (on a 2-core machine, shared counters cost more than the lookup).
//!
//! This module knows no Redis, no listener and no metrics export: it counts
//! what happened and answers what it holds.

use std::{
    collections::{VecDeque, hash_map::RandomState},
    hash::BuildHasher,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hashbrown::HashTable;

/// Bytes counted per entry on top of its key and value: the table slot,
/// the key's box, up to two CLOCK queue slots and the allocator's
/// rounding. An estimate on the high side, so `max_bytes` is a real bound.
pub(super) const ENTRY_OVERHEAD: usize = 160;

/// Shards: enough that 64 streams on a few cores rarely meet on one lock.
const SHARDS: usize = 16;

/// A miss's claim on a key: the value read for it is stored only if the
/// claim is still there (no invalidation, flush or own write removed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    token: u64,
    hash: u64,
    /// When the read was sent: the entry's lifetime counts from here, so
    /// it never outlives what Redis said (PTTL is read later than this).
    at: Instant,
}

/// What the store did, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Lookups that found a live value.
    pub(super) hits: u64,
    /// Lookups that did not.
    pub(super) misses: u64,
    /// Entries dropped by an invalidation or a flush.
    pub(super) invalidations: u64,
    /// Entries dropped to stay under `max_bytes`.
    pub(super) evictions: u64,
    /// Bytes held now (keys + values + overhead).
    pub(super) bytes: usize,
}

/// What a lookup found.
pub(super) struct Found {
    pub(super) value: Option<Bytes>,
    /// The key's shard is (nearly) full: storing the key would evict.
    pub(super) full: bool,
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
    key: Box<str>,
    hash: u64,
    /// Unique per claim within the shard; a CLOCK queue item with another
    /// token is stale.
    token: u64,
    slot: Slot,
    /// Read since the CLOCK hand last passed it.
    referenced: bool,
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    /// Insertion order with second chances, as (hash, token); items whose
    /// token no longer has an entry are skipped (and compacted away).
    clock: VecDeque<(u64, u64)>,
    bytes: usize,
    /// The size of the entry filled last: what storing one more costs.
    last_entry: usize,
    /// The next claim's token. Never reset, a flush included: a ticket
    /// from before a flush must not match an entry claimed after it.
    next_token: u64,
    counts: Counts,
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
}

impl Store {
    pub(super) fn new(max_bytes: usize, max_ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_max: (max_bytes / SHARDS).max(1),
            max_ttl,
            epoch: AtomicU64::new(0),
        }
    }

    /// `key`'s hash, keyed per process (keys come from clients).
    pub(super) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Bits the table does not use for its buckets (low) or tags (top
        // 7), so a shard's keys still spread over its whole table.
        let i = ((hash >> 32) as usize) % SHARDS;
        // Nothing under a shard lock panics (table and queue operations),
        // so a poisoned lock still guards consistent state.
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

    /// The value under `key` (whose [`Store::hash`] is `hash`) if held and
    /// not expired at `now()`, counted as a hit or a miss. The clock is
    /// read only when there is a value to check.
    pub(super) fn get(&self, key: &str, hash: u64, now: impl FnOnce() -> Instant) -> Found {
        let mut shard = self.shard(hash);
        let value = shard.read(key, hash, now);
        match value {
            Some(_) => shard.counts.hits += 1,
            None => shard.counts.misses += 1,
        }
        // One more entry the size of the last one stored would evict.
        let full = shard.bytes + shard.last_entry > self.shard_max;
        Found { value, full }
    }

    /// Claims `key` for a read about to be sent at `at`, if no flush
    /// happened since `epoch` was read. A claim replaces an earlier one
    /// (whose read then stores nothing) but not a value.
    pub(super) fn claim(&self, key: &str, epoch: u64, at: Instant) -> Option<Ticket> {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return None;
        }
        if matches!(shard.find(key, hash), Some(e) if matches!(e.slot, Slot::Ready { .. })) {
            // Another read filled it meanwhile; this one need not store.
            return None;
        }
        shard.remove(key, hash);
        let token = shard.next_token;
        shard.next_token += 1;
        shard.insert(key, hash, token);
        shard.evict(self.shard_max);
        Some(Ticket { token, hash, at })
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
        let mut shard = self.shard(ticket.hash);
        let Some(entry) = shard.find_mut(key, ticket.hash) else {
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
        shard.last_entry = entry.bytes;
        shard.bytes += grown;
        shard.evict(self.shard_max);
        true
    }

    /// Drops the claim of a read that failed (nothing to store).
    pub(super) fn cancel(&self, key: &str, ticket: Ticket) {
        let mut shard = self.shard(ticket.hash);
        if shard
            .find(key, ticket.hash)
            .is_some_and(|e| e.token == ticket.token)
        {
            shard.remove(key, ticket.hash);
        }
    }

    /// Drops `keys`' entries and claims; returns how many there were.
    pub(super) fn remove(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> u64 {
        self.drop_keys(keys, false)
    }

    /// [`Store::remove`] counted as invalidations (Redis said so).
    pub(super) fn invalidate(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) {
        self.drop_keys(keys, true);
    }

    fn drop_keys(&self, keys: impl IntoIterator<Item = impl AsRef<str>>, invalidated: bool) -> u64 {
        let mut dropped = 0;
        for key in keys {
            let key = key.as_ref();
            let hash = self.hash(key);
            let mut shard = self.shard(hash);
            if shard.remove(key, hash) {
                shard.counts.invalidations += u64::from(invalidated);
                dropped += 1;
            }
        }
        dropped
    }

    /// Drops everything, claims included, and refuses claims made before.
    pub(super) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// The shards' counts added up (a scrape's worth of locking).
    pub(super) fn counts(&self) -> Counts {
        let mut sum = Counts::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let c = &shard.counts;
            sum.hits += c.hits;
            sum.misses += c.misses;
            sum.invalidations += c.invalidations;
            sum.evictions += c.evictions;
            sum.bytes += shard.bytes;
        }
        sum
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

/// Matches `key`'s entry in a table probed with its `hash`.
fn is(key: &str, hash: u64) -> impl Fn(&Entry) -> bool {
    move |e| e.hash == hash && *e.key == *key
}

// === impl Shard ===

impl Shard {
    fn find(&self, key: &str, hash: u64) -> Option<&Entry> {
        self.table.find(hash, is(key, hash))
    }

    fn find_mut(&mut self, key: &str, hash: u64) -> Option<&mut Entry> {
        self.table.find_mut(hash, is(key, hash))
    }

    /// A live value of `key`; an expired one is dropped on the way.
    fn read(&mut self, key: &str, hash: u64, now: impl FnOnce() -> Instant) -> Option<Bytes> {
        let entry = self.find_mut(key, hash)?;
        let Slot::Ready { value, expires } = &entry.slot else {
            return None;
        };
        if now() < *expires {
            entry.referenced = true;
            return Some(value.clone());
        }
        self.remove(key, hash);
        None
    }

    /// A claim's placeholder for `key`, queued for the CLOCK hand.
    fn insert(&mut self, key: &str, hash: u64, token: u64) {
        let bytes = key.len() + ENTRY_OVERHEAD;
        let entry = Entry {
            key: key.into(),
            hash,
            token,
            slot: Slot::Pending,
            referenced: false,
            bytes,
        };
        self.table.insert_unique(hash, entry, |e| e.hash);
        self.clock.push_back((hash, token));
        self.bytes += bytes;
        self.compact();
    }

    /// Removes `key`'s entry; false if there was none.
    fn remove(&mut self, key: &str, hash: u64) -> bool {
        let Ok(found) = self.table.find_entry(hash, is(key, hash)) else {
            return false;
        };
        let (entry, _) = found.remove();
        self.bytes -= entry.bytes;
        true
    }

    /// Evicts by CLOCK until at most `max` bytes are held.
    fn evict(&mut self, max: usize) {
        while self.bytes > max {
            let Some((hash, token)) = self.clock.pop_front() else {
                break;
            };
            let Ok(mut found) = self.table.find_entry(hash, |e| e.token == token) else {
                continue;
            };
            if std::mem::take(&mut found.get_mut().referenced) {
                self.clock.push_back((hash, token));
                continue;
            }
            let (entry, _) = found.remove();
            self.bytes -= entry.bytes;
            self.counts.evictions += 1;
        }
    }

    /// Drops stale queue items once they outnumber live entries, so the
    /// queue stays within twice the table (amortised O(1) per insert).
    fn compact(&mut self) {
        if self.clock.len() > 2 * self.table.len() + 64 {
            let table = &self.table;
            self.clock
                .retain(|&(h, t)| table.find(h, |e| e.token == t).is_some());
        }
    }

    /// Drops every entry and queue item, counted as invalidations; the
    /// token sequence and the other counts go on.
    fn clear(&mut self) {
        self.counts.invalidations += self.table.len() as u64;
        self.table.clear();
        self.clock.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    impl Store {
        /// A lookup at `now`, hashing the key as `near` does.
        fn get_at(&self, key: &str, now: Instant) -> Option<Bytes> {
            self.get(key, self.hash(key), || now).value
        }
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
        assert_eq!(s.get_at("k", now), Some(v("old")));
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
        assert_eq!(s.get_at("k", now), None);
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
        assert_eq!(s.get_at("k", now), None);
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

    /// Tokens go on across a flush: a claim made before it and one made
    /// after must never look alike to the old read's reply.
    #[test]
    fn a_ticket_from_before_a_flush_never_fills_a_claim_made_after_it() {
        let s = store();
        let now = Instant::now();
        let before = s.claim("k", s.epoch(), now).expect("claim");
        s.flush();
        let after = s.claim("k", s.epoch(), now).expect("claim");
        assert!(!s.fill("k", before, &v("old"), -1), "stored across a flush");
        assert!(s.fill("k", after, &v("new"), -1));
        assert_eq!(s.get_at("k", now), Some(v("new")));
    }

    #[test]
    fn lookups_are_counted_as_hits_and_misses() {
        let s = store();
        let now = Instant::now();
        assert_eq!(s.get_at("k", now), None);
        let t = s.claim("k", s.epoch(), now).expect("claim");
        assert_eq!(s.get_at("k", now), None, "a claim is not a value");
        s.fill("k", t, &v("x"), -1);
        assert_eq!(s.get_at("k", now), Some(v("x")));
        let c = s.counts();
        assert_eq!((c.hits, c.misses), (1, 2));
    }

    /// The doorkeeper asks for one more miss once storing evicts.
    #[test]
    fn a_lookup_says_when_its_shard_is_full() {
        let s = Store::new(SHARDS * 4096, Duration::from_secs(60));
        let now = Instant::now();
        let hash = s.hash("probe");
        assert!(!s.get("probe", hash, || now).full, "empty");
        let value = Bytes::from(vec![b'v'; 1000]);
        for i in 0..200 {
            let key = format!("key-{i}");
            if let Some(t) = s.claim(&key, s.epoch(), now) {
                s.fill(&key, t, &value, -1);
            }
        }
        assert!(s.get("probe", hash, || now).full, "after a sweep past max");
    }

    #[test]
    fn a_later_claim_supersedes_an_earlier_one() {
        let s = store();
        let now = Instant::now();
        let first = s.claim("k", s.epoch(), now).expect("first");
        let second = s.claim("k", s.epoch(), now).expect("second");
        assert!(!s.fill("k", first, &v("a"), -1));
        assert!(s.fill("k", second, &v("b"), -1));
        assert_eq!(s.get_at("k", now), Some(v("b")));
    }

    #[test]
    fn an_entry_lives_at_most_its_pttl_and_max_ttl_from_the_read() {
        let s = Store::new(1 << 20, Duration::from_secs(10));
        let at = Instant::now();
        let t = s.claim("short", s.epoch(), at).expect("claim");
        assert!(s.fill("short", t, &v("x"), 500));
        assert_eq!(
            s.get_at("short", at + Duration::from_millis(498)),
            Some(v("x"))
        );
        // PTTL 500 may mean 499.x ms: the entry goes 1 ms early.
        assert_eq!(s.get_at("short", at + Duration::from_millis(499)), None);
        let t = s.claim("long", s.epoch(), at).expect("claim");
        assert!(s.fill("long", t, &v("x"), 3_600_000));
        assert!(
            s.get_at("long", at + Duration::from_millis(9_999))
                .is_some()
        );
        assert_eq!(s.get_at("long", at + Duration::from_secs(10)), None);
        let t = s.claim("none", s.epoch(), at).expect("claim");
        assert!(s.fill("none", t, &v("x"), -1));
        assert_eq!(s.get_at("none", at + Duration::from_secs(10)), None);
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
            assert!(s.get_at(&hot, now).is_some(), "hot key evicted at {i}");
            assert!(s.counts().bytes <= max, "{} bytes", s.counts().bytes);
        }
        let held: usize = s
            .shards
            .iter()
            .map(|sh| sh.lock().expect("lock").table.len())
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
