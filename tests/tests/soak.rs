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
//!   must answer. Prints the
//!   capacity, what was offered and echoed, and the heap figures.
//!
//! Needs root (namespaces, cgroups), `ip`, `curl` and Debian's `python3-pymemcache`. Every loop
//! is bounded in count and time; all traffic stays inside the test's namespace.
//! `FLOTILLA_TEST_KERNEL=/path/to/image` boots that image instead.

use drivers::rss;
use flotilla_tests::clients::*;
use flotilla_tests::*;
use loadgen::{Pace, UdpLoad};
use qemu_smp::experiment::cgroup::CpuCaps;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
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

/// Reads `/stats` JSON from stdin; prints `core=K used=U high_water=H bytes=B tcp_used=T
/// tcp_high_water=W` per core.
const HEAP_SUMMARY: &str = r#"
import json, sys
for c in json.load(sys.stdin)['cores']:
    h = c['memory']
    print('core=%d used=%d high_water=%d bytes=%d tcp_used=%d tcp_high_water=%d' % (c['core'], h['heap_used'], h['heap_high_water'], h['heap_size'], h['tcp_used'], h['tcp_high_water']))
"#;

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

/// Every core's heap as `/stats` shows it.
fn heaps(namespace: &TapNamespace) -> BTreeMap<u64, Heap> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = format!("http://{GUEST_ADDRESS}/stats");
        let body = run_bounded(
            namespace
                .command("curl")
                .args(["-sS", "--max-time", "10", &url]),
            Duration::from_secs(20),
        );
        let mut child = Command::new("python3")
            .args(["-c", HEAP_SUMMARY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&body.stdout)
            .expect("write");
        let summary = child.wait_with_output().expect("python3");
        let mut out = BTreeMap::new();
        for line in String::from_utf8_lossy(&summary.stdout).lines() {
            let map = fields(line);
            out.insert(
                number(&map, "core"),
                Heap {
                    used: number(&map, "used"),
                    high_water: number(&map, "high_water"),
                    bytes: number(&map, "bytes"),
                    tcp_used: number(&map, "tcp_used"),
                    tcp_high_water: number(&map, "tcp_high_water"),
                },
            );
        }
        // Other cores' entries come from the latest gathering: wait until both report a heap.
        let complete = out.len() == usize::from(CORES) && out.values().all(|heap| heap.bytes > 0);
        if complete || Instant::now() >= deadline {
            assert!(
                complete,
                "/stats without every core's heap: {}",
                text(&summary)
            );
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pid of the QEMU process living in namespace `name` (found by its network namespace).
fn qemu_in_namespace(name: &str) -> u32 {
    let inode = std::fs::metadata(format!("/run/netns/{name}"))
        .expect("namespace file")
        .ino();
    for _ in 0..100 {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            if comm.starts_with("qemu-system") && net.ok() == Some(inode) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no QEMU process found in namespace {name}");
}

#[test]
fn a_minute_at_four_times_capacity_leaves_memory_flat_and_service_answering() {
    require_root();
    require_program("ip", "iproute2");
    require_program("curl", "curl");
    let python = python_with("pymemcache");
    let namespace =
        TapNamespace::create(&unique_namespace("soak")).unwrap_or_else(|e| panic!("{e}"));
    let mut config = MachineConfig::kernel(image(), u32::from(CORES), "urpc=off");
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    config.extra_args = vec!["-name".into(), "flotilla-soak,debug-threads=on".into()];
    let machine = boot_with_network(&config, CORES);
    let caps = CpuCaps::per_vcpu(
        qemu_in_namespace(&namespace.name),
        VCPU_SHARE,
        &format!("soak-{}", std::process::id()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = (0..60).any(|_| {
        run_bounded(
            namespace
                .command("ping")
                .args(["-c", "1", "-W", "1", GUEST_ADDRESS]),
            Duration::from_secs(10),
        )
        .status
        .success()
    });
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
    let flows: Vec<String> = udp_flows.iter().map(|(p, _)| p.to_string()).collect();
    let output = run_bounded(
        namespace.command(&python).args([
            "-c",
            UDP_ECHO_CLIENT,
            GUEST_ADDRESS,
            &flows.join(","),
            "4",
        ]),
        Duration::from_secs(120),
    );
    let complete = text(&output)
        .lines()
        .filter(|l| l.starts_with("udp ") && l.ends_with(" 4/4"))
        .count();
    assert_eq!(
        complete,
        udp_flows.len(),
        "UDP echo after the soak:\n{}",
        text(&output)
    );
    let tcp_flows = ports_by_queue(&table, 7, 2, 25000..=29999);
    let flows: Vec<String> = tcp_flows.iter().map(|(p, _)| p.to_string()).collect();
    let output = run_bounded(
        namespace
            .command(&python)
            .args(["-c", TCP_ECHO_CLIENT, GUEST_ADDRESS, &flows.join(",")]),
        Duration::from_secs(120),
    );
    let ok = text(&output)
        .lines()
        .filter(|l| l.starts_with("tcp ") && l.ends_with(" ok"))
        .count();
    assert_eq!(
        ok,
        tcp_flows.len(),
        "TCP echo after the soak:\n{}",
        text(&output)
    );
    let memcached_flows = ports_by_queue(&table, 11211, 1, 30000..=32767);
    let mut arguments = vec![
        "-c".to_string(),
        MEMCACHED_CLIENT.to_string(),
        GUEST_ADDRESS.to_string(),
    ];
    for (index, (port, _)) in memcached_flows.iter().enumerate() {
        let keys: Vec<String> = (0..CORES)
            .map(|owner| {
                (0u32..)
                    .map(|n| format!("soak{index}-{owner}-{n}"))
                    .find(|key| netd::app::memcached::key_owner(key.as_bytes(), CORES) == owner)
                    .expect("a key")
            })
            .collect();
        arguments.push(format!("{port}:{}", keys.join(",")));
    }
    let output = run_bounded(
        namespace.command(&python).args(&arguments),
        Duration::from_secs(120),
    );
    let ok = text(&output)
        .lines()
        .filter(|l| l.starts_with("mc ") && l.ends_with(" ok"))
        .count();
    assert_eq!(
        ok,
        memcached_flows.len() + 1,
        "memcached after the soak:\n{}",
        text(&output)
    );
    drop(caps);

    let console = machine.console();
    assert!(
        console.iter().all(|line| !is_failure_line(line)),
        "a fault or panic:\n{}",
        console.join("\n")
    );
    let failures: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("saw core") && line.contains("fail"))
        .collect();
    assert!(
        failures.is_empty(),
        "a core was declared failed under the soak: {failures:?}"
    );
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
