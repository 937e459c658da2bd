//! One core's items: a hash table of keys, an LRU list, CAS uniques, memcached's expiry and
//! `flush_all` rules, and a memory limit that eviction keeps and nothing exceeds.
//!
//! * **Memory.** [`Store::used`] counts every item's key and value bytes with the allocations
//!   around them, the hash table and the entry pages, and values removed from the store while a
//!   reader still holds them (pins, below). A store never lets `used` pass its limit: before an
//!   item goes in, items are evicted from the cold end of the LRU list until it fits; if it cannot
//!   fit, the command gets `SERVER_ERROR out of memory storing object` (and a `set` drops the old
//!   item, as memcached does). Values are allocated with `try_reserve`, so a fragmented heap is an
//!   error (after more eviction), never an abort.
//! * **Time.** Every call takes `now` (Unix seconds). An exptime of 0 never expires; up to 30 days
//!   is relative; more is an absolute Unix time (at or before the store's start: already expired);
//!   a negative one is already expired. An item is gone once `now >= exptime`.
//! * **`flush_all [delay]`** invalidates every item whose last update is at or before
//!   `realtime(delay) - 1`, from that moment on (memcached's `oldest_live`); without a delay (or
//!   with 1, which comes to the same) the items go at once.
//! * **CAS uniques** are unique across cores: a per-core counter times 64, plus the core.
//! * **Pins.** A value longer than a reply may carry is read in chunks: [`Store::get`] pins it (a
//!   reference to the value as it was) and [`Store::fetch`] serves the chunks, so a `set` meanwhile
//!   does not change what the reader sees. A pin goes when read to the end, on
//!   [`Store::release`], or after 60 s idle.

use super::partition::key_hash;
use super::protocol::{item_number, max_value_length};
use super::stats::{Stat, StatsBlock};
use crate::config::CoreId;
use crate::peers::StoreMode;
use core::fmt::Write;
use core::mem::size_of;

extern crate alloc;
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use hashbrown::HashTable;

/// Seconds in 30 days: a larger exptime is an absolute Unix time.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// Most values pinned at once on one core.
pub const MAX_PINS: usize = 256;

/// A pin not fetched for this long is dropped.
pub const PIN_IDLE_SECONDS: u64 = 60;

/// Entries per page of the entry table (pages keep the table out of one huge allocation).
const PAGE: usize = 256;

/// No entry (end of the LRU list).
const NONE: u32 = u32::MAX;

/// What an allocation costs beyond the bytes asked for (headers, rounding), counted per
/// allocation.
const ALLOCATION_SLACK: usize = 16;

/// A stored value, shared with the pins that read it.
pub type Value = Rc<Vec<u8>>;

struct Entry {
    key: Box<[u8]>,
    value: Value,
    hash: u64,
    flags: u32,
    /// Absolute Unix seconds; 0 = never.
    exptime: u64,
    cas: u64,
    /// Unix seconds of the last store (what `flush_all` compares).
    time: u64,
    fetched: bool,
    /// Towards the hot end.
    prev: u32,
    /// Towards the cold end.
    next: u32,
}

struct Pin {
    value: Value,
    origin: CoreId,
    last_used: u64,
    generation: u16,
    finished: bool,
}

/// Bytes a value costs: its buffer, the shared header around it, two allocations.
fn value_cost(value: &Vec<u8>) -> usize {
    value.capacity() + 2 * size_of::<usize>() + size_of::<Vec<u8>>() + 2 * ALLOCATION_SLACK
}

fn entry_cost(entry: &Entry) -> usize {
    entry.key.len() + ALLOCATION_SLACK + value_cost(&entry.value)
}

/// Outcome of a storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`.
    NotStored,
    /// `EXISTS`.
    Exists,
    /// `NOT_FOUND`.
    NotFound,
    /// The item does not fit even after eviction.
    OutOfMemory,
}

/// Outcome of `incr`/`decr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithmeticOutcome {
    /// The new value.
    Value(u64),
    /// No such item.
    NotFound,
    /// The item is not a decimal number.
    NonNumeric,
    /// The longer number does not fit.
    OutOfMemory,
}

/// A get's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit<'a> {
    /// A value that fits the reply.
    Whole {
        /// Client flags.
        flags: u32,
        /// CAS unique.
        cas: u64,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// A longer value, pinned; `first` is its first chunk.
    Pinned {
        /// Client flags.
        flags: u32,
        /// CAS unique.
        cas: u64,
        /// The pin to fetch the rest with.
        pin: u32,
        /// Bytes of the whole value.
        total: u32,
        /// The key.
        key: &'a [u8],
        /// The first chunk.
        first: &'a [u8],
    },
    /// No item (or it expired, or was flushed).
    Miss,
}

/// One core's share of the key space.
pub struct Store {
    core: CoreId,
    table: HashTable<u32>,
    pages: Vec<Vec<Option<Entry>>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    items: usize,
    item_bytes: usize,
    pinned_bytes: usize,
    limit: usize,
    next_cas: u64,
    /// A pending `flush_all` with a delay: items updated at or before this second are invalid
    /// once it is reached.
    oldest_live: Option<u64>,
    started: u64,
    pins: Vec<Option<Pin>>,
    pin_generation: u16,
    pins_finished: bool,
    counters: StatsBlock,
}

fn slot_of(pages: &[Vec<Option<Entry>>], index: u32) -> Option<&Entry> {
    let index = index as usize;
    pages.get(index / PAGE)?.get(index % PAGE)?.as_ref()
}

impl Store {
    /// An empty store of `core` holding at most `limit` bytes; `now` is the start (for absolute
    /// exptimes at or before it).
    pub fn new(core: CoreId, limit: usize, now: u64) -> Self {
        Self {
            core,
            table: HashTable::new(),
            pages: Vec::new(),
            free: Vec::new(),
            head: NONE,
            tail: NONE,
            items: 0,
            item_bytes: 0,
            pinned_bytes: 0,
            limit,
            next_cas: 1,
            oldest_live: None,
            started: now,
            pins: Vec::new(),
            pin_generation: 0,
            pins_finished: false,
            counters: StatsBlock::default(),
        }
    }

    /// The memory limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes in use (items, structures, pinned values no longer stored); never above the limit
    /// after a call returns.
    pub fn used(&self) -> usize {
        self.item_bytes + self.pinned_bytes + self.structure_bytes()
    }

