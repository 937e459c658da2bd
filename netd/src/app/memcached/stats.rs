//! memcached's counters: one fixed block per core, summed over the living cores for `stats`.
//!
//! Each core keeps its counters in a [`StatsBlock`] (an array indexed by [`Stat`]). `stats` on any
//! core asks every other living core for its block ([`crate::peers::KvOperation::Stats`]; the
//! reply's value is the block as `COUNT` little-endian u64s), adds them up and prints them in the
//! order memcached 1.6 prints the same names. Counters memcached has that mean nothing here (slab
//! classes, libevent, hash table expansion, extstore) are not printed; Flotilla's own counters are
//! printed by `stats flotilla`.

use core::fmt::Write;

extern crate alloc;
use alloc::vec::Vec;

/// One counter or gauge of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stat {
    /// Open client connections.
    CurrConnections,
    /// Connections accepted since start.
    TotalConnections,
    /// Keys looked up by get/gets.
    CmdGet,
    /// Storage commands.
    CmdSet,
    /// `flush_all` commands.
    CmdFlush,
    /// Keys touched by touch/gat/gats.
    CmdTouch,
    /// Meta commands.
    CmdMeta,
    /// get/gets hits.
    GetHits,
    /// get/gets misses.
    GetMisses,
    /// get/gets that found an expired item.
    GetExpired,
    /// get/gets that found a flushed item.
    GetFlushed,
    /// `delete` of a missing key.
    DeleteMisses,
    /// `delete` that removed an item.
    DeleteHits,
    /// `incr` of a missing key.
    IncrMisses,
    /// `incr` that changed an item.
    IncrHits,
    /// `decr` of a missing key.
    DecrMisses,
    /// `decr` that changed an item.
    DecrHits,
    /// `cas` of a missing key.
    CasMisses,
    /// `cas` that stored.
    CasHits,
    /// `cas` that found a newer item.
    CasBadval,
    /// touch/gat hits.
    TouchHits,
    /// touch/gat misses.
    TouchMisses,
    /// Storage commands refused as larger than the item limit.
    StoreTooLarge,
    /// Storage commands refused for lack of memory after eviction.
    StoreNoMemory,
    /// Bytes read from clients.
    BytesRead,
    /// Bytes written to clients.
    BytesWritten,
    /// The item memory limit.
    LimitMaxbytes,
    /// Item memory in use (items, their structures, and values still pinned after removal).
    Bytes,
    /// Items stored.
    CurrItems,
    /// Items stored since start.
    TotalItems,
    /// Expired items removed that were never fetched.
    ExpiredUnfetched,
    /// Items evicted that were never fetched.
    EvictedUnfetched,
    /// Live items removed to make room.
    Evictions,
    /// Expired items removed to make room.
    Reclaimed,
    /// Flotilla: requests sent to other cores.
    RemoteRequests,
    /// Flotilla: requests served for other cores.
    ServedForPeers,
    /// Flotilla: requests or replies the cross-core channel refused for good (they were answered
    /// with an error, or dropped).
    PeerSendFailures,
    /// Flotilla: requests the cross-core channel refused for now (full): the command waited,
    /// the connection was not read, and it was sent again later.
    PeerSendRetries,
    /// Flotilla: remote requests that got no answer in time.
    RemoteTimeouts,
    /// Flotilla: remote requests lost to a failed core.
    LostToFailedCores,
    /// Flotilla: bytes the connections hold (input, output, reservations for replies).
    BudgetUsed,
    /// Flotilla: the bound on `BudgetUsed` for admitting new work.
    BudgetLimit,
    /// Flotilla: times a connection waited for the budget.
    BudgetStalls,
    /// Flotilla: values pinned while they are read in chunks.
    Pins,
    /// Flotilla: large values answered as misses because the pin table was full.
    PinsRefused,
    /// Flotilla: values the cross-core channel carried in chunks.
    StreamedValues,
    /// Flotilla: connections closed because a value could not be completed.
    StreamsBroken,
    /// Flotilla: replies to other cores dropped (the channel refused them and the retry queue
    /// was full, or they were too large for it).
    ReplySendFailures,
    /// Flotilla: replies to other cores waiting to be sent again (the channel was full).
    RepliesQueued,
}

/// Number of [`Stat`]s.
pub const COUNT: usize = Stat::RepliesQueued as usize + 1;

/// Bytes of an encoded block.
pub const ENCODED_LEN: usize = COUNT * 8;

