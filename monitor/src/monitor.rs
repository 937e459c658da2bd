//! The per-core monitor: configuration, the traits the kernel implements ([`Outbox`], [`Hooks`]),
//! and the entry points that drive the state machine ([`Monitor::handle`], [`Monitor::tick`]).
//! Each protocol keeps its state and handlers in its own module (`boot`, `failure`, `names`,
//! `binding`, `agreement`, `stats`); this module owns the dispatch.

use crate::agreement::AgreementState;
use crate::binding::BindingTable;
use crate::event::{Event, EventQueue};
use crate::message::{DecodeError, Message, Vote, COUNTERS};
use crate::names::NameState;
use crate::stats::StatsState;
use crate::types::{Change, CoreId, CoreInfo, CoreSet, Instant, Region, MAX_CORES};

/// Where the monitor puts the messages it sends. The kernel implements it over its URPC channels
/// (encode with [`Message::encode`], publish one slot). A send may be dropped when a channel is
/// full: every message whose loss matters is re-sent by [`Monitor::tick`] until acknowledged.
pub trait Outbox {
    /// Sends `message` to the monitor on core `to` (never this core: the monitor loops messages to
    /// itself internally).
    fn send(&mut self, to: CoreId, message: Message);
}

/// Local subsystems the monitor consults synchronously.
pub trait Hooks {
    /// Votes on a change being agreed. `Yes` means the core can apply it and holds it prepared
    /// (reserves what it needs) until [`crate::Event::ChangeCommitted`] or
    /// [`crate::Event::ChangeAborted`]; `No` vetoes it.
    fn vote(&mut self, change: &Change) -> Vote;
    /// Allocates `len` bytes of this core's memory for a channel region, or `None` if there is
    /// none to spare.
    fn allocate_region(&mut self, len: u64) -> Option<Region>;
    /// Returns a region from [`Hooks::allocate_region`] whose binding failed.
    fn free_region(&mut self, region: Region);
    /// This core's counters, reported in statistics gatherings.
    fn counters(&mut self) -> [u64; COUNTERS];
}

/// Parameters of a monitor. Durations are nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// This core.
    pub core: CoreId,
    /// Every core started in this machine (this one included); the lowest live one leads (boot
    /// completion, name directory).
    pub expected: CoreSet,
    /// Interval between heartbeats.
    pub heartbeat_period_ns: u64,
    /// A peer silent for this many heartbeat periods is declared failed (K).
    pub missed_heartbeats: u32,
    /// A peer never heard from is declared failed this long after the monitor started.
    pub boot_timeout_ns: u64,
    /// Interval between re-sends of unacknowledged messages (and between timeout checks).
    pub retransmit_ns: u64,
    /// An agreement whose votes are not all in by then aborts.
    pub prepare_timeout_ns: u64,
    /// A binding not completed by then fails.
    pub bind_timeout_ns: u64,
    /// A statistics gathering not completed by then reports what arrived.
    pub stats_timeout_ns: u64,
    /// Size of the region a client lends for each binding.
    pub binding_region_bytes: u64,
}

const MILLISECOND: u64 = 1_000_000;

impl Config {
    /// Defaults sized for URPC latencies of microseconds and a kernel that ticks every
    /// millisecond: heartbeat every 10 ms, failed after 3 missed, re-send every 2 ms.
    pub fn new(core: CoreId, expected: CoreSet) -> Config {
        Config {
            core,
            expected,
            heartbeat_period_ns: 10 * MILLISECOND,
            missed_heartbeats: 3,
            boot_timeout_ns: 2_000 * MILLISECOND,
            retransmit_ns: 2 * MILLISECOND,
            prepare_timeout_ns: 50 * MILLISECOND,
            bind_timeout_ns: 100 * MILLISECOND,
            stats_timeout_ns: 50 * MILLISECOND,
            binding_region_bytes: 2 * 4096,
        }
    }

