//! Bringing the machine up and each core's loop.
//!
//! The bootstrap core (core 0) reads the boot information and ACPI, splits memory into per-core
//! slices, prepares the read-only [`BootShared`] record and starts the other cores. Every core
//! then sets itself up from its own slice (per-core block, heap, GDT/TSS, IDT, x2APIC timer) and
//! enters its loop.

use core::sync::atomic::{AtomicU32, Ordering};

use x2apic::lapic::LocalApic;

use super::{
    acpi, apic, channels, console, control, gdt, heap, interrupts, net, percore, port, smp, tsc,
};
use crate::boot_info::BootInfo;
use crate::cmdline::{Cmdline, FaultKind, KernelOptions, LogLevel, OptionProblem};
use crate::memory::{split_per_core, CoreMemory, FrameAllocator, PhysicalRange};
use crate::messages::KernelMessage;
use crate::topology::{CoreDescription, MAX_CORES};
use drivers::nic::QueueDatapath;
use urpc::CoreMessage;

/// Size of each application processor's boot stack (its only stack).
const AP_STACK_SIZE: u64 = 256 * 1024;
/// Size of each core's fault (IST) stack.
const FAULT_STACK_SIZE: u64 = 16 * 1024;
/// Largest per-core heap.
const MAX_HEAP: u64 = 32 << 20;

/// Where the kernel image lies, and when it started.
#[derive(Clone, Copy, Debug)]
pub struct BootImage {
    /// TSC when the first instruction of the kernel ran.
    pub entry_tsc: u64,
    /// Physical start of the image.
    pub start: u64,
    /// Physical end of the image (bss included).
    pub end: u64,
    /// The page-table root every core uses.
    pub page_table_root: u64,
}

/// A core's boot state, as the bootstrap core sees it.
const NOT_STARTED: u32 = 0;
const ONLINE: u32 = 1;
const START_FAILED: u32 = 2;

/// What the bootstrap core prepares for every core: written before the other cores start, read
/// only afterwards — except `online`, the one boot-time mutable field (docs/cpudriver.md).
pub struct BootShared {
    /// Kernel options from the command line.
    pub options: KernelOptions,
    /// The command line itself.
    pub cmdline: heapless::String<512>,
    /// The cores, core 0 first.
    pub cores: heapless::Vec<CoreDescription, MAX_CORES>,
    /// Each core's memory slice (an AP's excludes its boot stack).
    pub memory: [CoreMemory; MAX_CORES],
    /// TSC ticks per millisecond.
    pub tsc_per_ms: u64,
    /// APIC timer ticks (divide by 16) per millisecond.
    pub apic_ticks_per_ms: u32,
    /// The image, with its entry time.
    pub image: BootImage,
    /// ACPI facts (ECAM windows, I/O APICs, NUMA).
    pub platform: acpi::Platform,
    /// Each core's URPC channel area (see `channels`).
    pub urpc_areas: [u64; MAX_CORES],
    /// The NIC's per-core queues and MAC, when there is a NIC.
    pub nic: Option<net::NicHandoff>,
    /// Each core's state: NOT_STARTED, ONLINE or START_FAILED. Written once by the core itself
    /// (Release) or by core 0 on a failed start; read by core 0 (Acquire).
    online: [AtomicU32; MAX_CORES],
}

fn fatal(message: core::fmt::Arguments<'_>) -> ! {
    crate::kprintln!("flotilla: fatal: {}", message);
    port::halt_forever()
}

/// Reads physical memory through the identity map.
struct IdentityMemory;

impl crate::boot_info::PhysicalMemory for IdentityMemory {
    fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
        if address == 0 || address.checked_add(len as u64)? > 64 << 30 {
            return None;
        }
        // SAFETY: the boot page tables identity-map the first 64 GiB, and the loader's
        // structures are in RAM; the bytes are only read.
        Some(unsafe { core::slice::from_raw_parts(address as *const u8, len) })
    }
}

/// Parses the loader's information: `protocol` 1 = PVH, 2 = Multiboot2.
pub fn read_boot_info(protocol: u32, address: u64) -> BootInfo {
    let parsed = match protocol {
        1 => crate::boot_info::parse_pvh(&IdentityMemory, address),
        _ => crate::boot_info::parse_multiboot2(&IdentityMemory, address),
    };
    parsed
        .unwrap_or_else(|error| fatal(format_args!("boot information at {address:#x}: {error:?}")))
}

fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Allocates `bytes` from `frames` as a `&'static mut T` initialised with `value`.
fn allocate_static<T>(frames: &mut FrameAllocator, value: T) -> &'static mut T {
    let address = frames
        .allocate(
            core::mem::size_of::<T>() as u64,
            core::mem::align_of::<T>() as u64,
        )
        .unwrap_or_else(|error| fatal(format_args!("core memory: {error:?}")));
    let pointer = address as *mut T;
    // SAFETY: the frames are fresh, identity-mapped, owned by this core, aligned for T and large
    // enough; they are never freed, so the reference is valid forever.
    unsafe {
        pointer.write(value);
        &mut *pointer
    }
}

