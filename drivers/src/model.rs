//! Host-only register-level model of an Intel advanced-descriptor NIC (82576 or 82599 layout),
//! used to test the drivers without hardware: it keeps a register file and a log of every
//! register write, does RSS (the crate's Toeplitz, the RETA rule) and optional five-tuple filters,
//! "DMAs" received frames into posted buffers and writes descriptors back, and fetches transmitted
//! frames from the TX ring when the tail moves, as QEMU's igb model does.
//!
//! Host "physical" addresses are virtual addresses (`QueueMemory::new_host`,
//! `BufferPool::new_host`), so the model reads and writes ring and buffer memory directly.
//!
//! It is shared (`Arc<Mutex<_>>`) so the driver's control object and each queue hold a clone.
extern crate std;

use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use crate::frame;
use crate::nic::{HashTypes, QueueId, TxChecksum, TxL4Checksum};
use crate::registers::RegisterAccess;
use crate::ring::{rx_status, tx_bits, AdvancedRxDescriptor, AdvancedTxDescriptor};
use crate::rss::{self, FlowTuple};

/// Where a device keeps the registers the model interprets.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Bytes of register space.
    pub size: usize,
    /// CTRL and its self-clearing reset bits.
    pub ctrl: usize,
    /// Reset bits in CTRL.
    pub ctrl_reset: u32,
    /// Reads of CTRL that still show the reset bits after a reset (models reset latency).
    pub reset_reads: u32,
    /// Registers and values the device has right after reset.
    pub reset_values: &'static [(usize, u32)],
    /// Clear-on-read registers.
    pub clear_on_read: &'static [usize],
    /// Receive enable register and bit.
    pub rx_enable: (usize, u32),
    /// Transmit enable register and bit.
    pub tx_enable: (usize, u32),
    /// Receive queue register block base and stride.
    pub rx_block: (usize, usize),
    /// Transmit queue register block base and stride.
    pub tx_block: (usize, usize),
    /// Offset of SRRCTL inside the RX block.
    pub srrctl_in_block: usize,
    /// Per-queue drop counter base and stride.
    pub drop_counter: (usize, usize),
    /// MRQC offset and the value of its enable field (bits 3:0) meaning "RSS".
    pub mrqc: (usize, u32),
    /// RXCSUM offset; RSS also needs PCSD (bit 13) when `rss_needs_pcsd`.
    pub rxcsum: usize,
    /// Whether RSS needs RXCSUM.PCSD (QEMU's igb does).
    pub rss_needs_pcsd: bool,
    /// RETA and RSSRK bases.
    pub reta: usize,
    /// RSS key base.
    pub rssrk: usize,
    /// EIMS, EIMC, EICR.
    pub interrupt: (usize, usize, usize),
    /// Five-tuple filter registers (SAQF, DAQF, SDPQF, FTQF, L34T_IMIR bases), 82599 only.
    pub five_tuple: Option<[usize; 5]>,
    /// Whether a data descriptor must set CC (bit 7 of its offload dword) for the device to use
    /// the transmit context IDX names (the 82599); without CC it sends the frame as it is.
    pub tx_context_needs_check: bool,
    /// Number of queues.
    pub queues: usize,
}

/// What happened to a frame offered to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into `queue`'s ring.
    Delivered {
        /// The queue.
        queue: QueueId,
        /// The RSS hash reported.
        hash: u32,
    },
    /// The selected queue had no free descriptor (its drop counter moved).
    NoDescriptor(QueueId),
    /// The receiver or the selected queue is disabled.
    Disabled(QueueId),
}

/// The model's state.
pub struct ModelState {
    layout: Layout,
    registers: Vec<u32>,
    /// Every register write, in order: `(offset, value)`.
    pub writes: Vec<(usize, u32)>,
    reset_reads_left: u32,
    /// Frames the device transmitted: `(queue, bytes)`.
    pub transmitted: Vec<(QueueId, Vec<u8>)>,
    /// Frames offered, and where they went.
    pub received: Vec<RxOutcome>,
    /// Transmitted frames whose checksums the device computed (transmit offload).
    pub tx_offloaded: u64,
    /// TCP segments the model cut from packets sent with TSE.
    pub tx_segmented: u64,
    /// Transmitted frames that asked for offload with a context whose lengths did not match
    /// the frame (the device computed at the wrong offsets; the model counts and skips them).
    pub tx_context_mismatches: u64,
    /// The transmit contexts loaded, per queue and slot.
    /// Per queue, the two context slots: lengths dword, type/command dword, MSS/L4LEN/IDX dword.
    tx_contexts: Vec<[Option<(u32, u32, u32)>; 2]>,
    /// MAC address loaded at reset.
    pub mac: [u8; 6],
}

