//! The classifier: maps each received frame, once, to a path (or to a forward or a counted drop)
//! before smoltcp sees it.
//!
//! It parses Ethernet, ARP, IPv4, ICMP, UDP and TCP headers with `smoltcp::wire` (the checked
//! constructors are the no-panic contract; no byte offsets are written here), checks lengths and
//! checksums (trusting the NIC's [`ChecksumStatus`] when it checked; the arithmetic is smoltcp's
//! one checksum routine), and looks the destination up in a small per-core table of paths. Every
//! rejection has a [`DropReason`]; nothing in here can panic on any input (see the fuzz-style
//! tests).

use crate::config::CoreId;
use drivers::nic::ChecksumStatus;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
    TCP_HEADER_LEN, UDP_HEADER_LEN,
};

/// Index of a path in its core's path table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathIndex(pub u8);

/// What a path carries: its demultiplexing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKey {
    /// ARP requests and replies addressed to us.
    Arp,
    /// ICMP addressed to us (echo requests are answered by smoltcp on this path).
    Icmp,
    /// UDP datagrams to one local port.
    Udp(u16),
    /// TCP segments to one local port: its listeners and its established connections.
    Tcp(u16),
    /// TCP and UDP to ports no path serves: answered with a reset or an ICMP port unreachable.
    Closed,
    /// IPv4 fragments addressed to us, reassembled and then classified again.
    Reassembly,
}

/// Why the classifier dropped a frame. Counted per core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the headers it claims to carry.
    Truncated = 0,
    /// Addressed to another MAC or IP address.
    NotForUs = 1,
    /// An EtherType we do not handle (e.g. IPv6).
    UnsupportedEtherType = 2,
    /// An ARP packet that is not Ethernet/IPv4 request or reply.
    BadArp = 3,
    /// IPv4 version or header length wrong.
    BadIpHeader = 4,
    /// IPv4 total length inconsistent with the frame, or a bad UDP/TCP length field.
    BadLength = 5,
    /// A header or payload checksum is wrong (by the NIC's word or our own check).
    BadChecksum = 6,
    /// An IPv4 fragment not addressed to our own address (fragments to us are reassembled).
    Fragment = 7,
    /// An IP protocol other than ICMP, UDP and TCP.
    UnsupportedProtocol = 8,
    /// UDP or TCP to a port no path serves, when no reply is due (a broadcast datagram) or the
    /// core has no closed-port path.
    NoSuchPort = 9,
    /// A misdelivered frame that could not be forwarded (peer channel full).
    ForwardFailed = 10,
    /// A frame from the source address 0.0.0.0, a broadcast or a multicast source.
    BadSource = 11,
}

impl DropReason {
    /// Number of reasons (length of counter arrays).
    pub const COUNT: usize = 12;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::NotForUs,
        DropReason::UnsupportedEtherType,
        DropReason::BadArp,
        DropReason::BadIpHeader,
        DropReason::BadLength,
        DropReason::BadChecksum,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::NoSuchPort,
        DropReason::ForwardFailed,
        DropReason::BadSource,
    ];

    /// A short snake-case name (JSON keys, logs).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::BadArp => "bad_arp",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadLength => "bad_length",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoSuchPort => "no_such_port",
            DropReason::ForwardFailed => "forward_failed",
            DropReason::BadSource => "bad_source",
        }
    }
}

/// The classifier's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Append the frame to this path's queue.
    Deliver(PathIndex),
    /// The frame is for this path, whose queue is full: drop it now, before any checksum or
    /// protocol work, and count it as the path's drop (LRP).
    PathFull(PathIndex),
    /// The frame's flow group belongs to another core: forward it there, once.
    Forward(CoreId),
    /// Drop the frame and count the reason.
    Drop(DropReason),
}

/// A Toeplitz-style hash over the RSS input bytes (source IP, destination IP, source port,
/// destination port, all network order), as the NIC computes it with the machine's key.
pub type RssHashFn = fn(&[u8]) -> u32;

/// Flow-group ownership: the core's one flow map (`drivers::nic::FlowMap`), owned here by the
/// classifier and written by the kernel on the monitors' word (the NIC's redirection table is
/// written from the same map on the NIC's home core).
pub type FlowTable = drivers::nic::FlowMap;

/// Builds the 12-byte RSS input for an IPv4 TCP/UDP flow as the NIC sees it on receive.
pub fn rss_input(
    source: [u8; 4],
    destination: [u8; 4],
    source_port: u16,
    destination_port: u16,
) -> [u8; 12] {
    let mut input = [0u8; 12];
    input[0..4].copy_from_slice(&source);
    input[4..8].copy_from_slice(&destination);
    input[8..10].copy_from_slice(&source_port.to_be_bytes());
    input[10..12].copy_from_slice(&destination_port.to_be_bytes());
    input
}

