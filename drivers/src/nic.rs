//! The NIC API: a per-queue datapath trait owned by exactly one core, and a control trait for the
//! state the whole machine shares (RSS key, hash types, redirection table, filters, link).
//!
//! The split follows the rule "control apart from data": a core's event loop holds only its own
//! [`QueueDatapath`]; the monitor on the NIC's home core holds the [`NicControl`] and changes it
//! only after the cores agree. Buffers belong to the owning core's [`BufferPool`], and frames are
//! handed over by [`BufferId`], never copied.
#![forbid(unsafe_code)]

use crate::pool::{BufferId, BufferPool};

pub use crate::flow_map::{FlowMap, GroupSet};

/// Largest batch a datapath call handles (IX's bound on run-to-completion batches).
pub const MAX_BATCH: usize = 64;

/// Number of redirection table entries on the 82576 and the 82599: Flotilla's flow groups.
pub const FLOW_GROUPS: usize = 128;

/// Index of a hardware queue pair (one RX and one TX ring), owned by one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u16);

/// A flow group: one entry of the RSS redirection table. Flows whose hash selects entry `g`
/// go to the queue that entry names; the control plane moves flow groups between cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowGroup(pub u8);

/// What the NIC said about a received frame's checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumStatus {
    /// The NIC checked the IPv4 header checksum and it was right.
    pub ipv4_ok: bool,
    /// The NIC checked the TCP/UDP checksum and it was right.
    pub l4_ok: bool,
    /// The NIC checked a checksum and it was wrong.
    pub error: bool,
}

/// One received frame, still in its pool buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// The buffer holding the frame, from the owning core's pool.
    pub buffer: BufferId,
    /// Frame length in bytes (without the FCS).
    pub length: u16,
    /// The RSS hash the NIC computed (0 when the frame was not hashed, e.g. ARP).
    pub rss_hash: u32,
    /// Checksum status from the descriptor.
    pub checksum: ChecksumStatus,
}

/// The transport checksum a frame asks the NIC to compute on transmit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxL4Checksum {
    /// The UDP checksum (over the IPv4 pseudo-header and the datagram).
    Udp,
    /// The TCP checksum (over the IPv4 pseudo-header and the segment).
    Tcp,
}

/// Transmit checksum offload asked for one frame (advanced context descriptors on the 82576 and
/// 82599). Software leaves the IPv4 header checksum at 0 and seeds the L4 checksum field with the
/// pseudo-header sum, as the datasheets ask; the device computes the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxChecksum {
    /// Compute the IPv4 header checksum (POPTS.IXSM).
    pub ipv4_header: bool,
    /// Compute this transport checksum (POPTS.TXSM with the context's L4 type).
    pub l4: Option<TxL4Checksum>,
    /// Bytes of the link-layer header before the IPv4 header (MACLEN; 14 for Ethernet II).
    pub l2_length: u8,
    /// Bytes of the IPv4 header, options included (IPLEN).
    pub l3_length: u8,
}

impl TxChecksum {
    /// No offload: the frame's checksums are already right.
    pub const NONE: Self = Self {
        ipv4_header: false,
        l4: None,
        l2_length: 0,
        l3_length: 0,
    };

    /// Whether anything is asked of the device.
    pub fn is_requested(&self) -> bool {
        self.ipv4_header || self.l4.is_some()
    }
}

/// TCP segmentation offload (TSO) asked for one packet: the device cuts the TCP payload into
/// segments of at most `mss` bytes, each sent with a copy of the Ethernet, IPv4 and TCP headers
/// (sequence number, IPv4 total length, identification and checksums, FIN and PSH on the last
/// segment only, adjusted per segment). Software seeds the TCP checksum field with the
/// pseudo-header sum without the length and asks for both checksums in the packet's
/// [`TxChecksum`] (82576 §7.2.4, 82599 §7.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxSegmentation {
    /// Payload bytes per segment.
    pub mss: u16,
    /// Bytes of the TCP header, options included (L4LEN).
    pub l4_length: u8,
}

