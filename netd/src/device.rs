//! The smoltcp `Device` a path hands to its core's `Interface` for one step.
//!
//! On ingress the device yields exactly one frame, read in place from its pool buffer; a reply
//! smoltcp produces while processing it (ARP reply, ICMP echo reply, TCP reset) goes to a one-frame
//! staging area, because the pool is borrowed by the frame being read; the core copies it into a
//! pool buffer right after. On egress there is no received frame and smoltcp writes each outgoing
//! frame straight into a freshly allocated pool buffer.
//!
//! TCP: smoltcp leaves TCP checksums to the device ([`capabilities`]) and may write one segment
//! of up to [`TCP_SEGMENT_BYTES`] with an MSS to cut it at (its segmentation offload). Such a
//! segment is written into the core's scratch area, then handed to the NIC whole over chained
//! pool buffers when its queue segments TCP (TSO), or cut into MSS segments here otherwise; every
//! TCP frame's checksum is finished here (left to the NIC when it offers it, computed otherwise).
//! One large segment costs the stack one dispatch and the NIC one packet instead of forty.

use drivers::nic::{
    QueueCapabilities, TransmitFrame, TxChecksum, TxL4Checksum, TxSegmentation,
    MAX_SEGMENTATION_PACKET,
};
use drivers::pool::{BufferId, BufferPool, BUFFER_SIZE};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;
use smoltcp::wire::{
    checksum, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
};

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec;

/// Ethernet MTU as smoltcp counts it (with the 14-byte header).
pub const ETHERNET_MTU: usize = 1514;

/// Most frames waiting for the NIC's TX ring on one core.
pub const TX_QUEUE_CAPACITY: usize = 256;

/// Frames written, waiting to be handed to the TX ring.
pub type TxQueue = heapless::Vec<TransmitFrame, TX_QUEUE_CAPACITY>;

/// The longest TCP segment smoltcp may write in one go (headers included): the NIC, or
/// [`FrameTx`], cuts it into MSS-sized segments.
pub const TCP_SEGMENT_BYTES: usize = MAX_SEGMENTATION_PACKET;

/// TX queue entries and pool buffers a large segment may need at most (its pool buffers for the
/// NIC, or its MSS segments cut here): egress takes a token only when that much room is left.
const LARGE_SEGMENT_FRAMES: usize = TCP_SEGMENT_BYTES.div_ceil(536);

/// One frame smoltcp produced during ingress, and the scratch area a large TCP segment is
/// written into on egress.
pub struct Staging {
    pub(crate) bytes: [u8; ETHERNET_MTU],
    pub(crate) length: Option<usize>,
    pub(crate) large: Box<[u8]>,
}

impl Staging {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; ETHERNET_MTU],
            length: None,
            large: vec![0; TCP_SEGMENT_BYTES].into_boxed_slice(),
        }
    }
}

/// Where transmitted frames go.
pub(crate) enum TxSink<'a> {
    /// During ingress: the one-frame staging area.
    Staging(&'a mut Staging),
    /// During egress: straight into pool buffers, queued for the TX ring. `reserve` buffers are
    /// left in the pool for the RX ring; `offload` is what the NIC computes; large TCP segments
    /// are written into `scratch` first.
    Pool {
        pool: &'a mut BufferPool,
        queue: &'a mut TxQueue,
        reserve: usize,
        offload: QueueCapabilities,
        scratch: &'a mut [u8],
    },
}

/// A smoltcp device over one frame and one sink.
pub(crate) struct PathDevice<'a> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) tx: TxSink<'a>,
}

pub(crate) struct FrameRx<'a>(&'a [u8]);

impl phy::RxToken for FrameRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

