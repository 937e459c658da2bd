//! A deterministic simulation of several cores for the node's host tests: real [`Node`]s, real
//! URPC channels and bulk pools, one thread, a simulated clock, and a seeded scheduler that picks
//! which runnable core takes the next step.
//!
//! A step of a core is what its arch shell does: one [`Node::turn`], then, when the turn says
//! halt, [`Node::may_halt`] and either a halt or another turn. A halted core becomes runnable when
//! another core's IPI reaches it ([`Platform::wake`]), when a frame arrives on its armed NIC queue
//! (the simulated interrupt), or when its deadline comes (a *timer event*: the clock only jumps to
//! a deadline when no core can run). With `check_halts`, every halt is verified: a turn run right
//! after the decision must find nothing to do (no letter, no frame, no network work).
//!
//! The NIC is simulated as far as the takeover needs it ([`NicLog`]): which core's ring each
//! queue's frames reach (a queue adopted by another core reaches the adopter's new ring), and
//! every act on the NIC's shared side (control taken, redirection table written, vectors routed)
//! with its time and core. Core 0 starts as the NIC's home; every core can take the NIC over.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use std::rc::Rc;

use drivers::nic::{FlowMap, QueueStats};
use netd::{CoreCounters, PeerMessage, Peers, PollOutcome, SnapshotError, TransportCounters};

use drivers::nic::{GroupSet, NicError, FLOW_GROUPS};

use super::bulk::{BulkPool, BulkRegions};
use super::control::KernelHooks;
use super::flows::{NicHome, NicSource, Vector};
use super::mailbox::Mailbox;
use super::net::{MailboxPeers, NetService};
use super::takeover::AdoptError;
use super::{Instant, Next, Node, NodeConfig, Platform, Stop};

/// MSI-X vectors of the simulated NIC (QEMU's igb: 10).
pub const SIM_VECTORS: usize = 10;

/// An act on the simulated NIC's shared side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicAct {
    /// The core built its control handle.
    TookControl,
    /// The core wrote this many groups of the redirection table.
    WroteTable(usize),
    /// The core pointed a vector at a core.
    Routed(Vector, usize),
    /// The core adopted a queue (its ring re-initialised for the core).
    Adopted(u16),
}

/// The simulated NIC, shared by every core.
#[derive(Debug)]
pub struct NicLog {
    /// Which core's ring each queue's frames reach.
    pub ring_of: Vec<usize>,
    /// The redirection table as written (group → core).
    pub table: [u16; FLOW_GROUPS],
    /// Every act on the shared side: (time, core, act).
    pub acts: Vec<(Instant, usize, NicAct)>,
    /// Where each vector points.
    pub routes: Vec<Option<usize>>,
}

impl NicLog {
    fn new(queues: usize) -> Self {
        Self {
            ring_of: (0..queues).collect(),
            table: *FlowMap::round_robin(queues as u16).owners(),
            acts: Vec::new(),
            routes: (0..SIM_VECTORS)
                .map(|vector| (vector < queues.min(SIM_VECTORS - 1)).then_some(vector))
                .collect(),
        }
    }
}

/// The time the simulated NIC's log stamps acts with (the simulation's clock).
type Clock = Rc<RefCell<Instant>>;

/// One core's handle on the simulated NIC's shared side.
struct SimNicHome {
    core: usize,
    nic: Rc<RefCell<NicLog>>,
    clock: Clock,
}

impl NicHome for SimNicHome {
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError> {
        let mut nic = self.nic.borrow_mut();
        for group in changed.iter() {
            nic.table[usize::from(group)] = map.owner(group);
        }
        let at = *self.clock.borrow();
        nic.acts
            .push((at, self.core, NicAct::WroteTable(changed.len())));
        Ok(changed.len().div_ceil(4))
    }

    fn route_vector(&mut self, vector: Vector, core: usize) -> Result<(), NicError> {
        let mut nic = self.nic.borrow_mut();
        if let Vector::Queue(index) = vector {
            if let Some(route) = nic.routes.get_mut(index) {
                *route = Some(core);
            }
        }
        let at = *self.clock.borrow();
        nic.acts.push((at, self.core, NicAct::Routed(vector, core)));
        Ok(())
    }

