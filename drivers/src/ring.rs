//! Device-independent descriptor rings: the advanced RX/TX descriptor formats the 82576 and the
//! 82599 share, head/tail bookkeeping with wrap-around, and [`DescriptorQueue`], the per-core
//! [`QueueDatapath`] both Intel drivers hand out.
//!
//! # Ownership protocol of a ring of `n` descriptors
//! Software keeps two indices, `clean` (next descriptor to look at) and `next` (next descriptor to
//! fill; the tail register's value once published). Descriptors in `[clean, next)` (mod `n`) are
//! owned by the device; the rest by software. At most `n - 1` are ever posted, because the device
//! reads `head == tail` as "ring empty" (82576 datasheet §7.1.4.1, 82599 §7.1.9.1). Software fills
//! descriptors at `next`, then [`DmaFence::publish`], then writes the tail register. The device
//! writes back a descriptor with DD set and moves its head; software sees DD at `clean`,
//! [`DmaFence::consume`], reads the rest, and advances `clean`. Head registers are never read on
//! the datapath (a register read costs far more than a cache-line read of the descriptor).
//!
//! Descriptor memory is device-shared, so every access to it is volatile through raw pointers;
//! no Rust reference to a descriptor ever exists.

use core::cell::Cell;
use core::ptr::NonNull;

use crate::dma::{DmaFence, QueueMemory};
use crate::nic::{
    ChecksumStatus, QueueCapabilities, QueueDatapath, QueueId, QueueStats, ReceiveBatch,
    ReceivedFrame, TransmitFrame, TxChecksum, TxL4Checksum, TxSegmentation,
};
use crate::pool::{BufferId, BufferPool};
use crate::registers::RegisterAccess;

/// Advanced receive descriptor (82576 datasheet §7.1.5, 82599 datasheet §7.1.6), 16 bytes.
///
/// Read format (software → device): `first` = packet buffer address, `second` = header buffer
/// address (0: no header split). Write-back format (device → software): `first` low dword = RSS
/// type (bits 3:0) and packet type, `first` high dword = RSS hash; `second` low dword = extended
/// status (bits 19:0) and errors (bits 31:20), `second` bits 47:32 = packet length, 63:48 = VLAN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct AdvancedRxDescriptor {
    /// Packet address (read) / RSS type and hash (write-back).
    pub first: u64,
    /// Header address (read) / status, errors, length, VLAN (write-back).
    pub second: u64,
}

/// Advanced transmit data descriptor (82576 datasheet §7.2.2.3, 82599 datasheet §7.2.3.2.4),
/// 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct AdvancedTxDescriptor {
    /// Buffer address.
    pub buffer_address: u64,
    /// Length (15:0), descriptor type (23:20), command (31:24).
    pub command_type_length: u32,
    /// Offload info and PAYLEN (31:14); the device sets DD (bit 0) on write-back.
    pub offload_status: u32,
}

const _: () = assert!(core::mem::size_of::<AdvancedRxDescriptor>() == 16);
const _: () = assert!(core::mem::size_of::<AdvancedTxDescriptor>() == 16);
const _: () = assert!(core::mem::align_of::<AdvancedRxDescriptor>() == 16);

/// RX write-back status and error bits (82576 datasheet §7.1.5.2, 82599 §7.1.6.2), as bits of
/// the write-back `second` field's low dword.
pub mod rx_status {
    /// Descriptor done.
    pub const DD: u32 = 1 << 0;
    /// End of packet.
    pub const EOP: u32 = 1 << 1;
    /// UDP checksum calculated.
    pub const UDPCS: u32 = 1 << 4;
    /// L4 (TCP/UDP) checksum calculated (L4I / TCPCS).
    pub const L4CS: u32 = 1 << 5;
    /// IPv4 header checksum calculated.
    pub const IPCS: u32 = 1 << 6;
    /// L4 checksum error.
    pub const L4E: u32 = 1 << 29;
    /// IPv4 checksum error.
    pub const IPE: u32 = 1 << 30;
    /// RX data error (CRC, symbol, ...): the frame is bad.
    pub const RXE: u32 = 1 << 31;
}

