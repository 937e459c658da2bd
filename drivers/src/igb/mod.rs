//! Driver for the Intel 82576 (`igb`), the multi-queue NIC QEMU emulates with
//! `-M q35 -device igb`, and a real PCIe card.
//!
//! [`init`] resets the device, programs one RX and one TX queue per core (up to 16), RSS (key,
//! hash types, 128-entry redirection table), receive checksum offload, MSI-X routing (queue `i` →
//! MSI-X vector `i mod (vectors − 1)`, so queues share vectors when there are fewer vectors than
//! queues; link events → the vector after the queues') and interrupt moderation, and returns one
//! [`IgbQueue`] per queue plus one [`IgbControl`]. Each queue holds only its own rings and a
//! register handle it uses for its own tail registers and its own interrupt mask bit, so a core
//! drives its queue with no lock; the control object (RSS, redirection table, link) stays with the
//! monitor on the NIC's home core.
//!
//! Init follows the 82576 datasheet §4.5 "Software Initialization and Diagnostics" (interrupts
//! off, global reset, general configuration, receive initialization, transmit initialization),
//! with the RSS rules of §7.1.2.8 and MSI-X setup of §7.3. QEMU 10.0.2 model facts relied on are
//! listed in `docs/drivers.md`.

pub mod regs;

#[cfg(any(test, feature = "std"))]
pub mod model;

use crate::dma::{collect_queue_memory, QueueMemory, QueueMemoryMismatch};
use crate::nic::{
    FiveTupleFilter, FlowGroup, FlowMap, GroupSet, HashTypes, LinkState, NicControl, NicError,
    QueueId,
};
use crate::registers::{Delay, RegisterAccess};
use crate::ring::{DescriptorQueue, QueueRegisters};
use crate::rss::{self, RedirectionTable, KEY_LEN};
use crate::rss_control::{RssControl, RssLayout};

/// PCI vendor id of Intel.
pub const VENDOR_INTEL: u16 = 0x8086;
/// PCI device id of the 82576 copper NIC (the id QEMU's `igb` presents).
pub const DEVICE_82576: u16 = 0x10C9;
/// Queue pairs the 82576 has.
pub const MAX_QUEUES: u16 = 16;
/// MSI-X vectors QEMU's model offers (the real 82576 offers 25).
pub const QEMU_MSIX_VECTORS: u16 = 10;
/// Receive buffer size programmed into SRRCTL (one pool buffer, 2 KiB).
pub const RX_BUFFER_KIB: u32 = (crate::pool::BUFFER_SIZE / 1024) as u32;

/// Where the 82576's RSS registers are (§8.10).
const RSS_LAYOUT: RssLayout = RssLayout {
    mrqc: regs::MRQC,
    reta: regs::RETA,
    rssrk: regs::RSSRK,
};

/// One core's queue pair on an 82576.
pub type IgbQueue<R> = DescriptorQueue<R>;

/// How to bring the device up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IgbConfig {
    /// Queue pairs (one per core), 1 to 16.
    pub queues: u16,
    /// Descriptors per ring (multiple of 8); must match every `QueueMemory` given.
    pub ring_size: u16,
    /// Toeplitz key.
    pub rss_key: [u8; KEY_LEN],
    /// Hashed header fields.
    pub hash_types: HashTypes,
    /// MSI-X vectors the function offers (its MSI-X table size). One is kept for link events;
    /// queue `i` gets vector `i mod min(queues, msix_vectors - 1)` (see [`queue_vector`]).
    pub msix_vectors: u16,
    /// Interrupt moderation: minimum gap between interrupts of one vector, in µs (EITR). Use 0
    /// under QEMU 10.0.2, whose EITR timer is scaled wrongly and throttles far too long.
    pub interrupt_interval_us: u16,
}

impl IgbConfig {
    /// Defaults for `queues` queues: 256-descriptor rings, [`rss::DEFAULT_KEY`], every hash type,
    /// QEMU's 10 MSI-X vectors, no moderation.
    pub fn new(queues: u16) -> Self {
        Self {
            queues,
            ring_size: 256,
            rss_key: rss::DEFAULT_KEY,
            hash_types: HashTypes::ALL,
            msix_vectors: QEMU_MSIX_VECTORS,
            interrupt_interval_us: 0,
        }
    }
}