    fn vectors(&self) -> usize {
        SIM_VECTORS
    }
}

/// How a simulated core takes the NIC over.
struct SimNicSource {
    core: usize,
    nic: Rc<RefCell<NicLog>>,
    clock: Clock,
}

impl SimNicSource {
    fn home(&self) -> SimNicHome {
        SimNicHome {
            core: self.core,
            nic: self.nic.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl NicSource for SimNicSource {
    fn take_control(&mut self) -> Result<Box<dyn NicHome>, NicError> {
        let at = *self.clock.borrow();
        self.nic
            .borrow_mut()
            .acts
            .push((at, self.core, NicAct::TookControl));
        Ok(Box::new(self.home()))
    }

    fn vectors(&self) -> usize {
        SIM_VECTORS
    }
}

/// A message the fake network sends: `Frame` bytes = origin (u16), sequence (u64), then filler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sent {
    /// Sending core.
    pub from: u16,
    /// Destination core.
    pub to: u16,
    /// Sequence number (unique per sender).
    pub sequence: u64,
}

/// Work the test hands a fake network.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// A frame for this core itself (consumed by one poll).
    Local,
    /// Send one message of `size` filler bytes to `to`.
    Send {
        /// Destination core.
        to: u16,
        /// Filler bytes (small ones travel inline, large ones by reference).
        size: usize,
    },
    /// A client request for a key `to` owns: a `KvRequest` with a `size`-byte value; the owner
    /// answers with a `KvReply` carrying the value back.
    Request {
        /// The key's owner.
        to: u16,
        /// Value bytes.
        size: usize,
    },
}

/// What a fake network saw, shared with the test.
#[derive(Debug, Default)]
pub struct NetLog {
    /// `Frame` messages accepted by the transport.
    pub accepted: Vec<Sent>,
    /// Requests accepted (`sequence` = ticket) and refused.
    pub requests: Vec<(Sent, Result<(), netd::PeerError>)>,
    /// Messages the transport refused, with the error.
    pub refused: Vec<(Sent, netd::PeerError)>,
    /// Messages received (decoded from `Frame`s).
    pub received: Vec<Sent>,
    /// Requests completed here (ticket, value length), and when.
    pub completed: Vec<(u32, usize, Instant)>,
    /// Requests served for other cores.
    pub served: u64,
    /// Bytes that did not check (a corrupted value).
    pub corrupt: u64,
}

/// A network service with no NIC: a queue of work items the test injects, a TX backlog, an
/// optional deadline, and a log of everything sent and received.
pub struct FakeNet {
    core: u16,
    /// Work waiting in the "RX ring".
    pub rx: VecDeque<Work>,
    /// Work waiting in the ring of a queue this core adopted, and that queue.
    pub adopted_rx: VecDeque<Work>,
    /// The queue this core adopted, if any.
    pub adopted: Option<u16>,
    nic: Option<(Rc<RefCell<NicLog>>, Clock)>,
    /// When this core last polled its queues.
    pub last_poll: Option<Instant>,
    /// Frames produced and not yet "transmitted" (one per turn leaves).
    pub tx_backlog: usize,
    /// A smoltcp-like deadline, if any.
    pub deadline: Option<Instant>,
    /// Whether the queue's interrupt is unmasked (set before a halt, cleared when it fires).
    pub armed: bool,
    /// Items taken per poll.
    pub batch: usize,
    next_sequence: u64,
    next_ticket: u32,
    /// The core's flow map.
    pub flows: FlowMap,
    /// The shared log.
    pub log: Rc<RefCell<NetLog>>,
    /// Polls run.
    pub polls: u64,
    /// Items handled (frames taken, messages handled) — what a halt check compares.
    pub handled: u64,
}

impl FakeNet {
    /// A fake network for `core`, in a machine of `queues` queues.
    pub fn new(core: u16, queues: u16) -> Self {
        Self {
            core,
            rx: VecDeque::new(),
            adopted_rx: VecDeque::new(),
            adopted: None,
            nic: None,
            last_poll: None,
            tx_backlog: 0,
            deadline: None,
            armed: false,
            batch: 4,
            next_sequence: 0,
            next_ticket: 0,
            flows: FlowMap::round_robin(queues),
            log: Rc::new(RefCell::new(NetLog::default())),
            polls: 0,
            handled: 0,
        }
    }

