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
use flotilla_tests::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CORES: u16 = 4;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC the raw-frame tests use for 10.0.2.2.
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xfe, 0x00, 0x02];

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Parses `key=value` words of a line into a map.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(map: &BTreeMap<String, String>, key: &str) -> u64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{key}` in {map:?}"))
}

// ---------------------------------------------------------------------------------------------
// The tap test: unmodified clients in a namespace
// ---------------------------------------------------------------------------------------------

/// UDP echo over many flows: argv = guest, comma-separated source ports, datagrams per flow.
/// Prints `udp PORT ECHOED/SENT` per flow. Each datagram is tried up to 3 times (1 s each).
const UDP_ECHO_CLIENT: &str = r#"
import socket, sys, time
guest, ports, per_flow = sys.argv[1], [int(p) for p in sys.argv[2].split(',')], int(sys.argv[3])
deadline = time.monotonic() + 60
sizes = [18, 64, 512, 1400]
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('10.0.2.2', port))
    s.settimeout(1.0)
    echoed = 0
    for i in range(per_flow):
        head = ('flow %d datagram %d ' % (port, i)).encode()
        message = head + bytes((port + i + k) % 256 for k in range(max(0, sizes[i % 4] - len(head))))
        ok = False
        for attempt in range(3):
            if time.monotonic() > deadline:
                break
            s.sendto(message, (guest, 7))
            try:
                while not ok:
                    data, source = s.recvfrom(4096)
                    ok = data == message and source == (guest, 7)
            except socket.timeout:
                pass
            if ok:
                break
        echoed += ok
    s.close()
    print('udp %d %d/%d' % (port, echoed, per_flow), flush=True)
"#;

/// TCP echo over many concurrent connections: argv = guest, comma-separated source ports.
/// Opens them all, then on each sends 1, 200 and 5000 bytes and reads them back, then closes
/// its side and expects the server to close too. Prints `tcp PORT ok` or `tcp PORT FAIL why`.
const TCP_ECHO_CLIENT: &str = r#"
import socket, sys, time
guest, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(',')]
deadline = time.monotonic() + 90
connections = {}
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(('10.0.2.2', port))
    s.settimeout(10)
    try:
        s.connect((guest, 7))
        connections[port] = s
    except Exception as e:
        print('tcp %d FAIL connect: %r' % (port, e), flush=True)
        s.close()
def read_exactly(s, n):
    data = b''
    while len(data) < n:
        if time.monotonic() > deadline:
            raise TimeoutError('test deadline')
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError('closed after %d of %d bytes' % (len(data), n))
        data += chunk
    return data
for port, s in connections.items():
    try:
        for size in (1, 200, 5000):
            message = bytes((port * 7 + size + k) % 251 for k in range(size))
            s.sendall(message)
            back = read_exactly(s, size)
            if back != message:
                raise ValueError('%d bytes sent, different %d bytes back' % (size, len(back)))
        s.shutdown(socket.SHUT_WR)
        rest = s.recv(16)
        if rest != b'':
            raise ValueError('extra bytes after the echo: %r' % rest)
        print('tcp %d ok' % port, flush=True)
    except Exception as e:
        print('tcp %d FAIL %r' % (port, e), flush=True)
    finally:
        s.close()
"#;

/// memcached over many connections with pymemcache: argv = guest, then one `PORT:KEY,KEY,...`
/// per connection. Connection `PORT` is bound to that source port. Prints `mc PORT ok` or
/// `mc PORT FAIL why`, then `mc cross ok` once every connection read every other's keys.
const MEMCACHED_CLIENT: &str = r#"
import socket as std_socket, sys, time
from pymemcache.client.base import Client

class BoundSockets:
    """pymemcache's socket module, with every socket bound to one source port."""
    def __init__(self, port):
        self.port = port
    def __getattr__(self, name):
        return getattr(std_socket, name)
    def socket(self, *args, **kwargs):
        s = std_socket.socket(*args, **kwargs)
        s.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_REUSEADDR, 1)
        s.bind(('10.0.2.2', self.port))
        return s

guest = sys.argv[1]
plan = []
for item in sys.argv[2:]:
    port, keys = item.split(':')
    plan.append((int(port), keys.split(',')))
clients = {}
for port, keys in plan:
    clients[port] = Client((guest, 11211), connect_timeout=10, timeout=10,
                           socket_module=BoundSockets(port), default_noreply=False)
    version = clients[port].version()
    if not version:
        print('mc %d FAIL no version' % port, flush=True)
def value(port, key):
    return ('value of %s from %d ' % (key, port)).encode() * 3
everything = {}
for port, keys in plan:
    c = clients[port]
    try:
        for key in keys:
            if not c.set(key, value(port, key)):
                raise ValueError('set %s not stored' % key)
        for key in keys:
            got = c.get(key)
            if got != value(port, key):
                raise ValueError('get %s: %r' % (key, got))
        many = c.get_many(keys + ['never-set-%d' % port])
        expected = {key: value(port, key) for key in keys}
        if many != expected:
            raise ValueError('get_many: %r' % many)
        victim = keys[0]
        if c.delete(victim) is not True:
            raise ValueError('delete %s did not delete' % victim)
        if c.get(victim) is not None:
            raise ValueError('%s still there after delete' % victim)
        if c.delete(victim) is not False:
            raise ValueError('second delete %s was not NOT_FOUND' % victim)
        if not c.set(victim, value(port, victim)):
            raise ValueError('set %s again not stored' % victim)
        c.set(victim + '-noreply', b'quiet', noreply=True)
        if c.get(victim + '-noreply') != b'quiet':
            raise ValueError('noreply set not visible')
        everything.update(expected)
        print('mc %d ok' % port, flush=True)
    except Exception as e:
        print('mc %d FAIL %r' % (port, e), flush=True)
wrong = 0
keys = sorted(everything)
for port, c in clients.items():
    got = {}
    for start in range(0, len(keys), 24):
        got.update(c.get_many(keys[start:start + 24]))
    if got != everything:
        wrong += 1
        missing = [k for k in everything if got.get(k) != everything[k]]
        print('mc cross FAIL on %d: %d keys wrong, e.g. %r' % (port, len(missing), missing[:3]), flush=True)
for c in clients.values():
    c.close()
if wrong == 0:
    print('mc cross ok', flush=True)
"#;

/// Reads `/stats` JSON from stdin; prints one `core=K key=value...` line per core (exit 1 if the
/// JSON does not parse or has no cores).
const STATS_SUMMARY: &str = r#"
import json, sys
doc = json.load(sys.stdin)
cores = doc['cores']
if not cores:
    sys.exit('no cores in /stats')
for c in cores:
    paths = {p['path']: p for p in c['paths']}
    def path(name, field):
        return paths.get(name, {}).get(field, 0)
    print('core=%d paths=%d rx_frames=%d tx_frames=%d forwarded_out=%d forwarded_in=%d drops=%d '
          'icmp_packets=%d udp7_packets=%d tcp7_connections=%d tcp80_connections=%d '
          'tcp11211_connections=%d tcp11211_peer_messages=%d' % (
        c['core'], len(c['paths']), c['rx_frames'], c['tx_frames'], c['forwarded_out'], c['forwarded_in'],
        sum(c['drops'].values()), path('icmp', 'packets'), path('udp:7', 'packets'),
        path('tcp:7', 'connections'), path('tcp:80', 'connections'),
        path('tcp:11211', 'connections'), path('tcp:11211', 'peer_messages')))
"#;

/// Fetches `/stats` with curl inside the namespace and summarises it (one map per core).
fn fetch_stats(
    namespace: &TapNamespace,
    python: &str,
) -> Result<Vec<BTreeMap<String, String>>, String> {
    let url = format!("http://{GUEST_ADDRESS}/stats");
    let body = run_bounded(
        namespace
            .command("curl")
            .args(["-sS", "--max-time", "10", &url]),
        Duration::from_secs(20),
    );
    if !body.status.success() {
        return Err(format!("curl {url} failed: {}", text(&body)));
    }
    let mut parse = Command::new(python);
    parse.args(["-c", STATS_SUMMARY]).stdin(Stdio::piped());
    let mut child = parse
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&body.stdout).map_err(|e| e.to_string())?;
    }
    let summary = child.wait_with_output().map_err(|e| e.to_string())?;
    if !summary.status.success() {
        return Err(format!(
            "/stats is not the expected JSON ({}):\n{}",
            text(&summary),
            String::from_utf8_lossy(&body.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&summary.stdout)
        .lines()
        .map(fields)
        .collect())
}

#[test]
fn tap_clients_are_served_on_every_core() {
    require_root();
    require_program("ip", "iproute2");
    require_program("ping", "iputils-ping");
    require_program("curl", "curl");
    require_program("nc", "netcat-openbsd");
    let python = python_with("pymemcache");
    let image = image();

    let namespace =
        TapNamespace::create(&unique_namespace("tap")).unwrap_or_else(|e| panic!("{e}"));
    let mut config = MachineConfig::kernel(image, u32::from(CORES), "urpc=off");
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    let machine = boot_with_network(&config, CORES);

    // ping: the link comes up shortly after the stacks; try a few rounds, then the real check.
    let mut ping = None;
    for _ in 0..10 {
        let output = run_bounded(
            namespace
                .command("ping")
                .args(["-c", "3", "-W", "2", GUEST_ADDRESS]),
            Duration::from_secs(20),
        );
        let ok = output.status.success() && text(&output).contains(" 0% packet loss");
        ping = Some(output);
        if ok {
            break;
        }
    }
    let ping = ping.expect("ping ran");
    assert!(
        ping.status.success() && text(&ping).contains(" 0% packet loss"),
        "ping -c 3 -W 2 {GUEST_ADDRESS}:\n{}\nconsole:\n{}",
        text(&ping),
        console_tail(&machine, 40)
    );

    // UDP echo: 32 flows, 8 per queue, 4 datagrams each (18 to 1400 bytes).
    let table = rss::default_table(CORES);
    let udp_flows = ports_by_queue(&table, 7, 8, 20000..=24999);
    let ports: Vec<String> = udp_flows.iter().map(|(p, _)| p.to_string()).collect();
    let output = run_bounded(
        namespace.command(&python).args([
            "-c",
            UDP_ECHO_CLIENT,
            GUEST_ADDRESS,
            &ports.join(","),
            "4",
        ]),
        Duration::from_secs(90),
    );
    let report = text(&output);
    let complete = report
        .lines()
        .filter(|l| l.starts_with("udp ") && l.ends_with(" 4/4"))
        .count();
    assert!(
        output.status.success() && complete == udp_flows.len(),
        "UDP echo: {complete} of {} flows fully echoed:\n{report}\nflows (port, queue): {udp_flows:?}\nconsole:\n{}",
        udp_flows.len(),
        console_tail(&machine, 40)
    );

    // TCP echo: 32 concurrent connections, 8 per queue.
    let tcp_flows = ports_by_queue(&table, 7, 8, 25000..=29999);
    let ports: Vec<String> = tcp_flows.iter().map(|(p, _)| p.to_string()).collect();
    let output = run_bounded(
        namespace
            .command(&python)
            .args(["-c", TCP_ECHO_CLIENT, GUEST_ADDRESS, &ports.join(",")]),
        Duration::from_secs(120),
    );
    let report = text(&output);
    let ok = report
        .lines()
        .filter(|l| l.starts_with("tcp ") && l.ends_with(" ok"))
        .count();
    assert!(
        output.status.success() && ok == tcp_flows.len(),
        "TCP echo: {ok} of {} connections echoed and closed:\n{report}\nflows (port, queue): {tcp_flows:?}\nconsole:\n{}",
        tcp_flows.len(),
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
    let first = fetch_stats(&namespace, &python).unwrap_or_else(|e| panic!("{e}"));
    assert!(!first.is_empty());

    // memcached: 16 connections, 4 per queue, each with keys owned by every core.
    let memcached_flows = ports_by_queue(&table, 11211, 4, 30000..=32767);
    let mut plan = Vec::new();
    for (index, (port, _)) in memcached_flows.iter().enumerate() {
        let mut keys = Vec::new();
        for owner in 0..CORES {
            // Two keys per owner core, found by the server's own partition function.
            let mut candidate = 0u32;
            let mut taken = 0;
            while taken < 2 {
                let key = format!("conn{index}-owner{owner}-k{candidate}");
                if netd::app::memcached::key_owner(key.as_bytes(), CORES) == owner {
                    keys.push(key);
                    taken += 1;
                }
                candidate += 1;
                assert!(candidate < 10_000, "no key for owner {owner}");
            }
        }
        plan.push(format!("{port}:{}", keys.join(",")));
    }
    let mut arguments = vec![
        "-c".to_string(),
        MEMCACHED_CLIENT.to_string(),
        GUEST_ADDRESS.to_string(),
    ];
    arguments.extend(plan);
    let output = run_bounded(
        namespace.command(&python).args(&arguments),
        Duration::from_secs(180),
    );
    let report = text(&output);
    let ok = report
        .lines()
        .filter(|l| l.starts_with("mc ") && l.ends_with(" ok"))
        .count();
    assert!(
        output.status.success() && ok == memcached_flows.len() + 1,
        "memcached (pymemcache, {} connections): {ok} ok lines, want {}:\n{report}\nconsole:\n{}",
        memcached_flows.len(),
        memcached_flows.len() + 1,
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
        match fetch_stats(&namespace, &python) {
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

// ---------------------------------------------------------------------------------------------
// Raw frames over -netdev dgram: steering against QEMU's trace and the guest's counters
// ---------------------------------------------------------------------------------------------

fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying IPv4/UDP from PEER to GUEST.
fn udp_frame(source_port: u16, destination_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_length = 8 + payload.len();
    let total_length = 20 + udp_length;
    let mut frame = Vec::with_capacity(14 + total_length);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total_length as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&source_port.to_be_bytes()); // identification: any
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&PEER_IP);
    ip[16..20].copy_from_slice(&GUEST_IP);
    let ip_checksum = internet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(udp_length);
    udp.extend_from_slice(&source_port.to_be_bytes());
    udp.extend_from_slice(&destination_port.to_be_bytes());
    udp.extend_from_slice(&(udp_length as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = [
        &PEER_IP[..],
        &GUEST_IP[..],
        &[0, 17],
        &(udp_length as u16).to_be_bytes(),
    ]
    .concat();
    let mut checksum = internet_checksum(&[&pseudo, &udp]);
    if checksum == 0 {
        checksum = 0xFFFF;
    }
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&udp);
    frame
}

/// An ARP frame (operation 1 request, 2 reply) from PEER.
fn arp_frame(operation: u16, destination_mac: [u8; 6], target_mac: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&destination_mac);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    frame.extend_from_slice(&operation.to_be_bytes());
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&PEER_IP);
    frame.extend_from_slice(&target_mac);
    frame.extend_from_slice(&GUEST_IP);
    frame.resize(60, 0);
    frame
}

/// What the guest sent, as far as these tests care.
#[derive(Debug)]
enum FromGuest {
    /// An ARP request for `target`.
    ArpRequest { target: [u8; 4] },
    /// An ARP reply: `sender` is at `mac`.
    ArpReply { sender: [u8; 4], mac: [u8; 6] },
    /// A UDP datagram.
    Udp {
        destination_mac: [u8; 6],
        source: ([u8; 4], u16),
        destination: ([u8; 4], u16),
        payload: Vec<u8>,
    },
    /// Anything else (its length and ethertype, described).
    Other(String),
}

fn parse_frame(frame: &[u8]) -> FromGuest {
    let other = || {
        let ethertype = frame
            .get(12..14)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
        FromGuest::Other(format!("{} bytes, ethertype {ethertype:#06x}", frame.len()))
    };
    if frame.len() < 14 {
        return other();
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[14..];
    match ethertype {
        0x0806 if body.len() >= 28 => {
            let operation = u16::from_be_bytes([body[6], body[7]]);
            let mac: [u8; 6] = body[8..14].try_into().expect("6 bytes");
            let sender: [u8; 4] = body[14..18].try_into().expect("4 bytes");
            let target: [u8; 4] = body[24..28].try_into().expect("4 bytes");
            match operation {
                1 => FromGuest::ArpRequest { target },
                2 => FromGuest::ArpReply { sender, mac },
                _ => other(),
            }
        }
        0x0800 if body.len() >= 28 && body[9] == 17 => {
            let header = usize::from(body[0] & 0x0F) * 4;
            let total = usize::from(u16::from_be_bytes([body[2], body[3]]));
            if header < 20 || total > body.len() || total < header + 8 {
                return other();
            }
            let udp = &body[header..total];
            FromGuest::Udp {
                destination_mac: frame[0..6].try_into().expect("6 bytes"),
                source: (
                    body[12..16].try_into().expect("4 bytes"),
                    u16::from_be_bytes([udp[0], udp[1]]),
                ),
                destination: (
                    body[16..20].try_into().expect("4 bytes"),
                    u16::from_be_bytes([udp[2], udp[3]]),
                ),
                payload: udp[8..].to_vec(),
            }
        }
        _ => other(),
    }
}

/// The wire to a machine on `-netdev dgram`: every frame sent is recorded with the queue it
/// should land on, and ARP requests from the guest are answered (their replies go to queue 0).
struct Wire {
    socket: UdpSocket,
    qemu: SocketAddr,
    /// (what, predicted queue) for every frame sent, in order.
    sent: Vec<(String, u16)>,
    /// Frames from the guest that were neither echoes nor ARP.
    strays: Vec<String>,
}

impl Wire {
    /// Binds the test's end and picks QEMU's port: returns (wire, local, remote) for
    /// `Network::Datagram`.
    fn open() -> (Self, u16, u16) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test's end");
        let remote = socket.local_addr().expect("address").port();
        let local = loop {
            let probe = UdpSocket::bind("127.0.0.1:0").expect("bind a probe");
            let port = probe.local_addr().expect("address").port();
            if port != remote {
                break port;
            }
        };
        let qemu = SocketAddr::from((Ipv4Addr::LOCALHOST, local));
        (
            Self {
                socket,
                qemu,
                sent: Vec::new(),
                strays: Vec::new(),
            },
            local,
            remote,
        )
    }

    fn send(&mut self, frame: &[u8], what: String, queue: u16) {
        self.socket
            .send_to(frame, self.qemu)
            .expect("send a frame to QEMU");
        self.sent.push((what, queue));
    }

    /// The next frame from the guest that is not an ARP request (those are answered), until
    /// `deadline`.
    fn receive(&mut self, deadline: Instant) -> Option<FromGuest> {
        let mut buffer = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let (length, _) = match self.socket.recv_from(&mut buffer) {
                Ok(pair) => pair,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("receiving from QEMU: {e}"),
            };
            match parse_frame(&buffer[..length]) {
                FromGuest::ArpRequest { target } if target == PEER_IP => {
                    let reply = arp_frame(2, GUEST_MAC, GUEST_MAC);
                    self.send(&reply, "ARP reply to the guest".into(), 0);
                }
                FromGuest::ArpRequest { .. } => {}
                frame => return Some(frame),
            }
        }
    }

    /// Tells the guest where 10.0.2.2 is (ARP request for 10.0.2.15) until it answers; the
    /// link needs a moment after the stacks are up.
    fn introduce(&mut self, machine: &Machine) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            self.send(&arp_frame(1, [0xFF; 6], [0; 6]), "ARP request".into(), 0);
            let wait = Instant::now() + Duration::from_millis(500);
            while let Some(frame) = self.receive(wait) {
                if let FromGuest::ArpReply { sender, mac } = frame {
                    assert_eq!((sender, mac), (GUEST_IP, GUEST_MAC), "ARP reply");
                    return;
                }
            }
        }
        panic!(
            "the guest never answered ARP over -netdev dgram; console:\n{}",
            console_tail(machine, 40)
        );
    }

    /// Once ARP works: waits for QEMU's trace to settle and checks that everything so far went
    /// to queue 0 (ARP is not hashed). Returns (frames sent so far, RX events traced so far).
    fn baseline(&mut self, trace: &std::path::Path) -> (usize, usize) {
        std::thread::sleep(Duration::from_millis(300));
        let traced = traced_queues(trace);
        assert!(
            !traced.is_empty() && traced.iter().all(|q| *q == 0),
            "ARP frames should all be on queue 0: {traced:?}"
        );
        (self.sent.len(), traced.len())
    }

    /// Sends a UDP echo request on source port `port` (predicted on `queue`) and waits for the
    /// echo, up to 3 tries of 2 s. Returns whether it came.
    fn echo(&mut self, port: u16, queue: u16, label: &str) -> bool {
        let payload = format!("{label} port={port} predicted-queue={queue}").into_bytes();
        let frame = udp_frame(port, 7, &payload);
        for attempt in 0..3 {
            self.send(
                &frame,
                format!("{label} UDP :{port} (try {attempt})"),
                queue,
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Some(reply) = self.receive(deadline) {
                match reply {
                    FromGuest::Udp {
                        destination_mac,
                        source,
                        destination,
                        payload: echoed,
                    } if source == (GUEST_IP, 7) && destination == (PEER_IP, port) => {
                        assert_eq!(destination_mac, PEER_MAC, "echo to the wrong MAC");
                        if echoed == payload {
                            return true;
                        }
                        self.strays.push(format!(
                            "echo with other payload: {:?}",
                            String::from_utf8_lossy(&echoed)
                        ));
                    }
                    FromGuest::Other(description) => self.strays.push(description),
                    other => self.strays.push(format!("{other:?}")),
                }
            }
        }
        false
    }
}

/// The queue of every `e1000e_rx_written_to_guest` event in QEMU's trace, in order.
fn traced_queues(trace: &std::path::Path) -> Vec<u16> {
    let log = std::fs::read_to_string(trace).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("e1000e_rx_written_to_guest"))
        .filter_map(|line| {
            let rest = line.split("(queue ").nth(1)?;
            rest.trim_end_matches(')').trim().parse().ok()
        })
        .collect()
}

/// Waits (bounded) until the trace holds at least `count` events; returns them.
fn wait_for_trace(trace: &std::path::Path, count: usize) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queues = traced_queues(trace);
        if queues.len() >= count || Instant::now() >= deadline {
            return queues;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// QEMU's trace file, removed when the test ends (passed or failed).
struct TraceFile(PathBuf);

impl std::ops::Deref for TraceFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A machine on the datagram wire with QEMU's RX queue trace in a temporary file.
fn boot_on_wire(cmdline: &str, what: &str) -> (Machine, Wire, TraceFile) {
    let (wire, local, remote) = Wire::open();
    let trace = TraceFile(std::env::temp_dir().join(format!("{}.trace", unique_namespace(what))));
    let _ = std::fs::remove_file(&*trace);
    let mut config = MachineConfig::kernel(image(), u32::from(CORES), cmdline);
    config.network = Network::Datagram { local, remote };
    config.extra_args = [
        "-trace",
        "e1000e_rx_written_to_guest",
        "-trace",
        "e1000e_rx_rss_type",
        "-D",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.to_string_lossy().into_owned()])
    .collect();
    let machine = boot_with_network(&config, CORES);
    (machine, wire, trace)
}

/// The latest `netd: stats core=K ...` line of each core printed after console line `after`.
fn stats_after(machine: &mut Machine, after: usize) -> BTreeMap<u16, BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = machine.console();
        let mut latest = BTreeMap::new();
        for line in console.iter().skip(after) {
            if let Some(rest) = line.strip_prefix("netd: stats ") {
                let map = fields(rest);
                if let Some(core) = map.get("core").and_then(|c| c.parse::<u16>().ok()) {
                    latest.insert(core, map);
                }
            }
        }
        if latest.len() == usize::from(CORES) || Instant::now() >= deadline {
            return latest;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn raw_frames_land_on_the_predicted_queue() {
    let (mut machine, mut wire, trace) = boot_on_wire("urpc=off netd.report=500", "steer");
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
    let stats = stats_after(&mut machine, after);
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
    let (mut machine, mut wire, trace) = boot_on_wire(&cmdline, "move");
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
    let stats = stats_after(&mut machine, after);
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
    let (mut machine, mut wire, trace) = boot_on_wire(cmdline, "failover");
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