/// Errors of 82576 bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgbError {
    /// `queues` is 0 or above 16.
    BadQueueCount(u16),
    /// The number of `QueueMemory` regions given differs from `queues`.
    QueueMemoryCount {
        /// Regions needed.
        expected: u16,
        /// Regions given.
        given: u16,
    },
    /// A `QueueMemory` has another ring size than the config.
    RingSizeMismatch(QueueId),
    /// CTRL.RST did not clear.
    ResetTimeout,
    /// RXDCTL.ENABLE / TXDCTL.ENABLE did not read back set.
    QueueEnableTimeout(QueueId),
}

impl From<QueueMemoryMismatch> for IgbError {
    fn from(mismatch: QueueMemoryMismatch) -> Self {
        match mismatch {
            QueueMemoryMismatch::Count { expected, given } => {
                IgbError::QueueMemoryCount { expected, given }
            }
            QueueMemoryMismatch::RingSize(queue) => IgbError::RingSizeMismatch(queue),
        }
    }
}

impl From<IgbError> for NicError {
    fn from(_: IgbError) -> Self {
        NicError::DeviceTimeout
    }
}

/// Polls `register` until `(value & mask) == expected`, at most `tries` times with `step_us`
/// between reads. Every wait in the driver is bounded.
fn poll<R: RegisterAccess, D: Delay>(
    registers: &R,
    delay: &mut D,
    register: usize,
    mask: u32,
    expected: u32,
    tries: u32,
    step_us: u32,
) -> bool {
    for _ in 0..tries {
        if registers.read32(register) & mask == expected {
            return true;
        }
        delay.delay_us(step_us);
    }
    registers.read32(register) & mask == expected
}

/// The MSI-X vector of queue `queue` of `queues` under `msix_vectors` vectors, one of which is
/// kept for link events: queue `i` gets vector `i mod min(queues, msix_vectors - 1)`, so when
/// there are fewer vectors than queues (QEMU's igb offers 10 for 16 queues) several queues share
/// one vector, and the core that takes it wakes the others (the kernel forwards the wake-up by
/// IPI). `None` only when there is no vector for queues at all (fewer than 2), or `queue` is not
/// below `queues`.
pub fn queue_vector(queue: u16, queues: u16, msix_vectors: u16) -> Option<u16> {
    let shared = queues.min(msix_vectors.saturating_sub(1));
    (queue < queues && shared > 0).then(|| queue % shared)
}

/// MRQC value for `types` with RSS enabled (QEMU needs bits 18 and 21 both for TCP over IPv6).
pub fn mrqc_value(types: HashTypes) -> u32 {
    let mut value = regs::MRQC_ENABLE_RSS;
    for (on, bits) in [
        (types.tcp_ipv4, regs::MRQC_TCP_IPV4),
        (types.ipv4, regs::MRQC_IPV4),
        (types.tcp_ipv6, regs::MRQC_TCP_IPV6 | regs::MRQC_TCP_IPV6_EX),
        (types.ipv6, regs::MRQC_IPV6),
        (types.udp_ipv4, regs::MRQC_UDP_IPV4),
        (types.udp_ipv6, regs::MRQC_UDP_IPV6),
    ] {
        if on {
            value |= bits;
        }
    }
    value
}

