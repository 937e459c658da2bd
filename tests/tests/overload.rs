//! The data plane under a flood it cannot keep up with, in QEMU.
//!
//! * `a_flood_leaves_a_victim_flow_tcp_and_heartbeats_alone`: 2 cores, igb on a tap device in a
//!   network namespace this test creates, each vCPU thread capped to a quarter of a host core
//!   (cgroup v1; QEMU's I/O thread, which plays the NIC, stays uncapped, as a NIC is not slowed by
//!   a busy core). The UDP echo path's capacity is measured first, in the same run (the
//!   experiments' generator, `loadgen`, closed loop over 32 flows on both queues); then for 8 s
//!   the generator offers 3× that, open loop, while two victims on paths of their own on the same
//!   cores are served: ICMP echo every 20 ms (`ping`, 250 requests) and a TCP connection to the
//!   echo service with a line every 50 ms. What the design promises, and the test checks:
//!   - the flood's excess is dropped at its own path's queue, before protocol work, and counted
//!     (`udp:7` `drops.queue` in `/stats`), or left in the NIC's ring when every path with
//!     frames is behind (receive withheld: the NIC drops at no CPU cost);
//!   - the victims' paths drop nothing in software (`icmp` and `tcp:7` queue and socket drops
//!     stay 0), every TCP line is echoed, and no core is declared failed (heartbeats run
//!     through the flood);
//!   - the victim loses no more pings than the NIC side loses of every frame (sent by the host,
//!     never taken by the guest), give or take chance (four binomial standard deviations and
//!     5 points).
//!
//!   Why the last bound and not "every victim request answered in N tries": the victim shares
//!   the NIC ring with the flood, and QEMU's igb drops at the ring (or the tap in front of it)
//!   before software sees either. An earlier version flooded as fast as `send` goes (270–490 k/s
//!   here) and required each victim request to be answered within 20 tries of 100 ms; on a quiet
//!   host the generator outran the guest by 3–4×, so each try was lost with probability about
//!   the ring's loss (60–75 %), and 20 losses in a row, among hundreds of requests, came often
//!   ("victim never answered in 20 tries", "too few victim requests"). LRP isolates among the
//!   frames the core takes; below that only the NIC's steering can (the 82599's filters; QEMU's
//!   igb emulates none). The flood is a multiple of the capacity measured in the same run, so
//!   the test means the same thing on a fast or a slow host. Checked against the baselines:
//!   `FLOTILLA_OVERLOAD_CMDLINE="urpc=off netd.lrp=off"` (the shared FIFO) and
//!   `"urpc=off netd.mode=interrupt"` both fail it (no drop at the path's queue; with the shared
//!   FIFO the victim also loses more than the ring explains). The figures (capacity, offered,
//!   taken, drops by place, victim loss and round trip) are printed.
//!
//! Needs root (namespaces, cgroups), `ip`, `ping` and `curl` (`/stats` is read as JSON in Rust);
//! every loop is bounded in count and time; all traffic stays in the test's namespace. `FLOTILLA_TEST_KERNEL=/path` boots
//! that image instead of building the workspace's; `FLOTILLA_OVERLOAD_CMDLINE` replaces the
//! kernel command line of the pass/fail test.

use drivers::rss;
use flotilla_tests::stats::{self, try_stats_json_with, u64_at};
use flotilla_tests::*;
use loadgen::{Pace, Request, UdpLoad};
use qemu_smp::experiment::cgroup::CpuCaps;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CORES: u16 = 2;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(8);
/// The flood, as a multiple of the echo path's capacity measured in the same run.
const FLOOD_FACTOR: f64 = 3.0;
/// Pings the victim sends (every 20 ms).
const VICTIM_PINGS: u32 = 250;
/// Each vCPU thread's share of one host core in the pass/fail test (QEMU's I/O thread, which
/// plays the NIC, stays uncapped, as a NIC is not slowed by a busy core).
const VCPU_SHARE: f64 = 0.25;
/// QEMU's share of one host core in the figures experiment (cgroup v1 CFS quota over a 10 ms
/// period).
const QUOTA_US: u32 = 5_000;

