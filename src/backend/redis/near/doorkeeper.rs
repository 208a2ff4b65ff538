//! Which near-cache misses are worth storing: a key is admitted when it
//! missed lately too ("doorkeeper", after TinyLFU's), and once the cache
//! is full, only when it missed twice lately before this miss.
//!
//! Why: storing a miss costs a claim, `CLIENT CACHING yes` and a `PTTL`
//! next to the `GET`, a copy of the value and, once the cache is full, an
//! eviction. Under a key set much larger than the cache, most stored
//! values are evicted before they are read again, so that cost buys
//! nothing; a key read once and never again (a scan, a long tail) should
//! not push out one that is read twice. A key not admitted is read with a
//! plain `GET` and not stored, which is always coherent (nothing is held).
//!
//! Why a third miss once the cache is full: then every admission evicts an
//! entry, and under uniform access the hit ratio is the share of keys held
//! whatever is admitted, so admissions are pure churn; asking for one more
//! miss cut them from 15 % to about 3 % of misses in the uniform benchmark
//! (each key's slot must survive two intervals instead of one). A key read
//! often still needs only one miss more (TinyLFU compares the newcomer's
//! frequency with the victim's for the same reason). While the cache has
//! room, the second miss is enough: nothing is evicted for it.
//!
//! The memory: one 16-bit slot per key hash (a 14-bit fingerprint and a
//! 2-bit count of misses, saturating at 3), about one slot per entry the
//! cache can hold, so "lately" means "within roughly a cache's worth of
//! other misses". Lossy on purpose: a collision forgets a key (it is
//! admitted a miss later) or, once in 16,384, counts another's misses as
//! its own (admitted early); a racing miss of another key on the same slot
//! may be lost. None of this affects coherence. Lock-free (a load, and a
//! store when the slot changes), and it takes the hash the store already
//! computed for the lookup.
//!
//! This module owns that filter only; the store and the Redis path are
//! elsewhere (`store`, `near`).

use std::sync::atomic::{AtomicU16, Ordering};

/// Bytes of near-cache budget per slot: about one entry of a small value
/// (the store's per-entry overhead plus a short key and value).
const BYTES_PER_SLOT: usize = 256;

/// Bounds on the slot count: 2 KiB to 2 MiB of slots.
const MIN_SLOTS: usize = 1 << 10;
const MAX_SLOTS: usize = 1 << 20;

/// The low bits of a slot: the count of misses (0: empty slot).
const COUNT: u16 = 0b11;

/// The doorkeeper; see the module docs.
pub(super) struct Doorkeeper {
    slots: Box<[AtomicU16]>,
}

impl Doorkeeper {
    /// A filter sized for a near cache of `max_bytes`.
    pub(super) fn new(max_bytes: usize) -> Self {
        let n = (max_bytes / BYTES_PER_SLOT)
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU16::new(0)).collect(),
        }
    }

    /// Records a miss of the key whose keyed hash is `h`; true when it is
    /// worth storing: it missed once lately too and `full` is false, or
    /// twice lately (see the module docs).
    pub(super) fn admit(&self, h: u64, full: bool) -> bool {
        let misses = self.record(h);
        misses >= 3 || (misses == 2 && !full)
    }

    /// Counts a miss of `h`'s key; returns its misses lately, this one
    /// included (1 to 3, saturating).
    fn record(&self, h: u64) -> u16 {
        // The length is a power of two: the mask picks a slot; the top
        // 14 bits, independent of it, are the fingerprint.
        let slot = &self.slots[(h as usize) & (self.slots.len() - 1)];
        let fingerprint = ((h >> 50) as u16) << 2;
        let old = slot.load(Ordering::Relaxed);
        let misses = if old & COUNT != 0 && old & !COUNT == fingerprint {
            (old & COUNT) + u16::from(old & COUNT < 3)
        } else {
            1
        };
        let new = fingerprint | misses;
        // A hot key's slot stays as it is: no write, so no cache line
        // bouncing between the cores that miss it.
        if new != old {
            slot.store(new, Ordering::Relaxed);
        }
        misses
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::hash_map::RandomState, hash::BuildHasher};

    use super::*;

    /// Admits by key, hashing as the store does.
    struct Keyed(Doorkeeper, RandomState);

    impl Keyed {
        fn new(max_bytes: usize) -> Self {
            Self(Doorkeeper::new(max_bytes), RandomState::new())
        }

        fn admit(&self, key: &str, full: bool) -> bool {
            self.0.admit(self.1.hash_one(key), full)
        }
    }

    #[test]
    fn a_key_is_admitted_on_its_second_miss_while_the_cache_has_room() {
        let a = Keyed::new(1 << 20);
        assert!(!a.admit("k", false), "admitted on its first miss");
        assert!(a.admit("k", false));
        assert!(a.admit("k", false));
    }

    #[test]
    fn a_full_cache_admits_a_key_on_its_third_miss_and_after() {
        let a = Keyed::new(1 << 20);
        assert!(!a.admit("k", true), "admitted on its first miss");
        assert!(
            !a.admit("k", true),
            "admitted on its second miss, cache full"
        );
        assert!(a.admit("k", true));
        assert!(a.admit("k", true), "the count saturates, it does not wrap");
        assert!(a.admit("k", true));
    }

    /// A sweep of keys each read once is not stored (cost without gain);
    /// read again soon after, most are.
    #[test]
    fn a_sweep_read_once_is_not_admitted_and_read_twice_mostly_is() {
        let a = Keyed::new(4096 * BYTES_PER_SLOT);
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let first = keys.iter().filter(|k| a.admit(k, false)).count();
        let second = keys.iter().filter(|k| a.admit(k, false)).count();
        assert!(first <= 1, "{first} admitted on their first miss");
        assert!(
            second >= 700,
            "only {second} of 1000 admitted on their second"
        );
    }

    /// Uniform access over ten times the slots, the cache full: about
    /// one miss in 40 is admitted (each key's slot must outlive two of
    /// its intervals, e^-1 squared at this size), against one in 11 (one
    /// interval) with the second miss enough.
    #[test]
    fn uniform_misses_over_a_full_cache_are_rarely_admitted() {
        let a = Keyed::new(1024 * BYTES_PER_SLOT);
        let mut x: u64 = 7;
        let (mut full, mut room) = (0, 0);
        let b = Keyed::new(1024 * BYTES_PER_SLOT);
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("u{}", (x >> 33) % 10_240);
            full += usize::from(a.admit(&key, true));
            room += usize::from(b.admit(&key, false));
        }
        assert!(full < 200_000 / 20, "{full} of 200000 admitted while full");
        assert!(room > 200_000 / 20, "only {room} admitted with room");
    }

    #[test]
    fn the_filter_is_sized_from_max_bytes_within_bounds() {
        assert_eq!(Doorkeeper::new(1).slots.len(), MIN_SLOTS);
        assert_eq!(Doorkeeper::new(64 << 20).slots.len(), 1 << 18);
        assert_eq!(Doorkeeper::new(usize::MAX).slots.len(), MAX_SLOTS);
    }
}
