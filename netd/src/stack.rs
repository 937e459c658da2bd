//! One core's network stack: a smoltcp `Interface`, the classifier, the paths with their own
//! sockets and applications, and the bounded poll step the kernel's event loop calls.

use crate::app::{AppContext, Application};
use crate::classify::{Classifier, DropReason, PathIndex, PathKey, RssHashFn, Verdict, MAX_PATHS};
use crate::config::{CoreId, NetConfig, FLOW_GROUPS};
use crate::device::{capabilities, PathDevice, Staging, TxQueue, TxSink};
use crate::fastpath;
use crate::path::{
    CycleCounter, ListenerConfig, LrpQueue, Path, PathCounters, QueuedFrame, TcpSlot,
};
use crate::peers::{NeighbourEntry, PeerMessage, Peers};
use crate::stats::{CoreCounters, CoreStats, PathStats};
use drivers::nic::{ChecksumStatus, QueueDatapath, ReceiveBatch, ReceivedFrame, MAX_BATCH};
use drivers::pool::{BufferId, BufferPool, BUFFER_SIZE};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Smallest adaptive batch.
pub const MIN_BATCH: usize = 4;

/// Most `poll_egress` rounds per path run (each round sends at most one frame per socket).
const EGRESS_ROUNDS: usize = 64;

/// Frames a path takes through smoltcp before its application runs (within one path run).
const INGRESS_CHUNK: usize = 32;

/// Datagrams and bytes of a UDP path's socket buffers.
const UDP_PACKETS: usize = 64;
const UDP_BYTES: usize = UDP_PACKETS * 1536;

/// Why a stack could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The MAC address is not unicast.
    BadMac,
    /// The core id is not below the core count.
    BadCore,
    /// More than [`MAX_PATHS`] paths.
    TooManyPaths,
    /// Two applications claim the same endpoint.
    DuplicateEndpoint(PathKey),
    /// An application named an ARP or ICMP endpoint.
    BadEndpoint(PathKey),
}

/// What one [`CoreNet::poll`] did, and what the kernel should do next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Frames taken from the RX ring.
    pub received: usize,
    /// Frames handed to the TX ring.
    pub transmitted: usize,
    /// Work remains (a full batch, queued frames, pending transmissions, a path that asked to
    /// run again): call `poll` again without halting.
    pub more_work: bool,
    /// The earliest smoltcp timer (retransmission, delayed ACK, TIME-WAIT). When `more_work` is
    /// false the kernel re-enables the queue interrupt and halts until this instant or an
    /// interrupt, whichever comes first. `None`: no timer.
    pub next_deadline: Option<Instant>,
    /// An application served stats: the kernel should gather a fresh snapshot from every core
    /// through the monitor and hand it over with [`CoreNet::update_stats`].
    pub stats_wanted: bool,
    /// Batch size the next poll will use.
    pub batch_size: usize,
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

/// One core's network stack.
pub struct CoreNet {
    config: NetConfig,
    iface: Interface,
    classifier: Classifier,
    paths: Vec<Path>,
    counters: CoreCounters,
    batch_size: usize,
    tx_queue: TxQueue,
    staging: Box<Staging>,
    cycles: CycleCounter,
    started: Instant,
    stats: Vec<CoreStats>,
    stats_wanted: bool,
    arp_path: usize,
    key_value_path: Option<usize>,
    tx_reserve: usize,
}