/// One core's counters (or their sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsBlock {
    values: [u64; COUNT],
}

impl Default for StatsBlock {
    fn default() -> Self {
        Self { values: [0; COUNT] }
    }
}

/// The stats that stay across `stats reset` (gauges, not counters).
const GAUGES: [Stat; 8] = [
    Stat::RepliesQueued,
    Stat::CurrConnections,
    Stat::LimitMaxbytes,
    Stat::Bytes,
    Stat::CurrItems,
    Stat::BudgetUsed,
    Stat::BudgetLimit,
    Stat::Pins,
];

impl StatsBlock {
    /// The value of `stat`.
    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize]
    }

    /// Sets `stat`.
    pub fn set(&mut self, stat: Stat, value: u64) {
        self.values[stat as usize] = value;
    }

    /// Adds `amount` to `stat`.
    pub fn add(&mut self, stat: Stat, amount: u64) {
        let value = &mut self.values[stat as usize];
        *value = value.wrapping_add(amount);
    }

    /// Adds one to `stat`.
    pub fn count(&mut self, stat: Stat) {
        self.add(stat, 1);
    }

    /// Adds every counter of `other`.
    pub fn merge(&mut self, other: &StatsBlock) {
        for (value, more) in self.values.iter_mut().zip(other.values.iter()) {
            *value = value.wrapping_add(*more);
        }
    }

    /// `stats reset`: every counter to 0; gauges stay.
    pub fn reset(&mut self) {
        for (index, value) in self.values.iter_mut().enumerate() {
            if !GAUGES.iter().any(|gauge| *gauge as usize == index) {
                *value = 0;
            }
        }
    }

    /// Writes the block as [`ENCODED_LEN`] bytes.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        for (chunk, value) in out.chunks_exact_mut(8).zip(self.values.iter()) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Reads a block; `None` unless `bytes` is exactly [`ENCODED_LEN`] long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let mut block = Self::default();
        for (value, chunk) in block.values.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut array = [0u8; 8];
            array.copy_from_slice(chunk);
            *value = u64::from_le_bytes(array);
        }
        Some(block)
    }
}

/// What the general block prints besides the summed counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    /// Seconds since this core's memcached started.
    pub uptime: u64,
    /// Unix time now, as this core knows it.
    pub time: u64,
    /// The version string.
    pub version: &'static str,
    /// Living cores (memcached's worker threads).
    pub threads: u16,
}

fn line(out: &mut Vec<u8>, name: &str, value: impl core::fmt::Display) {
    let mut text = heapless::String::<96>::new();
    let _ = write!(text, "STAT {name} {value}\r\n");
    out.extend_from_slice(text.as_bytes());
}

/// The reply to `stats`: memcached's general block, names in memcached 1.6's order.
pub fn format_general(out: &mut Vec<u8>, block: &StatsBlock, facts: &ServerFacts) {
    line(out, "pid", 0);
    line(out, "uptime", facts.uptime);
    line(out, "time", facts.time);
    line(out, "version", facts.version);
    line(out, "pointer_size", 64);
    for (name, stat) in [
        ("curr_connections", Stat::CurrConnections),
        ("total_connections", Stat::TotalConnections),
        ("cmd_get", Stat::CmdGet),
        ("cmd_set", Stat::CmdSet),
        ("cmd_flush", Stat::CmdFlush),
        ("cmd_touch", Stat::CmdTouch),
        ("cmd_meta", Stat::CmdMeta),
        ("get_hits", Stat::GetHits),
        ("get_misses", Stat::GetMisses),
        ("get_expired", Stat::GetExpired),
        ("get_flushed", Stat::GetFlushed),
        ("delete_misses", Stat::DeleteMisses),
        ("delete_hits", Stat::DeleteHits),
        ("incr_misses", Stat::IncrMisses),
        ("incr_hits", Stat::IncrHits),
        ("decr_misses", Stat::DecrMisses),
        ("decr_hits", Stat::DecrHits),
        ("cas_misses", Stat::CasMisses),
        ("cas_hits", Stat::CasHits),
        ("cas_badval", Stat::CasBadval),
        ("touch_hits", Stat::TouchHits),
        ("touch_misses", Stat::TouchMisses),
        ("store_too_large", Stat::StoreTooLarge),
        ("store_no_memory", Stat::StoreNoMemory),
        ("bytes_read", Stat::BytesRead),
        ("bytes_written", Stat::BytesWritten),
        ("limit_maxbytes", Stat::LimitMaxbytes),
    ] {
        line(out, name, block.get(stat));
    }
    line(out, "accepting_conns", 1);
    line(out, "threads", facts.threads);
    for (name, stat) in [
        ("bytes", Stat::Bytes),
        ("curr_items", Stat::CurrItems),
        ("total_items", Stat::TotalItems),
        ("expired_unfetched", Stat::ExpiredUnfetched),
        ("evicted_unfetched", Stat::EvictedUnfetched),
        ("evictions", Stat::Evictions),
        ("reclaimed", Stat::Reclaimed),
    ] {
        line(out, name, block.get(stat));
    }
    out.extend_from_slice(b"END\r\n");
}

