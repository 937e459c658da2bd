//! The network service the node drives ([`NetService`]), its implementation over netd's stack
//! and one NIC queue ([`CoreNetwork`]), and the transport netd sends through ([`MailboxPeers`]).

use alloc::vec::Vec;

use drivers::nic::{FlowMap, QueueDatapath, QueueStats};
use drivers::pool::BufferPool;
use netd::{CoreCounters, PeerError, PeerMessage, PollOutcome, SnapshotError, TransportCounters};

use super::framing::{Family, Inline, Letter, INLINE_CAPACITY};
use super::mailbox::{LinkId, Mailbox, Refusal};
use super::Instant;

/// The node's time as netd's (both count from the kernel's start).
pub fn net_instant(now: Instant) -> netd::Instant {
    netd::Instant::from_micros((now.as_nanos() / 1000) as i64)
}

/// netd's time as the node's.
pub fn node_instant(at: netd::Instant) -> Instant {
    Instant::from_nanos(at.total_micros().max(0) as u64 * 1000)
}

/// What the node needs from the core's network: one bounded turn, peer messages, the interrupt
/// check before halting, the flow map, and statistics.
pub trait NetService {
    /// One bounded network turn (RX batch, classify, paths, TX, refill): netd's `CoreNet::poll`.
    fn poll(&mut self, now: Instant, peers: &mut MailboxPeers<'_>) -> PollOutcome;

    /// A message another core's stack sent: netd's `CoreNet::handle_peer_message`.
    fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &PeerMessage<'_>,
        peers: &mut MailboxPeers<'_>,
    );

    /// Before halting (interrupts off): unmask the queue's receive interrupt and say whether a
    /// frame is already waiting (then the core must not halt).
    fn arm_and_check(&mut self) -> bool;

    /// The core's one flow map.
    fn flow_map_mut(&mut self) -> &mut FlowMap;

    /// This core's statistics snapshot as bytes.
    fn snapshot_bytes(&self, now: Instant) -> Vec<u8>;

    /// Another core's snapshot, for `/stats`.
    fn absorb_snapshot(&mut self, core: u16, bytes: &[u8]) -> Result<(), SnapshotError>;

    /// The mailbox's counters, for `/stats`.
    fn set_transport_counters(&mut self, counters: &TransportCounters);

    /// The cores the monitors hold alive.
    fn set_live_cores(&mut self, mask: u64);

    /// Core-wide network counters.
    fn counters(&self) -> CoreCounters;

    /// The NIC queue's counters.
    fn queue_stats(&self) -> QueueStats;
}

/// A core's network: netd's stack, the core's NIC queue and its packet buffer pool.
pub struct CoreNetwork<Q: QueueDatapath> {
    /// This core's smoltcp instance and paths.
    pub net: netd::CoreNet,
    /// This core's queue pair.
    pub queue: Q,
    /// This core's packet buffers.
    pub pool: BufferPool,
}

impl<Q: QueueDatapath> NetService for CoreNetwork<Q> {
    fn poll(&mut self, now: Instant, peers: &mut MailboxPeers<'_>) -> PollOutcome {
        self.net
            .poll(net_instant(now), &mut self.queue, &mut self.pool, peers)
    }

    fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &PeerMessage<'_>,
        peers: &mut MailboxPeers<'_>,
    ) {
        self.net
            .handle_peer_message(net_instant(now), message, &mut self.pool, peers);
    }

    fn arm_and_check(&mut self) -> bool {
        // An interrupt only starts polling: the queue's vector auto-masks when it fires. A frame
        // that arrived while it was masked may raise nothing on unmask (QEMU's igb does not), so
        // look at the ring once more after unmasking.
        self.queue.set_interrupt(true);
        self.queue.receive_pending()
    }

    fn flow_map_mut(&mut self) -> &mut FlowMap {
        self.net.flow_map_mut()
    }

    fn snapshot_bytes(&self, now: Instant) -> Vec<u8> {
        self.net.snapshot_bytes(net_instant(now))
    }

    fn absorb_snapshot(&mut self, core: u16, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.net.absorb_snapshot(core, bytes)
    }

    fn set_transport_counters(&mut self, counters: &TransportCounters) {
        self.net.set_transport_counters(counters);
    }

    fn set_live_cores(&mut self, mask: u64) {
        self.net.set_live_cores(mask);
    }

    fn counters(&self) -> CoreCounters {
        *self.net.counters()
    }

    fn queue_stats(&self) -> QueueStats {
        self.queue.stats()
    }
}

/// netd's view of the other cores: its messages through the mailbox, inline when they fit a
/// slot, by reference in a bulk buffer otherwise (up to the pool's size; the pool is sized for a
/// 1 MB memcached value and its headers).
pub struct MailboxPeers<'a> {
    /// The core's mailbox.
    pub mailbox: &'a mut Mailbox,
}

impl netd::Peers for MailboxPeers<'_> {
    fn send(&mut self, core: netd::CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError> {
        let link = LinkId(usize::from(core));
        let length = message.encoded_len();
        let sent = if length <= INLINE_CAPACITY {
            let inline = Inline::with(|bytes| message.encode(bytes).unwrap_or(0))
                .ok_or(PeerError::TooLarge)?;
            self.mailbox
                .send(link, &Letter::inline(Family::Net, inline))
        } else {
            self.mailbox
                .send_bulk(link, Family::Net, 0, length, |bytes| {
                    message.encode(bytes).is_ok()
                })
        };
        sent.map_err(|refusal| match refusal {
            Refusal::OutboxFull => PeerError::Full,
            Refusal::PeerFenced => PeerError::PeerFenced(core),
            Refusal::BulkExhausted => PeerError::BulkExhausted,
            Refusal::TooLarge => PeerError::TooLarge,
            Refusal::NoChannel => PeerError::NoSuchCore(core),
        })
    }

    /// The bulk pool carries messages up to its largest buffer (2–8 MiB: a 1 MB memcached item
    /// and its headers fit), so memcached neither chunks values nor refuses remote sets.
    fn max_message(&self) -> usize {
        self.mailbox.bulk_capacity()
    }
}
