//! Host benchmark of one core's datapath, per path kind: frames in a simulated RX ring →
//! classifier → path (scheduler, runner, application) → TX ring, in nanoseconds per packet, next
//! to the 67 ns budget of 10 GbE line rate with 64-byte frames. The cycle counter is the TSC, as
//! in the kernel, so the accounting's own reads are part of the figures.
//!
//! Baselines are measured in the same run: the UDP fast path against UDP through a smoltcp
//! socket (the path the fast path replaced), with and without transmit checksum offload, with
//! NIC-verified and software-verified receive checksums. Each figure is several rounds; the
//! median and the spread (min–max) are printed.
//!
//! Run with `cargo bench -p netd`. Loops are bounded; figures vary with the machine and its load.

use drivers::nic::{
    ChecksumStatus, QueueCapabilities, QueueDatapath, QueueId, QueueStats, ReceiveBatch,
    ReceivedFrame, TransmitFrame,
};
use drivers::pool::BufferPool;
use netd::app::default_applications;
use netd::{
    CoreNet, Discipline, Instant, NetConfig, NetOptions, PathKey, PeerError, PeerMessage, Peers,
    UdpPath,
};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr,
};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant as WallClock;

const STACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const CLIENT_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const STACK_IP: [u8; 4] = [10, 0, 2, 15];
const CLIENT_IP: [u8; 4] = [10, 0, 2, 2];
/// 10 GbE, 64-byte frames (84 bytes on the wire with preamble and gap): 14.88 Mpps.
const LINE_RATE_BUDGET_NS: f64 = 67.2;
/// Rounds per figure (median and spread).
const ROUNDS: usize = 7;

/// The TSC, as the kernel's cycle counter.
fn cycles() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64; it reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per nanosecond, measured once against the wall clock.
fn tsc_per_nanosecond() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        let (wall, tsc) = (WallClock::now(), cycles());
        std::thread::sleep(std::time::Duration::from_millis(200));
        (cycles() - tsc) as f64 / wall.elapsed().as_nanos() as f64
    })
}

/// A simulated RX/TX queue replaying prepared frames; transmitted buffers are freed at once.
struct ReplayQueue {
    frames: Vec<Vec<u8>>,
    next: usize,
    remaining: usize,
    checksum: ChecksumStatus,
    offload: bool,
    transmitted: u64,
}

impl QueueDatapath for ReplayQueue {
    fn queue(&self) -> QueueId {
        QueueId(0)
    }
    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        let mut count = 0;
        while !batch.is_full() && self.remaining > 0 {
            let frame = &self.frames[self.next % self.frames.len()];
            let Some(buffer) = pool.alloc() else { break };
            // Stands for the NIC's DMA into the buffer.
            pool.bytes_mut(buffer).unwrap()[..frame.len()].copy_from_slice(frame);
            let _ = batch.push(ReceivedFrame {
                buffer,
                length: frame.len() as u16,
                rss_hash: 0,
                checksum: self.checksum,
            });
            self.next += 1;
            self.remaining -= 1;
            count += 1;
        }
        count
    }
    fn refill(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        for frame in frames {
            black_box(pool.bytes(frame.buffer).unwrap()[0]);
            pool.free(frame.buffer).unwrap();
        }
        self.transmitted += frames.len() as u64;
        frames.len()
    }
    fn reclaim(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn stats(&self) -> QueueStats {
        QueueStats::default()
    }
    fn set_interrupt(&mut self, _enabled: bool) {}
    fn receive_pending(&self) -> bool {
        self.remaining > 0
    }
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities {
            tx_checksum_ipv4: self.offload,
            tx_checksum_udp: self.offload,
            tx_checksum_tcp: self.offload,
            tx_tcp_segmentation: self.offload,
        }
    }
}

struct NoPeers;

impl Peers for NoPeers {
    fn send(&mut self, _core: u16, _message: &PeerMessage<'_>) -> Result<(), PeerError> {
        Ok(())
    }
}

fn udp_frame(source_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 42 + payload.len()];
    let length = drivers::frame::build_udp_ipv4(
        &mut frame,
        CLIENT_MAC,
        STACK_MAC,
        (CLIENT_IP, source_port),
        (STACK_IP, 7),
        payload,
    );
    frame.truncate(length);
    frame
}