/// TX descriptor bits (82576 datasheet §7.2.2.3, 82599 §7.2.3.2.4) and the advanced context
/// descriptor's fields (82576 §7.2.2.2, 82599 §7.2.3.2.3).
pub mod tx_bits {
    /// DTYP = 0011b, advanced data descriptor (bits 23:20).
    pub const DTYP_DATA: u32 = 0x3 << 20;
    /// DTYP = 0010b, advanced context descriptor.
    pub const DTYP_CONTEXT: u32 = 0x2 << 20;
    /// Mask of DTYP.
    pub const DTYP_MASK: u32 = 0xF << 20;
    /// Data descriptor offload dword: the context slot this packet uses (IDX, bit 4).
    pub const IDX_SHIFT: u32 = 4;
    /// Data descriptor offload dword: check context (82599 CC, bit 7): use the IDX context.
    pub const CHECK_CONTEXT: u32 = 1 << 7;
    /// Data descriptor offload dword: POPTS.IXSM, insert the IPv4 header checksum (bit 8).
    pub const POPTS_IXSM: u32 = 1 << 8;
    /// Data descriptor offload dword: POPTS.TXSM, insert the TCP/UDP checksum (bit 9).
    pub const POPTS_TXSM: u32 = 1 << 9;
    /// Context descriptor, first dword: MACLEN shift (bits 15:9); IPLEN is bits 8:0.
    pub const MACLEN_SHIFT: u32 = 9;
    /// Context descriptor, TUCMD: IPv4 packet (bit 10 of the type/command dword).
    pub const TUCMD_IPV4: u32 = 1 << 10;
    /// Context descriptor, TUCMD: L4 type TCP (bits 12:11 = 01; 00 is UDP).
    pub const TUCMD_L4T_TCP: u32 = 1 << 11;
    /// Context descriptor, last dword: IDX shift (bits 6:4).
    pub const CONTEXT_IDX_SHIFT: u32 = 4;
    /// Context descriptor, last dword: L4LEN, the TCP header length for segmentation (15:8).
    pub const L4LEN_SHIFT: u32 = 8;
    /// Context descriptor, last dword: MSS for segmentation (31:16).
    pub const MSS_SHIFT: u32 = 16;
    /// Data descriptor: TCP segmentation enable (DCMD.TSE).
    pub const TSE: u32 = 1 << 31;
    /// End of packet.
    pub const EOP: u32 = 1 << 24;
    /// Insert FCS.
    pub const IFCS: u32 = 1 << 25;
    /// Report status (write back DD).
    pub const RS: u32 = 1 << 27;
    /// Descriptor extension (advanced format).
    pub const DEXT: u32 = 1 << 29;
    /// Shift of PAYLEN in the offload/status dword.
    pub const PAYLEN_SHIFT: u32 = 14;
    /// DD in the write-back status.
    pub const DD: u32 = 1 << 0;
}

/// Decodes the checksum status of a write-back status/error dword.
pub fn checksum_status(status_error: u32) -> ChecksumStatus {
    use rx_status::*;
    let ip_checked = status_error & IPCS != 0;
    let l4_checked = status_error & (L4CS | UDPCS) != 0;
    let ip_bad = ip_checked && status_error & IPE != 0;
    let l4_bad = l4_checked && status_error & L4E != 0;
    ChecksumStatus {
        ipv4_ok: ip_checked && !ip_bad,
        l4_ok: l4_checked && !l4_bad,
        error: ip_bad || l4_bad,
    }
}

/// Register offsets and interrupt bit one queue pair uses (all belong to this queue only, or are
/// write-1-to-set / write-1-to-clear registers that need no read-modify-write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRegisters {
    /// RX descriptor tail (RDT).
    pub rx_tail: usize,
    /// TX descriptor tail (TDT).
    pub tx_tail: usize,
    /// Per-queue receive drop counter (clear on read), if the device has one.
    pub rx_drop_counter: Option<usize>,
    /// Interrupt mask set register (EIMS).
    pub interrupt_mask_set: usize,
    /// Interrupt mask clear register (EIMC).
    pub interrupt_mask_clear: usize,
    /// This queue's bit in EIMS/EIMC (its MSI-X vector), if it has an interrupt.
    pub interrupt_bit: Option<u32>,
    /// The device's missed-packets counter (MPC, clear on read, global to the device): given to
    /// exactly one queue (queue 0), so one reader sees it.
    pub missed_packets_counter: Option<usize>,
    /// Transmit checksum offload through advanced context descriptors (IPv4 header, UDP, TCP).
    pub tx_checksum_offload: bool,
    /// Data descriptors that use a context set CC (the 82599 needs it; the 82576 has no such
    /// bit).
    pub tx_check_context: bool,
    /// TCP segmentation offload (TSE with the context's MSS and L4LEN) of packets spread over
    /// chained descriptors.
    pub tx_tcp_segmentation: bool,
}

/// Sentinel for an empty bookkeeping slot.
const EMPTY_SLOT: u64 = u64::MAX;
/// Sentinel for a TX slot holding a context descriptor (no buffer; done with the data
/// descriptor that follows it).
const CONTEXT_SLOT: u64 = u64::MAX - 1;
/// In a TX data slot: the packet goes on in the next descriptor (only a packet's last descriptor
/// asks for a status write-back).
const CONTINUES: u64 = 1 << 48;

/// What a loaded transmit context computes: its L4 type and header lengths, and for TCP
/// segmentation the MSS and TCP header length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TxContext {
    ipv4: bool,
    l4: Option<TxL4Checksum>,
    l2_length: u8,
    l3_length: u8,
    segmentation: Option<TxSegmentation>,
}

impl TxContext {
    fn of(checksum: &TxChecksum, segmentation: Option<TxSegmentation>) -> Self {
        Self {
            ipv4: checksum.ipv4_header || checksum.l4.is_some() || segmentation.is_some(),
            l4: if segmentation.is_some() {
                Some(TxL4Checksum::Tcp)
            } else {
                checksum.l4
            },
            l2_length: checksum.l2_length,
            l3_length: checksum.l3_length,
            segmentation,
        }
    }