    /// Items stored (expired ones not yet noticed included, as memcached counts them).
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether no item is stored.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Values pinned now (read to the end: no longer counted).
    pub fn pins(&self) -> usize {
        self.pins
            .iter()
            .filter(|pin| pin.as_ref().is_some_and(|pin| !pin.finished))
            .count()
    }

    /// The store's counters (the [`Stat`]s it keeps), with its gauges filled in.
    pub fn counters(&self) -> StatsBlock {
        let mut block = self.counters;
        block.set(Stat::CurrItems, self.items as u64);
        block.set(Stat::Bytes, self.used() as u64);
        block.set(Stat::LimitMaxbytes, self.limit as u64);
        block.set(Stat::Pins, self.pins() as u64);
        block
    }

    /// Counters the caller keeps on the store's behalf (`stats reset`, pins refused).
    pub fn counters_mut(&mut self) -> &mut StatsBlock {
        &mut self.counters
    }

    fn structure_bytes(&self) -> usize {
        self.table.allocation_size()
            + self.pages.len() * (PAGE * size_of::<Option<Entry>>() + ALLOCATION_SLACK)
            + self.pages.capacity() * size_of::<Vec<Option<Entry>>>()
            + self.free.capacity() * size_of::<u32>()
            + self.pins.capacity() * size_of::<Option<Pin>>()
    }

    /// memcached's `realtime()` for an exptime as the client sent it: absolute Unix seconds, 0 for
    /// never, and a time in the past for a negative one.
    pub fn expiry(&self, exptime: i32, now: u64) -> u64 {
        let mut exptime = i64::from(exptime);
        if exptime < 0 {
            exptime = REALTIME_MAXDELTA + 1;
        }
        self.realtime(exptime, now)
    }

    fn realtime(&self, exptime: i64, now: u64) -> u64 {
        if exptime == 0 {
            0
        } else if exptime > REALTIME_MAXDELTA {
            let absolute = exptime as u64;
            if absolute <= self.started {
                1
            } else {
                absolute
            }
        } else {
            now + exptime as u64
        }
    }

    fn next_cas(&mut self) -> u64 {
        let cas = self.next_cas << 6 | u64::from(self.core & 63);
        self.next_cas += 1;
        cas
    }

    fn entry(&self, index: u32) -> Option<&Entry> {
        slot_of(&self.pages, index)
    }

