//! One core's memcached: its store, the key → core map, the connections' memory budget and the
//! counters, and the owner's side of every key-value request ([`Engine::serve`]).
//!
//! A request for a key this core owns is served here whether it came from a local connection or
//! from another core: the same [`KvRequest`] goes in and the same [`KvReply`] comes out, so local
//! and remote keys behave alike by construction.

use super::partition::Partition;
use super::stats::{self, ServerFacts, Stat, StatsBlock};
use super::store::{ArithmeticOutcome, Hit, Store, StoreOutcome};
use crate::config::CoreId;
use crate::peers::{KvOperation, KvReply, KvRequest, KvStatus};

/// The time as the engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock Unix seconds (expiry, `stats time`).
    pub unix: u64,
    /// Monotonic milliseconds (timeouts).
    pub millis: u64,
}

/// The engine's tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The TCP port (for `stats settings`).
    pub port: u16,
    /// Most value bytes the first reply to a get carries; a longer value is pinned on its owner
    /// and read in chunks. Every get reserves this much of the budget while its reply is
    /// outstanding.
    pub inline: usize,
    /// Bytes of each further chunk of a pinned value (one fetch in flight per connection).
    pub chunk: usize,
    /// How long a connection waits for another core's answer.
    pub remote_timeout_ms: u64,
    /// What `version` answers.
    pub version: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 11211,
            inline: 3 * 1024,
            chunk: 32 * 1024,
            remote_timeout_ms: 2_000,
            version: "1.6.18-flotilla",
        }
    }
}

/// The bytes every connection of a core holds (input, queued output, reservations for replies
/// still to come), bounded for admitting new work: a connection that would pass the limit waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: usize,
    used: usize,
    /// `used` went down since [`Budget::take_released`].
    released: bool,
    stalls: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            released: false,
            stalls: 0,
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes that may still be taken.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    /// A holder's charge changed from `old` to `new` bytes.
    pub fn recharge(&mut self, old: usize, new: usize) {
        if new < old {
            self.released = true;
        }
        self.used = self.used - old.min(self.used) + new;
    }

    /// Counts a connection that had to wait.
    pub fn stalled(&mut self) {
        self.stalls += 1;
    }

    /// Whether bytes were given back since the last call.
    pub fn take_released(&mut self) -> bool {
        core::mem::take(&mut self.released)
    }
}

/// Memory sizes of one core's memcached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Item memory ([`Store`] limit, `limit_maxbytes`).
    pub items: usize,
    /// The connections' budget.
    pub budget: usize,
}

impl MemoryLimits {
    /// The split of a core's heap: items get half, the connections a quarter, and the rest stays
    /// for sockets, the stack and the other applications. `total_mb` (`memcached.mem=`) asks for
    /// that much item memory over `cores` cores instead, capped at what the heap holds beside
    /// the budget and an eighth of the heap.
    pub fn from_heap(heap_bytes: usize, total_mb: Option<u32>, cores: u16) -> Self {
        let heap = if heap_bytes == 0 {
            64 << 20
        } else {
            heap_bytes
        };
        let budget = heap / 4;
        let cap = heap - budget - heap / 8;
        let items = match total_mb {
            Some(mb) => ((mb as usize) << 20) / usize::from(cores.max(1)),
            None => heap / 2,
        };
        Self {
            items: items.min(cap),
            budget,
        }
    }
}

/// One core's memcached.
pub struct Engine {
    /// This core.
    pub core: CoreId,
    /// Its items.
    pub store: Store,
    /// The key → core map over the living cores.
    pub partition: Partition,
    /// The connections' memory budget.
    pub budget: Budget,
    /// Connection and cross-core counters (the store keeps the item counters).
    pub counters: StatsBlock,
    /// Tunables.
    pub settings: Settings,
    started: Now,
    last_tick: u64,
    encoded_stats: [u8; stats::ENCODED_LEN],
}

impl Engine {
    /// The engine of `core` among `core_count` living cores.
    pub fn new(
        core: CoreId,
        core_count: u16,
        limits: MemoryLimits,
        settings: Settings,
        now: Now,
    ) -> Self {
        Self {
            core,
            store: Store::new(core, limits.items, now.unix),
            partition: Partition::all(core_count),
            budget: Budget::new(limits.budget),
            counters: StatsBlock::default(),
            settings,
            started: now,
            last_tick: now.unix,
            encoded_stats: [0; stats::ENCODED_LEN],
        }
    }

    /// Whether `key` is this core's.
    pub fn owns(&self, key: &[u8]) -> bool {
        self.partition.owner(key) == self.core
    }

    /// Housekeeping, at most once a second: delayed flushes, idle pins, expired items.
    pub fn tick(&mut self, now: Now) {
        if now.unix != self.last_tick {
            self.last_tick = now.unix;
            self.store.tick(now.unix);
        }
    }

