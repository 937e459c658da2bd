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

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use std::rc::Rc;

use drivers::nic::{FlowMap, QueueStats};
use netd::{CoreCounters, PeerMessage, Peers, PollOutcome, SnapshotError, TransportCounters};

use super::bulk::{BulkPool, BulkRegions};
use super::control::KernelHooks;
use super::mailbox::Mailbox;
use super::net::{MailboxPeers, NetService};
use super::{Instant, Next, Node, NodeConfig, Platform, Stop};

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
    flows: FlowMap,
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
        let mut received = 0;
        for _ in 0..self.batch {
            let Some(work) = self.rx.pop_front() else {
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
            more_work: !self.rx.is_empty() || self.tx_backlog > 0,
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
        !self.rx.is_empty()
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
}

/// The machine as the simulated cores see it: the shared clock, IPIs, the console.
struct SimPlatform {
    now: Instant,
    wakes: Rc<RefCell<Vec<bool>>>,
    console: Rc<RefCell<Vec<String>>>,
    ipis: Rc<RefCell<u64>>,
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
            let net = FakeNet::new(core as u16, cores as u16);
            logs.push(net.log.clone());
            let node_config = NodeConfig {
                core,
                cores,
                queues: cores as u16,
                poll_after_traffic_ns: 0,
                tick_ns: None,
                stats_period_ns: 10 * config.heartbeat_ns,
            };
            nodes.push(Node::new(
                node_config,
                mailbox,
                regions.clone(),
                Some(net),
                None,
                monitor,
                None,
                now,
            ));
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
            rng: config.seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn platform(&self) -> SimPlatform {
        SimPlatform {
            now: self.now,
            wakes: self.wakes.clone(),
            console: self.console.clone(),
            ipis: self.ipis.clone(),
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
        let mut platform = self.platform();
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
        let mut platform = self.platform();
        let node = &mut self.nodes[core];
        node.woke();
        let received = node.mailbox.counters().received;
        let handled = node.net().map_or(0, |net| net.handled);
        let backlog = node.net().map_or(0, |net| net.rx.len() + net.tx_backlog);
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
