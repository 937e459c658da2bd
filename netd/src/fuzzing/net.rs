//! `core_net`: whole network stacks (two cores, the default applications) behind the simulated
//! NIC, fed arbitrary frames and a client that answers the stacks' TCP segments with fuzzed
//! flags and payloads, so that connections reach the applications (TCP echo, HTTP, memcached).

use super::{fix_checksums, Input, STACK_IP, STACK_MAC};
use crate::app::default_applications;
use crate::config::{CoreId, Discipline, NetConfig, UdpPath};
use crate::peers::{PeerError, PeerMessage, Peers};
use crate::stack::CoreNet;
use drivers::nic::QueueDatapath;
use drivers::pool::BufferPool;
use drivers::sim::{sim_nic, SimConfig, SimQueue, SimWire};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, ETHERNET_HEADER_LEN,
};

extern crate alloc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Cores of the simulated machine.
const CORES: u16 = 2;
/// Buffers per core's pool (few, so that exhaustion is reachable).
const POOL_BUFFERS: usize = 64;
/// The client's addresses.
const CLIENT_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const CLIENT_IP: [u8; 4] = [10, 0, 2, 2];

/// The simulated cycle counter: every reading is 1000 cycles after the previous one (the
/// scheduler only uses differences). Reset at the start of each input.
static CYCLES: AtomicU64 = AtomicU64::new(0);

extern crate std;
std::thread_local! {
    /// The cores' pools, kept from one input to the next: a host pool's memory is leaked, so a
    /// pool per input would grow the fuzzer's memory without bound.
    static POOLS: core::cell::RefCell<Vec<BufferPool>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// A pool for one core of this input: a kept one with every buffer home, or a new one.
fn take_pool() -> BufferPool {
    POOLS.with(|pools| pools.borrow_mut().pop()).map_or_else(
        || BufferPool::new_host(POOL_BUFFERS),
        |mut pool| {
            pool.reclaim_all();
            pool
        },
    )
}

fn cycles() -> u64 {
    CYCLES.fetch_add(1000, Ordering::Relaxed)
}

fn toeplitz(bytes: &[u8]) -> u32 {
    drivers::rss::toeplitz(&drivers::rss::DEFAULT_KEY, bytes)
}

/// The cross-core channels: encoded messages queued for delivery by the harness.
struct Mailbox {
    out: Vec<(CoreId, Vec<u8>)>,
    refuse: bool,
}

impl Peers for Mailbox {
    fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError> {
        if self.refuse {
            return Err(PeerError::Full);
        }
        if core >= CORES {
            return Err(PeerError::NoSuchCore(core));
        }
        let mut bytes = vec![0u8; message.encoded_len()];
        let length = message
            .encode(&mut bytes)
            .expect("encoded_len bytes suffice");
        assert_eq!(
            length,
            bytes.len(),
            "{message:?}: encoded_len disagrees with encode"
        );
        self.out.push((core, bytes));
        Ok(())
    }
}

struct Core {
    net: CoreNet,
    queue: SimQueue,
    pool: BufferPool,
    mailbox: Mailbox,
}

struct Machine {
    cores: Vec<Core>,
    wire: SimWire,
    now: Instant,
    /// The last TCP segment the stacks sent, for the client to answer.
    last_segment: Option<Vec<u8>>,
}

impl Machine {
    fn new(options: u8) -> Self {
        CYCLES.store(0, Ordering::Relaxed);
        let nic = SimConfig {
            capture: false,
            ring_size: 32,
            rx_checksum_offload: options & 8 != 0,
            tx_checksum_offload: options & 16 != 0,
            ..SimConfig::new(CORES)
        };
        let (wire, _control, queues) = sim_nic(nic);
        let now = Instant::from_millis(1_000);
        let cores = queues
            .into_iter()
            .enumerate()
            .map(|(core, mut queue)| {
                let mut config = NetConfig::new(STACK_MAC, core as CoreId, CORES);
                config.heap_bytes = 4 << 20;
                config.options.discipline = match options % 3 {
                    0 => Discipline::Lrp,
                    1 => Discipline::SharedFifo,
                    _ => Discipline::Interrupt,
                };
                config.options.udp = if options & 4 != 0 {
                    UdpPath::Socket
                } else {
                    UdpPath::Fast
                };
                config.options.tx_offload = options & 32 != 0;
                let applications = default_applications(&config);
                let mut net =
                    CoreNet::new(config, applications, cycles, now).expect("a valid stack");
                net.set_rss_hash(toeplitz);
                let mut pool = take_pool();
                queue.refill(&mut pool);
                queue.set_interrupt(true);
                Core {
                    net,
                    queue,
                    pool,
                    mailbox: Mailbox {
                        out: Vec::new(),
                        refuse: false,
                    },
                }
            })
            .collect();
        Self {
            cores,
            wire,
            now,
            last_segment: None,
        }
    }

    /// Every core polls once, then every message between them is delivered; returns whether
    /// anything is still going on.
    fn round(&mut self) -> bool {
        let mut busy = false;
        let now = self.now;
        for core in &mut self.cores {
            let outcome = core
                .net
                .poll(now, &mut core.queue, &mut core.pool, &mut core.mailbox);
            busy |= outcome.more_work || outcome.received > 0 || outcome.transmitted > 0;
            busy |= outcome
                .next_deadline
                .is_some_and(|deadline| deadline <= now);
        }
        for (_, frame) in self.wire.take_transmitted() {
            check_transmitted(&frame);
            if is_tcp(&frame) {
                self.last_segment = Some(frame);
            }
        }
        for from in 0..self.cores.len() {
            let messages = core::mem::take(&mut self.cores[from].mailbox.out);
            for (to, bytes) in messages {
                busy = true;
                let message = PeerMessage::decode(&bytes).expect("what a core encoded decodes");
                let core = &mut self.cores[usize::from(to)];
                core.net
                    .handle_peer_message(now, &message, &mut core.pool, &mut core.mailbox);
            }
        }
        busy
    }

    /// A TCP segment from the client answering the last one the stacks sent: its ports and
    /// addresses turned around, acknowledging it, with `flags` and `payload`.
    fn answer(&self, flags: u8, payload: &[u8]) -> Option<Vec<u8>> {
        let sent = self.last_segment.as_ref()?;
        let ip = Ipv4Packet::new_checked(&sent[ETHERNET_HEADER_LEN..]).ok()?;
        let segment = TcpPacket::new_checked(ip.payload()).ok()?;
        let mut length = segment.payload().len() as u32;
        length += u32::from(segment.syn()) + u32::from(segment.fin());
        let mut tcp = vec![0u8; 20 + payload.len()];
        tcp[0..2].copy_from_slice(&segment.dst_port().to_be_bytes());
        tcp[2..4].copy_from_slice(&segment.src_port().to_be_bytes());
        tcp[4..8].copy_from_slice(&(segment.ack_number().0 as u32).to_be_bytes());
        tcp[8..12].copy_from_slice(
            &(segment.seq_number().0 as u32)
                .wrapping_add(length)
                .to_be_bytes(),
        );
        tcp[12] = 0x50;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&0xFFFFu16.to_be_bytes());
        tcp[20..].copy_from_slice(payload);
        Some(frame(IpProtocol::Tcp, &tcp))
    }
}

