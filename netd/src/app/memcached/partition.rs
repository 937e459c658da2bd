//! The one key → core map: which living core owns a key.
//!
//! Rendezvous (highest-random-weight) hashing over the living cores: each core gets a score
//! `mix(hash(key), core)` and the highest score owns the key. Every core computes the same owner
//! from the same set of living cores, with no table to keep in sync. When a core fails, only the
//! keys it owned move, spread evenly over the survivors; every other key keeps its owner. The data
//! of the failed core is lost (as with a failed memcached node): its keys miss until stored again.

use crate::config::CoreId;

/// Most cores the map knows (the live set is a 64-bit mask).
pub const MAX_CORES: u16 = 64;

/// The key → core map over a set of living cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    live: u64,
}

/// FNV-1a, 64-bit: the key's hash, mixed with each core's number by [`score`].
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A core's score for a key hash (a 64-bit finaliser of the hash and the core number).
fn score(hash: u64, core: u16) -> u64 {
    let mut x = hash ^ (u64::from(core) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Partition {
    /// Every core of `0..core_count` alive (at most [`MAX_CORES`]; at least core 0).
    pub fn all(core_count: u16) -> Self {
        let count = core_count.clamp(1, MAX_CORES);
        Self {
            live: if count == 64 {
                u64::MAX
            } else {
                (1u64 << count) - 1
            },
        }
    }

    /// The living cores as a mask (bit `i` = core `i`).
    pub fn live(&self) -> u64 {
        self.live
    }

    /// Whether `core` is alive.
    pub fn is_live(&self, core: CoreId) -> bool {
        core < MAX_CORES && self.live & (1 << core) != 0
    }

    /// Living cores.
    pub fn live_count(&self) -> u16 {
        self.live.count_ones() as u16
    }

    /// Changes the living cores. An empty mask is ignored (some core must own every key).
    pub fn set_live(&mut self, live: u64) {
        if live != 0 {
            self.live = live;
        }
    }

    /// The living core that owns `key`.
    pub fn owner(&self, key: &[u8]) -> CoreId {
        self.owner_of_hash(key_hash(key))
    }

    /// The living core that owns a key whose [`key_hash`] is `hash`.
    pub fn owner_of_hash(&self, hash: u64) -> CoreId {
        let mut best = 0;
        let mut best_score = 0;
        let mut first = true;
        let mut remaining = self.live;
        while remaining != 0 {
            let core = remaining.trailing_zeros() as u16;
            remaining &= remaining - 1;
            let candidate = score(hash, core);
            if first || candidate > best_score {
                best = core;
                best_score = candidate;
                first = false;
            }
        }
        best
    }
}

/// The core owning `key` when all of `0..core_count` live (what clients and tests use to pick keys
/// for a given core).
pub fn key_owner(key: &[u8], core_count: u16) -> CoreId {
    Partition::all(core_count).owner(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;

    #[test]
    fn keys_spread_evenly_and_the_owner_is_stable() {
        for cores in [1u16, 2, 3, 4, 8, 16] {
            let partition = Partition::all(cores);
            let mut seen = [0u32; 16];
            for n in 0..4000u32 {
                let key = format!("key{n}");
                let owner = partition.owner(key.as_bytes());
                assert!(owner < cores);
                assert_eq!(owner, key_owner(key.as_bytes(), cores));
                seen[usize::from(owner)] += 1;
            }
            let fair = 4000 / u32::from(cores);
            for count in &seen[..usize::from(cores)] {
                assert!(
                    *count > fair * 3 / 4 && *count < fair * 5 / 4,
                    "{cores} cores: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn a_failed_core_moves_only_its_own_keys_to_the_survivors() {
        let before = Partition::all(4);
        let mut after = before;
        after.set_live(0b1011); // core 2 failed
        assert!(!after.is_live(2) && after.is_live(3));
        let mut moved_to = [0u32; 4];
        for n in 0..4000u32 {
            let key = format!("user:{n}");
            let old = before.owner(key.as_bytes());
            let new = after.owner(key.as_bytes());
            if old == 2 {
                assert_ne!(new, 2);
                moved_to[usize::from(new)] += 1;
            } else {
                assert_eq!(old, new, "{key} moved although its owner lives");
            }
        }
        // The failed core's keys spread over all three survivors.
        assert!(
            moved_to[0] > 200 && moved_to[1] > 200 && moved_to[3] > 200,
            "{moved_to:?}"
        );
        // An empty set is refused: some core must own every key.
        after.set_live(0);
        assert_eq!(after.live(), 0b1011);
        assert_eq!(Partition::all(64).live_count(), 64);
        assert_eq!(Partition::all(0).live(), 1);
    }
}