    /// Silence after which a peer that was heard from is declared failed.
    pub fn failure_timeout_ns(&self) -> u64 {
        self.heartbeat_period_ns
            .saturating_mul(self.missed_heartbeats as u64)
    }
}

/// Why a monitor could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `config.core` is not in `config.expected`.
    CoreNotExpected,
    /// `info.core` differs from `config.core`.
    InfoForAnotherCore,
    /// A period or timeout is zero, or K is zero.
    ZeroDuration,
}

/// The monitor's own counters (for debugging and the statistics gathering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorCounters {
    /// Messages handled (including those looped to this core).
    pub messages_in: u64,
    /// Messages handed to the outbox.
    pub messages_out: u64,
    /// Messages ignored because their sender is declared failed.
    pub from_failed: u64,
    /// Messages that made no sense in the current state (from a core outside the machine, a
    /// decision contradicting this core's state, ...): counted, otherwise ignored.
    pub anomalies: u64,
    /// Bytes that failed to decode (counted by [`Monitor::handle_bytes`]).
    pub decode_errors: u64,
    /// Events lost because the caller did not drain the queue.
    pub events_dropped: u64,
    /// Times `tick` found it had not run for more than a heartbeat period (this core was
    /// descheduled or busy): the silence of peers during such a pause is not held against them.
    pub pauses_forgiven: u64,
}

/// Capacity of the queue of messages this monitor sends to itself.
const LOOPBACK_CAPACITY: usize = 16;

/// The monitor of one core: an explicit state machine. The kernel delivers messages with
/// [`Monitor::handle`], calls [`Monitor::tick`] by [`Monitor::next_deadline`], calls the request
/// entry points, and drains [`Monitor::poll_event`] after each call.
pub struct Monitor<H: Hooks> {
    pub(crate) config: Config,
    pub(crate) hooks: H,
    pub(crate) started: Instant,
    pub(crate) events: EventQueue,
    pub(crate) counters: MonitorCounters,
    loopback: [Option<Message>; LOOPBACK_CAPACITY],
    loopback_head: usize,
    loopback_len: usize,

    // Membership and failure detection (module `failure`).
    pub(crate) failed: CoreSet,
    pub(crate) fenced: bool,
    pub(crate) last_heard: [Option<Instant>; MAX_CORES],
    /// When `tick` last ran (to notice this core's own pauses).
    pub(crate) last_tick: Option<Instant>,
    pub(crate) next_heartbeat: Instant,
    pub(crate) next_sweep: Instant,

    // Boot handshake (module `boot`).
    pub(crate) peers: [Option<CoreInfo>; MAX_CORES],
    pub(crate) hello_acked: CoreSet,
    pub(crate) boot_complete: bool,
    pub(crate) boot_acked: CoreSet,

    pub(crate) names: NameState,
    pub(crate) bindings: BindingTable,
    pub(crate) agreement: AgreementState,
    pub(crate) stats: StatsState,
}

impl<H: Hooks> Monitor<H> {
    /// A monitor for the core described by `info`, started at `now`. Nothing is sent until the
    /// first [`Monitor::tick`], which greets every expected peer.
    pub fn new(
        config: Config,
        info: CoreInfo,
        hooks: H,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        if !config.expected.contains(config.core) {
            return Err(ConfigError::CoreNotExpected);
        }
        if info.core != config.core {
            return Err(ConfigError::InfoForAnotherCore);
        }
        if config.heartbeat_period_ns == 0
            || config.missed_heartbeats == 0
            || config.retransmit_ns == 0
            || config.prepare_timeout_ns == 0
            || config.bind_timeout_ns == 0
            || config.stats_timeout_ns == 0
            || config.boot_timeout_ns == 0
        {
            return Err(ConfigError::ZeroDuration);
        }
        let mut peers = [None; MAX_CORES];
        peers[config.core.index()] = Some(info);
        Ok(Monitor {
            config,
            hooks,
            started: now,
            events: EventQueue::new(),
            counters: MonitorCounters::default(),
            loopback: [None; LOOPBACK_CAPACITY],
            loopback_head: 0,
            loopback_len: 0,
            failed: CoreSet::EMPTY,
            fenced: false,
            last_heard: [None; MAX_CORES],
            last_tick: None,
            next_heartbeat: now,
            next_sweep: now,
            peers,
            hello_acked: CoreSet::EMPTY,
            boot_complete: false,
            boot_acked: CoreSet::EMPTY,
            names: NameState::new(),
            bindings: BindingTable::new(),
            agreement: AgreementState::new(),
            stats: StatsState::new(),
        })
    }