fn ethernet_ipv4(protocol: IpProtocol, payload_len: usize) -> (Vec<u8>, usize) {
    let ip = Ipv4Repr {
        src_addr: Ipv4Address::from_octets(CLIENT_IP),
        dst_addr: Ipv4Address::from_octets(STACK_IP),
        next_header: protocol,
        payload_len,
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(CLIENT_MAC),
        dst_addr: EthernetAddress(STACK_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; 14 + 20 + payload_len];
    let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut view);
    ip.emit(
        &mut Ipv4Packet::new_unchecked(view.payload_mut()),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    (frame, 34)
}

fn icmp_echo(sequence: u16) -> Vec<u8> {
    let data = [0x42u8; 18];
    let echo = Icmpv4Repr::EchoRequest {
        ident: 0x77,
        seq_no: sequence,
        data: &data,
    };
    let (mut frame, at) = ethernet_ipv4(IpProtocol::Icmp, echo.buffer_len());
    echo.emit(
        &mut Icmpv4Packet::new_unchecked(&mut frame[at..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    frame
}

fn arp_request() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(CLIENT_MAC),
        source_protocol_addr: Ipv4Address::from_octets(CLIENT_IP),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::from_octets(STACK_IP),
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(CLIENT_MAC),
        dst_addr: EthernetAddress([0xff; 6]),
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; 42];
    let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut view);
    arp.emit(&mut ArpPacket::new_unchecked(view.payload_mut()));
    frame
}

fn stack(options: NetOptions) -> CoreNet {
    let mut config = NetConfig::new(STACK_MAC, 0, 1);
    config.options = options;
    // The ring here offers without end: a quantum long enough for a path to take each whole
    // batch keeps the figures per packet served (what the scheduler does under overload is the
    // simulated tests' subject, not this benchmark's).
    config.scheduler.quantum_cycles = 10_000_000;
    config.scheduler.turn_cycles = 100_000_000;
    CoreNet::new(
        config,
        default_applications(&config),
        cycles,
        Instant::from_millis(0),
    )
    .unwrap()
}

/// Runs `packets` frames (cycling through `frames`) through one core; returns ns per packet and
/// the frames transmitted.
fn replay(
    options: NetOptions,
    frames: &[Vec<u8>],
    packets: usize,
    checksum: ChecksumStatus,
    offload: bool,
) -> (f64, u64) {
    let mut now = Instant::from_millis(0);
    let mut net = stack(options);
    let mut pool = BufferPool::new_host(2048);
    let mut peers = NoPeers;
    // Learn the client's address first.
    let mut queue = ReplayQueue {
        frames: vec![arp_request()],
        next: 0,
        remaining: 1,
        checksum,
        offload,
        transmitted: 0,
    };
    net.poll(now, &mut queue, &mut pool, &mut peers);
    queue.frames = frames.to_vec();
    queue.remaining = packets;
    queue.transmitted = 0;
    let start = WallClock::now();
    let mut polls = 0u64;
    // Bounded: each poll takes at least one frame while any remain.
    while polls < 10 * packets as u64 {
        let outcome = net.poll(now, &mut queue, &mut pool, &mut peers);
        polls += 1;
        if !outcome.more_work && queue.remaining == 0 {
            break;
        }
        now += netd::Duration::from_micros(1);
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    (elapsed / packets as f64, queue.transmitted)
}

/// Median, minimum and maximum of `rounds` runs of `run`.
fn spread(mut run: impl FnMut() -> f64) -> (f64, f64, f64) {
    let mut samples: Vec<f64> = (0..ROUNDS).map(|_| run()).collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[ROUNDS / 2], samples[0], samples[ROUNDS - 1])
}

fn print(label: &str, (median, low, high): (f64, f64, f64)) {
    println!(
        "{label:<62} {median:>7.1} ns/packet  (min {low:.1}, max {high:.1}; {:.2}x budget)",
        median / LINE_RATE_BUDGET_NS
    );
}

const NIC_CHECKED: ChecksumStatus = ChecksumStatus {
    ipv4_ok: true,
    l4_ok: true,
    error: false,
};

fn udp_figures() -> f64 {
    let packets = 200_000;
    let fast = NetOptions::default();
    let socket = NetOptions {
        udp: UdpPath::Socket,
        ..NetOptions::default()
    };
    let mut fast_64 = 0.0;
    for payload in [18usize, 512, 1472] {
        let frames: Vec<Vec<u8>> = (0..16)
            .map(|n| udp_frame(40000 + n, &vec![0x5a; payload]))
            .collect();
        let run = |options, checksum, offload| {
            let _ = replay(options, &frames, 20_000, checksum, offload); // warm-up
            spread(|| {
                let (ns, sent) = replay(options, &frames, packets, checksum, offload);
                // The ring offers without end: a turn whose path was short of credit leaves
                // frames, and LRP drops a few at the queue. Almost all must be echoed.
                assert!(
                    sent * 1000 >= packets as u64 * 999,
                    "{sent} of {packets} echoed"
                );
                ns
            })
        };
        let frame = payload + 42;
        let figure = run(fast, NIC_CHECKED, true);
        if payload == 18 {
            fast_64 = figure.0;
        }
        print(
            &format!("udp fast path, {frame:>4}-byte frame, NIC checksums + TX offload"),
            figure,
        );
        print(
            &format!("udp fast path, {frame:>4}-byte frame, NIC RX checksums, TX in software"),
            run(fast, NIC_CHECKED, false),
        );
        print(
            &format!("udp fast path, {frame:>4}-byte frame, all checksums in software"),
            run(fast, ChecksumStatus::default(), false),
        );
        let baseline = run(socket, NIC_CHECKED, true);
        print(
            &format!("udp through smoltcp (baseline), {frame:>4}-byte frame, NIC checksums"),
            baseline,
        );
        if payload == 18 {
            println!("  fast path / smoltcp socket: {:.2}", fast_64 / baseline.0);
        }
    }
    fast_64
}

fn other_paths() {
    let packets = 100_000;
    let icmp: Vec<Vec<u8>> = (0..16).map(icmp_echo).collect();
    let _ = replay(NetOptions::default(), &icmp, 10_000, NIC_CHECKED, true);
    print(
        "icmp echo (smoltcp's automatic reply), 60-byte frame",
        spread(|| {
            let (ns, sent) = replay(NetOptions::default(), &icmp, packets, NIC_CHECKED, true);
            assert!(
                sent * 1000 >= packets as u64 * 999,
                "{sent} of {packets} echoed"
            );
            ns
        }),
    );
    let arp = vec![arp_request()];
    print(
        "arp request answered (smoltcp)",
        spread(|| {
            let (ns, sent) = replay(NetOptions::default(), &arp, packets, NIC_CHECKED, true);
            assert!(
                sent * 1000 >= packets as u64 * 999,
                "{sent} of {packets} answered"
            );
            ns
        }),
    );
    let interrupt = NetOptions {
        discipline: Discipline::Interrupt,
        ..NetOptions::default()
    };
    let frames: Vec<Vec<u8>> = (0..16).map(|n| udp_frame(40000 + n, &[0x5a; 18])).collect();
    print(
        "udp echo under netd.mode=interrupt (baseline), 60-byte frame",
        spread(|| replay(interrupt, &frames, packets, NIC_CHECKED, true).0),
    );
    let fifo = NetOptions {
        discipline: Discipline::SharedFifo,
        ..NetOptions::default()
    };
    print(
        "udp fast path under netd.lrp=off (baseline), 60-byte frame",
        spread(|| replay(fifo, &frames, packets, NIC_CHECKED, true).0),
    );
}

// ---------------------------------------------------------------------------------------------
// TCP echo through smoltcp: a second smoltcp interface is the client; only the server's polls
// are timed.

#[derive(Default)]
struct Wire {
    to_client: VecDeque<Vec<u8>>,
    to_server: Vec<Vec<u8>>,
}

struct ClientRx(Vec<u8>);
struct ClientTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for ClientRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for ClientTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, length: usize, f: F) -> R {
        let mut buffer = vec![0u8; length];
        let result = f(&mut buffer);
        self.0.push(buffer);
        result
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = ClientRx;
    type TxToken<'a> = ClientTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(ClientRx, ClientTx<'_>)> {
        let frame = self.to_client.pop_front()?;
        Some((ClientRx(frame), ClientTx(&mut self.to_server)))
    }
    fn transmit(&mut self, _: Instant) -> Option<ClientTx<'_>> {
        Some(ClientTx(&mut self.to_server))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        // One segment per poll, so every request is its own segment.
        capabilities.max_burst_size = Some(1);
        capabilities
    }
}