    /// The context slot used for this kind: 0 for UDP (and IPv4 only), 1 for TCP.
    fn slot(&self) -> usize {
        usize::from(self.l4 == Some(TxL4Checksum::Tcp))
    }

    /// The advanced context descriptor that loads it into `slot`.
    fn descriptor(&self, slot: usize) -> AdvancedTxDescriptor {
        let lengths = u64::from(self.l3_length) & 0x1FF
            | (u64::from(self.l2_length) & 0x7F) << tx_bits::MACLEN_SHIFT;
        let mut command = tx_bits::DTYP_CONTEXT | tx_bits::DEXT;
        if self.ipv4 {
            command |= tx_bits::TUCMD_IPV4;
        }
        if self.l4 == Some(TxL4Checksum::Tcp) {
            command |= tx_bits::TUCMD_L4T_TCP;
        }
        let mut mss_l4len_idx = (slot as u32) << tx_bits::CONTEXT_IDX_SHIFT;
        if let Some(segmentation) = self.segmentation {
            mss_l4len_idx |= u32::from(segmentation.l4_length) << tx_bits::L4LEN_SHIFT
                | u32::from(segmentation.mss) << tx_bits::MSS_SHIFT;
        }
        AdvancedTxDescriptor {
            buffer_address: lengths,
            command_type_length: command,
            offload_status: mss_l4len_idx,
        }
    }
}

/// One queue pair's RX and TX rings, driven by one core through [`QueueDatapath`].
pub struct DescriptorQueue<R: RegisterAccess> {
    id: QueueId,
    registers: R,
    offsets: QueueRegisters,
    size: u16,
    rx_ring: NonNull<AdvancedRxDescriptor>,
    tx_ring: NonNull<AdvancedTxDescriptor>,
    /// Per RX slot: the posted buffer id, or `EMPTY_SLOT`.
    rx_slots: NonNull<u64>,
    /// Per TX slot: buffer id (low 32 bits) and frame length (bits 47:32), or `EMPTY_SLOT`.
    tx_slots: NonNull<u64>,
    rx_clean: u16,
    rx_next: u16,
    rx_posted: u16,
    tx_clean: u16,
    tx_next: u16,
    tx_in_flight: u16,
    /// Set while dropping the rest of a frame that spilled over several descriptors.
    rx_discarding: bool,
    stats: QueueStats,
    /// Drops read from the clear-on-read counter so far (`stats(&self)` reads the register).
    rx_drops: Cell<u64>,
    /// Missed packets read from the device's MPC so far (queue 0 only).
    rx_missed: Cell<u64>,
    /// The transmit contexts loaded in the device's two slots.
    tx_contexts: [Option<TxContext>; 2],
}

// SAFETY: a `DescriptorQueue` owns its rings and slots exclusively (they come from a
// `QueueMemory`, itself from `&'static mut` memory); moving it moves that ownership. The register
// handle `R` is `Send` by the bound. `Cell` makes it `!Sync`, which is right: one core owns it.
unsafe impl<R: RegisterAccess + Send> Send for DescriptorQueue<R> {}

impl<R: RegisterAccess> DescriptorQueue<R> {
    /// Builds the queue over `memory`. The device side (ring base/length registers, enabling the
    /// queue) is the driver's job; this only manages descriptors, buffers and the two tails.
    pub fn new(id: QueueId, registers: R, offsets: QueueRegisters, memory: QueueMemory) -> Self {
        let size = memory.ring_size;
        let n = usize::from(size);
        let base = memory.virtual_base;
        // The region layout is documented on `QueueMemory`: RX ring, TX ring, RX slots, TX slots.
        let at = |bytes: usize| {
            NonNull::new(base.as_ptr().wrapping_add(bytes)).expect("inside a non-null region")
        };
        let rx_ring = base.cast::<AdvancedRxDescriptor>();
        let tx_ring = at(16 * n).cast::<AdvancedTxDescriptor>();
        let rx_slots = at(32 * n).cast::<u64>();
        let tx_slots = at(40 * n).cast::<u64>();
        let queue = Self {
            id,
            registers,
            offsets,
            size,
            rx_ring,
            tx_ring,
            rx_slots,
            tx_slots,
            rx_clean: 0,
            rx_next: 0,
            rx_posted: 0,
            tx_clean: 0,
            tx_next: 0,
            tx_in_flight: 0,
            rx_discarding: false,
            stats: QueueStats::default(),
            rx_drops: Cell::new(0),
            rx_missed: Cell::new(0),
            tx_contexts: [None; 2],
        };
        for index in 0..size {
            queue.set_rx_slot(index, EMPTY_SLOT);
            queue.set_tx_slot(index, EMPTY_SLOT);
        }
        queue
    }

    /// Descriptors per ring.
    pub fn ring_size(&self) -> u16 {
        self.size
    }

    /// RX descriptors now posted to the device.
    pub fn rx_posted(&self) -> u16 {
        self.rx_posted
    }

    /// TX descriptors now owned by the device.
    pub fn tx_in_flight(&self) -> u16 {
        self.tx_in_flight
    }

