//! The test harness: 1–4 cores behind `drivers::sim` (the same Toeplitz RSS and redirection
//! table as the hardware, bounded rings, fault injection, transmit checksum offload), a fake
//! URPC mailbox between the cores, a simulated cycle counter that only moves when the harness
//! or a test's application says work was done, hand-built frames, and a second smoltcp
//! interface as the remote client.

use crate::app::{default_applications, Service};
use crate::config::{CoreId, NetConfig, NetOptions};
use crate::peers::{PeerError, PeerMessage, Peers};
use crate::stack::{CoreNet, PollOutcome};
use crate::{DropReason, PathKey};
use drivers::nic::{
    QueueCapabilities, QueueDatapath, QueueId, QueueStats, ReceiveBatch, TransmitFrame,
};
use drivers::pool::BufferPool;
use drivers::sim::{sim_nic, InjectOutcome, SimConfig, SimQueue, SimWire};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    checksum, EthernetAddress, HardwareAddress, Icmpv4Packet, IpAddress, IpCidr, IpProtocol,
    Ipv4Address, Ipv4Packet,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;

pub(crate) const STACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub(crate) const CLIENT_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
pub(crate) const STACK_IP: [u8; 4] = [10, 0, 2, 15];
pub(crate) const CLIENT_IP: [u8; 4] = [10, 0, 2, 2];

// ---------------------------------------------------------------------------------------------
// The simulated cycle counter: one clock per simulated core (1 cycle = 1 ns of simulated time);
// it moves only when the harness charges a cost (`advance`), never by being read.

/// Most simulated cores.
pub(crate) const MAX_SIM_CORES: usize = 4;

thread_local! {
    static CLOCKS: RefCell<[u64; MAX_SIM_CORES]> = const { RefCell::new([0; MAX_SIM_CORES]) };
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The cycle counter given to every simulated core: the clock of the core being run.
pub(crate) fn sim_cycles() -> u64 {
    let core = CURRENT.with(Cell::get);
    CLOCKS.with(|clocks| clocks.borrow()[core])
}

/// Charges `cycles` of simulated work to the core being run.
pub(crate) fn advance(cycles: u64) {
    let core = CURRENT.with(Cell::get);
    CLOCKS.with(|clocks| clocks.borrow_mut()[core] += cycles);
}

/// Selects the core whose clock `sim_cycles` reads and `advance` moves.
pub(crate) fn set_current(core: usize) {
    CURRENT.with(|current| current.set(core.min(MAX_SIM_CORES - 1)));
}

/// The clock of `core`.
pub(crate) fn clock(core: usize) -> u64 {
    CLOCKS.with(|clocks| clocks.borrow()[core.min(MAX_SIM_CORES - 1)])
}

/// Sets the clock of `core` (time passing while it halts).
pub(crate) fn set_clock(core: usize, cycles: u64) {
    CLOCKS.with(|clocks| clocks.borrow_mut()[core.min(MAX_SIM_CORES - 1)] = cycles);
}

/// Starts every clock at 0.
pub(crate) fn reset_clocks() {
    CLOCKS.with(|clocks| *clocks.borrow_mut() = [0; MAX_SIM_CORES]);
    set_current(0);
}

/// smoltcp time of a simulated clock reading.
pub(crate) fn instant_of(cycles: u64) -> Instant {
    Instant::from_micros(1_000_000 + (cycles / 1000) as i64)
}

/// Frames arriving on the wire as simulated time passes: before a queue is looked at, every
/// frame for its core whose arrival time has come is put on the wire.
pub(crate) trait Arrivals {
    /// Injects the frames for `core` that arrived by `now` (cycles).
    fn arrive(&mut self, core: usize, now: u64);
}

/// A simulated queue that costs `receive_cost` cycles per frame taken from its ring (the
/// descriptor work and cache misses of a real receive; the classifier's own cost is not
/// simulated, so this stands for all receive work up to the path queue), and lets frames
/// arrive as its core's clock moves.
pub(crate) struct CostedQueue {
    pub(crate) inner: SimQueue,
    pub(crate) receive_cost: u64,
    pub(crate) arrivals: Option<Rc<RefCell<dyn Arrivals>>>,
    pub(crate) core: usize,
    /// When set, frames transmitted are taken off this wire at once and kept in `sent`, stamped
    /// with the core's clock (when they left).
    pub(crate) stamp: Option<SimWire>,
    pub(crate) sent: Vec<(u64, Vec<u8>)>,
}

impl CostedQueue {
    fn arrive(&self) {
        if let Some(arrivals) = &self.arrivals {
            arrivals.borrow_mut().arrive(self.core, clock(self.core));
        }
    }
}

impl QueueDatapath for CostedQueue {
    fn queue(&self) -> QueueId {
        self.inner.queue()
    }
    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        self.arrive();
        let received = self.inner.receive(pool, batch);
        advance(received as u64 * self.receive_cost);
        received
    }
    fn refill(&mut self, pool: &mut BufferPool) -> usize {
        self.inner.refill(pool)
    }
    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        let accepted = self.inner.transmit(pool, frames);
        if let Some(wire) = &self.stamp {
            let now = clock(self.core);
            self.sent.extend(
                wire.take_transmitted()
                    .into_iter()
                    .map(|(_, frame)| (now, frame)),
            );
        }
        accepted
    }
    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        self.inner.reclaim(pool)
    }
    fn stats(&self) -> QueueStats {
        self.inner.stats()
    }
    fn set_interrupt(&mut self, enabled: bool) {
        self.inner.set_interrupt(enabled)
    }
    fn receive_pending(&self) -> bool {
        self.arrive();
        self.inner.receive_pending()
    }
    fn capabilities(&self) -> QueueCapabilities {
        self.inner.capabilities()
    }
}

