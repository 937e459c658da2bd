//! The NIC and the network stack in the kernel.
//!
//! Core 0 finds the igb NIC through PCIe ECAM, maps its registers, resets it and programs RSS
//! and one queue pair per core (`drivers::igb`), routing each queue's MSI-X vector to the core
//! that owns the queue. The queue objects are left in the boot record, one slot per core; each
//! core takes its own once, at set-up (the hand-over is the one-time write before the core
//! starts, see docs/cpudriver.md). From then on a core drives its queue alone: its own buffer
//! pool, its own smoltcp instance (`netd::CoreNet`), and URPC to the other cores for what RSS
//! cannot steer (ARP neighbours, misdelivered frames, memcached keys owned elsewhere).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use drivers::dma::QueueMemory;
use drivers::igb::{self, IgbConfig, IgbControl, IgbQueue};
use drivers::nic::{QueueDatapath, QueueId};
use drivers::pci::ecam::Ecam;
use drivers::pci::msix::{MsiMessage, MsixCapability};
use drivers::pci::port::LegacyPorts;
use drivers::pci::{self, Bar, ConfigAccess};
use drivers::pool::{BufferPool, BUFFER_SIZE};
use drivers::registers::Mmio;
use urpc::Endpoint;

use super::{acpi::Platform, channels, interrupts, tsc};
use crate::messages::{KernelMessage, NET_CHUNK_BYTES};
use crate::topology::{CoreDescription, MAX_CORES};

