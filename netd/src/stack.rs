//! One core's network stack: a smoltcp `Interface`, the classifier, the paths with their runners
//! and applications, and the bounded poll step (one loop turn) the kernel's event loop calls.
//!
//! A turn under the default discipline ([`Discipline::Lrp`]):
//! 1. reclaim finished transmissions;
//! 2. receive, bounded by the turn's quota (nothing when every path queue is full, so the NIC
//!    drops at no CPU cost; at most `rx_share_percent` of the turn while paths have backlog;
//!    otherwise up to `rx_frames_per_turn`), classifying each frame once onto its path's queue
//!    (or dropping it there when the queue is full, before checksums);
//! 3. run the paths by deficit of cycles charged (`schedule.rs`), within the turn's budget;
//! 4. hand their frames to the TX ring; refill the RX ring.
//!
//! Every lap of the cycle counter is charged: to the paths (by stage), to frames no path owns,
//! or to idle turns. The baselines ([`Discipline::SharedFifo`], [`Discipline::Interrupt`]) differ
//! only in steps 2 and 3.

use crate::app::{AppContext, Service};
use crate::classify::{
    Classifier, DropReason, PathIndex, PathKey, PathSet, RssHashFn, Verdict, MAX_PATHS,
};
use crate::config::{CoreId, Discipline, NetConfig, UdpPath, FLOW_GROUPS};
use crate::device::{capabilities, Staging, TxQueue, TX_QUEUE_CAPACITY};
use crate::moves::{FlowMoves, FlowView};
use crate::path::{CycleCounter, Path, QueuedFrame, Stage};
use crate::peers::{KvReply, KvRequest, PeerMessage, Peers};
use crate::runner::tcp::budget::Budget;
use crate::runner::tcp::table::CONNECTION_STATE_BYTES;
use crate::runner::{self, Notes, PathRunner, Progress, Reply, RunContext};
use crate::schedule::{Meter, Shares};
use crate::stats::{
    CoreCounters, CoreStats, CurrentPath, MemoryCounters, OwnCore, SnapshotError, StatsView,
};
use crate::transport::TransportCounters;
use drivers::nic::{
    ChecksumStatus, QueueCapabilities, QueueDatapath, ReceiveBatch, ReceivedFrame, TransmitFrame,
    MAX_BATCH,
};
use drivers::pool::{BufferId, BufferPool, BUFFER_SIZE};
use smoltcp::iface::{Config, Interface};
use smoltcp::phy;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Smallest receive quota of a turn while paths have backlog (so a path that starts receiving
/// under load is seen within a few turns).
pub const MIN_RX_QUOTA: usize = 4;

/// A path that had a frame within this many turns counts as active for [`CoreNet::poll`]'s
/// decision to leave frames in the ring.
pub const ACTIVE_TURNS: u64 = 64;

/// Capacity of the shared FIFO of the `netd.lrp=off` baseline.
pub const SHARED_FIFO_CAPACITY: usize = 128;

/// Frames the `netd.mode=interrupt` baseline takes from the ring in one turn at most (four rings'
/// worth: "unbounded" for the experiment, yet a turn still ends, as a real clock interrupt would
/// preempt network interrupts).
pub const INTERRUPT_DRAIN_LIMIT: usize = 1024;

/// How often the NIC's drop counters (MMIO reads) are read into the core's counters.
const NIC_STATS_PERIOD: Duration = Duration::from_millis(10);

/// Why a stack could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The MAC address is not unicast.
    BadMac,
    /// The core id is not below the core count.
    BadCore,
    /// More than [`MAX_PATHS`] paths.
    TooManyPaths,
    /// Two services claim the same endpoint.
    DuplicateEndpoint(PathKey),
    /// A service names port 0.
    BadEndpoint(PathKey),
}

/// What one [`CoreNet::poll`] did, and what the kernel should do next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Frames taken from the RX ring.
    pub received: usize,
    /// Frames handed to the TX ring.
    pub transmitted: usize,
    /// Work remains (frames in path queues, a ring left non-empty, pending transmissions, a path
    /// that asked to run again): call `poll` again without halting.
    pub more_work: bool,
    /// The earliest timer of any path (retransmission, delayed ACK, TIME-WAIT). When `more_work`
    /// is false the kernel re-enables the queue interrupt and halts until this instant or an
    /// interrupt, whichever comes first. `None`: no timer.
    pub next_deadline: Option<Instant>,
    /// An application served stats: the kernel should gather a fresh snapshot from every core
    /// through the monitor and hand it over with [`CoreNet::update_stats`].
    pub stats_wanted: bool,
    /// The receive quota this turn had (frames).
    pub rx_quota: usize,
    /// Cycles this turn took.
    pub cycles: u64,
    /// Receive moderation (`netd.rx_hold_us`): the turn carried bulk TCP data, so the kernel
    /// should keep the queue's interrupt masked and not poll before this instant unless
    /// something else wakes it; the segments that arrive meanwhile are taken, acknowledged and
    /// answered together (one larger segment, one doorbell) — what a NIC's interrupt
    /// throttling does for an interrupt-driven stack. `None`: halt as usual.
    pub hold_until: Option<Instant>,
}

/// A smoltcp device with nothing to receive or send (for building the interface).
struct NullDevice;

impl phy::Device for NullDevice {
    type RxToken<'a> = NullToken;
    type TxToken<'a> = NullToken;
    fn receive(&mut self, _: Instant) -> Option<(NullToken, NullToken)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<NullToken> {
        None
    }
    fn capabilities(&self) -> phy::DeviceCapabilities {
        capabilities()
    }
}

struct NullToken;

impl phy::RxToken for NullToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&[])
    }
}

impl phy::TxToken for NullToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _length: usize, f: F) -> R {
        f(&mut [])
    }
}

/// A frame in the shared FIFO of the `netd.lrp=off` baseline.
#[derive(Clone, Copy, Debug)]
struct FifoFrame {
    frame: ReceivedFrame,
    forwarded: bool,
}

/// What a path job does (see [`CoreNet::run_job`]).
enum Job<'m> {
    /// Take up to this many frames from the path's queue, then run its service.
    Queue(usize),
    /// Process this frame (from the shared FIFO or the "interrupt"), no service.
    Frame(QueuedFrame),
    /// Only the service (applications and egress).
    Service,
    /// A peer message for the path.
    Peer(&'m PeerMessage<'m>),
    /// The monitors' verdict on which cores live, for the path's application.
    LiveCores(u64),
}

/// What a path job did.
#[derive(Clone, Copy, Debug, Default)]
struct JobDone {
    /// Frames processed.
    frames: usize,
    /// Their bytes.
    bytes: u64,
    /// Of them, frames another core had forwarded.
    forwarded_in: u64,
    /// Of them, frames dropped at their socket after protocol work.
    socket_drops: u64,
    /// Replies that could not be queued for transmission.
    tx_drops: u64,
    /// The peer message was for the path.
    handled: bool,
    /// Neighbour entries sent.
    neighbours_sent: u64,
    /// Frames the runner handed to another core.
    forwarded_out: u64,
    /// Frames the runner wanted to hand over that the channel refused.
    forward_failed: u64,
    /// ICMP errors the token bucket held back.
    icmp_limited: u64,
    /// What the reassembly path did.
    reassembly: runner::reassembly::ReassemblyEvents,
    /// Full-sized TCP data segments taken.
    bulk_segments: u64,
}