/// Maximum number of paths on one core.
pub const MAX_PATHS: usize = 16;

/// A set of paths (bit `i` = path index `i`): the paths whose queues are full, for
/// [`Classifier::classify_admitting`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSet(pub u16);

impl PathSet {
    /// No path.
    pub const EMPTY: Self = Self(0);

    /// Whether `path` is in the set.
    pub fn contains(self, path: PathIndex) -> bool {
        path.0 < 16 && self.0 & (1 << path.0) != 0
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: PathIndex) {
        if path.0 < 16 {
            self.0 |= 1 << path.0;
        }
    }
}

/// The per-core classifier: our addresses, the path table and the flow table.
#[derive(Clone, Debug)]
pub struct Classifier {
    mac: [u8; 6],
    ip: [u8; 4],
    subnet_broadcast: [u8; 4],
    core: CoreId,
    core_count: u16,
    arp: Option<PathIndex>,
    icmp: Option<PathIndex>,
    closed: Option<PathIndex>,
    reassembly: Option<PathIndex>,
    udp: heapless::Vec<(u16, PathIndex), MAX_PATHS>,
    tcp: heapless::Vec<(u16, PathIndex), MAX_PATHS>,
    flows: FlowTable,
    hash: Option<RssHashFn>,
}

impl Classifier {
    /// A classifier for `core` of `core_count` with our `mac` and `ip/prefix`, and no paths yet.
    pub fn new(mac: [u8; 6], ip: [u8; 4], prefix: u8, core: CoreId, core_count: u16) -> Self {
        let host_mask = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
        let broadcast = (u32::from_be_bytes(ip) | host_mask).to_be_bytes();
        Self {
            mac,
            ip,
            subnet_broadcast: broadcast,
            core,
            core_count: core_count.max(1),
            arp: None,
            icmp: None,
            closed: None,
            reassembly: None,
            udp: heapless::Vec::new(),
            tcp: heapless::Vec::new(),
            flows: FlowTable::round_robin(core_count),
            hash: None,
        }
    }

    /// Routes frames with `key` to `path`. Returns false if the table is full.
    pub fn add_path(&mut self, key: PathKey, path: PathIndex) -> bool {
        match key {
            PathKey::Arp => self.arp = Some(path),
            PathKey::Icmp => self.icmp = Some(path),
            PathKey::Closed => self.closed = Some(path),
            PathKey::Reassembly => self.reassembly = Some(path),
            PathKey::Udp(port) => return self.udp.push((port, path)).is_ok(),
            PathKey::Tcp(port) => return self.tcp.push((port, path)).is_ok(),
        }
        true
    }