    fn entry_mut(&mut self, index: u32) -> Option<&mut Entry> {
        let index = index as usize;
        self.pages
            .get_mut(index / PAGE)?
            .get_mut(index % PAGE)?
            .as_mut()
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<u32> {
        self.table
            .find(hash, |index| {
                slot_of(&self.pages, *index).is_some_and(|entry| &*entry.key == key)
            })
            .copied()
    }

    fn expired(entry: &Entry, now: u64) -> bool {
        entry.exptime != 0 && entry.exptime <= now
    }

    fn flushed(&self, entry: &Entry, now: u64) -> bool {
        self.oldest_live
            .is_some_and(|oldest| oldest <= now && entry.time <= oldest)
    }

    /// The live item of `key`: an expired or flushed one is removed and counted.
    fn lookup(&mut self, key: &[u8], hash: u64, now: u64) -> Option<u32> {
        self.reap_finished_pins();
        let index = self.find(key, hash)?;
        let entry = self.entry(index)?;
        let (expired, flushed, fetched) = (
            Self::expired(entry, now),
            self.flushed(entry, now),
            entry.fetched,
        );
        if expired {
            self.counters.count(Stat::GetExpired);
            if !fetched {
                self.counters.count(Stat::ExpiredUnfetched);
            }
            self.remove(index);
            return None;
        }
        if flushed {
            self.counters.count(Stat::GetFlushed);
            self.remove(index);
            return None;
        }
        Some(index)
    }

    // --- LRU list -------------------------------------------------------------------------

    fn link_head(&mut self, index: u32) {
        let old_head = self.head;
        if let Some(entry) = self.entry_mut(index) {
            entry.prev = NONE;
            entry.next = old_head;
        }
        if let Some(head) = self.entry_mut(old_head) {
            head.prev = index;
        }
        self.head = index;
        if self.tail == NONE {
            self.tail = index;
        }
    }

    fn unlink_lru(&mut self, index: u32) {
        let Some(entry) = self.entry(index) else {
            return;
        };
        let (prev, next) = (entry.prev, entry.next);
        match self.entry_mut(prev) {
            Some(entry) => entry.next = next,
            None => self.head = next,
        }
        match self.entry_mut(next) {
            Some(entry) => entry.prev = prev,
            None => self.tail = prev,
        }
    }

    fn bump(&mut self, index: u32) {
        if self.head != index {
            self.unlink_lru(index);
            self.link_head(index);
        }
    }

    // --- entries --------------------------------------------------------------------------

    /// Removes an entry; a value a pin still reads stays counted until the pin goes.
    fn remove(&mut self, index: u32) {
        let Some(hash) = self.entry(index).map(|entry| entry.hash) else {
            return;
        };
        self.unlink_lru(index);
        if let Ok(found) = self.table.find_entry(hash, |other| *other == index) {
            found.remove();
        }
        let slot = (index as usize / PAGE, index as usize % PAGE);
        if let Some(entry) = self.pages[slot.0][slot.1].take() {
            self.item_bytes -= entry_cost(&entry);
            if Rc::strong_count(&entry.value) > 1 {
                self.pinned_bytes += value_cost(&entry.value);
            }
            self.items -= 1;
            // Room for it is kept: `free` never holds more than every slot.
            let _ = self.free.try_reserve(1);
            if self.free.len() < self.free.capacity() {
                self.free.push(index);
            }
        }
    }

    /// A free entry slot, adding a page when none is left. `None` if memory is short.
    fn allocate_slot(&mut self) -> Option<u32> {
        if let Some(index) = self.free.pop() {
            return Some(index);
        }
        let base = self.pages.len() * PAGE;
        if base + PAGE > NONE as usize {
            return None;
        }
        let mut page = Vec::new();
        page.try_reserve_exact(PAGE).ok()?;
        page.resize_with(PAGE, || None);
        self.pages.try_reserve(1).ok()?;
        self.free.try_reserve(PAGE).ok()?;
        self.pages.push(page);
        for offset in (1..PAGE).rev() {
            self.free.push((base + offset) as u32);
        }
        Some(base as u32)
    }

    /// Puts a new entry in, at the hot end. `None` (entry dropped) if memory is short.
    fn insert(&mut self, entry: Entry) -> Option<u32> {
        let hash = entry.hash;
        let index = self.allocate_slot()?;
        let Self { table, pages, .. } = self;
        let hasher = |index: &u32| slot_of(pages, *index).map_or(0, |entry| entry.hash);
        if table.try_reserve(1, hasher).is_err() {
            let _ = self.free.try_reserve(1);
            self.free.push(index);
            return None;
        }
        self.item_bytes += entry_cost(&entry);
        self.items += 1;
        let slot = (index as usize / PAGE, index as usize % PAGE);
        self.pages[slot.0][slot.1] = Some(entry);
        let Self { table, pages, .. } = self;
        table.insert_unique(hash, index, |index| {
            slot_of(pages, *index).map_or(0, |entry| entry.hash)
        });
        self.link_head(index);
        Some(index)
    }

    /// Frees one entry other than `protect`: an expired or flushed one among the five coldest
    /// (reclaimed, as memcached's LRU tail search does), else the coldest (evicted). False if
    /// there is none.
    fn evict_one(&mut self, now: u64, protect: Option<u32>) -> bool {
        let mut victim = NONE;
        let mut candidate = self.tail;
        for _ in 0..5 {
            let Some(entry) = self.entry(candidate) else {
                break;
            };
            if Some(candidate) != protect {
                if victim == NONE {
                    victim = candidate;
                }
                if Self::expired(entry, now) || self.flushed(entry, now) {
                    victim = candidate;
                    break;
                }
            }
            candidate = entry.prev;
        }
        if victim == NONE {
            // Only `protect` among the five: look further.
            victim = self.entry(candidate).map_or(NONE, |_| candidate);
        }
        let Some(entry) = self.entry(victim) else {
            return false;
        };
        let dead = Self::expired(entry, now) || self.flushed(entry, now);
        let fetched = entry.fetched;
        if dead {
            self.counters.count(Stat::Reclaimed);
            if !fetched {
                self.counters.count(Stat::ExpiredUnfetched);
            }
        } else {
            self.counters.count(Stat::Evictions);
            if !fetched {
                self.counters.count(Stat::EvictedUnfetched);
            }
        }
        self.remove(victim);
        true
    }

    /// Evicts until `more` bytes fit under the limit; false if they cannot (then nothing is
    /// evicted in vain when even an empty store could not take them).
    fn make_room(&mut self, more: usize, now: u64, protect: Option<u32>) -> bool {
        if self.used() + more <= self.limit {
            return true;
        }
        let kept = protect
            .and_then(|index| self.entry(index))
            .map_or(0, entry_cost);
        if self.pinned_bytes + self.structure_bytes() + kept + more > self.limit {
            return false;
        }
        while self.used() + more > self.limit {
            if !self.evict_one(now, protect) {
                return false;
            }
        }
        true
    }

    /// A buffer for `length` bytes, evicting (up to a bound) when the heap refuses it.
    fn allocate_value(&mut self, length: usize, now: u64, protect: Option<u32>) -> Option<Vec<u8>> {
        let mut value = Vec::new();
        for _ in 0..64 {
            if value.try_reserve_exact(length).is_ok() {
                return Some(value);
            }
            if !self.evict_one(now, protect) {
                return None;
            }
        }
        None
    }

    /// Makes room for the entry just inserted at `index` (the structures may have grown) by
    /// evicting colder ones; removes it again if that is not enough.
    fn settle_after_insert(&mut self, index: u32, now: u64) -> bool {
        if self.make_room(0, now, Some(index)) {
            return true;
        }
        self.remove(index);
        false
    }

    // --- commands -------------------------------------------------------------------------

    /// get/gets (`touch` None) or gat/gats: the value whole when it is at most `reply_limit`
    /// bytes, else pinned for `origin` with its first `reply_limit` bytes.
    pub fn get(
        &mut self,
        key: &[u8],
        touch: Option<i32>,
        reply_limit: usize,
        origin: CoreId,
        now: u64,
    ) -> Hit<'_> {
        let (command, hit, miss) = if touch.is_some() {
            (Stat::CmdTouch, Stat::TouchHits, Stat::TouchMisses)
        } else {
            (Stat::CmdGet, Stat::GetHits, Stat::GetMisses)
        };
        self.counters.count(command);
        let Some(index) = self.lookup(key, key_hash(key), now) else {
            self.counters.count(miss);
            return Hit::Miss;
        };
        self.counters.count(hit);
        self.bump(index);
        let exptime = touch.map(|exptime| self.expiry(exptime, now));
        let Some(entry) = self.entry_mut(index) else {
            return Hit::Miss;
        };
        entry.fetched = true;
        if let Some(exptime) = exptime {
            entry.exptime = exptime;
        }
        if entry.value.len() <= reply_limit.max(1) {
            let Some(entry) = self.entry(index) else {
                return Hit::Miss;
            };
            return Hit::Whole {
                flags: entry.flags,
                cas: entry.cas,
                key: &entry.key,
                value: &entry.value,
            };
        }
        let value = Rc::clone(&entry.value);
        let Some(pin) = self.pin(value, origin, now, index) else {
            self.counters.count(Stat::PinsRefused);
            return Hit::Miss;
        };
        let Some(entry) = self.entry(index) else {
            return Hit::Miss;
        };
        Hit::Pinned {
            flags: entry.flags,
            cas: entry.cas,
            pin,
            total: entry.value.len() as u32,
            key: &entry.key,
            first: &entry.value[..reply_limit.max(1)],
        }
    }

    /// `touch`: true if the item exists.
    pub fn touch(&mut self, key: &[u8], exptime: i32, now: u64) -> bool {
        self.counters.count(Stat::CmdTouch);
        let Some(index) = self.lookup(key, key_hash(key), now) else {
            self.counters.count(Stat::TouchMisses);
            return false;
        };
        self.counters.count(Stat::TouchHits);
        let exptime = self.expiry(exptime, now);
        self.bump(index);
        if let Some(entry) = self.entry_mut(index) {
            entry.exptime = exptime;
        }
        true
    }

    /// `delete`: true if an item was removed.
    pub fn delete(&mut self, key: &[u8], now: u64) -> bool {
        match self.lookup(key, key_hash(key), now) {
            Some(index) => {
                self.counters.count(Stat::DeleteHits);
                self.remove(index);
                true
            }
            None => {
                self.counters.count(Stat::DeleteMisses);
                false
            }
        }
    }