/// What a turn's receive step did.
#[derive(Clone, Copy, Debug, Default)]
struct Received {
    /// Frames taken from the ring.
    taken: usize,
    /// The turn's receive quota.
    quota: usize,
    /// Frames may still be waiting in the ring (the quota or the drain limit stopped receiving).
    ring_left: bool,
}

/// The receive quota's state: the measured cost of receiving a frame and the path work of the
/// last turn.
#[derive(Clone, Copy, Debug, Default)]
struct RxState {
    cost_per_frame: u64,
    last_path_cycles: u64,
}

/// One core's network stack.
pub struct CoreNet {
    config: NetConfig,
    iface: Interface,
    classifier: Classifier,
    paths: Vec<Path>,
    counters: CoreCounters,
    tx_queue: TxQueue,
    /// Path index of each `tx_queue` entry.
    tx_paths: heapless::Vec<u8, TX_QUEUE_CAPACITY>,
    /// Bytes per path handed to the TX ring since the last reclaim (who pays for reclaiming).
    in_flight: Shares,
    staging: Box<Staging>,
    cycles: CycleCounter,
    started: Instant,
    stats: Vec<CoreStats>,
    stats_wanted: bool,
    arp_path: usize,
    tx_reserve: usize,
    shared_fifo: heapless::Deque<FifoFrame, SHARED_FIFO_CAPACITY>,
    rx_state: RxState,
    next_nic_stats: Instant,
    rotation: usize,
    /// Paths with frames processed whose service has not run since (the baselines).
    unserviced: PathSet,
    /// Frames handed to the TX ring so far in this turn.
    transmitted: usize,
    /// The kernel's transport counters (its mailbox), shown in this core's snapshot.
    transport: TransportCounters,
    /// The cores the monitors hold alive (bit `c` = core `c`).
    live_cores: u64,
    /// A live-cores verdict not yet handed to the applications.
    pending_live: Option<u64>,
    /// The core's TCP budget, shared by its TCP paths.
    tcp_budget: Budget,
    /// The previous owner of each flow group (connections across a move).
    moves: FlowMoves,
    /// Reads the kernel's heap figures for the snapshot (none: unknown).
    heap_probe: Option<HeapProbe>,
    /// Full-sized TCP data segments taken since the core last went quiet (receive moderation).
    bulk_segments: u64,
}

/// The kernel's heap figures of one core, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapUsage {
    /// The heap's size.
    pub size: u64,
    /// Bytes allocated now.
    pub used: u64,
    /// The most bytes allocated at once since boot.
    pub high_water: u64,
}

/// Reads the current core's heap figures (the kernel's allocator keeps the high-water mark).
pub type HeapProbe = fn() -> HeapUsage;

