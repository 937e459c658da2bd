//! The network in QEMU, driven from outside by real clients.
//!
//! * `tap_clients_are_served_on_every_core`: 4 cores, igb on a tap device in a network namespace
//!   this test creates (the host's own Linux stack is the peer). `ping`; UDP and TCP echo over 32
//!   flows each (Python clients on std sockets) whose source ports are chosen by the Toeplitz
//!   hash so that every queue gets 8; `nc`; `curl` on `/` and `/stats`; and the `pymemcache`
//!   client doing set/get/multi-get/delete over 16 connections with keys owned by every core.
//!   `/stats` must then show every core serving its flows and no frame of those steady flows
//!   forwarded between cores. Needs root, `ping`, `nc`, `curl` and Debian's `python3-pymemcache`
//!   (`bash qemu-smp/install-deps.sh` installs them).
//! * `raw_frames_land_on_the_predicted_queue`: 4 cores, igb on `-netdev dgram` (raw Ethernet
//!   frames in UDP datagrams over loopback; no root). The test crafts UDP frames whose hash
//!   predicts each queue, reads the echoes back, and checks QEMU's own queue trace and the
//!   guest's per-core counters (`netd.report=`) against the prediction.
//! * `a_moved_flow_group_is_served_by_its_new_core`: the same wire, with `netd.move=` asking the
//!   monitors to move one flow group to another core; frames of that group must then land on
//!   the new core's queue (QEMU's trace) and still be echoed.
//!
//! Every loop is bounded in count and time; all tap traffic stays inside the test's namespace.
//! `FLOTILLA_TEST_KERNEL=/path/to/image` boots that image instead of building the workspace's.

use drivers::rss::{self, FlowTuple, DEFAULT_KEY};
use flotilla_tests::clients::*;
use flotilla_tests::stats::fetch_stats;
use flotilla_tests::wire::*;
use flotilla_tests::*;
use qemu_smp::tap::GUEST_ADDRESS;
use std::time::{Duration, Instant};

const CORES: u16 = 4;