    fn frame(&mut self, to: u16, size: usize) -> (Sent, Vec<u8>) {
        let sent = Sent {
            from: self.core,
            to,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        let mut bytes = vec![0u8; 10 + size];
        bytes[0..2].copy_from_slice(&self.core.to_le_bytes());
        bytes[2..10].copy_from_slice(&sent.sequence.to_le_bytes());
        for (index, byte) in bytes[10..].iter_mut().enumerate() {
            *byte = (index as u64 ^ sent.sequence) as u8;
        }
        (sent, bytes)
    }
}

fn value_byte(ticket: u32, index: usize) -> u8 {
    (index as u32).wrapping_mul(31).wrapping_add(ticket) as u8
}

impl NetService for FakeNet {
    fn poll(&mut self, now: Instant, peers: &mut MailboxPeers<'_>) -> PollOutcome {
        self.polls += 1;
        self.last_poll = Some(now);
        let mut received = 0;
        for _ in 0..self.batch {
            let Some(work) = self.rx.pop_front().or_else(|| self.adopted_rx.pop_front()) else {
                break;
            };
            received += 1;
            self.handled += 1;
            match work {
                Work::Local => self.tx_backlog += 1,
                Work::Send { to, size } => {
                    let (sent, bytes) = self.frame(to, size);
                    match peers.send(to, &PeerMessage::Frame(&bytes)) {
                        Ok(()) => self.log.borrow_mut().accepted.push(sent),
                        Err(error) => self.log.borrow_mut().refused.push((sent, error)),
                    }
                }
                Work::Request { to, size } => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    let value: Vec<u8> = (0..size).map(|i| value_byte(ticket, i)).collect();
                    let request = netd::KvRequest {
                        service: 11211,
                        operation: netd::KvOperation::Store {
                            mode: netd::peers::StoreMode::Set,
                            flags: 0,
                            exptime: 0,
                        },
                        noreply: false,
                        origin: self.core,
                        ticket,
                        sequence: 0,
                        key: b"key",
                        value: &value,
                    };
                    let sent = Sent {
                        from: self.core,
                        to,
                        sequence: u64::from(ticket),
                    };
                    let result = peers.send(to, &PeerMessage::KvRequest(request));
                    self.log.borrow_mut().requests.push((sent, result));
                }
            }
        }
        let transmitted = usize::from(self.tx_backlog > 0);
        self.tx_backlog -= transmitted;
        let due = self.deadline.is_some_and(|at| at <= now);
        if due {
            self.deadline = None;
        }
        PollOutcome {
            received,
            transmitted,
            more_work: !self.rx.is_empty() || !self.adopted_rx.is_empty() || self.tx_backlog > 0,
            next_deadline: self.deadline.map(super::net::net_instant),
            stats_wanted: false,
            rx_quota: self.batch,
            cycles: 0,
            hold_until: None,
        }
    }

    fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &PeerMessage<'_>,
        peers: &mut MailboxPeers<'_>,
    ) {
        self.handled += 1;
        match message {
            PeerMessage::Frame(bytes) => {
                let from = u16::from_le_bytes([bytes[0], bytes[1]]);
                let mut sequence = [0u8; 8];
                sequence.copy_from_slice(&bytes[2..10]);
                let sequence = u64::from_le_bytes(sequence);
                let intact = bytes[10..]
                    .iter()
                    .enumerate()
                    .all(|(index, byte)| *byte == (index as u64 ^ sequence) as u8);
                let mut log = self.log.borrow_mut();
                if !intact {
                    log.corrupt += 1;
                }
                log.received.push(Sent {
                    from,
                    to: self.core,
                    sequence,
                });
            }
            PeerMessage::KvRequest(request) => {
                self.log.borrow_mut().served += 1;
                let reply = netd::KvReply {
                    service: request.service,
                    status: netd::KvStatus::Value { flags: 0, cas: 1 },
                    owner: self.core,
                    ticket: request.ticket,
                    sequence: request.sequence,
                    key: request.key,
                    value: request.value,
                };
                let _ = peers.send(request.origin, &PeerMessage::KvReply(reply));
            }
            PeerMessage::KvReply(reply) => {
                let intact = reply
                    .value
                    .iter()
                    .enumerate()
                    .all(|(index, byte)| *byte == value_byte(reply.ticket, index));
                let mut log = self.log.borrow_mut();
                if !intact {
                    log.corrupt += 1;
                }
                log.completed.push((reply.ticket, reply.value.len(), now));
            }
            PeerMessage::Neighbour(_) => {}
        }
    }