/// Resets the 82576 behind `registers` and brings up `config.queues` queue pairs over `memory`
/// (one [`QueueMemory`] per queue, in queue order). Returns the control object and the queues,
/// queue `i` at index `i`. Queues start with empty RX rings: each owning core calls
/// [`crate::nic::QueueDatapath::refill`] with its pool, then
/// [`crate::nic::QueueDatapath::set_interrupt`]`(true)` once it is ready for interrupts.
///
/// The caller still has to route each queue's MSI-X vector to its core: program MSI-X table entry
/// [`IgbControl::queue_vector`]`(i)` with the core's APIC id (see [`crate::pci::msix`]).
pub fn init<R, D, I>(
    registers: R,
    delay: &mut D,
    config: &IgbConfig,
    memory: I,
) -> Result<(IgbControl<R>, heapless::Vec<IgbQueue<R>, 16>), IgbError>
where
    R: RegisterAccess + Clone,
    D: Delay,
    I: IntoIterator<Item = QueueMemory>,
{
    let queues = config.queues;
    if queues == 0 || queues > MAX_QUEUES {
        return Err(IgbError::BadQueueCount(queues));
    }
    let regions = collect_queue_memory(memory, queues, config.ring_size)?;
    let r = &registers;

    // §4.5.3: mask every interrupt before reset.
    r.write32(regs::IMC, u32::MAX);
    r.write32(regs::EIMC, u32::MAX);
    // §4.5.4 / §4.2: global device reset; the datasheet asks for ≥ 1 ms before the next access.
    r.write32(regs::CTRL, r.read32(regs::CTRL) | regs::CTRL_RST);
    delay.delay_us(1_000);
    if !poll(r, delay, regs::CTRL, regs::CTRL_RST, 0, 100, 100) {
        return Err(IgbError::ResetTimeout);
    }
    // §4.5.3: reset re-enables nothing, but mask again and clear pending causes, as the
    // datasheet's sequence does.
    r.write32(regs::IMC, u32::MAX);
    r.write32(regs::EIMC, u32::MAX);
    let _ = r.read32(regs::ICR);
    let _ = r.read32(regs::MPC); // clear the missed-packets counter (clear on read)
                                 // §4.5.4: wait (bounded) for the EEPROM auto-read, which loads the MAC address. Not fatal:
                                 // on timeout the MAC registers may be unset, which `IgbControl::mac_address` shows.
    let eeprom_ready = poll(
        r,
        delay,
        regs::EECD,
        regs::EECD_AUTO_RD,
        regs::EECD_AUTO_RD,
        100,
        100,
    );

    // §4.5.4 general configuration: driver loaded, link up (§4.5.6 copper link: CTRL.SLU).
    r.set_bits(regs::CTRL_EXT, regs::CTRL_EXT_DRV_LOAD);
    r.set_bits(regs::CTRL, regs::CTRL_SLU | regs::CTRL_FD | regs::CTRL_ASDE);
    // §4.5.7.2 / §8.2.4: (re)start PHY auto-negotiation through MDIC. After a global reset the
    // link stays down until the PHY negotiates; QEMU's model brings it up ~500 ms (virtual) after
    // the restart and drops every frame before that.
    r.write32(
        regs::MDIC,
        regs::MDIC_OP_WRITE
            | 1 << regs::MDIC_PHY_SHIFT
            | regs::PHY_CONTROL << regs::MDIC_REG_SHIFT
            | regs::PHY_CONTROL_AUTONEG_ENABLE
            | regs::PHY_CONTROL_AUTONEG_RESTART
            | regs::PHY_CONTROL_DEFAULTS,
    );
    let _ = poll(
        r,
        delay,
        regs::MDIC,
        regs::MDIC_READY,
        regs::MDIC_READY,
        100,
        10,
    );
    let low = r.read32(regs::RAL0).to_le_bytes();
    let high = r.read32(regs::RAH0).to_le_bytes();
    let mac = [low[0], low[1], low[2], low[3], high[0], high[1]];

    // §4.5.8 receive initialization. Receiver off while queues are set up.
    r.write32(regs::RCTL, 0);
    for index in 0..128 {
        r.write32(regs::MTA + 4 * index, 0);
    }
    for (index, region) in regions.iter().enumerate() {
        program_rx_ring(r, delay, config, index, region)?;
    }
    // §7.1.2.8 RSS: key, redirection table, hash types; RXCSUM.PCSD so the descriptor carries the
    // hash (and QEMU's model enables RSS at all).
    let control = IgbControl {
        registers: registers.clone(),
        rss: RssControl::new(queues, config.hash_types, mrqc_value, RSS_LAYOUT),
        mac,
        eeprom_ready,
        msix_vectors: config.msix_vectors,
    };
    control.rss.program(&control.registers, &config.rss_key);
    r.write32(
        regs::RXCSUM,
        regs::RXCSUM_IPOFLD | regs::RXCSUM_TUOFLD | regs::RXCSUM_PCSD,
    );
    r.write32(
        regs::RCTL,
        regs::RCTL_EN | regs::RCTL_BAM | regs::RCTL_SECRC,
    );

    // §4.5.9 transmit initialization.
    for (index, region) in regions.iter().enumerate() {
        program_tx_ring(r, delay, config, index, region)?;
    }
    r.write32(
        regs::TCTL,
        regs::TCTL_EN | regs::TCTL_PSP | regs::TCTL_CT_DEFAULT | regs::TCTL_COLD_DEFAULT,
    );

    // §7.3 MSI-X: per-vector causes, queue → vector through IVAR, auto-clear and auto-mask of
    // queue vectors (an interrupt only starts polling; the core re-enables when idle).
    r.write32(
        regs::GPIE,
        regs::GPIE_MSIX_MODE | regs::GPIE_EIAME | regs::GPIE_PBA | regs::GPIE_NSICR,
    );
    let mut queue_bits = 0u32;
    let mut ivar = [0u32; 8];
    for queue in 0..queues {
        if let Some(vector) = queue_vector(queue, queues, config.msix_vectors) {
            let entry = u32::from(vector) | regs::IVAR_VALID;
            // 82576 IVAR layout: queue n's RX entry in byte 0 (n < 8) or 2, TX in byte 1 or 3.
            let shift = if queue < 8 { 0 } else { 16 };
            ivar[usize::from(queue & 7)] |= entry << shift | entry << (shift + 8);
            queue_bits |= 1 << vector;
        }
    }
    for (index, value) in ivar.iter().enumerate() {
        r.write32(regs::ivar(index), *value);
    }
    let other = control.other_vector();
    r.write32(regs::IVAR_MISC, (u32::from(other) | regs::IVAR_VALID) << 8);
    let interval = (u32::from(config.interrupt_interval_us) << 2) & 0x7FFC;
    for vector in 0..config.msix_vectors.min(25) {
        r.write32(
            regs::eitr(usize::from(vector)),
            interval | regs::EITR_CNT_IGNR,
        );
    }
    r.write32(regs::EIAC, queue_bits);
    r.write32(regs::EIAM, queue_bits);
    r.write32(regs::IMS, regs::ICR_LSC);
    r.write32(regs::EIMS, 1 << other);

    let mut queue_list = heapless::Vec::new();
    for (index, region) in regions.into_iter().enumerate() {
        let offsets = queue_registers(index, queues, config.msix_vectors);
        let queue = DescriptorQueue::new(QueueId(index as u16), registers.clone(), offsets, region);
        // Cannot fail: at most 16 regions.
        let _ = queue_list.push(queue);
    }
    Ok((control, queue_list))
}

