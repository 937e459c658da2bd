//! The TCP path: each connection in its own smoltcp socket set, found by its remote end in the
//! path's [`table::Table`] (one hash lookup per segment; smoltcp looks at exactly one socket),
//! its buffers sized from the core's [`budget::Budget`], and the stream or peer service run only
//! on the connections that have work (the table's ready list).
//!
//! A segment for a known connection goes to its socket. A SYN for no connection makes one (within
//! the core's connection limit, the path's backlog of half-open connections and the budget; a
//! SYN beyond the limit is answered with a reset). Any other segment that fits no connection is
//! answered with a reset (RFC 9293 §3.10.7.1: smoltcp makes it when given no socket), unless its
//! flow group belongs to another core or was moved here from another core: then it is sent
//! there, once (that core may hold the connection; see `docs/netd.md`, "Connections across a
//! flow-group move").
//!
//! A connection makes progress when data arrives or data of ours is acknowledged; one that makes
//! none for `netd.tcp_idle_s` is reset and freed (a client that never reads stops making
//! progress once its window is shut and the application stops reading it). Keep-alive probes
//! (`netd.tcp_keepalive_s`) find dead peers: a peer silent for four intervals is dropped.

pub mod budget;
pub(crate) mod table;

use super::{smoltcp_egress, smoltcp_ingress, PathRunner, Progress, Reply, RunContext};
use crate::app::{PeerService, StreamService};
use crate::config::TcpOptions;
use crate::path::QueuedFrame;
use crate::peers::PeerMessage;
use budget::{BudgetError, Grant};
use drivers::pool::BUFFER_SIZE;
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
use table::{Connection, ConnectionId, Phase, Remote, Table};

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Segments a TCP run ingests before the application runs on the connections (and their ACKs
/// and data leave): one batch per service keeps ACKs and windows moving during a long run.
const SEGMENTS_PER_SERVICE: usize = 32;

/// Most connections one service call visits; the rest stay ready for the next.
const VISITS_PER_SERVICE: usize = 256;

/// A half-open connection whose handshake does not complete within this is freed.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// At a full backlog, a new SYN evicts the oldest half-open connection only if that one has
/// waited this long (one initial retransmission timeout, RFC 6298 §2.1: its client has had time
/// to answer our SYN-ACK); otherwise the SYN is dropped unanswered and its client retransmits it.
/// A burst of real clients larger than the backlog is thus served a backlog at a time instead of
/// having handshakes evicted while their ACKs are on the way; a SYN flood still cannot hold a
/// slot longer than this against new SYNs.
pub const SYN_EVICTION_AGE: Duration = Duration::from_secs(1);

/// A data segment this long or longer counts as bulk traffic (receive moderation,
/// `netd.rx_hold_us`, and egress coalescing, `netd.tcp_coalesce_us`): request/response traffic
/// of small messages is never held.
pub const BULK_SEGMENT: usize = 1024;

/// A streaming connection's output is not held once this much waits to be sent.
pub const COALESCE_BYTES: usize = 48 << 10;

/// How many keep-alive intervals a silent peer is given before its connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 4;

/// What a TCP path noticed in a run, for the core to count (see [`TcpCounters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpEvents {
    /// SYNs refused with a reset because the core holds its connection limit.
    pub(crate) refused_limit: u64,
    /// SYNs refused with a reset because the budget or the heap could not hold the connection.
    pub(crate) refused_memory: u64,
    /// Half-open connections dropped to make room for a new SYN (a full backlog whose oldest
    /// handshake had waited [`SYN_EVICTION_AGE`]).
    pub(crate) backlog_evictions: u64,
    /// SYNs dropped unanswered at a full backlog of younger handshakes (the client retransmits).
    pub(crate) syn_drops: u64,
    /// Half-open connections that did not complete their handshake in time.
    pub(crate) half_open_timeouts: u64,
    /// Connections reset after `netd.tcp_idle_s` without progress.
    pub(crate) idle_timeouts: u64,
    /// Segments that fit no connection, answered with a reset (none for a reset).
    pub(crate) stray_segments: u64,
    /// Segments of no local connection sent to the core that owns their flow, or owned it
    /// before a move.
    pub(crate) handed_over: u64,
    /// Data segments of at least [`BULK_SEGMENT`] bytes taken (receive moderation).
    pub(crate) bulk_segments: u64,
}