/// The fake URPC: records encoded messages for the cluster to deliver.
#[derive(Default)]
pub(crate) struct Mailbox {
    pub(crate) out: Vec<(CoreId, Vec<u8>)>,
    pub(crate) refuse: bool,
    pub(crate) core_count: u16,
}

impl Peers for Mailbox {
    fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError> {
        if self.refuse {
            return Err(PeerError::Full);
        }
        if core >= self.core_count {
            return Err(PeerError::NoSuchCore(core));
        }
        let mut bytes = vec![0u8; message.encoded_len()];
        message.encode(&mut bytes).unwrap();
        self.out.push((core, bytes));
        Ok(())
    }
}

pub(crate) struct SimCore {
    pub(crate) net: CoreNet,
    pub(crate) nic: CostedQueue,
    pub(crate) pool: BufferPool,
    pub(crate) mailbox: Mailbox,
}

impl SimCore {
    /// One poll of this core at `now` (its clock selected).
    pub(crate) fn poll(&mut self, index: usize, now: Instant) -> PollOutcome {
        set_current(index);
        self.net
            .poll(now, &mut self.nic, &mut self.pool, &mut self.mailbox)
    }
}

/// Builds a core's services from its configuration.
pub(crate) type Services = Box<dyn Fn(&NetConfig) -> Vec<Service>>;

/// How to build a cluster.
pub(crate) struct ClusterConfig {
    pub(crate) cores: u16,
    pub(crate) nic: SimConfig,
    pub(crate) options: NetOptions,
    pub(crate) services: Services,
    pub(crate) receive_cost: u64,
    pub(crate) pool_buffers: usize,
    /// Changes each core's configuration first (wall clock, heap size, ...).
    pub(crate) adjust: Box<dyn Fn(&mut NetConfig)>,
}

impl ClusterConfig {
    pub(crate) fn new(cores: u16) -> Self {
        Self {
            cores,
            nic: SimConfig {
                capture: false,
                ..SimConfig::new(cores)
            },
            options: NetOptions::default(),
            services: Box::new(default_applications),
            receive_cost: 0,
            pool_buffers: 1024,
            adjust: Box::new(|_| {}),
        }
    }
}

