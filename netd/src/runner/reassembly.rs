//! The reassembly path: IPv4 fragments addressed to us (RFC 791 §3.2, with RFC 815's idea of
//! tracking what is still missing), put back together in bounded memory and handed back to the
//! core, which classifies the whole datagram like a received frame — onto its path, or forwarded
//! once to the core owning its flow.
//!
//! Why here: the NIC hashes a fragment on its addresses only (no ports in most fragments), so the
//! fragments of one datagram reach one core, but perhaps not the one owning the datagram's flow.
//! They are reassembled where they land; the reassembled datagram is then classified with its
//! ports.
//!
//! Bounds (memory is fixed when the path is made, nothing is allocated per fragment):
//! * at most [`SLOTS`] datagrams in progress per core; a fragment of a new datagram when every
//!   slot is busy evicts the one that started first (`reassembly_evictions`);
//! * a datagram is at most what one pool buffer holds as a frame ([`MAX_PAYLOAD`] bytes after
//!   its header); a fragment reaching beyond is dropped with its datagram (`reassembly_too_large`);
//! * a datagram not complete [`REASSEMBLY_TIMEOUT`] after its first fragment arrived is dropped
//!   (`reassembly_timeouts`; no ICMP time-exceeded is sent);
//! * a dropped datagram's slot remembers it until then, so its other fragments are dropped
//!   quietly (and such a slot is the first to go when a new datagram needs one);
//! * overlapping fragments, a second last fragment with another length, or a fragment other than
//!   the last whose length is not a multiple of 8, drop the datagram (`reassembly_overlaps`: the
//!   teardrop and overlap attacks get nothing);
//! * at most [`SLOTS`] reassembled datagrams wait for the core to take them.

use super::{PathRunner, Reply, RunContext};
use crate::path::QueuedFrame;
use drivers::pool::{BufferId, BUFFER_SIZE};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, Ipv4Packet, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN};

extern crate alloc;
use alloc::boxed::Box;

/// Datagrams in progress per core at most.
pub const SLOTS: usize = 16;

/// How long a datagram's fragments are kept waiting for the rest (RFC 791 suggests a timer of
/// about 15 s).
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest IPv4 header.
const MAX_IP_HEADER: usize = 60;

/// The most payload bytes a reassembled datagram may carry (with the shortest IPv4 header, its
/// frame fills a pool buffer).
pub const MAX_PAYLOAD: usize = BUFFER_SIZE - ETHERNET_HEADER_LEN - IPV4_HEADER_LEN;

/// 8-byte fragment blocks of the largest payload.
const BLOCKS: usize = MAX_PAYLOAD.div_ceil(8);

/// What the reassembly path noticed, for the core's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReassemblyEvents {
    pub(crate) fragments: u64,
    pub(crate) reassembled: u64,
    pub(crate) timeouts: u64,
    pub(crate) evictions: u64,
    pub(crate) overlaps: u64,
    pub(crate) too_large: u64,
}

/// Which datagram a fragment belongs to (RFC 791: source, destination, protocol, identification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DatagramKey {
    source: [u8; 4],
    destination: [u8; 4],
    protocol: u8,
    identification: u16,
}