/// The bootstrap core's path: never returns.
pub fn start_bootstrap_core(info: BootInfo, image: BootImage) -> ! {
    console::init();
    port::disable_legacy_pic();
    let cmdline = Cmdline(info.cmdline.as_str());
    let options = KernelOptions::parse(cmdline, |error| {
        let problem = match error.problem {
            OptionProblem::BadValue => "bad value, default kept",
            OptionProblem::UnknownOption => "unknown option, ignored",
        };
        crate::kprintln!(
            "flotilla: command line: '{}={}': {}",
            error.key,
            error.value,
            problem
        );
    });
    console::init_logging(level_filter(options.log));
    log::info!(
        "Flotilla booting ({:?}), command line '{}'",
        info.protocol,
        info.cmdline
    );
    let tsc_per_ms = tsc::calibrate_with_pit(10);
    log::debug!("TSC {} kHz", tsc_per_ms);

    let rsdp = info
        .rsdp
        .unwrap_or_else(|| fatal(format_args!("the loader gave no ACPI RSDP")));
    // SAFETY: the RSDP address came from the loader and ACPI tables are identity-mapped.
    let platform = unsafe { acpi::read_platform(rsdp) }
        .unwrap_or_else(|error| fatal(format_args!("ACPI: {error:?}")));

    let mut bsp_apic = apic::enable()
        .unwrap_or_else(|error| fatal(format_args!("{error:?}: Flotilla needs x2APIC")));
    let bsp_apic_id = apic::id();
    let node_of = |apic_id| {
        platform
            .numa
            .as_ref()
            .and_then(|numa| numa.node_of(apic_id))
    };
    let mut cores: heapless::Vec<CoreDescription, MAX_CORES> = heapless::Vec::new();
    let _ = cores.push(CoreDescription {
        index: 0,
        apic_id: bsp_apic_id,
        node: node_of(bsp_apic_id),
    });
    for &apic_id in platform.apic_ids.iter().filter(|&&id| id != bsp_apic_id) {
        let index = cores.len() as u32;
        let _ = cores.push(CoreDescription {
            index,
            apic_id,
            node: node_of(apic_id),
        });
    }
    log::info!(
        "ACPI: {} cores ({} skipped), {} I/O APICs, {} ECAM windows, NUMA: {}",
        cores.len(),
        platform.skipped_processors,
        platform.io_apics.len(),
        platform.ecam.len(),
        platform.numa.as_ref().map_or(0, |numa| numa.memory.len())
    );

    // Memory: cut out the first MiB (trampoline, firmware), the image and the loader's data.
    let reserved = [
        PhysicalRange {
            start: 0,
            end: 0x10_0000,
        },
        PhysicalRange {
            start: image.start,
            end: image.end,
        },
        PhysicalRange {
            start: info.info_range.0,
            end: info.info_range.1,
        },
    ];
    let core_nodes: heapless::Vec<Option<u32>, MAX_CORES> = cores.iter().map(|c| c.node).collect();
    let node_ranges: heapless::Vec<(PhysicalRange, u32), 32> = platform
        .numa
        .as_ref()
        .map(|numa| numa.memory.iter().copied().collect())
        .unwrap_or_default();
    let mut memory: [CoreMemory; MAX_CORES] = core::array::from_fn(|_| CoreMemory::default());
    split_per_core(
        &info.memory,
        &reserved,
        &core_nodes,
        &node_ranges,
        &mut memory,
    )
    .unwrap_or_else(|error| fatal(format_args!("memory split: {error:?}")));

    // Each AP's boot stack is the top of its own slice's first range.
    let mut stacks = [0u64; MAX_CORES];
    for (index, slice) in memory.iter_mut().enumerate().skip(1).take(cores.len() - 1) {
        let Some(first) = slice.ranges.first_mut() else {
            continue;
        };
        stacks[index] = first.end;
        first.end -= AP_STACK_SIZE;
    }
    // Each core's channel area is the top of its slice's last range.
    let mut urpc_areas = [0u64; MAX_CORES];
    for (index, slice) in memory.iter_mut().enumerate().take(cores.len()) {
        let size = channels::area_size(index, cores.len()).div_ceil(4096) * 4096;
        let Some(last) = slice.ranges.last_mut() else {
            continue;
        };
        if last.len() < size + (1 << 20) {
            fatal(format_args!(
                "core {index}: no room for {size} bytes of URPC channels"
            ));
        }
        last.end -= size;
        urpc_areas[index] = last.end;
    }
    // SAFETY: the areas were just cut out of the slices, are identity-mapped, and no other core
    // runs yet.
    unsafe { channels::initialise_all(&urpc_areas, cores.len()) };
    // Each core's NIC descriptor rings sit just below its channel area.
    let mut ring_areas = [0u64; MAX_CORES];
    for (index, slice) in memory.iter_mut().enumerate().take(cores.len()) {
        let Some(last) = slice.ranges.last_mut() else {
            continue;
        };
        last.end -= net::ring_area_size();
        ring_areas[index] = last.end;
    }
    let nic = net::bring_up(&platform, &cores, &ring_areas[..cores.len()], tsc_per_ms);
    let (nic_control, nic) = match nic {
        Some((control, handoff)) => (Some(control), Some(handoff)),
        None => (None, None),
    };
    let mut frames = FrameAllocator::new(memory[0].clone());
    let apic_ticks_per_ms = apic::calibrate_timer(&mut bsp_apic, tsc_per_ms);
    let shared: &'static BootShared = allocate_static(
        &mut frames,
        BootShared {
            options,
            cmdline: info.cmdline.clone(),
            cores,
            memory,
            tsc_per_ms,
            apic_ticks_per_ms,
            image,
            platform,
            urpc_areas,
            nic,
            online: core::array::from_fn(|_| AtomicU32::new(NOT_STARTED)),
        },
    );
    let mut core = set_up_core(shared, 0, frames, bsp_apic);
    core.nic_control = nic_control;

    // The trampoline page: the highest free page below the EBDA that the map calls usable.
    let page = info
        .memory
        .iter()
        .filter(|r| r.kind == crate::memory::MemoryKind::Usable && r.start < 0x9_F000)
        .map(|r| (r.end.min(0x9_F000) & !0xFFF).saturating_sub(0x1000))
        .filter(|&p| p >= 0x1000)
        .max()
        .unwrap_or_else(|| {
            fatal(format_args!(
                "no free page below 1 MiB for the AP trampoline"
            ))
        });
    // SAFETY: the page is usable RAM below 1 MiB, reserved from the frame allocators above,
    // and the loader's structures have been copied out.
    let trampoline = unsafe { smp::Trampoline::install(page, image.page_table_root) };
    for description in shared.cores.iter().skip(1) {
        let index = description.index as usize;
        let started = trampoline.start(
            description.apic_id,
            stacks[index],
            ap_entry,
            shared as *const BootShared as u64,
            index as u64,
            tsc_per_ms,
        );
        if let Err(error) = started {
            log::error!(
                "core {} (apic {}) did not start: {:?}",
                index,
                description.apic_id,
                error
            );
            shared.online[index].store(START_FAILED, Ordering::Release);
        }
    }
    wait_for_cores(shared);
    core.run()
}

