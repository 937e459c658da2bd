//! Bringing the machine up and each core's loop.
//!
//! The bootstrap core (core 0) reads the boot information and ACPI, splits memory into per-core
//! slices, prepares the read-only [`BootShared`] record and starts the other cores. Every core
//! then sets itself up from its own slice (per-core block, heap, GDT/TSS, IDT, x2APIC timer) and
//! enters its loop.

use core::sync::atomic::{AtomicU32, Ordering};

use x2apic::lapic::LocalApic;

use super::core_loop::{Core, KernelPlatform};
use super::{acpi, apic, channels, console, gdt, heap, interrupts, net, percore, port, smp, tsc};
use crate::boot_info::BootInfo;
use crate::cmdline::{Cmdline, KernelOptions, LogLevel, OptionProblem};
use crate::memory::{split_per_core, CoreMemory, FrameAllocator, PhysicalRange};
use crate::node::{self, Instant, Platform};
use crate::topology::{CoreDescription, MAX_CORES};

/// Size of each application processor's boot stack (its only stack).
const AP_STACK_SIZE: u64 = 256 * 1024;
/// Size of each core's fault (IST) stack.
const FAULT_STACK_SIZE: u64 = 16 * 1024;
/// Largest per-core heap (half the core's memory slice at most): 128 MiB holds netd's TCP budget
/// for thousands of connections beside the 32 MiB the applications size themselves by
/// (`netd::NetConfig::tcp_budget_bytes`).
const MAX_HEAP: u64 = 128 << 20;
/// Largest per-core bulk pool (buffers lent by reference to other cores).
const MAX_BULK: u64 = 8 << 20;
/// Smallest bulk pool: a 1 MB memcached value with its headers must fit, twice.
const MIN_BULK: u64 = 2 << 20;
/// How often a core with a network gathers every core's statistics for `/stats`.
const STATS_PERIOD_NS: u64 = 2_000_000_000;
/// The monitors' re-send sweep (their default, 2 ms, would wake every core 500 times a second;
/// 10 ms is what they effectively had under the old 100 Hz tick).
const MONITOR_SWEEP_NS: u64 = 10_000_000;

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
    /// Each core's bulk pool: (address, bytes), identity-mapped; every core reads the others'
    /// lent buffers in place (`node::bulk`).
    pub bulk_areas: [(u64, u64); MAX_CORES],
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
    // Each core's bulk pool is the top of the largest range of its slice (firmware memory maps,
    // OVMF's above all, can leave the last range small).
    let mut bulk_areas = [(0u64, 0u64); MAX_CORES];
    for (index, slice) in memory.iter_mut().enumerate().take(cores.len()) {
        let Some(range) = slice.ranges.iter_mut().max_by_key(|range| range.len()) else {
            continue;
        };
        let block = node::bulk::BLOCK as u64;
        let mut size = (range.len() / 8).clamp(MIN_BULK, MAX_BULK) & !(block - 1);
        if range.len() < size + (4 << 20) {
            size = (range.len() / 4) & !(block - 1);
            log::warn!(
                "core {index}: bulk pool of {size} bytes only (values near 1 MB may be refused)"
            );
        }
        range.end -= size;
        bulk_areas[index] = (range.end, size);
    }
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
            bulk_areas,
            nic,
            online: core::array::from_fn(|_| AtomicU32::new(NOT_STARTED)),
        },
    );
    let mut core = set_up_core(shared, 0, frames, bsp_apic, nic_control);

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
    wait_for_cores(shared, &mut core.timer);
    core.run()
}