    /// A storage command with its data block.
    pub fn store(
        &mut self,
        mode: StoreMode,
        key: &[u8],
        flags: u32,
        exptime: i32,
        data: &[u8],
        now: u64,
    ) -> StoreOutcome {
        self.counters.count(Stat::CmdSet);
        let hash = key_hash(key);
        let old = self.lookup(key, hash, now);
        let old_entry = old.and_then(|index| self.entry(index));
        match (mode, old_entry) {
            (StoreMode::Add, Some(_)) => {
                if let Some(index) = old {
                    self.bump(index);
                }
                return StoreOutcome::NotStored;
            }
            (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                return StoreOutcome::NotStored;
            }
            (StoreMode::Cas(_), None) => {
                self.counters.count(Stat::CasMisses);
                return StoreOutcome::NotFound;
            }
            (StoreMode::Cas(unique), Some(entry)) if entry.cas != unique => {
                self.counters.count(Stat::CasBadval);
                return StoreOutcome::Exists;
            }
            _ => {}
        }
        let joining = matches!(mode, StoreMode::Append | StoreMode::Prepend);
        let (flags, exptime, old_length) = match (joining, old_entry) {
            (true, Some(entry)) => (entry.flags, entry.exptime, entry.value.len()),
            _ => (flags, self.expiry(exptime, now), 0),
        };
        let length = old_length + data.len();
        if joining && length > max_value_length(key.len(), flags) {
            return StoreOutcome::NotStored;
        }
        let Some(mut value) = self.allocate_value(length, now, old) else {
            return self.out_of_memory(mode, key, hash, now);
        };
        match (mode, old.and_then(|index| self.entry(index))) {
            (StoreMode::Append, Some(entry)) => {
                value.extend_from_slice(&entry.value);
                value.extend_from_slice(data);
            }
            (StoreMode::Prepend, Some(entry)) => {
                value.extend_from_slice(data);
                value.extend_from_slice(&entry.value);
            }
            _ => value.extend_from_slice(data),
        }
        let mut key_box = Vec::new();
        if key_box.try_reserve_exact(key.len()).is_err() {
            return self.out_of_memory(mode, key, hash, now);
        }
        key_box.extend_from_slice(key);
        let entry = Entry {
            key: key_box.into_boxed_slice(),
            value: Rc::new(value),
            hash,
            flags,
            exptime,
            cas: 0,
            time: now,
            fetched: false,
            prev: NONE,
            next: NONE,
        };
        let cost = entry_cost(&entry);
        let old_cost = old
            .and_then(|index| self.entry(index))
            .map_or(0, entry_cost);
        if let Some(index) = old {
            self.bump(index);
        }
        if !self.make_room(cost.saturating_sub(old_cost), now, old) {
            return self.out_of_memory(mode, key, hash, now);
        }
        if let Some(index) = self.find(key, hash) {
            self.remove(index);
        }
        let cas = self.next_cas();
        let Some(index) = self.insert(Entry { cas, ..entry }) else {
            return self.out_of_memory(mode, key, hash, now);
        };
        if !self.settle_after_insert(index, now) {
            return self.out_of_memory(mode, key, hash, now);
        }
        self.counters.count(Stat::TotalItems);
        if matches!(mode, StoreMode::Cas(_)) {
            self.counters.count(Stat::CasHits);
        }
        StoreOutcome::Stored
    }

    fn out_of_memory(&mut self, mode: StoreMode, key: &[u8], hash: u64, _now: u64) -> StoreOutcome {
        self.counters.count(Stat::StoreNoMemory);
        // memcached: a failed `set` must not leave the old value readable.
        if mode == StoreMode::Set {
            if let Some(index) = self.find(key, hash) {
                self.remove(index);
            }
        }
        StoreOutcome::OutOfMemory
    }

    /// `incr`/`decr`: 64-bit, `incr` wraps, `decr` stops at 0. A shorter result is padded with
    /// spaces to the old length (memcached changes the value in place).
    pub fn arithmetic(
        &mut self,
        key: &[u8],
        increment: bool,
        delta: u64,
        now: u64,
    ) -> ArithmeticOutcome {
        let (hits, misses) = if increment {
            (Stat::IncrHits, Stat::IncrMisses)
        } else {
            (Stat::DecrHits, Stat::DecrMisses)
        };
        let Some(index) = self.lookup(key, key_hash(key), now) else {
            self.counters.count(misses);
            return ArithmeticOutcome::NotFound;
        };
        let Some(entry) = self.entry(index) else {
            return ArithmeticOutcome::NotFound;
        };
        let Some(current) = item_number(&entry.value) else {
            return ArithmeticOutcome::NonNumeric;
        };
        let result = if increment {
            current.wrapping_add(delta)
        } else {
            current.saturating_sub(delta)
        };
        let old_length = entry.value.len();
        let shared = Rc::strong_count(&entry.value) > 1;
        let old_cost = value_cost(&entry.value);
        self.counters.count(hits);
        let mut digits = heapless::String::<20>::new();
        let _ = write!(digits, "{result}");
        let length = old_length.max(digits.len());
        self.bump(index);
        if length == old_length && !shared {
            let cas = self.next_cas();
            if let Some(entry) = self.entry_mut(index) {
                if let Some(value) = Rc::get_mut(&mut entry.value) {
                    value[..digits.len()].copy_from_slice(digits.as_bytes());
                    value[digits.len()..].fill(b' ');
                }
                entry.cas = cas;
            }
            return ArithmeticOutcome::Value(result);
        }
        // A new value: longer, or the old one is still being read by a pin.
        let Some(mut value) = self.allocate_value(length, now, Some(index)) else {
            self.counters.count(Stat::StoreNoMemory);
            return ArithmeticOutcome::OutOfMemory;
        };
        value.extend_from_slice(digits.as_bytes());
        value.resize(length, b' ');
        if !self.make_room(
            value_cost(&value).saturating_sub(old_cost),
            now,
            Some(index),
        ) {
            self.counters.count(Stat::StoreNoMemory);
            return ArithmeticOutcome::OutOfMemory;
        }
        let cas = self.next_cas();
        let Some(entry) = self.entry_mut(index) else {
            return ArithmeticOutcome::NotFound;
        };
        let old_value = core::mem::replace(&mut entry.value, Rc::new(value));
        let new_cost = value_cost(&entry.value);
        entry.cas = cas;
        if length > old_length {
            entry.time = now;
        }
        self.item_bytes = self.item_bytes - old_cost + new_cost;
        if Rc::strong_count(&old_value) > 1 {
            self.pinned_bytes += value_cost(&old_value);
        }
        ArithmeticOutcome::Value(result)
    }

