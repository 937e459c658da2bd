//! TCP/IP as a host, in QEMU, with Linux's own tools and sockets as the peers (4 cores, igb on a
//! tap device in a network namespace each test creates; needs root, `nc`, `nmap`, `curl`, `wrk`:
//! `bash qemu-smp/install-deps.sh`).
//!
//! * `closed_ports_fragments_and_a_client_that_never_reads`: `nc -z` to a closed port is refused
//!   at once and `nmap` reports closed ports as closed (not filtered); a datagram to a closed UDP
//!   port gets an ICMP port unreachable (the socket sees "connection refused"), also when it was
//!   fragmented (reassembled first); fragmented datagrams to the discard port are reassembled
//!   and counted; a client that pipelines requests and never reads is throttled and then reset
//!   after `netd.tcp_idle_s`, while other clients keep being served and no core fails.
//! * `ten_thousand_connections_each_echo_then_wrk`: 10,000 concurrent connections to the echo
//!   port (from one address: the ephemeral range holds them), each echoing a line; then `wrk
//!   -c1000` on HTTP with zero socket errors.
//! * `an_established_connection_keeps_echoing_across_a_flow_group_move`: a connection in flow
//!   group G echoes every 50 ms while `netd.move=G:CORE@MS` moves G to another core; every echo
//!   comes back, and the new owner hands the connection's segments to the old one.
//!
//! Every loop is bounded in count and time; all traffic stays inside the test's namespace.

use drivers::rss::{self, FlowTuple, DEFAULT_KEY};
use flotilla_tests::stats::{path_field, stats_json, sum};
use flotilla_tests::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const CORES: u16 = 4;

fn guest(port: u16) -> SocketAddr {
    SocketAddr::new(GUEST_ADDRESS.parse().unwrap(), port)
}

/// Runs `work` on a thread inside namespace `name` (sockets keep the namespace they were made
/// in).
fn in_namespace<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        work()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A new IPv4 TCP socket, for options `TcpStream` does not set before connecting.
fn stream_socket() -> std::os::fd::OwnedFd {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap()
}

