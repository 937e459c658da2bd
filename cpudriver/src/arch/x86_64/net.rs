//! The NIC and the network stack in the kernel.
//!
//! Core 0 finds the igb NIC through PCIe ECAM, maps its registers, resets it and programs RSS
//! and one queue pair per core (`drivers::igb`), routing each queue's MSI-X vector to the core
//! that owns the queue. The queue objects are left in the boot record, one slot per core; each
//! core takes its own once, at set-up (the hand-over is the one-time write before the core
//! starts, see docs/cpudriver.md). From then on a core drives its queue alone: its own buffer
//! pool and its own smoltcp instance (`netd::CoreNet`), assembled here into the node's
//! `CoreNetwork`; the node's mailbox carries what RSS cannot steer to the other cores.
//!
//! The NIC's shared side (RSS key, redirection table, MSI-X routing) is held by its home, core 0
//! at boot. The boot record names the register window and the MSI-X table, so whichever core
//! becomes the home when the home fails builds its own handle ([`KernelNicSource`], without a
//! reset) and adopts queue 0 ([`KernelQueueAdoption`]: the ring restarted in its own memory).
//! Why two holders never act at once: `node::takeover`.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use drivers::dma::QueueMemory;
use drivers::igb::{self, IgbConfig, IgbControl, IgbQueue};
use drivers::nic::{FlowMap, GroupSet, NicError, QueueDatapath, QueueId};
use drivers::pci::ecam::Ecam;
use drivers::pci::msix::{MsiMessage, MsixCapability};
use drivers::pci::port::LegacyPorts;
use drivers::pci::{self, Bar, ConfigAccess};
use drivers::pool::{BufferPool, BUFFER_SIZE};
use drivers::registers::Mmio;

use super::interrupts::NIC_VECTOR;
use super::{acpi::Platform, tsc};
use crate::node::flows::{NicHome, NicSource, Vector};
use crate::node::net::{net_instant, CoreNetwork, QueueAdoption};
use crate::node::takeover::AdoptError;
use crate::node::wake::QueueHolders;
use crate::node::Instant;
use crate::topology::{CoreDescription, MAX_CORES};
/// Descriptors per ring.
pub const RING_SIZE: u16 = 256;
/// Highest address the boot page tables map.
const IDENTITY_LIMIT: u64 = 64 << 30;

/// Bytes each core reserves for its queue's descriptor rings.
pub fn ring_area_size() -> u64 {
    (QueueMemory::bytes_needed(RING_SIZE) as u64).div_ceil(4096) * 4096
}

/// One core's queue, waiting to be taken by that core.
pub struct QueueSlot(UnsafeCell<Option<IgbQueue<Mmio>>>);

impl QueueSlot {
    /// An empty slot.
    pub const fn empty() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// Takes the queue.
    ///
    /// # Safety
    /// 1. Only the slot's own core calls this, once, after core 0 filled the slot and started
    ///    the core (the start is the happens-before edge); nobody else touches the slot then.
    pub unsafe fn take(&self) -> Option<IgbQueue<Mmio>> {
        // SAFETY: condition 1: exclusive access.
        unsafe { (*self.0.get()).take() }
    }
}

/// What core 0 hands to every core about the NIC.
pub struct NicHandoff {
    /// The NIC's MAC address (every core presents it).
    pub mac: [u8; 6],
    /// Queue pairs in use (cores beyond it have no queue).
    pub queue_count: u16,
    /// MSI-X vectors the NIC offers (queues share them when there are fewer: `node::wake`).
    pub vectors: u16,
    /// One slot per core.
    pub queues: [QueueSlot; MAX_CORES],
    /// The device's register window (BAR0), for the core that becomes the NIC's home.
    pub registers: Mmio,
    /// The window holding the MSI-X table (its BAR), and the capability that locates it.
    pub msix_table: Mmio,
    /// The MSI-X capability.
    pub msix: MsixCapability,
    /// How the device was brought up (queues, ring size, key, hash types, vectors).
    pub config: IgbConfig,
}

/// The NIC's shared side on its home: the igb control handle and the MSI-X table.
pub struct KernelNicHome {
    control: IgbControl<Mmio>,
    msix: MsixCapability,
    table: Mmio,
    apic_ids: Vec<u32>,
}

impl NicHome for KernelNicHome {
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError> {
        self.control.write_flow_map(map, changed)
    }