/// One datagram in progress.
struct Slot {
    key: Option<DatagramKey>,
    started: Instant,
    /// The first fragment's Ethernet and IPv4 headers (`header_length` bytes of the latter).
    ethernet: [u8; ETHERNET_HEADER_LEN],
    header: [u8; MAX_IP_HEADER],
    header_length: usize,
    /// Payload length, once the last fragment came.
    total: Option<usize>,
    /// Which 8-byte blocks of the payload arrived.
    blocks: [u64; BLOCKS.div_ceil(64)],
    /// The datagram was dropped (overlap, too large): its other fragments are dropped quietly
    /// until its time is up.
    spoiled: bool,
    payload: [u8; MAX_PAYLOAD],
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: None,
        started: Instant::ZERO,
        ethernet: [0; ETHERNET_HEADER_LEN],
        header: [0; MAX_IP_HEADER],
        header_length: 0,
        total: None,
        blocks: [0; BLOCKS.div_ceil(64)],
        spoiled: false,
        payload: [0; MAX_PAYLOAD],
    };

    fn clear(&mut self) {
        self.key = None;
        self.header_length = 0;
        self.total = None;
        self.blocks = [0; BLOCKS.div_ceil(64)];
        self.spoiled = false;
    }

    /// Drops the datagram but remembers it until its time is up.
    fn spoil(&mut self) {
        let (key, started) = (self.key, self.started);
        self.clear();
        self.key = key;
        self.started = started;
        self.spoiled = true;
    }

    fn covered(&self, block: usize) -> bool {
        self.blocks
            .get(block / 64)
            .is_some_and(|word| word & (1 << (block % 64)) != 0)
    }

    fn cover(&mut self, block: usize) {
        if let Some(word) = self.blocks.get_mut(block / 64) {
            *word |= 1 << (block % 64);
        }
    }

    fn complete(&self) -> bool {
        match self.total {
            Some(total) if self.header_length > 0 => {
                (0..total.div_ceil(8)).all(|b| self.covered(b))
            }
            _ => false,
        }
    }
}

/// Why a fragment ended its datagram.
enum Spoiled {
    Overlap,
    TooLarge,
}

/// The reassembly path's runner.
pub(crate) struct ReassemblyRunner {
    slots: Box<[Slot; SLOTS]>,
    /// Reassembled frames in pool buffers, for the core to classify.
    done: heapless::Deque<(BufferId, u16), SLOTS>,
}

impl ReassemblyRunner {
    pub(crate) fn new() -> Self {
        Self {
            slots: Box::new([const { Slot::EMPTY }; SLOTS]),
            done: heapless::Deque::new(),
        }
    }

    /// Drops the datagrams whose time is up.
    fn expire(&mut self, now: Instant, events: &mut ReassemblyEvents) {
        for slot in self.slots.iter_mut() {
            if slot.key.is_some() && now >= slot.started + REASSEMBLY_TIMEOUT {
                if !slot.spoiled {
                    events.timeouts += 1;
                }
                slot.clear();
            }
        }
    }