fn wait_for_cores(shared: &BootShared) {
    let count = shared.cores.len();
    let deadline = tsc::now() + 5_000 * shared.tsc_per_ms;
    loop {
        // Acquire: pairs with each core's Release store of ONLINE after its set-up.
        let states: heapless::Vec<u32, MAX_CORES> = shared
            .online
            .iter()
            .take(count)
            .map(|s| s.load(Ordering::Acquire))
            .collect();
        let online = states.iter().filter(|&&s| s == ONLINE).count();
        let settled = states.iter().all(|&s| s != NOT_STARTED);
        if online == count {
            let elapsed = tsc::now() - shared.image.entry_tsc;
            let ms = elapsed / shared.tsc_per_ms;
            let tenths = elapsed * 10 / shared.tsc_per_ms % 10;
            crate::kprintln!(
                "flotilla: all {} cores online in {}.{} ms",
                count,
                ms,
                tenths
            );
            if shared.options.exit_when_ready {
                port::qemu_exit(0);
            }
            return;
        }
        if settled || tsc::now() > deadline {
            crate::kprintln!("flotilla: only {} of {} cores online", online, count);
            return;
        }
        x86_64::instructions::hlt();
    }
}

extern "C" fn ap_entry(shared: u64, index: u64) -> ! {
    // SAFETY: the bootstrap core passed the address of the BootShared record, which lives
    // forever and is no longer written except through its atomics.
    let shared = unsafe { &*(shared as *const BootShared) };
    let frames = FrameAllocator::new(shared.memory[index as usize].clone());
    let apic = apic::enable().unwrap_or_else(|error| fatal(format_args!("{error:?}")));
    set_up_core(shared, index as usize, frames, apic).run()
}

/// A core's private tables, allocated together from its own memory.
struct CoreBlock {
    percore: percore::PerCore,
    tables: gdt::CoreTables,
    interrupts: interrupts::InterruptTable,
}

/// One core after set-up: what its loop owns.
pub struct Core {
    shared: &'static BootShared,
    index: usize,
    frames: FrameAllocator,
    apic: LocalApic,
    online_tsc: u64,
    channels: channels::Channels,
    /// This core's part of the URPC latency self-test.
    rtt: RttState,
    /// Keep polling (no halt) until this TSC: set by message traffic.
    busy_until: u64,
    /// This core's network (queue, pool, stack), when the machine has a NIC.
    network: Option<net::CoreNetwork>,
    /// Core 0: the NIC's control side (RSS, redirection table), changed by agreement.
    nic_control: Option<drivers::igb::IgbControl<drivers::registers::Mmio>>,
    /// Each core's APIC id, for wake-up IPIs.
    apic_ids: alloc::vec::Vec<u32>,
    /// This core's monitor (the control plane).
    monitor: monitor::Monitor<control::KernelHooks>,
    /// Messages the monitor queued, sent after each call into it.
    outgoing: control::Outgoing,
    /// Agreements this core began: transaction, TSC at the start, the change.
    agreements: alloc::vec::Vec<(monitor::TxId, u64, monitor::Change)>,
    /// Who owns each flow group (the redirection table, as this core knows it).
    flow_owners: [monitor::CoreId; 128],
    /// Core 0: TSC when the machine became complete (the monitor's boot handshake).
    machine_complete_tsc: Option<u64>,
    /// Core 0: whether the `netd.move=` request was made.
    move_requested: bool,
    /// TSC of this core's last statistics gathering (refreshed every `STATS_PERIOD_MS`).
    last_stats_tsc: u64,
    /// A data message (not control-plane chatter) arrived since the last loop iteration: keep
    /// polling instead of halting.
    data_traffic: bool,
    /// A latency probe (ping, pong, matrix control) arrived: poll for `PROBE_POLL_US` so the
    /// URPC matrix measures the channel, not the wake-up.
    probe_traffic: bool,
    /// Channels the monitors set up by binding: (peer core, this core's end, role).
    bound: alloc::vec::Vec<(usize, urpc::Endpoint<'static>, monitor::Role)>,
    /// The `bind=` demonstration: TSC at which the client asks for its binding.
    bind_at: Option<u64>,
}

/// Cores with a network gather every core's counters this often, so `/stats` is never stale by
/// more than this.
const STATS_PERIOD_MS: u64 = 2_000;

/// The latency self-test: core 0 walks the ordered pairs; the first core of each pair pings the
/// second `rounds` times and reports percentiles back to core 0.
#[derive(Default)]
struct RttState {
    /// Core 0 only: the pair being measured (index into the ordered pair list) and whether done.
    coordinator: Option<(usize, bool)>,
    /// The pinging side: peer, rounds left, samples so far.
    pinging: Option<(usize, u32, alloc::vec::Vec<u64>)>,
    /// TSC of the last ping sent (to give up on a peer that stopped answering).
    last_ping: u64,
    /// Core 0 only: pairs that answered.
    answered: usize,
    /// Core 0 only: TSC when the current pair started.
    pair_started: u64,
}

/// A peer that does not answer a ping within this many milliseconds is reported and skipped.
const PING_TIMEOUT_MS: u64 = 1_000;

fn set_up_core(
    shared: &'static BootShared,
    index: usize,
    mut frames: FrameAllocator,
    mut apic: LocalApic,
) -> Core {
    let apic_id = apic::id();
    let fault_stack = frames
        .allocate(FAULT_STACK_SIZE, 4096)
        .unwrap_or_else(|error| fatal(format_args!("fault stack: {error:?}")));
    let block = allocate_static(
        &mut frames,
        CoreBlock {
            percore: percore::PerCore::new(index as u32, apic_id),
            tables: gdt::CoreTables::new(fault_stack + FAULT_STACK_SIZE),
            interrupts: interrupts::InterruptTable::new(0),
        },
    );
    let CoreBlock {
        percore: block_percore,
        tables,
        interrupts: idt,
    } = block;
    // SAFETY: the block is this core's, in its own memory, never freed; installed once.
    unsafe { percore::PerCore::install(block_percore) };
    let heap_size = (frames.available() / 2).min(MAX_HEAP) & !0xFFF;
    let heap_start = frames
        .allocate(heap_size, 4096)
        .unwrap_or_else(|error| fatal(format_args!("heap: {error:?}")));
    // SAFETY: fresh frames of this core's slice, identity-mapped, never freed; once per core.
    unsafe { heap::init(heap_start, heap_size as usize) };
    // SAFETY: the tables live in this core's block forever.
    unsafe {
        let code = tables.load();
        *idt = interrupts::InterruptTable::new(code.0);
        idt.load();
    }
    apic::start_periodic_timer(&mut apic, shared.apic_ticks_per_ms, shared.options.tick_hz);
    x86_64::instructions::interrupts::enable();
    let description = shared.cores[index];
    crate::kprintln!(
        "flotilla: core {} online apic={} node={} memory={} MiB",
        index,
        apic_id,
        description.node.map_or(-1, |n| n as i64),
        shared.memory[index].total() >> 20
    );
    if apic_id != description.apic_id {
        log::warn!(
            "core {} expected apic {} but runs on apic {}",
            index,
            description.apic_id,
            apic_id
        );
    }
    // SAFETY: core 0 initialised every channel before this core was started.
    let channels =
        unsafe { channels::Channels::attach(&shared.urpc_areas, shared.cores.len(), index) };
    let network = set_up_network(shared, index, &mut frames);
    let apic_ids = shared.cores.iter().map(|c| c.apic_id).collect();
    let monitor = set_up_monitor(shared, index);
    let queues = shared.nic.as_ref().map_or(1, |nic| nic.queue_count);
    let table = drivers::rss::default_table(queues);
    let flow_owners = core::array::from_fn(|g| monitor::CoreId::new(table[g]).expect("queue < 64"));
    // Release: this core's set-up happens-before core 0 reads ONLINE.
    shared.online[index].store(ONLINE, Ordering::Release);
    Core {
        network,
        nic_control: None,
        apic_ids,
        monitor,
        outgoing: control::Outgoing::default(),
        agreements: alloc::vec::Vec::new(),
        flow_owners,
        machine_complete_tsc: None,
        move_requested: false,
        last_stats_tsc: 0,
        data_traffic: false,
        probe_traffic: false,
        bound: alloc::vec::Vec::new(),
        bind_at: None,
        shared,
        index,
        frames,
        apic,
        online_tsc: tsc::now(),
        channels,
        rtt: RttState::default(),
        busy_until: 0,
    }
}

fn set_up_monitor(
    shared: &'static BootShared,
    index: usize,
) -> monitor::Monitor<control::KernelHooks> {
    let me = monitor::CoreId::new(index as u8).expect("at most 64 cores");
    let mut config = monitor::Config::new(me, monitor::CoreSet::first(shared.cores.len()));
    config.heartbeat_period_ns = u64::from(shared.options.heartbeat_ms) * 1_000_000;
    config.missed_heartbeats = shared.options.missed_heartbeats;
    let slice = &shared.memory[index];
    let info = monitor::CoreInfo {
        core: me,
        apic_id: shared.cores[index].apic_id,
        numa_node: shared.cores[index].node.unwrap_or(0) as u16,
        memory: monitor::Region {
            base: slice.ranges.first().map_or(0, |r| r.start),
            len: slice.total(),
        },
    };
    let hooks = control::KernelHooks {
        counters: [0; monitor::COUNTERS],
    };
    monitor::Monitor::new(config, info, hooks, control::now(shared.tsc_per_ms))
        .unwrap_or_else(|error| fatal(format_args!("monitor: {error:?}")))
}

fn set_up_network(
    shared: &'static BootShared,
    index: usize,
    frames: &mut FrameAllocator,
) -> Option<net::CoreNetwork> {
    let handoff = shared.nic.as_ref()?;
    // SAFETY: slot `index` is this core's; core 0 filled it before starting this core.
    let queue = unsafe { handoff.queues[index].take() }?;
    let pool_bytes = (frames.available() / 4).min(4 << 20) & !0xFFF;
    let pool_base = frames.allocate(pool_bytes, 4096).ok()?;
    match net::CoreNetwork::new(
        index,
        shared.cores.len(),
        handoff,
        queue,
        (pool_base, pool_bytes as usize),
        shared.cmdline.as_str(),
        shared.tsc_per_ms,
    ) {
        Ok(network) => {
            let addresses = network.net.config().addresses;
            crate::kprintln!(
                "netd: core {} up ip={:?} queue={} buffers={}",
                index,
                addresses,
                index,
                network.pool.capacity()
            );
            Some(network)
        }
        Err(error) => {
            log::error!("network stack: {error:?}");
            None
        }
    }
}

/// How long a core keeps polling after a latency probe (URPC ping or pong), in microseconds.
const PROBE_POLL_US: u64 = 20_000;

/// Messages a core takes from one channel per loop iteration (bounded: no unbounded poll).
const CHANNEL_BATCH: usize = 16;

impl Core {
    fn cores(&self) -> usize {
        self.shared.cores.len()
    }

