//! A minute of overload in QEMU: memory stays flat and service answers afterwards.
//!
//! * `a_minute_at_four_times_capacity_leaves_memory_flat_and_service_answering`: 2 cores, igb on
//!   a tap device in a network namespace this test creates, each vCPU thread capped to 5 % of a
//!   host core (cgroup v1, `qemu_smp::experiment::cgroup`) so that a host generator can offer
//!   far more than the guest can take. The experiments' generator (`loadgen`) first measures the
//!   guest's capacity in this run (closed loop, 32 UDP echo flows spread over both queues, 3 s);
//!   then it offers 4× that, open loop (Poisson arrivals), for 60 s. The heap of every core
//!   (`/stats`: `memory.heap_used`, `memory.heap_high_water`, read from the kernel's allocator
//!   through the stack's heap probe) is read after the capacity run (warm) and after the soak: the
//!   high-water mark may grow by at most 256 KiB (0.2 % of a 128 MiB heap) and what is in use may
//!   not pass the old high-water mark by more than that — a leak of one byte per frame would be
//!   megabytes. What TCP's budget accounts for (`memory.tcp_used`, `tcp_high_water`: the `/stats`
//!   request's own connection, half a megabyte of buffers on whichever core serves it) is bounded
//!   by `netd.tcp_mem` and left out. No core may be declared failed meanwhile (heartbeats ran
//!   through the overload), and afterwards UDP echo on every queue, TCP echo, HTTP and memcached
//!   must answer. Prints the capacity, what was offered and echoed, and the heap figures.
//!
//! Needs root (namespaces, cgroups), `ip`, `curl` and Debian's `python3-pymemcache`. Every loop
//! is bounded in count and time; all traffic stays inside the test's namespace.
//! `FLOTILLA_TEST_KERNEL=/path/to/image` boots that image instead.

use drivers::rss;
use flotilla_tests::clients::*;
use flotilla_tests::stats::{self, try_stats_json};
use flotilla_tests::*;
use loadgen::{Pace, UdpLoad};
use qemu_smp::experiment::cgroup::CpuCaps;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const CORES: u16 = 2;
/// Each vCPU thread's share of one host core.
const VCPU_SHARE: f64 = 0.05;
/// How long the overload lasts.
const SOAK: Duration = Duration::from_secs(60);
/// Offered load as a multiple of the measured capacity.
const OVERLOAD: f64 = 4.0;
/// Most the heap's high-water mark may grow over the soak, per core.
const HEAP_SLACK: u64 = 256 << 10;

/// One core's heap as `/stats` shows it, with the part TCP's budget accounts for.
#[derive(Clone, Copy, Debug)]
struct Heap {
    used: u64,
    high_water: u64,
    bytes: u64,
    /// TCP buffers and connection state charged now (`memory.tcp_used`).
    tcp_used: u64,
    /// The most ever charged at once (`memory.tcp_high_water`).
    tcp_high_water: u64,
}

/// One core's heap from its `/stats` entry, if the entry has every field.
fn heap_of(core: &serde_json::Value) -> Option<(u64, Heap)> {
    let memory = &core["memory"];
    let field = |name: &str| memory[name].as_u64();
    Some((
        core["core"].as_u64()?,
        Heap {
            used: field("heap_used")?,
            high_water: field("heap_high_water")?,
            bytes: field("heap_size")?,
            tcp_used: field("tcp_used")?,
            tcp_high_water: field("tcp_high_water")?,
        },
    ))
}

