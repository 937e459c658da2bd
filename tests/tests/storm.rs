//! A storm of malformed frames in QEMU, then service on every protocol.
//!
//! * `a_storm_of_malformed_frames_is_dropped_and_counted_and_every_protocol_is_served_after`:
//!   4 cores, igb on a tap device in a network namespace this test creates. A Python sender in
//!   the namespace writes raw Ethernet frames onto the tap (an `AF_PACKET` socket: the host's
//!   stack is bypassed) — 120,000 of them, of every kind: truncated at every length, bad IPv4
//!   headers (version, IHL, total length, checksum, fragments, broadcast and multicast
//!   sources), bad ARP (hardware and protocol types and lengths, opcodes, targets, truncation),
//!   TCP segments with random flags, sequence numbers, data offsets and ports (three in four with
//!   a good checksum, so they reach smoltcp), bad UDP lengths and checksums, ICMP of every type,
//!   other ethertypes, and random bytes — with source ports and addresses spread so that every
//!   queue gets its share, paced at about 25,000 frames a second. Then `ping` (after a fresh ARP),
//!   UDP echo over 32 flows on every queue, TCP echo over 16 connections, HTTP `/` and `/stats`
//!   and memcached must be served; no core may fault, panic or be declared failed; every queue
//!   must have taken storm frames; and `/stats` must count the frames dropped under every reason
//!   the storm aims at. Prints the storm's rates and the drops by reason.
//!
//! Needs root, `ip`, `ping`, `curl`, Python 3 and Debian's `python3-pymemcache`
//! (`bash qemu-smp/install-deps.sh`). Every loop is bounded in count and time; every frame stays
//! on the test's tap. `FLOTILLA_TEST_KERNEL=/path/to/image` boots that image instead.

use drivers::rss;
use flotilla_tests::clients::*;
use flotilla_tests::stats::{self, stats_json, u64_at};
use flotilla_tests::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CORES: u16 = 4;
/// Frames in the storm.
const FRAMES: u64 = 120_000;
/// Frames a second the sender aims at.
const RATE: u64 = 25_000;

/// The storm: argv = tap device, frames, seed, frames per second. Prints `kind COUNT` per kind
/// and `sent N refused M seconds S` at the end.
const STORM: &str = r#"
import random, socket, struct, sys, time
tap, total, seed, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
GUEST_MAC = bytes.fromhex('525400123456')
GUEST = bytes([10, 0, 2, 15])
PEER = bytes([10, 0, 2, 2])

def checksum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def mac():
    return bytes([rng.randrange(256) & 0xFE | 0x02]) + bytes(rng.randrange(256) for _ in range(5))

def eth(payload, ethertype=0x0800, dst=GUEST_MAC):
    return dst + mac() + struct.pack('!H', ethertype) + payload

def ipv4(proto, payload, src=PEER, dst=GUEST, version=4, ihl=5, total=None, flags=0x4000,
         good=True, options=b''):
    header_len = 20 + len(options)
    if total is None:
        total = header_len + len(payload)
    header = struct.pack('!BBHHHBBH4s4s', version << 4 | ihl, 0, total & 0xFFFF,
                         rng.randrange(65536), flags, 64, proto, 0, src, dst) + options
    value = checksum(header)
    if not good:
        value ^= 1 + rng.randrange(0xFFFE)
    return header[:10] + struct.pack('!H', value) + header[12:] + payload

def l4_checksum(proto, segment, src=PEER, dst=GUEST):
    pseudo = src + dst + struct.pack('!BBH', 0, proto, len(segment))
    return checksum(pseudo + segment)

def udp(sport, dport, payload, length=None, good=True, src=PEER):
    length = 8 + len(payload) if length is None else length
    segment = struct.pack('!HHHH', sport, dport, length & 0xFFFF, 0) + payload
    value = l4_checksum(17, segment, src) or 0xFFFF
    if not good:
        value ^= 1 + rng.randrange(0xFFFE)
    return segment[:6] + struct.pack('!H', value) + segment[8:]

def tcp(sport, dport, flags, offset, payload, good=True):
    header = struct.pack('!HHIIBBHHH', sport, dport, rng.randrange(1 << 32), rng.randrange(1 << 32),
                         offset << 4, flags, rng.randrange(65536), 0, rng.randrange(65536))
    options = bytes(rng.randrange(256) for _ in range(max(0, offset - 5) * 4))
    segment = header + options + payload
    value = l4_checksum(6, segment)
    if not good:
        value ^= 1 + rng.randrange(0xFFFE)
    return segment[:16] + struct.pack('!H', value) + segment[18:]