    /// The flow table (local copy of the monitor's).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// The flow table, to change on the monitor's word.
    pub fn flows_mut(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// Uses `hash` to find the owner of TCP/UDP frames the NIC did not hash (RSS hash 0).
    pub fn set_hash_function(&mut self, hash: RssHashFn) {
        self.hash = Some(hash);
    }

    /// The hash function given to [`Self::set_hash_function`].
    pub fn hash_function(&self) -> Option<RssHashFn> {
        self.hash
    }

    fn lookup(table: &[(u16, PathIndex)], port: u16) -> Option<PathIndex> {
        table
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, path)| *path)
    }

    /// Classifies one frame. `forwarded` marks a frame another core already forwarded here: it is
    /// never forwarded again.
    pub fn classify(
        &self,
        frame: &[u8],
        checksum: ChecksumStatus,
        rss_hash: u32,
        forwarded: bool,
    ) -> Verdict {
        self.classify_admitting(frame, checksum, rss_hash, forwarded, PathSet::EMPTY)
    }

    /// Classifies one frame, answering [`Verdict::PathFull`] for a frame whose path is in `full`
    /// as soon as the path is known: before the IPv4 and transport checksums are verified.
    pub fn classify_admitting(
        &self,
        frame: &[u8],
        checksum: ChecksumStatus,
        rss_hash: u32,
        forwarded: bool,
        full: PathSet,
    ) -> Verdict {
        match self.classify_inner(frame, checksum, rss_hash, forwarded, full) {
            Ok(verdict) => verdict,
            Err(reason) => Verdict::Drop(reason),
        }
    }

    fn classify_inner(
        &self,
        frame: &[u8],
        checksum: ChecksumStatus,
        rss_hash: u32,
        forwarded: bool,
        full: PathSet,
    ) -> Result<Verdict, DropReason> {
        let ethernet = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
        let destination = ethernet.dst_addr();
        if destination.as_bytes() != self.mac && !destination.is_broadcast() {
            return Err(DropReason::NotForUs);
        }
        if ethernet.src_addr().is_multicast() {
            return Err(DropReason::BadSource);
        }
        let payload = &frame[ETHERNET_HEADER_LEN..];
        match ethernet.ethertype() {
            EthernetProtocol::Arp => self.classify_arp(payload, full),
            EthernetProtocol::Ipv4 => {
                self.classify_ipv4(payload, checksum, rss_hash, forwarded, full)
            }
            _ => Err(DropReason::UnsupportedEtherType),
        }
    }

    fn classify_arp(&self, arp: &[u8], full: PathSet) -> Result<Verdict, DropReason> {
        let packet = ArpPacket::new_checked(arp).map_err(|_| DropReason::Truncated)?;
        let ArpRepr::EthernetIpv4 {
            operation,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&packet).map_err(|_| DropReason::BadArp)?
        else {
            return Err(DropReason::BadArp);
        };
        if !matches!(operation, ArpOperation::Request | ArpOperation::Reply) {
            return Err(DropReason::BadArp);
        }
        if target_protocol_addr.octets() != self.ip {
            return Err(DropReason::NotForUs);
        }
        let path = self.arp.ok_or(DropReason::UnsupportedEtherType)?;
        Ok(admit(path, full))
    }

    fn classify_ipv4(
        &self,
        packet: &[u8],
        checksum: ChecksumStatus,
        rss_hash: u32,
        forwarded: bool,
        full: PathSet,
    ) -> Result<Verdict, DropReason> {
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| ipv4_error(packet))?;
        if ip.version() != 4 {
            return Err(DropReason::BadIpHeader);
        }
        if checksum.error {
            return Err(DropReason::BadChecksum);
        }
        let source = ip.src_addr().octets();
        let destination = ip.dst_addr().octets();
        if destination != self.ip && destination != [255; 4] && destination != self.subnet_broadcast
        {
            return Err(DropReason::NotForUs);
        }
        if source == [0; 4]
            || source == [255; 4]
            || source[0] >= 224
            || source == self.subnet_broadcast
        {
            return Err(DropReason::BadSource);
        }
        // Checksums are verified once the destination is known and only if it will take the
        // frame: a frame for a full path costs no checksum (LRP's early drop).
        let header_ok = || checksum.ipv4_ok || ip.verify_checksum();
        if ip.more_frags() || ip.frag_offset() != 0 {
            // The NIC hashes fragments on addresses only: they are reassembled where they land,
            // and the whole datagram is classified (and forwarded to its flow's owner) then.
            let path = match self.reassembly {
                Some(path) if destination == self.ip => path,
                _ => return Err(DropReason::Fragment),
            };
            if full.contains(path) {
                return Ok(Verdict::PathFull(path));
            }
            if !header_ok() {
                return Err(DropReason::BadChecksum);
            }
            return Ok(Verdict::Deliver(path));
        }
        let (source_address, destination_address) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        let payload = ip.payload();
        match ip.next_header() {
            IpProtocol::Icmp => {
                let message =
                    Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::Truncated)?;
                let path = self.icmp.ok_or(DropReason::UnsupportedProtocol)?;
                if full.contains(path) {
                    return Ok(Verdict::PathFull(path));
                }
                if !header_ok() || !message.verify_checksum() {
                    return Err(DropReason::BadChecksum);
                }
                Ok(Verdict::Deliver(path))
            }
            IpProtocol::Udp => {
                let datagram = UdpPacket::new_checked(payload).map_err(|_| {
                    if payload.len() < UDP_HEADER_LEN {
                        DropReason::Truncated
                    } else {
                        DropReason::BadLength
                    }
                })?;
                let verified = || {
                    header_ok()
                        && (checksum.l4_ok
                            || datagram.verify_checksum(&source_address, &destination_address))
                };
                // The flow-owner lookup (forward once to the owner core) comes first.
                if let Some(core) = self.misdelivered(
                    source,
                    destination,
                    datagram.src_port(),
                    datagram.dst_port(),
                    rss_hash,
                    forwarded,
                ) {
                    return if verified() {
                        Ok(Verdict::Forward(core))
                    } else {
                        Err(DropReason::BadChecksum)
                    };
                }
                // A closed port gets an ICMP port unreachable, but never for a broadcast.
                let path = match Self::lookup(&self.udp, datagram.dst_port()) {
                    Some(path) => path,
                    None if destination == self.ip => self.closed.ok_or(DropReason::NoSuchPort)?,
                    None => return Err(DropReason::NoSuchPort),
                };
                if full.contains(path) {
                    return Ok(Verdict::PathFull(path));
                }
                if !verified() {
                    return Err(DropReason::BadChecksum);
                }
                Ok(Verdict::Deliver(path))
            }
            IpProtocol::Tcp => {
                let segment = TcpPacket::new_checked(payload).map_err(|_| {
                    if payload.len() < TCP_HEADER_LEN {
                        DropReason::Truncated
                    } else {
                        DropReason::BadLength
                    }
                })?;
                if destination != self.ip {
                    return Err(DropReason::NotForUs);
                }
                let verified = || {
                    header_ok()
                        && (checksum.l4_ok
                            || segment.verify_checksum(&source_address, &destination_address))
                };
                // No flow-owner lookup here: the TCP path knows its connections and hands a
                // segment of none to the flow's owner itself (a connection stays on the core
                // that holds it across a flow-group move). A closed port gets a reset from any
                // core.
                let path = match Self::lookup(&self.tcp, segment.dst_port()) {
                    Some(path) => path,
                    None => self.closed.ok_or(DropReason::NoSuchPort)?,
                };
                if full.contains(path) {
                    return Ok(Verdict::PathFull(path));
                }
                if !verified() {
                    return Err(DropReason::BadChecksum);
                }
                Ok(Verdict::Deliver(path))
            }
            _ => Err(DropReason::UnsupportedProtocol),
        }
    }

    /// Returns the owner when a TCP/UDP flow belongs to another core and may be forwarded.
    fn misdelivered(
        &self,
        source: [u8; 4],
        destination: [u8; 4],
        source_port: u16,
        destination_port: u16,
        rss_hash: u32,
        forwarded: bool,
    ) -> Option<CoreId> {
        if forwarded || self.core_count <= 1 || destination != self.ip {
            return None;
        }
        let hash = match (rss_hash, self.hash) {
            (0, Some(hash)) => hash(&rss_input(
                source,
                destination,
                source_port,
                destination_port,
            )),
            (0, None) => return None,
            (hash, _) => hash,
        };
        let owner = self.flows.owner(FlowTable::group_of_hash(hash));
        (owner != self.core).then_some(owner)
    }
}