    /// The software RX indices `(clean, next)`; `next` is the last value written to the tail.
    pub fn rx_indices(&self) -> (u16, u16) {
        (self.rx_clean, self.rx_next)
    }

    /// The software TX indices `(clean, next)`.
    pub fn tx_indices(&self) -> (u16, u16) {
        (self.tx_clean, self.tx_next)
    }

    fn wrap(&self, index: u16) -> u16 {
        if index + 1 == self.size {
            0
        } else {
            index + 1
        }
    }

    fn read_rx(&self, index: u16) -> AdvancedRxDescriptor {
        debug_assert!(index < self.size);
        // SAFETY: `index < size`, so the descriptor lies in the RX ring of the `QueueMemory` this
        // queue owns; the pointer is 16-aligned (128-aligned base, 16-byte stride). Volatile: the
        // device writes it by DMA.
        unsafe {
            self.rx_ring
                .as_ptr()
                .add(usize::from(index))
                .read_volatile()
        }
    }

    fn write_rx(&self, index: u16, descriptor: AdvancedRxDescriptor) {
        debug_assert!(index < self.size);
        // SAFETY: as in `read_rx`; software owns this descriptor (it is outside `[clean, next)`).
        unsafe {
            self.rx_ring
                .as_ptr()
                .add(usize::from(index))
                .write_volatile(descriptor)
        }
    }

    fn read_tx(&self, index: u16) -> AdvancedTxDescriptor {
        debug_assert!(index < self.size);
        // SAFETY: as in `read_rx`, for the TX ring.
        unsafe {
            self.tx_ring
                .as_ptr()
                .add(usize::from(index))
                .read_volatile()
        }
    }

    fn write_tx(&self, index: u16, descriptor: AdvancedTxDescriptor) {
        debug_assert!(index < self.size);
        // SAFETY: as in `write_rx`, for the TX ring.
        unsafe {
            self.tx_ring
                .as_ptr()
                .add(usize::from(index))
                .write_volatile(descriptor)
        }
    }

    fn rx_slot(&self, index: u16) -> u64 {
        // SAFETY: the RX slot array has `size` entries in the owned region, 8-aligned; only this
        // queue touches it (the device never sees the slots).
        unsafe { self.rx_slots.as_ptr().add(usize::from(index)).read() }
    }

    fn set_rx_slot(&self, index: u16, value: u64) {
        // SAFETY: as in `rx_slot`.
        unsafe { self.rx_slots.as_ptr().add(usize::from(index)).write(value) }
    }

    fn tx_slot(&self, index: u16) -> u64 {
        // SAFETY: as in `rx_slot`, for the TX slot array.
        unsafe { self.tx_slots.as_ptr().add(usize::from(index)).read() }
    }

    /// Whether the packet whose first data descriptor is at `index` was sent (its last
    /// descriptor's DD), and how many descriptors it has; `None` if its descriptors are not all
    /// in flight (cannot happen: packets are posted whole).
    fn packet_done(&self, index: u16) -> Option<(bool, u16)> {
        let mut last = index;
        let mut descriptors = 1;
        while self.tx_slot(last) & CONTINUES != 0 && self.tx_slot(last) < CONTEXT_SLOT {
            last = self.wrap(last);
            descriptors += 1;
            if descriptors > self.tx_in_flight {
                return None;
            }
        }
        let done = self.read_tx(last).offload_status & tx_bits::DD != 0;
        Some((done, descriptors))
    }

    fn set_tx_slot(&self, index: u16, value: u64) {
        // SAFETY: as in `rx_slot`, for the TX slot array.
        unsafe { self.tx_slots.as_ptr().add(usize::from(index)).write(value) }
    }

    /// Host only (tests and benchmarks): plays a device that completes the next `count` posted RX
    /// descriptors with `length`-byte frames (descriptor write-back only, no data copy) and every
    /// in-flight TX descriptor. Returns the RX descriptors completed.
    #[cfg(any(test, feature = "std"))]
    pub fn emulate_device(&mut self, count: u16, length: u16) -> u16 {
        let mut index = self.rx_clean;
        let mut done = 0;
        while done < count.min(self.rx_posted) {
            self.write_rx(
                index,
                AdvancedRxDescriptor {
                    first: 0x9E37_79B9 << 32,
                    second: u64::from(length) << 32 | u64::from(rx_status::DD | rx_status::EOP),
                },
            );
            index = self.wrap(index);
            done += 1;
        }
        let mut index = self.tx_clean;
        for _ in 0..self.tx_in_flight {
            let mut descriptor = self.read_tx(index);
            // Only data descriptors asking for a report (RS) are written back.
            if descriptor.command_type_length & tx_bits::RS != 0 {
                descriptor.offload_status |= tx_bits::DD;
                self.write_tx(index, descriptor);
            }
            index = self.wrap(index);
        }
        done
    }