impl TcpEvents {
    /// Adds `other`.
    pub(crate) fn add(&mut self, other: &TcpEvents) {
        self.refused_limit += other.refused_limit;
        self.refused_memory += other.refused_memory;
        self.backlog_evictions += other.backlog_evictions;
        self.syn_drops += other.syn_drops;
        self.half_open_timeouts += other.half_open_timeouts;
        self.idle_timeouts += other.idle_timeouts;
        self.stray_segments += other.stray_segments;
        self.handed_over += other.handed_over;
        self.bulk_segments += other.bulk_segments;
    }
}

/// A TCP path's counters in `/stats`: its table now, and what its runs noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Connections in the table now (half-open, open and closing).
    pub connections: u64,
    /// Half-open connections now.
    pub half_open: u64,
    /// The most connections the table held at once.
    pub most_connections: u64,
    /// Connections on the ready list now.
    pub ready: u64,
    /// SYNs refused at the connection limit.
    pub refused_limit: u64,
    /// SYNs refused for memory (budget or heap).
    pub refused_memory: u64,
    /// Half-open connections evicted by a full backlog.
    pub backlog_evictions: u64,
    /// Half-open connections timed out.
    pub half_open_timeouts: u64,
    /// Connections reset for idleness.
    pub idle_timeouts: u64,
    /// Stray segments answered with a reset.
    pub stray_segments: u64,
    /// Segments handed to the core owning their flow.
    pub handed_over: u64,
    /// SYNs dropped at a full backlog of handshakes younger than [`SYN_EVICTION_AGE`].
    pub syn_drops: u64,
}

scalar_counters!(TcpCounters {
    connections,
    half_open,
    most_connections,
    ready,
    refused_limit,
    refused_memory,
    backlog_evictions,
    half_open_timeouts,
    idle_timeouts,
    stray_segments,
    handed_over,
    syn_drops,
});

impl TcpCounters {
    /// The table's gauges with the run events counted so far.
    pub(crate) fn with_events(mut self, events: &TcpEvents) -> Self {
        self.refused_limit = events.refused_limit;
        self.refused_memory = events.refused_memory;
        self.backlog_evictions = events.backlog_evictions;
        self.half_open_timeouts = events.half_open_timeouts;
        self.idle_timeouts = events.idle_timeouts;
        self.stray_segments = events.stray_segments;
        self.handed_over = events.handed_over;
        self.syn_drops = events.syn_drops;
        self
    }
}

/// The application of a TCP path, in its role.
pub(crate) enum TcpApp {
    /// A stream service.
    Stream(Box<dyn StreamService>),
    /// A peer (key-value) service: a stream service that also gets peer messages.
    Peer(Box<dyn PeerService>),
}

impl TcpApp {
    fn stream(&mut self) -> &mut dyn StreamService {
        match self {
            TcpApp::Stream(app) => app.as_mut(),
            TcpApp::Peer(app) => app.as_mut(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TcpApp::Stream(app) => app.name(),
            TcpApp::Peer(app) => app.name(),
        }
    }
}

/// The connection timers, from [`TcpOptions`].
#[derive(Clone, Copy, Debug)]
struct Timers {
    backlog: usize,
    idle: Option<Duration>,
    keep_alive: Option<Duration>,
    silence: Option<Duration>,
    coalesce: Option<Duration>,
}

impl Timers {
    fn from(options: &TcpOptions) -> Self {
        let seconds = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
        let keep_alive = seconds(options.keepalive_seconds);
        Self {
            backlog: options.backlog.max(1) as usize,
            idle: seconds(options.idle_seconds),
            keep_alive,
            silence: keep_alive.map(|interval| interval * KEEPALIVE_PROBES),
            coalesce: (options.coalesce_us > 0)
                .then(|| Duration::from_micros(u64::from(options.coalesce_us))),
        }
    }
}

/// The fields of a TCP segment the path looks at before smoltcp does.
#[derive(Clone, Copy, Debug)]
struct Segment {
    remote: Remote,
    local: [u8; 4],
    local_port: u16,
    syn: bool,
    rst: bool,
    payload: usize,
}

impl Segment {
    /// Reads an Ethernet/IPv4/TCP frame (the classifier checked it; checked again here).
    fn parse(frame: &[u8]) -> Option<Self> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let payload = tcp.payload().len();
        Some(Self {
            remote: Remote {
                address: ip.src_addr().octets(),
                port: tcp.src_port(),
            },
            local: ip.dst_addr().octets(),
            local_port: tcp.dst_port(),
            syn: tcp.syn() && !tcp.ack() && !tcp.rst(),
            rst: tcp.rst(),
            payload,
        })
    }

    /// A SYN opening a connection (no ACK, no RST).
    fn opens(&self) -> bool {
        self.syn
    }
}

