//! Driver for the Intel 82599 10 GbE controller (real machines), on the same descriptor ring code
//! as the 82576 driver: RSS plus the 82599's 128 five-tuple filters.
//!
//! **Untested on hardware.** QEMU emulates no 82599; this driver is tested only against the
//! register-level model in [`model`]. Its register offsets and init steps come from the 82599
//! datasheet (§4.6.3 initialization sequence, §4.6.7 receive and §4.6.8 transmit initialization,
//! §7.1.2 filtering and RSS) and were compared with the `ixgbe-driver` crate's constants. See
//! `docs/drivers.md` for why that crate is not used.

pub mod regs;

#[cfg(any(test, feature = "std"))]
pub mod model;

use crate::dma::{collect_queue_memory, QueueMemory, QueueMemoryMismatch};
use crate::frame::{PROTOCOL_TCP, PROTOCOL_UDP};
use crate::nic::{
    FiveTupleFilter, FlowGroup, FlowMap, GroupSet, HashTypes, LinkState, NicControl, NicError,
    QueueId,
};
use crate::registers::{Delay, RegisterAccess};
use crate::ring::{DescriptorQueue, QueueRegisters};
use crate::rss::{self, RedirectionTable, KEY_LEN};
use crate::rss_control::{RssControl, RssLayout};

/// PCI device id of the 82599 SFP+ NIC (82599ES).
pub const DEVICE_82599_SFP: u16 = 0x10FB;
/// Queue pairs this driver uses at most (one per core; EIMS holds 16 queue vector bits).
pub const MAX_QUEUES: u16 = 16;
/// MSI-X vectors of the 82599 (table size 64).
pub const MSIX_VECTORS: u16 = 64;

/// One core's queue pair on an 82599.
pub type IxgbeQueue<R> = DescriptorQueue<R>;

/// How to bring the device up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IxgbeConfig {
    /// Queue pairs (one per core), 1 to 16.
    pub queues: u16,
    /// Descriptors per ring; must match every `QueueMemory`.
    pub ring_size: u16,
    /// Toeplitz key.
    pub rss_key: [u8; KEY_LEN],
    /// Hashed header fields.
    pub hash_types: HashTypes,
    /// Interrupt moderation in µs (EITR, 2 µs granularity), 0 for none.
    pub interrupt_interval_us: u16,
}

impl IxgbeConfig {
    /// Defaults: 512-descriptor rings, the default key, every hash type, 10 µs moderation.
    pub fn new(queues: u16) -> Self {
        Self {
            queues,
            ring_size: 512,
            rss_key: rss::DEFAULT_KEY,
            hash_types: HashTypes::ALL,
            interrupt_interval_us: 10,
        }
    }
}

/// Errors of 82599 bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IxgbeError {
    /// `queues` is 0 or above 16.
    BadQueueCount(u16),
    /// The number of `QueueMemory` regions differs from `queues`.
    QueueMemoryCount {
        /// Regions needed.
        expected: u16,
        /// Regions given.
        given: u16,
    },
    /// A `QueueMemory` has another ring size than the config.
    RingSizeMismatch(QueueId),
    /// CTRL.RST/LRST did not clear.
    ResetTimeout,
    /// EEC.ARD (EEPROM auto-read done) never set.
    EepromTimeout,
    /// RDRXCTL.DMAIDONE never set.
    DmaInitTimeout,
    /// A queue's enable bit did not read back set.
    QueueEnableTimeout(QueueId),
}

impl From<QueueMemoryMismatch> for IxgbeError {
    fn from(mismatch: QueueMemoryMismatch) -> Self {
        match mismatch {
            QueueMemoryMismatch::Count { expected, given } => {
                IxgbeError::QueueMemoryCount { expected, given }
            }
            QueueMemoryMismatch::RingSize(queue) => IxgbeError::RingSizeMismatch(queue),
        }
    }
}

fn poll<R: RegisterAccess, D: Delay>(
    r: &R,
    delay: &mut D,
    register: usize,
    mask: u32,
    expected: u32,
    tries: u32,
    step_us: u32,
) -> bool {
    for _ in 0..tries {
        if r.read32(register) & mask == expected {
            return true;
        }
        delay.delay_us(step_us);
    }
    r.read32(register) & mask == expected
}

/// MRQC value for `types` with RSS enabled (MRQE = 0001b; hash bits as on the 82576).
pub fn mrqc_value(types: HashTypes) -> u32 {
    let mut value = regs::MRQC_ENABLE_RSS;
    for (on, bit) in [
        (types.tcp_ipv4, 16),
        (types.ipv4, 17),
        (types.ipv6, 20),
        (types.tcp_ipv6, 21),
        (types.udp_ipv4, 22),
        (types.udp_ipv6, 23),
    ] {
        if on {
            value |= 1 << bit;
        }
    }
    value
}