    fn route_vector(&mut self, vector: Vector, core: usize) -> Result<(), NicError> {
        let (entry, interrupt) = match vector {
            Vector::Queue(index) => (index as u16, NIC_VECTOR),
            Vector::Link => (self.control.other_vector(), NIC_VECTOR + 1),
        };
        let apic_id = *self.apic_ids.get(core).ok_or(NicError::Unsupported)?;
        let message = MsiMessage::to_apic(apic_id, interrupt).map_err(|_| NicError::Unsupported)?;
        self.msix
            .program(&self.table, entry, message)
            .map_err(|_| NicError::Unsupported)
    }

    fn vectors(&self) -> usize {
        usize::from(self.msix.table_size)
    }
}

/// How any core with a NIC takes the NIC's shared side over: a control handle over the register
/// window the boot record names ([`igb::attach_control`]: nothing is reset or rewritten; the new
/// home then rewrites the redirection table from its flow map and routes the vectors).
pub struct KernelNicSource {
    /// The boot record's NIC facts.
    pub handoff: &'static NicHandoff,
    /// Each core's APIC id, by core.
    pub apic_ids: Vec<u32>,
}

impl KernelNicSource {
    /// The home's handle around `control` (core 0's from `igb::init`, or one attached later).
    pub fn home(&self, control: IgbControl<Mmio>) -> KernelNicHome {
        KernelNicHome {
            control,
            msix: self.handoff.msix,
            table: self.handoff.msix_table,
            apic_ids: self.apic_ids.clone(),
        }
    }
}

impl NicSource for KernelNicSource {
    fn take_control(&mut self) -> Result<Box<dyn NicHome>, NicError> {
        let control = igb::attach_control(self.handoff.registers, &self.handoff.config);
        Ok(Box::new(self.home(control)))
    }

    fn vectors(&self) -> usize {
        usize::from(self.handoff.vectors)
    }
}

/// How a core adopts a failed core's queue: new ring memory from this core's heap (identity
/// mapped, so its address is its physical address), then [`igb::restart_queue`] over it.
pub struct KernelQueueAdoption {
    /// The boot record's NIC facts.
    pub handoff: &'static NicHandoff,
    /// TSC ticks per millisecond (the driver's bounded waits).
    pub tsc_per_ms: u64,
}

impl QueueAdoption<IgbQueue<Mmio>> for KernelQueueAdoption {
    fn adopt(&mut self, queue: u16) -> Result<IgbQueue<Mmio>, AdoptError> {
        if queue >= self.handoff.queue_count {
            return Err(AdoptError::NoSuchQueue(queue));
        }
        let bytes = QueueMemory::bytes_needed(RING_SIZE);
        let layout = core::alloc::Layout::from_size_align(bytes, 4096)
            .map_err(|_| AdoptError::OutOfMemory)?;
        // SAFETY: the layout has a non-zero size; the memory is zeroed, so no descriptor in the
        // new rings holds a stale buffer address.
        let base = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            return Err(AdoptError::OutOfMemory);
        }
        // SAFETY: fresh heap memory of `bytes` bytes, this core's, never freed (the queue owns it
        // for the rest of the run: a leak by design, one ring per adoption, at most one per core).
        let memory = unsafe { core::slice::from_raw_parts_mut(base, bytes) };
        let physical = base.expose_provenance() as u64;
        let memory =
            QueueMemory::new(memory, physical, RING_SIZE).map_err(|_| AdoptError::OutOfMemory)?;
        let tsc_per_ms = self.tsc_per_ms;
        let mut delay = |microseconds: u32| tsc::delay_us(u64::from(microseconds), tsc_per_ms);
        igb::restart_queue(
            self.handoff.registers,
            &mut delay,
            &self.handoff.config,
            QueueId(queue),
            memory,
        )
        .map_err(|error| match error {
            igb::IgbError::BadQueueCount(queue) => AdoptError::NoSuchQueue(queue),
            _ => AdoptError::DeviceTimeout,
        })
    }
}

fn identity_mapped(address: u64, size: u64) -> bool {
    address
        .checked_add(size)
        .is_some_and(|end| end <= IDENTITY_LIMIT)
}

/// Finds and brings up the igb NIC (core 0, before the other cores start, before its heap).
/// `ring_areas[i]` is core `i`'s reserved ring memory. Returns `None` when there is no usable
/// NIC. PCI configuration space is reached through ECAM (ACPI MCFG) or, without an MCFG, through
/// the legacy ports 0xCF8/0xCFC.
pub fn bring_up(
    platform: &Platform,
    cores: &[CoreDescription],
    ring_areas: &[u64],
    tsc_per_ms: u64,
) -> Option<(IgbControl<Mmio>, NicHandoff)> {
    match platform.ecam.first() {
        Some(window) => {
            // SAFETY: the ECAM window from the MCFG is identity-mapped (below 64 GiB on q35 and
            // PCs) and only configuration space lives there.
            let mut ecam =
                unsafe { Ecam::new(window.base as usize, window.bus_start..=window.bus_end) };
            bring_up_with(
                &mut ecam,
                window.bus_start..=window.bus_end,
                cores,
                ring_areas,
                tsc_per_ms,
            )
        }
        None => {
            log::info!("no ACPI MCFG: PCI configuration through ports 0xCF8/0xCFC");
            // SAFETY: ring 0, and only core 0 touches PCI configuration space, before the other
            // cores start.
            let mut ports = unsafe { LegacyPorts::new() };
            bring_up_with(&mut ports, 0..=255, cores, ring_areas, tsc_per_ms)
        }
    }
}