/// A register-level device model, cloneable (all clones share one device).
#[derive(Clone)]
pub struct RegisterModel {
    state: Arc<Mutex<ModelState>>,
}

impl RegisterModel {
    /// A device with `layout`, in its power-on state.
    pub fn new(layout: Layout, mac: [u8; 6]) -> Self {
        let mut state = ModelState {
            layout,
            registers: std::vec![0; layout.size / 4],
            writes: Vec::new(),
            reset_reads_left: 0,
            transmitted: Vec::new(),
            received: Vec::new(),
            tx_offloaded: 0,
            tx_segmented: 0,
            tx_context_mismatches: 0,
            tx_contexts: std::vec![[None; 2]; layout.queues],
            mac,
        };
        state.reset();
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Locks the state (tests inspect `writes`, `transmitted`, registers).
    pub fn state(&self) -> MutexGuard<'_, ModelState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers a frame from the wire; returns where it went.
    pub fn receive(&self, frame: &[u8]) -> RxOutcome {
        self.state().receive(frame)
    }

    /// Takes the frames transmitted so far.
    pub fn take_transmitted(&self) -> Vec<(QueueId, Vec<u8>)> {
        std::mem::take(&mut self.state().transmitted)
    }

    /// Reads a register without side effects.
    pub fn peek(&self, offset: usize) -> u32 {
        self.state().registers[offset / 4]
    }

    /// Sets a register without side effects (to model a device that ignores or changes a field).
    pub fn poke(&self, offset: usize, value: u32) {
        self.state().registers[offset / 4] = value;
    }
}

impl RegisterAccess for RegisterModel {
    fn read32(&self, offset: usize) -> u32 {
        self.state().read(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.state().write(offset, value)
    }
}

impl ModelState {
    fn reg(&self, offset: usize) -> u32 {
        self.registers[offset / 4]
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.registers[offset / 4] = value;
    }

    fn reset(&mut self) {
        self.registers.fill(0);
        for &(offset, value) in self.layout.reset_values {
            self.set(offset, value);
        }
        self.reset_reads_left = self.layout.reset_reads;
    }

    /// Index of the queue whose register block holds `offset` at `in_block`, if any.
    fn queue_of(&self, block: (usize, usize), offset: usize, in_block: usize) -> Option<usize> {
        let (base, stride) = block;
        let relative = offset.checked_sub(base + in_block)?;
        (relative % stride == 0 && relative / stride < self.layout.queues)
            .then_some(relative / stride)
    }

    fn read(&mut self, offset: usize) -> u32 {
        assert!(
            offset.is_multiple_of(4) && offset < self.layout.size,
            "read outside BAR: {offset:#x}"
        );
        let mut value = self.reg(offset);
        if offset == self.layout.ctrl && self.reset_reads_left > 0 {
            self.reset_reads_left -= 1;
            value |= self.layout.ctrl_reset; // the reset is still in progress
        }
        let clear = self.layout.clear_on_read.contains(&offset)
            || self.queue_of(self.layout.drop_counter, offset, 0).is_some();
        if clear {
            self.set(offset, 0);
        }
        value
    }

    fn write(&mut self, offset: usize, value: u32) {
        assert!(
            offset.is_multiple_of(4) && offset < self.layout.size,
            "write outside BAR: {offset:#x}"
        );
        self.writes.push((offset, value));
        let (eims, eimc, _) = self.layout.interrupt;
        if offset == self.layout.ctrl && value & self.layout.ctrl_reset != 0 {
            self.reset();
            self.set(offset, value & !self.layout.ctrl_reset);
        } else if offset == eims {
            let now = self.reg(eims) | value;
            self.set(eims, now);
        } else if offset == eimc {
            let now = self.reg(eims) & !value;
            self.set(eims, now);
        } else if let Some(queue) = self.queue_of(self.layout.tx_block, offset, 0x18) {
            self.set(offset, value & 0xFFFF);
            self.transmit(queue);
        } else if self.queue_of(self.layout.rx_block, offset, 0x18).is_some() {
            self.set(offset, value & 0xFFFF);
        } else {
            self.set(offset, value);
        }
    }

