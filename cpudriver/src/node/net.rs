//! The network service the node drives ([`NetService`]), its implementation over netd's stack
//! and the core's NIC queue — plus a failed core's queue it adopted ([`CoreNetwork`]) — and the
//! transport netd sends through ([`MailboxPeers`]).

use alloc::boxed::Box;
use alloc::vec::Vec;

use drivers::nic::{
    FlowMap, QueueCapabilities, QueueDatapath, QueueId, QueueStats, ReceiveBatch, TransmitFrame,
};
use drivers::pool::BufferPool;
use netd::{CoreCounters, PeerError, PeerMessage, PollOutcome, SnapshotError, TransportCounters};

use super::framing::{Family, Inline, Letter, INLINE_CAPACITY};
use super::mailbox::{LinkId, Mailbox, Refusal};
use super::takeover::AdoptError;
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

    /// The NIC queue's counters (with those of an adopted queue added).
    fn queue_stats(&self) -> QueueStats;

    /// Takes over queue `queue` of a failed core: its rings re-initialised in this core's memory
    /// with buffers of this core's pool, polled in this core's turn by this core's stack from now
    /// on, its interrupt unmasked (the NIC's home then routes its vector here).
    fn adopt_queue(&mut self, queue: u16) -> Result<(), AdoptError>;
}

/// Builds, for this core, a failed core's queue anew (the kernel's: the igb queue's rings
/// restarted in this core's memory, `drivers::igb::restart_queue`).
pub trait QueueAdoption<Q> {
    /// Queue `queue`, ready to be refilled from this core's pool.
    fn adopt(&mut self, queue: u16) -> Result<Q, AdoptError>;
}

/// A core's network: netd's stack, the core's NIC queue and its packet buffer pool, and a failed
/// core's queue once this core adopted it.
pub struct CoreNetwork<Q: QueueDatapath> {
    /// This core's smoltcp instance and paths.
    pub net: netd::CoreNet,
    /// This core's queue pair.
    pub queue: Q,
    /// This core's packet buffers (the adopted queue's too).
    pub pool: BufferPool,
    /// A failed core's queue this core adopted (queue 0 when core 0 failed), polled beside its
    /// own.
    pub adopted: Option<Q>,
    /// How this core builds an adopted queue (none: it cannot adopt).
    adoption: Option<Box<dyn QueueAdoption<Q>>>,
    /// Whether a turn's receive starts with the adopted queue (alternates, so neither ring
    /// starves the other).
    adopted_first: bool,
}

impl<Q: QueueDatapath> CoreNetwork<Q> {
    /// The network of a core: its stack, its queue (refilled and armed by the caller) and pool.
    pub fn new(net: netd::CoreNet, queue: Q, pool: BufferPool) -> Self {
        Self {
            net,
            queue,
            pool,
            adopted: None,
            adoption: None,
            adopted_first: false,
        }
    }

    /// With a way to adopt a failed core's queue.
    pub fn with_adoption(mut self, adoption: Box<dyn QueueAdoption<Q>>) -> Self {
        self.adoption = Some(adoption);
        self
    }

    /// The core's queues as one datapath, its pool and its stack.
    fn parts(&mut self) -> (Queues<'_, Q>, &mut BufferPool, &mut netd::CoreNet) {
        (
            Queues {
                own: &mut self.queue,
                adopted: self.adopted.as_mut(),
                adopted_first: self.adopted_first,
            },
            &mut self.pool,
            &mut self.net,
        )
    }
}

/// The core's own queue and the one it adopted, as one datapath for netd's turn: receive takes
/// from both (alternating which first), transmit uses the core's own TX ring, refill, reclaim and
/// interrupts cover both, the counters are summed. netd's `CoreNet::poll` is generic over the
/// queue, so one stack and one bounded turn serve both rings.
pub struct Queues<'a, Q: QueueDatapath> {
    own: &'a mut Q,
    adopted: Option<&'a mut Q>,
    adopted_first: bool,
}

impl<Q: QueueDatapath> QueueDatapath for Queues<'_, Q> {
    fn queue(&self) -> QueueId {
        self.own.queue()
    }

    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        match self.adopted.as_deref_mut() {
            None => self.own.receive(pool, batch),
            Some(adopted) if self.adopted_first => {
                adopted.receive(pool, batch) + self.own.receive(pool, batch)
            }
            Some(adopted) => self.own.receive(pool, batch) + adopted.receive(pool, batch),
        }
    }

    fn refill(&mut self, pool: &mut BufferPool) -> usize {
        let adopted = self.adopted.as_deref_mut().map_or(0, |q| q.refill(pool));
        self.own.refill(pool) + adopted
    }

    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        self.own.transmit(pool, frames)
    }

    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        let adopted = self.adopted.as_deref_mut().map_or(0, |q| q.reclaim(pool));
        self.own.reclaim(pool) + adopted
    }

    fn stats(&self) -> QueueStats {
        match self.adopted.as_deref() {
            Some(adopted) => sum(self.own.stats(), adopted.stats()),
            None => self.own.stats(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        self.own.capabilities()
    }

    fn set_interrupt(&mut self, enabled: bool) {
        if let Some(adopted) = self.adopted.as_deref_mut() {
            adopted.set_interrupt(enabled);
        }
        self.own.set_interrupt(enabled);
    }

    fn receive_pending(&self) -> bool {
        self.own.receive_pending() || self.adopted.as_deref().is_some_and(|q| q.receive_pending())
    }
}

/// Two queues' counters, added.
fn sum(a: QueueStats, b: QueueStats) -> QueueStats {
    QueueStats {
        rx_packets: a.rx_packets + b.rx_packets,
        rx_bytes: a.rx_bytes + b.rx_bytes,
        rx_no_descriptor: a.rx_no_descriptor + b.rx_no_descriptor,
        rx_missed: a.rx_missed + b.rx_missed,
        rx_errors: a.rx_errors + b.rx_errors,
        tx_packets: a.tx_packets + b.tx_packets,
        tx_bytes: a.tx_bytes + b.tx_bytes,
        tx_ring_full: a.tx_ring_full + b.tx_ring_full,
    }
}

impl<Q: QueueDatapath> NetService for CoreNetwork<Q> {
    fn poll(&mut self, now: Instant, peers: &mut MailboxPeers<'_>) -> PollOutcome {
        self.adopted_first = !self.adopted_first;
        let (mut queues, pool, net) = self.parts();
        net.poll(net_instant(now), &mut queues, pool, peers)
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
        let (mut queues, _, _) = self.parts();
        queues.set_interrupt(true);
        queues.receive_pending()
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
        match self.adopted.as_ref() {
            Some(adopted) => sum(self.queue.stats(), adopted.stats()),
            None => self.queue.stats(),
        }
    }

    fn adopt_queue(&mut self, queue: u16) -> Result<(), AdoptError> {
        if self.queue.queue() == QueueId(queue) {
            return Err(AdoptError::AlreadyHeld(queue));
        }
        if let Some(held) = self.adopted.as_ref() {
            // Only queue 0 is ever adopted (by the NIC's home), so one is all a core holds.
            return Err(AdoptError::AlreadyAdopting(held.queue().0));
        }
        let adoption = self.adoption.as_mut().ok_or(AdoptError::Unsupported)?;
        let mut adopted = adoption.adopt(queue)?;
        adopted.refill(&mut self.pool);
        adopted.set_interrupt(true);
        self.adopted = Some(adopted);
        Ok(())
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