def port():
    return rng.choice([7, 9, 80, 11211, rng.randrange(1, 65536)])

def sport():
    return rng.randrange(1024, 65536)

def good_udp_frame():
    return eth(ipv4(17, udp(sport(), 7, b'storm')))

def truncated():
    frame = rng.choice([good_udp_frame, lambda: eth(ipv4(6, tcp(sport(), 80, 0x02, 5, b''))),
                        lambda: eth(arp_body(1))])()
    return frame[:rng.randrange(1, len(frame))]

def bad_ip():
    body = udp(sport(), port(), b'x' * rng.randrange(40))
    choice = rng.randrange(9)
    if choice == 0:
        return eth(ipv4(17, body, version=rng.choice([0, 5, 6, 15])))
    if choice == 1:
        return eth(ipv4(17, body, ihl=rng.randrange(5)))
    if choice == 2:
        return eth(ipv4(17, body, ihl=rng.randrange(6, 16)))
    if choice == 3:
        return eth(ipv4(17, body, total=rng.randrange(60, 65536)))
    if choice == 4:
        return eth(ipv4(17, body, total=rng.randrange(20)))
    if choice == 5:
        return eth(ipv4(17, body, good=False))
    if choice == 6:
        return eth(ipv4(17, body, flags=rng.choice([0x2000, 0x2000 | rng.randrange(1, 0x2000), rng.randrange(1, 0x2000)])))
    if choice == 7:
        source = rng.choice([bytes(4), bytes([255] * 4), bytes([rng.randrange(224, 240)]) + bytes(3)])
        return eth(ipv4(17, udp(sport(), 7, b'y', src=source), src=source))
    return eth(ipv4(rng.choice([2, 41, 47, 50, 132, 253]), b'z' * 20,
                    src=bytes([10, 0, 2, rng.randrange(1, 255)])))

def arp_body(operation, htype=1, ptype=0x0800, hlen=6, plen=4, target=GUEST):
    return struct.pack('!HHBBH', htype, ptype, hlen, plen, operation) + mac() + PEER + bytes(6) + target

def bad_arp():
    choice = rng.randrange(6)
    dst = rng.choice([GUEST_MAC, b'\xff' * 6])
    if choice == 0:
        return eth(arp_body(1, htype=rng.choice([0, 6, 0xFFFF])), 0x0806, dst)
    if choice == 1:
        return eth(arp_body(1, ptype=rng.choice([0x86DD, 0, 0x0806])), 0x0806, dst)
    if choice == 2:
        return eth(arp_body(1, hlen=rng.choice([0, 4, 8]), plen=rng.choice([0, 6, 16])), 0x0806, dst)
    if choice == 3:
        return eth(arp_body(rng.choice([0, 3, 4, 7, 0xFFFF])), 0x0806, dst)
    if choice == 4:
        return eth(arp_body(1, target=bytes([10, 0, 2, rng.randrange(16, 255)])), 0x0806, dst)
    return eth(arp_body(1)[:rng.randrange(1, 28)], 0x0806, dst)

def tcp_flags():
    dport = rng.choice([7, 80, 11211, rng.randrange(1, 65536)])
    offset = rng.choice([5, 5, 5, 6, 8, 15, rng.randrange(16)])
    payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 0, 1, 20, 200])))
    good = rng.randrange(4) != 0
    return eth(ipv4(6, tcp(sport(), dport, rng.randrange(256), offset, payload, good)))

def bad_udp():
    payload = b'u' * rng.randrange(64)
    choice = rng.randrange(3)
    if choice == 0:
        return eth(ipv4(17, udp(sport(), port(), payload, length=rng.randrange(8))))
    if choice == 1:
        return eth(ipv4(17, udp(sport(), port(), payload, length=rng.randrange(80, 65536))))
    return eth(ipv4(17, udp(sport(), port(), payload, good=False)))

def icmp():
    body = struct.pack('!BBHI', rng.randrange(256), rng.randrange(256), 0, rng.randrange(1 << 32))
    body += bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if rng.randrange(2):
        body = body[:2] + struct.pack('!H', checksum(body)) + body[4:]
    return eth(ipv4(1, body, src=bytes([10, 0, 2, rng.randrange(1, 255)])))