    fn ring(&self, block: (usize, usize), queue: usize) -> (u64, u32, usize, usize) {
        let base = block.0 + block.1 * queue;
        let address = u64::from(self.reg(base)) | u64::from(self.reg(base + 4)) << 32;
        let count = self.reg(base + 8) / 16;
        (address, count, base + 0x10, base + 0x18)
    }

    fn hash_types(&self) -> HashTypes {
        let mrqc = self.reg(self.layout.mrqc.0);
        let bit = |n: u32| mrqc & (1 << n) != 0;
        HashTypes {
            tcp_ipv4: bit(16),
            ipv4: bit(17),
            // QEMU's igb hashes TCP over IPv6 only with bits 18 and 21 both set; the 82599 uses 21.
            tcp_ipv6: bit(21) && (bit(18) || self.layout.five_tuple.is_some()),
            ipv6: bit(20),
            udp_ipv4: bit(22),
            udp_ipv6: bit(23),
        }
    }

    fn rss_enabled(&self) -> bool {
        let mrqc = self.reg(self.layout.mrqc.0);
        let pcsd = self.reg(self.layout.rxcsum) & (1 << 13) != 0;
        (mrqc & 0xF) == self.layout.mrqc.1 && (pcsd || !self.layout.rss_needs_pcsd)
    }

    /// The five-tuple filter that matches, as (queue) — highest priority, then lowest index.
    fn filter_queue(&self, parsed: &frame::ParsedFrame) -> Option<usize> {
        let [saqf, daqf, sdpqf, ftqf, imir] = self.layout.five_tuple?;
        let Some(FlowTuple::V4 {
            source,
            destination,
            ports,
        }) = parsed.tuple
        else {
            return None;
        };
        let mut best: Option<(u32, usize)> = None;
        for index in 0..128 {
            let control = self.reg(ftqf + 4 * index);
            if control & (1 << 31) == 0 {
                continue;
            }
            let mask = (control >> 25) & 0x1F; // 1 = do not compare
            let protocol = match control & 3 {
                0 => frame::PROTOCOL_TCP,
                1 => frame::PROTOCOL_UDP,
                2 => 132,
                _ => 255,
            };
            let (sport, dport) = ports.unwrap_or((0, 0));
            let port_register = self.reg(sdpqf + 4 * index);
            let matches = (mask & 1 != 0
                || self.reg(saqf + 4 * index) == u32::from_le_bytes(source))
                && (mask & 2 != 0 || self.reg(daqf + 4 * index) == u32::from_le_bytes(destination))
                && (mask & 4 != 0
                    || (ports.is_some()
                        && port_register & 0xFFFF == u32::from(sport.swap_bytes())))
                && (mask & 8 != 0
                    || (ports.is_some() && port_register >> 16 == u32::from(dport.swap_bytes())))
                && (mask & 16 != 0 || parsed.protocol == protocol);
            if matches {
                let priority = (control >> 2) & 7;
                if best.is_none_or(|(p, _)| priority > p) {
                    best = Some((priority, index));
                }
            }
        }
        best.map(|(_, index)| ((self.reg(imir + 4 * index) >> 21) & 0x7F) as usize)
    }

    fn receive(&mut self, frame_bytes: &[u8]) -> RxOutcome {
        let outcome = self.receive_inner(frame_bytes);
        self.received.push(outcome);
        outcome
    }