/// The Toeplitz hash with the machine's key, as the kernel gives it to the stacks.
pub(crate) fn toeplitz(input: &[u8]) -> u32 {
    drivers::rss::toeplitz(&drivers::rss::DEFAULT_KEY, input)
}

/// The RSS hash of a client flow from `source_port` to our `destination_port`.
pub(crate) fn flow_hash(source_port: u16, destination_port: u16) -> u32 {
    toeplitz(&crate::classify::rss_input(
        CLIENT_IP,
        STACK_IP,
        source_port,
        destination_port,
    ))
}

/// Every buffer of every core is back in its pool or posted on its RX ring.
pub(crate) fn assert_all_buffers_home(cluster: &Cluster) {
    for (index, core) in cluster.cores.iter().enumerate() {
        assert_eq!(
            core.pool.available() + core.nic.inner.posted(),
            core.pool.capacity(),
            "core {index}: a buffer leaked"
        );
    }
}

/// 1–4 cores behind one simulated NIC.
pub(crate) struct Cluster {
    pub(crate) cores: Vec<SimCore>,
    pub(crate) nic: SimWire,
    pub(crate) now: Instant,
    /// Frames the cores transmitted, oldest first.
    pub(crate) wire: Vec<Vec<u8>>,
    pub(crate) peer_messages: usize,
    /// Cores that stopped (bit per core): they no longer poll, and messages to them are lost.
    pub(crate) stopped: u64,
    /// The simulated NIC's control side (its redirection table).
    pub(crate) control: drivers::sim::SimControl,
}

pub(crate) fn config(core: CoreId, core_count: u16) -> NetConfig {
    NetConfig::new(STACK_MAC, core, core_count)
}

impl Cluster {
    pub(crate) fn new(core_count: u16) -> Self {
        Self::with(ClusterConfig::new(core_count))
    }

    /// A cluster whose cores' configurations `adjust` changes first (wall clock, heap size).
    pub(crate) fn with_config(core_count: u16, adjust: impl Fn(&mut NetConfig) + 'static) -> Self {
        let mut setup = ClusterConfig::new(core_count);
        setup.adjust = Box::new(adjust);
        Self::with(setup)
    }

    pub(crate) fn with(setup: ClusterConfig) -> Self {
        reset_clocks();
        let now = Instant::from_millis(1_000);
        let (wire, control, queues) = sim_nic(setup.nic);
        let core_count = setup.cores;
        let cores = queues
            .into_iter()
            .enumerate()
            .map(|(core, queue)| {
                let mut config = config(core as u16, core_count);
                config.options = setup.options;
                (setup.adjust)(&mut config);
                let mut net =
                    CoreNet::new(config, (setup.services)(&config), sim_cycles, now).unwrap();
                net.set_rss_hash(toeplitz);
                let mut pool = BufferPool::new_host(setup.pool_buffers);
                let mut nic = CostedQueue {
                    inner: queue,
                    receive_cost: setup.receive_cost,
                    arrivals: None,
                    core,
                    stamp: None,
                    sent: Vec::new(),
                };
                nic.refill(&mut pool);
                nic.set_interrupt(true);
                SimCore {
                    net,
                    nic,
                    pool,
                    mailbox: Mailbox {
                        core_count,
                        ..Mailbox::default()
                    },
                }
            })
            .collect();
        Self {
            cores,
            nic: wire,
            now,
            wire: Vec::new(),
            peer_messages: 0,
            stopped: 0,
            control,
        }
    }

    /// Moves flow group `group` to `core` everywhere: every core's flow map (as the monitors'
    /// commit does) and the NIC's redirection table.
    pub(crate) fn move_flow_group(&mut self, group: u8, core: CoreId) {
        use drivers::nic::{FlowGroup, NicControl, QueueId};
        for stack in self.cores.iter_mut() {
            stack.net.set_flow_owner(group, core);
        }
        self.control
            .set_flow_group(FlowGroup(group), QueueId(core))
            .unwrap();
    }

    /// The core the NIC steers `frame` to.
    pub(crate) fn steer(&self, frame: &[u8]) -> CoreId {
        self.nic.predict(frame).0
    }

