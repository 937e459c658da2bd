//! The kernel's cross-core transport as `/stats` shows it: the counters of the core's mailbox
//! (letters sent and received, outbox use, bulk buffers lent by reference, refusals by reason and
//! by peer). netd does not count these itself; the kernel hands them over with
//! [`crate::CoreNet::set_transport_counters`] and they travel in the core's snapshot.

use core::fmt::Write;

extern crate alloc;
use alloc::string::String;

/// Most peers whose refusals are counted one by one (the monitor's core limit).
pub const TRANSPORT_PEERS: usize = 64;

/// Why the transport refused a message. The mailbox counts each per peer; the caller gets the
/// matching [`crate::PeerError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransportDrop {
    /// The peer's ring and its bounded outbox were both full.
    OutboxFull = 0,
    /// The monitors declared the peer failed: its outbox was dropped, sends fail at once.
    PeerFenced = 1,
    /// No bulk buffer of that size was free in the sender's pool.
    BulkExhausted = 2,
    /// Larger than the transport carries (the bulk pool's largest buffer).
    TooLarge = 3,
    /// No channel to that core.
    NoChannel = 4,
}

impl TransportDrop {
    /// Number of reasons.
    pub const COUNT: usize = 5;

    /// Every reason, in counter order.
    pub const ALL: [TransportDrop; Self::COUNT] = [
        TransportDrop::OutboxFull,
        TransportDrop::PeerFenced,
        TransportDrop::BulkExhausted,
        TransportDrop::TooLarge,
        TransportDrop::NoChannel,
    ];

    /// The snake-case name used in `/stats`.
    pub fn name(self) -> &'static str {
        match self {
            TransportDrop::OutboxFull => "outbox_full",
            TransportDrop::PeerFenced => "peer_fenced",
            TransportDrop::BulkExhausted => "bulk_exhausted",
            TransportDrop::TooLarge => "too_large",
            TransportDrop::NoChannel => "no_channel",
        }
    }
}

/// One core's transport counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportCounters {
    /// Letters that entered a peer's ring (directly or from the outbox).
    pub sent: u64,
    /// Letters taken from the rings.
    pub received: u64,
    /// Letters that found the ring full and waited in the outbox.
    pub deferred: u64,
    /// Letters that carried a bulk buffer by reference.
    pub bulk_sent: u64,
    /// Bytes in those buffers.
    pub bulk_bytes: u64,
    /// Bulk buffers the receivers gave back.
    pub bulk_returned: u64,
    /// Bulk buffers taken back from a peer the monitors declared failed.
    pub bulk_reclaimed: u64,
    /// Bytes of the bulk pool in use now (lent or queued).
    pub bulk_in_use_bytes: u64,
    /// Size of the bulk pool.
    pub bulk_pool_bytes: u64,
    /// The outbox held more than this many letters at most (its high-water mark).
    pub outbox_high_water: u64,
    /// Refusals, by [`TransportDrop`] (index = reason as usize).
    pub drops: [u64; TransportDrop::COUNT],
    /// Refusals by peer and reason.
    pub peer_drops: [[u32; TransportDrop::COUNT]; TRANSPORT_PEERS],
}

impl Default for TransportCounters {
    fn default() -> Self {
        Self {
            sent: 0,
            received: 0,
            deferred: 0,
            bulk_sent: 0,
            bulk_bytes: 0,
            bulk_returned: 0,
            bulk_reclaimed: 0,
            bulk_in_use_bytes: 0,
            bulk_pool_bytes: 0,
            outbox_high_water: 0,
            drops: [0; TransportDrop::COUNT],
            peer_drops: [[0; TransportDrop::COUNT]; TRANSPORT_PEERS],
        }
    }
}

impl TransportCounters {
    /// The scalar counters in snapshot order (see `stats::CoreStats::encode`).
    pub fn scalars(&self) -> [u64; 10] {
        [
            self.sent,
            self.received,
            self.deferred,
            self.bulk_sent,
            self.bulk_bytes,
            self.bulk_returned,
            self.bulk_reclaimed,
            self.bulk_in_use_bytes,
            self.bulk_pool_bytes,
            self.outbox_high_water,
        ]
    }

    /// Sets the scalar counters from `values` in [`Self::scalars`] order (missing ones are 0).
    pub fn set_scalars(&mut self, values: &[u64]) {
        let value = |index: usize| values.get(index).copied().unwrap_or(0);
        self.sent = value(0);
        self.received = value(1);
        self.deferred = value(2);
        self.bulk_sent = value(3);
        self.bulk_bytes = value(4);
        self.bulk_returned = value(5);
        self.bulk_reclaimed = value(6);
        self.bulk_in_use_bytes = value(7);
        self.bulk_pool_bytes = value(8);
        self.outbox_high_water = value(9);
    }

    /// Appends `"transport":{...}` (no leading comma) to `out`; peers appear under
    /// `drops_by_peer` only when something to them was refused.
    pub fn write_json(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"transport\":{{\"sent\":{},\"received\":{},\"deferred\":{},\"bulk_sent\":{},\
             \"bulk_bytes\":{},\"bulk_returned\":{},\"bulk_reclaimed\":{},\"bulk_in_use_bytes\":{},\
             \"bulk_pool_bytes\":{},\"outbox_high_water\":{},\"drops\":{{",
            self.sent,
            self.received,
            self.deferred,
            self.bulk_sent,
            self.bulk_bytes,
            self.bulk_returned,
            self.bulk_reclaimed,
            self.bulk_in_use_bytes,
            self.bulk_pool_bytes,
            self.outbox_high_water,
        );
        write_reasons(out, |reason| self.drops[reason]);
        out.push_str("},\"drops_by_peer\":{");
        let mut first = true;
        for (peer, drops) in self.peer_drops.iter().enumerate() {
            if drops.iter().all(|&count| count == 0) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "\"{peer}\":{{");
            write_reasons(out, |reason| u64::from(drops[reason]));
            out.push('}');
        }
        out.push_str("}}");
    }
}

fn write_reasons(out: &mut String, count: impl Fn(usize) -> u64) {
    for (index, reason) in TransportDrop::ALL.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\":{}", reason.name(), count(*reason as usize));
    }
}
