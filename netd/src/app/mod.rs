//! Applications on the path API, and the roles they take. Each application is one file;
//! [`default_applications`] is the registry.
//!
//! An application takes a role by implementing a small trait, and is registered as a
//! [`Service`] on a port:
//!
//! | role | trait | path kind that serves it |
//! |---|---|---|
//! | datagram | [`DatagramService`]: one reply (or none) per UDP datagram | the UDP fast path (answered in place), or UDP through a smoltcp socket (`netd.udp=smoltcp`, and the `netd.mode=interrupt` baseline) |
//! | stream | [`StreamService`]: open, data, close on TCP connections | TCP: listeners and connections in smoltcp |
//! | peer / key-value | [`PeerService`]: a stream service that also gets cross-core messages addressed to its port | TCP, plus [`crate::PeerMessage::KvRequest`] / [`crate::PeerMessage::KvReply`] routed by their `service` field |
//!
//! The core builds the path, its sockets, the classifier entry and the counters from the
//! registration; what the application needs while it runs comes in an [`AppContext`]. Several
//! peer services coexist: each gets the messages whose `service` is its port.

use crate::classify::PathKey;
use crate::config::{CoreId, NetConfig};
use crate::peers::{PeerMessage, Peers};
use crate::stats::StatsView;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec::Vec;

pub mod discard;
pub mod http;
pub mod memcached;
pub mod tcp_echo;
pub mod udp_echo;

/// What an application may see and use while it runs on its path.
pub struct AppContext<'a> {
    /// The time of this poll step.
    pub now: Instant,
    /// This core.
    pub core: CoreId,
    /// Cores running a stack.
    pub core_count: u16,
    /// The machine's name.
    pub hostname: &'static str,
    /// Milliseconds since this core's stack started.
    pub uptime_ms: u64,
    /// Cross-core channels.
    pub peers: &'a mut dyn Peers,
    /// Every core's counters: the latest gathering, with this core's own entry live.
    pub stats: StatsView<'a>,
    /// Set to ask the kernel for a fresh snapshot from every core ([`crate::PollOutcome::stats_wanted`]).
    pub stats_wanted: &'a mut bool,
    /// Set to have the path run again on the next poll even without new frames.
    pub run_again: &'a mut bool,
    /// Set (to the earliest moment) to have the path run at that time even without frames: the
    /// path's deadline, reported in [`crate::PollOutcome::next_deadline`].
    pub wake_at: &'a mut Option<Instant>,
}

/// Where a datagram came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The sender's IPv4 address.
    pub address: [u8; 4],
    /// The sender's UDP port.
    pub port: u16,
}

/// One datagram handed to a [`DatagramService`]: `payload[..length]` holds the request, and the
/// whole of `payload` is writable (the reply goes there, over the request).
pub struct Datagram<'a> {
    /// Who sent it.
    pub from: Peer,
    /// The request's bytes, then room for a reply up to a full frame.
    pub payload: &'a mut [u8],
    /// Bytes of the request at the start of `payload`.
    pub length: usize,
}

/// The datagram role: each UDP datagram to the service's port gets at most one reply, written in
/// place.
pub trait DatagramService {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Answers one datagram: write the reply into `datagram.payload` and return its length, or
    /// `None` for no reply. Runs to completion; keep it bounded.
    fn on_datagram(
        &mut self,
        context: &mut AppContext<'_>,
        datagram: Datagram<'_>,
    ) -> Option<usize>;
}

/// The stream role: TCP connections to the service's port. A connection is named by a small
/// index, reused after [`Self::on_close`].
pub trait StreamService {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// A connection was accepted (it reached `Established`).
    fn on_open(&mut self, _context: &mut AppContext<'_>, _connection: usize) {}

    /// The path ran and `connection` is open: read and write `socket`. Bounded by the socket's
    /// buffers.
    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        connection: usize,
        socket: &mut tcp::Socket<'static>,
    );

    /// The connection closed; forget its state.
    fn on_close(&mut self, _context: &mut AppContext<'_>, _connection: usize) {}
}

/// The peer (key-value) role: a stream service that also serves and answers cross-core messages
/// carrying its port as their `service` (a key owned here, a reply to a request sent from here).
pub trait PeerService: StreamService {
    /// A message from another core's instance of this service arrived.
    fn on_peer_message(&mut self, context: &mut AppContext<'_>, message: &PeerMessage<'_>);

    /// The path runs (once per run, before its connections' `on_data`): work not tied to one
    /// connection, such as retrying messages the cross-core channel refused, or answering what
    /// timed out.
    fn on_run(&mut self, _context: &mut AppContext<'_>) {}

    /// The living cores changed (bit `i` = core `i`; the monitors' failure verdict): work
    /// partitioned over the cores (memcached's keys) is re-homed, and requests pending on a core
    /// that left are answered now.
    fn on_live_cores(&mut self, _context: &mut AppContext<'_>, _live: u64) {}
}

/// An application registered on a port, in its role.
pub enum Service {
    /// A datagram service on a UDP port.
    Datagram {
        /// The UDP port.
        port: u16,
        /// The application.
        app: Box<dyn DatagramService>,
    },
    /// A stream service on a TCP port.
    Stream {
        /// The TCP port.
        port: u16,
        /// The application.
        app: Box<dyn StreamService>,
    },
    /// A peer (key-value) service on a TCP port; its port is also its address in peer messages.
    Peer {
        /// The TCP port.
        port: u16,
        /// The application.
        app: Box<dyn PeerService>,
    },
}

impl Service {
    /// A datagram service on UDP `port`.
    pub fn datagram(port: u16, app: impl DatagramService + 'static) -> Self {
        Service::Datagram {
            port,
            app: Box::new(app),
        }
    }

    /// A stream service on TCP `port`.
    pub fn stream(port: u16, app: impl StreamService + 'static) -> Self {
        Service::Stream {
            port,
            app: Box::new(app),
        }
    }

    /// A peer service on TCP `port`.
    pub fn peer(port: u16, app: impl PeerService + 'static) -> Self {
        Service::Peer {
            port,
            app: Box::new(app),
        }
    }

    /// The path key the service is served on.
    pub fn endpoint(&self) -> PathKey {
        match self {
            Service::Datagram { port, .. } => PathKey::Udp(*port),
            Service::Stream { port, .. } | Service::Peer { port, .. } => PathKey::Tcp(*port),
        }
    }

    /// The application's name.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Datagram { app, .. } => app.name(),
            Service::Stream { app, .. } => app.name(),
            Service::Peer { app, .. } => app.name(),
        }
    }
}

/// The services every core runs. Adding one: write its file, add a `pub mod` line above and one
/// line here.
pub fn default_applications(config: &NetConfig) -> Vec<Service> {
    alloc::vec![
        Service::datagram(7, udp_echo::UdpEcho::new()),
        Service::datagram(9, discard::Discard::new()),
        Service::stream(7, tcp_echo::TcpEcho::new()),
        Service::stream(80, http::Http::new(config)),
        Service::peer(11211, memcached::Memcached::new(11211, config)),
    ]
}