def other_ethertype():
    return eth(bytes(rng.randrange(256) for _ in range(rng.randrange(46, 200))),
               rng.choice([0x86DD, 0x8100, 0x88CC, 0x0842, rng.randrange(0x600, 0x10000)]))

def random_bytes():
    frame = bytes(rng.randrange(256) for _ in range(rng.randrange(14, 1515)))
    if rng.randrange(2):
        frame = rng.choice([GUEST_MAC, b'\xff' * 6]) + frame[6:]
    return frame

kinds = [('truncated', truncated), ('bad_ip', bad_ip), ('bad_arp', bad_arp),
         ('tcp_flags', tcp_flags), ('bad_udp', bad_udp), ('icmp', icmp),
         ('other_ethertype', other_ethertype), ('random_bytes', random_bytes)]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((tap, 0))
counts = {name: 0 for name, _ in kinds}
sent = refused = 0
started = time.monotonic()
for index in range(total):
    name, make = kinds[index % len(kinds)]
    frame = make()
    if len(frame) < 14:
        frame = frame + bytes(14 - len(frame))
    try:
        s.send(frame[:1514])
        sent += 1
        counts[name] += 1
    except OSError:
        refused += 1
    if index % 250 == 249:
        ahead = (index + 1) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
for name, count in counts.items():
    print('%s %d' % (name, count))
print('sent %d refused %d seconds %.2f' % (sent, refused, time.monotonic() - started), flush=True)
"#;

/// Per-core frames taken and drops by reason, from `/stats`: the classifier's reasons, and the
/// fragments' datagrams the reassembly path discarded (`reassembly_timeouts`, `_evictions`,
/// `_overlaps`, `_too_large`), each summed over the cores.
fn drops(namespace: &TapNamespace) -> (BTreeMap<u64, u64>, BTreeMap<String, u64>) {
    let doc = stats_json(namespace);
    let mut frames = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for core in stats::cores(&doc) {
        frames.insert(u64_at(core, "/core"), u64_at(core, "/rx_frames"));
        let drops = core["drops"]
            .as_object()
            .unwrap_or_else(|| panic!("no drops in /stats: {core}"));
        for (reason, count) in drops {
            let count = count
                .as_u64()
                .unwrap_or_else(|| panic!("drop count {reason} is not a number: {core}"));
            *reasons.entry(reason.clone()).or_insert(0) += count;
        }
        for reason in ["timeouts", "evictions", "overlaps", "too_large"] {
            *reasons.entry(format!("reassembly_{reason}")).or_insert(0) +=
                u64_at(core, &format!("/reassembly/{reason}"));
        }
    }
    (frames, reasons)
}