    /// `flush_all [delay]` (delay as the client sent it; 0 or negative: now).
    pub fn flush_all(&mut self, delay: i32, now: u64) {
        self.counters.count(Stat::CmdFlush);
        let new_oldest = if delay > 0 {
            self.realtime(i64::from(delay), now)
        } else {
            now
        };
        let oldest_live = new_oldest.saturating_sub(1);
        if oldest_live <= now {
            self.oldest_live = None;
            while self.tail != NONE {
                self.remove(self.tail);
            }
        } else {
            self.oldest_live = Some(oldest_live);
        }
    }

    /// Housekeeping for `now`: a delayed `flush_all` whose time has passed frees its items, idle
    /// pins go, expired items at the cold end go.
    pub fn tick(&mut self, now: u64) {
        self.reap_finished_pins();
        if let Some(oldest) = self.oldest_live {
            if now > oldest {
                let mut index = self.tail;
                while let Some(entry) = self.entry(index) {
                    let prev = entry.prev;
                    if entry.time <= oldest {
                        self.remove(index);
                    }
                    index = prev;
                }
                self.oldest_live = None;
            }
        }
        for index in 0..self.pins.len() {
            let idle = self.pins[index]
                .as_ref()
                .is_some_and(|pin| now.saturating_sub(pin.last_used) > PIN_IDLE_SECONDS);
            if idle {
                self.drop_pin(index);
            }
        }
        for _ in 0..8 {
            match self.entry(self.tail) {
                Some(entry) if Self::expired(entry, now) => {
                    if !entry.fetched {
                        self.counters.count(Stat::ExpiredUnfetched);
                    }
                    self.remove(self.tail);
                }
                _ => break,
            }
        }
    }