fn is_tcp(frame: &[u8]) -> bool {
    EthernetFrame::new_checked(frame).is_ok_and(|ethernet| {
        ethernet.ethertype() == EthernetProtocol::Ipv4
            && Ipv4Packet::new_checked(ethernet.payload())
                .is_ok_and(|ip| ip.next_header() == IpProtocol::Tcp)
    })
}

/// What a stack transmits is a whole Ethernet frame from our MAC address (IPv4 ones from our
/// address, with consistent lengths) no longer than a full frame.
fn check_transmitted(frame: &[u8]) {
    assert!(frame.len() <= 1514, "a {}-byte frame left", frame.len());
    let ethernet = EthernetFrame::new_checked(frame).expect("a whole Ethernet header");
    assert_eq!(ethernet.src_addr().as_bytes(), &STACK_MAC);
    if ethernet.ethertype() == EthernetProtocol::Ipv4 {
        let ip = Ipv4Packet::new_checked(ethernet.payload()).expect("a consistent IPv4 header");
        assert_eq!(
            ip.src_addr().octets(),
            STACK_IP,
            "sent from {}",
            ip.src_addr()
        );
    }
}

/// An Ethernet/IPv4 frame from the client to the stack carrying `payload` as `protocol`, its
/// checksums right.
fn frame(protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + 20 + payload.len()];
    frame[0..6].copy_from_slice(&STACK_MAC);
    frame[6..12].copy_from_slice(&CLIENT_MAC);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[ETHERNET_HEADER_LEN..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = u8::from(protocol);
    ip[12..16].copy_from_slice(&CLIENT_IP);
    ip[16..20].copy_from_slice(&STACK_IP);
    ip[20..].copy_from_slice(payload);
    fix_checksums(&mut frame);
    frame
}