/// The server's side of the wire: frames the client sent, replayed into the stack.
struct ServerQueue {
    inbox: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl QueueDatapath for ServerQueue {
    fn queue(&self) -> QueueId {
        QueueId(0)
    }
    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        let mut count = 0;
        while !batch.is_full() {
            let Some(frame) = self.inbox.pop_front() else {
                break;
            };
            let buffer = pool.alloc().unwrap();
            pool.bytes_mut(buffer).unwrap()[..frame.len()].copy_from_slice(&frame);
            let _ = batch.push(ReceivedFrame {
                buffer,
                length: frame.len() as u16,
                rss_hash: 0,
                checksum: NIC_CHECKED,
            });
            count += 1;
        }
        count
    }
    fn refill(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        // Packets may span chained buffers and ask for TCP segmentation: played as a NIC does.
        let mut packet = Vec::new();
        let mut first: Option<TransmitFrame> = None;
        for frame in frames {
            packet
                .extend_from_slice(&pool.bytes(frame.buffer).unwrap()[..usize::from(frame.length)]);
            pool.free(frame.buffer).unwrap();
            let head = *first.get_or_insert(*frame);
            if frame.more {
                continue;
            }
            first = None;
            let mut bytes = std::mem::take(&mut packet);
            match head.segmentation {
                Some(segmentation) => {
                    let mut segment = vec![0u8; 1600];
                    let mut index = 0;
                    while let Some(length) = drivers::frame::tcp_segment(
                        &bytes,
                        usize::from(segmentation.mss),
                        index,
                        &mut segment,
                    ) {
                        self.sent.push(segment[..length].to_vec());
                        index += 1;
                    }
                }
                None => {
                    drivers::frame::apply_tx_checksums(&mut bytes, head.checksum);
                    self.sent.push(bytes);
                }
            }
        }
        frames.len()
    }
    fn reclaim(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn stats(&self) -> QueueStats {
        QueueStats::default()
    }
    fn set_interrupt(&mut self, _enabled: bool) {}
}

/// Echoes `segments` requests of `size` bytes over one TCP connection; returns the server's ns
/// per segment it received, and the segments.
fn tcp_echo(segments: usize, size: usize) -> (f64, u64) {
    let mut now = Instant::from_millis(0);
    let mut net = stack(NetOptions::default());
    let mut pool = BufferPool::new_host(2048);
    let mut peers = NoPeers;
    let mut queue = ServerQueue {
        inbox: VecDeque::new(),
        sent: Vec::new(),
    };
    let mut wire = Wire::default();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
    config.random_seed = 7;
    let mut client = Interface::new(config, &mut wire, now);
    client.update_ip_addrs(|addresses| {
        let _ = addresses.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24));
    });
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    ));
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(
            client.context(),
            (Ipv4Address::from_octets(STACK_IP), 7),
            40000,
        )
        .unwrap();
    let request = vec![0x61u8; size];
    let (mut sent, mut echoed) = (0usize, 0usize);
    let mut server_cycles = 0u64;
    let mut rounds = 0;
    // Bounded by rounds; one request outstanding at a time (a segment each way per echo).
    while echoed < segments * size && rounds < 20 * segments + 1000 {
        rounds += 1;
        let _ = client.poll(now, &mut wire, &mut sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if socket.can_send() && sent == echoed && sent < segments * size {
            sent += socket.send_slice(&request).unwrap();
        }
        while socket.can_recv() {
            echoed += socket.recv(|bytes| (bytes.len(), bytes.len())).unwrap();
        }
        let _ = client.poll(now, &mut wire, &mut sockets);
        queue.inbox.extend(wire.to_server.drain(..));
        let start = cycles();
        for _ in 0..4 {
            let outcome = net.poll(now, &mut queue, &mut pool, &mut peers);
            if !outcome.more_work {
                break;
            }
        }
        server_cycles += cycles() - start;
        wire.to_client.extend(queue.sent.drain(..));
        now += netd::Duration::from_micros(50);
    }
    assert_eq!(echoed, segments * size, "every byte echoed");
    let received = net.path(PathKey::Tcp(7)).unwrap().counters().packets;
    (
        server_cycles as f64 / tsc_per_nanosecond() / received as f64,
        received,
    )
}