/// The longest packet one segmentation request may describe, headers included (the IPv4 total
/// length is 16 bits).
pub const MAX_SEGMENTATION_PACKET: usize = 65_000;

/// One frame to transmit, already written into a pool buffer — or one buffer of a packet that
/// spans several (`more`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmitFrame {
    /// The buffer holding the frame; it goes back to the pool on reclaim.
    pub buffer: BufferId,
    /// Bytes in this buffer.
    pub length: u16,
    /// Checksums the device should compute ([`TxChecksum::NONE`]: none). Ask only for what
    /// [`QueueDatapath::capabilities`] offers. Of a packet spanning buffers, the first's counts.
    pub checksum: TxChecksum,
    /// The packet goes on in the next frame of the same `transmit` call (its buffers are
    /// chained, in order; the last has `more: false`). A queue takes a packet whole or not at all.
    pub more: bool,
    /// TCP segmentation offload for the packet (its first frame's counts). Ask only when
    /// [`QueueCapabilities::tx_tcp_segmentation`] says so.
    pub segmentation: Option<TxSegmentation>,
}

impl TransmitFrame {
    /// A frame whose checksums are complete.
    pub fn new(buffer: BufferId, length: u16) -> Self {
        Self {
            buffer,
            length,
            checksum: TxChecksum::NONE,
            more: false,
            segmentation: None,
        }
    }
}

/// What a queue's device does for the software on it (plain data, read once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCapabilities {
    /// Transmit: the device computes IPv4 header checksums.
    pub tx_checksum_ipv4: bool,
    /// Transmit: the device computes UDP checksums.
    pub tx_checksum_udp: bool,
    /// Transmit: the device computes TCP checksums.
    pub tx_checksum_tcp: bool,
    /// Transmit: the device segments TCP packets of up to [`MAX_SEGMENTATION_PACKET`] bytes
    /// spread over chained buffers ([`TxSegmentation`]; implies TCP and IPv4 checksums).
    pub tx_tcp_segmentation: bool,
}

/// A bounded batch of received frames.
pub type ReceiveBatch = heapless::Vec<ReceivedFrame, MAX_BATCH>;

/// Per-queue counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames the device dropped because the ring had no free descriptor (82576 `RQDPC`, 82599
    /// `QPRDC`: per queue, read by the queue's owner).
    pub rx_no_descriptor: u64,
    /// Frames the device missed because its packet buffer was full (the global `MPC`). Only the
    /// queue given the counter reads it (queue 0 on igb), so a clear-on-read register has one
    /// reader; 0 on the other queues.
    pub rx_missed: u64,
    /// Frames received with a device-reported error, dropped.
    pub rx_errors: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Transmit requests refused because the TX ring was full.
    pub tx_ring_full: u64,
}

/// Errors of the NIC API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicError {
    /// The device does not have this capability (e.g. exact-match filters on QEMU's igb).
    Unsupported,
    /// A queue index beyond the device's queue count.
    NoSuchQueue(QueueId),
    /// A flow group beyond the redirection table.
    NoSuchFlowGroup(FlowGroup),
    /// Every filter slot is in use.
    FiltersFull,
    /// A filter id that is not installed.
    NoSuchFilter(u16),
    /// A buffer was not from the queue's pool.
    BadBuffer(BufferId),
    /// The device did not respond as the datasheet says (reset timeout, absent register).
    DeviceTimeout,
}

/// The datapath of one queue pair, owned by one core, with no lock.
///
/// Shaped like a token API: every call is bounded (at most [`MAX_BATCH`] frames), so the caller's
/// loop can never be made to poll without end.
pub trait QueueDatapath {
    /// The queue this datapath drives.
    fn queue(&self) -> QueueId;

    /// Moves up to `batch.capacity() - batch.len()` received frames into `batch`; returns how
    /// many. The buffers now belong to the caller, who frees them to `pool` when done.
    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize;