impl CoreNet {
    /// Builds the stack of `config.core`, with a path for ARP, one for ICMP and one per
    /// application (see [`crate::app::default_applications`]). `cycles` reads the cycle counter
    /// used to charge paths; `now` is the current time (uptime counts from it).
    pub fn new(
        config: NetConfig,
        applications: Vec<Box<dyn Application>>,
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
        if applications.len() + 2 > MAX_PATHS {
            return Err(NetError::TooManyPaths);
        }
        let mut interface_config = Config::new(HardwareAddress::Ethernet(mac));
        interface_config.random_seed =
            config.random_seed ^ u64::from(config.core).wrapping_mul(0x9e37_79b9_7f4a_7c15);
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
        let mut paths = Vec::with_capacity(applications.len() + 2);
        let bare_path = |key| Path {
            key,
            queue: LrpQueue::new(crate::path::PATH_QUEUE_CAPACITY / 2),
            counters: PathCounters::default(),
            sockets: SocketSet::new(vec![]),
            app: None,
            udp: None,
            tcp: Vec::new(),
            listener: ListenerConfig::default(),
            wake: false,
            deadline: None,
        };
        paths.push(bare_path(PathKey::Arp));
        paths.push(bare_path(PathKey::Icmp));
        let mut key_value_path = None;
        for app in applications {
            let key = app.endpoint();
            if paths.iter().any(|path: &Path| path.key == key) {
                return Err(NetError::DuplicateEndpoint(key));
            }
            let mut path = bare_path(key);
            match key {
                PathKey::Arp | PathKey::Icmp => return Err(NetError::BadEndpoint(key)),
                PathKey::Udp(port) => {
                    let mut socket = udp::Socket::new(
                        udp::PacketBuffer::new(
                            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                            vec![0; UDP_BYTES],
                        ),
                        udp::PacketBuffer::new(
                            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                            vec![0; UDP_BYTES],
                        ),
                    );
                    socket.bind(port).map_err(|_| NetError::BadEndpoint(key))?;
                    path.udp = Some(path.sockets.add(socket));
                }
                PathKey::Tcp(_) => {
                    for _ in 0..path.listener.backlog {
                        add_listener(&mut path);
                    }
                }
            }
            if app.handles_key_value() {
                key_value_path = Some(paths.len());
            }
            path.app = Some(app);
            paths.push(path);
        }
        for (index, path) in paths.iter().enumerate() {
            classifier.add_path(path.key, PathIndex(index as u8));
        }
        Ok(Self {
            config,
            iface,
            classifier,
            paths,
            counters: CoreCounters::default(),
            batch_size: MIN_BATCH,
            tx_queue: TxQueue::new(),
            staging: Box::new(Staging::new()),
            cycles,
            started: now,
            stats: Vec::new(),
            stats_wanted: false,
            arp_path: 0,
            key_value_path,
            tx_reserve: MAX_BATCH / 4,
        })
    }

    /// This core's configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The paths, in classifier index order (0 ARP, 1 ICMP, then the applications).
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

    /// The application of the path serving `key`.
    pub fn application(&self, key: PathKey) -> Option<&dyn Application> {
        self.path(key).and_then(|path| path.app.as_deref())
    }