pub(crate) enum FrameTx<'s, 'a> {
    Staging(&'s mut Staging),
    Pool {
        pool: &'s mut BufferPool,
        queue: &'s mut TxQueue,
        buffer: Option<BufferId>,
        offload: QueueCapabilities,
        scratch: &'s mut [u8],
        /// The MSS smoltcp asked to cut this segment at (its segmentation offload).
        segment: Option<u16>,
        _sink: core::marker::PhantomData<&'a ()>,
    },
}

impl phy::TxToken for FrameTx<'_, '_> {
    fn consume<R, F>(mut self, length: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match &mut self {
            FrameTx::Staging(staging) => {
                let length = length.min(ETHERNET_MTU);
                let result = f(&mut staging.bytes[..length]);
                staging.length = Some(length);
                result
            }
            FrameTx::Pool {
                pool,
                queue,
                buffer,
                offload,
                scratch,
                segment,
                ..
            } => {
                if let Some(mss) = segment.filter(|_| length > ETHERNET_MTU) {
                    // A large TCP segment: written whole, then to the NIC over chained buffers
                    // or cut here.
                    let length = length.min(scratch.len());
                    let result = f(&mut scratch[..length]);
                    if let Some(id) = buffer.take() {
                        let _ = pool.free(id);
                    }
                    send_large(
                        pool,
                        queue,
                        *offload,
                        &mut scratch[..length],
                        usize::from(mss),
                    );
                    return result;
                }
                let length = length.min(ETHERNET_MTU);
                // `transmit` allocated the buffer; a missing one cannot happen, but stays harmless.
                let id = buffer.take();
                let mut scratch = [0u8; 0];
                let (result, checksum) = match id.and_then(|id| pool.bytes_mut(id).ok()) {
                    Some(bytes) => {
                        let frame = &mut bytes[..length.min(BUFFER_SIZE)];
                        let result = f(frame);
                        (result, finish_tcp_checksum(frame, *offload))
                    }
                    None => (f(&mut scratch[..]), TxChecksum::NONE),
                };
                if let Some(id) = id {
                    let frame = TransmitFrame {
                        checksum,
                        ..TransmitFrame::new(id, length as u16)
                    };
                    if queue.push(frame).is_err() {
                        let _ = pool.free(id);
                    }
                }
                result
            }
        }
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        if let FrameTx::Pool { segment, .. } = self {
            *segment = meta
                .segmentation_offload_size
                .map(|mss| mss.get())
                .filter(|mss| *mss > 0);
        }
    }
}

impl Drop for FrameTx<'_, '_> {
    fn drop(&mut self) {
        // smoltcp may drop a token unused: give its buffer back.
        if let FrameTx::Pool {
            pool,
            buffer: Some(id),
            ..
        } = self
        {
            let _ = pool.free(*id);
        }
    }
}

/// The IPv4 and TCP header lengths of an Ethernet/IPv4/TCP frame.
fn tcp_headers(frame: &[u8]) -> Option<(usize, usize)> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((usize::from(ip.header_len()), usize::from(tcp.header_len())))
}

/// Finishes a TCP frame smoltcp wrote without its checksum: seeds the pseudo-header sum and
/// asks the NIC when it computes TCP checksums, computes it here otherwise. Other frames are
/// left as they are. Returns what the NIC is asked to do.
pub(crate) fn finish_tcp_checksum(frame: &mut [u8], offload: QueueCapabilities) -> TxChecksum {
    let Some((ip_length, _)) = tcp_headers(frame) else {
        return TxChecksum::NONE;
    };
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    let (source, destination) = (ip.src_addr(), ip.dst_addr());
    let length = ip.payload_mut().len();
    let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
    if offload.tx_checksum_tcp {
        let seed =
            checksum::pseudo_header_v4(&source, &destination, IpProtocol::Tcp, length as u32);
        tcp.set_checksum(seed);
        TxChecksum {
            ipv4_header: false,
            l4: Some(TxL4Checksum::Tcp),
            l2_length: 14,
            l3_length: ip_length as u8,
        }
    } else {
        tcp.fill_checksum(&IpAddress::Ipv4(source), &IpAddress::Ipv4(destination));
        TxChecksum::NONE
    }
}