    /// Sends `message` to `peer`, waking it if it sleeps; retries while the ring is full.
    fn send(&mut self, peer: usize, message: KernelMessage) {
        let apic_id = self.shared.cores[peer].apic_id;
        let Some(endpoint) = self.channels.endpoints[peer].as_mut() else {
            return;
        };
        let deadline = tsc::now() + 100 * self.shared.tsc_per_ms;
        loop {
            match endpoint.sender.try_send_message(&message) {
                Ok(()) => break,
                Err(urpc::SendError::Full) if tsc::now() < deadline => core::hint::spin_loop(),
                Err(error) => {
                    log::warn!("urpc to core {peer}: {error:?}; message dropped");
                    return;
                }
            }
        }
        endpoint
            .sender
            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
    }

    /// Drains every channel (bounded); returns how many messages were handled.
    /// Serves the channels the monitors bound: the server answers pings, the client reports the
    /// round trip. Bounded like the boot channels.
    fn poll_bound(&mut self) {
        for (peer, endpoint, role) in self.bound.iter_mut() {
            for _ in 0..CHANNEL_BATCH {
                match endpoint
                    .receiver
                    .try_recv_message::<CoreMessage>(&urpc::RegionTable::EMPTY)
                {
                    Ok(CoreMessage::Ping {
                        sequence,
                        timestamp,
                    }) => {
                        let _ = endpoint.sender.try_send_message(&CoreMessage::Pong {
                            sequence,
                            timestamp,
                        });
                        let apic_id = self.shared.cores[*peer].apic_id;
                        endpoint
                            .sender
                            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                    }
                    Ok(CoreMessage::Pong { timestamp, .. }) if *role == monitor::Role::Client => {
                        crate::kprintln!(
                            "monitor: bound channel core {} -> core {}: ping answered in {} cycles",
                            self.index,
                            peer,
                            tsc::now().wrapping_sub(timestamp)
                        );
                    }
                    Ok(other) => log::debug!("bound channel from core {peer}: {other:?}"),
                    Err(urpc::RecvError::Empty) => break,
                    Err(error) => {
                        log::warn!("bound channel from core {peer}: {error:?}");
                        break;
                    }
                }
            }
        }
    }