    /// The living cores changed: keys follow the new map (items this core no longer owns are
    /// dropped, so they cannot come back stale), and pins held for dead cores go.
    pub fn set_live(&mut self, live: u64) {
        self.partition.set_live(live);
        let partition = self.partition;
        let core = self.core;
        self.store
            .retain(|hash| partition.owner_of_hash(hash) == core);
        self.store
            .release_pins_of(|origin| !partition.is_live(origin));
    }

    /// This core's counters and gauges.
    pub fn snapshot(&self) -> StatsBlock {
        Self::snapshot_of(&self.store, &self.counters, &self.budget)
    }

    fn snapshot_of(store: &Store, counters: &StatsBlock, budget: &Budget) -> StatsBlock {
        let mut block = store.counters();
        block.merge(counters);
        block.set(Stat::BudgetUsed, budget.used() as u64);
        block.set(Stat::BudgetLimit, budget.limit() as u64);
        block.add(Stat::BudgetStalls, budget.stalls);
        block
    }

    /// What the general stats block prints besides the counters.
    pub fn facts(&self, now: Now) -> ServerFacts {
        ServerFacts {
            uptime: now.unix.saturating_sub(self.started.unix),
            time: now.unix,
            version: self.settings.version,
            threads: self.partition.live_count(),
        }
    }