/// Sends one large TCP segment (in `packet`): to the NIC whole over chained pool buffers with a
/// segmentation request when its queue segments TCP, cut into `mss`-byte segments here
/// otherwise. The caller made sure the pool and the queue have room (`LARGE_SEGMENT_FRAMES`).
fn send_large(
    pool: &mut BufferPool,
    queue: &mut TxQueue,
    offload: QueueCapabilities,
    packet: &mut [u8],
    mss: usize,
) {
    let Some((ip_length, tcp_length)) = tcp_headers(packet) else {
        return;
    };
    if offload.tx_tcp_segmentation {
        // The pseudo-header sum without the length (the NIC adds each segment's).
        {
            let mut ethernet = EthernetFrame::new_unchecked(&mut packet[..]);
            let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
            let (source, destination) = (ip.src_addr(), ip.dst_addr());
            let seed = checksum::pseudo_header_v4(&source, &destination, IpProtocol::Tcp, 0);
            TcpPacket::new_unchecked(ip.payload_mut()).set_checksum(seed);
        }
        let pieces = packet.len().div_ceil(BUFFER_SIZE);
        let start = queue.len();
        for (index, chunk) in packet.chunks(BUFFER_SIZE).enumerate() {
            let Some(id) = pool.alloc() else { break };
            if let Ok(bytes) = pool.bytes_mut(id) {
                bytes[..chunk.len()].copy_from_slice(chunk);
            }
            let mut frame = TransmitFrame::new(id, chunk.len() as u16);
            frame.more = index + 1 < pieces;
            if index == 0 {
                frame.checksum = TxChecksum {
                    ipv4_header: true,
                    l4: Some(TxL4Checksum::Tcp),
                    l2_length: 14,
                    l3_length: ip_length as u8,
                };
                frame.segmentation = Some(TxSegmentation {
                    mss: mss as u16,
                    l4_length: tcp_length as u8,
                });
            }
            if queue.push(frame).is_err() {
                let _ = pool.free(id);
                break;
            }
        }
        // A packet must go whole: if a piece could not be queued, none goes.
        if queue.len() - start != pieces {
            for frame in queue[start..].iter() {
                let _ = pool.free(frame.buffer);
            }
            queue.truncate(start);
        }
        return;
    }
    let mut index = 0;
    while let Some(id) = pool.alloc() {
        let written = match pool.bytes_mut(id) {
            Ok(bytes) => drivers::frame::tcp_segment(packet, mss, index, bytes),
            Err(_) => None,
        };
        let Some(length) = written else {
            let _ = pool.free(id);
            break;
        };
        if queue.push(TransmitFrame::new(id, length as u16)).is_err() {
            let _ = pool.free(id);
            break;
        }
        index += 1;
    }
}

impl<'a> PathDevice<'a> {
    fn tx_token(&mut self) -> Option<FrameTx<'_, 'a>> {
        match &mut self.tx {
            TxSink::Staging(staging) => {
                if staging.length.is_some() {
                    return None;
                }
                Some(FrameTx::Staging(staging))
            }
            TxSink::Pool {
                pool,
                queue,
                reserve,
                offload,
                scratch,
            } => {
                // Room for the largest segment smoltcp may write (see `LARGE_SEGMENT_FRAMES`).
                if queue.len() + LARGE_SEGMENT_FRAMES > queue.capacity()
                    || pool.available() <= *reserve + LARGE_SEGMENT_FRAMES
                {
                    return None;
                }
                let buffer = pool.alloc();
                buffer?;
                Some(FrameTx::Pool {
                    pool,
                    queue,
                    buffer,
                    offload: *offload,
                    scratch,
                    segment: None,
                    _sink: core::marker::PhantomData,
                })
            }
        }
    }
}

impl<'a> phy::Device for PathDevice<'a> {
    type RxToken<'t>
        = FrameRx<'a>
    where
        Self: 't;
    type TxToken<'t>
        = FrameTx<'t, 'a>
    where
        Self: 't;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        self.tx_token().map(|tx| (FrameRx(frame), tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.tx_token()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

/// The capabilities every path device reports: Ethernet, 1514-byte frames, one frame per burst,
/// no receive checksum check (the classifier already verified or the NIC did), TCP checksums
/// left to the device (finished in [`FrameTx`] or at commit), and TCP segments of up to
/// [`TCP_SEGMENT_BYTES`] (segmentation offload: cut by the NIC or by [`FrameTx`]).
pub(crate) fn capabilities() -> DeviceCapabilities {
    let mut capabilities = DeviceCapabilities::default();
    capabilities.medium = Medium::Ethernet;
    capabilities.max_transmission_unit = ETHERNET_MTU;
    capabilities.max_burst_size = Some(1);
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.tcp = Checksum::None;
    checksum.icmpv4 = Checksum::Tx;
    capabilities.checksum = checksum;
    capabilities.segmentation.tcpv4 = core::num::NonZeroUsize::new(TCP_SEGMENT_BYTES);
    capabilities
}