impl CoreNet {
    /// Builds the stack of `config.core`, with a path for ARP, one for ICMP and one per service
    /// (see [`crate::app::default_applications`]). `cycles` reads the cycle counter used to
    /// charge paths; `now` is the current time (uptime counts from it).
    pub fn new(
        config: NetConfig,
        services: Vec<Service>,
        cycles: CycleCounter,
        now: Instant,
    ) -> Result<Self, NetError> {
        let mac = EthernetAddress(config.mac);
        if !mac.is_unicast() {
            return Err(NetError::BadMac);
        }
        if config.core >= config.core_count {
            return Err(NetError::BadCore);
        }
        if services.len() + 4 > MAX_PATHS {
            return Err(NetError::TooManyPaths);
        }
        let mut interface_config = Config::new(HardwareAddress::Ethernet(mac));
        let seed = config.random_seed ^ u64::from(config.core).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        interface_config.random_seed = seed;
        let mut iface = Interface::new(interface_config, &mut NullDevice, now);
        let [a, b, c, d] = config.addresses.ip.address;
        iface.update_ip_addrs(|addresses| {
            let _ = addresses.push(IpCidr::new(
                IpAddress::v4(a, b, c, d),
                config.addresses.ip.prefix,
            ));
        });
        let [a, b, c, d] = config.addresses.gateway;
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));

        let mut classifier = Classifier::new(
            config.mac,
            config.addresses.ip.address,
            config.addresses.ip.prefix,
            config.core,
            config.core_count,
        );
        let quantum = config.scheduler.quantum_cycles;
        let mut paths = Vec::with_capacity(services.len() + 2);
        paths.push(Path::new(
            PathKey::Arp,
            Box::new(runner::arp::ArpRunner::new()),
            quantum,
        ));
        paths.push(Path::new(
            PathKey::Icmp,
            Box::new(runner::icmp::IcmpRunner::new()),
            quantum,
        ));
        // The interrupt-driven baseline is the classic stack: datagrams go through the protocol
        // stack into sockets, applications read them later.
        let udp_path = match config.options.discipline {
            Discipline::Interrupt => UdpPath::Socket,
            _ => config.options.udp,
        };
        let secret = seed.rotate_left(17) ^ 0x7c15_9e37_79b9_7f4a;
        for service in services {
            let key = service.endpoint();
            if matches!(key, PathKey::Udp(0) | PathKey::Tcp(0)) {
                return Err(NetError::BadEndpoint(key));
            }
            if paths.iter().any(|path: &Path| path.key == key) {
                return Err(NetError::DuplicateEndpoint(key));
            }
            let (key, runner) = runner::build(service, udp_path, &config.options.tcp, secret);
            paths.push(Path::new(key, runner, quantum));
        }
        paths.push(Path::new(
            PathKey::Reassembly,
            Box::new(runner::reassembly::ReassemblyRunner::new()),
            quantum,
        ));
        paths.push(Path::new(
            PathKey::Closed,
            Box::new(runner::closed::ClosedRunner::new(config.options.icmp_rate)),
            quantum,
        ));
        for (index, path) in paths.iter().enumerate() {
            classifier.add_path(path.key, PathIndex(index as u8));
        }
        let tcp = &config.options.tcp;
        let tcp_budget = Budget::new(
            config.tcp_budget_bytes(),
            tcp.max_connections as usize,
            (tcp.max_buffer_kb as usize) << 10,
            CONNECTION_STATE_BYTES,
        );
        let moves = FlowMoves::new(classifier.flows());
        Ok(Self {
            config,
            iface,
            classifier,
            paths,
            counters: CoreCounters::default(),
            tx_queue: TxQueue::new(),
            tx_paths: heapless::Vec::new(),
            in_flight: Shares::default(),
            staging: Box::new(Staging::new()),
            cycles,
            started: now,
            stats: Vec::new(),
            stats_wanted: false,
            arp_path: 0,
            tx_reserve: MAX_BATCH / 4,
            shared_fifo: heapless::Deque::new(),
            rx_state: RxState::default(),
            next_nic_stats: now,
            rotation: 0,
            unserviced: PathSet::EMPTY,
            transmitted: 0,
            transport: TransportCounters::default(),
            live_cores: if config.core_count >= 64 {
                u64::MAX
            } else {
                (1u64 << config.core_count) - 1
            },
            pending_live: None,
            tcp_budget,
            moves,
            heap_probe: None,
            bulk_segments: 0,
        })
    }

    /// Gives the stack the kernel's heap figures for its snapshots (`/stats`: `memory`).
    pub fn set_heap_probe(&mut self, probe: HeapProbe) {
        self.heap_probe = Some(probe);
    }

    /// The core's TCP budget.
    pub fn tcp_budget(&self) -> &Budget {
        &self.tcp_budget
    }

    /// This core's configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The paths, in classifier index order (0 ARP, 1 ICMP, then the services).
    pub fn paths(&self) -> &[Path] {
        &self.paths
    }

    /// The path serving `key`, if any.
    pub fn path(&self, key: PathKey) -> Option<&Path> {
        self.paths.iter().find(|path| path.key == key)
    }

    /// The path serving `key`, to change its queue limit.
    pub fn path_mut(&mut self, key: PathKey) -> Option<&mut Path> {
        self.paths.iter_mut().find(|path| path.key == key)
    }

    /// Core-wide counters.
    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// The name of the application on the path serving `key`.
    pub fn application(&self, key: PathKey) -> Option<&'static str> {
        self.path(key).and_then(Path::application)
    }

    /// The monitor moved flow group `group` to `core`.
    pub fn set_flow_owner(&mut self, group: u8, core: CoreId) {
        self.classifier.flows_mut().set_owner(group, core);
    }

    /// The monitor's whole flow-group table (index = flow group, value = owning core).
    pub fn set_flow_table(&mut self, owners: &[CoreId; FLOW_GROUPS]) {
        for (group, owner) in owners.iter().enumerate() {
            self.classifier.flows_mut().set_owner(group as u8, *owner);
        }
    }

    /// The classifier (its flow table is the local copy of the monitor's).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// The RSS hash function (Toeplitz with the machine's key), used for frames the NIC did not
    /// hash and for [`crate::classify::pick_source_port`].
    pub fn set_rss_hash(&mut self, hash: RssHashFn) {
        self.classifier.set_hash_function(hash);
    }

    fn uptime_ms(&self, now: Instant) -> u64 {
        (now - self.started).total_millis()
    }

    /// A snapshot of this core's counters, for the monitor.
    pub fn stats(&self, now: Instant) -> CoreStats {
        OwnCore {
            core: self.config.core,
            uptime_ms: self.uptime_ms(now),
            counters: &self.counters,
            before: &self.paths,
            current: None,
            after: &[],
            transport: &self.transport,
            memory: self.memory(),
        }
        .snapshot()
    }

    /// The heap (from the kernel's probe) and TCP's budget now.
    pub fn memory(&self) -> MemoryCounters {
        memory_counters(self.heap_probe, &self.tcp_budget)
    }

    /// The latest snapshot of every core, gathered by the monitor; the HTTP `/stats` page serves
    /// it (this core's own entry is live when served).
    pub fn update_stats(&mut self, cores: &[CoreStats]) {
        self.stats.clear();
        self.stats.extend_from_slice(cores);
        self.stats.sort_by_key(|entry| entry.core);
    }

    /// This core's snapshot as bytes ([`CoreStats::encode`]), for the kernel to carry to the core
    /// gathering statistics.
    pub fn snapshot_bytes(&self, now: Instant) -> Vec<u8> {
        self.stats(now).encode()
    }

    /// Takes another core's snapshot bytes (from [`Self::snapshot_bytes`] on that core) into
    /// the table `/stats` serves, replacing that core's entry. The entry's core is `core`,
    /// whatever the bytes say.
    pub fn absorb_snapshot(&mut self, core: CoreId, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut snapshot = CoreStats::decode(bytes)?;
        snapshot.core = core;
        match self.stats.iter_mut().find(|entry| entry.core == core) {
            Some(entry) => *entry = snapshot,
            None => {
                self.stats.push(snapshot);
                self.stats.sort_by_key(|entry| entry.core);
            }
        }
        Ok(())
    }

    /// The kernel's transport counters (its mailbox), shown in this core's snapshot.
    pub fn set_transport_counters(&mut self, counters: &TransportCounters) {
        self.transport = *counters;
    }

    /// The monitors' verdict on which cores live (bit `i` = core `i`): on the next [`Self::poll`]
    /// (before anything else) peer services re-home the work of cores that left (memcached's
    /// keys) and answer what was pending on them at once. Snapshots of cores no longer alive
    /// leave `/stats` now.
    pub fn set_live_cores(&mut self, live: u64) {
        self.pending_live = Some(live);
        self.live_cores = live;
        self.stats
            .retain(|entry| entry.core >= 64 || live & (1 << entry.core) != 0);
    }

    /// The cores the monitors hold alive (bit `c` = core `c`).
    pub fn live_cores(&self) -> u64 {
        self.live_cores
    }

    /// The core's one flow map (owned by the classifier), to change on the monitors' word.
    pub fn flow_map_mut(&mut self) -> &mut crate::classify::FlowTable {
        self.classifier.flows_mut()
    }

    /// The paths whose queues are full now.
    fn full_paths(&self) -> PathSet {
        let mut full = PathSet::EMPTY;
        for (index, path) in self.paths.iter().enumerate() {
            if path.queue.is_full() {
                full.insert(PathIndex(index as u8));
            }
        }
        full
    }

    /// What the NIC computes on transmit for this core, as the options allow.
    fn offload(&self, rx: &impl QueueDatapath) -> QueueCapabilities {
        if self.config.options.tx_offload {
            rx.capabilities()
        } else {
            QueueCapabilities::default()
        }
    }

    /// One bounded step of the core's network work (one loop turn): reclaim finished
    /// transmissions, receive within the turn's quota, classify each frame once, run the paths
    /// by deficit of cycles charged, hand their frames to this core's TX ring, refill the RX
    /// ring. The baselines of `config.options.discipline` replace the middle steps.
    pub fn poll(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) -> PollOutcome {
        let mut meter = Meter::start(self.cycles);
        self.counters.polls += 1;
        let offload = self.offload(rx);
        self.moves.observe(self.classifier.flows());
        if let Some(live) = self.pending_live.take() {
            for index in 0..self.paths.len() {
                let _ = self.run_job(index, now, pool, peers, offload, Job::LiveCores(live));
                self.paths[index].wake = true;
            }
            self.counters.cycles_unclassified += meter.lap();
        }

        // Reclaiming finished transmissions is charged to the paths whose frames they were.
        // (When nothing moved, a stage reads no counter: its cycles go with the next lap.)
        if rx.reclaim(pool) > 0 {
            let cycles = meter.lap();
            let in_flight = core::mem::take(&mut self.in_flight);
            self.charge_shares(&in_flight, cycles, Stage::Transmit);
        }
        if now >= self.next_nic_stats {
            self.next_nic_stats = now + NIC_STATS_PERIOD;
            let stats = rx.stats();
            self.counters.nic_rx_no_descriptor = stats.rx_no_descriptor;
            self.counters.nic_rx_missed = stats.rx_missed;
            self.counters.nic_rx_errors = stats.rx_errors;
            self.counters.cycles_idle += meter.lap();
        }

        let mut received = Shares::default();
        let report = match self.config.options.discipline {
            Discipline::Lrp => {
                self.turn_lrp(now, rx, pool, peers, offload, &mut meter, &mut received)
            }
            Discipline::SharedFifo => {
                self.turn_shared_fifo(now, rx, pool, peers, offload, &mut meter, &mut received)
            }
            Discipline::Interrupt => {
                self.turn_interrupt(now, rx, pool, peers, offload, &mut meter, &mut received)
            }
        };

        let transmitted =
            core::mem::take(&mut self.transmitted) + self.flush_tx(rx, pool, &mut meter);
        rx.refill(pool);
        let cycles = meter.lap();
        if received.is_empty() {
            self.counters.cycles_idle += cycles;
        } else {
            self.charge_shares(&received, cycles, Stage::Receive);
        }

        let turn = meter.total();
        self.counters.cycles_total += turn;
        self.counters.longest_turn_cycles = self.counters.longest_turn_cycles.max(turn);
        let mut more_work = !self.tx_queue.is_empty() || !self.shared_fifo.is_empty();
        more_work |= self
            .paths
            .iter()
            .any(|path| !path.queue.is_empty() || path.wake);
        // A turn that stopped at its quota, or the interrupt baseline's unfinished drain, leaves
        // frames in the ring.
        more_work |= report.ring_left || self.unserviced != PathSet::EMPTY;
        let next_deadline = self.paths.iter().filter_map(|path| path.deadline).min();
        // Bulk data since the core last went quiet: hold receive when it goes quiet now.
        let hold = self.config.options.rx_hold_us;
        let bulk = self.bulk_segments > 0;
        let hold_until =
            (bulk && hold > 0 && !more_work).then(|| now + Duration::from_micros(u64::from(hold)));
        if !more_work {
            self.bulk_segments = 0;
        }
        self.counters.rx_holds += u64::from(hold_until.is_some());
        PollOutcome {
            received: report.taken,
            transmitted,
            more_work,
            next_deadline,
            stats_wanted: core::mem::take(&mut self.stats_wanted),
            rx_quota: report.quota,
            cycles: turn,
            hold_until,
        }
    }

    /// The receive quota of an LRP or shared-FIFO turn: nothing when every path that has had
    /// frames lately (the last [`ACTIVE_TURNS`] turns) is behind (its queue three quarters full
    /// or more) — what would be taken would mostly be dropped at those queues, so the NIC may as
    /// well drop it, at no CPU cost, while the paths catch up; while
    /// paths have backlog, what keeps receiving within `rx_share_percent` of the turn (measured
    /// by the last turn's path work and the cost of receiving a frame), at least
    /// [`MIN_RX_QUOTA`]; otherwise `rx_frames_per_turn`.
    fn rx_quota(&mut self, now: Instant) -> usize {
        let scheduler = &self.config.scheduler;
        let most = scheduler.rx_frames_per_turn.max(1);
        let turn = self.counters.polls;
        let mut active = self
            .paths
            .iter()
            .filter(|path| {
                path.last_admitted > 0 && turn.saturating_sub(path.last_admitted) <= ACTIVE_TURNS
            })
            .peekable();
        let all_behind = active.peek().is_some() && active.all(|path| path.queue.is_behind());
        if self.config.options.discipline == Discipline::Lrp && all_behind {
            self.counters.rx_withheld += 1;
            return 0;
        }
        let backlog =
            !self.shared_fifo.is_empty() || self.paths.iter().any(|path| path.has_work(now));
        if !backlog || self.rx_state.cost_per_frame == 0 {
            return most;
        }
        let share = scheduler.rx_share_percent.clamp(1, 99);
        let allowed_cycles = self.rx_state.last_path_cycles * share / (100 - share);
        let frames = (allowed_cycles / self.rx_state.cost_per_frame) as usize;
        frames.clamp(MIN_RX_QUOTA.min(most), most)
    }

    /// Takes up to `want` frames from the ring (at most [`MAX_BATCH`]) into `batch`; returns
    /// where the frames start in it.
    fn receive_batch(
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        want: usize,
        batch: &mut ReceiveBatch,
    ) -> usize {
        // Placeholders make `receive` take at most `want`: it fills the batch's remaining room.
        batch.clear();
        let placeholder = ReceivedFrame {
            buffer: BufferId(u32::MAX),
            length: 0,
            rss_hash: 0,
            checksum: ChecksumStatus::default(),
        };
        for _ in want.min(MAX_BATCH)..MAX_BATCH {
            let _ = batch.push(placeholder);
        }
        let skip = batch.len();
        rx.receive(pool, batch);
        skip
    }

    /// Updates the moving average of a received frame's cost.
    fn note_rx_cost(&mut self, cycles: u64, frames: usize) {
        if frames == 0 {
            return;
        }
        let per_frame = (cycles / frames as u64).max(1);
        self.rx_state.cost_per_frame = if self.rx_state.cost_per_frame == 0 {
            per_frame
        } else {
            (3 * self.rx_state.cost_per_frame + per_frame) / 4
        };
    }

    /// An LRP turn: receive within the quota onto the path queues, then run the paths by deficit.
    #[allow(clippy::too_many_arguments)]
    fn turn_lrp(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
        received: &mut Shares,
    ) -> Received {
        let quota = self.rx_quota(now);
        let mut taken = 0;
        let mut batch = ReceiveBatch::new();
        while taken < quota {
            let want = (quota - taken).min(MAX_BATCH);
            let skip = Self::receive_batch(rx, pool, want, &mut batch);
            let frames = &batch[skip..];
            if frames.is_empty() {
                break;
            }
            taken += frames.len();
            let mut shares = Shares::default();
            let mut full = self.full_paths();
            for frame in frames {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += u64::from(frame.length);
                self.admit(frame, pool, peers, &mut full, &mut shares);
            }
            let cycles = meter.lap();
            self.note_rx_cost(cycles, frames.len());
            self.charge_shares(&shares, cycles, Stage::Receive);
            received.merge(&shares);
            if frames.len() < want {
                break;
            }
        }
        let ring_left = taken >= quota && rx.receive_pending();
        if quota > 0 && ring_left {
            self.counters.rx_quota_reached += 1;
        }
        self.rx_state.last_path_cycles = self.run_paths(now, rx, pool, peers, offload, meter);
        Received {
            taken,
            quota,
            ring_left,
        }
    }

    /// Runs the paths with work by deficit of cycles charged, within the turn's budget; returns
    /// the cycles they used.
    fn run_paths(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
    ) -> u64 {
        let scheduler = self.config.scheduler;
        let count = self.paths.len();
        let mut order: heapless::Vec<(u64, usize, usize), MAX_PATHS> = heapless::Vec::new();
        for (index, path) in self.paths.iter_mut().enumerate() {
            path.schedule.replenish(scheduler.quantum_cycles);
            if path.has_work(now) {
                // Least charged recently first; ties in an order that rotates every turn.
                let rank = (index + count - self.rotation % count.max(1)) % count.max(1);
                let _ = order.push((path.schedule.recent, rank, index));
            }
        }
        self.rotation = self.rotation.wrapping_add(1);
        order.sort_unstable();
        // Work-conserving: when every path with frames is in debt, the rounds that would pay
        // the least indebted one's debt are granted at once (to all of them, so their
        // differences stand) instead of leaving the core idle — an overrun (a descheduled vCPU
        // shows as one) costs a path its turns only while others have work.
        let waiting = |path: &Path| !path.queue.is_empty();
        let most_credit = order
            .iter()
            .filter(|(_, _, index)| waiting(&self.paths[*index]))
            .map(|(_, _, index)| self.paths[*index].schedule.credit)
            .max();
        if let Some(credit) = most_credit.filter(|credit| *credit <= 0) {
            let quantum = i64::try_from(scheduler.quantum_cycles.max(1)).unwrap_or(i64::MAX);
            let rounds = (1 - credit).div_euclid(quantum) + 1;
            for (_, _, index) in order.iter() {
                let schedule = &mut self.paths[*index].schedule;
                schedule.credit = schedule
                    .credit
                    .saturating_add(rounds.saturating_mul(quantum))
                    .min(quantum);
            }
        }
        let mut used = 0u64;
        for &(_, _, index) in order.iter() {
            let path = &self.paths[index];
            let tx_room = TX_QUEUE_CAPACITY - self.tx_queue.len();
            let frames = path.schedule.frames_allowed(
                path.queue.len(),
                scheduler.path_frames_per_turn.min(tx_room),
            );
            let timer_or_wake = path.wake || path.deadline.is_some_and(|due| due <= now);
            if used >= scheduler.turn_cycles || (frames == 0 && !timer_or_wake) {
                self.paths[index].counters.turns_deferred += 1;
                continue;
            }
            let done = self.run_job(index, now, pool, peers, offload, Job::Queue(frames));
            let cycles = meter.lap();
            used += cycles;
            self.reinject(index, now, pool, peers, offload, meter);
            let path = &mut self.paths[index];
            path.charge(Stage::Run, cycles);
            path.schedule.charge(cycles, done.frames);
            if !path.queue.is_empty() {
                path.counters.turns_deferred += 1;
            }
            self.counters.neighbours_sent += done.neighbours_sent;
            // Replies leave when their path's run ends, not when the whole turn does: a light
            // path does not wait for the busy ones behind it.
            self.transmitted += self.flush_tx(rx, pool, meter);
        }
        used
    }

    /// A `netd.lrp=off` turn: frames go from the ring into one shared FIFO (tail drop whatever
    /// their destination), then are classified and processed to completion in arrival order
    /// within the turn's budget.
    #[allow(clippy::too_many_arguments)]
    fn turn_shared_fifo(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
        received: &mut Shares,
    ) -> Received {
        let quota = self.rx_quota(now);
        let mut taken = 0;
        let mut dropped = Shares::default();
        let mut batch = ReceiveBatch::new();
        while taken < quota {
            let want = (quota - taken).min(MAX_BATCH);
            let skip = Self::receive_batch(rx, pool, want, &mut batch);
            let frames = &batch[skip..];
            if frames.is_empty() {
                break;
            }
            taken += frames.len();
            for frame in frames {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += u64::from(frame.length);
                let entry = FifoFrame {
                    frame: *frame,
                    forwarded: false,
                };
                if self.shared_fifo.push_back(entry).is_err() {
                    self.counters.shared_queue_drops += 1;
                    dropped.add_unowned(frame.length);
                    let _ = pool.free(frame.buffer);
                }
            }
            if frames.len() < want {
                break;
            }
        }
        // Receiving into the FIFO: no path is known yet; it is charged with the frames'
        // classification below (or to the unowned count for frames the FIFO dropped).
        let receive_cycles = meter.lap();
        self.note_rx_cost(receive_cycles, taken);
        self.counters.cycles_unclassified += dropped.split(receive_cycles, |_, _| {});
        received.merge(&dropped);
        let ring_left = taken >= quota && rx.receive_pending();
        if quota > 0 && ring_left {
            self.counters.rx_quota_reached += 1;
        }

        // Process in arrival order, within the turn's budget.
        let scheduler = self.config.scheduler;
        let mut used = 0u64;
        let mut processed = 0;
        while used < scheduler.turn_cycles && processed < scheduler.rx_frames_per_turn {
            if self.tx_queue.is_full() {
                break;
            }
            let Some(entry) = self.shared_fifo.pop_front() else {
                break;
            };
            processed += 1;
            let mut shares = Shares::default();
            let target =
                self.classify_unqueued(&entry.frame, entry.forwarded, pool, peers, &mut shares);
            let classify_cycles = meter.lap();
            self.charge_shares(&shares, classify_cycles, Stage::Receive);
            received.merge(&shares);
            used += classify_cycles;
            if let Some((index, queued)) = target {
                let done = self.run_job(index, now, pool, peers, offload, Job::Frame(queued));
                self.unserviced.insert(PathIndex(index as u8));
                self.counters.neighbours_sent += done.neighbours_sent;
                let cycles = meter.lap();
                used += cycles;
                self.paths[index].charge(Stage::Run, cycles);
                self.reinject(index, now, pool, peers, offload, meter);
            }
        }
        used += self.service_paths(now, pool, peers, offload, meter);
        self.rx_state.last_path_cycles = used;
        Received {
            taken,
            quota,
            ring_left,
        }
    }

    /// A `netd.mode=interrupt` turn: the "interrupt" drains the ring (up to
    /// [`INTERRUPT_DRAIN_LIMIT`]), doing protocol processing of every frame up to its socket right
    /// away; applications (the paths' services) run only if the ring was then found empty.
    #[allow(clippy::too_many_arguments)]
    fn turn_interrupt(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
        received: &mut Shares,
    ) -> Received {
        let mut taken = 0;
        let mut drained = false;
        let mut batch = ReceiveBatch::new();
        while taken < INTERRUPT_DRAIN_LIMIT {
            let skip = Self::receive_batch(rx, pool, MAX_BATCH, &mut batch);
            let frames = batch[skip..].to_vec();
            if frames.is_empty() {
                drained = true;
                break;
            }
            taken += frames.len();
            let receive_cycles = meter.lap();
            let per_frame = receive_cycles / frames.len() as u64;
            let mut remainder = receive_cycles - per_frame * frames.len() as u64;
            for frame in &frames {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += u64::from(frame.length);
                let mut shares = Shares::default();
                let target = self.classify_unqueued(frame, false, pool, peers, &mut shares);
                let share = per_frame + core::mem::take(&mut remainder);
                let cycles = meter.lap() + share;
                self.note_rx_cost(cycles, 1);
                self.charge_shares(&shares, cycles, Stage::Receive);
                received.merge(&shares);
                if let Some((index, queued)) = target {
                    let done = self.run_job(index, now, pool, peers, offload, Job::Frame(queued));
                    self.unserviced.insert(PathIndex(index as u8));
                    self.counters.neighbours_sent += done.neighbours_sent;
                    let cycles = meter.lap();
                    self.paths[index].charge(Stage::Run, cycles);
                    self.reinject(index, now, pool, peers, offload, meter);
                }
            }
            // The driver's interrupt handler gives the ring its buffers back as it goes.
            rx.refill(pool);
            let cycles = meter.lap();
            self.charge_shares(received, cycles, Stage::Receive);
        }
        if !drained {
            drained = !rx.receive_pending();
        }
        // Applications run only when no receive work is pending (the interrupt's priority).
        if drained {
            let _ = self.service_paths(now, pool, peers, offload, meter);
        }
        Received {
            taken,
            quota: INTERRUPT_DRAIN_LIMIT,
            ring_left: !drained,
        }
    }

    /// Classifies the frames path `index`'s runner made for the classifier (reassembled
    /// datagrams) as if received now: onto their paths' queues, forwarded once to their flow's
    /// owner, or dropped with a reason (under the baselines: into the shared FIFO, or processed
    /// at once). The cycles go to the paths they are for.
    fn reinject(
        &mut self,
        index: usize,
        now: Instant,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
    ) {
        while let Some((buffer, length)) = self.paths[index].runner.take_reinjected() {
            let frame = ReceivedFrame {
                buffer,
                length,
                rss_hash: 0,
                checksum: ChecksumStatus::default(),
            };
            let mut shares = Shares::default();
            match self.config.options.discipline {
                Discipline::Lrp => {
                    let mut full = self.full_paths();
                    self.admit(&frame, pool, peers, &mut full, &mut shares);
                }
                Discipline::SharedFifo => {
                    let entry = FifoFrame {
                        frame,
                        forwarded: false,
                    };
                    if self.shared_fifo.push_back(entry).is_err() {
                        self.counters.shared_queue_drops += 1;
                        let _ = pool.free(buffer);
                    }
                }
                Discipline::Interrupt => {
                    if let Some((target, queued)) =
                        self.classify_unqueued(&frame, false, pool, peers, &mut shares)
                    {
                        let cycles = meter.lap();
                        self.charge_shares(&shares, cycles, Stage::Receive);
                        shares = Shares::default();
                        let _ = self.run_job(target, now, pool, peers, offload, Job::Frame(queued));
                        self.unserviced.insert(PathIndex(target as u8));
                        let cycles = meter.lap();
                        self.paths[target].charge(Stage::Run, cycles);
                    }
                }
            }
            let cycles = meter.lap();
            self.charge_shares(&shares, cycles, Stage::Receive);
        }
    }

    /// Runs the service (applications and egress) of the paths that processed frames since
    /// their last service, were woken, or have a timer due; returns the cycles used.
    fn service_paths(
        &mut self,
        now: Instant,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        meter: &mut Meter,
    ) -> u64 {
        let mut used = 0;
        let unserviced = core::mem::take(&mut self.unserviced);
        for index in 0..self.paths.len() {
            let path = &self.paths[index];
            let due = path.wake || path.deadline.is_some_and(|due| due <= now);
            if !due && !unserviced.contains(PathIndex(index as u8)) {
                continue;
            }
            let _ = self.run_job(index, now, pool, peers, offload, Job::Service);
            let cycles = meter.lap();
            used += cycles;
            self.paths[index].charge(Stage::Run, cycles);
        }
        used
    }

    /// Classifies a received frame that will not wait in a path queue (shared FIFO, interrupt
    /// baseline): returns the path and the frame to process now, or forwards or drops it.
    fn classify_unqueued(
        &mut self,
        frame: &ReceivedFrame,
        forwarded: bool,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        shares: &mut Shares,
    ) -> Option<(usize, QueuedFrame)> {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let verdict = match pool.bytes(frame.buffer) {
            Ok(bytes) => self.classifier.classify(
                &bytes[..length],
                if forwarded {
                    ChecksumStatus::default()
                } else {
                    frame.checksum
                },
                frame.rss_hash,
                forwarded,
            ),
            Err(_) => return None,
        };
        match verdict {
            Verdict::Deliver(path) | Verdict::PathFull(path) => {
                shares.add(usize::from(path.0), frame.length);
                Some((
                    usize::from(path.0),
                    QueuedFrame {
                        buffer: frame.buffer,
                        length: frame.length,
                        forwarded,
                    },
                ))
            }
            Verdict::Forward(core) => {
                self.forward(core, frame, pool, peers);
                shares.add_unowned(frame.length);
                None
            }
            Verdict::Drop(reason) => {
                self.counters.drops[reason as usize] += 1;
                shares.add_unowned(frame.length);
                let _ = pool.free(frame.buffer);
                None
            }
        }
    }

    /// Sends a misdelivered frame to its owner core (once) and frees its buffer.
    fn forward(
        &mut self,
        core: CoreId,
        frame: &ReceivedFrame,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let sent = match pool.bytes(frame.buffer) {
            Ok(bytes) => peers
                .send(core, &PeerMessage::Frame(&bytes[..length]))
                .is_ok(),
            Err(_) => false,
        };
        if sent {
            self.counters.forwarded_out += 1;
        } else {
            self.counters.drops[DropReason::ForwardFailed as usize] += 1;
        }
        let _ = pool.free(frame.buffer);
    }

    /// Classifies one received frame and queues it on its path, drops it at the path's full
    /// queue, forwards it or drops it; records who it was for in `shares`.
    fn admit(
        &mut self,
        frame: &ReceivedFrame,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        full: &mut PathSet,
        shares: &mut Shares,
    ) {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let verdict = match pool.bytes(frame.buffer) {
            Ok(bytes) => self.classifier.classify_admitting(
                &bytes[..length],
                frame.checksum,
                frame.rss_hash,
                false,
                *full,
            ),
            Err(_) => return,
        };
        let turn = self.counters.polls;
        match verdict {
            Verdict::Deliver(path) => {
                shares.add(usize::from(path.0), frame.length);
                if let Some(path) = self.paths.get_mut(usize::from(path.0)) {
                    path.last_admitted = turn;
                }
                if self.enqueue(path, frame.buffer, frame.length, false, pool) {
                    full.insert(path);
                }
            }
            Verdict::PathFull(path) => {
                shares.add(usize::from(path.0), frame.length);
                if let Some(path) = self.paths.get_mut(usize::from(path.0)) {
                    path.counters.queue_drops += 1;
                    path.last_admitted = turn;
                }
                let _ = pool.free(frame.buffer);
            }
            Verdict::Forward(core) => {
                shares.add_unowned(frame.length);
                self.forward(core, frame, pool, peers);
            }
            Verdict::Drop(reason) => {
                shares.add_unowned(frame.length);
                self.counters.drops[reason as usize] += 1;
                let _ = pool.free(frame.buffer);
            }
        }
    }

    /// Appends a frame to its path's queue (or tail-drops it); returns whether the queue is now
    /// full.
    fn enqueue(
        &mut self,
        path: PathIndex,
        buffer: BufferId,
        length: u16,
        forwarded: bool,
        pool: &mut BufferPool,
    ) -> bool {
        let Some(path) = self.paths.get_mut(usize::from(path.0)) else {
            let _ = pool.free(buffer);
            return false;
        };
        let frame = QueuedFrame {
            buffer,
            length,
            forwarded,
        };
        if path.queue.push(frame).is_err() {
            path.counters.queue_drops += 1;
            let _ = pool.free(buffer);
        }
        path.counters.queue_high_water =
            path.counters.queue_high_water.max(path.queue.len() as u64);
        path.queue.is_full()
    }

    /// Charges `cycles` of `stage` by `shares`; the unowned part goes to `cycles_unclassified`.
    fn charge_shares(&mut self, shares: &Shares, cycles: u64, stage: Stage) {
        let paths = &mut self.paths;
        let unowned = shares.split(cycles, |index, part| {
            if let Some(path) = paths.get_mut(index) {
                path.charge(stage, part);
            }
        });
        self.counters.cycles_unclassified += unowned;
    }

    /// Runs `job` on path `index`: the path's runner with a [`RunContext`] over this core's
    /// interface, pool, staging area and TX queue, and an application context whose stats view
    /// shows this core live. Counts the path's packets and transmissions; the caller charges the
    /// cycles.
    fn run_job(
        &mut self,
        index: usize,
        now: Instant,
        pool: &mut BufferPool,
        peers: &mut dyn Peers,
        offload: QueueCapabilities,
        job: Job<'_>,
    ) -> JobDone {
        let uptime_ms = self.uptime_ms(now);
        let tx_before = self.tx_queue.len();
        let memory = self.memory();
        let Self {
            config,
            iface,
            paths,
            counters,
            tx_queue,
            tx_paths,
            staging,
            stats,
            stats_wanted,
            tx_reserve,
            transport,
            tcp_budget,
            classifier,
            moves,
            live_cores,
            bulk_segments,
            ..
        } = self;
        let config: &NetConfig = config;
        let (before, rest) = paths.split_at_mut(index);
        let Some((path, after)) = rest.split_first_mut() else {
            return JobDone::default();
        };
        let mut run_again = false;
        let mut wake_at = None;
        let serviced = matches!(job, Job::Queue(_) | Job::Service);
        let mut done = JobDone::default();
        let progress = {
            let Path {
                key,
                queue,
                counters: path_counters,
                runner,
                open_connections,
                tcp_events,
                ..
            } = &mut *path;
            let current = CurrentPath {
                key: *key,
                counters: path_counters,
                queued: queue.len() as u16,
                open_connections: (*open_connections).min(u16::MAX as usize) as u16,
                tcp: runner
                    .tcp_gauges()
                    .map(|gauges| gauges.with_events(tcp_events)),
            };
            let mut cx = RunContext {
                now,
                iface: &mut *iface,
                pool,
                staging,
                tx: &mut *tx_queue,
                tx_reserve: *tx_reserve,
                offload,
                config,
                app: AppContext {
                    now,
                    core: config.core,
                    core_count: config.core_count,
                    hostname: config.hostname,
                    uptime_ms,
                    peers,
                    stats: StatsView {
                        gathered: stats.as_slice(),
                        own: OwnCore {
                            core: config.core,
                            uptime_ms,
                            counters,
                            before,
                            current: Some(current),
                            after,
                            transport,
                            memory,
                        },
                    },
                    stats_wanted,
                    run_again: &mut run_again,
                    wake_at: &mut wake_at,
                },
                notes: Notes::default(),
                budget: tcp_budget,
                flows: FlowView {
                    core: config.core,
                    flows: classifier.flows(),
                    moves,
                    hash: classifier.hash_function(),
                    live: *live_cores,
                },
            };
            let progress = match job {
                Job::Queue(frames) => {
                    let chunk = runner.frames_per_service().max(1);
                    let mut left = frames;
                    let mut progress = Progress::default();
                    loop {
                        for _ in 0..left.min(chunk) {
                            let Some(frame) = queue.pop() else { break };
                            ingest(runner.as_mut(), &mut cx, frame, &mut done);
                        }
                        left = left.saturating_sub(chunk);
                        let step = runner.service(&mut cx);
                        progress.run_again = step.run_again;
                        progress.connections_opened += step.connections_opened;
                        if left == 0 || queue.is_empty() {
                            break;
                        }
                    }
                    Some(progress)
                }
                Job::Frame(frame) => {
                    ingest(runner.as_mut(), &mut cx, frame, &mut done);
                    None
                }
                Job::Service => Some(runner.service(&mut cx)),
                Job::Peer(message) => {
                    done.handled = runner.on_peer_message(&mut cx, message);
                    None
                }
                Job::LiveCores(live) => {
                    runner.on_live_cores(&mut cx, live);
                    None
                }
            };
            done.neighbours_sent = cx.notes.neighbours_sent;
            done.socket_drops = cx.notes.socket_drops;
            done.icmp_limited = cx.notes.icmp_limited;
            done.reassembly = cx.notes.reassembly;
            done.bulk_segments = cx.notes.tcp.bulk_segments;
            tcp_events.add(&cx.notes.tcp);
            progress
        };
        *bulk_segments += done.bulk_segments;
        counters.forwarded_out += done.forwarded_out;
        counters.drops[DropReason::ForwardFailed as usize] += done.forward_failed;
        counters.icmp_limited += done.icmp_limited;
        let r = &done.reassembly;
        counters.fragments += r.fragments;
        counters.reassembled += r.reassembled;
        counters.reassembly_timeouts += r.timeouts;
        counters.reassembly_evictions += r.evictions;
        counters.reassembly_overlaps += r.overlaps;
        counters.reassembly_too_large += r.too_large;
        path.counters.packets += done.frames as u64;
        path.counters.bytes += done.bytes;
        path.counters.forwarded_in += done.forwarded_in;
        path.counters.socket_drops += done.socket_drops;
        path.counters.tx_drops += done.tx_drops;
        if let Some(progress) = progress {
            path.counters.runs += 1;
            path.counters.connections += u64::from(progress.connections_opened);
            path.wake = run_again || progress.run_again;
        } else if run_again || done.handled {
            // A peer message (a reply may complete a connection's output) or an application
            // that asked: run the path's service next turn.
            path.wake = true;
        }
        // A service run says afresh when the application wants to run again; a peer message in
        // between can only bring that moment forward.
        path.app_deadline = match (serviced, path.app_deadline, wake_at) {
            (true, _, wake_at) => wake_at,
            (false, Some(at), Some(wake)) => Some(at.min(wake)),
            (false, at, wake) => at.or(wake),
        };
        path.deadline = match (path.runner.poll_at(iface, now), path.app_deadline) {
            (Some(stack), Some(app)) => Some(stack.min(app)),
            (stack, app) => stack.or(app),
        };
        path.open_connections = path.runner.open_connections();
        for frame in &tx_queue[tx_before.min(tx_queue.len())..] {
            path.counters.tx_packets += 1;
            path.counters.tx_bytes += u64::from(frame.length);
            let _ = tx_paths.push(index as u8);
        }
        done
    }

    /// Handles a message another core's stack sent to this one (the kernel calls it while
    /// draining its URPC channels). Frames forwarded here are copied into a buffer from `pool`
    /// and queued on their path (processed at once under the baselines); they are never
    /// forwarded again. Key-value messages go to the peer service whose port is their
    /// `service`. The cycles are charged to the path that handles the message.
    pub fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &PeerMessage<'_>,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) {
        let mut meter = Meter::start(self.cycles);
        let offload = QueueCapabilities::default();
        match message {
            PeerMessage::Neighbour(_) => {
                let index = self.arp_path;
                let done = self.run_job(index, now, pool, peers, offload, Job::Peer(message));
                if done.handled {
                    self.counters.neighbours_installed += 1;
                    self.paths[index].counters.peer_messages += 1;
                }
                self.paths[index].wake = false;
                let cycles = meter.lap();
                self.paths[index].charge(Stage::Run, cycles);
            }
            PeerMessage::Frame(bytes) => {
                self.counters.forwarded_in += 1;
                let mut shares = Shares::default();
                self.admit_forwarded(now, bytes, pool, peers, offload, &mut shares, &mut meter);
                let cycles = meter.lap();
                self.charge_shares(&shares, cycles, Stage::Receive);
            }
            PeerMessage::KvRequest(KvRequest { service, .. })
            | PeerMessage::KvReply(KvReply { service, .. }) => {
                let target = self
                    .paths
                    .iter()
                    .position(|path| path.key == PathKey::Tcp(*service));
                let handled = target.is_some_and(|index| {
                    let done = self.run_job(index, now, pool, peers, offload, Job::Peer(message));
                    if done.handled {
                        self.paths[index].counters.peer_messages += 1;
                    }
                    done.handled
                });
                let cycles = meter.lap();
                match target {
                    Some(index) if handled => self.paths[index].charge(Stage::Run, cycles),
                    _ => {
                        self.counters.peer_unroutable += 1;
                        self.counters.cycles_unclassified += cycles;
                    }
                }
            }
        }
        self.counters.cycles_total += meter.total();
    }

    /// Classifies a frame another core forwarded and queues it on its path (or, under the
    /// baselines, puts it in the shared FIFO or processes it at once).
    #[allow(clippy::too_many_arguments)]
    fn admit_forwarded(
        &mut self,
        now: Instant,
        bytes: &[u8],
        pool: &mut BufferPool,
        peers: &mut impl Peers,
        offload: QueueCapabilities,
        shares: &mut Shares,
        meter: &mut Meter,
    ) {
        let length = bytes.len().min(u16::MAX as usize) as u16;
        if bytes.len() > BUFFER_SIZE {
            self.counters.drops[DropReason::BadLength as usize] += 1;
            shares.add_unowned(length);
            return;
        }
        let Some(buffer) = pool.alloc() else {
            self.counters.no_buffer += 1;
            shares.add_unowned(length);
            return;
        };
        if let Ok(target) = pool.bytes_mut(buffer) {
            target[..bytes.len()].copy_from_slice(bytes);
        }
        let frame = ReceivedFrame {
            buffer,
            length,
            rss_hash: 0,
            checksum: ChecksumStatus::default(),
        };
        match self.config.options.discipline {
            Discipline::Lrp => {
                let verdict = self.classifier.classify_admitting(
                    bytes,
                    ChecksumStatus::default(),
                    0,
                    true,
                    self.full_paths(),
                );
                match verdict {
                    Verdict::Deliver(path) => {
                        shares.add(usize::from(path.0), length);
                        let _ = self.enqueue(path, buffer, length, true, pool);
                    }
                    Verdict::PathFull(path) => {
                        shares.add(usize::from(path.0), length);
                        self.paths[usize::from(path.0)].counters.queue_drops += 1;
                        let _ = pool.free(buffer);
                    }
                    // Unreachable for a forwarded frame; counted rather than trusted.
                    Verdict::Forward(_) => {
                        shares.add_unowned(length);
                        self.counters.drops[DropReason::ForwardFailed as usize] += 1;
                        let _ = pool.free(buffer);
                    }
                    Verdict::Drop(reason) => {
                        shares.add_unowned(length);
                        self.counters.drops[reason as usize] += 1;
                        let _ = pool.free(buffer);
                    }
                }
            }
            Discipline::SharedFifo => {
                shares.add_unowned(length);
                let entry = FifoFrame {
                    frame,
                    forwarded: true,
                };
                if self.shared_fifo.push_back(entry).is_err() {
                    self.counters.shared_queue_drops += 1;
                    let _ = pool.free(buffer);
                }
            }
            Discipline::Interrupt => {
                if let Some((index, queued)) =
                    self.classify_unqueued(&frame, true, pool, peers, shares)
                {
                    let cycles = meter.lap();
                    self.charge_shares(shares, cycles, Stage::Receive);
                    *shares = Shares::default();
                    let _ = self.run_job(index, now, pool, peers, offload, Job::Frame(queued));
                    let cycles = meter.lap();
                    self.paths[index].charge(Stage::Run, cycles);
                }
            }
        }
    }

    /// Hands queued frames to the TX ring; what the ring refuses waits for the next turn. The
    /// cycles are charged to the paths whose frames went, by bytes.
    fn flush_tx(
        &mut self,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        meter: &mut Meter,
    ) -> usize {
        if self.tx_queue.is_empty() {
            return 0;
        }
        let accepted = rx.transmit(pool, &self.tx_queue).min(self.tx_queue.len());
        let cycles = meter.lap();
        let mut sent = Shares::default();
        for (frame, path) in self.tx_queue[..accepted].iter().zip(self.tx_paths.iter()) {
            self.counters.tx_frames += 1;
            self.counters.tx_bytes += u64::from(frame.length);
            sent.add(usize::from(*path), frame.length);
        }
        self.charge_shares(&sent, cycles, Stage::Transmit);
        self.in_flight.merge(&sent);
        let remaining = self.tx_queue.len() - accepted;
        self.tx_queue.copy_within(accepted.., 0);
        self.tx_queue.truncate(remaining);
        let tagged = self.tx_paths.len().min(accepted);
        self.tx_paths.copy_within(tagged.., 0);
        self.tx_paths.truncate(self.tx_paths.len() - tagged);
        accepted
    }
}