/// The TCP path's runner.
pub(crate) struct TcpRunner {
    port: u16,
    table: Table,
    app: TcpApp,
    timers: Timers,
    /// No socket: segments that fit no connection go here, and smoltcp answers them.
    none: SocketSet<'static>,
    /// Visit every open connection at the next service (a peer message or the application asked:
    /// a peer service routes replies to its connections itself).
    sweep: bool,
    /// The earliest moment the application asked to run again (a sweep then).
    app_deadline: Option<Instant>,
}

impl TcpRunner {
    pub(crate) fn new(port: u16, app: TcpApp, options: &TcpOptions, secret: u64) -> Self {
        Self {
            port,
            table: Table::new(secret ^ u64::from(port).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            app,
            timers: Timers::from(options),
            none: SocketSet::new(Vec::new()),
            sweep: false,
            app_deadline: None,
        }
    }

    /// The table's gauges (events are counted by the core).
    pub(crate) fn gauges(&self) -> TcpCounters {
        TcpCounters {
            connections: self.table.len() as u64,
            half_open: self.table.half_open() as u64,
            most_connections: self.table.most() as u64,
            ready: self.table.ready_len() as u64,
            ..TcpCounters::default()
        }
    }

    /// Makes a connection for the SYN `segment` in `frame` and gives it the SYN; refusals are
    /// answered with a reset.
    fn accept(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame, segment: Segment) -> Reply {
        if self.table.half_open() >= self.timers.backlog {
            match self.table.oldest_half_open() {
                Some((oldest, created)) if cx.now >= created + SYN_EVICTION_AGE => {
                    cx.notes.tcp.backlog_evictions += 1;
                    self.free(cx, oldest);
                }
                _ => {
                    cx.notes.tcp.syn_drops += 1;
                    return Reply::Nothing;
                }
            }
        }
        // Under a SYN flood (the backlog half full) new connections get the smallest buffers.
        let pressure = self.table.half_open() >= self.timers.backlog / 2;
        let grant = match cx.budget.grant(pressure) {
            Ok(grant) => grant,
            Err(BudgetError::ConnectionLimit) => {
                cx.notes.tcp.refused_limit += 1;
                return smoltcp_ingress(cx, &mut self.none, frame);
            }
            Err(BudgetError::Memory) => {
                cx.notes.tcp.refused_memory += 1;
                return smoltcp_ingress(cx, &mut self.none, frame);
            }
        };
        let id = match self.connection(cx.now, segment, grant) {
            Some(connection) => self.table.insert(connection).ok(),
            None => None,
        };
        let Some(id) = id else {
            cx.budget.release(grant);
            cx.notes.tcp.refused_memory += 1;
            return smoltcp_ingress(cx, &mut self.none, frame);
        };
        let Some(connection) = self.table.get_mut(id) else {
            return Reply::Nothing;
        };
        let reply = smoltcp_ingress(cx, &mut connection.sockets, frame);
        self.reschedule(cx, id);
        reply
    }

    /// A listening socket for `segment`'s connection with `grant`'s buffers, or `None` when
    /// the heap cannot hold them.
    fn connection(&self, now: Instant, segment: Segment, grant: Grant) -> Option<Connection> {
        let buffer = |bytes: usize| -> Option<Vec<u8>> {
            let mut storage = Vec::new();
            storage.try_reserve_exact(bytes).ok()?;
            storage.resize(bytes, 0);
            Some(storage)
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(buffer(grant.receive)?),
            tcp::SocketBuffer::new(buffer(grant.send)?),
        );
        // ACKs leave with the next egress: after each batch of segments a run ingests (so one
        // ACK covers the batch), never held back by a timer.
        socket.set_ack_delay(None);
        // The applications write whole replies; what is written leaves at once.
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(self.timers.keep_alive);
        socket.set_timeout(self.timers.silence);
        socket.listen(self.port).ok()?;
        Connection::new(segment.remote, socket, grant, now).ok()
    }

    /// Frees connection `id` (its socket, buffers and budget); tells the application if it
    /// knew the connection.
    fn free(&mut self, cx: &mut RunContext<'_>, id: ConnectionId) {
        if let Some(connection) = self.table.get_mut(id) {
            if connection.phase == Phase::Open {
                self.app.stream().on_close(&mut cx.app, id as usize);
            }
        }
        if let Some(connection) = self.table.remove(id) {
            cx.budget.release(connection.grant);
        }
    }

    /// Sets connection `id`'s timer from smoltcp's next deadline, its idle deadline and its
    /// handshake deadline; a connection with something to do now goes back on the ready list.
    fn reschedule(&mut self, cx: &mut RunContext<'_>, id: ConnectionId) {
        let timers = self.timers;
        let Some(connection) = self.table.get_mut(id) else {
            return;
        };
        let stack = match connection.egress_at {
            // Output held back: smoltcp's "now" waits for the hold (its timers are later).
            Some(at) if at > cx.now => Some(at),
            _ => cx.iface.poll_at(cx.now, &connection.sockets),
        };
        let own = match connection.phase {
            Phase::HalfOpen => Some(connection.created + HALF_OPEN_TIMEOUT),
            Phase::Open => timers.idle.map(|idle| connection.last_progress + idle),
            Phase::Closing => None,
        };
        let at = match (stack, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if at.is_some_and(|at| at <= cx.now) {
            self.table.mark_ready(id);
        } else {
            self.table.schedule(id, at);
        }
    }

    /// Serves connection `id`: its deadlines, the application, egress. Returns whether the
    /// application was told of a new connection.
    fn visit(&mut self, cx: &mut RunContext<'_>, id: ConnectionId) -> bool {
        let timers = self.timers;
        let now = cx.now;
        let Some(connection) = self.table.get_mut(id) else {
            return false;
        };
        let (phase, created, last_progress) = (
            connection.phase,
            connection.created,
            connection.last_progress,
        );
        if phase == Phase::HalfOpen && now >= created + HALF_OPEN_TIMEOUT {
            cx.notes.tcp.half_open_timeouts += 1;
            self.free(cx, id);
            return false;
        }
        let socket = connection.socket();
        if phase == Phase::Open
            && timers.idle.is_some_and(|idle| now >= last_progress + idle)
            && socket.is_active()
        {
            cx.notes.tcp.idle_timeouts += 1;
            socket.abort();
        }
        let mut opened = false;
        match socket.state() {
            // The peer reset the handshake: smoltcp went back to listening. Not a connection.
            tcp::State::Listen => {
                self.free(cx, id);
                return false;
            }
            tcp::State::SynReceived | tcp::State::SynSent => {}
            tcp::State::Closed | tcp::State::TimeWait => {
                if phase == Phase::Open {
                    self.app.stream().on_close(&mut cx.app, id as usize);
                }
                if phase != Phase::Closing {
                    self.table.set_phase(id, Phase::Closing);
                }
            }
            _ => {
                if phase == Phase::HalfOpen {
                    self.table.set_phase(id, Phase::Open);
                    opened = true;
                    self.app.stream().on_open(&mut cx.app, id as usize);
                }
                if let Some(connection) = self.table.get_mut(id) {
                    let socket = connection.sockets.get_mut::<tcp::Socket>(connection.handle);
                    self.app.stream().on_data(&mut cx.app, id as usize, socket);
                }
            }
        }
        let Some(connection) = self.table.get_mut(id) else {
            return opened;
        };
        // A streaming connection's output (and ACKs) are held up to `coalesce` so that what
        // several segments brought leaves as one large segment (one NIC packet, one doorbell);
        // never when much is pending or the connection is closing.
        let bulk = connection.bulk;
        let hold = timers.coalesce.filter(|_| {
            let socket = connection.socket();
            bulk && socket.state() == tcp::State::Established
                && socket.send_queue() < COALESCE_BYTES
        });
        let held = match (hold, connection.egress_at) {
            (Some(hold), None) => {
                connection.egress_at = Some(now + hold);
                true
            }
            (Some(_), Some(at)) => now < at,
            (None, _) => false,
        };
        if !held {
            connection.egress_at = None;
            smoltcp_egress(cx, &mut connection.sockets);
        }
        if connection.socket().state() == tcp::State::Closed {
            // Finished (or reset, the reset sent): free it now.
            if connection.phase == Phase::Open {
                self.app.stream().on_close(&mut cx.app, id as usize);
                self.table.set_phase(id, Phase::Closing);
            }
            self.free(cx, id);
        } else {
            self.reschedule(cx, id);
        }
        opened
    }

    /// What changes when a connection makes progress: bytes received (and not yet read), bytes
    /// of ours not yet acknowledged, and whether the peer may still send.
    fn progress_mark(socket: &tcp::Socket<'_>) -> (usize, usize, bool) {
        (socket.recv_queue(), socket.send_queue(), socket.may_recv())
    }

    /// Whether egress can take no more frames this run (TX queue full or the pool at its
    /// reserve): connections still ready wait for the next run.
    fn egress_blocked(cx: &RunContext<'_>) -> bool {
        cx.tx.is_full() || cx.pool.available() <= cx.tx_reserve
    }
}

impl PathRunner for TcpRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let segment = match cx.pool.bytes(frame.buffer) {
            Ok(bytes) => Segment::parse(&bytes[..length]),
            Err(_) => None,
        };
        let Some(segment) = segment else {
            return Reply::Nothing;
        };
        if let Some(id) = self.table.lookup(segment.remote) {
            let reopen = segment.opens()
                && self.table.get_mut(id).is_some_and(|connection| {
                    matches!(
                        connection.socket().state(),
                        tcp::State::TimeWait | tcp::State::Closed
                    )
                });
            if reopen {
                // A new connection from a port whose last one lingers in TIME-WAIT here.
                self.free(cx, id);
            } else {
                let Some(connection) = self.table.get_mut(id) else {
                    return Reply::Nothing;
                };
                // Progress is what smoltcp accepted: data into the receive buffer (a probe
                // beyond a shut window is not), a FIN, or data of ours acknowledged.
                let before = Self::progress_mark(connection.socket());
                if segment.payload >= BULK_SEGMENT {
                    cx.notes.tcp.bulk_segments += 1;
                    connection.bulk = true;
                } else if segment.payload > 0 {
                    connection.bulk = false;
                }
                let reply = smoltcp_ingress(cx, &mut connection.sockets, frame);
                if Self::progress_mark(connection.socket()) != before {
                    connection.last_progress = cx.now;
                }
                self.table.mark_ready(id);
                return reply;
            }
        }
        // No connection here: the flow may be another core's (a flow group that moved).
        if !frame.forwarded {
            let owner = cx.flows.tcp_owner(
                segment.remote.address,
                segment.local,
                segment.remote.port,
                segment.local_port,
                segment.opens(),
            );
            if let Some(core) = owner {
                cx.notes.tcp.handed_over += 1;
                return Reply::Forward(core);
            }
        }
        if segment.opens() {
            return self.accept(cx, frame, segment);
        }
        if !segment.rst {
            cx.notes.tcp.stray_segments += 1;
        }
        smoltcp_ingress(cx, &mut self.none, frame)
    }