/// Source ports from `range` whose flows to `port` the NIC steers to each queue of the default
/// table, `per_queue` each, as (port, queue).
fn ports_by_queue(
    port: u16,
    per_queue: usize,
    range: std::ops::RangeInclusive<u16>,
) -> Vec<(u16, u16)> {
    flotilla_tests::ports_by_queue(&rss::default_table(CORES), port, per_queue, range)
}

/// Joins the network namespace `name` (this thread only).
fn join_namespace(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

fn guest(port: u16) -> SocketAddr {
    SocketAddr::new(GUEST_ADDRESS.parse().unwrap(), port)
}

fn bind(port: u16) -> UdpSocket {
    UdpSocket::bind((HOST_ADDRESS, port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
}

/// A cgroup v1 cpu group capping what is put in it; removed on drop (its tasks go back to the
/// root group first).
struct CpuCap {
    path: PathBuf,
}

impl CpuCap {
    fn create(name: &str, quota_us: u32) -> Self {
        let path = PathBuf::from("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| {
            panic!(
                "creating {}: {e} (the cgroup v1 cpu controller is needed)",
                path.display()
            )
        });
        std::fs::write(path.join("cpu.cfs_period_us"), "10000").unwrap();
        std::fs::write(path.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
        Self { path }
    }

    /// Moves every thread of process `pid` into the group.
    fn add_process(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("capping QEMU (pid {pid}): {e}"));
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let tasks = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for task in tasks.lines() {
            let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", task);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The tap device's counters from the host side (`ip -s link`): what the host sent towards the
/// guest and dropped because QEMU did not take it.
fn tap_counters(namespace: &TapNamespace) -> (u64, u64) {
    let output = namespace
        .exec(&["cat", "/sys/class/net/tap0/statistics/tx_packets"])
        .expect("tap counters");
    let sent = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let output = namespace
        .exec(&["cat", "/sys/class/net/tap0/statistics/tx_dropped"])
        .expect("tap counters");
    let dropped = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (sent, dropped)
}

/// What `/stats` says about one core's paths, fetched over a connection the NIC steers to it.
#[derive(Debug, Default, Clone, Copy)]
struct CoreView {
    rx_frames: u64,
    rx_withheld: u64,
    longest_turn_cycles: u64,
    /// The flood's path (`udp:7`): packets served, drops at its queue.
    echo_packets: u64,
    echo_queue_drops: u64,
    /// The victims' paths (`icmp`, `tcp:7`): pings served, drops at their queues and sockets.
    icmp_packets: u64,
    icmp_drops: u64,
    tcp_drops: u64,
}

/// One core's view in `/stats`, fetched over a connection from `local_port`.
fn core_view(namespace: &TapNamespace, core: u16, local_port: u16) -> CoreView {
    let port = local_port.to_string();
    let doc = try_stats_json_with(
        namespace,
        &["--max-time", "20", "--local-port", &port],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let entry = stats::cores(&doc)
        .iter()
        .find(|c| c["core"] == core)
        .unwrap_or_else(|| panic!("/stats has no entry for core {core}: {doc}"));
    // A path the core does not list yet has served and dropped nothing.
    let on_path = |name: &str, pointers: &[&str]| -> u64 {
        stats::path(entry, name).map_or(0, |path| {
            pointers.iter().map(|pointer| u64_at(path, pointer)).sum()
        })
    };
    let both_drops = ["/drops/queue", "/drops/socket"];
    CoreView {
        rx_frames: u64_at(entry, "/rx_frames"),
        rx_withheld: u64_at(entry, "/rx_withheld"),
        longest_turn_cycles: u64_at(entry, "/longest_turn_cycles"),
        echo_packets: on_path("udp:7", &["/packets"]),
        echo_queue_drops: on_path("udp:7", &["/drops/queue"]),
        icmp_packets: on_path("icmp", &["/packets"]),
        icmp_drops: on_path("icmp", &both_drops),
        tcp_drops: on_path("tcp:7", &both_drops),
    }
}

/// Every core's view, each fetched over a connection its own queue takes (so the serving core's
/// entry is live and the other's from the latest gathering).
fn views(namespace: &TapNamespace, ports: &[(u16, u16)]) -> Vec<CoreView> {
    ports
        .iter()
        .map(|(port, queue)| core_view(namespace, *queue, *port))
        .collect()
}

/// `ping -i INTERVAL -c COUNT` from namespace `namespace`: (sent, received, average RTT in µs).
fn ping_victim(namespace: &str, count: u32, interval: &str) -> (u64, u64, u64) {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "ping"])
        .args([
            "-q",
            "-i",
            interval,
            "-c",
            &count.to_string(),
            "-W",
            "1",
            GUEST_ADDRESS,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping printed no summary: {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let sent = words[0].parse().expect("transmitted");
    let received = words[3].parse().expect("received");
    let average = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|values| values.trim().split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok())
        .map_or(0, |ms| (ms * 1000.0) as u64);
    (sent, received, average)
}

#[test]
fn a_flood_leaves_a_victim_flow_tcp_and_heartbeats_alone() {
    require_root();
    let name = unique_namespace("overload");
    let namespace = TapNamespace::create(&name).unwrap_or_else(|e| panic!("{e}"));
    let cmdline = std::env::var("FLOTILLA_OVERLOAD_CMDLINE").unwrap_or_else(|_| "urpc=off".into());
    let mut config = tap_config(&namespace, CORES, &cmdline);
    config.extra_args = vec!["-name".into(), "flotilla-overload,debug-threads=on".into()];
    let machine = boot_with_network(&config, CORES);
    let caps = CpuCaps::per_vcpu(
        qemu_in_namespace(&namespace.name),
        VCPU_SHARE,
        &format!("overload-{}", std::process::id()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // /stats is read twice over fresh connections (a port in TIME_WAIT cannot be bound again).
    let stats_before = ports_by_queue(80, 1, 32000..=32499);
    let stats_after = ports_by_queue(80, 1, 32500..=32999);
    let ready = (0..60).any(|_| ping_victim(&namespace.name, 1, "1").1 == 1);
    assert!(
        ready,
        "the guest never answered ping:\n{}",
        console_tail(&machine, 30)
    );

    // The echo path's capacity, measured in this run: a closed loop over 32 flows on both queues.
    let source: Ipv4Addr = HOST_ADDRESS.parse().unwrap();
    let target: Ipv4Addr = GUEST_ADDRESS.parse().unwrap();
    let flood_ports = loadgen::flows::spread_ports(source, target, 7, 32, CORES, 20000..30000);
    let mut load = UdpLoad::echo(
        source,
        SocketAddrV4::new(target, 7),
        flood_ports,
        1.0,
        Duration::from_secs(3),
    );
    load.netns = Some(format!("/run/netns/{}", namespace.name).into());
    load.pace = Pace::Closed {
        window: 4,
        timeout: Duration::from_millis(200),
    };
    load.request = Request::Echo { bytes: 24 };
    let calibration = loadgen::udp::run(&load).unwrap_or_else(|e| panic!("calibration: {e}"));
    let capacity = calibration.received_per_second();
    assert!(
        capacity > 100.0,
        "the echo service answered almost nothing: {calibration:?}"
    );

    // The flood: echo requests at FLOOD_FACTOR times that, open loop, for FLOOD.
    let before = views(&namespace, &stats_before);
    let (_, tap_dropped_before) = tap_counters(&namespace);
    load.pace = Pace::Open {
        rate: FLOOD_FACTOR * capacity,
        arrivals: loadgen::Arrivals::Poisson,
    };
    load.duration = FLOOD;
    let flood = std::thread::spawn(move || loadgen::udp::run(&load));
    std::thread::sleep(Duration::from_millis(500));
    // The victims, on paths of their own on the flooded cores: ICMP echo every 20 ms, and a TCP
    // connection to the echo service with a line every 50 ms.
    let victim = {
        let name = namespace.name.clone();
        std::thread::spawn(move || ping_victim(&name, VICTIM_PINGS, "0.02"))
    };
    let tcp = {
        let name = namespace.name.clone();
        std::thread::spawn(move || -> Result<(u64, u64), String> {
            join_namespace(&name);
            let socket = connect_echo()?;
            socket
                .set_read_timeout(Some(Duration::from_secs(20)))
                .map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(socket.try_clone().map_err(|e| e.to_string())?);
            let mut writer = socket;
            let deadline = Instant::now() + FLOOD - Duration::from_secs(2);
            let (mut lines, mut echoed) = (0u64, 0u64);
            while Instant::now() < deadline {
                lines += 1;
                let line = format!("tcp line {lines} under a flood\n");
                writer
                    .write_all(line.as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                let mut back = String::new();
                reader
                    .read_line(&mut back)
                    .map_err(|e| format!("line {lines}: {e}"))?;
                if back == line {
                    echoed += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok((lines, echoed))
        })
    };
    let (pings, answered, ping_rtt_us) = victim.join().expect("victim thread");
    let tcp = tcp.join().expect("tcp thread");
    let flood = flood
        .join()
        .expect("flood thread")
        .unwrap_or_else(|e| panic!("flood: {e}"));
    let after = views(&namespace, &stats_after);
    let (_, tap_dropped) = tap_counters(&namespace);
    drop(caps);
    let console = machine.console();

    let delta = |pick: fn(&CoreView) -> u64| -> u64 {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| pick(a).saturating_sub(pick(b)))
            .sum()
    };
    let taken = delta(|v| v.rx_frames);
    let echo_queue_drops = delta(|v| v.echo_queue_drops);
    let echoed = delta(|v| v.echo_packets);
    let victim_drops = delta(|v| v.icmp_drops) + delta(|v| v.tcp_drops);
    let tap_dropped = tap_dropped - tap_dropped_before;
    // What the NIC side lost of the flood: sent by the host, never taken by the guest.
    let ring_loss = 1.0 - (taken as f64 / flood.sent.max(1) as f64).min(1.0);
    let ping_loss = 1.0 - answered as f64 / pings.max(1) as f64;
    println!(
        "echo capacity {capacity:.0}/s (closed loop); flood offered {:.0}/s ({:.1}x) for {:.1} s, {} sent; \
         the guest took {taken} frames, served {echoed} on udp:7 and dropped {echo_queue_drops} at its queue; \
         the tap dropped {tap_dropped}; NIC-side loss {:.1} %; echoes back {:.0}/s; receive withheld in {} turns; longest turn {} cycles",
        flood.offered_per_second(),
        flood.offered_per_second() / capacity,
        flood.elapsed.as_secs_f64(),
        flood.sent,
        100.0 * ring_loss,
        flood.received_per_second(),
        delta(|v| v.rx_withheld),
        after.iter().map(|v| v.longest_turn_cycles).max().unwrap_or(0),
    );
    println!(
        "victim: {answered}/{pings} pings answered ({:.1} % lost), average {ping_rtt_us} us; the icmp path served {}; victim paths dropped {victim_drops}; tcp: {tcp:?} (lines sent, echoed)",
        100.0 * ping_loss,
        delta(|v| v.icmp_packets),
    );

    // No core was declared failed: heartbeats kept flowing through the flood.
    assert_no_core_declared_failed(&console, " under the flood");
    assert_no_fault(&console, " under the flood");
    // The flood overloaded its path: the excess was dropped at the path's queue, and counted.
    assert!(
        flood.offered_per_second() >= 2.0 * capacity,
        "the generator offered only {:.0}/s against a capacity of {capacity:.0}/s (lag {:?})",
        flood.offered_per_second(),
        flood.max_lag
    );
    assert!(
        echo_queue_drops > 0,
        "no flood frame dropped at the udp:7 path's queue: the flood did not overload the path"
    );
    // The victims' paths dropped nothing in software, and TCP was served.
    assert_eq!(victim_drops, 0, "the victims' paths dropped frames");
    let (lines, echoed_lines) = tcp.unwrap_or_else(|e| panic!("tcp echo under the flood: {e}"));
    assert!(
        lines >= 1 && echoed_lines == lines,
        "tcp: {echoed_lines} of {lines} lines echoed"
    );
    // The victim shares the NIC ring with the flood: it may lose what the NIC side loses of
    // every frame, and no more than chance adds (four standard deviations of a binomial loss
    // over its pings, plus 5 points for loss that comes in bursts).
    assert!(
        pings >= u64::from(VICTIM_PINGS) / 2,
        "ping sent only {pings} of {VICTIM_PINGS}"
    );
    let chance = 4.0 * (ring_loss * (1.0 - ring_loss) / pings as f64).sqrt() + 0.05;
    assert!(
        ping_loss <= ring_loss + chance,
        "the victim lost {:.1} % of its pings, more than the NIC side lost of all frames ({:.1} %) and chance ({:.1} points) explain",
        100.0 * ping_loss,
        100.0 * ring_loss,
        100.0 * chance
    );
    drop(machine);
    drop(namespace);
}

/// A TCP connection to the guest's echo service (from an ephemeral port: whichever core the
/// NIC picks serves it), retried while the guest is not listening yet.
fn connect_echo() -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect_timeout(&guest(7), Duration::from_secs(5)) {
            Ok(stream) => return Ok(stream),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => return Err(format!("connect: {error}")),
        }
    }
}

/// Boots a capped 2-core guest with `cmdline` and offers the UDP echo service `rate` datagrams
/// per second (0: as fast as `send` goes) for `duration` from 16 source ports, counting the
/// echoes that come back; returns (offered per second, echoed per second, the tap's drops).
fn echo_flood(cmdline: &str, rate: u64, duration: Duration) -> (f64, f64, u64) {
    let name = format!("flotilla-test-netd-{}-livelock", std::process::id());
    let namespace = TapNamespace::create(&name).unwrap_or_else(|e| panic!("{e}"));
    let config = tap_config(&namespace, CORES, cmdline);
    let machine = Machine::start(&config, false).unwrap_or_else(|e| panic!("{e}"));
    let cap = CpuCap::create(&format!("{name}-cap"), QUOTA_US);
    cap.add_process(qemu_in_namespace(&namespace.name));
    let ports: Vec<u16> = ports_by_queue(7, 8, 40000..=49999)
        .into_iter()
        .map(|(port, _)| port)
        .collect();
    let (_, dropped_before) = tap_counters(&namespace);
    let result = {
        let name = namespace.name.clone();
        std::thread::spawn(move || {
            join_namespace(&name);
            let sockets: Vec<UdpSocket> = ports
                .iter()
                .map(|port| {
                    let socket = bind(*port);
                    socket.connect(guest(7)).unwrap();
                    socket.set_nonblocking(true).unwrap();
                    socket
                })
                .collect();
            // Wait until the guest echoes at all.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buffer = [0u8; 64];
            'ready: while Instant::now() < deadline {
                let _ = sockets[0].send(b"ready?");
                std::thread::sleep(Duration::from_millis(100));
                if sockets[0].recv(&mut buffer).is_ok() {
                    break 'ready;
                }
            }
            let (mut sent, mut echoed) = (0u64, 0u64);
            let started = Instant::now();
            let end = started + duration;
            while Instant::now() < end {
                let allowed = if rate == 0 {
                    u64::MAX
                } else {
                    (started.elapsed().as_secs_f64() * rate as f64) as u64
                };
                for socket in &sockets {
                    if sent < allowed && socket.send(&[0x5a; 18]).is_ok() {
                        sent += 1;
                    }
                    while socket.recv(&mut buffer).is_ok() {
                        echoed += 1;
                    }
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            (sent as f64 / seconds, echoed as f64 / seconds)
        })
        .join()
        .expect("flood thread")
    };
    let (_, dropped) = tap_counters(&namespace);
    drop(cap);
    drop(machine);
    drop(namespace);
    (result.0, result.1, dropped - dropped_before)
}

/// Not a pass/fail test: the UDP echo rate a capped guest delivers under an open-loop flood,
/// for the default discipline and the two baselines (`cargo test -p flotilla-tests --test
/// overload -- --ignored --nocapture`). The figures in `docs/netd.md` come from it.
#[test]
#[ignore]
fn echo_under_flood_per_discipline() {
    require_root();
    for cmdline in [
        "urpc=off",
        "urpc=off netd.lrp=off",
        "urpc=off netd.mode=interrupt",
    ] {
        for rate in [20_000, 50_000, 100_000, 200_000, 0] {
            let (offered, echoed, dropped) = echo_flood(cmdline, rate, Duration::from_secs(5));
            println!(
                "{cmdline}: offered {offered:.0}/s, echoed {echoed:.0}/s, tap dropped {dropped}"
            );
        }
    }
}