/// `Deliver(path)`, or `PathFull(path)` when its queue is full.
fn admit(path: PathIndex, full: PathSet) -> Verdict {
    if full.contains(path) {
        Verdict::PathFull(path)
    } else {
        Verdict::Deliver(path)
    }
}

/// Why `smoltcp` refused an IPv4 header, told apart for the drop counters: too short for the
/// fixed header or its options, a header length below the minimum, or a total length that
/// disagrees with the header or the bytes present. Reads only what the length check allows.
fn ipv4_error(packet: &[u8]) -> DropReason {
    if packet.len() < IPV4_HEADER_LEN {
        return DropReason::Truncated;
    }
    let header = Ipv4Packet::new_unchecked(packet);
    let header_length = usize::from(header.header_len());
    if header_length < IPV4_HEADER_LEN {
        DropReason::BadIpHeader
    } else if packet.len() < header_length {
        DropReason::Truncated
    } else {
        DropReason::BadLength
    }
}

/// First port of the ephemeral range the picker searches.
pub const EPHEMERAL_FIRST: u16 = 49152;

/// Picks a local port for an outgoing TCP/UDP flow to `remote:remote_port` whose replies the NIC
/// steers to `core`: the RSS hash of the reply's 4-tuple (remote → local) must select a flow group
/// `flows` assigns to `core`. Starts at `first` (wrapping within the ephemeral range) and returns
/// `None` when no port qualifies.
pub fn pick_source_port(
    local: [u8; 4],
    remote: [u8; 4],
    remote_port: u16,
    core: CoreId,
    flows: &FlowTable,
    hash: RssHashFn,
    first: u16,
) -> Option<u16> {
    let span = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
    let start = u32::from(first.max(EPHEMERAL_FIRST) - EPHEMERAL_FIRST);
    (0..span)
        .map(|offset| EPHEMERAL_FIRST + ((start + offset) % span) as u16)
        .find(|port| {
            let reply_hash = hash(&rss_input(remote, local, remote_port, *port));
            flows.owner(FlowTable::group_of_hash(reply_hash)) == core
        })
}