    fn arm_and_check(&mut self) -> bool {
        self.armed = true;
        !self.rx.is_empty() || !self.adopted_rx.is_empty()
    }

    fn flow_map_mut(&mut self) -> &mut FlowMap {
        &mut self.flows
    }

    fn snapshot_bytes(&self, _now: Instant) -> Vec<u8> {
        netd::CoreStats::empty(self.core).encode()
    }

    fn absorb_snapshot(&mut self, _core: u16, bytes: &[u8]) -> Result<(), SnapshotError> {
        netd::CoreStats::decode(bytes).map(|_| ())
    }

    fn set_transport_counters(&mut self, _counters: &TransportCounters) {}

    fn set_live_cores(&mut self, _mask: u64) {}

    fn counters(&self) -> CoreCounters {
        CoreCounters::default()
    }

    fn queue_stats(&self) -> QueueStats {
        QueueStats::default()
    }

    fn adopt_queue(&mut self, queue: u16) -> Result<(), AdoptError> {
        if queue == self.core {
            return Err(AdoptError::AlreadyHeld(queue));
        }
        if let Some(held) = self.adopted {
            return Err(AdoptError::AlreadyAdopting(held));
        }
        let (nic, clock) = self.nic.as_ref().ok_or(AdoptError::Unsupported)?;
        let mut nic = nic.borrow_mut();
        let slot = nic
            .ring_of
            .get_mut(usize::from(queue))
            .ok_or(AdoptError::NoSuchQueue(queue))?;
        // The ring is re-initialised: what waited in the failed core's ring is lost.
        *slot = usize::from(self.core);
        let at = *clock.borrow();
        nic.acts
            .push((at, usize::from(self.core), NicAct::Adopted(queue)));
        self.adopted = Some(queue);
        self.adopted_rx.clear();
        Ok(())
    }
}

/// The machine as the simulated cores see it: the shared clock, IPIs, the console.
struct SimPlatform {
    now: Instant,
    core: usize,
    wakes: Rc<RefCell<Vec<bool>>>,
    console: Rc<RefCell<Vec<String>>>,
    ipis: Rc<RefCell<u64>>,
    forwards: Rc<RefCell<Vec<Vec<usize>>>>,
}

impl Platform for SimPlatform {
    fn now(&self) -> Instant {
        self.now
    }

    fn cycles(&self) -> u64 {
        self.now.as_nanos()
    }

    fn cycles_per_ms(&self) -> u64 {
        1_000_000
    }

    fn wake(&mut self, core: usize) {
        *self.ipis.borrow_mut() += 1;
        if let Some(flag) = self.wakes.borrow_mut().get_mut(core) {
            *flag = true;
        }
    }

    fn print(&mut self, line: core::fmt::Arguments<'_>) {
        self.console.borrow_mut().push(std::format!("{line}"));
    }

    fn set_wake_forwards(&mut self, cores: &[usize]) {
        if let Some(slot) = self.forwards.borrow_mut().get_mut(self.core) {
            *slot = cores.to_vec();
        }
    }
}

/// A core's state in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreState {
    /// It runs turns.
    Running,
    /// It halted, until an interrupt or `until`.
    Halted {
        /// Its timer.
        until: Option<Instant>,
    },
    /// The test froze it (a core that stops answering), or it stopped for good.
    Frozen,
}