    /// Offers `frame` on the wire; returns the core whose queue it was steered to.
    pub(crate) fn inject(&mut self, frame: &[u8]) -> CoreId {
        match self.nic.inject(frame) {
            InjectOutcome::Delivered(queue) | InjectOutcome::RingFull(queue) => queue.0,
            InjectOutcome::LostOnWire | InjectOutcome::HeldBack => self.steer(frame),
        }
    }

    /// Delivers every message the cores sent each other.
    pub(crate) fn deliver_messages(&mut self) -> bool {
        let mut busy = false;
        for from in 0..self.cores.len() {
            let messages = std::mem::take(&mut self.cores[from].mailbox.out);
            for (to, bytes) in messages {
                if self.stopped & (1 << to) != 0 {
                    continue;
                }
                busy = true;
                self.peer_messages += 1;
                let message = PeerMessage::decode(&bytes).unwrap();
                set_current(usize::from(to));
                let core = &mut self.cores[usize::from(to)];
                core.net
                    .handle_peer_message(self.now, &message, &mut core.pool, &mut core.mailbox);
            }
        }
        busy
    }

    /// Takes what the NIC transmitted onto `self.wire`.
    pub(crate) fn collect(&mut self) {
        self.wire.extend(
            self.nic
                .take_transmitted()
                .into_iter()
                .map(|(_, frame)| frame),
        );
    }

    /// One round: every core polls once, then every message is delivered. Returns whether
    /// anything is still going on.
    pub(crate) fn round(&mut self) -> bool {
        let mut busy = false;
        let now = self.now;
        let stopped = self.stopped;
        for (index, core) in self.cores.iter_mut().enumerate() {
            if stopped & (1 << index) != 0 {
                continue;
            }
            let outcome = core.poll(index, now);
            busy |= outcome.more_work || outcome.received > 0 || outcome.transmitted > 0;
            if outcome
                .next_deadline
                .is_some_and(|deadline| deadline <= now)
            {
                busy = true;
            }
        }
        self.collect();
        busy |= self.deliver_messages();
        self.now += Duration::from_millis(1);
        busy
    }

    /// Rounds until quiet (bounded).
    pub(crate) fn settle(&mut self) {
        for _ in 0..50 {
            if !self.round() {
                break;
            }
        }
    }

    pub(crate) fn path_counters(&self, core: usize, key: PathKey) -> crate::PathCounters {
        *self.cores[core].net.path(key).unwrap().counters()
    }

    /// The TCP counters of the stream path on `port` of `core` (panics if there is none).
    pub(crate) fn tcp_counters(&self, core: usize, port: u16) -> crate::runner::tcp::TcpCounters {
        self.cores[core]
            .net
            .path(PathKey::Tcp(port))
            .unwrap()
            .tcp()
            .unwrap()
    }

    pub(crate) fn drops(&self, reason: DropReason) -> u64 {
        self.cores
            .iter()
            .map(|core| core.net.counters().drops[reason as usize])
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-built frames.

pub(crate) fn ethernet(
    destination: [u8; 6],
    source: [u8; 6],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub(crate) fn ipv4(source: [u8; 4], destination: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
    let total = (20 + payload.len()) as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&destination);
    Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
    packet.extend_from_slice(payload);
    packet
}

fn l4_checksum(source: [u8; 4], destination: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    !checksum::combine(&[
        checksum::pseudo_header_v4(
            &Ipv4Address::from_octets(source),
            &Ipv4Address::from_octets(destination),
            IpProtocol::from(protocol),
            segment.len() as u32,
        ),
        checksum::data(segment),
    ])
}

pub(crate) fn udp_frame(source_port: u16, destination_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&source_port.to_be_bytes());
    datagram.extend_from_slice(&destination_port.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let checksum = l4_checksum(CLIENT_IP, STACK_IP, 17, &datagram);
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 17, &datagram),
    )
}