    /// Keeps only the items whose key hash `keep` accepts (after the partition changed).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let mut index = self.tail;
        while let Some(entry) = self.entry(index) {
            let prev = entry.prev;
            if !keep(entry.hash) {
                self.remove(index);
            }
            index = prev;
        }
    }

    // --- pins -----------------------------------------------------------------------------

    /// Pins `value` (of the entry at `entry`, which eviction must spare) for `origin`. A new pin
    /// slot grows the pin table, which counts against the limit: room is made first, as for an
    /// item.
    fn pin(&mut self, value: Value, origin: CoreId, now: u64, entry: u32) -> Option<u32> {
        let index = match self.pins.iter().position(Option::is_none) {
            Some(index) => index,
            None if self.pins.len() < MAX_PINS => {
                if self.pins.len() == self.pins.capacity() {
                    let more = size_of::<Option<Pin>>();
                    if !self.make_room(more, now, Some(entry)) {
                        return None;
                    }
                    self.pins.try_reserve_exact(1).ok()?;
                }
                self.pins.push(None);
                if !self.make_room(0, now, Some(entry)) {
                    let _ = self.pins.pop();
                    return None;
                }
                self.pins.len() - 1
            }
            None => return None,
        };
        self.pin_generation = self.pin_generation.wrapping_add(1);
        let generation = self.pin_generation;
        self.pins[index] = Some(Pin {
            value,
            origin,
            last_used: now,
            generation,
            finished: false,
        });
        Some((index as u32) << 16 | u32::from(generation))
    }

    fn pin_index(&self, pin: u32) -> Option<usize> {
        let index = (pin >> 16) as usize;
        let found = self.pins.get(index)?.as_ref()?;
        (found.generation == pin as u16 && !found.finished).then_some(index)
    }

    fn drop_pin(&mut self, index: usize) {
        if let Some(pin) = self.pins.get_mut(index).and_then(Option::take) {
            // The store no longer holds the value: its bytes were counted as pinned.
            if Rc::strong_count(&pin.value) == 1 {
                self.pinned_bytes -= value_cost(&pin.value);
            }
        }
    }

    fn reap_finished_pins(&mut self) {
        if !core::mem::take(&mut self.pins_finished) {
            return;
        }
        for index in 0..self.pins.len() {
            if self.pins[index].as_ref().is_some_and(|pin| pin.finished) {
                self.drop_pin(index);
            }
        }
    }

    /// Up to `limit` bytes of a pinned value from `offset`; `None` if the pin is gone. The pin
    /// goes once its last byte was fetched.
    pub fn fetch(&mut self, pin: u32, offset: usize, limit: usize, now: u64) -> Option<&[u8]> {
        self.reap_finished_pins();
        let index = self.pin_index(pin)?;
        let entry = self.pins[index].as_mut()?;
        let total = entry.value.len();
        if offset >= total {
            return None;
        }
        let end = total.min(offset + limit.max(1));
        entry.last_used = now;
        if end == total {
            entry.finished = true;
            self.pins_finished = true;
        }
        let entry = self.pins[index].as_ref()?;
        Some(&entry.value[offset..end])
    }

    /// Drops a pin before its value was read to the end.
    pub fn release(&mut self, pin: u32) {
        if let Some(index) = self.pin_index(pin) {
            self.drop_pin(index);
        }
    }

    /// Drops the pins held for cores that `dead` says failed.
    pub fn release_pins_of(&mut self, dead: impl Fn(CoreId) -> bool) {
        for index in 0..self.pins.len() {
            if self.pins[index]
                .as_ref()
                .is_some_and(|pin| dead(pin.origin))
            {
                self.drop_pin(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::format;
    use std::vec::Vec;

    const NOW: u64 = 1_800_000_000;

    fn store(limit: usize) -> Store {
        Store::new(1, limit, NOW - 100)
    }

    fn value(store: &mut Store, key: &[u8], now: u64) -> Option<Vec<u8>> {
        match store.get(key, None, usize::MAX, 1, now) {
            Hit::Whole { value, .. } => Some(value.to_vec()),
            Hit::Pinned { .. } => panic!("unlimited reply"),
            Hit::Miss => None,
        }
    }

    fn cas(store: &mut Store, key: &[u8]) -> u64 {
        match store.get(key, None, usize::MAX, 1, NOW) {
            Hit::Whole { cas, .. } => cas,
            _ => panic!("no item"),
        }
    }

    #[test]
    fn storage_modes_follow_memcached() {
        let mut s = store(1 << 20);
        let set = |s: &mut Store, mode, data: &[u8]| s.store(mode, b"k", 5, 0, data, NOW);
        assert_eq!(
            set(&mut s, StoreMode::Replace, b"x"),
            StoreOutcome::NotStored
        );
        assert_eq!(
            set(&mut s, StoreMode::Append, b"x"),
            StoreOutcome::NotStored
        );
        assert_eq!(set(&mut s, StoreMode::Cas(1), b"x"), StoreOutcome::NotFound);
        assert_eq!(set(&mut s, StoreMode::Add, b"a"), StoreOutcome::Stored);
        assert_eq!(set(&mut s, StoreMode::Add, b"b"), StoreOutcome::NotStored);
        assert_eq!(
            s.store(StoreMode::Append, b"k", 9, 0, b"z", NOW),
            StoreOutcome::Stored
        );
        assert_eq!(
            s.store(StoreMode::Prepend, b"k", 9, 0, b"y", NOW),
            StoreOutcome::Stored
        );
        // Append and prepend keep the item's flags.
        match s.get(b"k", None, 100, 1, NOW) {
            Hit::Whole { flags, value, .. } => assert_eq!((flags, value), (5, &b"yaz"[..])),
            other => panic!("{other:?}"),
        }
        let unique = cas(&mut s, b"k");
        assert_eq!(
            set(&mut s, StoreMode::Cas(unique + 64), b"c"),
            StoreOutcome::Exists
        );
        assert_eq!(
            set(&mut s, StoreMode::Cas(unique), b"c"),
            StoreOutcome::Stored
        );
        assert_ne!(cas(&mut s, b"k"), unique, "a store gives a new CAS unique");
        assert_eq!(set(&mut s, StoreMode::Replace, b"r"), StoreOutcome::Stored);
        assert_eq!(value(&mut s, b"k", NOW), Some(b"r".to_vec()));
        assert!(s.delete(b"k", NOW));
        assert!(!s.delete(b"k", NOW));
        let counters = s.counters();
        assert_eq!(counters.get(Stat::CasHits), 1);
        assert_eq!(counters.get(Stat::CasBadval), 1);
        assert_eq!(counters.get(Stat::CasMisses), 1);
        assert_eq!(counters.get(Stat::DeleteHits), 1);
        assert_eq!(counters.get(Stat::DeleteMisses), 1);
        assert_eq!(counters.get(Stat::CurrItems), 0);
    }

    #[test]
    fn cas_uniques_differ_across_cores() {
        let mut a = Store::new(0, 1 << 20, NOW);
        let mut b = Store::new(1, 1 << 20, NOW);
        a.store(StoreMode::Set, b"k", 0, 0, b"v", NOW);
        b.store(StoreMode::Set, b"k", 0, 0, b"v", NOW);
        assert_ne!(cas(&mut a, b"k"), cas(&mut b, b"k"));
    }

    #[test]
    fn arithmetic_edge_cases() {
        let mut s = store(1 << 20);
        let put = |s: &mut Store, data: &[u8]| {
            assert_eq!(
                s.store(StoreMode::Set, b"n", 3, 0, data, NOW),
                StoreOutcome::Stored
            );
        };
        put(&mut s, b"10");
        assert_eq!(
            s.arithmetic(b"n", false, 1, NOW),
            ArithmeticOutcome::Value(9)
        );
        assert_eq!(
            value(&mut s, b"n", NOW),
            Some(b"9 ".to_vec()),
            "padded in place"
        );
        assert_eq!(
            s.arithmetic(b"n", false, 100, NOW),
            ArithmeticOutcome::Value(0)
        );
        put(&mut s, b"99");
        assert_eq!(
            s.arithmetic(b"n", true, 1, NOW),
            ArithmeticOutcome::Value(100)
        );
        assert_eq!(value(&mut s, b"n", NOW), Some(b"100".to_vec()), "grown");
        put(&mut s, b"18446744073709551615");
        assert_eq!(
            s.arithmetic(b"n", true, 2, NOW),
            ArithmeticOutcome::Value(1)
        );
        assert_eq!(
            value(&mut s, b"n", NOW).unwrap(),
            b"1                   ".to_vec(),
            "wrapped"
        );
        for bad in [&b"18446744073709551616"[..], b"12a", b"", b"-1"] {
            put(&mut s, bad);
            assert_eq!(
                s.arithmetic(b"n", true, 1, NOW),
                ArithmeticOutcome::NonNumeric
            );
        }
        put(&mut s, b"-0");
        assert_eq!(
            s.arithmetic(b"n", true, 2, NOW),
            ArithmeticOutcome::Value(2)
        );
        assert_eq!(
            s.arithmetic(b"zz", true, 1, NOW),
            ArithmeticOutcome::NotFound
        );
        // Flags survive.
        match s.get(b"n", None, 100, 1, NOW) {
            Hit::Whole { flags, .. } => assert_eq!(flags, 3),
            other => panic!("{other:?}"),
        }
        let counters = s.counters();
        assert_eq!(counters.get(Stat::IncrMisses), 1);
        assert_eq!(counters.get(Stat::DecrHits), 2);
    }

    #[test]
    fn expiry_follows_memcached() {
        let mut s = store(1 << 20);
        let set = |s: &mut Store, key: &[u8], exptime: i32| {
            s.store(StoreMode::Set, key, 0, exptime, b"v", NOW)
        };
        set(&mut s, b"relative", 10);
        set(&mut s, b"thirty-days", REALTIME_MAXDELTA as i32);
        set(&mut s, b"absolute", (NOW + 20) as i32);
        set(&mut s, b"absolute-past", (NOW - 20) as i32);
        set(&mut s, b"before-start", (REALTIME_MAXDELTA + 5) as i32);
        set(&mut s, b"negative", -1);
        set(&mut s, b"never", 0);
        set(&mut s, b"wrapped", safe(b"4000000000"));
        let present = |s: &mut Store, key: &[u8], now| value(s, key, now).is_some();
        assert!(present(&mut s, b"relative", NOW + 9));
        assert!(!present(&mut s, b"relative", NOW + 10));
        assert!(present(&mut s, b"thirty-days", NOW + 1000));
        assert!(present(&mut s, b"absolute", NOW + 19));
        assert!(!present(&mut s, b"absolute", NOW + 20));
        assert!(!present(&mut s, b"absolute-past", NOW));
        assert!(!present(&mut s, b"before-start", NOW));
        assert!(!present(&mut s, b"negative", NOW));
        assert!(!present(&mut s, b"wrapped", NOW));
        assert!(present(&mut s, b"never", NOW + 100 * 365 * 86400));
        assert_eq!(s.counters().get(Stat::GetExpired), 6);
        // touch and gat change the expiry.
        set(&mut s, b"t", 5);
        assert!(s.touch(b"t", 100, NOW));
        assert!(present(&mut s, b"t", NOW + 50));
        assert!(matches!(
            s.get(b"t", Some(-1), 100, 1, NOW),
            Hit::Whole { .. }
        ));
        assert!(!present(&mut s, b"t", NOW));
        assert!(!s.touch(b"t", 100, NOW));
    }

    fn safe(text: &[u8]) -> i32 {
        super::super::protocol::safe_strtol(text).unwrap()
    }

    #[test]
    fn flush_all_now_and_with_a_delay() {
        let mut s = store(1 << 20);
        s.store(StoreMode::Set, b"a", 0, 0, b"1", NOW);
        s.flush_all(0, NOW);
        assert_eq!(value(&mut s, b"a", NOW), None);
        assert!(s.is_empty(), "flushed items free their memory at once");
        s.store(StoreMode::Set, b"a", 0, 0, b"1", NOW);
        assert!(value(&mut s, b"a", NOW).is_some(), "stored after the flush");
        // flush_all 1 is immediate too (memcached's oldest_live = now).
        s.flush_all(1, NOW);
        assert_eq!(value(&mut s, b"a", NOW), None);
        // A delay of 10 s: items updated up to 9 s from now go at 9 s.
        s.store(StoreMode::Set, b"old", 0, 0, b"1", NOW);
        s.flush_all(10, NOW);
        s.store(StoreMode::Set, b"later", 0, 0, b"1", NOW + 5);
        assert!(value(&mut s, b"old", NOW + 8).is_some());
        assert!(value(&mut s, b"later", NOW + 8).is_some());
        s.store(StoreMode::Set, b"at-nine", 0, 0, b"1", NOW + 9);
        assert_eq!(value(&mut s, b"old", NOW + 9), None);
        assert_eq!(value(&mut s, b"later", NOW + 9), None);
        assert_eq!(value(&mut s, b"at-nine", NOW + 9), None);
        s.store(StoreMode::Set, b"after", 0, 0, b"1", NOW + 10);
        s.tick(NOW + 10);
        assert!(value(&mut s, b"after", NOW + 11).is_some());
        assert_eq!(s.len(), 1);
        assert!(s.counters().get(Stat::GetFlushed) >= 3);
        // A newer flush without a delay replaces a pending one.
        s.flush_all(100, NOW + 20);
        s.flush_all(0, NOW + 20);
        s.store(StoreMode::Set, b"b", 0, 0, b"1", NOW + 21);
        assert!(value(&mut s, b"b", NOW + 200).is_some());
    }

    #[test]
    fn lru_evicts_the_coldest_first_and_counts() {
        // Room for four and a half 1000-byte items beside the structures.
        let mut s = store(usize::MAX);
        s.store(StoreMode::Set, b"p", 0, 0, &[0; 1000], NOW);
        let with_one = s.used();
        s.store(StoreMode::Set, b"q", 0, 0, &[0; 1000], NOW);
        let one = s.used() - with_one;
        s.delete(b"p", NOW);
        s.delete(b"q", NOW);
        let base = s.used();
        s.limit = base + one * 4 + one / 2;
        for key in [b"a", b"b", b"c", b"d"] {
            assert_eq!(
                s.store(StoreMode::Set, key, 0, 0, &[1; 1000], NOW),
                StoreOutcome::Stored
            );
        }
        // Touch "a" so that "b" is the coldest.
        assert!(value(&mut s, b"a", NOW).is_some());
        s.store(StoreMode::Set, b"e", 0, 0, &[1; 1000], NOW);
        assert!(value(&mut s, b"b", NOW).is_none(), "the coldest went first");
        for key in [b"a", b"c", b"d", b"e"] {
            assert!(value(&mut s, key, NOW).is_some());
        }
        assert_eq!(s.counters().get(Stat::Evictions), 1);
        assert_eq!(s.counters().get(Stat::EvictedUnfetched), 1);
        assert!(s.used() <= s.limit());
        // An item larger than the whole limit is refused; a refused set drops the old value.
        assert_eq!(
            s.store(StoreMode::Set, b"a", 0, 0, &[1; 10_000], NOW),
            StoreOutcome::OutOfMemory
        );
        assert!(value(&mut s, b"a", NOW).is_none());
        assert_eq!(
            s.store(StoreMode::Add, b"c", 0, 0, &[1; 10_000], NOW),
            StoreOutcome::NotStored
        );
        assert_eq!(
            s.store(StoreMode::Replace, b"c", 0, 0, &[1; 10_000], NOW),
            StoreOutcome::OutOfMemory
        );
        assert!(
            value(&mut s, b"c", NOW).is_some(),
            "only set drops the old value"
        );
        assert_eq!(s.counters().get(Stat::StoreNoMemory), 2);
        // Expired items are reclaimed before live ones are evicted.
        let mut s = store(usize::MAX);
        s.store(StoreMode::Set, b"p", 0, 0, &[0; 1000], NOW);
        s.delete(b"p", NOW);
        s.limit = base + one * 2 + one / 2;
        s.store(StoreMode::Set, b"x", 0, 1, &[1; 1000], NOW);
        s.store(StoreMode::Set, b"y", 0, 0, &[1; 1000], NOW);
        assert!(value(&mut s, b"y", NOW).is_some());
        assert!(value(&mut s, b"x", NOW).is_some());
        s.store(StoreMode::Set, b"z", 0, 0, &[1; 1000], NOW + 5);
        assert_eq!(s.counters().get(Stat::Reclaimed), 1);
        assert_eq!(s.counters().get(Stat::Evictions), 0);
    }

    #[test]
    fn pins_keep_the_value_as_it_was_and_are_counted() {
        let mut s = store(1 << 20);
        let big: Vec<u8> = (0..50_000u32).map(|n| n as u8).collect();
        s.store(StoreMode::Set, b"big", 0, 0, &big, NOW);
        let used_before = s.used();
        let Hit::Pinned {
            pin, total, first, ..
        } = s.get(b"big", None, 16384, 2, NOW)
        else {
            panic!("not pinned")
        };
        assert_eq!((total as usize, first), (big.len(), &big[..16384]));
        // Overwritten meanwhile: the reader still gets the old bytes, and they are still counted.
        s.store(StoreMode::Set, b"big", 0, 0, b"new", NOW);
        assert!(
            s.used() > used_before - 1000,
            "the pinned value is still counted"
        );
        let mut read = big[..16384].to_vec();
        while read.len() < big.len() {
            let chunk = s
                .fetch(pin, read.len(), 16384, NOW)
                .expect("pinned")
                .to_vec();
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, big);
        assert!(
            s.fetch(pin, 0, 16384, NOW).is_none(),
            "read to the end: gone"
        );
        s.tick(NOW);
        assert_eq!(s.pinned_bytes, 0);
        assert!(s.used() + big.len() / 2 < used_before, "{}", s.used());
        assert_eq!(s.pins(), 0);
        // An idle pin goes after a minute; a released one at once.
        s.store(StoreMode::Set, b"big", 0, 0, &big, NOW);
        let Hit::Pinned { pin, .. } = s.get(b"big", None, 1000, 2, NOW) else {
            panic!()
        };
        s.tick(NOW + PIN_IDLE_SECONDS + 1);
        assert!(s.fetch(pin, 1000, 1000, NOW).is_none());
        let Hit::Pinned { pin, .. } = s.get(b"big", None, 1000, 2, NOW) else {
            panic!()
        };
        s.release(pin);
        assert!(s.fetch(pin, 1000, 1000, NOW).is_none());
        // The table is bounded: beyond it a large get misses (a cache may miss) and is counted.
        let pins: Vec<_> = (0..MAX_PINS)
            .map(|_| match s.get(b"big", None, 1000, 2, NOW) {
                Hit::Pinned { pin, .. } => pin,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(s.get(b"big", None, 1000, 2, NOW), Hit::Miss);
        assert_eq!(s.counters().get(Stat::PinsRefused), 1);
        s.release_pins_of(|core| core == 2);
        assert!(pins.iter().all(|pin| s.fetch(*pin, 1000, 1, NOW).is_none()));
    }

    #[test]
    fn retain_drops_keys_the_core_no_longer_owns() {
        let mut s = store(1 << 20);
        for n in 0..100 {
            s.store(StoreMode::Set, format!("k{n}").as_bytes(), 0, 0, b"v", NOW);
        }
        s.retain(|hash| hash.is_multiple_of(2));
        for n in 0..100 {
            let key = format!("k{n}");
            let kept = key_hash(key.as_bytes()).is_multiple_of(2);
            assert_eq!(value(&mut s, key.as_bytes(), NOW).is_some(), kept);
        }
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Set(u8, usize, i32),
        Append(u8, usize),
        Get(u8),
        GetPinned(u8),
        Fetch(usize),
        Delete(u8),
        Incr(u8),
        Flush(i32),
        Tick,
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            4 => (0u8..40, 0usize..40_000, -2i32..20).prop_map(|(k, n, e)| Operation::Set(k, n, e)),
            1 => (0u8..40, 0usize..5_000).prop_map(|(k, n)| Operation::Append(k, n)),
            3 => (0u8..40).prop_map(Operation::Get),
            1 => (0u8..40).prop_map(Operation::GetPinned),
            2 => (0usize..8).prop_map(Operation::Fetch),
            1 => (0u8..40).prop_map(Operation::Delete),
            1 => (0u8..40).prop_map(Operation::Incr),
            1 => (-1i32..4).prop_map(Operation::Flush),
            1 => Just(Operation::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the operations, the store never uses more than its limit, its count of
        /// items matches what can be found, and every hit returns what was last stored.
        #[test]
        fn memory_never_exceeds_the_limit(
            limit in 30_000usize..300_000,
            operations in proptest::collection::vec(operation(), 1..300),
        ) {
            let mut s = store(limit);
            let mut model: std::collections::HashMap<u8, Vec<u8>> = Default::default();
            let mut pins: Vec<u32> = Vec::new();
            let mut now = NOW;
            for operation in operations {
                now += 1;
                match operation {
                    Operation::Set(k, n, exptime) => {
                        let data = std::vec![k; n];
                        let outcome = s.store(StoreMode::Set, &[k], 0, exptime, &data, now);
                        if outcome == StoreOutcome::Stored && exptime >= 0 {
                            model.insert(k, data);
                        } else {
                            model.remove(&k);
                        }
                    }
                    Operation::Append(k, n) => {
                        let data = std::vec![k.wrapping_add(1); n];
                        if s.store(StoreMode::Append, &[k], 0, 0, &data, now) == StoreOutcome::Stored {
                            if let Some(old) = model.get_mut(&k) {
                                old.extend_from_slice(&data);
                            }
                        }
                    }
                    Operation::Get(k) => {
                        if let Some(found) = value(&mut s, &[k], now) {
                            prop_assert_eq!(Some(&found), model.get(&k));
                        } else {
                            model.remove(&k);
                        }
                    }
                    Operation::GetPinned(k) => {
                        if let Hit::Pinned { pin, .. } = s.get(&[k], None, 1000, 3, now) {
                            pins.push(pin);
                        }
                    }
                    Operation::Fetch(n) => {
                        if let Some(pin) = pins.get(n).copied() {
                            if s.fetch(pin, 1000, 20_000, now).is_none() {
                                pins.retain(|p| *p != pin);
                            }
                        }
                    }
                    Operation::Delete(k) => {
                        s.delete(&[k], now);
                        model.remove(&k);
                    }
                    Operation::Incr(k) => {
                        // The values are never numbers (bytes below '0'): incr changes nothing.
                        let outcome = s.arithmetic(&[k], true, 1, now);
                        prop_assert!(matches!(
                            outcome,
                            ArithmeticOutcome::NonNumeric | ArithmeticOutcome::NotFound
                        ));
                    }
                    Operation::Flush(delay) => {
                        s.flush_all(delay, now);
                        if delay <= 1 {
                            model.clear();
                        } else {
                            // Whether an item survives depends on the second: forget them all.
                            s.flush_all(0, now);
                            model.clear();
                        }
                    }
                    Operation::Tick => s.tick(now),
                }
                prop_assert!(s.used() <= s.limit(), "used {} > limit {}", s.used(), s.limit());
            }
            for pin in pins {
                s.release(pin);
            }
            s.tick(now + PIN_IDLE_SECONDS + 10);
            s.flush_all(0, now + PIN_IDLE_SECONDS + 10);
            prop_assert_eq!(s.pinned_bytes, 0, "every pinned byte is given back");
            prop_assert_eq!(s.item_bytes, 0);
        }
    }
}