/// The registers queue `index` (of `queues`, under `msix_vectors` vectors) drives alone.
fn queue_registers(index: usize, queues: u16, msix_vectors: u16) -> QueueRegisters {
    QueueRegisters {
        rx_tail: regs::rdt(index),
        tx_tail: regs::tdt(index),
        rx_drop_counter: Some(regs::rqdpc(index)),
        interrupt_mask_set: regs::EIMS,
        interrupt_mask_clear: regs::EIMC,
        interrupt_bit: queue_vector(index as u16, queues, msix_vectors).map(u32::from),
        // MPC is global and clear on read: queue 0's holder is its only reader.
        missed_packets_counter: (index == 0).then_some(regs::MPC),
        // §7.2.2.2 advanced context descriptors; QEMU's model honours POPTS.IXSM/TXSM
        // (igb_setup_tx_offloads: it recomputes the IPv4 and L4 checksums itself).
        tx_checksum_offload: true,
        tx_check_context: false,
        // §7.2.4 TCP segmentation; QEMU's model honours TSE (and hands the whole packet to
        // a tap backend with a virtio-net header, or segments it itself).
        tx_tcp_segmentation: true,
    }
}

/// Waits (bounded: 100 reads 10 µs apart) until queue `index`'s control register `register`
/// (RXDCTL or TXDCTL) reads back ENABLE as `enabled`: a queue being disabled finishes what it was
/// doing first (§4.5.8, §7.1.4), and one being enabled is not usable before.
fn wait_queue_enable<R: RegisterAccess, D: Delay>(
    r: &R,
    delay: &mut D,
    register: usize,
    index: usize,
    enabled: bool,
) -> Result<(), IgbError> {
    let want = if enabled { regs::QUEUE_ENABLE } else { 0 };
    if poll(r, delay, register, regs::QUEUE_ENABLE, want, 100, 10) {
        Ok(())
    } else {
        Err(IgbError::QueueEnableTimeout(QueueId(index as u16)))
    }
}