/// Every core's heap as `/stats` shows it.
fn heaps(namespace: &TapNamespace) -> BTreeMap<u64, Heap> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, shown) = match try_stats_json(namespace) {
            Ok(doc) => {
                let out: BTreeMap<u64, Heap> =
                    stats::cores(&doc).iter().filter_map(heap_of).collect();
                (out, doc.to_string())
            }
            Err(error) => (BTreeMap::new(), error),
        };
        // Other cores' entries come from the latest gathering: wait until both report a heap.
        let complete = out.len() == usize::from(CORES) && out.values().all(|heap| heap.bytes > 0);
        if complete || Instant::now() >= deadline {
            assert!(complete, "/stats without every core's heap: {shown}");
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_minute_at_four_times_capacity_leaves_memory_flat_and_service_answering() {
    require_root();
    require_program("ip", "iproute2");
    require_program("curl", "curl");
    let python = python_with("pymemcache");
    let namespace =
        TapNamespace::create(&unique_namespace("soak")).unwrap_or_else(|e| panic!("{e}"));
    let mut config = tap_config(&namespace, CORES, "urpc=off");
    config.extra_args = vec!["-name".into(), "flotilla-soak,debug-threads=on".into()];
    let machine = boot_with_network(&config, CORES);
    let caps = CpuCaps::per_vcpu(
        qemu_in_namespace(&namespace.name),
        VCPU_SHARE,
        &format!("soak-{}", std::process::id()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (ready, _) = ping_until_answered(&namespace, 1, 1, 60);
    assert!(ready, "no ping:\n{}", console_tail(&machine, 40));

    let source: Ipv4Addr = HOST_ADDRESS.parse().expect("address");
    let guest: Ipv4Addr = GUEST_ADDRESS.parse().expect("address");
    let ports = loadgen::flows::spread_ports(source, guest, 7, 32, CORES, 40000..50000);
    let mut load = UdpLoad::echo(
        source,
        SocketAddrV4::new(guest, 7),
        ports,
        1.0,
        Duration::from_secs(3),
    );
    load.netns = Some(format!("/run/netns/{}", namespace.name).into());
    load.pace = Pace::Closed {
        window: 4,
        timeout: Duration::from_millis(200),
    };
    let measured = loadgen::udp::run(&load).unwrap_or_else(|e| panic!("capacity run: {e}"));
    let capacity = measured.received_per_second();
    assert!(
        capacity > 100.0,
        "the guest echoed almost nothing: {measured:?}"
    );
    let before = heaps(&namespace);

    load.pace = Pace::Open {
        rate: OVERLOAD * capacity,
        arrivals: loadgen::Arrivals::Poisson,
    };
    load.duration = SOAK;
    let soak = loadgen::udp::run(&load).unwrap_or_else(|e| panic!("soak: {e}"));
    let offered = soak.offered_per_second();
    let after = heaps(&namespace);
    println!(
        "capacity {capacity:.0} echoes/s (closed loop, window 4 x 32 flows); soak: offered {offered:.0}/s ({:.1}x) for {:.0} s, echoed {:.0}/s, generator lag {:?}",
        offered / capacity,
        soak.elapsed.as_secs_f64(),
        soak.received_per_second(),
        soak.max_lag
    );
    for (core, heap) in &after {
        let was = before[core];
        println!(
            "core {core} heap of {} bytes: in use {} -> {}, high water {} -> {}; of which TCP's budget: in use {} -> {}, high water {} -> {}",
            heap.bytes,
            was.used,
            heap.used,
            was.high_water,
            heap.high_water,
            was.tcp_used,
            heap.tcp_used,
            was.tcp_high_water,
            heap.tcp_high_water
        );
    }
    assert!(
        offered >= 3.5 * capacity,
        "the generator offered only {offered:.0}/s against a capacity of {capacity:.0}/s (lag {:?})",
        soak.max_lag
    );

    // Service on every protocol after the soak.
    let table = rss::default_table(CORES);
    let udp_flows = ports_by_queue(&table, 7, 4, 20000..=24999);
    let udp = udp_echo(&namespace, &python, &udp_flows, 4, Duration::from_secs(120));
    assert_eq!(
        udp.ok,
        udp_flows.len(),
        "UDP echo after the soak:\n{}",
        udp.report
    );
    let tcp_flows = ports_by_queue(&table, 7, 2, 25000..=29999);
    let tcp = tcp_echo(&namespace, &python, &tcp_flows, Duration::from_secs(120));
    assert_eq!(
        tcp.ok,
        tcp_flows.len(),
        "TCP echo after the soak:\n{}",
        tcp.report
    );
    let memcached_flows = ports_by_queue(&table, 11211, 1, 30000..=32767);
    let plan = memcached_plan(&memcached_flows, CORES, 1, |index, owner, n| {
        format!("soak{index}-{owner}-{n}")
    });
    let mc = memcached(&namespace, &python, &plan, Duration::from_secs(120));
    assert_eq!(
        mc.ok,
        memcached_flows.len() + 1,
        "memcached after the soak:\n{}",
        mc.report
    );
    drop(caps);

    let console = machine.console();
    assert_no_fault(&console, "");
    assert_no_core_declared_failed(&console, " under the soak");
    // The `/stats` request itself is a TCP connection with its buffers (half a megabyte at the
    // default netd.tcp_buffer_kb), on whichever core RSS gives it: growth that TCP's budget
    // accounts for (bounded by netd.tcp_mem, with its own counters) is not a leak.
    for (core, heap) in &after {
        let was = before[core];
        let tcp_growth = heap.tcp_high_water.saturating_sub(was.tcp_high_water);
        assert!(
            heap.high_water <= was.high_water + HEAP_SLACK + tcp_growth
                && heap.used.saturating_sub(heap.tcp_used) <= was.high_water + HEAP_SLACK,
            "core {core}'s heap grew over the soak: high water {} -> {} (TCP's part {} -> {}), in use {} (TCP {})",
            was.high_water,
            heap.high_water,
            was.tcp_high_water,
            heap.tcp_high_water,
            heap.used,
            heap.tcp_used
        );
    }
    drop(machine);
    drop(namespace);
}