#[test]
fn tap_clients_are_served_on_every_core() {
    require_root();
    require_program("ip", "iproute2");
    require_program("ping", "iputils-ping");
    require_program("curl", "curl");
    require_program("nc", "netcat-openbsd");
    let python = python_with("pymemcache");
    let (namespace, machine) = boot_on_tap("tap", CORES, "urpc=off");

    // ping: the link comes up shortly after the stacks; try a few rounds, then the real check.
    let (answered, ping) = ping_until_answered(&namespace, 3, 2, 10);
    assert!(
        answered,
        "ping -c 3 -W 2 {GUEST_ADDRESS}:\n{}\nconsole:\n{}",
        text(&ping),
        console_tail(&machine, 40)
    );

    // UDP echo: 32 flows, 8 per queue, 4 datagrams each (18 to 1400 bytes).
    let table = rss::default_table(CORES);
    let udp_flows = ports_by_queue(&table, 7, 8, 20000..=24999);
    let udp = udp_echo(&namespace, &python, &udp_flows, 4, Duration::from_secs(90));
    assert!(
        udp.output.status.success() && udp.ok == udp_flows.len(),
        "UDP echo: {} of {} flows fully echoed:\n{}\nflows (port, queue): {udp_flows:?}\nconsole:\n{}",
        udp.ok,
        udp_flows.len(),
        udp.report,
        console_tail(&machine, 40)
    );

    // TCP echo: 32 concurrent connections, 8 per queue.
    let tcp_flows = ports_by_queue(&table, 7, 8, 25000..=29999);
    let tcp = tcp_echo(&namespace, &python, &tcp_flows, Duration::from_secs(120));
    assert!(
        tcp.output.status.success() && tcp.ok == tcp_flows.len(),
        "TCP echo: {} of {} connections echoed and closed:\n{}\nflows (port, queue): {tcp_flows:?}\nconsole:\n{}",
        tcp.ok,
        tcp_flows.len(),
        tcp.report,
        console_tail(&machine, 40)
    );

    // nc, as a user would type it: one TCP and one UDP exchange.
    for (flags, what) in [("-N -w 5", "TCP"), ("-u -w 2", "UDP")] {
        let line = format!("hello over {what} from nc");
        let script = format!("printf '%s\\n' '{line}' | nc {flags} {GUEST_ADDRESS} 7");
        let output = run_bounded(
            namespace.command("sh").args(["-c", &script]),
            Duration::from_secs(20),
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim_end(),
            line,
            "`{script}` in the namespace: {}",
            text(&output)
        );
    }

    // HTTP: the page, then /stats as JSON.
    let url = format!("http://{GUEST_ADDRESS}/");
    let page = run_bounded(
        namespace
            .command("curl")
            .args(["-sS", "--max-time", "10", "-i", &url]),
        Duration::from_secs(20),
    );
    let page_text = text(&page);
    assert!(
        page.status.success()
            && page_text.starts_with("HTTP/1.1 200")
            && page_text.contains(&format!("{CORES} cores"))
            && page_text.contains("</html>"),
        "curl {url}:\n{page_text}"
    );
    let first = fetch_stats(&namespace).unwrap_or_else(|e| panic!("{e}"));
    assert!(!first.is_empty());

    // memcached: 16 connections, 4 per queue, each with keys owned by every core.
    let memcached_flows = ports_by_queue(&table, 11211, 4, 30000..=32767);
    // Two keys per owner core, found by the server's own partition function.
    let plan = memcached_plan(&memcached_flows, CORES, 2, |index, owner, candidate| {
        format!("conn{index}-owner{owner}-k{candidate}")
    });
    let mc = memcached(&namespace, &python, &plan, Duration::from_secs(180));
    assert!(
        mc.output.status.success() && mc.ok == memcached_flows.len() + 1,
        "memcached (pymemcache, {} connections): {} ok lines, want {}:\n{}\nconsole:\n{}",
        memcached_flows.len(),
        mc.ok,
        memcached_flows.len() + 1,
        mc.report,
        console_tail(&machine, 40)
    );

    // /stats: every core served its flows, none of them forwarded. The snapshot of the other
    // cores is gathered after a request, so ask until it is fresh (bounded).
    let mut per_queue_udp = [0u64; CORES as usize];
    let mut per_queue_tcp = [0u64; CORES as usize];
    let mut per_queue_mc = [0u64; CORES as usize];
    for (_, queue) in &udp_flows {
        per_queue_udp[usize::from(*queue)] += 4;
    }
    for (_, queue) in &tcp_flows {
        per_queue_tcp[usize::from(*queue)] += 1;
    }
    for (_, queue) in &memcached_flows {
        per_queue_mc[usize::from(*queue)] += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut problems;
    let mut last = Vec::new();
    loop {
        problems = Vec::new();
        match fetch_stats(&namespace) {
            Err(e) => problems.push(e),
            Ok(cores) => {
                let ids: Vec<u64> = cores.iter().map(|c| number(c, "core")).collect();
                if ids != (0..u64::from(CORES)).collect::<Vec<_>>() {
                    problems.push(format!(
                        "/stats lists cores {ids:?}, want every core 0..{CORES} (is the snapshot gathered from every core?)"
                    ));
                }
                for core in &cores {
                    let id = number(core, "core") as usize;
                    if id >= usize::from(CORES) {
                        continue;
                    }
                    // Frames the core must at least have received for the flows steered to it:
                    // every datagram, and five segments per TCP connection (handshake ACK, data,
                    // FIN...). This needs only the core-wide counters gathered from every core.
                    let least_frames =
                        per_queue_udp[id] + 5 * (per_queue_tcp[id] + per_queue_mc[id]);
                    if number(core, "rx_frames") < least_frames {
                        problems.push(format!(
                            "core {id}: rx_frames={} but the flows RSS steered to it needed at least {least_frames}",
                            number(core, "rx_frames")
                        ));
                    }
                    // Per-path counters, where /stats gives them for that core.
                    let want = [
                        ("udp7_packets", per_queue_udp[id]),
                        ("tcp7_connections", per_queue_tcp[id]),
                        ("tcp11211_connections", per_queue_mc[id]),
                        ("tcp11211_peer_messages", 1),
                    ];
                    let has_paths = number(core, "paths") > 0;
                    for (key, least) in want.into_iter().filter(|_| has_paths) {
                        if number(core, key) < least {
                            problems.push(format!(
                                "core {id}: {key}={} but at least {least} of the test's flows were steered to it",
                                number(core, key)
                            ));
                        }
                    }
                    for key in ["forwarded_out", "forwarded_in"] {
                        if number(core, key) != 0 {
                            problems.push(format!(
                                "core {id}: {key}={}: steady flows must never be forwarded between cores",
                                number(core, key)
                            ));
                        }
                    }
                }
                if !cores.iter().any(|core| number(core, "paths") > 0) {
                    problems
                        .push("no core lists its paths in /stats (the serving core should)".into());
                }
                last = cores;
            }
        }
        if problems.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        problems.is_empty(),
        "/stats after the clients:\n  {}\nlast /stats summary:\n{}\nconsole:\n{}",
        problems.join("\n  "),
        last.iter()
            .map(|c| format!("  {c:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
        console_tail(&machine, 40)
    );
    drop(machine);
    drop(namespace);
}

#[test]
fn raw_frames_land_on_the_predicted_queue() {
    let (mut machine, mut wire, trace) = boot_on_wire("urpc=off netd.report=500", "steer", CORES);
    wire.introduce(&machine);

    // Frames sent while the link was coming up may not have reached the guest: count from a
    // baseline taken once ARP works (everything before it is ARP, on queue 0).
    let (before, baseline) = wire.baseline(&trace);

    // Four flows per queue, interleaved across queues.
    let table = rss::default_table(CORES);
    let flows = ports_by_queue(&table, 7, 4, 40000..=44999);
    let mut unanswered = Vec::new();
    for (port, queue) in &flows {
        if !wire.echo(*port, *queue, "steer") {
            unanswered.push((*port, *queue));
        }
    }
    assert!(
        unanswered.is_empty(),
        "no UDP echo for (port, predicted queue) {unanswered:?}; other frames: {:?}\nconsole:\n{}",
        wire.strays,
        console_tail(&machine, 40)
    );

    // (b) QEMU's own trace: one RX event per frame sent, on the predicted queue, in order.
    let expected = baseline + (wire.sent.len() - before);
    let traced = wait_for_trace(&trace, expected);
    assert_eq!(
        traced.len(),
        expected,
        "QEMU wrote {} frames to the guest ({baseline} before the flows), the test sent {} after them: {:?} vs {:?}",
        traced.len(),
        wire.sent.len() - before,
        traced,
        &wire.sent[before..]
    );
    let mismatches: Vec<String> = wire.sent[before..]
        .iter()
        .zip(&traced[baseline..])
        .filter(|((_, predicted), actual)| predicted != *actual)
        .map(|((what, predicted), actual)| {
            format!("{what}: predicted queue {predicted}, QEMU put it on {actual}")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "steering differs from the Toeplitz prediction:\n{}",
        mismatches.join("\n")
    );

    // (c) The guest's counters: each core's queue received exactly what QEMU says it wrote there,
    // its stack took every frame, and nothing was forwarded.
    let mut per_queue = [0u64; CORES as usize];
    for queue in &traced {
        per_queue[usize::from(*queue)] += 1;
    }
    for (queue, count) in per_queue.iter().enumerate() {
        assert!(*count > 0, "queue {queue} got nothing: {traced:?}");
    }
    std::thread::sleep(Duration::from_millis(600));
    let after = machine.console().len();
    let stats = stats_after(&mut machine, after, CORES);
    assert_eq!(
        stats.len(),
        usize::from(CORES),
        "not every core printed `netd: stats` (netd.report=500) after the traffic; console:\n{}",
        console_tail(&machine, 60)
    );
    for (core, map) in &stats {
        let expected = per_queue[usize::from(*core)];
        assert_eq!(
            (number(map, "queue_rx"), number(map, "rx_frames")),
            (expected, expected),
            "core {core}: queue_rx and rx_frames should both be the {expected} frames QEMU wrote to queue {core}: {map:?}"
        );
        assert_eq!(
            (number(map, "forwarded_out"), number(map, "forwarded_in")),
            (0, 0),
            "core {core} forwarded frames of flows RSS steered correctly: {map:?}"
        );
    }
    drop(machine);
}

#[test]
fn a_moved_flow_group_is_served_by_its_new_core() {
    // Flow group 9 starts on queue 9 % 4 = 1; ask the monitors to move it to core 3.
    const GROUP: u8 = 9;
    const TO: u16 = 3;
    let cmdline = format!("urpc=off netd.report=500 netd.move={GROUP}:{TO}@100");
    let (mut machine, mut wire, trace) = boot_on_wire(&cmdline, "move", CORES);
    let moved_line = format!("monitor: flow group {GROUP} now on core {TO}");
    line_containing(&mut machine, "the flow-group move", &moved_line);
    wire.introduce(&machine);
    let (before, baseline) = wire.baseline(&trace);

    let old = rss::default_table(CORES)[usize::from(GROUP)];
    assert_ne!(u16::from(old), TO, "the move must change the group's queue");
    let flow = FlowTuple::V4 {
        source: PEER_IP,
        destination: GUEST_IP,
        ports: Some((0, 7)),
    };
    let mut ports = Vec::new();
    let mut next = 50000u16;
    while ports.len() < 3 {
        let port = rss::source_port_for_group(
            &DEFAULT_KEY,
            flow,
            drivers::nic::FlowGroup(GROUP),
            next..=60000,
        )
        .expect("a port in flow group");
        ports.push(port);
        next = port + 1;
    }
    for port in &ports {
        assert!(
            wire.echo(*port, TO, "moved"),
            "no echo for port {port} (flow group {GROUP}, moved to core {TO}); other frames: {:?}\nconsole:\n{}",
            wire.strays,
            console_tail(&machine, 40)
        );
    }
    let traced = wait_for_trace(&trace, baseline + wire.sent.len() - before);
    let moved: Vec<(String, u16, Option<u16>)> = wire.sent[before..]
        .iter()
        .enumerate()
        .map(|(i, (what, predicted))| (what.clone(), *predicted, traced.get(baseline + i).copied()))
        .collect();
    for (what, predicted, actual) in &moved {
        assert_eq!(
            Some(*predicted),
            *actual,
            "{what}: flow group {GROUP} was moved to core {TO}, but QEMU put the frame on {actual:?} (all: {moved:?})"
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    let after = machine.console().len();
    let stats = stats_after(&mut machine, after, CORES);
    let new_owner = stats
        .get(&TO)
        .unwrap_or_else(|| panic!("no stats line for core {TO}"));
    let old_owner = stats
        .get(&u16::from(old))
        .unwrap_or_else(|| panic!("no stats line for core {old}"));
    assert!(
        number(new_owner, "queue_rx") >= ports.len() as u64
            && number(new_owner, "rx_frames") == number(new_owner, "queue_rx"),
        "core {TO} should have received the moved flows on its queue and taken them all: {new_owner:?}"
    );
    assert_eq!(
        number(old_owner, "queue_rx"),
        0,
        "core {old} (the group's old owner) received frames, but the test sent it none: {old_owner:?}"
    );
    for (core, map) in &stats {
        assert_eq!(
            (number(map, "forwarded_out"), number(map, "forwarded_in")),
            (0, 0),
            "core {core} forwarded frames after the move (does every core's flow table know group {GROUP} is on core {TO}?): {map:?}"
        );
    }
    drop(machine);
}

#[test]
fn a_failed_cores_flow_groups_are_served_by_the_survivors() {
    // Core 2 hangs; the monitors declare it failed, every core reassigns its flow groups with
    // the same deterministic rule, and core 0 rewrites the NIC's redirection table. Frames of a
    // flow group that belonged to core 2 must then reach the new owner's queue and be echoed.
    const FAILED: u16 = 2;
    let cmdline = "urpc=off monitor.heartbeat_ms=50 monitor.miss=4 hang=2@1500";
    let (mut machine, mut wire, trace) = boot_on_wire(cmdline, "failover", CORES);
    let moved = format!("flow groups of core {FAILED} moved to the live cores");
    line_containing(&mut machine, "the reassignment", &moved);
    wire.introduce(&machine);
    let (before, baseline) = wire.baseline(&trace);

    // The kernel's rule, computed here the same way: the default table, then the reassignment.
    let table = rss::default_table(CORES);
    let mut owners: Vec<monitor::CoreId> = table
        .iter()
        .map(|&queue| monitor::CoreId::new(queue).unwrap())
        .collect();
    let mut live = monitor::CoreSet::first(usize::from(CORES));
    live.remove(monitor::CoreId::new(FAILED as u8).unwrap());
    monitor::reassign_flow_groups(&mut owners, live);
    let groups: Vec<u8> = (0..128u8)
        .filter(|&g| u16::from(table[usize::from(g)]) == FAILED)
        .take(3)
        .collect();
    assert_eq!(groups.len(), 3);
    let flow = FlowTuple::V4 {
        source: PEER_IP,
        destination: GUEST_IP,
        ports: Some((0, 7)),
    };
    for group in groups {
        let owner = owners[usize::from(group)].index() as u16;
        assert_ne!(owner, FAILED);
        let port = rss::source_port_for_group(
            &DEFAULT_KEY,
            flow,
            drivers::nic::FlowGroup(group),
            50000..=65000,
        )
        .expect("a port in the flow group");
        assert!(
            wire.echo(port, owner, "after the failure"),
            "no echo for port {port} (flow group {group}, reassigned from core {FAILED} to core {owner}); other frames: {:?}\nconsole:\n{}",
            wire.strays,
            console_tail(&machine, 40)
        );
    }
    let traced = wait_for_trace(&trace, baseline + wire.sent.len() - before);
    for (i, (what, predicted)) in wire.sent[before..].iter().enumerate() {
        assert_eq!(
            traced.get(baseline + i).copied(),
            Some(*predicted),
            "{what}: QEMU did not put the frame on the reassigned queue"
        );
        assert_ne!(*predicted, FAILED);
    }
}
