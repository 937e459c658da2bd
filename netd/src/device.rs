//! The smoltcp `Device` a path hands to its core's `Interface` for one step.
//!
//! On ingress the device yields exactly one frame, read in place from its pool buffer; a reply
//! smoltcp produces while processing it (ARP reply, ICMP echo reply, TCP reset) goes to a one-frame
//! staging area, because the pool is borrowed by the frame being read; the core copies it into a
//! pool buffer right after. On egress there is no received frame and smoltcp writes each outgoing
//! frame straight into a freshly allocated pool buffer.

use drivers::nic::TransmitFrame;
use drivers::pool::{BufferId, BufferPool, BUFFER_SIZE};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet MTU as smoltcp counts it (with the 14-byte header).
pub const ETHERNET_MTU: usize = 1514;

/// Most frames waiting for the NIC's TX ring on one core.
pub const TX_QUEUE_CAPACITY: usize = 256;

/// Frames written, waiting to be handed to the TX ring.
pub type TxQueue = heapless::Vec<TransmitFrame, TX_QUEUE_CAPACITY>;

/// One frame smoltcp produced during ingress.
pub struct Staging {
    pub(crate) bytes: [u8; ETHERNET_MTU],
    pub(crate) length: Option<usize>,
}

impl Staging {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; ETHERNET_MTU],
            length: None,
        }
    }
}

/// Where transmitted frames go.
pub(crate) enum TxSink<'a> {
    /// During ingress: the one-frame staging area.
    Staging(&'a mut Staging),
    /// During egress: straight into pool buffers, queued for the TX ring. `reserve` buffers are
    /// left in the pool for the RX ring.
    Pool {
        pool: &'a mut BufferPool,
        queue: &'a mut TxQueue,
        reserve: usize,
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
        _sink: core::marker::PhantomData<&'a ()>,
    },
}

impl phy::TxToken for FrameTx<'_, '_> {
    fn consume<R, F>(mut self, length: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let length = length.min(ETHERNET_MTU);
        match &mut self {
            FrameTx::Staging(staging) => {
                let result = f(&mut staging.bytes[..length]);
                staging.length = Some(length);
                result
            }
            FrameTx::Pool {
                pool,
                queue,
                buffer,
                ..
            } => {
                // `transmit` allocated the buffer; a missing one cannot happen, but stays harmless.
                let id = buffer.take();
                let mut scratch = [0u8; 0];
                let result = match id.and_then(|id| pool.bytes_mut(id).ok()) {
                    Some(bytes) => f(&mut bytes[..length.min(BUFFER_SIZE)]),
                    None => f(&mut scratch[..]),
                };
                if let Some(id) = id {
                    let frame = TransmitFrame::new(id, length as u16);
                    if queue.push(frame).is_err() {
                        let _ = pool.free(id);
                    }
                }
                result
            }
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
            } => {
                if queue.is_full() || pool.available() <= *reserve {
                    return None;
                }
                let buffer = pool.alloc();
                buffer?;
                Some(FrameTx::Pool {
                    pool,
                    queue,
                    buffer,
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
/// and no receive checksum check (the classifier already verified or the NIC did).
pub(crate) fn capabilities() -> DeviceCapabilities {
    let mut capabilities = DeviceCapabilities::default();
    capabilities.medium = Medium::Ethernet;
    capabilities.max_transmission_unit = ETHERNET_MTU;
    capabilities.max_burst_size = Some(1);
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    capabilities.checksum = checksum;
    capabilities
}