/// Pushes `total` bytes through TCP echo on one connection as fast as the client's 256 KiB
/// window allows (the client reads everything back as it comes); returns the server's ns per
/// segment it received and its MB/s of payload echoed (server time only).
fn tcp_bulk(total: usize) -> (f64, f64) {
    let mut now = Instant::from_millis(0);
    let mut net = stack(NetOptions::default());
    let mut pool = BufferPool::new_host(2048);
    let mut peers = NoPeers;
    let mut queue = ServerQueue {
        inbox: VecDeque::new(),
        sent: Vec::new(),
    };
    let mut wire = Wire::default();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
    config.random_seed = 7;
    let mut client = Interface::new(config, &mut wire, now);
    client.update_ip_addrs(|addresses| {
        let _ = addresses.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24));
    });
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 << 10]),
        tcp::SocketBuffer::new(vec![0; 256 << 10]),
    ));
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(
            client.context(),
            (Ipv4Address::from_octets(STACK_IP), 7),
            40001,
        )
        .unwrap();
    let data = vec![0x62u8; 65536];
    let (mut sent, mut echoed) = (0usize, 0usize);
    let mut server_cycles = 0u64;
    let mut rounds = 0;
    while echoed < total && rounds < 1_000_000 {
        rounds += 1;
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        while socket.can_send() && sent < total {
            let n = socket
                .send_slice(&data[..(total - sent).min(data.len())])
                .unwrap();
            if n == 0 {
                break;
            }
            sent += n;
        }
        while socket.can_recv() {
            echoed += socket.recv(|bytes| (bytes.len(), bytes.len())).unwrap();
        }
        let _ = client.poll(now, &mut wire, &mut sockets);
        queue.inbox.extend(wire.to_server.drain(..));
        let start = cycles();
        for _ in 0..8 {
            let outcome = net.poll(now, &mut queue, &mut pool, &mut peers);
            if !outcome.more_work {
                break;
            }
        }
        server_cycles += cycles() - start;
        wire.to_client.extend(queue.sent.drain(..));
        now += netd::Duration::from_micros(20);
    }
    assert_eq!(echoed, total, "every byte echoed");
    let received = net.path(PathKey::Tcp(7)).unwrap().counters().packets;
    let seconds = server_cycles as f64 / tsc_per_nanosecond() / 1e9;
    (
        server_cycles as f64 / tsc_per_nanosecond() / received as f64,
        total as f64 / seconds / 1e6,
    )
}