    fn poll_channels(&mut self) -> usize {
        self.poll_bound();
        let mut handled = 0;
        for peer in 0..self.cores() {
            for _ in 0..CHANNEL_BATCH {
                let Some(endpoint) = self.channels.endpoints[peer].as_mut() else {
                    break;
                };
                match endpoint
                    .receiver
                    .try_recv_message::<KernelMessage>(&urpc::RegionTable::EMPTY)
                {
                    Ok(message) => {
                        handled += 1;
                        self.handle(peer, message);
                    }
                    Err(urpc::RecvError::Empty) => break,
                    Err(error) => log::warn!("urpc from core {peer}: {error:?}"),
                }
            }
        }
        handled
    }

    fn handle(&mut self, from: usize, message: KernelMessage) {
        // Heartbeats and other monitor messages must not keep a core spinning: under TCG on a
        // small host, spinning cores starve the others and make the failure detector fire.
        match message {
            KernelMessage::Monitor { .. } => {}
            KernelMessage::NetChunk { .. } => self.data_traffic = true,
            _ => self.probe_traffic = true,
        }
        match message {
            KernelMessage::Core(CoreMessage::Ping {
                sequence,
                timestamp,
            }) => {
                self.send(
                    from,
                    KernelMessage::Core(CoreMessage::Pong {
                        sequence,
                        timestamp,
                    }),
                );
            }
            KernelMessage::Core(CoreMessage::Pong { timestamp, .. }) => {
                let now = tsc::now();
                if let Some((peer, left, samples)) = self.rtt.pinging.as_mut() {
                    if *peer == from {
                        samples.push(now.wrapping_sub(timestamp));
                        *left -= 1;
                        if *left > 0 {
                            let sequence = samples.len() as u64;
                            let peer = *peer;
                            self.rtt.last_ping = now;
                            self.send(
                                peer,
                                KernelMessage::Core(CoreMessage::Ping {
                                    sequence,
                                    timestamp: tsc::now(),
                                }),
                            );
                        } else {
                            self.finish_pinging();
                        }
                    }
                }
            }
            KernelMessage::RttStart { peer, rounds } => self.start_pinging(peer as usize, rounds),
            KernelMessage::RttDone { peer, p50, p99 } => {
                self.pair_done(from, peer as usize, p50, p99)
            }
            KernelMessage::NetChunk {
                total,
                offset,
                length,
                data,
            } => {
                self.net_chunk(from, total, offset, &data[..usize::from(length)]);
            }
            KernelMessage::Monitor { length, bytes } => {
                let Some(peer) = monitor::CoreId::new(from as u8) else {
                    return;
                };
                let now = control::now(self.shared.tsc_per_ms);
                if let Err(error) = self.monitor.handle_bytes(
                    now,
                    peer,
                    &bytes[..usize::from(length)],
                    &mut self.outgoing,
                ) {
                    log::warn!("monitor message from core {from}: {error:?}; dropped");
                }
                self.after_monitor();
            }
            KernelMessage::Core(other) => log::debug!("urpc from core {from}: {other:?}"),
        }
    }

    fn net_chunk(&mut self, from: usize, total: u16, offset: u16, data: &[u8]) {
        let tsc_per_ms = self.shared.tsc_per_ms;
        let Some(network) = self.network.as_mut() else {
            return;
        };
        let Some(bytes) = network.reassemble(from, total, offset, data) else {
            return;
        };
        match netd::PeerMessage::decode(&bytes) {
            Ok(message) => {
                let mut peers = net::UrpcPeers {
                    endpoints: &mut self.channels.endpoints,
                    apic_ids: &self.apic_ids,
                    tsc_per_ms,
                };
                network.net.handle_peer_message(
                    net::instant(tsc_per_ms),
                    &message,
                    &mut network.pool,
                    &mut peers,
                );
            }
            Err(error) => log::warn!("netd message from core {from}: {error:?}; dropped"),
        }
    }

    /// Prints this core's network counters (the `netd.report=` option).
    fn report_network(&self) {
        let Some(network) = self.network.as_ref() else {
            return;
        };
        let counters = network.net.counters();
        let queue = network.queue.stats();
        let drops: u64 = counters.drops.iter().sum();
        crate::kprintln!(
            "netd: stats core={} rx_frames={} tx_frames={} forwarded_in={} forwarded_out={} drops={} queue_rx={} queue_tx={} queue_no_descriptor={}",
            self.index,
            counters.rx_frames,
            counters.tx_frames,
            counters.forwarded_in,
            counters.forwarded_out,
            drops,
            queue.rx_packets,
            queue.tx_packets,
            queue.rx_no_descriptor
        );
    }

    /// One bounded step of the network: returns whether more work is waiting.
    fn poll_network(&mut self) -> bool {
        let tsc_per_ms = self.shared.tsc_per_ms;
        let Some(network) = self.network.as_mut() else {
            return false;
        };
        let mut peers = net::UrpcPeers {
            endpoints: &mut self.channels.endpoints,
            apic_ids: &self.apic_ids,
            tsc_per_ms,
        };
        let outcome = network.net.poll(
            net::instant(tsc_per_ms),
            &mut network.queue,
            &mut network.pool,
            &mut peers,
        );
        if outcome.stats_wanted {
            // `/stats` was asked for: gather every core's counters through the monitors; the
            // page shows the latest gathering (and this core's own counters live).
            self.gather_stats();
        }
        outcome.more_work || outcome.received > 0
    }

    fn gather_stats(&mut self) {
        let now = control::now(self.shared.tsc_per_ms);
        match self.monitor.request_stats(now, &mut self.outgoing) {
            Ok(_) => {}
            Err(error) => log::debug!("stats gathering: {error:?}"),
        }
        self.after_monitor();
    }