    fn receive_inner(&mut self, frame_bytes: &[u8]) -> RxOutcome {
        let parsed = frame::parse(frame_bytes);
        let mut hash = 0u32;
        let mut rss_type = 0u32;
        let mut queue = 0usize;
        if self.rss_enabled() {
            if let Some(tuple) = parsed.and_then(|p| p.hash_tuple(self.hash_types())) {
                let mut key = [0u8; rss::KEY_LEN];
                for index in 0..10 {
                    key[4 * index..4 * index + 4]
                        .copy_from_slice(&self.reg(self.layout.rssrk + 4 * index).to_le_bytes());
                }
                hash = tuple.hash(&key);
                let group = rss::flow_group_of(hash).0 as usize;
                let entry = self.reg(self.layout.reta + 4 * (group / 4)).to_le_bytes()[group % 4];
                queue = usize::from(entry & 0xF);
                rss_type = match (tuple, parsed.map(|p| p.protocol)) {
                    (FlowTuple::V4 { ports: Some(_), .. }, Some(frame::PROTOCOL_TCP)) => 1,
                    (FlowTuple::V4 { ports: None, .. }, _) => 2,
                    (FlowTuple::V6 { ports: Some(_), .. }, Some(frame::PROTOCOL_TCP)) => 3,
                    (FlowTuple::V6 { ports: None, .. }, _) => 5,
                    (FlowTuple::V4 { .. }, _) => 7,
                    (FlowTuple::V6 { .. }, _) => 8,
                };
            }
        }
        if let Some(filtered) = parsed.as_ref().and_then(|p| self.filter_queue(p)) {
            queue = filtered;
        }
        let q = QueueId(queue as u16);
        let (enable_register, enable_bit) = self.layout.rx_enable;
        let dctl = self.layout.rx_block.0 + self.layout.rx_block.1 * queue + 0x28;
        if self.reg(enable_register) & enable_bit == 0 || self.reg(dctl) & (1 << 25) == 0 {
            return RxOutcome::Disabled(q);
        }
        let (ring, count, head_register, tail_register) = self.ring(self.layout.rx_block, queue);
        let srrctl = self.reg(
            self.layout.rx_block.0 + self.layout.rx_block.1 * queue + self.layout.srrctl_in_block,
        );
        let buffer_size = match (srrctl & 0x7F) as usize * 1024 {
            0 => 2048,
            size => size,
        };
        let needed = frame_bytes.len().div_ceil(buffer_size).max(1) as u32;
        let head = self.reg(head_register);
        let tail = self.reg(tail_register);
        let free = if count == 0 {
            0
        } else {
            (tail + count - head) % count
        };
        if free < needed {
            let counter = self.layout.drop_counter.0 + self.layout.drop_counter.1 * queue;
            let dropped = self.reg(counter) + 1;
            self.set(counter, dropped);
            return RxOutcome::NoDescriptor(q);
        }
        let status_checks = parsed
            .map(|p| p.checksum_status(frame_bytes))
            .unwrap_or_default();
        let rxcsum = self.reg(self.layout.rxcsum);
        let mut head = head;
        for (index, chunk) in frame_bytes.chunks(buffer_size).enumerate() {
            let address = ring + 16 * u64::from(head);
            let descriptor_pointer = address as *mut AdvancedRxDescriptor;
            // SAFETY: host contract of this model: ring addresses come from
            // `QueueMemory::new_host`, whose "physical" address is the exposed virtual address of
            // a live, never-freed region; `head < count` keeps the access inside the ring.
            let descriptor = unsafe { descriptor_pointer.read_volatile() };
            let buffer = descriptor.first as *mut u8;
            // SAFETY: the driver posted `buffer` from a `BufferPool::new_host` pool (exposed,
            // never-freed memory of `BUFFER_SIZE` bytes per buffer); `chunk.len() <= buffer_size`,
            // which the driver programmed as its buffer size in SRRCTL.
            unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), buffer, chunk.len()) };
            let last = (index + 1) * buffer_size >= frame_bytes.len();
            let mut status = rx_status::DD;
            if last {
                status |= rx_status::EOP;
                if rxcsum & (1 << 8) != 0
                    && parsed.is_some_and(|p| matches!(p.tuple, Some(FlowTuple::V4 { .. })))
                {
                    status |= rx_status::IPCS;
                    if !status_checks.ipv4_ok {
                        status |= rx_status::IPE;
                    }
                }
                if rxcsum & (1 << 9) != 0 && (status_checks.l4_ok || status_checks.error) {
                    status |= rx_status::L4CS;
                    if status_checks.error && (rxcsum & (1 << 8) == 0 || status_checks.ipv4_ok) {
                        status |= rx_status::L4E;
                    }
                }
            }
            let written = AdvancedRxDescriptor {
                first: u64::from(hash) << 32 | u64::from(rss_type),
                second: u64::from(chunk.len() as u16) << 32 | u64::from(status),
            };
            // SAFETY: as for the read above.
            unsafe { descriptor_pointer.write_volatile(written) };
            head = (head + 1) % count;
        }
        self.set(head_register, head);
        // Interrupt cause: this queue's bit (the model does not decode IVAR layouts).
        let eicr = self.layout.interrupt.2;
        let cause = self.reg(eicr) | 1 << (queue % 32);
        self.set(eicr, cause);
        RxOutcome::Delivered { queue: q, hash }
    }

    fn transmit(&mut self, queue: usize) {
        let (enable_register, enable_bit) = self.layout.tx_enable;
        let dctl = self.layout.tx_block.0 + self.layout.tx_block.1 * queue + 0x28;
        if self.reg(enable_register) & enable_bit == 0 || self.reg(dctl) & (1 << 25) == 0 {
            return;
        }
        let (ring, count, head_register, tail_register) = self.ring(self.layout.tx_block, queue);
        if count == 0 {
            return;
        }
        let mut head = self.reg(head_register);
        let tail = self.reg(tail_register) % count;
        let mut frame_bytes = Vec::new();
        let mut first_offload: Option<u32> = None;
        let mut first_command: Option<u32> = None;
        while head != tail {
            let pointer = (ring + 16 * u64::from(head)) as *mut AdvancedTxDescriptor;
            // SAFETY: host contract (see `receive_inner`): the TX ring is live host memory and
            // `head < count` keeps the access inside it.
            let mut descriptor = unsafe { pointer.read_volatile() };
            let command = descriptor.command_type_length;
            if command & tx_bits::DEXT != 0 && command & tx_bits::DTYP_MASK == tx_bits::DTYP_CONTEXT
            {
                // A context descriptor: remember it (lengths, TUCMD) in the slot IDX names; it
                // has no buffer and is not written back.
                let slot = ((descriptor.offload_status >> tx_bits::CONTEXT_IDX_SHIFT) & 1) as usize;
                self.tx_contexts[queue][slot] = Some((
                    descriptor.buffer_address as u32,
                    command,
                    descriptor.offload_status,
                ));
                head = (head + 1) % count;
                continue;
            }
            let length = (command & 0xFFFF) as usize;
            let mut data = std::vec![0u8; length];
            // SAFETY: the driver put a pool buffer address with `length <= BUFFER_SIZE` here.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    descriptor.buffer_address as *const u8,
                    data.as_mut_ptr(),
                    length,
                )
            };
            frame_bytes.extend_from_slice(&data);
            first_offload.get_or_insert(descriptor.offload_status);
            first_command.get_or_insert(command);
            if command & tx_bits::EOP != 0 {
                let mut frame = std::mem::take(&mut frame_bytes);
                let offload = first_offload.take();
                let segmented = first_command.take().is_some_and(|c| c & tx_bits::TSE != 0);
                let slot = offload.map_or(0, |o| ((o >> tx_bits::IDX_SHIFT) & 1) as usize);
                let mss = self.tx_contexts[queue][slot].map_or(0, |(_, _, mss_l4len)| {
                    (mss_l4len >> tx_bits::MSS_SHIFT) as usize
                });
                if segmented && mss > 0 {
                    // TCP segmentation: each segment gets its own headers and checksums.
                    let mut segment = std::vec![0u8; 1514 + 64];
                    let mut index = 0;
                    while let Some(length) = frame::tcp_segment(&frame, mss, index, &mut segment) {
                        self.transmitted
                            .push((QueueId(queue as u16), segment[..length].to_vec()));
                        self.tx_segmented += 1;
                        index += 1;
                    }
                } else {
                    if let Some(offload) = offload {
                        self.offload(queue, offload, &mut frame);
                    }
                    self.transmitted.push((QueueId(queue as u16), frame));
                }
            }
            if command & tx_bits::RS != 0 {
                descriptor.offload_status |= tx_bits::DD;
                // SAFETY: as above.
                unsafe { pointer.write_volatile(descriptor) };
            }
            head = (head + 1) % count;
        }
        self.set(head_register, head);
    }

    /// Applies the checksum offload a frame's first data descriptor asks for (POPTS.IXSM and
    /// TXSM), with the L4 type of the context its IDX names, as the 82576 and 82599 do.
    fn offload(&mut self, queue: usize, offload: u32, frame: &mut [u8]) {
        let ixsm = offload & tx_bits::POPTS_IXSM != 0;
        let txsm = offload & tx_bits::POPTS_TXSM != 0;
        if !ixsm && !txsm {
            return;
        }
        if self.layout.tx_context_needs_check && offload & tx_bits::CHECK_CONTEXT == 0 {
            return;
        }
        let slot = ((offload >> tx_bits::IDX_SHIFT) & 1) as usize;
        let Some((lengths, command, _)) = self.tx_contexts[queue][slot] else {
            return;
        };
        let l3_length = (lengths & 0x1FF) as u8;
        let l2_length = ((lengths >> tx_bits::MACLEN_SHIFT) & 0x7F) as u8;
        if frame::header_lengths(frame) != Some((l2_length, l3_length)) {
            self.tx_context_mismatches += 1;
            return;
        }
        let l4 = txsm.then_some(if command & tx_bits::TUCMD_L4T_TCP != 0 {
            TxL4Checksum::Tcp
        } else {
            TxL4Checksum::Udp
        });
        let applied = frame::apply_tx_checksums(
            frame,
            TxChecksum {
                ipv4_header: ixsm,
                l4,
                l2_length,
                l3_length,
            },
        );
        if applied.ipv4_header || applied.l4 {
            self.tx_offloaded += 1;
        }
    }

    /// Reads a register without side effects.
    pub fn register(&self, offset: usize) -> u32 {
        self.reg(offset)
    }

    /// Position of the first write of `value` to `offset` in the write log.
    pub fn first_write(&self, offset: usize, value: u32) -> Option<usize> {
        self.writes.iter().position(|&w| w == (offset, value))
    }

    /// Position of the first write to `offset` whose value has all bits of `mask`.
    pub fn first_write_with(&self, offset: usize, mask: u32) -> Option<usize> {
        self.writes
            .iter()
            .position(|&(o, v)| o == offset && v & mask == mask)
    }
}