    /// The batch size the next poll will use.
    pub fn batch_size(&self) -> usize {
        self.batch_size
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

    /// A snapshot of this core's counters, for the monitor.
    pub fn stats(&self, now: Instant) -> CoreStats {
        let mut stats = CoreStats {
            core: self.config.core,
            uptime_ms: (now - self.started).total_millis(),
            counters: self.counters,
            path_count: self.paths.len().min(MAX_PATHS) as u8,
            paths: [PathStats::EMPTY; MAX_PATHS],
        };
        for (entry, path) in stats.paths.iter_mut().zip(self.paths.iter()) {
            *entry = PathStats {
                key: path.key,
                counters: path.counters,
                open_connections: path.open_connections() as u16,
            };
        }
        stats
    }

    /// The latest snapshot of every core, gathered by the monitor; the HTTP `/stats` page serves
    /// it (this core's own entry is refreshed when served).
    pub fn update_stats(&mut self, cores: &[CoreStats]) {
        self.stats.clear();
        self.stats.extend_from_slice(cores);
    }

    /// One bounded step of the core's network work: reclaim finished transmissions, receive at
    /// most one batch, classify each frame once (drop, forward once, or queue on its path), run
    /// the paths that have work, hand their frames to this core's TX ring, refill the RX ring,
    /// and adapt the batch size.
    pub fn poll(
        &mut self,
        now: Instant,
        rx: &mut impl QueueDatapath,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) -> PollOutcome {
        self.counters.polls += 1;
        rx.reclaim(pool);

        // Receive one bounded batch: the placeholders make `receive` take at most `batch_size`.
        let batch_size = self.batch_size;
        let mut batch = ReceiveBatch::new();
        let placeholder = ReceivedFrame {
            buffer: BufferId(u32::MAX),
            length: 0,
            rss_hash: 0,
            checksum: ChecksumStatus::default(),
        };
        for _ in batch_size..MAX_BATCH {
            let _ = batch.push(placeholder);
        }
        let received = rx.receive(pool, &mut batch);
        for frame in &batch[MAX_BATCH - batch_size..] {
            self.admit(frame, pool, peers);
        }

        // Run the paths with work, ARP first so neighbours are known before others transmit.
        let mut more_work = false;
        for index in 0..self.paths.len() {
            let path = &self.paths[index];
            let due = path.deadline.is_some_and(|deadline| deadline <= now);
            if !path.queue.is_empty() || path.wake || due {
                self.run_path(index, now, pool, peers);
            }
            let path = &self.paths[index];
            more_work |= !path.queue.is_empty() || path.wake;
        }

        let transmitted = self.flush_tx(rx, pool);
        rx.refill(pool);

        // Adapt the batch (IX): grow while the ring fills it, shrink when it runs nearly empty.
        if received >= batch_size {
            self.batch_size = (batch_size * 2).min(MAX_BATCH);
            more_work = true;
        } else if received < batch_size / 4 {
            self.batch_size = (batch_size / 2).max(MIN_BATCH);
        }
        more_work |= !self.tx_queue.is_empty();
        let next_deadline = self.paths.iter().filter_map(|path| path.deadline).min();
        let stats_wanted = core::mem::take(&mut self.stats_wanted);
        PollOutcome {
            received,
            transmitted,
            more_work,
            next_deadline,
            stats_wanted,
            batch_size: self.batch_size,
        }
    }

    /// Handles a message another core's stack sent to this one (the kernel calls it while
    /// draining its URPC channels, before `poll`). Frames forwarded here are copied into a
    /// buffer from `pool` and queued on their path; they are never forwarded again.
    pub fn handle_peer_message(
        &mut self,
        now: Instant,
        message: &PeerMessage<'_>,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) {
        match message {
            PeerMessage::Neighbour(entry) => self.install_neighbour(now, *entry),
            PeerMessage::Frame(bytes) => self.admit_forwarded(bytes, pool),
            PeerMessage::KvRequest(_) | PeerMessage::KvReply(_) => {
                let Some(index) = self.key_value_path else {
                    return;
                };
                let start = (self.cycles)();
                let uptime_ms = (now - self.started).total_millis();
                let Self {
                    paths,
                    config,
                    stats,
                    stats_wanted,
                    ..
                } = self;
                let path = &mut paths[index];
                let mut run_again = false;
                if let Some(app) = path.app.as_mut() {
                    let mut context = AppContext {
                        now,
                        core: config.core,
                        core_count: config.core_count,
                        hostname: config.hostname,
                        uptime_ms,
                        peers,
                        stats,
                        stats_wanted,
                        run_again: &mut run_again,
                    };
                    app.on_peer_message(&mut context, message);
                }
                // The reply may complete a connection's output: run the path on the next poll.
                path.wake = true;
                path.counters.peer_messages += 1;
                path.counters.cycles += (self.cycles)().wrapping_sub(start);
            }
        }
    }

    /// Classifies one received frame and queues, forwards or drops it.
    fn admit(&mut self, frame: &ReceivedFrame, pool: &mut BufferPool, peers: &mut impl Peers) {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += u64::from(frame.length);
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let verdict = match pool.bytes(frame.buffer) {
            Ok(bytes) => {
                self.classifier
                    .classify(&bytes[..length], frame.checksum, frame.rss_hash, false)
            }
            Err(_) => return,
        };
        match verdict {
            Verdict::Deliver(path) => self.enqueue(path, frame.buffer, frame.length, false, pool),
            Verdict::Forward(core) => {
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
            Verdict::Drop(reason) => {
                self.counters.drops[reason as usize] += 1;
                let _ = pool.free(frame.buffer);
            }
        }
    }

    fn admit_forwarded(&mut self, bytes: &[u8], pool: &mut BufferPool) {
        self.counters.forwarded_in += 1;
        if bytes.len() > BUFFER_SIZE {
            self.counters.drops[DropReason::BadLength as usize] += 1;
            return;
        }
        let verdict = self
            .classifier
            .classify(bytes, ChecksumStatus::default(), 0, true);
        let path = match verdict {
            Verdict::Deliver(path) => path,
            Verdict::Drop(reason) => {
                self.counters.drops[reason as usize] += 1;
                return;
            }
            // Unreachable for a forwarded frame; counted rather than trusted.
            Verdict::Forward(_) => {
                self.counters.drops[DropReason::ForwardFailed as usize] += 1;
                return;
            }
        };
        let Some(buffer) = pool.alloc() else {
            self.counters.no_buffer += 1;
            return;
        };
        if let Ok(target) = pool.bytes_mut(buffer) {
            target[..bytes.len()].copy_from_slice(bytes);
        }
        self.enqueue(path, buffer, bytes.len() as u16, true, pool);
    }

    fn enqueue(
        &mut self,
        path: PathIndex,
        buffer: BufferId,
        length: u16,
        forwarded: bool,
        pool: &mut BufferPool,
    ) {
        let Some(path) = self.paths.get_mut(usize::from(path.0)) else {
            let _ = pool.free(buffer);
            return;
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
    }

    /// Feeds a synthesized ARP reply from the neighbour to smoltcp: smoltcp 0.14 has no public
    /// call to insert a neighbour, but it fills its cache from any ARP packet aimed at us.
    fn install_neighbour(&mut self, now: Instant, entry: NeighbourEntry) {
        let start = (self.cycles)();
        let frame = arp_reply_frame(entry, self.config.mac, self.config.addresses.ip.address);
        let Self {
            iface,
            paths,
            staging,
            arp_path,
            ..
        } = self;
        let path = &mut paths[*arp_path];
        let mut device = PathDevice {
            rx: Some(&frame),
            tx: TxSink::Staging(staging),
        };
        let _ = iface.poll_ingress_single(now, &mut device, &mut path.sockets);
        staging.length = None; // A reply produces no answer; nothing to send.
        path.counters.peer_messages += 1;
        path.counters.cycles += (self.cycles)().wrapping_sub(start);
        self.counters.neighbours_installed += 1;
    }

    /// Runs one path: its queued frames through smoltcp, then its application, then egress.
    fn run_path(
        &mut self,
        index: usize,
        now: Instant,
        pool: &mut BufferPool,
        peers: &mut impl Peers,
    ) {
        let start = (self.cycles)();
        let uptime_ms = (now - self.started).total_millis();
        let wants_stats = self.paths[index]
            .app
            .as_ref()
            .is_some_and(|app| app.wants_stats());
        if wants_stats {
            let own = self.stats(now);
            match self.stats.iter_mut().find(|entry| entry.core == own.core) {
                Some(entry) => *entry = own,
                None => {
                    self.stats.push(own);
                    self.stats.sort_by_key(|entry| entry.core);
                }
            }
        }
        let tx_before = self.tx_queue.len();
        let Self {
            iface,
            paths,
            staging,
            tx_queue,
            config,
            counters,
            stats,
            stats_wanted,
            tx_reserve,
            ..
        } = self;
        let path = &mut paths[index];
        path.wake = false;

        // 1. Protocol processing of the frames queued when the run began. A TCP path first makes
        //    sure every queued frame could be a SYN with a listener to take it.
        if matches!(path.key, PathKey::Tcp(_)) {
            let want = path.listener.backlog.max(path.queue.len());
            let mut listening = path.listening();
            while listening < want && path.tcp.len() < path.listener.max_sockets {
                add_listener(path);
                listening += 1;
            }
        }
        // Frames are taken in chunks, each followed by the application and egress, so the
        // application drains the sockets as protocol processing fills them.
        let mut remaining = path.queue.len();
        let mut run_again;
        let in_place = matches!(path.key, PathKey::Udp(_))
            && path.app.as_ref().is_some_and(|app| app.answers_in_place());
        loop {
            let chunk = remaining.min(INGRESS_CHUNK);
            remaining -= chunk;
            for _ in 0..chunk {
                let Some(frame) = path.queue.pop() else { break };
                path.counters.packets += 1;
                path.counters.bytes += u64::from(frame.length);
                path.counters.forwarded_in += u64::from(frame.forwarded);
                let length = usize::from(frame.length).min(BUFFER_SIZE);
                if in_place {
                    // The fast path: the reply leaves from the request's own buffer.
                    let reply = match (pool.bytes_mut(frame.buffer), path.app.as_mut()) {
                        (Ok(bytes), Some(app)) => fastpath::answer_in_place(
                            bytes,
                            length,
                            config.mac,
                            drivers::nic::QueueCapabilities::default(),
                            |payload, n| app.on_datagram(payload, n),
                        ),
                        _ => None,
                    };
                    let out = reply.map(|reply| drivers::nic::TransmitFrame {
                        buffer: frame.buffer,
                        length: reply.length as u16,
                        checksum: reply.checksum,
                    });
                    match out.map(|out| tx_queue.push(out)) {
                        Some(Ok(())) => {}
                        Some(Err(_)) => {
                            path.counters.tx_drops += 1;
                            let _ = pool.free(frame.buffer);
                        }
                        None => {
                            let _ = pool.free(frame.buffer);
                        }
                    }
                    continue;
                }
                let mut neighbour = None;
                if let Ok(bytes) = pool.bytes(frame.buffer) {
                    let bytes = &bytes[..length];
                    if path.key == PathKey::Arp && !frame.forwarded {
                        neighbour = arp_sender(bytes, config);
                    }
                    let mut device = PathDevice {
                        rx: Some(bytes),
                        tx: TxSink::Staging(staging),
                    };
                    let _ = iface.poll_ingress_single(now, &mut device, &mut path.sockets);
                }
                let _ = pool.free(frame.buffer);
                if let Some(length) = staging.length.take() {
                    let sent = pool.alloc().and_then(|buffer| {
                        let target = pool.bytes_mut(buffer).ok()?;
                        target[..length].copy_from_slice(&staging.bytes[..length]);
                        let out = drivers::nic::TransmitFrame::new(buffer, length as u16);
                        match tx_queue.push(out) {
                            Ok(()) => Some(()),
                            Err(_) => {
                                let _ = pool.free(buffer);
                                None
                            }
                        }
                    });
                    if sent.is_none() {
                        path.counters.tx_drops += 1;
                    }
                }
                if let Some(entry) = neighbour {
                    for core in (0..config.core_count).filter(|core| *core != config.core) {
                        if peers.send(core, &PeerMessage::Neighbour(entry)).is_ok() {
                            counters.neighbours_sent += 1;
                        }
                    }
                }
            }

            // 2. The application, with the path's sockets.
            run_again = false;
            if let Some(app) = path.app.as_mut() {
                let mut context = AppContext {
                    now,
                    core: config.core,
                    core_count: config.core_count,
                    hostname: config.hostname,
                    uptime_ms,
                    peers,
                    stats,
                    stats_wanted,
                    run_again: &mut run_again,
                };
                if let Some(handle) = path.udp {
                    app.on_udp(&mut context, path.sockets.get_mut::<udp::Socket>(handle));
                }
                if let PathKey::Tcp(port) = path.key {
                    let mut listening = 0;
                    for (slot_index, slot) in path.tcp.iter_mut().enumerate() {
                        let socket = path.sockets.get_mut::<tcp::Socket>(slot.handle);
                        match socket.state() {
                            tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait => {
                                if slot.active {
                                    slot.active = false;
                                    app.on_close(&mut context, slot_index);
                                }
                                if socket.state() == tcp::State::Closed {
                                    let _ = socket.listen(port);
                                }
                                listening += usize::from(socket.state() == tcp::State::Listen);
                            }
                            // Not yet accepted: the application sees connections once established.
                            tcp::State::SynReceived | tcp::State::SynSent => {}
                            _ => {
                                if !slot.active {
                                    slot.active = true;
                                    path.counters.connections += 1;
                                    app.on_open(&mut context, slot_index);
                                }
                                app.on_tcp(&mut context, slot_index, socket);
                            }
                        }
                    }
                    // Keep the backlog armed so a burst of connections is not refused.
                    while listening < path.listener.backlog
                        && path.tcp.len() < path.listener.max_sockets
                    {
                        add_listener(path);
                        listening += 1;
                    }
                }
            }

            // 3. Egress: smoltcp writes straight into pool buffers on this core's TX queue.
            for _ in 0..EGRESS_ROUNDS {
                let before = tx_queue.len();
                let mut device = PathDevice {
                    rx: None,
                    tx: TxSink::Pool {
                        pool,
                        queue: tx_queue,
                        reserve: *tx_reserve,
                    },
                };
                let _ = iface.poll_egress(now, &mut device, &mut path.sockets);
                if tx_queue.len() == before || tx_queue.is_full() {
                    break;
                }
            }
            if remaining == 0 {
                break;
            }
        }
        path.wake = run_again;
        for frame in &tx_queue[tx_before.min(tx_queue.len())..] {
            path.counters.tx_packets += 1;
            path.counters.tx_bytes += u64::from(frame.length);
        }
        path.deadline = iface.poll_at(now, &path.sockets);
        path.counters.runs += 1;
        path.counters.cycles += (self.cycles)().wrapping_sub(start);
    }

    /// Hands queued frames to the TX ring; what the ring refuses waits for the next poll.
    fn flush_tx(&mut self, rx: &mut impl QueueDatapath, pool: &mut BufferPool) -> usize {
        if self.tx_queue.is_empty() {
            return 0;
        }
        let accepted = rx.transmit(pool, &self.tx_queue).min(self.tx_queue.len());
        for frame in &self.tx_queue[..accepted] {
            self.counters.tx_frames += 1;
            self.counters.tx_bytes += u64::from(frame.length);
        }
        let remaining = self.tx_queue.len() - accepted;
        self.tx_queue.copy_within(accepted.., 0);
        self.tx_queue.truncate(remaining);
        accepted
    }
}

fn add_listener(path: &mut Path) {
    let PathKey::Tcp(port) = path.key else { return };
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; path.listener.receive_buffer]),
        tcp::SocketBuffer::new(vec![0; path.listener.send_buffer]),
    );
    if socket.listen(port).is_ok() {
        let handle = path.sockets.add(socket);
        path.tcp.push(TcpSlot {
            handle,
            active: false,
        });
    }
}

