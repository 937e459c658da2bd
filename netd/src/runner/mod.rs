//! Path runners: how each kind of path processes its frames, one file per kind, behind the
//! small [`PathRunner`] trait.
//!
//! | kind | file | ingress (one frame) | service (after a run's frames, on wake-up or timer) |
//! |---|---|---|---|
//! | ARP | `arp.rs` | smoltcp answers requests; the sender becomes every core's neighbour | — |
//! | ICMP | `icmp.rs` | smoltcp's echo reply | — |
//! | IPv4 fragments | `reassembly.rs` | the fragment joins its datagram (bounded slots, timeout); a whole datagram goes back to the core to be classified | expiry |
//! | closed ports | `closed.rs` | smoltcp answers with a reset (TCP) or an ICMP port unreachable (UDP, rate limited) | — |
//! | UDP fast path | `udp_fast.rs` | the datagram service answers in place; the reply leaves from the request's buffer | — |
//! | UDP through smoltcp | `udp_socket.rs` | smoltcp puts the datagram in the path's socket | the datagram service drains the socket; egress |
//! | TCP | `tcp.rs` | the connection's own socket (one hash lookup; a SYN makes a connection within the limit and budget; a stray segment gets a reset or goes to the core owning its flow) | the stream (or peer) service on the connections with work; egress |
//!
//! Ingress returns the reply as a value ([`Reply`]: none, the request's own buffer rewritten in
//! place, or a frame smoltcp wrote into the staging area); the core commits it to its TX queue and
//! charges it to the path. Runners touch no counters: what they did comes back as the reply, in
//! [`Progress`], and in the run's [`Notes`]. Adding a path kind is one file here and one arm in [`build`].

use crate::app::{AppContext, Service};
use crate::classify::PathKey;
use crate::config::CoreId;
use crate::config::{NetConfig, UdpPath};
use crate::device::{PathDevice, Staging, TxQueue, TxSink};
use crate::moves::FlowView;
use crate::path::QueuedFrame;
use crate::peers::PeerMessage;
use drivers::nic::{QueueCapabilities, TxChecksum};
use drivers::pool::{BufferPool, BUFFER_SIZE};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;

pub mod arp;
pub mod closed;
pub mod icmp;
pub mod reassembly;
pub mod tcp;
pub mod udp_fast;
pub mod udp_socket;

/// Most `poll_egress` rounds per service call (each round sends at most one frame per socket).
const EGRESS_ROUNDS: usize = 64;

/// What one path run may use: the core's interface, pool, staging area and TX queue, its
/// configuration, and the context its application sees.
pub(crate) struct RunContext<'a> {
    /// Time of this turn.
    pub(crate) now: Instant,
    /// The core's smoltcp interface (shared by its paths; each path brings its own sockets).
    pub(crate) iface: &'a mut Interface,
    /// The core's buffer pool.
    pub(crate) pool: &'a mut BufferPool,
    /// Where smoltcp writes a reply it makes during ingress.
    pub(crate) staging: &'a mut Staging,
    /// Frames for the TX ring.
    pub(crate) tx: &'a mut TxQueue,
    /// Buffers egress leaves in the pool for the RX ring.
    pub(crate) tx_reserve: usize,
    /// What the NIC computes on transmit.
    pub(crate) offload: QueueCapabilities,
    /// The core's configuration.
    pub(crate) config: &'a NetConfig,
    /// The application's view.
    pub(crate) app: AppContext<'a>,
    /// What the run noticed besides its replies.
    pub(crate) notes: Notes,
    /// The core's TCP budget (buffers and connections, shared by its TCP paths).
    pub(crate) budget: &'a mut tcp::budget::Budget,
    /// Flow ownership (which core a flow belongs to, where a moved group was before).
    pub(crate) flows: FlowView<'a>,
}

/// What becomes of a frame's buffer after ingress.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Nothing to send; the buffer goes back to the pool.
    Nothing,
    /// The frame's own buffer now holds a reply of `length` bytes (the fast path).
    InPlace {
        /// Reply length.
        length: u16,
        /// Checksums left to the NIC.
        checksum: TxChecksum,
    },
    /// smoltcp wrote a reply of `length` bytes into the staging area; the core copies it into a
    /// fresh buffer (the request's buffer goes back to the pool).
    Staged {
        /// Reply length.
        length: u16,
    },
    /// The frame belongs to another core (TCP: a flow of no connection here whose group that
    /// core owns, or owned before it moved here): the core sends it there once, counted as
    /// forwarded.
    Forward(CoreId),
}

/// What runs noticed besides their replies, for the core to count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Notes {
    /// Neighbour entries sent to other cores (ARP).
    pub(crate) neighbours_sent: u64,
    /// Frames that went through protocol processing and were then dropped because their socket
    /// was full.
    pub(crate) socket_drops: u64,
    /// What a TCP path noticed (refusals, timeouts, strays).
    pub(crate) tcp: tcp::TcpEvents,
    /// ICMP errors the token bucket held back (the closed-port path).
    pub(crate) icmp_limited: u64,
    /// What the reassembly path did.
    pub(crate) reassembly: reassembly::ReassemblyEvents,
}