/// The memory section of a snapshot: the kernel's heap figures (if it gave a probe) and the TCP
/// budget.
fn memory_counters(probe: Option<HeapProbe>, budget: &Budget) -> MemoryCounters {
    let heap = probe.map(|probe| probe()).unwrap_or_default();
    MemoryCounters {
        heap_size: heap.size,
        heap_used: heap.used,
        heap_high_water: heap.high_water,
        tcp_budget: budget.limit() as u64,
        tcp_used: budget.used() as u64,
        tcp_high_water: budget.high_water() as u64,
        tcp_connections: budget.connections() as u64,
        tcp_most_connections: budget.most_connections() as u64,
        tcp_max_connections: budget.max_connections() as u64,
        tcp_state_per_connection: budget.overhead() as u64,
    }
}

/// One frame through a path's runner: processed, its reply committed, counted in `done`.
#[inline]
fn ingest(
    runner: &mut dyn PathRunner,
    cx: &mut RunContext<'_>,
    frame: QueuedFrame,
    done: &mut JobDone,
) {
    let reply = runner.ingress(cx, frame);
    done.frames += 1;
    done.bytes += u64::from(frame.length);
    done.forwarded_in += u64::from(frame.forwarded);
    if let Reply::Forward(core) = reply {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let sent = match cx.pool.bytes(frame.buffer) {
            Ok(bytes) => cx
                .app
                .peers
                .send(core, &PeerMessage::Frame(&bytes[..length]))
                .is_ok(),
            Err(_) => false,
        };
        if sent {
            done.forwarded_out += 1;
        } else {
            done.forward_failed += 1;
        }
        let _ = cx.pool.free(frame.buffer);
        return;
    }
    if !commit(cx, &frame, reply) {
        done.tx_drops += 1;
    }
}