/// The reply to `stats flotilla`: the cross-core and memory-budget counters, summed.
pub fn format_flotilla(out: &mut Vec<u8>, block: &StatsBlock) {
    for (name, stat) in [
        ("remote_requests", Stat::RemoteRequests),
        ("served_for_peers", Stat::ServedForPeers),
        ("peer_send_failures", Stat::PeerSendFailures),
        ("peer_send_retries", Stat::PeerSendRetries),
        ("reply_send_failures", Stat::ReplySendFailures),
        ("replies_queued", Stat::RepliesQueued),
        ("remote_timeouts", Stat::RemoteTimeouts),
        ("lost_to_failed_cores", Stat::LostToFailedCores),
        ("streamed_values", Stat::StreamedValues),
        ("streams_broken", Stat::StreamsBroken),
        ("pins", Stat::Pins),
        ("pins_refused", Stat::PinsRefused),
        ("budget_used", Stat::BudgetUsed),
        ("budget_limit", Stat::BudgetLimit),
        ("budget_stalls", Stat::BudgetStalls),
    ] {
        line(out, name, block.get(stat));
    }
    out.extend_from_slice(b"END\r\n");
}

/// What `stats settings` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Item memory over the living cores.
    pub maxbytes: u64,
    /// The TCP port.
    pub port: u16,
    /// Living cores.
    pub threads: u16,
    /// The item size limit.
    pub item_size_max: usize,
}

/// The reply to `stats settings` (the settings that exist here, with memcached's names).
pub fn format_settings(out: &mut Vec<u8>, settings: &Settings) {
    line(out, "maxbytes", settings.maxbytes);
    line(out, "tcpport", settings.port);
    line(out, "udpport", 0);
    line(out, "evictions", "on");
    line(out, "num_threads", settings.threads);
    line(out, "cas_enabled", "yes");
    line(out, "binding_protocol", "ascii");
    line(out, "item_size_max", settings.item_size_max);
    line(out, "flush_enabled", "yes");
    out.extend_from_slice(b"END\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_sum_and_reset() {
        let mut a = StatsBlock::default();
        a.count(Stat::CmdGet);
        a.add(Stat::CurrItems, 5);
        a.set(Stat::RepliesQueued, u64::MAX);
        let encoded = a.encode();
        assert_eq!(StatsBlock::decode(&encoded), Some(a));
        assert_eq!(StatsBlock::decode(&encoded[1..]), None);
        let mut sum = a;
        sum.merge(&a);
        assert_eq!(sum.get(Stat::CmdGet), 2);
        assert_eq!(sum.get(Stat::CurrItems), 10);
        sum.reset();
        assert_eq!(sum.get(Stat::CmdGet), 0);
        assert_eq!(sum.get(Stat::CurrItems), 10, "a gauge survives a reset");
    }

    #[test]
    fn the_general_block_has_memcached_names_in_order() {
        let mut block = StatsBlock::default();
        block.set(Stat::CurrItems, 3);
        let mut out = Vec::new();
        let facts = ServerFacts {
            uptime: 2,
            time: 1_800_000_000,
            version: "1.6.18",
            threads: 4,
        };
        format_general(&mut out, &block, &facts);
        let text = core::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("STAT pid 0\r\nSTAT uptime 2\r\nSTAT time 1800000000\r\n"));
        assert!(text.contains("STAT curr_items 3\r\n"));
        assert!(text.contains("STAT threads 4\r\n"));
        assert!(text.ends_with("END\r\n"));
        let position = |name: &str| text.find(&alloc::format!("STAT {name} ")).unwrap();
        assert!(position("cmd_get") < position("get_hits"));
        assert!(position("limit_maxbytes") < position("threads"));
        assert!(position("threads") < position("curr_items"));
        assert!(position("curr_items") < position("evictions"));
    }
}