/// The outcome of a service call.
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The path wants to run again without new frames (its socket still holds work).
    pub(crate) run_again: bool,
    /// TCP connections accepted.
    pub(crate) connections_opened: u32,
}

/// How one kind of path processes its frames.
pub(crate) trait PathRunner {
    /// Protocol processing of one frame taken from the path's queue, in `cx.pool`'s buffer
    /// `frame.buffer` (on the UDP fast path, the application too). The buffer still belongs to
    /// the caller, who frees or transmits it as the reply says.
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply;

    /// Application work not tied to one frame, then egress: after a run's frames, when the path
    /// was woken, or when its timer is due.
    fn service(&mut self, _cx: &mut RunContext<'_>) -> Progress {
        Progress::default()
    }

    /// Most frames a run ingests before its service runs (then ingest resumes): what the
    /// path's sockets hold, so protocol work is never done on a frame only for its socket to
    /// drop it. Unlimited for runners whose ingress is the whole job.
    fn frames_per_service(&self) -> usize {
        usize::MAX
    }

    /// The runner's next timer.
    fn poll_at(&mut self, _iface: &mut Interface, _now: Instant) -> Option<Instant> {
        None
    }

    /// A cross-core message for this path; returns whether it was for it.
    fn on_peer_message(&mut self, _cx: &mut RunContext<'_>, _message: &PeerMessage<'_>) -> bool {
        false
    }

    /// The monitors' verdict on which cores live changed (bit `i` = core `i`).
    fn on_live_cores(&mut self, _cx: &mut RunContext<'_>, _live: u64) {}

    /// TCP connections open now.
    fn open_connections(&self) -> usize {
        0
    }

    /// A TCP path's table gauges (`None` for other kinds).
    fn tcp_gauges(&self) -> Option<tcp::TcpCounters> {
        None
    }

    /// A frame the runner made for the classifier (a reassembled datagram), taken by the core
    /// after the run: `(buffer, length)` in the core's pool.
    fn take_reinjected(&mut self) -> Option<(drivers::pool::BufferId, u16)> {
        None
    }

    /// The application's name, if the path has one.
    fn application(&self) -> Option<&'static str> {
        None
    }
}

/// The runner for a registered service: datagram services on the fast path (or through a smoltcp
/// socket with `udp_path = Socket`), stream and peer services on TCP (with the core's TCP
/// options and a secret for its connection table's hash).
pub(crate) fn build(
    service: Service,
    udp_path: UdpPath,
    tcp_options: &crate::config::TcpOptions,
    secret: u64,
) -> (PathKey, Box<dyn PathRunner>) {
    let key = service.endpoint();
    let runner: Box<dyn PathRunner> = match service {
        Service::Datagram { app, .. } if udp_path == UdpPath::Fast => {
            Box::new(udp_fast::UdpFastRunner::new(app))
        }
        Service::Datagram { port, app } => Box::new(udp_socket::UdpSocketRunner::new(port, app)),
        Service::Stream { port, app } => Box::new(tcp::TcpRunner::new(
            port,
            tcp::TcpApp::Stream(app),
            tcp_options,
            secret,
        )),
        Service::Peer { port, app } => Box::new(tcp::TcpRunner::new(
            port,
            tcp::TcpApp::Peer(app),
            tcp_options,
            secret,
        )),
    };
    (key, runner)
}

/// Feeds one queued frame to smoltcp with `sockets`; a reply smoltcp makes during ingress (ARP
/// reply, ICMP echo reply, TCP reset) comes back as [`Reply::Staged`].
pub(crate) fn smoltcp_ingress(
    cx: &mut RunContext<'_>,
    sockets: &mut SocketSet<'static>,
    frame: QueuedFrame,
) -> Reply {
    let length = usize::from(frame.length).min(BUFFER_SIZE);
    if let Ok(bytes) = cx.pool.bytes(frame.buffer) {
        let mut device = PathDevice {
            rx: Some(&bytes[..length]),
            tx: TxSink::Staging(cx.staging),
        };
        let _ = cx.iface.poll_ingress_single(cx.now, &mut device, sockets);
    }
    staged(cx.staging)
}

/// The reply smoltcp left in the staging area, if any.
pub(crate) fn staged(staging: &mut Staging) -> Reply {
    match staging.length.take() {
        Some(length) => Reply::Staged {
            length: length as u16,
        },
        None => Reply::Nothing,
    }
}

/// Egress for `sockets`: smoltcp writes each outgoing frame straight into a fresh pool buffer on
/// the core's TX queue, in at most [`EGRESS_ROUNDS`] rounds.
pub(crate) fn smoltcp_egress(cx: &mut RunContext<'_>, sockets: &mut SocketSet<'static>) {
    for _ in 0..EGRESS_ROUNDS {
        let before = cx.tx.len();
        let mut device = PathDevice {
            rx: None,
            tx: TxSink::Pool {
                pool: cx.pool,
                queue: cx.tx,
                reserve: cx.tx_reserve,
                offload: cx.offload,
                scratch: &mut cx.staging.large,
            },
        };
        let _ = cx.iface.poll_egress(cx.now, &mut device, sockets);
        if cx.tx.len() == before || cx.tx.is_full() {
            break;
        }
    }
}