    /// Gives back every buffer still posted or in flight to `pool` (queue teardown). The device
    /// must already be stopped (queue disabled), or it may still DMA into them.
    pub fn release_buffers(&mut self, pool: &mut BufferPool) -> usize {
        let mut released = 0;
        for index in 0..self.size {
            for (slot, set) in [
                (
                    self.rx_slot(index),
                    Self::set_rx_slot as fn(&Self, u16, u64),
                ),
                (
                    self.tx_slot(index),
                    Self::set_tx_slot as fn(&Self, u16, u64),
                ),
            ] {
                if slot == CONTEXT_SLOT {
                    set(self, index, EMPTY_SLOT);
                } else if slot != EMPTY_SLOT {
                    let _ = pool.free(BufferId(slot as u32));
                    set(self, index, EMPTY_SLOT);
                    released += 1;
                }
            }
        }
        self.rx_posted = 0;
        self.tx_in_flight = 0;
        self.rx_clean = self.rx_next;
        self.tx_clean = self.tx_next;
        self.tx_contexts = [None; 2];
        released
    }
}

impl<R: RegisterAccess> QueueDatapath for DescriptorQueue<R> {
    fn queue(&self) -> QueueId {
        self.id
    }

    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        let mut received = 0;
        // Bounded twice: by the batch's room and by the number of posted descriptors.
        while batch.len() < batch.capacity() && self.rx_posted > 0 {
            let descriptor = self.read_rx(self.rx_clean);
            let status_error = descriptor.second as u32;
            if status_error & rx_status::DD == 0 {
                break;
            }
            DmaFence::consume();
            let descriptor = self.read_rx(self.rx_clean);
            let status_error = descriptor.second as u32;
            let length = (descriptor.second >> 32) as u16;
            let slot = self.rx_slot(self.rx_clean);
            self.set_rx_slot(self.rx_clean, EMPTY_SLOT);
            self.rx_clean = self.wrap(self.rx_clean);
            self.rx_posted -= 1;
            let buffer = BufferId(slot as u32);
            let end_of_packet = status_error & rx_status::EOP != 0;
            // A frame larger than one buffer (cannot happen with 2 KiB buffers and long packets
            // off, but a device may still do it): drop all of its descriptors, count one error.
            let discard =
                self.rx_discarding || !end_of_packet || status_error & rx_status::RXE != 0;
            if discard {
                let _ = pool.free(buffer);
                if !self.rx_discarding {
                    self.stats.rx_errors += 1;
                }
                self.rx_discarding = !end_of_packet;
                continue;
            }
            let frame = ReceivedFrame {
                buffer,
                length,
                rss_hash: (descriptor.first >> 32) as u32,
                checksum: checksum_status(status_error),
            };
            // Cannot fail: the loop condition checked the room.
            let _ = batch.push(frame);
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += u64::from(length);
            received += 1;
        }
        received
    }

    fn refill(&mut self, pool: &mut BufferPool) -> usize {
        let mut posted = 0;
        while self.rx_posted < self.size - 1 {
            let Some(buffer) = pool.alloc() else { break };
            let Ok(address) = pool.physical_address(buffer) else {
                let _ = pool.free(buffer);
                break;
            };
            self.write_rx(
                self.rx_next,
                AdvancedRxDescriptor {
                    first: address,
                    second: 0,
                },
            );
            self.set_rx_slot(self.rx_next, u64::from(buffer.0));
            self.rx_next = self.wrap(self.rx_next);
            self.rx_posted += 1;
            posted += 1;
        }
        if posted > 0 {
            DmaFence::publish();
            self.registers
                .write32(self.offsets.rx_tail, u32::from(self.rx_next));
        }
        posted
    }

    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        let mut accepted = 0;
        while accepted < frames.len() {
            // One packet: its frames up to the first without `more` (a packet whose end is not
            // in this call is not taken).
            let Some(last) = frames[accepted..].iter().position(|frame| !frame.more) else {
                break;
            };
            let packet = &frames[accepted..=accepted + last];
            let first = &packet[0];
            let segmentation = first
                .segmentation
                .filter(|_| self.offsets.tx_tcp_segmentation);
            let offload = (self.offsets.tx_checksum_offload && first.checksum.is_requested())
                || segmentation.is_some();
            let context = offload.then(|| TxContext::of(&first.checksum, segmentation));
            let load = context.filter(|context| self.tx_contexts[context.slot()] != Some(*context));
            let needed = packet.len() as u16 + u16::from(load.is_some());
            if self.tx_in_flight + needed > self.size - 1 {
                self.stats.tx_ring_full += (frames.len() - accepted) as u64;
                break;
            }
            if packet
                .iter()
                .any(|frame| pool.physical_address(frame.buffer).is_err())
            {
                break;
            }
            // A context the device does not hold yet goes first, in a descriptor of its own
            // (no buffer; it is done when the packet after it is).
            if let Some(context) = load {
                let slot = context.slot();
                self.write_tx(self.tx_next, context.descriptor(slot));
                self.set_tx_slot(self.tx_next, CONTEXT_SLOT);
                self.tx_next = self.wrap(self.tx_next);
                self.tx_in_flight += 1;
                self.tx_contexts[slot] = Some(context);
            }
            let total: u32 = packet.iter().map(|frame| u32::from(frame.length)).sum();
            // PAYLEN: the whole packet, or with segmentation the TCP payload alone.
            let payload = match (segmentation, context) {
                (Some(segmentation), Some(context)) => total.saturating_sub(
                    u32::from(context.l2_length)
                        + u32::from(context.l3_length)
                        + u32::from(segmentation.l4_length),
                ),
                _ => total,
            };
            let mut offload_status = payload << tx_bits::PAYLEN_SHIFT;
            if let Some(context) = context {
                offload_status |= (context.slot() as u32) << tx_bits::IDX_SHIFT;
                if self.offsets.tx_check_context {
                    offload_status |= tx_bits::CHECK_CONTEXT;
                }
                if first.checksum.ipv4_header || segmentation.is_some() {
                    offload_status |= tx_bits::POPTS_IXSM;
                }
                if first.checksum.l4.is_some() || segmentation.is_some() {
                    offload_status |= tx_bits::POPTS_TXSM;
                }
            }
            for (index, frame) in packet.iter().enumerate() {
                let end = index + 1 == packet.len();
                let mut command =
                    u32::from(frame.length) | tx_bits::DTYP_DATA | tx_bits::IFCS | tx_bits::DEXT;
                if end {
                    command |= tx_bits::EOP | tx_bits::RS;
                }
                if segmentation.is_some() {
                    command |= tx_bits::TSE;
                }
                let address = pool.physical_address(frame.buffer).unwrap_or(0);
                self.write_tx(
                    self.tx_next,
                    AdvancedTxDescriptor {
                        buffer_address: address,
                        command_type_length: command,
                        offload_status,
                    },
                );
                let continues = if end { 0 } else { CONTINUES };
                self.set_tx_slot(
                    self.tx_next,
                    u64::from(frame.buffer.0) | u64::from(frame.length) << 32 | continues,
                );
                self.tx_next = self.wrap(self.tx_next);
                self.tx_in_flight += 1;
            }
            accepted += packet.len();
        }
        if accepted > 0 {
            DmaFence::publish();
            self.registers
                .write32(self.offsets.tx_tail, u32::from(self.tx_next));
        }
        accepted
    }

    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        let mut reclaimed = 0;
        while self.tx_in_flight > 0 {
            // A context descriptor is never written back: it is done once the packet after it
            // is.
            if self.tx_slot(self.tx_clean) == CONTEXT_SLOT {
                let data = self.wrap(self.tx_clean);
                if self.tx_in_flight < 2 || !self.packet_done(data).is_some_and(|(done, _)| done) {
                    break;
                }
                self.set_tx_slot(self.tx_clean, EMPTY_SLOT);
                self.tx_clean = data;
                self.tx_in_flight -= 1;
                continue;
            }
            let Some((true, descriptors)) = self.packet_done(self.tx_clean) else {
                break;
            };
            DmaFence::consume();
            for _ in 0..descriptors {
                let slot = self.tx_slot(self.tx_clean);
                self.set_tx_slot(self.tx_clean, EMPTY_SLOT);
                let _ = pool.free(BufferId(slot as u32));
                self.stats.tx_bytes += (slot >> 32) & 0xFFFF;
                self.tx_clean = self.wrap(self.tx_clean);
                self.tx_in_flight -= 1;
                reclaimed += 1;
            }
            self.stats.tx_packets += 1;
        }
        reclaimed
    }

    fn stats(&self) -> QueueStats {
        if let Some(counter) = self.offsets.rx_drop_counter {
            self.rx_drops
                .set(self.rx_drops.get() + u64::from(self.registers.read32(counter)));
        }
        if let Some(counter) = self.offsets.missed_packets_counter {
            self.rx_missed
                .set(self.rx_missed.get() + u64::from(self.registers.read32(counter)));
        }
        QueueStats {
            rx_no_descriptor: self.rx_drops.get(),
            rx_missed: self.rx_missed.get(),
            ..self.stats
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        let offload = self.offsets.tx_checksum_offload;
        QueueCapabilities {
            tx_checksum_ipv4: offload,
            tx_checksum_udp: offload,
            tx_checksum_tcp: offload,
            tx_tcp_segmentation: offload && self.offsets.tx_tcp_segmentation,
        }
    }

    fn receive_pending(&self) -> bool {
        self.rx_posted > 0 && self.read_rx(self.rx_clean).second as u32 & rx_status::DD != 0
    }

    fn set_interrupt(&mut self, enabled: bool) {
        if let Some(bit) = self.offsets.interrupt_bit {
            let register = if enabled {
                self.offsets.interrupt_mask_set
            } else {
                self.offsets.interrupt_mask_clear
            };
            self.registers.write32(register, 1 << bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::vec::Vec;

    /// Records register writes; a drop counter reads as 2 (clear on read is not modelled).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, u32)>>);

    impl RegisterAccess for Recorder {
        fn read32(&self, offset: usize) -> u32 {
            if offset == 0x30 {
                2
            } else {
                0
            }
        }
        fn write32(&self, offset: usize, value: u32) {
            self.0.lock().unwrap().push((offset, value));
        }
    }

    const OFFSETS: QueueRegisters = QueueRegisters {
        rx_tail: 0x18,
        tx_tail: 0x28,
        rx_drop_counter: Some(0x30),
        interrupt_mask_set: 0x40,
        interrupt_mask_clear: 0x44,
        interrupt_bit: Some(3),
        missed_packets_counter: None,
        tx_checksum_offload: true,
        tx_check_context: false,
        tx_tcp_segmentation: true,
    };

    fn queue(size: u16) -> DescriptorQueue<Recorder> {
        DescriptorQueue::new(
            QueueId(0),
            Recorder::default(),
            OFFSETS,
            QueueMemory::new_host(size).unwrap(),
        )
    }

    /// Plays the device: writes back RX descriptor `index` as a complete frame.
    fn complete_rx(queue: &DescriptorQueue<Recorder>, index: u16, length: u16, status: u32) {
        queue.write_rx(
            index,
            AdvancedRxDescriptor {
                first: 0x1234_5678 << 32,
                second: u64::from(length) << 32 | u64::from(status | rx_status::DD),
            },
        );
    }

    #[test]
    fn refill_posts_n_minus_one_and_moves_the_tail() {
        let mut pool = BufferPool::new_host(64);
        let mut q = queue(8);
        assert_eq!(q.refill(&mut pool), 7);
        assert_eq!(q.rx_indices(), (0, 7));
        assert_eq!(q.refill(&mut pool), 0, "full ring posts nothing");
        assert_eq!(*q.registers.0.lock().unwrap(), [(0x18, 7)]);
        // Each posted descriptor carries its buffer's physical address.
        let address = pool
            .physical_address(BufferId(q.rx_slot(3) as u32))
            .unwrap();
        assert_eq!(q.read_rx(3).first, address);
    }

    #[test]
    fn receive_wraps_around_and_reports_hash_length_checksum() {
        let mut pool = BufferPool::new_host(64);
        let mut q = queue(8);
        let mut batch = ReceiveBatch::new();
        let mut seen = 0u32;
        // Three laps of the ring, 5 frames at a time.
        for _ in 0..5 {
            q.refill(&mut pool);
            let (clean, _) = q.rx_indices();
            for k in 0..5u16 {
                complete_rx(
                    &q,
                    (clean + k) % 8,
                    60 + k,
                    rx_status::EOP | rx_status::IPCS | rx_status::L4CS,
                );
            }
            batch.clear();
            assert!(q.receive_pending(), "a completed descriptor is pending");
            assert_eq!(q.receive(&mut pool, &mut batch), 5);
            assert!(
                !q.receive_pending(),
                "nothing pending once the ring is drained"
            );
            for frame in &batch {
                assert_eq!(frame.rss_hash, 0x1234_5678);
                assert!(frame.checksum.ipv4_ok && frame.checksum.l4_ok && !frame.checksum.error);
                pool.free(frame.buffer).unwrap();
                seen += 1;
            }
        }
        assert_eq!(seen, 25);
        assert_eq!(q.rx_indices().0, 25 % 8);
        assert_eq!(q.stats().rx_packets, 25);
        assert_eq!(pool.available(), 64 - usize::from(q.rx_posted()));
    }

    #[test]
    fn receive_stops_at_batch_capacity_and_at_undone_descriptors() {
        let mut pool = BufferPool::new_host(300);
        let mut q = queue(256);
        q.refill(&mut pool);
        for index in 0..100 {
            complete_rx(&q, index, 64, rx_status::EOP);
        }
        let mut batch = ReceiveBatch::new();
        assert_eq!(q.receive(&mut pool, &mut batch), crate::nic::MAX_BATCH);
        batch.clear();
        assert_eq!(
            q.receive(&mut pool, &mut batch),
            100 - crate::nic::MAX_BATCH
        );
        batch.clear();
        assert_eq!(q.receive(&mut pool, &mut batch), 0);
    }

    #[test]
    fn multi_descriptor_and_errored_frames_are_dropped_and_counted() {
        let mut pool = BufferPool::new_host(16);
        let mut q = queue(8);
        q.refill(&mut pool);
        complete_rx(&q, 0, 2048, 0); // no EOP: first part of an oversized frame
        complete_rx(&q, 1, 100, rx_status::EOP); // its last part
        complete_rx(&q, 2, 64, rx_status::EOP | rx_status::RXE);
        complete_rx(&q, 3, 64, rx_status::EOP | rx_status::IPCS | rx_status::IPE);
        let mut batch = ReceiveBatch::new();
        assert_eq!(q.receive(&mut pool, &mut batch), 1);
        assert!(batch[0].checksum.error && !batch[0].checksum.ipv4_ok);
        assert_eq!(q.stats().rx_errors, 2);
        // Dropped buffers went back to the pool: 16 - 7 posted + 3 freed.
        assert_eq!(pool.available(), 16 - 7 + 3);
    }

    #[test]
    fn transmit_reclaim_and_ring_full() {
        let mut pool = BufferPool::new_host(32);
        let mut q = queue(8);
        let frames: Vec<TransmitFrame> = (0..10)
            .map(|i| TransmitFrame::new(pool.alloc().unwrap(), 60 + i))
            .collect();
        assert_eq!(q.transmit(&mut pool, &frames), 7);
        assert_eq!(q.stats().tx_ring_full, 3);
        let d = q.read_tx(2);
        assert_eq!(d.command_type_length & 0xFFFF, 62);
        assert_eq!(d.offload_status >> tx_bits::PAYLEN_SHIFT, 62);
        assert_ne!(d.command_type_length & tx_bits::RS, 0);
        assert_eq!(q.reclaim(&mut pool), 0, "nothing done yet");
        for index in 0..4 {
            let mut d = q.read_tx(index);
            d.offload_status |= tx_bits::DD;
            q.write_tx(index, d);
        }
        assert_eq!(q.reclaim(&mut pool), 4);
        let stats = q.stats();
        assert_eq!((stats.tx_packets, stats.tx_bytes), (4, 60 + 61 + 62 + 63));
        // The tail wraps: 3 more accepted into the freed slots (7, 0, 1 ... ).
        assert_eq!(q.transmit(&mut pool, &frames[7..]), 3);
        assert_eq!(q.tx_indices(), (4, (7 + 3) % 8));
        let writes = q.registers.0.lock().unwrap().clone();
        assert_eq!(writes, [(0x28, 7), (0x28, 2)]);
    }

    #[test]
    fn offloaded_frames_load_contexts_once_and_reclaim_steps_over_them() {
        use crate::nic::{TxChecksum, TxL4Checksum};
        let mut pool = BufferPool::new_host(32);
        let mut q = queue(8);
        let offload = |l4| TxChecksum {
            ipv4_header: true,
            l4: Some(l4),
            l2_length: 14,
            l3_length: 20,
        };
        let frame = |pool: &mut BufferPool, l4| TransmitFrame {
            checksum: offload(l4),
            ..TransmitFrame::new(pool.alloc().unwrap(), 60)
        };
        // UDP (context + data), UDP (data), TCP (context + data): 5 descriptors for 3 frames.
        let frames = [
            frame(&mut pool, TxL4Checksum::Udp),
            frame(&mut pool, TxL4Checksum::Udp),
            frame(&mut pool, TxL4Checksum::Tcp),
        ];
        assert_eq!(q.transmit(&mut pool, &frames), 3);
        assert_eq!(q.tx_in_flight(), 5);
        let context = q.read_tx(0);
        assert_eq!(
            context.command_type_length & tx_bits::DTYP_MASK,
            tx_bits::DTYP_CONTEXT
        );
        assert_eq!(context.buffer_address, 20 | 14 << tx_bits::MACLEN_SHIFT);
        assert_eq!(
            context.command_type_length & tx_bits::RS,
            0,
            "never written back"
        );
        let data = q.read_tx(1);
        assert_ne!(data.offload_status & tx_bits::POPTS_TXSM, 0);
        assert_ne!(data.offload_status & tx_bits::POPTS_IXSM, 0);
        assert_eq!(data.offload_status >> tx_bits::PAYLEN_SHIFT, 60);
        assert_eq!(
            (q.read_tx(4).offload_status >> tx_bits::IDX_SHIFT) & 1,
            1,
            "TCP: slot 1"
        );
        // Only 2 descriptors left (8 - 1 - 5): a UDP frame fits (its context is loaded), then a
        // TCP one does, and nothing more.
        let more = [
            frame(&mut pool, TxL4Checksum::Udp),
            frame(&mut pool, TxL4Checksum::Tcp),
            frame(&mut pool, TxL4Checksum::Udp),
        ];
        assert_eq!(q.transmit(&mut pool, &more), 2);
        assert_eq!(q.stats().tx_ring_full, 1);
        // The device completes the first two frames only: reclaim frees them (stepping over the
        // context), stops at the TCP context whose data descriptor is not done.
        for index in [1u16, 2] {
            let mut d = q.read_tx(index);
            d.offload_status |= tx_bits::DD;
            q.write_tx(index, d);
        }
        assert_eq!(q.reclaim(&mut pool), 2);
        assert_eq!(q.tx_indices().0, 3);
        q.emulate_device(0, 0);
        assert_eq!(q.reclaim(&mut pool), 3);
        assert_eq!(q.tx_in_flight(), 0);
        assert_eq!(
            pool.available(),
            32 - 1,
            "one frame was refused and is still ours"
        );
        // Teardown frees the buffers in flight (context slots hold none).
        let last = frame(&mut pool, TxL4Checksum::Udp);
        let _ = more[2];
        assert_eq!(q.transmit(&mut pool, &[last]), 1);
        assert_eq!(q.release_buffers(&mut pool), 1);
    }

    #[test]
    fn interrupt_mask_and_drop_counter() {
        let mut q = queue(8);
        q.set_interrupt(true);
        q.set_interrupt(false);
        assert_eq!(*q.registers.0.lock().unwrap(), [(0x40, 8), (0x44, 8)]);
        assert_eq!(q.stats().rx_no_descriptor, 2);
        assert_eq!(
            q.stats().rx_no_descriptor,
            4,
            "clear-on-read counter accumulates"
        );
        let mut pool = BufferPool::new_host(8);
        q.refill(&mut pool);
        assert_eq!(q.release_buffers(&mut pool), 7);
        assert_eq!(pool.available(), 8);
    }
}
