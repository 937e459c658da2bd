//! Applications on the path API. Each is one file; [`default_applications`] is the registry.
//!
//! An application names its endpoint (UDP or TCP port); the core builds a path for it with the
//! sockets it needs (one bound UDP socket, or a pool of listening TCP sockets kept armed) and
//! runs the application on that path whenever the path has work, charging its cycles there.

use crate::classify::PathKey;
use crate::config::{CoreId, NetConfig};
use crate::peers::{PeerMessage, Peers};
use crate::stats::CoreStats;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec::Vec;

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
    /// The latest stats snapshot of every core (this core's entry is refreshed before the path
    /// runs when the application [`Application::wants_stats`]).
    pub stats: &'a [CoreStats],
    /// Set to ask the kernel for a fresh snapshot from every core ([`crate::PollOutcome::stats_wanted`]).
    pub stats_wanted: &'a mut bool,
    /// Set to have the path run again on the next poll even without new frames.
    pub run_again: &'a mut bool,
    /// Set (to the earliest moment) to have the path run at that time even without frames: the
    /// path's deadline, reported in [`crate::PollOutcome::next_deadline`].
    pub wake_at: &'a mut Option<Instant>,
}

/// An application served on one path.
///
/// TCP applications receive `on_open`, then `on_tcp` each time the path runs while the
/// connection is open, then `on_close`; a connection is named by its slot (a small index, reused
/// after `on_close`). UDP applications receive `on_udp` with their bound socket.
pub trait Application {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// The port and transport the application serves (`PathKey::Udp` or `PathKey::Tcp`).
    fn endpoint(&self) -> PathKey;

    /// The path runs (once per run, before `on_udp` / the connections' `on_tcp`): work that is
    /// not tied to one socket, such as retrying messages the cross-core channel refused.
    fn on_run(&mut self, _context: &mut AppContext<'_>) {}

    /// UDP: the path ran; read and answer datagrams on `socket`.
    fn on_udp(&mut self, _context: &mut AppContext<'_>, _socket: &mut udp::Socket<'static>) {}

    /// UDP fast path: whether [`Self::on_datagram`] answers this path's datagrams in place, in
    /// the received frame's own buffer, instead of through a smoltcp socket (see
    /// [`crate::fastpath`]). Default: no.
    fn answers_in_place(&self) -> bool {
        false
    }

    /// UDP fast path: `payload[..length]` holds one datagram and the whole slice is writable;
    /// write the reply there and return its length, or `None` for no reply.
    fn on_datagram(&mut self, _payload: &mut [u8], _length: usize) -> Option<usize> {
        None
    }

    /// TCP: a connection was accepted in `slot`.
    fn on_open(&mut self, _context: &mut AppContext<'_>, _slot: usize) {}

    /// TCP: the path ran and the connection in `slot` is open; read and write `socket`.
    fn on_tcp(
        &mut self,
        _context: &mut AppContext<'_>,
        _slot: usize,
        _socket: &mut tcp::Socket<'static>,
    ) {
    }

    /// TCP: the connection in `slot` is closed; forget its state.
    fn on_close(&mut self, _context: &mut AppContext<'_>, _slot: usize) {}

    /// Whether [`Self::on_peer_message`] wants key-value messages ([`PeerMessage::KvRequest`],
    /// [`PeerMessage::KvReply`]).
    fn handles_key_value(&self) -> bool {
        false
    }

    /// A cross-core message for this application arrived.
    fn on_peer_message(&mut self, _context: &mut AppContext<'_>, _message: &PeerMessage<'_>) {}

    /// The living cores changed (bit `i` = core `i`; the monitors' failure verdict): requests
    /// pending on a core that left must be answered now.
    fn on_live_cores(&mut self, _context: &mut AppContext<'_>, _live: u64) {}

    /// Whether the application reads [`AppContext::stats`].
    fn wants_stats(&self) -> bool {
        false
    }
}

/// The applications every core serves. Adding one: write its file, add a `pub mod` line above and
/// one line here.
pub fn default_applications(config: &NetConfig) -> Vec<Box<dyn Application>> {
    alloc::vec![
        Box::new(udp_echo::UdpEcho::new(7)) as Box<dyn Application>,
        Box::new(tcp_echo::TcpEcho::new(7)),
        Box::new(http::Http::new(80, config)),
        Box::new(memcached::Memcached::new(11211, config)),
    ]
}