    /// Hands the gathered counters of every core that answered to this core's stack.
    fn stats_ready(&mut self, responded: monitor::CoreSet) {
        let now = net::instant(self.shared.tsc_per_ms);
        let Some(network) = self.network.as_mut() else {
            return;
        };
        let template = network.net.stats(now);
        let mut cores = alloc::vec::Vec::new();
        for core in responded.iter() {
            let Some(values) = self.monitor.gathered(core) else {
                continue;
            };
            let (counters, uptime_ms) = crate::stats::unpack(values);
            cores.push(netd::CoreStats {
                core: core.index() as u16,
                uptime_ms,
                counters,
                path_count: 0,
                ..template
            });
        }
        network.net.update_stats(&cores);
    }
    /// Milliseconds since the kernel started (core 0's entry; TSCs are synchronised).
    fn uptime_ms(&self) -> u64 {
        (tsc::now() - self.shared.image.entry_tsc) / self.shared.tsc_per_ms
    }

    /// Sends what the monitor queued and applies the events it raised.
    fn after_monitor(&mut self) {
        for (to, message) in core::mem::take(&mut self.outgoing.0) {
            let mut encoded = [0u8; monitor::MESSAGE_BYTES];
            let length = message.encode(&mut encoded);
            if length > crate::messages::MONITOR_MESSAGE_BYTES {
                log::error!("monitor message of {length} bytes does not fit a slot: {message:?}");
                continue;
            }
            let mut bytes = [0u8; crate::messages::MONITOR_MESSAGE_BYTES];
            bytes[..length].copy_from_slice(&encoded[..length]);
            // The monitor re-sends what is not acknowledged, so a full ring may drop.
            let apic_id = self.shared.cores[to.index()].apic_id;
            if let Some(endpoint) = self
                .channels
                .endpoints
                .get_mut(to.index())
                .and_then(Option::as_mut)
            {
                let message = KernelMessage::Monitor {
                    length: length as u8,
                    bytes,
                };
                if net::send_kernel_message(endpoint, apic_id, &message, self.shared.tsc_per_ms, 1)
                    .is_ok()
                {
                    endpoint
                        .sender
                        .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                }
            }
        }
        while let Some(event) = self.monitor.poll_event() {
            self.monitor_event(event);
        }
    }

    fn monitor_event(&mut self, event: monitor::Event) {
        use monitor::{Change, Event, Protocol};
        match event {
            Event::MachineComplete { members } => {
                if let Some((server, client)) = self.shared.options.bind_demo {
                    if server as usize == self.index {
                        let now = control::now(self.shared.tsc_per_ms);
                        let name = monitor::Name::new(b"echo").expect("a valid name");
                        if let Err(error) =
                            self.monitor.register_name(now, name, &mut self.outgoing)
                        {
                            crate::kprintln!("monitor: register 'echo': {error:?}");
                        }
                    }
                    if client as usize == self.index {
                        // Give the server's registration time to reach the directory.
                        self.bind_at = Some(tsc::now() + 100 * self.shared.tsc_per_ms);
                    }
                }
                if self.index == 0 {
                    self.machine_complete_tsc = Some(tsc::now());
                    crate::kprintln!(
                        "monitor: machine complete, {} cores, at {} ms",
                        members.len(),
                        self.uptime_ms()
                    );
                    // The first agreement: open the HTTP port on every core.
                    self.begin_agreement(Change::OpenPort {
                        proto: Protocol::Tcp,
                        port: 80,
                    });
                }
            }
            Event::CoreFailed(core) => {
                crate::kprintln!(
                    "monitor: core {} saw core {} fail at {} ms",
                    self.index,
                    core.index(),
                    self.uptime_ms()
                );
                let moved =
                    monitor::reassign_flow_groups(&mut self.flow_owners, self.monitor.live());
                self.apply_flow_table();
                if self.index == 0 {
                    crate::kprintln!(
                        "monitor: {} flow groups of core {} moved to the live cores",
                        moved,
                        core.index()
                    );
                }
            }
            Event::Fenced => {
                crate::kprintln!(
                    "monitor: core {} was declared failed by the others; it stops",
                    self.index
                );
                port::halt_forever();
            }
            Event::ChangeCommitted { tx, change } => {
                if let Some(position) = self.agreements.iter().position(|(id, _, _)| *id == tx) {
                    let (_, started, _) = self.agreements.swap_remove(position);
                    let micros = (tsc::now() - started) * 1000 / self.shared.tsc_per_ms;
                    crate::kprintln!(
                        "monitor: agreement {:?} committed on {} cores in {} us",
                        change,
                        self.monitor.live().len(),
                        micros
                    );
                }
                if let Change::MoveFlowGroup { group, to, .. } = change {
                    if let Some(slot) = self.flow_owners.get_mut(usize::from(group)) {
                        *slot = to;
                    }
                    self.apply_flow_table();
                    if self.index == 0 {
                        crate::kprintln!(
                            "monitor: flow group {} now on core {}",
                            group,
                            to.index()
                        );
                    }
                }
            }
            Event::ChangeAborted { tx, change } => {
                self.agreements.retain(|(id, _, _)| *id != tx);
                crate::kprintln!("monitor: agreement {:?} aborted", change);
            }
            Event::StatsReady { responded, .. } => self.stats_ready(responded),
            Event::NameRegistered { name, outcome } => {
                crate::kprintln!(
                    "monitor: core {} registered '{}': {:?}",
                    self.index,
                    core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                    outcome
                );
            }
            Event::BindingReady {
                role,
                name,
                peer,
                region,
                ..
            } => {
                // SAFETY: the client initialised the channel in this region before its address
                // was sent (KernelHooks::allocate_region); the region lives forever.
                let channel = unsafe {
                    urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::attach_raw(
                        region.base as *const u8,
                        region.len as usize,
                    )
                };
                let side = if role == monitor::Role::Client {
                    urpc::Side::A
                } else {
                    urpc::Side::B
                };
                match channel.map(|channel| channel.claim(side)) {
                    Ok(Ok(mut endpoint)) => {
                        crate::kprintln!(
                            "monitor: binding '{}' ready on core {} as {:?}, peer core {}, region {:#x}+{:#x}",
                            core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                            self.index,
                            role,
                            peer.index(),
                            region.base,
                            region.len
                        );
                        if role == monitor::Role::Client {
                            let ping = CoreMessage::Ping {
                                sequence: 1,
                                timestamp: tsc::now(),
                            };
                            let _ = endpoint.sender.try_send_message(&ping);
                            let apic_id = self.shared.cores[peer.index()].apic_id;
                            endpoint
                                .sender
                                .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                        }
                        self.bound.push((peer.index(), endpoint, role));
                    }
                    Ok(Err(error)) => crate::kprintln!("monitor: binding channel: {error:?}"),
                    Err(error) => crate::kprintln!("monitor: binding region unusable: {error:?}"),
                }
            }
            Event::BindingFailed { name, reason, .. } => {
                crate::kprintln!(
                    "monitor: binding '{}' failed: {:?}",
                    core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                    reason
                );
            }
            other => log::debug!("monitor event: {other:?}"),
        }
    }