fn wait_for_cores(shared: &BootShared, timer: &mut apic::DeadlineTimer) {
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
        // No periodic tick: wake in 1 ms to look again.
        x86_64::instructions::interrupts::disable();
        timer.arm(Some(tsc::now() + shared.tsc_per_ms));
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

extern "C" fn ap_entry(shared: u64, index: u64) -> ! {
    // SAFETY: the bootstrap core passed the address of the BootShared record, which lives
    // forever and is no longer written except through its atomics.
    let shared = unsafe { &*(shared as *const BootShared) };
    let frames = FrameAllocator::new(shared.memory[index as usize].clone());
    let apic = apic::enable().unwrap_or_else(|error| fatal(format_args!("{error:?}")));
    set_up_core(shared, index as usize, frames, apic, None).run()
}

/// A core's private tables, allocated together from its own memory.
struct CoreBlock {
    percore: percore::PerCore,
    tables: gdt::CoreTables,
    interrupts: interrupts::InterruptTable,
}

fn set_up_core(
    shared: &'static BootShared,
    index: usize,
    mut frames: FrameAllocator,
    apic: LocalApic,
    nic_control: Option<drivers::igb::IgbControl<drivers::registers::Mmio>>,
) -> Core {
    let apic_id = apic::id();
    let fault_stack = frames
        .allocate(FAULT_STACK_SIZE, 4096)
        .unwrap_or_else(|error| fatal(format_args!("fault stack: {error:?}")));
    // The queues sharing this core's MSI-X vector (node::wake): their cores' APIC ids.
    let mut nic_forward: heapless::Vec<u32, { percore::MAX_FORWARDS }> = heapless::Vec::new();
    if let Some(nic) = shared.nic.as_ref() {
        let holders = node::wake::QueueHolders::boot(usize::from(nic.queue_count));
        for core in node::wake::forward_targets(index, usize::from(nic.vectors), &holders) {
            let _ = nic_forward.push(shared.cores[core].apic_id);
        }
    }
    let block = allocate_static(
        &mut frames,
        CoreBlock {
            percore: percore::PerCore::new(index as u32, apic_id, &nic_forward),
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
    let timer = apic::DeadlineTimer::new(apic, shared.apic_ticks_per_ms, shared.tsc_per_ms);
    if index == 0 {
        log::info!(
            "timer: one-shot per halt ({}), no periodic tick{}",
            if timer.uses_tsc_deadline() {
                "TSC-deadline mode"
            } else {
                "APIC count mode"
            },
            match shared.options.tick_hz {
                0 => alloc::string::String::new(),
                hz => alloc::format!(" (tick_hz={hz} asked: a deadline every 1/{hz} s)"),
            }
        );
    }
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
    let platform = KernelPlatform {
        entry_tsc: shared.image.entry_tsc,
        tsc_per_ms: shared.tsc_per_ms,
        apic_ids: shared.cores.iter().map(|c| c.apic_id).collect(),
    };
    let now = platform.now();
    // SAFETY: core 0 initialised every channel before this core was started.
    let channels =
        unsafe { channels::Channels::attach(&shared.urpc_areas, shared.cores.len(), index) };
    let cores = shared.cores.len();
    let (bulk_base, bulk_bytes) = shared.bulk_areas[index];
    // SAFETY: this core's bulk area was cut out of its slice at boot for this pool alone,
    // identity-mapped (its address is its pointer) and never freed; other cores only read the
    // buffers it lends.
    let pool = unsafe {
        node::bulk::BulkPool::new(
            bulk_base as usize,
            bulk_bytes as usize,
            urpc::RegionId(index as u16),
        )
    };
    let areas: heapless::Vec<(usize, usize), MAX_CORES> = shared.bulk_areas[..cores]
        .iter()
        .map(|&(base, bytes)| (base as usize, bytes as usize))
        .collect();
    // SAFETY: every core's bulk area, as above: identity-mapped and live forever.
    let regions = unsafe { node::bulk::BulkRegions::new(&areas) };
    let mailbox = node::mailbox::Mailbox::new(index, channels.endpoints, pool);
    let network = set_up_network(shared, index, &mut frames, now);
    let monitor = set_up_monitor(shared, index, now);
    let options = shared.options;
    let config = node::NodeConfig {
        core: index,
        cores,
        queues: shared.nic.as_ref().map_or(1, |nic| nic.queue_count),
        poll_after_traffic_ns: u64::from(options.poll_after_traffic_us) * 1000,
        tick_ns: (options.tick_hz > 0).then(|| 1_000_000_000 / u64::from(options.tick_hz)),
        stats_period_ns: STATS_PERIOD_NS,
    };
    let hook = crate::scenarios::Scenarios::from_options(&options, index, cores).map(|scenarios| {
        alloc::boxed::Box::new(scenarios) as alloc::boxed::Box<dyn node::hook::Hook>
    });
    // Boxed only now: core 0 has no heap before `heap::init` above. Core 0 is the NIC's home at
    // boot; every core with a NIC can take the NIC over should it become the home.
    let source = shared.nic.as_ref().map(|handoff| net::KernelNicSource {
        handoff,
        apic_ids: shared.cores.iter().map(|c| c.apic_id).collect(),
    });
    let steering = match (nic_control, source.as_ref()) {
        (Some(control), Some(source)) => Some(alloc::boxed::Box::new(source.home(control))
            as alloc::boxed::Box<dyn node::flows::NicHome>),
        _ => None,
    };
    let mut node = node::Node::new(
        config, mailbox, regions, network, steering, monitor, hook, now,
    );
    if let Some(source) = source {
        node = node.with_nic(alloc::boxed::Box::new(source));
    }
    let _ = frames;
    // Release: this core's set-up happens-before core 0 reads ONLINE.
    shared.online[index].store(ONLINE, Ordering::Release);
    Core {
        node,
        platform,
        timer,
    }
}

fn set_up_monitor(
    shared: &'static BootShared,
    index: usize,
    now: Instant,
) -> monitor::Monitor<node::control::KernelHooks> {
    let me = monitor::CoreId::new(index as u8).expect("at most 64 cores");
    let mut config = monitor::Config::new(me, monitor::CoreSet::first(shared.cores.len()));
    config.heartbeat_period_ns = u64::from(shared.options.heartbeat_ms) * 1_000_000;
    config.missed_heartbeats = shared.options.missed_heartbeats;
    config.retransmit_ns = MONITOR_SWEEP_NS.min(config.heartbeat_period_ns);
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
    let hooks = node::control::KernelHooks {
        counters: [0; monitor::COUNTERS],
    };
    monitor::Monitor::new(config, info, hooks, now)
        .unwrap_or_else(|error| fatal(format_args!("monitor: {error:?}")))
}

fn set_up_network(
    shared: &'static BootShared,
    index: usize,
    frames: &mut FrameAllocator,
    now: Instant,
) -> Option<net::KernelNetwork> {
    let handoff = shared.nic.as_ref()?;
    // SAFETY: slot `index` is this core's; core 0 filled it before starting this core.
    let queue = unsafe { handoff.queues[index].take() }?;
    let pool_bytes = (frames.available() / 4).min(4 << 20) & !0xFFF;
    let pool_base = frames.allocate(pool_bytes, 4096).ok()?;
    match net::core_network(
        index,
        shared.cores.len(),
        handoff,
        queue,
        (pool_base, pool_bytes as usize),
        shared.cmdline.as_str(),
        now,
        shared.tsc_per_ms,
    ) {
        Ok(network) => {
            let network = network.with_adoption(alloc::boxed::Box::new(net::KernelQueueAdoption {
                handoff,
                tsc_per_ms: shared.tsc_per_ms,
            }));
            let addresses = network.net.config().addresses;
            crate::kprintln!(
                "netd: core {} up ip={} queue={} buffers={}",
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

/// Called by the panic handler: reports the panic with the core.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::kprintln!(
        "flotilla: panic core={}: {}",
        percore::current_core_index(),
        info
    );
    port::halt_forever()
}