/// §4.5.8: one RX ring over `region` (queue disabled while its registers change, then enabled).
fn program_rx_ring<R: RegisterAccess, D: Delay>(
    r: &R,
    delay: &mut D,
    config: &IgbConfig,
    index: usize,
    region: &QueueMemory,
) -> Result<(), IgbError> {
    let base = region.rx_ring_physical();
    r.write32(regs::rxdctl(index), 0);
    // §4.5.8 / §7.1.4: a queue being disabled finishes what it was doing first; wait until
    // ENABLE reads back clear before its ring changes under it.
    wait_queue_enable(r, delay, regs::rxdctl(index), index, false)?;
    r.write32(regs::rdbal(index), base as u32);
    r.write32(regs::rdbah(index), (base >> 32) as u32);
    r.write32(regs::rdlen(index), 16 * u32::from(config.ring_size));
    r.write32(
        regs::srrctl(index),
        RX_BUFFER_KIB << regs::SRRCTL_BSIZEPACKET_SHIFT
            | regs::SRRCTL_DESCTYPE_ADVANCED_ONE_BUFFER
            | regs::SRRCTL_DROP_EN,
    );
    r.write32(regs::rdh(index), 0);
    r.write32(regs::rdt(index), 0);
    let _ = r.read32(regs::rqdpc(index)); // clear the drop counter (clear on read)
                                          // Prefetch/host/write-back thresholds 8/8/4 (bits 4:0, 12:8, 20:16), then enable.
    r.write32(
        regs::rxdctl(index),
        regs::QUEUE_ENABLE | 8 | 8 << 8 | 4 << 16,
    );
    wait_queue_enable(r, delay, regs::rxdctl(index), index, true)
}

/// §4.5.9: one TX ring over `region` (queue disabled while its registers change, then enabled).
fn program_tx_ring<R: RegisterAccess, D: Delay>(
    r: &R,
    delay: &mut D,
    config: &IgbConfig,
    index: usize,
    region: &QueueMemory,
) -> Result<(), IgbError> {
    let base = region.tx_ring_physical();
    r.write32(regs::txdctl(index), 0);
    wait_queue_enable(r, delay, regs::txdctl(index), index, false)?;
    r.write32(regs::tdbal(index), base as u32);
    r.write32(regs::tdbah(index), (base >> 32) as u32);
    r.write32(regs::tdlen(index), 16 * u32::from(config.ring_size));
    r.write32(regs::tdh(index), 0);
    r.write32(regs::tdt(index), 0);
    r.write32(
        regs::txdctl(index),
        regs::QUEUE_ENABLE | 8 | 1 << 8 | 1 << 16,
    );
    wait_queue_enable(r, delay, regs::txdctl(index), index, true)
}

/// The control side of an 82576 that [`init`] already brought up, built over the same register
/// window by another core: when the core holding the NIC's control fails, the new monitor leader
/// builds its own handle with this (the old holder is fenced, so two handles never act at once;
/// `docs/drivers.md`). Nothing is written: the device keeps its key, table and hash types.
pub fn attach_control<R: RegisterAccess>(registers: R, config: &IgbConfig) -> IgbControl<R> {
    let low = registers.read32(regs::RAL0).to_le_bytes();
    let high = registers.read32(regs::RAH0).to_le_bytes();
    IgbControl {
        rss: RssControl::new(config.queues, config.hash_types, mrqc_value, RSS_LAYOUT),
        mac: [low[0], low[1], low[2], low[3], high[0], high[1]],
        eeprom_ready: true,
        msix_vectors: config.msix_vectors,
        registers,
    }
}