/// `core_net`: input: options (discipline, UDP path, receive and transmit checksum offload),
/// then operations until the input ends: a raw frame onto the wire (its checksums fixed or
/// not), a TCP segment from the client (to a port, or answering the stacks' last segment, with
/// fuzzed flags and payload), a UDP datagram to a port, polling rounds, time passing, a refusing
/// cross-core channel, a core declared dead. Then the machine settles. Nothing may panic; every
/// frame sent must be well formed; once quiet, every pool buffer is back in its pool or posted on
/// its ring.
pub fn core_net(data: &[u8]) {
    let mut input = Input(data);
    let mut machine = Machine::new(input.u8());
    let mut operations = 0;
    while !input.is_empty() && operations < 256 {
        operations += 1;
        let operation = input.u8();
        match operation % 8 {
            0 | 1 => {
                let length = usize::from(input.u16()) % 1600;
                let mut bytes = input.bytes(length).to_vec();
                if operation & 8 != 0 {
                    fix_checksums(&mut bytes);
                }
                machine.wire.inject(&bytes);
            }
            2 => {
                let flags = input.u8();
                let length = usize::from(input.u8());
                let payload = input.bytes(length);
                if let Some(segment) = machine.answer(flags, payload) {
                    machine.wire.inject(&segment);
                }
            }
            3 => {
                let ports = [7u16, 80, 11211, 9];
                let port = ports[usize::from(input.u8() % 4)];
                let source = input.u16();
                let flags = input.u8();
                let length = usize::from(input.u8());
                let payload = input.bytes(length);
                let mut tcp = vec![0u8; 20 + payload.len()];
                tcp[0..2].copy_from_slice(&source.to_be_bytes());
                tcp[2..4].copy_from_slice(&port.to_be_bytes());
                tcp[4..8].copy_from_slice(&input.u32().to_be_bytes());
                tcp[12] = 0x50;
                tcp[13] = flags;
                tcp[14..16].copy_from_slice(&0xFFFFu16.to_be_bytes());
                tcp[20..].copy_from_slice(payload);
                machine.wire.inject(&frame(IpProtocol::Tcp, &tcp));
            }
            4 => {
                let port: u16 = if input.u8() % 2 == 0 { 7 } else { 9 };
                let source = input.u16();
                let length = usize::from(input.u8());
                let payload = input.bytes(length);
                let mut udp = vec![0u8; 8 + payload.len()];
                udp[0..2].copy_from_slice(&source.to_be_bytes());
                udp[2..4].copy_from_slice(&port.to_be_bytes());
                udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                udp[8..].copy_from_slice(payload);
                machine.wire.inject(&frame(IpProtocol::Udp, &udp));
            }
            5 => {
                for _ in 0..1 + input.u8() % 4 {
                    machine.round();
                }
            }
            6 => {
                machine.now += Duration::from_millis(u64::from(input.u16()));
                machine.round();
            }
            _ => match input.u8() % 4 {
                0 | 1 => {
                    let core = usize::from(input.u8()) % machine.cores.len();
                    let refuse = !machine.cores[core].mailbox.refuse;
                    machine.cores[core].mailbox.refuse = refuse;
                }
                _ => {
                    let live = u64::from(input.u8() % 3) + 1;
                    for core in &mut machine.cores {
                        core.net.set_live_cores(live);
                    }
                }
            },
        }
    }
    for core in &mut machine.cores {
        core.mailbox.refuse = false;
    }
    let mut quiet = false;
    for _ in 0..64 {
        if !machine.round() {
            quiet = true;
            break;
        }
        machine.now += Duration::from_millis(1);
    }
    if quiet {
        for (index, core) in machine.cores.iter().enumerate() {
            assert_eq!(
                core.pool.available() + core.queue.posted(),
                core.pool.capacity(),
                "core {index}: a buffer leaked"
            );
        }
    }
    for core in machine.cores {
        POOLS.with(|pools| pools.borrow_mut().push(core.pool));
    }
}