    /// This core.
    pub fn core(&self) -> CoreId {
        self.config.core
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The local hooks, mutably (to change what they answer).
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// Cores declared failed so far (verdicts are final).
    pub fn failed(&self) -> CoreSet {
        self.failed
    }

    /// Live cores as this monitor knows them: expected and not failed.
    pub fn live(&self) -> CoreSet {
        self.config.expected.difference(self.failed)
    }

    /// The leader: the lowest live core. It completes the boot handshake and hosts the name
    /// directory.
    pub fn leader(&self) -> CoreId {
        self.live().lowest().unwrap_or(self.config.core)
    }

    /// Whether the boot handshake has completed on this core.
    pub fn is_machine_complete(&self) -> bool {
        self.boot_complete
    }

    /// Whether another monitor declared this core failed (the monitor then does nothing more).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// What `core` announced in its greeting, if it has been heard.
    pub fn peer(&self, core: CoreId) -> Option<CoreInfo> {
        self.peers[core.index()]
    }

    /// The monitor's own counters.
    pub fn counters(&self) -> MonitorCounters {
        MonitorCounters {
            events_dropped: self.events.dropped,
            ..self.counters
        }
    }

    /// The next event for the local subsystems, if any. Drain after every call.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The latest instant by which [`Monitor::tick`] must be called again.
    pub fn next_deadline(&self) -> Instant {
        self.next_heartbeat.min(self.next_sweep)
    }

    /// Delivers a message that arrived from core `from`.
    pub fn handle(&mut self, now: Instant, from: CoreId, message: Message, out: &mut impl Outbox) {
        self.dispatch(now, from, message, out);
        self.drain_loopback(now, out);
    }

    /// Decodes and delivers a message that arrived from core `from`; malformed bytes are counted
    /// and returned as the error, and change nothing else.
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        from: CoreId,
        bytes: &[u8],
        out: &mut impl Outbox,
    ) -> Result<(), DecodeError> {
        match Message::decode(bytes) {
            Ok(message) => {
                self.handle(now, from, message, out);
                Ok(())
            }
            Err(error) => {
                self.counters.decode_errors += 1;
                Err(error)
            }
        }
    }

    /// Advances timers: heartbeats, failure detection, re-sends and timeouts. Call it no later than
    /// [`Monitor::next_deadline`]; calling it more often is harmless.
    pub fn tick(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.fenced {
            return;
        }
        self.forgive_own_pause(now);
        if now >= self.next_heartbeat {
            self.next_heartbeat = now.after(self.config.heartbeat_period_ns);
            self.send_heartbeats(out);
        }
        if now >= self.next_sweep {
            self.next_sweep = now.after(self.config.retransmit_ns);
            self.detect_failures(now, out);
            self.boot_sweep(out);
            self.names_sweep(out);
            self.bindings_sweep(now, out);
            self.agreement_sweep(now, out);
            self.stats_sweep(now, out);
        }
        self.drain_loopback(now, out);
    }

    /// Sends `message` to `to`, looping it back internally when `to` is this core.
    pub(crate) fn send(&mut self, out: &mut impl Outbox, to: CoreId, message: Message) {
        if to == self.config.core {
            if self.loopback_len == LOOPBACK_CAPACITY {
                // Dropped like a full channel would: the protocols re-send.
                return;
            }
            self.loopback[(self.loopback_head + self.loopback_len) % LOOPBACK_CAPACITY] =
                Some(message);
            self.loopback_len += 1;
        } else {
            self.counters.messages_out += 1;
            out.send(to, message);
        }
    }