/// The sender of an ARP packet aimed at us, if it is a unicast neighbour on our subnet.
fn arp_sender(frame: &[u8], config: &NetConfig) -> Option<NeighbourEntry> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let packet = ArpPacket::new_checked(ethernet.payload()).ok()?;
    let ArpRepr::EthernetIpv4 {
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    let entry = NeighbourEntry {
        ip: source_protocol_addr.octets(),
        mac: source_hardware_addr.0,
    };
    let ours = Ipv4Cidr::new(
        Ipv4Address::from_octets(config.addresses.ip.address),
        config.addresses.ip.prefix.min(32),
    );
    let unicast_mac = source_hardware_addr.is_unicast() && entry.mac != [0; 6];
    let on_subnet = ours.contains_addr(&source_protocol_addr);
    let theirs = entry.ip;
    (unicast_mac && on_subnet && theirs != config.addresses.ip.address && theirs != [0; 4])
        .then_some(entry)
}

/// Length of an Ethernet frame carrying an Ethernet/IPv4 ARP packet (no padding).
pub const ARP_FRAME_LEN: usize = 42;

/// An ARP reply from `entry` to us, as the neighbour itself would send it.
pub fn arp_reply_frame(
    entry: NeighbourEntry,
    our_mac: [u8; 6],
    our_ip: [u8; 4],
) -> [u8; ARP_FRAME_LEN] {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(entry.mac),
        source_protocol_addr: Ipv4Address::from_octets(entry.ip),
        target_hardware_addr: EthernetAddress(our_mac),
        target_protocol_addr: Ipv4Address::from_octets(our_ip),
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(entry.mac),
        dst_addr: EthernetAddress(our_mac),
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = [0u8; ARP_FRAME_LEN];
    let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut view);
    arp.emit(&mut ArpPacket::new_unchecked(view.payload_mut()));
    frame
}