fn bring_up_with<C: ConfigAccess>(
    ecam: &mut C,
    buses: core::ops::RangeInclusive<u8>,
    cores: &[CoreDescription],
    ring_areas: &[u64],
    tsc_per_ms: u64,
) -> Option<(IgbControl<Mmio>, NicHandoff)> {
    let Some(function) = pci::find(ecam, buses, igb::VENDOR_INTEL, igb::DEVICE_82576) else {
        log::info!("no Intel 82576 (igb) NIC found: networking off");
        return None;
    };
    pci::enable_device(ecam, function.address);
    let (registers_base, registers_size) = match pci::read_bar(ecam, function.address, 0) {
        Ok(Bar::Memory { address, size, .. }) if identity_mapped(address, size) => (address, size),
        other => {
            log::error!("igb BAR0 unusable ({other:?}): networking off");
            return None;
        }
    };
    // SAFETY: BAR0 is the device's register window, identity-mapped (checked), used only as
    // device registers from now on.
    let registers = unsafe { Mmio::new(registers_base as usize, registers_size as usize) }.ok()?;
    let registers_copy = registers;
    let msix = match MsixCapability::find(ecam, function.address) {
        Ok(msix) => msix,
        Err(error) => {
            log::error!("igb MSI-X capability: {error:?}: networking off");
            return None;
        }
    };
    let table = match pci::read_bar(ecam, function.address, msix.table_bar) {
        Ok(Bar::Memory { address, size, .. }) if identity_mapped(address, size) => {
            // `MsixCapability::program` takes offsets from the BAR's start (it adds the table's
            // offset itself), so the window starts at the BAR and ends with the table.
            let length = u64::from(msix.table_offset) + u64::from(msix.table_size) * 16;
            if length > size {
                log::error!("igb MSI-X table beyond its BAR: networking off");
                return None;
            }
            // SAFETY: the MSI-X table lies inside that BAR (the capability says so, checked
            // above), identity-mapped; only table entries are written through this window.
            unsafe { Mmio::new(address as usize, length as usize) }.ok()?
        }
        other => {
            log::error!("igb MSI-X table BAR unusable ({other:?}): networking off");
            return None;
        }
    };
    let queue_count = (cores.len() as u16).min(igb::MAX_QUEUES);
    // No heap yet on core 0 at this point: a fixed-capacity vector.
    let mut memories: heapless::Vec<QueueMemory, 16> = heapless::Vec::new();
    for &area in ring_areas.iter().take(queue_count as usize) {
        let length = QueueMemory::bytes_needed(RING_SIZE);
        // SAFETY: the area was cut out of that core's slice for this purpose, is identity-mapped
        // and used by nothing else; the device sees it at the same (physical) address.
        let memory = unsafe { core::slice::from_raw_parts_mut(area as *mut u8, length) };
        let _ = memories.push(QueueMemory::new(memory, area, RING_SIZE).ok()?);
    }
    let mut config = IgbConfig::new(queue_count);
    config.ring_size = RING_SIZE;
    config.msix_vectors = msix.table_size;
    let mut delay = |microseconds: u32| tsc::delay_us(u64::from(microseconds), tsc_per_ms);
    let (control, queues) = match igb::init(registers, &mut delay, &config, memories) {
        Ok(pair) => pair,
        Err(error) => {
            log::error!("igb init: {error:?}: networking off");
            return None;
        }
    };
    // Each queue vector goes to the core of its lowest queue; that core wakes the other queues'
    // cores on a shared vector by IPI (node::wake).
    let holders = QueueHolders::boot(usize::from(queue_count));
    for (index, core) in cores.iter().enumerate().take(queue_count as usize) {
        let Some(vector) = control.queue_vector(QueueId(index as u16)) else {
            continue;
        };
        let routed = crate::node::wake::vector_core(
            usize::from(vector),
            usize::from(msix.table_size),
            &holders,
        );
        if routed != Some(index) {
            continue;
        }
        match MsiMessage::to_apic(core.apic_id, NIC_VECTOR) {
            Ok(message) => {
                if let Err(error) = msix.program(&table, vector, message) {
                    log::error!("MSI-X entry {vector}: {error:?}");
                }
            }
            Err(error) => log::warn!("queue {index}: {error:?}: polled without interrupts"),
        }
    }
    if let Ok(message) = MsiMessage::to_apic(cores[0].apic_id, NIC_VECTOR + 1) {
        let _ = msix.program(&table, control.other_vector(), message);
    }
    msix.enable(ecam);
    let mac = control.mac_address();
    let handoff = NicHandoff {
        mac,
        queue_count,
        vectors: msix.table_size,
        queues: core::array::from_fn(|_| QueueSlot::empty()),
        registers: registers_copy,
        msix_table: table,
        msix,
        config,
    };
    for (slot, queue) in handoff.queues.iter().zip(queues) {
        // SAFETY: no other core runs yet; core 0 is the only one touching the slots.
        unsafe { *slot.0.get() = Some(queue) };
    }
    crate::kprintln!(
        "netd: nic igb at {:02x}:{:02x}.{} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} queues={} msix={}",
        function.address.bus,
        function.address.device,
        function.address.function,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        queue_count,
        msix.table_size
    );
    Some((control, handoff))
}