/// Commits an ingress reply: the frame's own buffer goes to the TX queue (in place) or back to
/// the pool, and a staged reply is copied into a fresh buffer. Returns false when a reply could
/// not be queued (no buffer, TX queue full): it is dropped.
fn commit(cx: &mut RunContext<'_>, frame: &QueuedFrame, reply: Reply) -> bool {
    match reply {
        Reply::Nothing | Reply::Forward(_) => {
            let _ = cx.pool.free(frame.buffer);
            true
        }
        Reply::InPlace { length, checksum } => {
            let out = TransmitFrame {
                checksum,
                ..TransmitFrame::new(frame.buffer, length)
            };
            if cx.tx.push(out).is_err() {
                let _ = cx.pool.free(frame.buffer);
                return false;
            }
            true
        }
        Reply::Staged { length } => {
            let _ = cx.pool.free(frame.buffer);
            let length = usize::from(length).min(cx.staging.bytes.len());
            let Some(buffer) = cx.pool.alloc() else {
                return false;
            };
            // smoltcp leaves TCP checksums to the device: finish a reset's or an ACK's here.
            let checksum = match cx.pool.bytes_mut(buffer) {
                Ok(target) => {
                    target[..length].copy_from_slice(&cx.staging.bytes[..length]);
                    crate::device::finish_tcp_checksum(&mut target[..length], cx.offload)
                }
                Err(_) => {
                    let _ = cx.pool.free(buffer);
                    return false;
                }
            };
            let frame = TransmitFrame {
                checksum,
                ..TransmitFrame::new(buffer, length as u16)
            };
            if cx.tx.push(frame).is_err() {
                let _ = cx.pool.free(buffer);
                return false;
            }
            true
        }
    }
}