fn tcp_figures() {
    let _ = tcp_echo(500, 64);
    for size in [64usize, 1024] {
        let mut received = 0;
        let figure = spread(|| {
            let (ns, segments) = tcp_echo(5_000, size);
            received = segments;
            ns
        });
        print(
            &format!("tcp echo through smoltcp, {size}-byte requests, per segment received"),
            figure,
        );
        println!("  ({received} segments received for 5000 requests: data, ACKs, handshake)");
    }
    let mut rate = 0.0;
    let figure = spread(|| {
        let (ns, mb_per_second) = tcp_bulk(20 << 20);
        rate = mb_per_second;
        ns
    });
    print(
        "tcp bulk echo, 20 MB on one connection, per segment received",
        figure,
    );
    println!("  (the server alone would echo {rate:.0} MB/s)");
}

fn main() {
    // `NETD_BENCH=fast` runs the 60-byte fast path alone (for a profiler).
    if std::env::var("NETD_BENCH").is_ok_and(|only| only == "bulk") {
        let (ns, rate) = tcp_bulk(200 << 20);
        println!("tcp bulk: {ns:.0} ns per segment received, {rate:.0} MB/s");
        return;
    }
    if std::env::var("NETD_BENCH").is_ok_and(|only| only == "tcp") {
        print(
            "tcp echo through smoltcp, 64-byte requests, per segment received",
            spread(|| tcp_echo(20_000, 64).0),
        );
        return;
    }
    if std::env::var("NETD_BENCH").is_ok_and(|only| only == "fast") {
        let frames: Vec<Vec<u8>> = (0..16).map(|n| udp_frame(40000 + n, &[0x5a; 18])).collect();
        let figure =
            spread(|| replay(NetOptions::default(), &frames, 2_000_000, NIC_CHECKED, true).0);
        print(
            "udp fast path, 60-byte frame, NIC checksums + TX offload",
            figure,
        );
        return;
    }
    println!("netd datapath benchmark: one core; RX ring -> classifier -> path -> TX ring");
    println!(
        "line-rate budget: {LINE_RATE_BUDGET_NS:.1} ns/packet (10 GbE, 64-byte frames); {ROUNDS} rounds per figure"
    );
    let fast_64 = udp_figures();
    other_paths();
    tcp_figures();
    // The classifier alone, for scale.
    let net = stack(NetOptions::default());
    let frame = udp_frame(40000, &[0x5a; 18]);
    let rounds = 2_000_000;
    for (label, checksum) in [
        ("NIC checksums", NIC_CHECKED),
        ("software checksums", ChecksumStatus::default()),
    ] {
        let figure = spread(|| {
            let start = WallClock::now();
            for _ in 0..rounds {
                black_box(
                    net.classifier()
                        .classify(black_box(&frame), checksum, 0, false),
                );
            }
            start.elapsed().as_nanos() as f64 / rounds as f64
        });
        print(
            &format!("classifier alone, 60-byte UDP frame, {label}"),
            figure,
        );
    }
    println!("summary: udp fast path 60-byte frame {fast_64:.1} ns/packet (goal <= 30)");
}