fn cycles() -> u64 {
    tsc::now()
}

fn rss_hash(input: &[u8]) -> u32 {
    drivers::rss::toeplitz(&drivers::rss::DEFAULT_KEY, input)
}

/// A core's network in the kernel: netd's stack over its igb queue.
pub type KernelNetwork = CoreNetwork<IgbQueue<Mmio>>;

/// Buffers in a core's pool at most.
const MAX_POOL_BUFFERS: usize = 2048;

/// Builds core `index`'s network over `queue`, with a pool of `pool_memory` (identity-mapped,
/// this core's own) and the addresses from the command line.
pub fn core_network(
    index: usize,
    cores: usize,
    handoff: &NicHandoff,
    queue: IgbQueue<Mmio>,
    pool_memory: (u64, usize),
    cmdline: &str,
    now: Instant,
    tsc_per_ms: u64,
) -> Result<KernelNetwork, netd::NetError> {
    let (base, length) = pool_memory;
    let count = (length / BUFFER_SIZE).min(MAX_POOL_BUFFERS);
    // SAFETY: the caller gives fresh frames of this core's slice, identity-mapped, never
    // freed; the pool owns them from now on.
    let memory = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, count * BUFFER_SIZE) };
    let free = Box::leak(vec![0u32; count].into_boxed_slice());
    let in_use = Box::leak(vec![false; count].into_boxed_slice());
    let mut pool =
        BufferPool::new(memory, base, free, in_use).map_err(|_| netd::NetError::BadCore)?;
    let addresses = netd::parse_command_line(cmdline).unwrap_or_else(|error| {
        crate::kprintln!(
            "flotilla: command line: network addresses: {}; defaults kept ({})",
            error,
            netd::Addresses::default()
        );
        netd::Addresses::default()
    });
    let mut config = netd::NetConfig::new(handoff.mac, index as u16, cores as u16);
    config.addresses = addresses;
    config.wall_clock = super::rtc::wall_clock(cmdline, tsc_per_ms);
    config.heap_bytes = super::heap::usage().0 + super::heap::usage().1;
    config.memcached_memory_mb = netd::parse_memcached_memory(cmdline).unwrap_or_else(|error| {
        crate::kprintln!(
            "flotilla: command line: {}; memcached sizes itself by the heap",
            error
        );
        None
    });
    config.random_seed ^= tsc::now() ^ index as u64;
    config.options = netd::parse_options(cmdline, |error| {
        if index == 0 {
            crate::kprintln!("flotilla: command line: netd: {error}; default kept");
        }
    });
    config.scheduler = netd::SchedulerConfig::for_cycles_per_microsecond(tsc_per_ms / 1000);
    let applications = netd::app::default_applications(&config);
    let mut net = netd::CoreNet::new(config, applications, cycles, net_instant(now))?;
    net.set_rss_hash(rss_hash);
    net.set_heap_probe(super::heap::figures);
    // The one flow map starts as the NIC does (group g on queue g mod queues): no change to write.
    let flows = net.flow_map_mut();
    flows.set_owners(drivers::nic::FlowMap::round_robin(handoff.queue_count).owners());
    flows.take_changes();
    let mut queue = queue;
    queue.refill(&mut pool);
    queue.set_interrupt(true);
    Ok(CoreNetwork::new(net, queue, pool))
}
