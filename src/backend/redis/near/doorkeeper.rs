//! Which near-cache misses are worth storing: a key is admitted when it
//! missed once before, lately ("doorkeeper", the first stage of TinyLFU).
//!
//! Why: storing a miss costs a claim, a `PTTL` next to the `GET`, a copy of
//! the value and, once the cache is full, an eviction. Under a key set much
//! larger than the cache, most stored values are evicted before they are
//! read again, so that cost buys nothing; a key read once and never again
//! (a scan, a long tail) should not push out one that is read twice. A key
//! not admitted is read with a plain `GET` and not stored, which is always
//! coherent (nothing is held). A hot key is admitted on its second miss.
//!
//! The memory: one 16-bit fingerprint per slot, a slot per key hash,
//! about one slot per entry the cache can hold, so "lately" means "within
//! roughly a cache's worth of other misses". Lossy on purpose: a collision
//! forgets a key (it is admitted one miss later) or, once in 65,535, admits
//! one early; neither affects coherence. Lock-free (one atomic swap), and
//! it takes the hash the store already computed for the lookup.
//!
//! This module owns that filter only; the store and the Redis path are
//! elsewhere (`store`, `near`).

use std::sync::atomic::{AtomicU16, Ordering};

/// Bytes of near-cache budget per slot: about one entry of a small value
/// (the store's per-entry overhead plus a short key and value).
const BYTES_PER_SLOT: usize = 256;

/// Bounds on the slot count: 2 KiB to 2 MiB of fingerprints.
const MIN_SLOTS: usize = 1 << 10;
const MAX_SLOTS: usize = 1 << 20;

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

    /// Records a miss of the key whose keyed hash is `h`; true when it
    /// missed lately too (store it).
    pub(super) fn admit(&self, h: u64) -> bool {
        // The length is a power of two: the mask picks a slot; the top
        // bits, independent of it, are the fingerprint (never 0, the
        // empty slot).
        let slot = &self.slots[(h as usize) & (self.slots.len() - 1)];
        let fingerprint = ((h >> 48) as u16) | 1;
        slot.swap(fingerprint, Ordering::Relaxed) == fingerprint
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

        fn admit(&self, key: &str) -> bool {
            self.0.admit(self.1.hash_one(key))
        }
    }

    #[test]
    fn a_key_is_admitted_on_its_second_miss_and_after() {
        let a = Keyed::new(1 << 20);
        assert!(!a.admit("k"), "admitted on its first miss");
        assert!(a.admit("k"));
        assert!(a.admit("k"));
    }

    /// A sweep of keys each read once is not stored (cost without gain);
    /// read again soon after, most are.
    #[test]
    fn a_sweep_read_once_is_not_admitted_and_read_twice_mostly_is() {
        let a = Keyed::new(4096 * BYTES_PER_SLOT);
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let first = keys.iter().filter(|k| a.admit(k)).count();
        let second = keys.iter().filter(|k| a.admit(k)).count();
        assert!(first <= 1, "{first} admitted on their first miss");
        assert!(
            second >= 700,
            "only {second} of 1000 admitted on their second"
        );
    }

    #[test]
    fn the_filter_is_sized_from_max_bytes_within_bounds() {
        assert_eq!(Doorkeeper::new(1).slots.len(), MIN_SLOTS);
        assert_eq!(Doorkeeper::new(64 << 20).slots.len(), 1 << 18);
        assert_eq!(Doorkeeper::new(usize::MAX).slots.len(), MAX_SLOTS);
    }
}