    /// Sends `message` to every core of `to` (this one included if it is in the set).
    pub(crate) fn send_all(&mut self, out: &mut impl Outbox, to: CoreSet, message: Message) {
        for core in to.iter() {
            self.send(out, core, message);
        }
    }

    /// Live peers: live cores other than this one.
    pub(crate) fn live_peers(&self) -> CoreSet {
        self.live().without(self.config.core)
    }

    /// Handles what this monitor sent itself, until none is left.
    pub(crate) fn drain_loopback(&mut self, now: Instant, out: &mut impl Outbox) {
        while self.loopback_len > 0 {
            let message = self.loopback[self.loopback_head].take();
            self.loopback_head = (self.loopback_head + 1) % LOOPBACK_CAPACITY;
            self.loopback_len -= 1;
            if let Some(message) = message {
                self.dispatch(now, self.config.core, message, out);
            }
        }
    }

    fn dispatch(&mut self, now: Instant, from: CoreId, message: Message, out: &mut impl Outbox) {
        if self.fenced {
            return;
        }
        self.counters.messages_in += 1;
        if from != self.config.core {
            if !self.config.expected.contains(from) {
                self.counters.anomalies += 1;
                return;
            }
            if self.failed.contains(from) {
                // Tell it, so that a core declared failed while alive fences itself.
                self.counters.from_failed += 1;
                if !matches!(message, Message::Heartbeat { .. }) {
                    return;
                }
                let failed = self.failed;
                self.send(out, from, Message::Heartbeat { failed });
                return;
            }
            // Any message is a sign of life.
            self.last_heard[from.index()] = Some(now);
        }
        match message {
            Message::Hello(info) => self.on_hello(now, from, info, out),
            Message::HelloAck => {
                self.hello_acked.insert(from);
            }
            Message::BootComplete { members } => self.on_boot_complete(now, from, members, out),
            Message::BootCompleteAck => {
                self.boot_acked.insert(from);
            }
            Message::Heartbeat { failed } => self.merge_failed(now, failed, out),
            Message::Register { name } => self.on_register(from, name, out),
            Message::RegisterReply { name, outcome } => self.on_register_reply(from, name, outcome),
            Message::Lookup { request, name } => self.on_lookup(from, request, name, out),
            Message::LookupReply { request, owner } => {
                self.on_lookup_reply(from, request, owner, out)
            }
            Message::BindRequest {
                binding,
                name,
                region,
            } => self.on_bind_request(now, from, binding, name, region, out),
            Message::BindReply { binding, answer } => {
                self.on_bind_reply(from, binding, answer, out)
            }
            Message::BindConfirm { binding } => self.on_bind_confirm(from, binding, out),
            Message::BindCancel { binding } => self.on_bind_cancel(from, binding, out),
            Message::BindAck { binding, confirmed } => self.on_bind_ack(from, binding, confirmed),
            Message::Prepare { tx, change } => self.on_prepare(from, tx, change, out),
            Message::VoteReply { tx, vote } => self.on_vote(from, tx, vote, out),
            Message::Commit { tx } => self.on_decision(from, tx, true, out),
            Message::Abort { tx } => self.on_decision(from, tx, false, out),
            Message::DecisionAck { tx } => self.on_decision_ack(from, tx),
            Message::ResolveQuery { tx, failed } => {
                self.on_resolve_query(now, from, tx, failed, out)
            }
            Message::ResolveReply { tx, state, failed } => {
                self.on_resolve_reply(now, from, tx, state, failed, out)
            }
            Message::StatsRequest { request } => self.on_stats_request(from, request, out),
            Message::StatsReply {
                request,
                chunk,
                values,
            } => self.on_stats_reply(from, request, chunk, values),
        }
    }
}