    /// [`Self::serve`], also lending the engine's counters beside the reply (which borrows the
    /// store).
    pub fn serve_with_counters<'s>(
        &'s mut self,
        request: &KvRequest<'_>,
        now: Now,
    ) -> (KvReply<'s>, &'s mut StatsBlock) {
        let reply = Self::serve_parts(
            &mut self.store,
            &mut self.counters,
            &mut self.budget,
            &mut self.encoded_stats,
            self.core,
            request,
            now,
        );
        (reply, &mut self.counters)
    }

    /// Executes `request` for the key(s) this core owns and returns the reply (which the caller
    /// drops for `noreply` and [`KvOperation::Release`]). A get of a value longer than the
    /// request's reply limit pins it and returns its first chunk.
    pub fn serve<'s>(&'s mut self, request: &KvRequest<'_>, now: Now) -> KvReply<'s> {
        self.serve_with_counters(request, now).0
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_parts<'s>(
        store: &'s mut Store,
        counters: &mut StatsBlock,
        budget: &mut Budget,
        encoded_stats: &'s mut [u8; stats::ENCODED_LEN],
        core: CoreId,
        request: &KvRequest<'_>,
        now: Now,
    ) -> KvReply<'s> {
        if request.origin != core {
            counters.count(Stat::ServedForPeers);
        }
        let owner = core;
        let (ticket, sequence, service) = (request.ticket, request.sequence, request.service);
        let reply = |status, key, value| KvReply {
            service,
            status,
            owner,
            ticket,
            sequence,
            key,
            value,
        };
        let simple = |status| reply(status, &[][..], &[][..]);
        let key = request.key;
        match request.operation {
            KvOperation::Get {
                touch, reply_limit, ..
            } => {
                let limit = reply_limit as usize;
                match store.get(key, touch, limit, request.origin, now.unix) {
                    Hit::Whole {
                        flags,
                        cas,
                        key,
                        value,
                    } => reply(KvStatus::Value { flags, cas }, key, value),
                    Hit::Pinned {
                        flags,
                        cas,
                        pin,
                        total,
                        key,
                        first,
                    } => reply(
                        KvStatus::Streaming {
                            flags,
                            cas,
                            pin,
                            total,
                        },
                        key,
                        first,
                    ),
                    Hit::Miss => simple(KvStatus::Miss),
                }
            }
            KvOperation::Store {
                mode,
                flags,
                exptime,
            } => simple(
                match store.store(mode, key, flags, exptime, request.value, now.unix) {
                    StoreOutcome::Stored => KvStatus::Stored,
                    StoreOutcome::NotStored => KvStatus::NotStored,
                    StoreOutcome::Exists => KvStatus::Exists,
                    StoreOutcome::NotFound => KvStatus::NotFound,
                    StoreOutcome::OutOfMemory => KvStatus::OutOfMemory,
                },
            ),
            KvOperation::Delete => simple(if store.delete(key, now.unix) {
                KvStatus::Deleted
            } else {
                KvStatus::NotFound
            }),
            KvOperation::Touch { exptime } => simple(if store.touch(key, exptime, now.unix) {
                KvStatus::Touched
            } else {
                KvStatus::NotFound
            }),
            KvOperation::Arithmetic { increment, delta } => {
                simple(match store.arithmetic(key, increment, delta, now.unix) {
                    ArithmeticOutcome::Value(value) => KvStatus::Number(value),
                    ArithmeticOutcome::NotFound => KvStatus::NotFound,
                    ArithmeticOutcome::NonNumeric => KvStatus::NonNumeric,
                    ArithmeticOutcome::OutOfMemory => KvStatus::OutOfMemory,
                })
            }
            KvOperation::Fetch {
                pin,
                offset,
                reply_limit,
            } => match store.fetch(pin, offset as usize, reply_limit as usize, now.unix) {
                Some(chunk) => reply(KvStatus::Chunk, &[][..], chunk),
                None => simple(KvStatus::PinGone),
            },
            KvOperation::Release { pin } => {
                store.release(pin);
                simple(KvStatus::Done)
            }
            KvOperation::FlushAll { delay } => {
                store.flush_all(delay, now.unix);
                simple(KvStatus::Done)
            }
            KvOperation::Stats => {
                *encoded_stats = Self::snapshot_of(store, counters, budget).encode();
                reply(KvStatus::Stats, &[][..], &encoded_stats[..])
            }
            KvOperation::ResetStats => {
                counters.reset();
                store.counters_mut().reset();
                budget.stalls = 0;
                simple(KvStatus::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::StoreMode;

    const NOW: Now = Now {
        unix: 1_800_000_000,
        millis: 5_000,
    };

    #[test]
    fn memory_is_split_from_the_heap_and_the_option_is_capped() {
        let heap = 32 << 20;
        let limits = MemoryLimits::from_heap(heap, None, 4);
        assert_eq!(limits.items, 16 << 20);
        assert_eq!(limits.budget, 8 << 20);
        assert_eq!(MemoryLimits::from_heap(heap, Some(16), 4).items, 4 << 20);
        assert_eq!(
            MemoryLimits::from_heap(heap, Some(1024), 4).items,
            heap - heap / 4 - heap / 8
        );
        assert_eq!(MemoryLimits::from_heap(0, None, 1).items, 32 << 20);
    }

    #[test]
    fn local_and_remote_requests_are_served_alike() {
        let limits = MemoryLimits::from_heap(8 << 20, None, 2);
        let mut engine = Engine::new(1, 2, limits, Settings::default(), NOW);
        let request = |operation, value: &'static [u8]| KvRequest {
            service: 11211,
            operation,
            noreply: false,
            origin: 0,
            ticket: 7,
            sequence: 9,
            key: b"key",
            value,
        };
        let stored = engine.serve(
            &request(
                KvOperation::Store {
                    mode: StoreMode::Set,
                    flags: 3,
                    exptime: 0,
                },
                b"0123456789",
            ),
            NOW,
        );
        assert_eq!(
            (stored.status, stored.owner, stored.ticket, stored.sequence),
            (KvStatus::Stored, 1, 7, 9)
        );
        let get = |reply_limit| {
            request(
                KvOperation::Get {
                    cas: false,
                    touch: None,
                    reply_limit,
                },
                b"",
            )
        };
        let whole = engine.serve(&get(100), NOW);
        assert!(matches!(whole.status, KvStatus::Value { flags: 3, .. }));
        assert_eq!((whole.key, whole.value), (&b"key"[..], &b"0123456789"[..]));
        let pinned = engine.serve(&get(4), NOW);
        let KvStatus::Streaming { pin, total, .. } = pinned.status else {
            panic!("{pinned:?}")
        };
        assert_eq!((pinned.value, total), (&b"0123"[..], 10));
        let fetch = |offset| {
            request(
                KvOperation::Fetch {
                    pin,
                    offset,
                    reply_limit: 4,
                },
                b"",
            )
        };
        assert_eq!(engine.serve(&fetch(4), NOW).value, b"4567");
        assert_eq!(engine.serve(&fetch(8), NOW).value, b"89");
        assert_eq!(engine.serve(&fetch(8), NOW).status, KvStatus::PinGone);
        let number = engine.serve(
            &request(
                KvOperation::Arithmetic {
                    increment: true,
                    delta: 1,
                },
                b"",
            ),
            NOW,
        );
        assert_eq!(number.status, KvStatus::Number(123_456_790));
        let stats = engine.serve(&request(KvOperation::Stats, b""), NOW);
        let block = StatsBlock::decode(stats.value).unwrap();
        assert_eq!(block.get(Stat::CurrItems), 1);
        assert_eq!(block.get(Stat::ServedForPeers), 8);
        assert_eq!(block.get(Stat::LimitMaxbytes), limits.items as u64);
        engine.serve(&request(KvOperation::ResetStats, b""), NOW);
        assert_eq!(engine.snapshot().get(Stat::ServedForPeers), 0);
        engine.serve(&request(KvOperation::FlushAll { delay: 0 }, b""), NOW);
        assert_eq!(engine.snapshot().get(Stat::CurrItems), 0);
    }

    #[test]
    fn a_failed_core_takes_its_keys_and_pins_along() {
        let limits = MemoryLimits::from_heap(8 << 20, None, 3);
        let mut engine = Engine::new(0, 3, limits, Settings::default(), NOW);
        // Keys this core will own after core 2 fails, which it did not own before.
        let before = engine.partition;
        engine.set_live(0b011);
        let moved: alloc::vec::Vec<_> = (0..200u32)
            .map(|n| alloc::format!("k{n}"))
            .filter(|key| before.owner(key.as_bytes()) == 2 && engine.owns(key.as_bytes()))
            .collect();
        assert!(!moved.is_empty());
        assert_eq!(engine.facts(NOW).threads, 2);
    }

    extern crate alloc;
}