    fn begin_agreement(&mut self, change: monitor::Change) {
        let now = control::now(self.shared.tsc_per_ms);
        match self
            .monitor
            .begin_agreement(now, change, &mut self.outgoing)
        {
            Ok(tx) => self.agreements.push((tx, tsc::now(), change)),
            Err(error) => log::warn!("agreement {change:?}: {error:?}"),
        }
        self.after_monitor();
    }

    /// Applies `flow_owners` to this core's stack and, on core 0, to the NIC.
    fn apply_flow_table(&mut self) {
        let owners: [netd::CoreId; 128] =
            core::array::from_fn(|g| self.flow_owners[g].index() as u16);
        if let Some(network) = self.network.as_mut() {
            network.net.set_flow_table(&owners);
        }
        if let Some(control) = self.nic_control.as_mut() {
            use drivers::nic::{FlowGroup, NicControl, QueueId};
            for (group, owner) in owners.iter().enumerate() {
                if control.flow_group(FlowGroup(group as u8)) != Ok(QueueId(*owner)) {
                    if let Err(error) =
                        control.set_flow_group(FlowGroup(group as u8), QueueId(*owner))
                    {
                        log::error!("redirection table entry {group}: {error:?}");
                    }
                }
            }
        }
    }

    /// Feeds the monitor its clock and, on core 0, makes a requested flow-group move.
    fn run_monitor(&mut self) {
        if self.bind_at.is_some_and(|at| tsc::now() >= at) {
            self.bind_at = None;
            let now = control::now(self.shared.tsc_per_ms);
            let name = monitor::Name::new(b"echo").expect("a valid name");
            if let Err(error) = self.monitor.bind(now, name, &mut self.outgoing) {
                crate::kprintln!("monitor: bind 'echo': {error:?}");
            }
            self.after_monitor();
        }
        let now = control::now(self.shared.tsc_per_ms);
        if now >= self.monitor.next_deadline() {
            if let Some(network) = self.network.as_ref() {
                let uptime = self.uptime_ms();
                self.monitor.hooks_mut().counters =
                    crate::stats::pack(network.net.counters(), uptime);
            }
            self.monitor.tick(now, &mut self.outgoing);
            self.after_monitor();
            if self.network.is_some()
                && self.monitor.is_machine_complete()
                && tsc::now() - self.last_stats_tsc > STATS_PERIOD_MS * self.shared.tsc_per_ms
            {
                self.last_stats_tsc = tsc::now();
                self.gather_stats();
            }
        }
        if let (Some(request), Some(complete)) = (
            self.shared.options.move_flow_group,
            self.machine_complete_tsc,
        ) {
            if !self.move_requested
                && tsc::now() - complete >= u64::from(request.after_ms) * self.shared.tsc_per_ms
            {
                self.move_requested = true;
                let from = self.flow_owners[usize::from(request.group)];
                match monitor::CoreId::new(request.to as u8).filter(|to| to.index() < self.cores())
                {
                    Some(to) => self.begin_agreement(monitor::Change::MoveFlowGroup {
                        group: request.group,
                        from,
                        to,
                    }),
                    None => crate::kprintln!("monitor: netd.move: no core {}", request.to),
                }
            }
        }
    }

    fn start_pinging(&mut self, peer: usize, rounds: u32) {
        if peer >= self.cores() || peer == self.index || rounds == 0 {
            return;
        }
        self.rtt.pinging = Some((
            peer,
            rounds,
            alloc::vec::Vec::with_capacity(rounds as usize),
        ));
        self.rtt.last_ping = tsc::now();
        self.send(
            peer,
            KernelMessage::Core(CoreMessage::Ping {
                sequence: 0,
                timestamp: tsc::now(),
            }),
        );
    }

    fn finish_pinging(&mut self) {
        let Some((peer, _, mut samples)) = self.rtt.pinging.take() else {
            return;
        };
        let (p50, p99) = crate::messages::percentiles(&mut samples);
        crate::kprintln!(
            "urpc: rtt {}->{} p50={} p99={} cycles",
            self.index,
            peer,
            p50,
            p99
        );
        let done = KernelMessage::RttDone {
            peer: peer as u32,
            p50,
            p99,
        };
        if self.index == 0 {
            self.handle(0, done);
        } else {
            self.send(0, done);
        }
    }

    /// The ordered pairs of the matrix, pair `n`.
    fn pair(&self, n: usize) -> Option<(usize, usize)> {
        let cores = self.cores();
        let per_row = cores - 1;
        if cores < 2 || n >= cores * per_row {
            return None;
        }
        let a = n / per_row;
        let mut b = n % per_row;
        if b >= a {
            b += 1;
        }
        Some((a, b))
    }

    fn start_pair(&mut self, n: usize) {
        let rounds = self.shared.options.urpc_matrix_rounds;
        match self.pair(n) {
            Some((a, b)) => {
                self.rtt.coordinator = Some((n, false));
                self.rtt.pair_started = tsc::now();
                if a == 0 {
                    self.start_pinging(b, rounds);
                } else {
                    self.send(
                        a,
                        KernelMessage::RttStart {
                            peer: b as u32,
                            rounds,
                        },
                    );
                }
            }
            None => {
                self.rtt.coordinator = Some((n, true));
                let pairs = self.cores() * (self.cores() - 1);
                let note = if apic::under_hypervisor() {
                    " (under a hypervisor/TCG: virtual TSC cycles, not hardware cycles)"
                } else {
                    ""
                };
                crate::kprintln!(
                    "urpc: matrix complete, {} cores, {} of {} pairs answered{}",
                    self.cores(),
                    self.rtt.answered,
                    pairs,
                    note
                );
            }
        }
    }

    fn pair_done(&mut self, from: usize, peer: usize, p50: u64, _p99: u64) {
        if self.index != 0 {
            return;
        }
        if let Some((n, false)) = self.rtt.coordinator {
            if self.pair(n) == Some((from, peer)) {
                if p50 > 0 {
                    self.rtt.answered += 1;
                }
                self.start_pair(n + 1);
            }
        }
    }