/// Boots 4 cores with `cmdline` on a tap device in a fresh namespace.
fn boot(what: &str, cmdline: &str) -> (TapNamespace, Machine) {
    require_root();
    require_program("ip", "iproute2");
    let (namespace, machine) = boot_on_tap(what, CORES, cmdline);
    // The link comes up shortly after the stacks: wait until an echo connection works.
    let name = namespace.name.clone();
    let up = in_namespace(&name, || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect_timeout(&guest(7), Duration::from_secs(1)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut byte = [0u8; 1];
                if stream.write_all(b"?").is_ok() && stream.read_exact(&mut byte).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    assert!(up, "no TCP echo\n{}", console_tail(&machine, 40));
    (namespace, machine)
}

/// `/stats` as JSON, fetched with curl in the namespace, until `ready` holds (the other cores'
/// entries are the latest gathering, which a request starts) or 15 s have passed.
fn stats_until(
    namespace: &TapNamespace,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = stats_json(namespace);
        if ready(&doc) || Instant::now() >= deadline {
            return doc;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `/stats` with every core's entry gathered after this call began.
fn stats(namespace: &TapNamespace) -> serde_json::Value {
    let first = stats_until(namespace, |_| true);
    let uptime = |doc: &serde_json::Value, core: usize| doc["cores"][core]["uptime_ms"].as_u64();
    let before: Vec<Option<u64>> = (0..usize::from(CORES)).map(|c| uptime(&first, c)).collect();
    stats_until(namespace, |doc| {
        (0..usize::from(CORES)).all(|c| uptime(doc, c) > before[c])
    })
}

fn assert_no_failure(machine: &Machine) {
    let console = machine.console();
    let failures: Vec<&String> = console.iter().filter(|l| is_failure_line(l)).collect();
    assert!(
        failures.is_empty(),
        "the console reported failures: {failures:?}\n{}",
        console_tail(machine, 40)
    );
}

#[test]
fn closed_ports_fragments_and_a_client_that_never_reads() {
    require_program("nc", "netcat-openbsd");
    require_program("nmap", "nmap");
    require_program("curl", "curl");
    let (namespace, machine) = boot("tcp-host", "urpc=off netd.tcp_idle_s=5");

    // nc -z to a closed port: refused at once (a reset), not a timeout.
    let started = Instant::now();
    let output = run_bounded(
        namespace
            .command("nc")
            .args(["-z", "-v", "-w", "5", GUEST_ADDRESS, "22"]),
        Duration::from_secs(20),
    );
    let said = text(&output);
    assert!(
        !output.status.success() && said.contains("refused"),
        "nc -z to a closed port: {said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused only after {:?} (nc's timeout is 5 s): no reset? {said}",
        started.elapsed()
    );
    let open = run_bounded(
        namespace
            .command("nc")
            .args(["-z", "-w", "5", GUEST_ADDRESS, "7"]),
        Duration::from_secs(20),
    );
    assert!(
        open.status.success(),
        "nc -z to the echo port: {}",
        text(&open)
    );

    // nmap's connect scan: open ports open, closed ones closed (never "filtered").
    let output = run_bounded(
        namespace.command("nmap").args([
            "-sT",
            "-Pn",
            "-n",
            "-p",
            "7,22,80,81,443,11211",
            GUEST_ADDRESS,
        ]),
        Duration::from_secs(120),
    );
    let report = text(&output);
    for (port, state) in [
        (7, "open"),
        (22, "closed"),
        (80, "open"),
        (81, "closed"),
        (443, "closed"),
        (11211, "open"),
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{port}/tcp")))
            .unwrap_or_else(|| panic!("nmap did not report {port}/tcp:\n{report}"));
        assert!(
            line.split_whitespace().nth(1) == Some(state),
            "nmap: {line} (want {state}):\n{report}"
        );
    }

    // UDP to a closed port: ICMP port unreachable, which a connected socket reports as refused;
    // the same for a datagram Linux fragments (1800 bytes over a 1500-byte MTU), which the guest
    // must reassemble before it can tell the port is closed.
    let name = namespace.name.clone();
    let refused = in_namespace(&name, || {
        let mut results = Vec::new();
        for size in [32usize, 1800] {
            let socket = UdpSocket::bind("10.0.2.2:0").unwrap();
            socket.connect(guest(19)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut outcome = String::from("no answer");
            for _ in 0..3 {
                let _ = socket.send(&vec![b'u'; size]);
                let mut buffer = [0u8; 64];
                match socket.recv(&mut buffer) {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        outcome = "refused".into();
                        break;
                    }
                    Err(e) => outcome = format!("{e}"),
                    Ok(n) => outcome = format!("{n} bytes back"),
                }
            }
            results.push((size, outcome));
        }
        results
    });
    for (size, outcome) in &refused {
        assert_eq!(
            outcome, "refused",
            "{size}-byte datagram to closed UDP port 19"
        );
    }

    // Fragmented datagrams to the discard port: reassembled and delivered.
    in_namespace(&name, || {
        let socket = UdpSocket::bind("10.0.2.2:0").unwrap();
        for _ in 0..5 {
            socket.send_to(&[b'f'; 1800], guest(9)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let doc = stats(&namespace);
    let reassembled = sum(&doc, |core| core["reassembly"]["reassembled"].as_u64());
    let fragments = sum(&doc, |core| core["reassembly"]["fragments"].as_u64());
    assert!(
        reassembled >= 6 && fragments >= 12,
        "reassembled {reassembled} datagrams from {fragments} fragments (want the 5 to the discard port and the closed-port one); /stats: {doc}"
    );
    let discarded_bytes = sum(&doc, |core| path_field(core, "udp:9", "/bytes"));
    assert!(
        discarded_bytes >= 5 * 1842,
        "the discard path took {discarded_bytes} bytes"
    );
    let closed_sent = sum(&doc, |core| path_field(core, "closed", "/tx_packets"));
    assert!(
        closed_sent >= 4,
        "the closed-port path sent {closed_sent} replies"
    );

    // A client that pipelines requests and never reads (a small receive buffer): it is stopped
    // (its requests wait unread), other clients are served, and after 5 s without progress it
    // is reset.
    let greedy = in_namespace(&name, || {
        let socket = stream_socket();
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
        let address = nix::sys::socket::SockaddrIn::new(10, 0, 2, 15, 80);
        nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &address).unwrap();
        let mut stream = TcpStream::from(socket);
        stream
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let request = b"GET /stats HTTP/1.1\r\nHost: guest\r\n\r\n".repeat(64);
        let started = Instant::now();
        let mut written = 0usize;
        let mut outcome = String::from("still open after 40 s");
        while started.elapsed() < Duration::from_secs(40) {
            match stream.write(&request) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(e) => {
                    outcome = format!("{:?} after {:?}", e.kind(), started.elapsed());
                    break;
                }
            }
        }
        (written, outcome, started.elapsed())
    });
    let (written, outcome, took) = greedy;
    assert!(
        outcome.starts_with("ConnectionReset") || outcome.starts_with("BrokenPipe"),
        "the client that never reads: {outcome} ({written} bytes written)"
    );
    assert!(
        took >= Duration::from_secs(5),
        "reset after {took:?}, before netd.tcp_idle_s=5 had passed"
    );
    assert!(
        written < 16 << 20,
        "{written} bytes accepted from a client that never reads"
    );
    // Others are served, and the server's state for the greedy one is gone.
    let page = run_bounded(
        namespace.command("curl").args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{GUEST_ADDRESS}/"),
        ]),
        Duration::from_secs(20),
    );
    assert!(text(&page).contains("</html>"), "curl /: {}", text(&page));
    let doc = stats(&namespace);
    let idle = sum(&doc, |core| {
        path_field(core, "tcp:80", "/tcp/idle_timeouts")
    });
    assert!(idle >= 1, "no idle timeout counted on tcp:80");
    let cores = doc["cores"].as_array().map_or(0, Vec::len);
    assert_eq!(cores, usize::from(CORES), "every core still reports");
    assert_no_failure(&machine);
    drop(machine);
    drop(namespace);
}

/// Opens `count` connections to the echo port from the thread's namespace, sends each a line
/// and reads it back, all while every connection stays open; returns (opened, echoed, first
/// failure).
fn many_echoes(count: usize) -> (usize, usize, Option<String>) {
    let mut streams = Vec::with_capacity(count);
    let mut failure = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while streams.len() < count && Instant::now() < deadline {
        match TcpStream::connect_timeout(&guest(7), Duration::from_secs(5)) {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                failure.get_or_insert(format!("connect #{}: {e}", streams.len()));
                break;
            }
        }
    }
    let opened = streams.len();
    let mut echoed = 0;
    // Everyone writes first (all connections busy at once), then everyone reads.
    for (index, stream) in streams.iter_mut().enumerate() {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        if let Err(e) = stream.write_all(format!("connection {index}\n").as_bytes()) {
            failure.get_or_insert(format!("write #{index}: {e}"));
        }
    }
    for (index, stream) in streams.iter_mut().enumerate() {
        let want = format!("connection {index}\n");
        let mut got = vec![0u8; want.len()];
        match stream.read_exact(&mut got) {
            Ok(()) if got == want.as_bytes() => echoed += 1,
            Ok(()) => {
                failure.get_or_insert(format!(
                    "#{index} echoed {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Err(e) => {
                failure.get_or_insert(format!("read #{index}: {e}"));
            }
        }
        if Instant::now() > deadline {
            failure.get_or_insert("out of time".into());
            break;
        }
    }
    (opened, echoed, failure)
}

#[test]
fn ten_thousand_connections_each_echo_then_wrk() {
    require_program("wrk", "wrk");
    require_program("curl", "curl");
    // 10,000 sockets here, plus wrk's: the hard limit of this host is 20,000 files.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 20_000, 20_000)
        .expect("raising the open-file limit to 20000 (the host's hard limit)");
    let (namespace, machine) = boot("tcp-10k", "urpc=off");
    let name = namespace.name.clone();
    // Two threads of 5,000 connections each: all 10,000 are open at once.
    let halves: Vec<_> = (0..2)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || in_namespace(&name, || many_echoes(5_000)))
        })
        .collect();
    // While they are open, look at the guest's table.
    let results: Vec<(usize, usize, Option<String>)> =
        halves.into_iter().map(|h| h.join().unwrap()).collect();
    let opened: usize = results.iter().map(|r| r.0).sum();
    let echoed: usize = results.iter().map(|r| r.1).sum();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.2.as_ref()).collect();
    assert!(
        opened == 10_000 && echoed == 10_000,
        "{opened} connections opened, {echoed} echoed; first failures: {failures:?}\n{}",
        console_tail(&machine, 30)
    );
    let doc = stats(&namespace);
    let most = sum(&doc, |core| {
        path_field(core, "tcp:7", "/tcp/most_connections")
    });
    let refused = sum(&doc, |core| path_field(core, "tcp:7", "/tcp/refused_limit"))
        + sum(&doc, |core| {
            path_field(core, "tcp:7", "/tcp/refused_memory")
        });
    assert!(
        most >= 10_000,
        "the cores' tables held at most {most} connections together"
    );
    assert_eq!(refused, 0);
    let per_core: Vec<u64> = doc["cores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|core| path_field(core, "tcp:7", "/tcp/most_connections"))
        .collect();
    assert_eq!(per_core.len(), usize::from(CORES), "{per_core:?}");

    // wrk with 1,000 connections on HTTP: no socket error.
    let script = format!(
        "ulimit -n 20000 && exec wrk -t2 -c1000 -d5s --timeout 10s http://{GUEST_ADDRESS}/"
    );
    let output = run_bounded(
        namespace.command("sh").args(["-c", &script]),
        Duration::from_secs(60),
    );
    let report = text(&output);
    let rate: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        output.status.success() && rate > 0.0 && !report.contains("Socket errors"),
        "wrk -c1000:\n{report}"
    );
    assert!(!report.contains("Non-2xx"), "wrk -c1000:\n{report}");
    assert_no_failure(&machine);
    drop(machine);
    drop(namespace);
}

#[test]
fn an_established_connection_keeps_echoing_across_a_flow_group_move() {
    // Group 9 starts on core 1; the monitors move it to core 3 some seconds after boot, while
    // the connection echoes.
    const GROUP: u8 = 9;
    const TO: u16 = 3;
    let old = rss::default_table(CORES)[usize::from(GROUP)];
    assert_ne!(u16::from(old), TO);
    let (namespace, mut machine) = boot(
        "tcp-move",
        &format!("urpc=off netd.move={GROUP}:{TO}@12000"),
    );
    let flow = FlowTuple::V4 {
        source: PEER_IP,
        destination: GUEST_IP,
        ports: Some((0, 7)),
    };
    let port = rss::source_port_for_group(
        &DEFAULT_KEY,
        flow,
        drivers::nic::FlowGroup(GROUP),
        40000..=60000,
    )
    .expect("a port in the flow group");
    let moved_line = format!("monitor: flow group {GROUP} now on core {TO}");
    assert!(
        !machine.console().iter().any(|l| l.contains(&moved_line)),
        "the group moved before the connection was made: boot took too long"
    );
    let name = namespace.name.clone();
    let echoing = std::thread::spawn(move || {
        in_namespace(&name, move || {
            let socket = stream_socket();
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReuseAddr, &true)
                .unwrap();
            let local = nix::sys::socket::SockaddrIn::new(10, 0, 2, 2, port);
            nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &local).unwrap();
            let remote = nix::sys::socket::SockaddrIn::new(10, 0, 2, 15, 7);
            nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &remote).unwrap();
            let mut stream = TcpStream::from(socket);
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let started = Instant::now();
            let mut rounds = 0u32;
            // Echo for 25 s: before, across and after the move.
            while started.elapsed() < Duration::from_secs(25) {
                let line = format!("round {rounds} on a connection in group {GROUP}\n");
                stream
                    .write_all(line.as_bytes())
                    .map_err(|e| format!("round {rounds}: {e}"))?;
                let mut back = vec![0u8; line.len()];
                stream
                    .read_exact(&mut back)
                    .map_err(|e| format!("round {rounds} at {:?}: {e}", started.elapsed()))?;
                if back != line.as_bytes() {
                    return Err(format!(
                        "round {rounds}: {:?}",
                        String::from_utf8_lossy(&back)
                    ));
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok::<u32, String>(rounds)
        })
    });
    line_containing(&mut machine, "the flow-group move", &moved_line);
    let rounds = echoing.join().unwrap();
    let rounds = rounds.unwrap_or_else(|e| {
        panic!(
            "the connection broke across the move: {e}\n{}",
            console_tail(&machine, 30)
        )
    });
    assert!(rounds > 100, "{rounds} rounds");
    // The new owner received the connection's segments and handed them to the old one.
    let doc = stats(&namespace);
    let core = |index: u16| &doc["cores"][usize::from(index)];
    let handed = path_field(core(TO), "tcp:7", "/tcp/handed_over").unwrap_or(0);
    assert!(
        handed > 0,
        "core {TO} handed no segment over: {}",
        core(TO)["paths"]
    );
    let strays = sum(&doc, |core| {
        path_field(core, "tcp:7", "/tcp/stray_segments")
    });
    assert_eq!(strays, 0, "segments were reset");
    assert_no_failure(&machine);
    drop(machine);
    drop(namespace);
}
