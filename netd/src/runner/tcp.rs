//! The TCP path: smoltcp does the protocol work on the path's own sockets (a pool of listeners
//! kept armed, and the connections they became); the stream or peer service runs on each open
//! connection. The per-connection table ([`Connections`]) is kept apart from the runner so that
//! connection state can grow (issue 14: resets, thousands of connections, bounded buffers)
//! without touching how the path runs.

use super::{smoltcp_egress, smoltcp_ingress, PathRunner, Progress, Reply, RunContext};
use crate::app::{PeerService, StreamService};
use crate::path::QueuedFrame;
use crate::peers::PeerMessage;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Segments a TCP run ingests before the application runs on the connections.
const SEGMENTS_PER_SERVICE: usize = 32;

/// How a TCP path keeps listening sockets available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Listening sockets kept armed (a burst this large is never refused).
    pub backlog: usize,
    /// Most sockets (listening and connected) the path may hold.
    pub max_sockets: usize,
    /// Receive buffer per socket, bytes.
    pub receive_buffer: usize,
    /// Send buffer per socket, bytes.
    pub send_buffer: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            backlog: 8,
            max_sockets: 64,
            receive_buffer: 8192,
            send_buffer: 16384,
        }
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

/// One TCP socket of a path and what the path knows of it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    handle: SocketHandle,
    /// The socket left `Listen` and the application was told (`on_open`).
    active: bool,
}

/// A TCP path's sockets: listeners and connections, named by slot (the connection index the
/// application sees).
pub(crate) struct Connections {
    port: u16,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
    listener: ListenerConfig,
}

impl Connections {
    fn new(port: u16, listener: ListenerConfig) -> Self {
        let mut connections = Self {
            port,
            sockets: SocketSet::new(vec![]),
            slots: Vec::new(),
            listener,
        };
        for _ in 0..listener.backlog {
            connections.add_listener();
        }
        connections
    }

    fn add_listener(&mut self) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.listener.receive_buffer]),
            tcp::SocketBuffer::new(vec![0; self.listener.send_buffer]),
        );
        if socket.listen(self.port).is_ok() {
            let handle = self.sockets.add(socket);
            self.slots.push(Slot {
                handle,
                active: false,
            });
        }
    }

    /// Arms listeners until `want` listen (within the socket limit).
    fn arm(&mut self, want: usize) {
        let mut listening = self.listening();
        while listening < want && self.slots.len() < self.listener.max_sockets {
            self.add_listener();
            listening += 1;
        }
    }

    fn listening(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| {
                self.sockets.get::<tcp::Socket>(slot.handle).state() == tcp::State::Listen
            })
            .count()
    }

    fn open(&self) -> usize {
        self.slots.iter().filter(|slot| slot.active).count()
    }
}

/// The TCP path's runner.
pub(crate) struct TcpRunner {
    connections: Connections,
    app: TcpApp,
}

impl TcpRunner {
    pub(crate) fn new(port: u16, app: TcpApp) -> Self {
        Self {
            connections: Connections::new(port, ListenerConfig::default()),
            app,
        }
    }
}

impl PathRunner for TcpRunner {
    fn prepare(&mut self, frames: usize) {
        let want = self.connections.listener.backlog.max(frames);
        self.connections.arm(want);
    }

    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        smoltcp_ingress(cx, &mut self.connections.sockets, frame)
    }

    fn frames_per_service(&self) -> usize {
        // Each connection's receive buffer holds a few segments: let the application drain
        // them every so often within a run.
        SEGMENTS_PER_SERVICE
    }

    fn service(&mut self, cx: &mut RunContext<'_>) -> Progress {
        if let TcpApp::Peer(app) = &mut self.app {
            app.on_run(&mut cx.app);
        }
        let Connections {
            port,
            sockets,
            slots,
            ..
        } = &mut self.connections;
        let app = self.app.stream();
        let mut opened = 0;
        for (index, slot) in slots.iter_mut().enumerate() {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait => {
                    if slot.active {
                        slot.active = false;
                        app.on_close(&mut cx.app, index);
                    }
                    if socket.state() == tcp::State::Closed {
                        let _ = socket.listen(*port);
                    }
                }
                // Not yet accepted: the application sees connections once established.
                tcp::State::SynReceived | tcp::State::SynSent => {}
                _ => {
                    if !slot.active {
                        slot.active = true;
                        opened += 1;
                        app.on_open(&mut cx.app, index);
                    }
                    app.on_data(&mut cx.app, index, socket);
                }
            }
        }
        // Keep the backlog armed so a burst of connections is not refused.
        let backlog = self.connections.listener.backlog;
        self.connections.arm(backlog);
        smoltcp_egress(cx, &mut self.connections.sockets);
        Progress {
            run_again: false,
            connections_opened: opened,
        }
    }

    fn poll_at(&mut self, iface: &mut Interface, now: Instant) -> Option<Instant> {
        iface.poll_at(now, &self.connections.sockets)
    }

    fn on_peer_message(&mut self, cx: &mut RunContext<'_>, message: &PeerMessage<'_>) -> bool {
        match &mut self.app {
            TcpApp::Peer(app) => {
                app.on_peer_message(&mut cx.app, message);
                true
            }
            TcpApp::Stream(_) => false,
        }
    }

    fn on_live_cores(&mut self, cx: &mut RunContext<'_>, live: u64) {
        if let TcpApp::Peer(app) = &mut self.app {
            app.on_live_cores(&mut cx.app, live);
        }
    }

    fn open_connections(&self) -> usize {
        self.connections.open()
    }

    fn listening(&self) -> usize {
        self.connections.listening()
    }

    fn application(&self) -> Option<&'static str> {
        Some(self.app.name())
    }
}