/// Takes queue `queue` of a device [`init`] brought up over again, on `memory`: the RX and TX
/// rings are disabled, pointed at `memory` and re-enabled, empty (the caller refills the RX ring
/// from its own pool). This is how a live core adopts the queue of a failed core (queue 0 takes
/// the frames RSS cannot steer: ARP and every non-IP frame): what was posted in the old rings —
/// buffers of the failed core's pool — is forgotten, and the device writes only into the new
/// ring from then on. The queue keeps its MSI-X vector (route that vector's table entry to the
/// adopting core) and, for queue 0, the missed-packets counter. Only the queue's own registers
/// are written.
pub fn restart_queue<R: RegisterAccess, D: Delay>(
    registers: R,
    delay: &mut D,
    config: &IgbConfig,
    queue: QueueId,
    memory: QueueMemory,
) -> Result<IgbQueue<R>, IgbError> {
    if queue.0 >= config.queues {
        return Err(IgbError::BadQueueCount(queue.0));
    }
    if memory.ring_size() != config.ring_size {
        return Err(IgbError::RingSizeMismatch(queue));
    }
    let index = usize::from(queue.0);
    program_rx_ring(&registers, delay, config, index, &memory)?;
    program_tx_ring(&registers, delay, config, index, &memory)?;
    let offsets = queue_registers(index, config.queues, config.msix_vectors);
    Ok(DescriptorQueue::new(queue, registers, offsets, memory))
}

/// The control side of an 82576: RSS key, hash types, redirection table, link.
pub struct IgbControl<R: RegisterAccess> {
    registers: R,
    rss: RssControl,
    mac: [u8; 6],
    eeprom_ready: bool,
    msix_vectors: u16,
}

impl<R: RegisterAccess> IgbControl<R> {
    /// The MAC address the device loaded from its EEPROM.
    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the EEPROM auto-read finished during init (if not, the MAC may be zero).
    pub fn eeprom_ready(&self) -> bool {
        self.eeprom_ready
    }

    /// The redirection table, read from the device's RETA registers.
    pub fn redirection_table(&self) -> RedirectionTable {
        self.rss.table(&self.registers)
    }

    /// Writes the flow groups in `changed` from `map` (core `c` = queue `c`) into the
    /// redirection table: one register per dword holding a changed group. Returns the registers
    /// written; nothing is written when an owner has no queue.
    pub fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError> {
        self.rss.write_flow_map(&self.registers, map, changed)
    }

    /// Replaces the whole redirection table (entries must name queues below `queue_count`).
    pub fn set_redirection_table(&mut self, table: &RedirectionTable) -> Result<(), NicError> {
        self.rss.set_table(&self.registers, table)
    }

    /// The MSI-X vector (table entry) of `queue` (shared with other queues when there are fewer
    /// vectors than queues), or `None` when it has none.
    pub fn queue_vector(&self, queue: QueueId) -> Option<u16> {
        queue_vector(queue.0, self.rss.queues(), self.msix_vectors)
    }

    /// The MSI-X vector of link and other causes.
    pub fn other_vector(&self) -> u16 {
        self.rss.queues().min(self.msix_vectors.saturating_sub(1))
    }

    /// Hash types in force.
    pub fn hash_types(&self) -> HashTypes {
        self.rss.hash_types()
    }
}

impl<R: RegisterAccess> NicControl for IgbControl<R> {
    fn queue_count(&self) -> u16 {
        self.rss.queues()
    }

    fn set_rss_key(&mut self, key: &[u8; 40]) -> Result<(), NicError> {
        self.rss.write_key(&self.registers, key);
        Ok(())
    }

    fn set_hash_types(&mut self, types: HashTypes) -> Result<(), NicError> {
        self.rss.set_hash_types(&self.registers, types);
        Ok(())
    }

    fn set_flow_group(&mut self, group: FlowGroup, queue: QueueId) -> Result<(), NicError> {
        self.rss.set_flow_group(&self.registers, group, queue)
    }

    fn flow_group(&self, group: FlowGroup) -> Result<QueueId, NicError> {
        self.rss.flow_group(&self.registers, group)
    }

    /// The 82576's filters are not driven: QEMU's model drops writes to them, so they could not
    /// be tested; steering on the 82576 is RSS only.
    fn add_filter(&mut self, _filter: FiveTupleFilter, _queue: QueueId) -> Result<u16, NicError> {
        Err(NicError::Unsupported)
    }

    fn remove_filter(&mut self, _slot: u16) -> Result<(), NicError> {
        Err(NicError::Unsupported)
    }

    fn link(&self) -> LinkState {
        let status = self.registers.read32(regs::STATUS);
        let up = status & regs::STATUS_LU != 0;
        let speed_mbps = match (status >> regs::STATUS_SPEED_SHIFT) & 3 {
            0 => 10,
            1 => 100,
            _ => 1000,
        };
        LinkState {
            up,
            speed_mbps: if up { speed_mbps } else { 0 },
        }
    }
}