pub(crate) fn tcp_syn(source_port: u16, destination_port: u16) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend_from_slice(&source_port.to_be_bytes());
    segment.extend_from_slice(&destination_port.to_be_bytes());
    segment.extend_from_slice(&1000u32.to_be_bytes());
    segment.extend_from_slice(&0u32.to_be_bytes());
    segment.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let checksum = l4_checksum(CLIENT_IP, STACK_IP, 6, &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 6, &segment),
    )
}

/// A TCP segment from the client's `source_port` to our `destination_port` with `flags`
/// (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
pub(crate) fn tcp_segment(
    source_port: u16,
    destination_port: u16,
    sequence: u32,
    acknowledgement: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend_from_slice(&source_port.to_be_bytes());
    segment.extend_from_slice(&destination_port.to_be_bytes());
    segment.extend_from_slice(&sequence.to_be_bytes());
    segment.extend_from_slice(&acknowledgement.to_be_bytes());
    segment.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(payload);
    let checksum = l4_checksum(CLIENT_IP, STACK_IP, 6, &segment);
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 6, &segment),
    )
}

/// What a test reads of a TCP segment the stack sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeenSegment {
    pub(crate) source_port: u16,
    pub(crate) destination_port: u16,
    pub(crate) sequence: u32,
    pub(crate) acknowledgement: Option<u32>,
    pub(crate) syn: bool,
    pub(crate) rst: bool,
    pub(crate) fin: bool,
    pub(crate) window_scale: Option<u8>,
    pub(crate) payload: usize,
}

/// Reads a TCP segment out of an Ethernet frame (checksums ignored).
pub(crate) fn seen_segment(frame: &[u8]) -> Option<SeenSegment> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetFrame, TcpControl, TcpPacket, TcpRepr};
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let packet = TcpPacket::new_checked(ip.payload()).ok()?;
    let repr = TcpRepr::parse(
        &packet,
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr()),
        &ChecksumCapabilities::ignored(),
    )
    .ok()?;
    Some(SeenSegment {
        source_port: repr.src_port,
        destination_port: repr.dst_port,
        sequence: repr.seq_number.0 as u32,
        acknowledgement: repr.ack_number.map(|ack| ack.0 as u32),
        syn: repr.control == TcpControl::Syn,
        rst: repr.control == TcpControl::Rst,
        fin: repr.control == TcpControl::Fin,
        window_scale: repr.window_scale,
        payload: repr.payload.len(),
    })
}

/// Splits the UDP datagram `payload` from `source_port` to `destination_port` (identification
/// `identification`) into IPv4 fragments carrying at most `per_fragment` payload bytes each (a
/// multiple of 8), as Ethernet frames in order.
pub(crate) fn udp_fragments(
    source_port: u16,
    destination_port: u16,
    identification: u16,
    payload: &[u8],
    per_fragment: usize,
) -> Vec<Vec<u8>> {
    let whole = udp_frame(source_port, destination_port, payload);
    let datagram = &whole[14 + 20..];
    datagram
        .chunks(per_fragment)
        .enumerate()
        .map(|(index, chunk)| {
            let offset = index * per_fragment;
            let more = offset + chunk.len() < datagram.len();
            let mut packet = ipv4(CLIENT_IP, STACK_IP, 17, chunk);
            packet[4..6].copy_from_slice(&identification.to_be_bytes());
            let flags = (u16::from(more) << 13) | (offset / 8) as u16;
            packet[6..8].copy_from_slice(&flags.to_be_bytes());
            Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
            ethernet(STACK_MAC, CLIENT_MAC, 0x0800, &packet)
        })
        .collect()
}

pub(crate) fn icmp_echo(identifier: u16, sequence: u16, data: &[u8]) -> Vec<u8> {
    let mut message = vec![8, 0, 0, 0];
    message.extend_from_slice(&identifier.to_be_bytes());
    message.extend_from_slice(&sequence.to_be_bytes());
    message.extend_from_slice(data);
    Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
    ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 1, &message),
    )
}

pub(crate) fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target_ip);
    ethernet([0xff; 6], sender_mac, 0x0806, &arp)
}