/// The vector NIC queue interrupts arrive on (on every core: each has its own IDT).
pub const NIC_VECTOR: u8 = interrupts::DEVICE_VECTOR_BASE;
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
    /// One slot per core.
    pub queues: [QueueSlot; MAX_CORES],
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
    let msix = match MsixCapability::find(ecam, function.address) {
        Ok(msix) => msix,
        Err(error) => {
            log::error!("igb MSI-X capability: {error:?}: networking off");
            return None;
        }
    };
    let table = match pci::read_bar(ecam, function.address, msix.table_bar) {
        Ok(Bar::Memory { address, size, .. }) if identity_mapped(address, size) => {
            let start = address + u64::from(msix.table_offset);
            // SAFETY: the MSI-X table lies inside that BAR (the capability says so), identity-mapped.
            unsafe { Mmio::new(start as usize, usize::from(msix.table_size) * 16) }.ok()?
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
    for (index, core) in cores.iter().enumerate().take(queue_count as usize) {
        if let Some(vector) = control.queue_vector(QueueId(index as u16)) {
            match MsiMessage::to_apic(core.apic_id, NIC_VECTOR) {
                Ok(message) => {
                    if let Err(error) = msix.program(&table, vector, message) {
                        log::error!("MSI-X entry {vector}: {error:?}");
                    }
                }
                Err(error) => log::warn!("queue {index}: {error:?}: polled without interrupts"),
            }
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
        queues: core::array::from_fn(|_| QueueSlot::empty()),
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

/// The TSC as smoltcp time.
pub fn instant(tsc_per_ms: u64) -> netd::Instant {
    netd::Instant::from_micros((u128::from(tsc::now()) * 1000 / u128::from(tsc_per_ms)) as i64)
}

fn cycles() -> u64 {
    tsc::now()
}

fn rss_hash(input: &[u8]) -> u32 {
    drivers::rss::toeplitz(&drivers::rss::DEFAULT_KEY, input)
}

/// One core's network: its queue, its buffer pool, its stack, and reassembly of multi-slot
/// messages from each peer.
pub struct CoreNetwork {
    /// This core's smoltcp instance and paths.
    pub net: netd::CoreNet,
    /// This core's queue pair.
    pub queue: IgbQueue<Mmio>,
    /// This core's packet buffers.
    pub pool: BufferPool,
    /// Per peer: the bytes of a message arriving in chunks.
    reassembly: Vec<Vec<u8>>,
}

/// Buffers in a core's pool at most.
const MAX_POOL_BUFFERS: usize = 2048;

impl CoreNetwork {
    /// Builds core `index`'s network over `queue`, with a pool of `pool_memory` (identity-mapped,
    /// this core's own) and the addresses from the command line.
    pub fn new(
        index: usize,
        cores: usize,
        handoff: &NicHandoff,
        queue: IgbQueue<Mmio>,
        pool_memory: (u64, usize),
        cmdline: &str,
        tsc_per_ms: u64,
    ) -> Result<Self, netd::NetError> {
        let (base, length) = pool_memory;
        let count = (length / BUFFER_SIZE).min(MAX_POOL_BUFFERS);
        // SAFETY: the caller gives fresh frames of this core's slice, identity-mapped, never
        // freed; the pool owns them from now on.
        let memory =
            unsafe { core::slice::from_raw_parts_mut(base as *mut u8, count * BUFFER_SIZE) };
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
        config.random_seed ^= tsc::now() ^ index as u64;
        config.options = netd::parse_options(cmdline, |error| {
            if index == 0 {
                crate::kprintln!("flotilla: command line: netd: {error}; default kept");
            }
        });
        config.scheduler = netd::SchedulerConfig::for_cycles_per_microsecond(tsc_per_ms / 1000);
        let applications = netd::app::default_applications(&config);
        let mut net = netd::CoreNet::new(config, applications, cycles, instant(tsc_per_ms))?;
        net.set_rss_hash(rss_hash);
        let table = drivers::rss::default_table(handoff.queue_count);
        let owners: [netd::CoreId; drivers::nic::FLOW_GROUPS] =
            core::array::from_fn(|g| u16::from(table[g]));
        net.set_flow_table(&owners);
        let mut queue = queue;
        queue.refill(&mut pool);
        queue.set_interrupt(true);
        Ok(Self {
            net,
            queue,
            pool,
            reassembly: vec![Vec::new(); cores],
        })
    }

    /// Adds one chunk of a message from `from`; returns the whole message when it is complete.
    pub fn reassemble(
        &mut self,
        from: usize,
        total: u16,
        offset: u16,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let buffer = self.reassembly.get_mut(from)?;
        if offset == 0 {
            buffer.clear();
        }
        if usize::from(offset) != buffer.len() {
            buffer.clear(); // a lost chunk (the sender gave up on a full ring): drop the message
            return None;
        }
        buffer.extend_from_slice(data);
        (buffer.len() >= usize::from(total)).then(|| core::mem::take(buffer))
    }
}

/// Sends `message` to `peer` over its channel, spinning up to `patience_ms` while the ring is
/// full; wakes the peer if it sleeps.
pub fn send_kernel_message(
    endpoint: &mut Endpoint<'static>,
    apic_id: u32,
    message: &KernelMessage,
    tsc_per_ms: u64,
    patience_ms: u64,
) -> Result<(), urpc::SendError> {
    let deadline = tsc::now() + patience_ms * tsc_per_ms;
    loop {
        match endpoint.sender.try_send_message(message) {
            Ok(()) => return Ok(()),
            Err(urpc::SendError::Full) if tsc::now() < deadline => core::hint::spin_loop(),
            Err(error) => {
                endpoint
                    .sender
                    .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                return Err(error);
            }
        }
        // The peer may be asleep with our ring full: make sure it is woken to drain it.
        endpoint
            .sender
            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
    }
}

/// netd's view of the other cores: chunks each message over URPC slots.
pub struct UrpcPeers<'a> {
    /// This core's channel ends, by peer.
    pub endpoints: &'a mut [Option<Endpoint<'static>>],
    /// Each core's APIC id.
    pub apic_ids: &'a [u32],
    /// TSC ticks per millisecond.
    pub tsc_per_ms: u64,
}

impl netd::Peers for UrpcPeers<'_> {
    fn send(
        &mut self,
        core: netd::CoreId,
        message: &netd::PeerMessage<'_>,
    ) -> Result<(), netd::PeerError> {
        let peer = usize::from(core);
        let apic_id = *self
            .apic_ids
            .get(peer)
            .ok_or(netd::PeerError::NoSuchCore(core))?;
        let endpoint = self
            .endpoints
            .get_mut(peer)
            .and_then(Option::as_mut)
            .ok_or(netd::PeerError::NoSuchCore(core))?;
        let mut bytes = [0u8; 4096];
        let length = message
            .encode(&mut bytes)
            .map_err(|_| netd::PeerError::TooLarge)?;
        let total = u16::try_from(length).map_err(|_| netd::PeerError::TooLarge)?;
        for (index, chunk) in bytes[..length].chunks(NET_CHUNK_BYTES).enumerate() {
            let mut data = [0u8; NET_CHUNK_BYTES];
            data[..chunk.len()].copy_from_slice(chunk);
            let message = KernelMessage::NetChunk {
                total,
                offset: (index * NET_CHUNK_BYTES) as u16,
                length: chunk.len() as u8,
                data,
            };
            send_kernel_message(endpoint, apic_id, &message, self.tsc_per_ms, 5)
                .map_err(|_| netd::PeerError::Full)?;
        }
        endpoint
            .sender
            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
        Ok(())
    }
}