/// Resets the 82599 and brings up `config.queues` queue pairs; queue `i` uses MSI-X vector `i`,
/// link and other causes vector `queues`. Does not wait for link (read it with
/// [`NicControl::link`]). Queues start with empty RX rings, as with [`crate::igb::init`].
pub fn init<R, D, I>(
    registers: R,
    delay: &mut D,
    config: &IxgbeConfig,
    memory: I,
) -> Result<(IxgbeControl<R>, heapless::Vec<IxgbeQueue<R>, 16>), IxgbeError>
where
    R: RegisterAccess + Clone,
    D: Delay,
    I: IntoIterator<Item = QueueMemory>,
{
    let queues = config.queues;
    if queues == 0 || queues > MAX_QUEUES {
        return Err(IxgbeError::BadQueueCount(queues));
    }
    let regions = collect_queue_memory(memory, queues, config.ring_size)?;
    let r = &registers;

    // §4.6.3.1: interrupts off.
    r.write32(regs::EIMC, 0x7FFF_FFFF);
    // §4.6.3.2: global reset (RST | LRST), at least 1 ms, then poll, then 10 ms settle.
    r.write32(regs::CTRL, r.read32(regs::CTRL) | regs::CTRL_RST_MASK);
    delay.delay_us(1_000);
    if !poll(r, delay, regs::CTRL, regs::CTRL_RST_MASK, 0, 100, 100) {
        return Err(IxgbeError::ResetTimeout);
    }
    delay.delay_us(10_000);
    r.write32(regs::EIMC, 0x7FFF_FFFF);
    // §4.6.3: EEPROM auto-read done, then DMA init done.
    if !poll(r, delay, regs::EEC, regs::EEC_ARD, regs::EEC_ARD, 1000, 10) {
        return Err(IxgbeError::EepromTimeout);
    }
    if !poll(
        r,
        delay,
        regs::RDRXCTL,
        regs::RDRXCTL_DMAIDONE,
        regs::RDRXCTL_DMAIDONE,
        1000,
        10,
    ) {
        return Err(IxgbeError::DmaInitTimeout);
    }
    r.set_bits(regs::CTRL_EXT, regs::CTRL_EXT_DRV_LOAD);
    // §4.6.4 link setup: KX4/KX/KR auto-negotiation, restart. Link comes up later (no wait).
    let autoc = r.read32(regs::AUTOC) & !regs::AUTOC_LMS_MASK;
    r.write32(
        regs::AUTOC,
        autoc | regs::AUTOC_LMS_KX4_KX_KR | regs::AUTOC_AN_RESTART,
    );
    let low = r.read32(regs::RAL0).to_le_bytes();
    let high = r.read32(regs::RAH0).to_le_bytes();
    let mac = [low[0], low[1], low[2], low[3], high[0], high[1]];

    // §4.6.7 receive initialization.
    r.clear_bits(regs::RXCTRL, regs::RXCTRL_RXEN);
    r.set_bits(
        regs::HLREG0,
        regs::HLREG0_RXCRCSTRP | regs::HLREG0_TXCRCEN | regs::HLREG0_TXPADEN,
    );
    r.set_bits(regs::RDRXCTL, regs::RDRXCTL_CRCSTRIP);
    r.set_bits(regs::FCTRL, regs::FCTRL_BAM);
    for index in 0..128 {
        r.write32(regs::MTA + 4 * index, 0);
    }
    for (index, region) in regions.iter().enumerate() {
        let base = region.rx_ring_physical();
        r.write32(regs::rdbal(index), base as u32);
        r.write32(regs::rdbah(index), (base >> 32) as u32);
        r.write32(regs::rdlen(index), 16 * u32::from(config.ring_size));
        r.write32(
            regs::srrctl(index),
            crate::igb::RX_BUFFER_KIB
                | regs::SRRCTL_DESCTYPE_ADVANCED_ONE_BUFFER
                | regs::SRRCTL_DROP_EN,
        );
        r.clear_bits(regs::dca_rxctrl(index), regs::DCA_RXCTRL_DESC_WRO);
        r.write32(regs::rdh(index), 0);
        r.write32(regs::rdt(index), 0);
        let _ = r.read32(regs::qprdc(index));
    }
    let control = IxgbeControl {
        registers: registers.clone(),
        rss: RssControl::new(queues, config.hash_types, mrqc_value, RSS_LAYOUT),
        mac,
        filters: [false; regs::FIVE_TUPLE_FILTERS],
    };
    control.rss.program(&control.registers, &config.rss_key);
    r.write32(regs::RXCSUM, regs::RXCSUM_PCSD | regs::RXCSUM_IPPCSE);
    for index in 0..regs::FIVE_TUPLE_FILTERS {
        r.write32(regs::ftqf(index), 0);
    }
    r.set_bits(regs::RXCTRL, regs::RXCTRL_RXEN);
    for index in 0..regions.len() {
        r.write32(regs::rxdctl(index), regs::QUEUE_ENABLE);
        if !poll(
            r,
            delay,
            regs::rxdctl(index),
            regs::QUEUE_ENABLE,
            regs::QUEUE_ENABLE,
            100,
            10,
        ) {
            return Err(IxgbeError::QueueEnableTimeout(QueueId(index as u16)));
        }
    }

    // §4.6.8 transmit initialization: arbiter off while MTQC is set, rings, then DMA TX enable,
    // then queue enables.
    r.set_bits(regs::RTTDCS, regs::RTTDCS_ARBDIS);
    r.write32(regs::MTQC, 0);
    r.clear_bits(regs::RTTDCS, regs::RTTDCS_ARBDIS);
    for (index, region) in regions.iter().enumerate() {
        let base = region.tx_ring_physical();
        r.write32(regs::tdbal(index), base as u32);
        r.write32(regs::tdbah(index), (base >> 32) as u32);
        r.write32(regs::tdlen(index), 16 * u32::from(config.ring_size));
        r.write32(regs::tdh(index), 0);
        r.write32(regs::tdt(index), 0);
        // Prefetch 36, host 8, write-back 4 (bits 6:0, 14:8, 22:16): the datasheet's suggestion.
        r.write32(regs::txdctl(index), 36 | 8 << 8 | 4 << 16);
    }
    r.set_bits(regs::DMATXCTL, regs::DMATXCTL_TE);
    for index in 0..regions.len() {
        r.set_bits(regs::txdctl(index), regs::QUEUE_ENABLE);
        if !poll(
            r,
            delay,
            regs::txdctl(index),
            regs::QUEUE_ENABLE,
            regs::QUEUE_ENABLE,
            100,
            10,
        ) {
            return Err(IxgbeError::QueueEnableTimeout(QueueId(index as u16)));
        }
    }

    // §7.3.1 MSI-X: queue i → vector i through IVAR (two queues per register), other → `queues`.
    r.write32(
        regs::GPIE,
        regs::GPIE_MSIX_MODE | regs::GPIE_EIAME | regs::GPIE_PBA_SUPPORT,
    );
    let mut ivar = [0u32; 8];
    for queue in 0..usize::from(queues) {
        let entry = queue as u32 | regs::IVAR_VALID;
        let shift = if queue % 2 == 0 { 0 } else { 16 };
        ivar[queue / 2] |= entry << shift | entry << (shift + 8);
    }
    for (index, value) in ivar
        .iter()
        .enumerate()
        .take(usize::from(queues).div_ceil(2))
    {
        r.write32(regs::ivar(index), *value);
    }
    let other = u32::from(queues);
    r.write32(regs::IVAR_MISC, (other | regs::IVAR_VALID) << 8);
    let interval = (u32::from(config.interrupt_interval_us) << 2) & 0xFF8;
    for vector in 0..=usize::from(queues) {
        r.write32(regs::eitr(vector), interval | regs::EITR_CNT_WDIS);
    }
    let queue_bits = (1u32 << queues) - 1;
    r.write32(regs::EIAC, queue_bits);
    r.write32(regs::EIAM, queue_bits);
    r.write32(regs::EIMS, 1 << other);

    let mut list = heapless::Vec::new();
    for (index, region) in regions.into_iter().enumerate() {
        let offsets = QueueRegisters {
            rx_tail: regs::rdt(index),
            tx_tail: regs::tdt(index),
            rx_drop_counter: Some(regs::qprdc(index)),
            interrupt_mask_set: regs::EIMS,
            interrupt_mask_clear: regs::EIMC,
            interrupt_bit: Some(index as u32),
            // MPC of packet buffer 0 (the only one without DCB): queue 0's owner reads it.
            missed_packets_counter: (index == 0).then_some(regs::mpc(0)),
            // §7.2.3.2.3 advanced context descriptors; data descriptors set CC (§7.2.3.2.4).
            tx_checksum_offload: true,
            tx_check_context: true,
            // §7.2.4 TCP segmentation (TSE, the context's MSS and L4LEN).
            tx_tcp_segmentation: true,
        };
        let _ = list.push(DescriptorQueue::new(
            QueueId(index as u16),
            registers.clone(),
            offsets,
            region,
        ));
    }
    Ok((control, list))
}