/// Host tests shared by the 82576 and 82599 models: transmit checksum offload through the
/// driver's context descriptors, checked against the model's device-side computation.
#[cfg(test)]
pub(crate) mod offload_check {
    use super::RegisterModel;
    use crate::frame::build_udp_ipv4;
    use crate::nic::{QueueDatapath, TransmitFrame, TxChecksum, TxL4Checksum};
    use crate::pool::BufferPool;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use std::vec::Vec;

    fn udp(port: u16) -> Vec<u8> {
        let mut out = std::vec![0u8; 128];
        let n = build_udp_ipv4(
            &mut out,
            [2; 6],
            [4; 6],
            ([10, 0, 0, 2], 7),
            ([10, 0, 0, 1], port),
            b"offloaded datagram",
        );
        out.truncate(n);
        out
    }

    fn tcp(port: u16) -> Vec<u8> {
        tcp_with(port, b"offloaded segment", TcpControl::Psh)
    }

    /// A TCP/IPv4 frame to `port` carrying `payload`, with `control`, checksums right.
    pub(crate) fn tcp_with(port: u16, payload: &[u8], control: TcpControl) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: port,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(2000)),
            window_len: 4096,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let (source, destination) = (Ipv4Address::new(10, 0, 0, 2), Ipv4Address::new(10, 0, 0, 1));
        let ip = Ipv4Repr {
            src_addr: source,
            dst_addr: destination,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let ethernet = EthernetRepr {
            src_addr: EthernetAddress([2; 6]),
            dst_addr: EthernetAddress([4; 6]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut out = std::vec![0u8; 14 + 20 + tcp.buffer_len()];
        let checksums = ChecksumCapabilities::default();
        let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
        ethernet.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &checksums);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::Ipv4(source),
            &IpAddress::Ipv4(destination),
            &checksums,
        );
        out
    }

    /// Spoils the checksums a NIC is asked to compute: IPv4 header to 0, L4 to a seed.
    fn spoiled(good: &[u8]) -> Vec<u8> {
        let mut frame = good.to_vec();
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
        ip.set_checksum(0);
        let protocol = ip.next_header();
        let payload = ip.payload_mut();
        let at = if protocol == IpProtocol::Tcp { 16 } else { 6 };
        payload[at..at + 2].copy_from_slice(&[0xAB, 0xCD]);
        frame
    }

    /// Sends UDP and TCP frames asking for IPv4 and L4 checksum offload through `queue` and
    /// checks that the device model sent them with correct checksums, with one context
    /// descriptor per kind (reused), and that every buffer comes back.
    pub(crate) fn transmit_offload_is_honoured(
        model: &RegisterModel,
        queue: &mut impl QueueDatapath,
    ) {
        assert!(queue.capabilities().tx_checksum_udp && queue.capabilities().tx_checksum_tcp);
        let mut pool = BufferPool::new_host(32);
        let goods: Vec<(Vec<u8>, TxL4Checksum)> = (0..6u16)
            .map(|i| {
                if i % 3 == 2 {
                    (tcp(5000 + i), TxL4Checksum::Tcp)
                } else {
                    (udp(5000 + i), TxL4Checksum::Udp)
                }
            })
            .collect();
        let frames: Vec<TransmitFrame> = goods
            .iter()
            .map(|(good, l4)| {
                let buffer = pool.alloc().unwrap();
                let bad = spoiled(good);
                pool.bytes_mut(buffer).unwrap()[..bad.len()].copy_from_slice(&bad);
                TransmitFrame {
                    checksum: TxChecksum {
                        ipv4_header: true,
                        l4: Some(*l4),
                        l2_length: 14,
                        l3_length: 20,
                    },
                    ..TransmitFrame::new(buffer, bad.len() as u16)
                }
            })
            .collect();
        assert_eq!(queue.transmit(&mut pool, &frames), frames.len());
        let sent = model.take_transmitted();
        assert_eq!(sent.len(), goods.len());
        for ((_, bytes), (good, _)) in sent.iter().zip(goods.iter()) {
            assert_eq!(bytes, good, "the device computed both checksums");
        }
        let state = model.state();
        assert_eq!(state.tx_offloaded, goods.len() as u64);
        assert_eq!(state.tx_context_mismatches, 0);
        drop(state);
        // Context descriptors hold no buffer and are not written back: reclaim steps over them.
        assert_eq!(queue.reclaim(&mut pool), goods.len());
        assert_eq!(pool.available(), 32, "context descriptors hold no buffer");
        // A frame with no offload asked is sent as it is.
        let buffer = pool.alloc().unwrap();
        let plain = udp(6000);
        pool.bytes_mut(buffer).unwrap()[..plain.len()].copy_from_slice(&plain);
        assert_eq!(
            queue.transmit(&mut pool, &[TransmitFrame::new(buffer, plain.len() as u16)]),
            1
        );
        assert_eq!(model.take_transmitted()[0].1, plain);
        assert_eq!(model.state().tx_offloaded, goods.len() as u64);
        assert_eq!(queue.reclaim(&mut pool), 1);
    }

    /// Sends one TCP packet of 4,000 payload bytes spread over three chained buffers with TCP
    /// segmentation (MSS 1460) through `queue`: the device model must send three segments with
    /// their own headers (sequence numbers, lengths, FIN and PSH on the last only) and correct
    /// checksums, and every buffer must come back once the packet is done.
    pub(crate) fn transmit_segmentation_is_honoured(
        model: &RegisterModel,
        queue: &mut impl QueueDatapath,
    ) {
        use crate::nic::TxSegmentation;
        assert!(queue.capabilities().tx_tcp_segmentation);
        let mut pool = BufferPool::new_host(32);
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let packet = tcp_with(7000, &payload, TcpControl::Fin);
        let mut frames = Vec::new();
        for (index, chunk) in packet.chunks(1500).enumerate() {
            let buffer = pool.alloc().unwrap();
            pool.bytes_mut(buffer).unwrap()[..chunk.len()].copy_from_slice(chunk);
            let mut frame = TransmitFrame::new(buffer, chunk.len() as u16);
            frame.more = (index + 1) * 1500 < packet.len();
            if index == 0 {
                frame.checksum = TxChecksum {
                    ipv4_header: true,
                    l4: Some(TxL4Checksum::Tcp),
                    l2_length: 14,
                    l3_length: 20,
                };
                frame.segmentation = Some(TxSegmentation {
                    mss: 1460,
                    l4_length: 20,
                });
            }
            frames.push(frame);
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(queue.transmit(&mut pool, &frames), 3);
        let sent = model.take_transmitted();
        assert_eq!(sent.len(), 3, "three segments");
        let mut expected = std::vec![0u8; 1600];
        for (index, (_, bytes)) in sent.iter().enumerate() {
            let length = crate::frame::tcp_segment(&packet, 1460, index, &mut expected).unwrap();
            assert_eq!(bytes[..], expected[..length], "segment {index}");
            let ethernet = EthernetFrame::new_checked(&bytes[..]).unwrap();
            let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
            assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
            assert_eq!(tcp.fin(), index == 2, "FIN on the last segment only");
            assert_eq!(tcp.seq_number().0 as usize, 1000 + 1460 * index);
        }
        assert_eq!(model.state().tx_segmented, 3);
        assert_eq!(queue.reclaim(&mut pool), 3, "the packet's three buffers");
        assert_eq!(pool.available(), 32);
    }
}