    /// The core's loop: drain channels, do what is due, halt when idle. Never returns.
    pub fn run(mut self) -> ! {
        let options = self.shared.options;
        let injection = options.fault.is_some() || options.hang.is_some();
        let mut next_alive_ms = 500;
        let mut next_report_ms = u64::from(options.netd_report_ms);
        let _ = (&self.frames, &self.apic);
        if self.index == 0 && options.urpc_matrix_rounds > 0 && self.cores() > 1 {
            crate::kprintln!(
                "urpc: latency matrix, {} round trips a pair",
                options.urpc_matrix_rounds
            );
            self.start_pair(0);
        }
        loop {
            if let Some((peer, _, _)) = self.rtt.pinging {
                if tsc::now() - self.rtt.last_ping > PING_TIMEOUT_MS * self.shared.tsc_per_ms {
                    crate::kprintln!(
                        "urpc: rtt {}->{} no answer for {} ms",
                        self.index,
                        peer,
                        PING_TIMEOUT_MS
                    );
                    self.rtt.pinging = None;
                    let done = KernelMessage::RttDone {
                        peer: peer as u32,
                        p50: 0,
                        p99: 0,
                    };
                    if self.index == 0 {
                        self.handle(0, done);
                    } else {
                        self.send(0, done);
                    }
                }
            }
            if let Some((n, false)) = self.rtt.coordinator {
                // A pinging core that died never reports: give up on its pair after a while.
                let limit = 3 * PING_TIMEOUT_MS + options.urpc_matrix_rounds as u64 * 10;
                if tsc::now() - self.rtt.pair_started > limit * self.shared.tsc_per_ms {
                    if let Some((a, b)) = self.pair(n) {
                        crate::kprintln!(
                            "urpc: rtt {}->{} no answer: core {} did not report",
                            a,
                            b,
                            a
                        );
                    }
                    self.start_pair(n + 1);
                }
            }
            self.run_monitor();
            let network_busy = self.poll_network();
            self.poll_channels();
            let per_ms = self.shared.tsc_per_ms;
            if core::mem::take(&mut self.probe_traffic) || self.rtt.pinging.is_some() {
                self.busy_until = tsc::now() + PROBE_POLL_US * per_ms / 1000;
            } else if core::mem::take(&mut self.data_traffic) || network_busy {
                let until = tsc::now() + u64::from(options.poll_after_traffic_us) * per_ms / 1000;
                self.busy_until = self.busy_until.max(until);
            }
            let now = tsc::now();
            let elapsed_ms = (now - self.online_tsc) / self.shared.tsc_per_ms;
            if let Some(fault) = options.fault {
                if fault.core as usize == self.index && elapsed_ms >= 50 {
                    inject_fault(fault.kind);
                }
            }
            if let Some(hang) = options.hang {
                if hang.core as usize == self.index && elapsed_ms >= hang.after_ms as u64 {
                    crate::kprintln!(
                        "flotilla: core {} hangs now at {} ms (hang= option)",
                        self.index,
                        self.uptime_ms()
                    );
                    port::halt_forever();
                }
            }
            if injection && elapsed_ms >= next_alive_ms {
                next_alive_ms += 1000;
                crate::kprintln!(
                    "flotilla: core {} alive after {} ms, ticks={}",
                    self.index,
                    elapsed_ms,
                    percore::ticks()
                );
            }
            if options.netd_report_ms > 0 && elapsed_ms >= next_report_ms {
                next_report_ms = elapsed_ms + u64::from(options.netd_report_ms);
                self.report_network();
            }
            if now < self.busy_until {
                core::hint::spin_loop();
                continue;
            }
            self.halt_until_event();
        }
    }

    /// Announces sleep on every channel, and halts unless a message slipped in; interrupts are
    /// off between the check and `sti; hlt`, so a wake-up IPI cannot be lost.
    fn halt_until_event(&mut self) {
        x86_64::instructions::interrupts::disable();
        let mut pending = false;
        if let Some(network) = self.network.as_mut() {
            // An interrupt only starts polling: the queue's vector auto-masks when it fires.
            network.queue.set_interrupt(true);
            // A frame that arrived while the vector was masked may raise nothing on unmask
            // (QEMU's igb does not): look at the ring once more before halting.
            pending |= network.queue.receive_pending();
        }
        let bound = self.bound.iter_mut().map(|(_, endpoint, _)| endpoint);
        for endpoint in self.channels.endpoints.iter_mut().flatten().chain(bound) {
            if pending {
                break;
            }
            if endpoint.receiver.prepare_to_sleep() == urpc::SleepDecision::MessagePending {
                pending = true;
                break;
            }
        }
        if pending {
            x86_64::instructions::interrupts::enable();
        } else {
            x86_64::instructions::interrupts::enable_and_hlt();
        }
        let bound = self.bound.iter_mut().map(|(_, endpoint, _)| endpoint);
        for endpoint in self.channels.endpoints.iter_mut().flatten().chain(bound) {
            endpoint.receiver.woke();
        }
    }
}

fn inject_fault(kind: FaultKind) {
    log::warn!("injecting {:?} as the fault= option asks", kind);
    match kind {
        // SAFETY: `ud2` raises #UD, which the dispatcher reports before halting this core.
        FaultKind::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
        // SAFETY: `int3` raises #BP, handled like every exception: reported, core halted.
        FaultKind::Breakpoint => unsafe { core::arch::asm!("int3") },
        // SAFETY: the address is above the 64 GiB identity map, so the load faults (#PF) before
        // it reads anything; the dispatcher reports it and halts this core.
        FaultKind::PageFault => unsafe {
            core::arch::asm!("mov rax, [{}]", in(reg) 0x0000_7000_0000_0000u64, out("rax") _)
        },
        // SAFETY: dividing by a zeroed register raises #DE; only the named registers change.
        FaultKind::DivideError => unsafe {
            core::arch::asm!(
                "xor edx, edx",
                "xor ecx, ecx",
                "mov eax, 1",
                "div ecx",
                out("eax") _,
                out("ecx") _,
                out("edx") _
            )
        },
    }
}

/// Called by the panic handler: reports the panic with the core.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::kprintln!(
        "flotilla: panic core={}: {}",
        percore::current_core_index(),
        info
    );
    port::halt_forever()
}