    /// Gives free buffers from `pool` to the device's RX ring; returns how many were posted.
    fn refill(&mut self, pool: &mut BufferPool) -> usize;

    /// Queues frames for transmission; returns how many were accepted (a prefix of `frames`).
    /// Frames not accepted still belong to the caller.
    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize;

    /// Returns the buffers of completed transmissions to `pool`; returns how many.
    fn reclaim(&mut self, pool: &mut BufferPool) -> usize;

    /// This queue's counters. On hardware this reads clear-on-read registers (MMIO): call it
    /// now and then, not per frame.
    fn stats(&self) -> QueueStats;

    /// What the device does for this queue (transmit checksum offload). Default: nothing.
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::default()
    }

    /// Enables (`true`) or masks (`false`) this queue's receive interrupt.
    fn set_interrupt(&mut self, enabled: bool);

    /// Whether a received frame is waiting in the ring now. A core that re-enables the interrupt
    /// and then halts checks this in between: a frame that arrived while the interrupt was
    /// masked may raise no interrupt when it is unmasked. The default (`false`) suits devices
    /// without a ring to look at; ring drivers override it.
    fn receive_pending(&self) -> bool {
        false
    }
}

/// Which header fields the NIC hashes for RSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashTypes {
    /// Hash IPv4 addresses only (non-TCP/UDP IPv4).
    pub ipv4: bool,
    /// Hash IPv4 addresses and TCP ports.
    pub tcp_ipv4: bool,
    /// Hash IPv4 addresses and UDP ports.
    pub udp_ipv4: bool,
    /// Hash IPv6 addresses only.
    pub ipv6: bool,
    /// Hash IPv6 addresses and TCP ports.
    pub tcp_ipv6: bool,
    /// Hash IPv6 addresses and UDP ports.
    pub udp_ipv6: bool,
}

impl HashTypes {
    /// Every hash type the 82576 and 82599 support.
    pub const ALL: Self = Self {
        ipv4: true,
        tcp_ipv4: true,
        udp_ipv4: true,
        ipv6: true,
        tcp_ipv6: true,
        udp_ipv6: true,
    };
}

/// An exact-match five-tuple filter (82576: 8 of them; 82599: 128). A field of `None` matches any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FiveTupleFilter {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: Option<u8>,
    /// IPv4 source address.
    pub source_ip: Option<[u8; 4]>,
    /// IPv4 destination address.
    pub destination_ip: Option<[u8; 4]>,
    /// Source port.
    pub source_port: Option<u16>,
    /// Destination port.
    pub destination_port: Option<u16>,
    /// Priority among overlapping filters (higher wins).
    pub priority: u8,
}

/// Link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Whether the link is up.
    pub up: bool,
    /// Speed in Mb/s, 0 when unknown.
    pub speed_mbps: u32,
}

/// The control side of a NIC, held by one monitor and changed only by agreement.
pub trait NicControl {
    /// Number of queue pairs in use.
    fn queue_count(&self) -> u16;
    /// Sets the 40-byte Toeplitz key.
    fn set_rss_key(&mut self, key: &[u8; 40]) -> Result<(), NicError>;
    /// Chooses the hashed header fields.
    fn set_hash_types(&mut self, types: HashTypes) -> Result<(), NicError>;
    /// Points flow group `group` at `queue`.
    fn set_flow_group(&mut self, group: FlowGroup, queue: QueueId) -> Result<(), NicError>;
    /// The queue flow group `group` points at.
    fn flow_group(&self, group: FlowGroup) -> Result<QueueId, NicError>;
    /// Installs an exact-match filter steering to `queue`; returns its slot.
    fn add_filter(&mut self, filter: FiveTupleFilter, queue: QueueId) -> Result<u16, NicError>;
    /// Removes a filter by slot.
    fn remove_filter(&mut self, slot: u16) -> Result<(), NicError>;
    /// Link state now.
    fn link(&self) -> LinkState;
}