    /// The slot of `key`, or a free one (evicting the oldest datagram if none is free).
    fn slot_for(&mut self, key: DatagramKey, now: Instant, events: &mut ReassemblyEvents) -> usize {
        if let Some(index) = self.slots.iter().position(|slot| slot.key == Some(key)) {
            return index;
        }
        let index = match self.slots.iter().position(|slot| slot.key.is_none()) {
            Some(index) => index,
            None => {
                events.evictions += 1;
                // Spoiled datagrams first, then the one that started first.
                let (index, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, slot)| (!slot.spoiled, slot.started))
                    .unwrap_or((0, &self.slots[0]));
                index
            }
        };
        let slot = &mut self.slots[index];
        slot.clear();
        slot.key = Some(key);
        slot.started = now;
        index
    }

    /// Takes one fragment; returns the completed slot's index, if it completed.
    fn take(&mut self, frame: &[u8], now: Instant, events: &mut ReassemblyEvents) -> Option<usize> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
        let key = DatagramKey {
            source: ip.src_addr().octets(),
            destination: ip.dst_addr().octets(),
            protocol: ip.next_header().into(),
            identification: ip.ident(),
        };
        let index = self.slot_for(key, now, events);
        let slot = &mut self.slots[index];
        if slot.spoiled {
            return None;
        }
        let offset = usize::from(ip.frag_offset());
        let data = ip.payload();
        let end = offset + data.len();
        // Inconsistent: a fragment but the last not a multiple of 8 long, a second last
        // fragment of another length, data past the end, or blocks that already arrived.
        let too_large = end > MAX_PAYLOAD;
        let inconsistent = || {
            (ip.more_frags() && !data.len().is_multiple_of(8))
                || (!ip.more_frags() && slot.total.is_some_and(|total| total != end))
                || slot.total.is_some_and(|total| end > total)
                || (offset / 8..end.div_ceil(8)).any(|block| slot.covered(block))
        };
        let spoiled = if too_large {
            Some(Spoiled::TooLarge)
        } else if inconsistent() {
            Some(Spoiled::Overlap)
        } else {
            None
        };
        match spoiled {
            Some(Spoiled::TooLarge) => {
                events.too_large += 1;
                slot.spoil();
                return None;
            }
            Some(Spoiled::Overlap) => {
                events.overlaps += 1;
                slot.spoil();
                return None;
            }
            None => {}
        }
        slot.payload[offset..end].copy_from_slice(data);
        for block in offset / 8..end.div_ceil(8) {
            slot.cover(block);
        }
        if !ip.more_frags() {
            slot.total = Some(end);
        }
        if offset == 0 {
            let header_length = usize::from(ip.header_len());
            slot.ethernet.copy_from_slice(&frame[..ETHERNET_HEADER_LEN]);
            slot.header[..header_length]
                .copy_from_slice(&frame[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + header_length]);
            slot.header_length = header_length;
        }
        slot.complete().then_some(index)
    }

    /// Writes slot `index`'s datagram as one frame into a pool buffer for the core; frees the
    /// slot. A datagram whose header leaves too little room counts as too large.
    fn deliver(&mut self, cx: &mut RunContext<'_>, index: usize, events: &mut ReassemblyEvents) {
        let slot = &mut self.slots[index];
        let (header_length, total) = (slot.header_length, slot.total.unwrap_or(0));
        let length = ETHERNET_HEADER_LEN + header_length + total;
        if length > BUFFER_SIZE {
            events.too_large += 1;
            slot.clear();
            return;
        }
        if self.done.is_full() {
            // The core takes them after every run: cannot happen; counted as an eviction.
            events.evictions += 1;
            slot.clear();
            return;
        }
        let Some(buffer) = cx.pool.alloc() else {
            events.evictions += 1;
            slot.clear();
            return;
        };
        let Ok(bytes) = cx.pool.bytes_mut(buffer) else {
            let _ = cx.pool.free(buffer);
            slot.clear();
            return;
        };
        bytes[..ETHERNET_HEADER_LEN].copy_from_slice(&slot.ethernet);
        let ip_start = ETHERNET_HEADER_LEN;
        bytes[ip_start..ip_start + header_length].copy_from_slice(&slot.header[..header_length]);
        bytes[ip_start + header_length..length].copy_from_slice(&slot.payload[..total]);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[ip_start..length]);
        ip.set_total_len((header_length + total) as u16);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
        slot.clear();
        let _ = self.done.push_back((buffer, length as u16));
        events.reassembled += 1;
    }
}

impl PathRunner for ReassemblyRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let mut events = ReassemblyEvents {
            fragments: 1,
            ..ReassemblyEvents::default()
        };
        self.expire(cx.now, &mut events);
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let completed = match cx.pool.bytes(frame.buffer) {
            Ok(bytes) => self.take(&bytes[..length], cx.now, &mut events),
            Err(_) => None,
        };
        if let Some(index) = completed {
            self.deliver(cx, index, &mut events);
        }
        cx.notes.reassembly.add(&events);
        Reply::Nothing
    }

    fn service(&mut self, cx: &mut RunContext<'_>) -> super::Progress {
        let mut events = ReassemblyEvents::default();
        self.expire(cx.now, &mut events);
        cx.notes.reassembly.add(&events);
        super::Progress::default()
    }

    fn poll_at(
        &mut self,
        _iface: &mut smoltcp::iface::Interface,
        _now: Instant,
    ) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|slot| slot.key.is_some())
            .map(|slot| slot.started + REASSEMBLY_TIMEOUT)
            .min()
    }

    fn take_reinjected(&mut self) -> Option<(BufferId, u16)> {
        self.done.pop_front()
    }
}

impl ReassemblyEvents {
    /// Adds `other`.
    pub(crate) fn add(&mut self, other: &ReassemblyEvents) {
        self.fragments += other.fragments;
        self.reassembled += other.reassembled;
        self.timeouts += other.timeouts;
        self.evictions += other.evictions;
        self.overlaps += other.overlaps;
        self.too_large += other.too_large;
    }
}