/// `/stats` until every core is in it (the table is gathered after a request), bounded.
fn drops_of_every_core(namespace: &TapNamespace) -> (BTreeMap<u64, u64>, BTreeMap<String, u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (frames, reasons) = drops(namespace);
        if frames.len() == usize::from(CORES) || Instant::now() >= deadline {
            return (frames, reasons);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_storm_of_malformed_frames_is_dropped_and_counted_and_every_protocol_is_served_after() {
    require_root();
    require_program("ip", "iproute2");
    require_program("ping", "iputils-ping");
    require_program("curl", "curl");
    let python = python_with("pymemcache");
    let (namespace, machine) = boot_on_tap("storm", CORES, "urpc=off");
    assert!(
        ping_until_answered(&namespace, 1, 1, 60).0,
        "no ping before the storm:\n{}",
        console_tail(&machine, 40)
    );
    let (frames_before, drops_before) = drops_of_every_core(&namespace);

    let output = run_bounded(
        namespace.command("python3").args([
            "-c",
            STORM,
            &namespace.tap,
            &FRAMES.to_string(),
            "15",
            &RATE.to_string(),
        ]),
        Duration::from_secs(120),
    );
    let storm = text(&output);
    assert!(output.status.success(), "the storm sender: {storm}");
    let summary = storm
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no summary from the storm sender: {storm}"));
    let words: Vec<&str> = summary.split_whitespace().collect();
    let sent: u64 = words[1].parse().expect("sent");
    let seconds: f64 = words[5].parse().expect("seconds");
    assert!(
        sent >= 100_000,
        "the storm must be at least 10^5 frames: {summary}"
    );

    // Service on every protocol, the ARP exchange fresh.
    let flushed = run_bounded(
        namespace
            .command("ip")
            .args(["neigh", "flush", "dev", &namespace.tap]),
        Duration::from_secs(10),
    );
    assert!(flushed.status.success(), "{}", text(&flushed));
    let (answered, ping) = ping_until_answered(&namespace, 3, 1, 1);
    assert!(
        answered,
        "ping after the storm:\n{}\nconsole:\n{}",
        text(&ping),
        console_tail(&machine, 40)
    );
    let table = rss::default_table(CORES);
    let udp_flows = ports_by_queue(&table, 7, 8, 20000..=24999);
    let udp = udp_echo(&namespace, &python, &udp_flows, 4, Duration::from_secs(120));
    assert_eq!(
        udp.ok,
        udp_flows.len(),
        "UDP echo after the storm:\n{}\nconsole:\n{}",
        udp.report,
        console_tail(&machine, 40)
    );
    let tcp_flows = ports_by_queue(&table, 7, 4, 25000..=29999);
    let tcp = tcp_echo(&namespace, &python, &tcp_flows, Duration::from_secs(150));
    assert_eq!(
        tcp.ok,
        tcp_flows.len(),
        "TCP echo after the storm:\n{}\nconsole:\n{}",
        tcp.report,
        console_tail(&machine, 40)
    );
    let url = format!("http://{GUEST_ADDRESS}/");
    let page = run_bounded(
        namespace
            .command("curl")
            .args(["-sS", "--max-time", "10", "-i", &url]),
        Duration::from_secs(20),
    );
    assert!(
        text(&page).starts_with("HTTP/1.1 200"),
        "curl {url} after the storm: {}",
        text(&page)
    );
    let memcached_flows = ports_by_queue(&table, 11211, 1, 30000..=32767);
    let plan = memcached_plan(&memcached_flows, CORES, 1, |index, owner, n| {
        format!("storm{index}-{owner}-{n}")
    });
    let mc = memcached(&namespace, &python, &plan, Duration::from_secs(120));
    assert_eq!(
        mc.ok,
        memcached_flows.len() + 1,
        "memcached after the storm:\n{}\nconsole:\n{}",
        mc.report,
        console_tail(&machine, 40)
    );

    // Counted: every queue took storm frames, every reason the storm aims at was counted.
    let (frames_after, drops_after) = drops_of_every_core(&namespace);
    let console = machine.console();
    assert_no_fault(&console, " under the storm");
    assert_no_core_declared_failed(&console, "");
    let taken: BTreeMap<u64, u64> = frames_after
        .iter()
        .map(|(core, after)| (*core, after - frames_before.get(core).copied().unwrap_or(0)))
        .collect();
    let dropped: BTreeMap<&String, u64> = drops_after
        .iter()
        .map(|(reason, after)| {
            (
                reason,
                after - drops_before.get(reason).copied().unwrap_or(0),
            )
        })
        .collect();
    let total_taken: u64 = taken.values().sum();
    let total_dropped: u64 = dropped.values().sum();
    println!(
        "storm: {sent} frames in {seconds:.1} s ({:.0}/s); the guest took {total_taken} ({:.0} %), per core {taken:?}; dropped and counted {total_dropped}: {dropped:?}",
        sent as f64 / seconds,
        100.0 * total_taken as f64 / sent as f64
    );
    for line in storm.lines().filter(|l| !l.starts_with("sent ")) {
        println!("  sent {line}");
    }
    assert_eq!(taken.len(), usize::from(CORES), "every core in /stats");
    for (core, frames) in &taken {
        assert!(
            *frames >= 1_000,
            "core {core} took only {frames} storm frames: the storm must reach every queue"
        );
    }
    for reason in [
        "truncated",
        "not_for_us",
        "unsupported_ethertype",
        "bad_arp",
        "bad_ip_header",
        "bad_length",
        "bad_checksum",
        "unsupported_protocol",
        "bad_source",
    ] {
        assert!(
            dropped.get(&reason.to_string()).copied().unwrap_or(0) > 0,
            "no frame dropped as {reason}: {dropped:?}"
        );
    }
    // Fragments go to the reassembly path (bounded slots): the storm's, with random offsets
    // and identifications, are discarded there, and counted.
    let reassembly_discards: u64 = dropped
        .iter()
        .filter(|(reason, _)| reason.starts_with("reassembly_"))
        .map(|(_, count)| count)
        .sum();
    assert!(
        reassembly_discards > 0,
        "no fragment discarded by reassembly: {dropped:?}"
    );
    assert!(
        total_dropped >= total_taken / 2,
        "most storm frames the guest took must be dropped and counted: {total_dropped} of {total_taken}"
    );
    drop(machine);
    drop(namespace);
}