/// Where the 82599's RSS registers are (82598-compatible addresses, §8.2.3.7).
const RSS_LAYOUT: RssLayout = RssLayout {
    mrqc: regs::MRQC,
    reta: regs::RETA,
    rssrk: regs::RSSRK,
};

/// The control side of an 82599: RSS, redirection table, five-tuple filters, link.
pub struct IxgbeControl<R: RegisterAccess> {
    registers: R,
    rss: RssControl,
    mac: [u8; 6],
    filters: [bool; regs::FIVE_TUPLE_FILTERS],
}

impl<R: RegisterAccess> IxgbeControl<R> {
    /// The MAC address from the EEPROM.
    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
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

    /// Hash types in force.
    pub fn hash_types(&self) -> HashTypes {
        self.rss.hash_types()
    }

    /// The MSI-X vector of `queue`.
    pub fn queue_vector(&self, queue: QueueId) -> Option<u16> {
        (queue.0 < self.rss.queues()).then_some(queue.0)
    }
}

impl<R: RegisterAccess> NicControl for IxgbeControl<R> {
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

    /// Programs a free five-tuple filter (§7.1.2.5): address and port registers first, the
    /// queue (L34T_IMIR), and FTQF last, since its enable bit arms the filter. Addresses and ports
    /// are written in network byte order as seen by a little-endian register write (as DPDK's
    /// ixgbe driver does). Protocols other than TCP, UDP and SCTP cannot be matched.
    fn add_filter(&mut self, filter: FiveTupleFilter, queue: QueueId) -> Result<u16, NicError> {
        if queue.0 >= self.rss.queues() {
            return Err(NicError::NoSuchQueue(queue));
        }
        let protocol = match filter.protocol {
            None => 0,
            Some(PROTOCOL_TCP) => 0,
            Some(PROTOCOL_UDP) => 1,
            Some(132) => 2,
            Some(_) => return Err(NicError::Unsupported),
        };
        let slot = self
            .filters
            .iter()
            .position(|used| !used)
            .ok_or(NicError::FiltersFull)?;
        // "Do not compare" mask: source address, destination address, source port, destination
        // port, protocol.
        let mut mask = 0u32;
        for (bit, absent) in [
            filter.source_ip.is_none(),
            filter.destination_ip.is_none(),
            filter.source_port.is_none(),
            filter.destination_port.is_none(),
            filter.protocol.is_none(),
        ]
        .into_iter()
        .enumerate()
        {
            if absent {
                mask |= 1 << bit;
            }
        }
        let r = &self.registers;
        r.write32(
            regs::saqf(slot),
            u32::from_le_bytes(filter.source_ip.unwrap_or_default()),
        );
        r.write32(
            regs::daqf(slot),
            u32::from_le_bytes(filter.destination_ip.unwrap_or_default()),
        );
        let ports = u32::from(filter.source_port.unwrap_or(0).swap_bytes())
            | u32::from(filter.destination_port.unwrap_or(0).swap_bytes()) << 16;
        r.write32(regs::sdpqf(slot), ports);
        r.write32(
            regs::l34t_imir(slot),
            regs::L34T_IMIR_SIZE_BP | 1 << 19 | u32::from(queue.0) << regs::L34T_IMIR_QUEUE_SHIFT,
        );
        let priority = u32::from(filter.priority.clamp(1, 7));
        r.write32(
            regs::ftqf(slot),
            protocol
                | priority << regs::FTQF_PRIORITY_SHIFT
                | mask << regs::FTQF_MASK_SHIFT
                | regs::FTQF_POOL_MASK_EN
                | regs::FTQF_QUEUE_ENABLE,
        );
        self.filters[slot] = true;
        Ok(slot as u16)
    }

    fn remove_filter(&mut self, slot: u16) -> Result<(), NicError> {
        match self.filters.get_mut(usize::from(slot)) {
            Some(used) if *used => {
                self.registers.write32(regs::ftqf(usize::from(slot)), 0);
                *used = false;
                Ok(())
            }
            _ => Err(NicError::NoSuchFilter(slot)),
        }
    }

    fn link(&self) -> LinkState {
        let links = self.registers.read32(regs::LINKS);
        let up = links & regs::LINKS_UP != 0;
        let speed_mbps = match (links >> regs::LINKS_SPEED_SHIFT) & 3 {
            1 => 100,
            2 => 1_000,
            3 => 10_000,
            _ => 0,
        };
        LinkState {
            up,
            speed_mbps: if up { speed_mbps } else { 0 },
        }
    }
}