/// Settings of a simulated machine.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Cores.
    pub cores: usize,
    /// Bytes of each core's bulk pool.
    pub pool_bytes: usize,
    /// The monitors' heartbeat period.
    pub heartbeat_ns: u64,
    /// Heartbeats missed before a verdict.
    pub missed: u32,
    /// Simulated time each turn takes.
    pub turn_ns: u64,
    /// Verify every halt (a turn right after it must find nothing to do).
    pub check_halts: bool,
    /// Scheduler seed.
    pub seed: u64,
}

impl SimConfig {
    /// `cores` cores, 64 KiB pools, heartbeats every 50 ms (K = 4), 1 µs turns, halts checked.
    pub fn new(cores: usize) -> Self {
        Self {
            cores,
            pool_bytes: 64 << 10,
            heartbeat_ns: 50_000_000,
            missed: 4,
            turn_ns: 1_000,
            check_halts: true,
            seed: 1,
        }
    }
}

/// A simulated machine.
pub struct Sim {
    /// The nodes, by core.
    pub nodes: Vec<Node<FakeNet>>,
    /// Each core's state.
    pub states: Vec<CoreState>,
    /// Each core's network log.
    pub logs: Vec<Rc<RefCell<NetLog>>>,
    /// The clock.
    pub now: Instant,
    /// Times the clock jumped to a core's deadline to wake it.
    pub timer_events: u64,
    /// Steps run.
    pub steps: u64,
    /// Halts whose check found work (with `check_halts` the simulation panics instead).
    pub bad_halts: u64,
    config: SimConfig,
    wakes: Rc<RefCell<Vec<bool>>>,
    /// Everything the cores printed.
    pub console: Rc<RefCell<Vec<String>>>,
    /// IPIs sent.
    pub ipis: Rc<RefCell<u64>>,
    /// The simulated NIC.
    pub nic: Rc<RefCell<NicLog>>,
    /// Whom each core wakes on a shared vector (what it last told its platform).
    pub forwards: Rc<RefCell<Vec<Vec<usize>>>>,
    clock: Clock,
    rng: u64,
}

/// One URPC channel between every pair of `cores` cores, in leaked regions (both ends live for
/// the rest of the test process): `mesh[a][b]` is core `a`'s end towards core `b`.
#[allow(clippy::needless_range_loop)] // pairs (a, b) index both rows: clearer than iterators
pub fn full_mesh(cores: usize) -> Vec<Vec<Option<urpc::Endpoint<'static>>>> {
    let mut mesh: Vec<Vec<Option<urpc::Endpoint<'static>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    for a in 0..cores {
        for b in a + 1..cores {
            let region: &'static urpc::ChannelRegion = Box::leak(urpc::ChannelRegion::new_boxed());
            mesh[a][b] = Some(region.claim(urpc::Side::A).expect("fresh"));
            mesh[b][a] = Some(region.claim(urpc::Side::B).expect("fresh"));
        }
    }
    mesh
}