/// Source ports whose flows the NIC steers to `core` (its own Toeplitz hash and table decide).
pub(crate) fn ports_for_core(
    cluster: &Cluster,
    core: CoreId,
    destination_port: u16,
    count: usize,
) -> Vec<u16> {
    (40000..u16::MAX)
        .filter(|port| cluster.steer(&udp_frame(*port, destination_port, b"")) == core)
        .take(count)
        .collect()
}

pub(crate) fn frames_to_client(wire: &[Vec<u8>]) -> Vec<&Vec<u8>> {
    wire.iter()
        .filter(|frame| frame[0..6] == CLIENT_MAC)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The remote client: a second smoltcp interface on the simulated wire.

#[derive(Default)]
struct ClientDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
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

impl phy::Device for ClientDevice {
    type RxToken<'a> = ClientRx;
    type TxToken<'a> = ClientTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(ClientRx, ClientTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((ClientRx(frame), ClientTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<ClientTx<'_>> {
        Some(ClientTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

pub(crate) struct Client {
    iface: Interface,
    device: ClientDevice,
    pub(crate) sockets: SocketSet<'static>,
}

impl Client {
    pub(crate) fn new(now: Instant) -> Self {
        let mut device = ClientDevice::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        config.random_seed = 7;
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addresses| {
            let _ = addresses.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24));
        });
        Self {
            iface,
            device,
            sockets: SocketSet::new(vec![]),
        }
    }

    pub(crate) fn tcp_socket(&mut self) -> smoltcp::iface::SocketHandle {
        self.tcp_socket_with(65536, 65536)
    }

    /// A client socket with buffers of `receive` and `send` bytes.
    pub(crate) fn tcp_socket_with(
        &mut self,
        receive: usize,
        send: usize,
    ) -> smoltcp::iface::SocketHandle {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; receive]),
            tcp::SocketBuffer::new(vec![0; send]),
        );
        self.sockets.add(socket)
    }

    pub(crate) fn connect(
        &mut self,
        handle: smoltcp::iface::SocketHandle,
        local_port: u16,
        remote_port: u16,
    ) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket
            .connect(
                self.iface.context(),
                (Ipv4Address::new(10, 0, 2, 15), remote_port),
                local_port,
            )
            .unwrap();
    }

    /// Client and cluster exchange frames for `rounds` rounds or until `done` holds.
    pub(crate) fn exchange(
        &mut self,
        cluster: &mut Cluster,
        rounds: usize,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        for _ in 0..rounds {
            let _ = self
                .iface
                .poll(cluster.now, &mut self.device, &mut self.sockets);
            for frame in self.device.tx.drain(..) {
                cluster.inject(&frame);
            }
            cluster.round();
            for frame in cluster.wire.drain(..) {
                if frame[0..6] == CLIENT_MAC || frame[0..6] == [0xff; 6] {
                    self.device.rx.push_back(frame);
                }
            }
            let _ = self
                .iface
                .poll(cluster.now, &mut self.device, &mut self.sockets);
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Opens a connection to `port` from `local_port`, sends `request`, and collects the reply
    /// until `complete` says it is whole.
    pub(crate) fn request(
        &mut self,
        cluster: &mut Cluster,
        local_port: u16,
        port: u16,
        request: &[u8],
        complete: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let handle = self.tcp_socket();
        self.connect(handle, local_port, port);
        let mut sent = 0;
        let mut reply = Vec::new();
        self.exchange(cluster, 400, |client| {
            let socket = client.sockets.get_mut::<tcp::Socket>(handle);
            if socket.can_send() && sent < request.len() {
                sent += socket.send_slice(&request[sent..]).unwrap();
            }
            while socket.can_recv() {
                socket
                    .recv(|bytes| {
                        reply.extend_from_slice(bytes);
                        (bytes.len(), ())
                    })
                    .unwrap();
            }
            complete(&reply)
        });
        self.sockets.get_mut::<tcp::Socket>(handle).close();
        let _ = self.exchange(cluster, 20, |_| false);
        reply
    }
}