    fn frames_per_service(&self) -> usize {
        SEGMENTS_PER_SERVICE
    }

    fn service(&mut self, cx: &mut RunContext<'_>) -> Progress {
        if let TcpApp::Peer(app) = &mut self.app {
            app.on_run(&mut cx.app);
        }
        let now = cx.now;
        if self.sweep || self.app_deadline.is_some_and(|at| at <= now) {
            self.sweep = false;
            self.app_deadline = None;
            self.table.mark_all_open_ready();
        }
        self.table.fire_due(now);
        let mut opened = 0;
        // Only the connections ready now: one that becomes ready again during its own visit
        // (more to send) waits for the next service.
        let visits = self.table.ready_len().min(VISITS_PER_SERVICE);
        let mut run_again = false;
        for _ in 0..visits {
            if Self::egress_blocked(cx) {
                run_again = true;
                break;
            }
            let Some(id) = self.table.pop_ready() else {
                break;
            };
            opened += u32::from(self.visit(cx, id));
        }
        if *cx.app.run_again {
            // The application wants to run again without a frame: visit every connection then.
            self.sweep = true;
        }
        // The application's deadlines (set during the visits) are kept across services that
        // do not visit every connection; the stack sees the earliest.
        self.app_deadline = match (self.app_deadline, *cx.app.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        *cx.app.wake_at = self.app_deadline;
        Progress {
            run_again: run_again || self.table.ready_len() > 0 || self.sweep,
            connections_opened: opened,
        }
    }

    fn poll_at(&mut self, _iface: &mut Interface, now: Instant) -> Option<Instant> {
        if self.table.ready_len() > 0 {
            return Some(now);
        }
        self.table.next_timer()
    }

    fn on_peer_message(&mut self, cx: &mut RunContext<'_>, message: &PeerMessage<'_>) -> bool {
        match &mut self.app {
            TcpApp::Peer(app) => {
                app.on_peer_message(&mut cx.app, message);
                self.sweep = true;
                true
            }
            TcpApp::Stream(_) => false,
        }
    }

    fn on_live_cores(&mut self, cx: &mut RunContext<'_>, live: u64) {
        if let TcpApp::Peer(app) = &mut self.app {
            app.on_live_cores(&mut cx.app, live);
            self.sweep = true;
        }
    }

    fn open_connections(&self) -> usize {
        self.table.open()
    }

    fn tcp_gauges(&self) -> Option<TcpCounters> {
        Some(self.gauges())
    }

    fn application(&self) -> Option<&'static str> {
        Some(self.app.name())
    }
}