impl Sim {
    /// Builds `config.cores` nodes connected by URPC channels, each with a fake network.
    pub fn new(config: SimConfig) -> Self {
        let cores = config.cores;
        let endpoints = full_mesh(cores);
        let pools: Vec<(usize, usize)> = (0..cores)
            .map(|_| {
                let memory: &'static mut [u64] =
                    Box::leak(vec![0u64; config.pool_bytes / 8].into_boxed_slice());
                (memory.as_mut_ptr().expose_provenance(), config.pool_bytes)
            })
            .collect();
        // SAFETY: each range is a fresh leaked allocation, used by its core's pool and read by
        // the others only while lent.
        let regions = unsafe { BulkRegions::new(&pools) };
        let now = Instant::from_nanos(1_000_000);
        let nic = Rc::new(RefCell::new(NicLog::new(cores)));
        let clock: Clock = Rc::new(RefCell::new(now));
        let mut nodes = Vec::new();
        let mut logs = Vec::new();
        for (core, ends) in endpoints.into_iter().enumerate() {
            let (base, length) = pools[core];
            // SAFETY: the same leaked memory, owned by this pool alone.
            let pool = unsafe { BulkPool::new(base, length, urpc::RegionId(core as u16)) };
            let mailbox = Mailbox::new(core, ends, pool);
            let me = monitor::CoreId::new(core as u8).expect("few cores");
            let mut monitor_config = monitor::Config::new(me, monitor::CoreSet::first(cores));
            monitor_config.heartbeat_period_ns = config.heartbeat_ns;
            monitor_config.missed_heartbeats = config.missed;
            monitor_config.retransmit_ns = config.heartbeat_ns / 2;
            let info = monitor::CoreInfo {
                core: me,
                apic_id: core as u32,
                numa_node: 0,
                memory: monitor::Region { base: 0, len: 0 },
            };
            let hooks = KernelHooks {
                counters: [0; monitor::COUNTERS],
            };
            let monitor = monitor::Monitor::new(monitor_config, info, hooks, now).expect("valid");
            let mut net = FakeNet::new(core as u16, cores as u16);
            net.nic = Some((nic.clone(), clock.clone()));
            logs.push(net.log.clone());
            let source = SimNicSource {
                core,
                nic: nic.clone(),
                clock: clock.clone(),
            };
            // Core 0 is the NIC's home at boot: it holds the control from the start.
            let steering = (core == 0).then(|| Box::new(source.home()) as Box<dyn NicHome>);
            let node_config = NodeConfig {
                core,
                cores,
                queues: cores as u16,
                poll_after_traffic_ns: 0,
                tick_ns: None,
                stats_period_ns: 10 * config.heartbeat_ns,
            };
            nodes.push(
                Node::new(
                    node_config,
                    mailbox,
                    regions.clone(),
                    Some(net),
                    steering,
                    monitor,
                    None,
                    now,
                )
                .with_nic(Box::new(source)),
            );
        }
        Self {
            nodes,
            states: vec![CoreState::Running; cores],
            logs,
            now,
            timer_events: 0,
            steps: 0,
            bad_halts: 0,
            config,
            wakes: Rc::new(RefCell::new(vec![false; cores])),
            console: Rc::new(RefCell::new(Vec::new())),
            ipis: Rc::new(RefCell::new(0)),
            nic,
            forwards: Rc::new(RefCell::new(vec![Vec::new(); cores])),
            clock,
            rng: config.seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn platform(&self, core: usize) -> SimPlatform {
        *self.clock.borrow_mut() = self.now;
        SimPlatform {
            now: self.now,
            core,
            wakes: self.wakes.clone(),
            console: self.console.clone(),
            ipis: self.ipis.clone(),
            forwards: self.forwards.clone(),
        }
    }

    /// Offers a work item to NIC queue `queue`: it reaches the ring of whichever core holds the
    /// queue now (its own core, or the core that adopted it); an armed queue interrupts a halted
    /// core.
    pub fn inject_queue(&mut self, queue: u16, work: Work) {
        let core = self.nic.borrow().ring_of[usize::from(queue)];
        let Some(net) = self.nodes[core].net_mut() else {
            return;
        };
        if net.adopted == Some(queue) {
            net.adopted_rx.push_back(work);
        } else {
            net.rx.push_back(work);
        }
        if core::mem::take(&mut net.armed) {
            self.wakes.borrow_mut()[core] = true;
        }
    }

    /// Lets a frozen core run again (a vCPU the host descheduled, rescheduled).
    pub fn thaw(&mut self, core: usize) {
        if self.states[core] == CoreState::Frozen {
            self.states[core] = CoreState::Running;
        }
    }

    /// Gives core `core` a work item on its NIC queue; an armed queue interrupts a halted core.
    pub fn inject(&mut self, core: usize, work: Work) {
        let Some(net) = self.nodes[core].net_mut() else {
            return;
        };
        net.rx.push_back(work);
        if core::mem::take(&mut net.armed) {
            self.wakes.borrow_mut()[core] = true;
        }
    }

    /// Stops scheduling `core` (it neither runs nor drains its rings any more).
    pub fn freeze(&mut self, core: usize) {
        self.states[core] = CoreState::Frozen;
    }

    /// Cores that can take a step now.
    fn runnable(&self) -> Vec<usize> {
        let wakes = self.wakes.borrow();
        (0..self.nodes.len())
            .filter(|&core| match self.states[core] {
                CoreState::Running => true,
                CoreState::Halted { until } => {
                    wakes[core] || until.is_some_and(|at| at <= self.now)
                }
                CoreState::Frozen => false,
            })
            .collect()
    }

    /// One step of one core; returns `false` when no core can run before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        let runnable = self.runnable();
        let core = if runnable.is_empty() {
            // Everyone halted: the clock jumps to the earliest deadline, a timer event.
            let earliest = self
                .states
                .iter()
                .enumerate()
                .filter_map(|(core, state)| match state {
                    CoreState::Halted { until: Some(at) } => Some((*at, core)),
                    _ => None,
                })
                .min();
            match earliest {
                Some((at, core)) if at <= limit => {
                    self.now = self.now.max(at);
                    core
                }
                _ => return false,
            }
        } else {
            runnable[(self.random() % runnable.len() as u64) as usize]
        };
        self.run_core(core);
        true
    }

    fn run_core(&mut self, core: usize) {
        self.steps += 1;
        if let CoreState::Halted { until } = self.states[core] {
            if !self.wakes.borrow()[core] && until.is_some_and(|at| at <= self.now) {
                self.timer_events += 1;
            }
            self.nodes[core].woke();
        }
        self.wakes.borrow_mut()[core] = false;
        if let Some(net) = self.nodes[core].net_mut() {
            net.armed = false; // running: the interrupt auto-masked or was never needed
        }
        let mut platform = self.platform(core);
        let next = self.nodes[core].turn(self.now, &mut platform);
        self.now = self.now.after(self.config.turn_ns);
        self.states[core] = match next {
            Next::Run => CoreState::Running,
            Next::Stop(Stop::Fenced | Stop::Hang | Stop::Fault(_)) => CoreState::Frozen,
            Next::Halt { until } => {
                let now = self.now;
                if self.nodes[core].may_halt(now, until) {
                    if self.config.check_halts {
                        self.check_halt(core, until);
                    }
                    CoreState::Halted { until }
                } else {
                    self.nodes[core].woke();
                    CoreState::Running
                }
            }
        };
    }

    /// A turn right after a halt decision must find nothing: no letter received, nothing for the
    /// network, and the deadline still ahead.
    fn check_halt(&mut self, core: usize, until: Option<Instant>) {
        assert!(
            until.is_none_or(|at| at > self.now),
            "halted past its deadline"
        );
        let mut platform = self.platform(core);
        let node = &mut self.nodes[core];
        node.woke();
        let received = node.mailbox.counters().received;
        let handled = node.net().map_or(0, |net| net.handled);
        // A home suspended after a pause leaves its rings alone until it heard every peer.
        let backlog = match node.net() {
            Some(_) if node.takeover.suspended() => 0,
            Some(net) => net.rx.len() + net.adopted_rx.len() + net.tx_backlog,
            None => 0,
        };
        let next = node.turn(self.now, &mut platform);
        let received_after = node.mailbox.counters().received;
        let handled_after = node.net().map_or(0, |net| net.handled);
        let found_work = received_after != received
            || handled_after != handled
            || backlog > 0
            || next == Next::Run;
        if found_work {
            self.bad_halts += 1;
            panic!(
                "core {core} halted with work pending (letters {received} -> {received_after}, network items {handled} -> {handled_after}, backlog {backlog}, next {next:?})"
            );
        }
        let again = node.may_halt(self.now, until);
        assert!(again, "core {core}: the second halt check disagreed");
    }

    /// Runs until no core can run before `limit` (or `max_steps`); returns the steps taken.
    pub fn run_until(&mut self, limit: Instant, max_steps: u64) -> u64 {
        let start = self.steps;
        while self.steps - start < max_steps && self.step(limit) {}
        self.steps - start
    }

    /// Runs for `nanos` of simulated time (bounded in steps).
    pub fn run_for(&mut self, nanos: u64) -> u64 {
        let limit = self.now.after(nanos);
        self.run_until(limit, 10_000_000)
    }

    /// Whether every core is halted with no wake-up pending.
    pub fn quiet(&self) -> bool {
        self.runnable().is_empty()
    }
}
