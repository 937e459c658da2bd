//! Counters of one core's stack, the `Copy` snapshot the monitor gathers from every core, the
//! view an application gets of them (the latest gathering with this core's own entry live), and
//! the JSON form served by the HTTP application at `/stats`.
//!
//! Drops are counted where they happen: at the NIC (its ring had no descriptor: `RQDPC` /
//! `rx_no_descriptor`; its packet buffer was full: `MPC` / `rx_missed`), at the shared FIFO of the
//! `netd.lrp=off` baseline, in the classifier (by [`DropReason`], before any path is known), at a
//! path's queue (LRP tail drop, before checksum and protocol work), at a socket after protocol
//! work (the `netd.mode=interrupt` baseline), and on transmit.

use crate::classify::{DropReason, PathKey, MAX_PATHS};
use crate::config::{CoreId, Dotted, MacAddress, NetConfig};
use crate::path::{Path, PathCounters};
use crate::runner::tcp::TcpCounters;
use crate::transport::TransportCounters;
use core::fmt::Write;

extern crate alloc;
use alloc::string::String;
use alloc::vec::Vec;

/// Per-core counters outside any path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Frames taken from the RX ring.
    pub rx_frames: u64,
    /// Bytes taken from the RX ring.
    pub rx_bytes: u64,
    /// Frames handed to the TX ring.
    pub tx_frames: u64,
    /// Bytes handed to the TX ring.
    pub tx_bytes: u64,
    /// Frames dropped by the classifier, by [`DropReason`] (index = reason as usize).
    pub drops: [u64; DropReason::COUNT],
    /// Misdelivered frames forwarded to their owner core.
    pub forwarded_out: u64,
    /// Frames other cores forwarded to this one.
    pub forwarded_in: u64,
    /// Neighbour entries sent to other cores.
    pub neighbours_sent: u64,
    /// Neighbour entries received and installed.
    pub neighbours_installed: u64,
    /// Poll steps (loop turns) run.
    pub polls: u64,
    /// Received frames dropped because no pool buffer was free to copy a forwarded frame into.
    pub no_buffer: u64,
    /// `netd.lrp=off` only: frames dropped at the tail of the core's shared FIFO, whatever their
    /// destination.
    pub shared_queue_drops: u64,
    /// Peer messages for a service no path of this core serves.
    pub peer_unroutable: u64,
    /// Turns in which the core took no frame from its RX ring because every path queue was full
    /// (the NIC drops what keeps arriving, at no CPU cost).
    pub rx_withheld: u64,
    /// Turns in which receiving stopped at the turn's quota with frames still in the ring (the
    /// quota keeps receive work bounded relative to path work).
    pub rx_quota_reached: u64,
    /// The NIC's count of frames it dropped for want of a descriptor on this core's ring (82576
    /// `RQDPC`), read now and then through `QueueDatapath::stats`.
    pub nic_rx_no_descriptor: u64,
    /// The NIC's count of frames missed for a full packet buffer (82576 `MPC`; core 0 only).
    pub nic_rx_missed: u64,
    /// Frames the NIC reported with an error and the driver dropped.
    pub nic_rx_errors: u64,
    /// Cycles spent on frames dropped before any path was known (malformed, not for us, ...).
    pub cycles_unclassified: u64,
    /// Cycles of turns that found nothing to do (looking at the ring, reclaim and refill with no
    /// frame moving, reading the NIC's counters).
    pub cycles_idle: u64,
    /// Cycles of all turns together: `cycles_idle + cycles_unclassified` plus every path's
    /// `cycles` (the accounting test checks this sum).
    pub cycles_total: u64,
    /// The longest turn, in cycles.
    pub longest_turn_cycles: u64,
    /// ICMP errors (port unreachable) the token bucket held back (`netd.icmp_rate`).
    pub icmp_limited: u64,
    /// IPv4 fragments received (they go to the reassembly path).
    pub fragments: u64,
    /// Datagrams reassembled from fragments and classified again.
    pub reassembled: u64,
    /// Datagrams whose fragments did not all arrive in time (their fragments dropped).
    pub reassembly_timeouts: u64,
    /// Datagrams dropped half-assembled to make room (every reassembly slot busy).
    pub reassembly_evictions: u64,
    /// Datagrams dropped for overlapping or inconsistent fragments.
    pub reassembly_overlaps: u64,
    /// Datagrams dropped for being longer than a reassembled frame may be.
    pub reassembly_too_large: u64,
    /// Turns that asked the kernel to hold receive for bulk TCP (`netd.rx_hold_us`).
    pub rx_holds: u64,
}

/// One core's memory in a snapshot: the kernel's heap and TCP's budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    /// The heap's size (0: the kernel gave no figures).
    pub heap_size: u64,
    /// Heap bytes allocated when the snapshot was taken.
    pub heap_used: u64,
    /// The most heap bytes allocated at once since boot.
    pub heap_high_water: u64,
    /// TCP's budget (`netd.tcp_mem`).
    pub tcp_budget: u64,
    /// Bytes of it charged now.
    pub tcp_used: u64,
    /// The most bytes of it charged at once.
    pub tcp_high_water: u64,
    /// TCP connections (every port) now.
    pub tcp_connections: u64,
    /// The most TCP connections at once.
    pub tcp_most_connections: u64,
    /// The connection limit in force (`netd.tcp_max_conn`, lowered to what the budget holds).
    pub tcp_max_connections: u64,
    /// Bytes charged per connection besides its buffers.
    pub tcp_state_per_connection: u64,
}

scalar_counters!(MemoryCounters {
    heap_size,
    heap_used,
    heap_high_water,
    tcp_budget,
    tcp_used,
    tcp_high_water,
    tcp_connections,
    tcp_most_connections,
    tcp_max_connections,
    tcp_state_per_connection,
});

/// One path's counters in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStats {
    /// Which path.
    pub key: PathKey,
    /// Its counters.
    pub counters: PathCounters,
    /// TCP connections open when the snapshot was taken.
    pub open_connections: u16,
    /// Frames waiting in the path's queue when the snapshot was taken.
    pub queued: u16,
    /// A TCP path's connection table and events.
    pub tcp: Option<TcpCounters>,
}

impl PathStats {
    /// A placeholder for unused array entries.
    pub const EMPTY: PathStats = PathStats {
        key: PathKey::Arp,
        counters: PathCounters::ZERO,
        open_connections: 0,
        queued: 0,
        tcp: None,
    };

    /// The snapshot entry of `path`.
    pub fn of(path: &Path) -> Self {
        Self {
            key: path.key(),
            counters: *path.counters(),
            open_connections: path.open_connections().min(u16::MAX as usize) as u16,
            queued: path.queued() as u16,
            tcp: path.tcp(),
        }
    }
}

/// A `Copy` snapshot of one core's stack, for the monitor to gather and spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreStats {
    /// The core.
    pub core: CoreId,
    /// Milliseconds since this core's stack started.
    pub uptime_ms: u64,
    /// Core-wide counters.
    pub counters: CoreCounters,
    /// Number of valid entries in `paths`.
    pub path_count: u8,
    /// Per-path counters.
    pub paths: [PathStats; MAX_PATHS],
    /// The kernel's cross-core transport (its mailbox), as last handed over.
    pub transport: TransportCounters,
    /// The heap and TCP's budget.
    pub memory: MemoryCounters,
}

impl CoreStats {
    /// The valid path entries.
    pub fn paths(&self) -> &[PathStats] {
        &self.paths[..usize::from(self.path_count).min(MAX_PATHS)]
    }
}

/// The running path, as its own run's application sees it: its counters as they stood when the
/// run began (the run's own frames are added when it ends).
#[derive(Clone, Copy)]
pub struct CurrentPath<'a> {
    /// Which path.
    pub key: PathKey,
    /// Its counters.
    pub counters: &'a PathCounters,
    /// Frames queued when the run began.
    pub queued: u16,
    /// Connections open after its last run.
    pub open_connections: u16,
    /// A TCP path's counters as the run began.
    pub tcp: Option<TcpCounters>,
}

impl CurrentPath<'_> {
    fn stats(&self) -> PathStats {
        PathStats {
            key: self.key,
            counters: *self.counters,
            open_connections: self.open_connections,
            queued: self.queued,
            tcp: self.tcp,
        }
    }
}

/// This core's own counters, borrowed while one of its paths runs: the paths before and after
/// the running one, and the running one.
pub struct OwnCore<'a> {
    /// The core.
    pub core: CoreId,
    /// Milliseconds since the stack started.
    pub uptime_ms: u64,
    /// Core-wide counters.
    pub counters: &'a CoreCounters,
    /// Paths with a lower index than the running one.
    pub before: &'a [Path],
    /// The running path (None outside a path run).
    pub current: Option<CurrentPath<'a>>,
    /// Paths with a higher index.
    pub after: &'a [Path],
    /// The kernel's transport counters, as last handed over.
    pub transport: &'a TransportCounters,
    /// The heap and TCP's budget.
    pub memory: MemoryCounters,
}

impl OwnCore<'_> {
    /// The live snapshot.
    pub fn snapshot(&self) -> CoreStats {
        let mut stats = CoreStats {
            core: self.core,
            uptime_ms: self.uptime_ms,
            counters: *self.counters,
            path_count: 0,
            paths: [PathStats::EMPTY; MAX_PATHS],
            transport: *self.transport,
            memory: self.memory,
        };
        let entries = self
            .before
            .iter()
            .map(PathStats::of)
            .chain(self.current.map(|current| current.stats()))
            .chain(self.after.iter().map(PathStats::of));
        for (slot, entry) in stats.paths.iter_mut().zip(entries) {
            *slot = entry;
            stats.path_count += 1;
        }
        stats
    }
}

/// What an application sees of every core's counters: the latest gathering (through the
/// monitors) with this core's own entry live.
pub struct StatsView<'a> {
    /// The latest gathered snapshot of every core that answered, in core order.
    pub gathered: &'a [CoreStats],
    /// This core, live.
    pub own: OwnCore<'a>,
}

impl StatsView<'_> {
    /// Every core's snapshot in core order, this core's own entry live (inserted in its place
    /// if the gathering did not have it).
    pub fn cores(&self) -> Vec<CoreStats> {
        let own = self.own.snapshot();
        let mut cores: Vec<CoreStats> = self
            .gathered
            .iter()
            .filter(|entry| entry.core != own.core)
            .copied()
            .collect();
        let at = cores.partition_point(|entry| entry.core < own.core);
        cores.insert(at, own);
        cores
    }
}

/// The name of a path in JSON and logs, e.g. `tcp:80`.
pub fn path_name(key: PathKey, out: &mut String) {
    let _ = match key {
        PathKey::Arp => write!(out, "arp"),
        PathKey::Icmp => write!(out, "icmp"),
        PathKey::Udp(port) => write!(out, "udp:{port}"),
        PathKey::Tcp(port) => write!(out, "tcp:{port}"),
        PathKey::Closed => write!(out, "closed"),
        PathKey::Reassembly => write!(out, "reassembly"),
    };
}

fn per_packet(cycles: u64, packets: u64) -> u64 {
    cycles.checked_div(packets).unwrap_or(0)
}

/// Appends one core's JSON object.
fn write_core(core: &CoreStats, out: &mut String) {
    let c = &core.counters;
    let _ = write!(
        out,
        "{{\"core\":{},\"uptime_ms\":{},\"rx_frames\":{},\"rx_bytes\":{},\"tx_frames\":{},\"tx_bytes\":{},\
         \"forwarded_out\":{},\"forwarded_in\":{},\"neighbours_sent\":{},\"neighbours_installed\":{},\
         \"polls\":{},\"no_buffer\":{},\"peer_unroutable\":{},\"rx_withheld\":{},\"rx_quota_reached\":{},\
         \"cycles_total\":{},\"cycles_idle\":{},\"cycles_unclassified\":{},\"longest_turn_cycles\":{},\
         \"nic\":{{\"rx_no_descriptor\":{},\"rx_missed\":{},\"rx_errors\":{}}},\
         \"rx_holds\":{},\"icmp_limited\":{},\"reassembly\":{{\"fragments\":{},\"reassembled\":{},\"timeouts\":{},\
         \"evictions\":{},\"overlaps\":{},\"too_large\":{}}},\
         \"drops\":{{\"shared_queue\":{}",
        core.core,
        core.uptime_ms,
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.forwarded_out,
        c.forwarded_in,
        c.neighbours_sent,
        c.neighbours_installed,
        c.polls,
        c.no_buffer,
        c.peer_unroutable,
        c.rx_withheld,
        c.rx_quota_reached,
        c.cycles_total,
        c.cycles_idle,
        c.cycles_unclassified,
        c.longest_turn_cycles,
        c.nic_rx_no_descriptor,
        c.nic_rx_missed,
        c.nic_rx_errors,
        c.rx_holds,
        c.icmp_limited,
        c.fragments,
        c.reassembled,
        c.reassembly_timeouts,
        c.reassembly_evictions,
        c.reassembly_overlaps,
        c.reassembly_too_large,
        c.shared_queue_drops,
    );
    for reason in DropReason::ALL.iter() {
        let _ = write!(out, ",\"{}\":{}", reason.name(), c.drops[*reason as usize]);
    }
    out.push_str("},\"paths\":[");
    for (i, path) in core.paths().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"path\":\"");
        path_name(path.key, out);
        let p = &path.counters;
        let _ = write!(
            out,
            "\",\"packets\":{},\"bytes\":{},\"queued\":{},\"forwarded_in\":{},\"tx_packets\":{},\
             \"tx_bytes\":{},\"drops\":{{\"queue\":{},\"socket\":{},\"transmit\":{}}},\
             \"cycles\":{},\"cycles_per_packet\":{},\"cycles_by_stage\":{{\"receive\":{},\"run\":{},\"transmit\":{}}},\
             \"runs\":{},\"turns_deferred\":{},\"queue_high_water\":{},\"peer_messages\":{},\
             \"connections\":{},\"open_connections\":{}}}",
            p.packets,
            p.bytes,
            path.queued,
            p.forwarded_in,
            p.tx_packets,
            p.tx_bytes,
            p.queue_drops,
            p.socket_drops,
            p.tx_drops,
            p.cycles,
            // Saturating: a snapshot's counters come from another core's bytes.
            per_packet(p.cycles, p.packets.saturating_add(p.queue_drops)),
            p.cycles_receive,
            p.cycles_run,
            p.cycles_transmit,
            p.runs,
            p.turns_deferred,
            p.queue_high_water,
            p.peer_messages,
            p.connections,
            path.open_connections,
        );
        if let Some(t) = &path.tcp {
            out.pop();
            let _ = write!(
                out,
                ",\"tcp\":{{\"connections\":{},\"half_open\":{},\"most_connections\":{},\"ready\":{},\
                 \"refused_limit\":{},\"refused_memory\":{},\"backlog_evictions\":{},\
                 \"half_open_timeouts\":{},\"idle_timeouts\":{},\"stray_segments\":{},\
                 \"handed_over\":{},\"syn_drops\":{}}}}}",
                t.connections,
                t.half_open,
                t.most_connections,
                t.ready,
                t.refused_limit,
                t.refused_memory,
                t.backlog_evictions,
                t.half_open_timeouts,
                t.idle_timeouts,
                t.stray_segments,
                t.handed_over,
                t.syn_drops,
            );
        }
    }
    out.push_str("],");
    let m = &core.memory;
    let _ = write!(
        out,
        "\"memory\":{{\"heap_size\":{},\"heap_used\":{},\"heap_high_water\":{},\"tcp_budget\":{},\
         \"tcp_used\":{},\"tcp_high_water\":{},\"tcp_connections\":{},\"tcp_most_connections\":{},\
         \"tcp_max_connections\":{},\"tcp_state_per_connection\":{}}},",
        m.heap_size,
        m.heap_used,
        m.heap_high_water,
        m.tcp_budget,
        m.tcp_used,
        m.tcp_high_water,
        m.tcp_connections,
        m.tcp_most_connections,
        m.tcp_max_connections,
        m.tcp_state_per_connection,
    );
    core.transport.write_json(out);
    out.push('}');
}

/// Appends `{"host":{...},"cores":[...]}` to `out`: the machine's addresses as people write
/// them (`"ip":"10.0.2.15/24","gateway":"10.0.2.2","mac":"52:54:00:12:34:56"`), then every
/// core of `view`. Per path: packets, drops by place (`queue`, `socket`, `transmit`), cycles,
/// cycles per packet (packets processed and frames dropped at its queue), cycles by stage.
pub fn write_json(host: &NetConfig, view: &StatsView<'_>, out: &mut String) {
    let _ = write!(
        out,
        "{{\"host\":{{\"ip\":\"{}\",\"gateway\":\"{}\",\"mac\":\"{}\"}},\"cores\":[",
        host.addresses.ip,
        Dotted(host.addresses.gateway),
        MacAddress(host.mac)
    );
    for (index, core) in view.cores().iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_core(core, out);
    }
    out.push_str("]}");
}

// The core-wide counters, drops by reason apart (they are a section of their own).
scalar_counters!(CoreCounters {
    rx_frames,
    rx_bytes,
    tx_frames,
    tx_bytes,
    forwarded_out,
    forwarded_in,
    neighbours_sent,
    neighbours_installed,
    polls,
    no_buffer,
    shared_queue_drops,
    peer_unroutable,
    rx_withheld,
    rx_quota_reached,
    nic_rx_no_descriptor,
    nic_rx_missed,
    nic_rx_errors,
    cycles_unclassified,
    cycles_idle,
    cycles_total,
    longest_turn_cycles,
    icmp_limited,
    fragments,
    reassembled,
    reassembly_timeouts,
    reassembly_evictions,
    reassembly_overlaps,
    reassembly_too_large,
    rx_holds,
});

scalar_counters!(PathCounters {
    packets,
    bytes,
    queue_drops,
    socket_drops,
    forwarded_in,
    tx_packets,
    tx_bytes,
    tx_drops,
    cycles,
    cycles_receive,
    cycles_run,
    cycles_transmit,
    runs,
    turns_deferred,
    queue_high_water,
    peer_messages,
    connections,
});

/// Version of the snapshot encoding [`CoreStats::encode`] writes.
pub const SNAPSHOT_VERSION: u16 = 2;

/// Why a snapshot's bytes could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes end inside a header or a section.
    Truncated,
    /// A version this code does not read.
    UnknownVersion(u16),
    /// A section holds an impossible value (e.g. an unknown path kind, more than `MAX_PATHS`).
    BadSection(u8),
}

/// Section tags of the snapshot encoding.
mod section {
    pub(super) const COUNTERS: u8 = 1;
    pub(super) const DROPS: u8 = 2;
    pub(super) const PATH: u8 = 3;
    pub(super) const TRANSPORT: u8 = 4;
    pub(super) const TRANSPORT_DROPS: u8 = 5;
    pub(super) const PEER_DROPS: u8 = 6;
    pub(super) const MEMORY: u8 = 7;
    pub(super) const PATH_TCP: u8 = 8;
}

fn push_section(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let length = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&length.to_le_bytes());
}

fn push_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// The `u64`s of a section body, little-endian; a trailing partial word is ignored.
fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|word| {
        let mut value = [0u8; 8];
        value.copy_from_slice(word);
        u64::from_le_bytes(value)
    })
}

fn fill(target: &mut [u64], bytes: &[u8]) {
    for (slot, value) in target.iter_mut().zip(u64s(bytes)) {
        *slot = value;
    }
}

impl CoreStats {
    /// The snapshot of a core that reported nothing but its identity.
    pub fn empty(core: CoreId) -> Self {
        Self {
            core,
            uptime_ms: 0,
            counters: CoreCounters::default(),
            path_count: 0,
            paths: [PathStats::EMPTY; MAX_PATHS],
            transport: TransportCounters::default(),
            memory: MemoryCounters::default(),
        }
    }

    /// The snapshot as bytes, to carry to another core: version (u16), core (u16) and uptime
    /// (u64), then sections of `tag (u8), length (u16), body`, every number little-endian.
    /// Sections: 1 core counters (u64s, [`CoreCounters::scalars`] order), 2 drops by reason
    /// (u64s), 3 one per path (kind u8: 0 ARP, 1 ICMP, 2 UDP, 3 TCP, 4 closed ports, 5 reassembly; port u16; open connections
    /// u16; queued u16; then the path's u64s in [`PathCounters::scalars`] order), 4 transport
    /// (u64s, `TransportCounters::scalars` order), 5 transport refusals by reason (u64s), 6 one
    /// per peer with refusals (peer u8, then u32s by reason), 7 memory (u64s,
    /// [`MemoryCounters::scalars`] order), 8 one per TCP path (its index among the paths, u8, then
    /// u64s in [`TcpCounters::scalars`] order). A reader skips sections it does not
    /// know and takes missing trailing numbers as 0, so counters are added at the end of a section
    /// (or in a new section) without a version change.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 110 * usize::from(self.path_count));
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.core.to_le_bytes());
        out.extend_from_slice(&self.uptime_ms.to_le_bytes());
        let c = &self.counters;
        push_section(&mut out, section::COUNTERS, |out| {
            push_u64s(out, &c.scalars())
        });
        push_section(&mut out, section::DROPS, |out| push_u64s(out, &c.drops));
        for path in self.paths() {
            push_section(&mut out, section::PATH, |out| {
                let (kind, port) = match path.key {
                    PathKey::Arp => (0u8, 0u16),
                    PathKey::Icmp => (1, 0),
                    PathKey::Udp(port) => (2, port),
                    PathKey::Tcp(port) => (3, port),
                    PathKey::Closed => (4, 0),
                    PathKey::Reassembly => (5, 0),
                };
                out.push(kind);
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(&path.open_connections.to_le_bytes());
                out.extend_from_slice(&path.queued.to_le_bytes());
                push_u64s(out, &path.counters.scalars());
            });
        }
        let t = &self.transport;
        push_section(&mut out, section::TRANSPORT, |out| {
            push_u64s(out, &t.scalars())
        });
        push_section(&mut out, section::TRANSPORT_DROPS, |out| {
            push_u64s(out, &t.drops)
        });
        for (peer, drops) in t.peer_drops.iter().enumerate() {
            if drops.iter().any(|&count| count > 0) {
                push_section(&mut out, section::PEER_DROPS, |out| {
                    out.push(peer as u8);
                    for count in drops {
                        out.extend_from_slice(&count.to_le_bytes());
                    }
                });
            }
        }
        push_section(&mut out, section::MEMORY, |out| {
            push_u64s(out, &self.memory.scalars())
        });
        for (index, path) in self.paths().iter().enumerate() {
            if let Some(tcp) = &path.tcp {
                push_section(&mut out, section::PATH_TCP, |out| {
                    out.push(index as u8);
                    push_u64s(out, &tcp.scalars());
                });
            }
        }
        out
    }

    /// Reads bytes [`Self::encode`] wrote (of this version, or written by a later one that only
    /// added counters).
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let header = bytes.get(..12).ok_or(SnapshotError::Truncated)?;
        let version = u16::from_le_bytes([header[0], header[1]]);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let mut stats = Self::empty(u16::from_le_bytes([header[2], header[3]]));
        let mut uptime = [0u8; 8];
        uptime.copy_from_slice(&header[4..12]);
        stats.uptime_ms = u64::from_le_bytes(uptime);
        let mut rest = &bytes[12..];
        while !rest.is_empty() {
            let tag = rest[0];
            let length = match rest.get(1..3) {
                Some(length) => usize::from(u16::from_le_bytes([length[0], length[1]])),
                None => return Err(SnapshotError::Truncated),
            };
            let body = rest.get(3..3 + length).ok_or(SnapshotError::Truncated)?;
            rest = &rest[3 + length..];
            match tag {
                section::COUNTERS => {
                    let mut values = [0u64; CoreCounters::SCALARS];
                    fill(&mut values, body);
                    stats.counters.set_scalars(&values);
                }
                section::DROPS => fill(&mut stats.counters.drops, body),
                section::PATH => {
                    let index = usize::from(stats.path_count);
                    if index >= MAX_PATHS || body.len() < 7 {
                        return Err(SnapshotError::BadSection(tag));
                    }
                    let port = u16::from_le_bytes([body[1], body[2]]);
                    let key = match body[0] {
                        0 => PathKey::Arp,
                        1 => PathKey::Icmp,
                        2 => PathKey::Udp(port),
                        3 => PathKey::Tcp(port),
                        4 => PathKey::Closed,
                        5 => PathKey::Reassembly,
                        _ => return Err(SnapshotError::BadSection(tag)),
                    };
                    let mut values = [0u64; PathCounters::SCALARS];
                    fill(&mut values, &body[7..]);
                    let mut counters = PathCounters::ZERO;
                    counters.set_scalars(&values);
                    stats.paths[index] = PathStats {
                        key,
                        counters,
                        open_connections: u16::from_le_bytes([body[3], body[4]]),
                        queued: u16::from_le_bytes([body[5], body[6]]),
                        tcp: None,
                    };
                    stats.path_count += 1;
                }
                section::TRANSPORT => {
                    let mut values = [0u64; 10];
                    fill(&mut values, body);
                    stats.transport.set_scalars(&values);
                }
                section::TRANSPORT_DROPS => fill(&mut stats.transport.drops, body),
                section::PEER_DROPS => {
                    let (&peer, counts) =
                        body.split_first().ok_or(SnapshotError::BadSection(tag))?;
                    let slot = stats
                        .transport
                        .peer_drops
                        .get_mut(usize::from(peer))
                        .ok_or(SnapshotError::BadSection(tag))?;
                    for (count, word) in slot.iter_mut().zip(counts.chunks_exact(4)) {
                        *count = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    }
                }
                section::MEMORY => {
                    let mut values = [0u64; MemoryCounters::SCALARS];
                    fill(&mut values, body);
                    stats.memory.set_scalars(&values);
                }
                section::PATH_TCP => {
                    let (&index, counters) =
                        body.split_first().ok_or(SnapshotError::BadSection(tag))?;
                    if index >= stats.path_count {
                        return Err(SnapshotError::BadSection(tag));
                    }
                    let mut values = [0u64; TcpCounters::SCALARS];
                    fill(&mut values, counters);
                    let mut tcp = TcpCounters::default();
                    tcp.set_scalars(&values);
                    stats.paths[usize::from(index)].tcp = Some(tcp);
                }
                _ => {} // A section of a later version: skipped.
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::transport::TransportDrop;

    fn sample() -> CoreStats {
        let mut stats = CoreStats::empty(3);
        stats.uptime_ms = 123_456;
        stats.counters.rx_frames = 1;
        stats.counters.no_buffer = 10;
        stats.counters.longest_turn_cycles = 11;
        for (index, drop) in stats.counters.drops.iter_mut().enumerate() {
            *drop = 100 + index as u64;
        }
        for (index, key) in [
            PathKey::Arp,
            PathKey::Icmp,
            PathKey::Udp(7),
            PathKey::Tcp(11211),
        ]
        .into_iter()
        .enumerate()
        {
            stats.paths[index] = PathStats {
                key,
                counters: PathCounters {
                    packets: 1000 + index as u64,
                    connections: 7 * index as u64,
                    peer_messages: u64::MAX - index as u64,
                    cycles_transmit: 5 + index as u64,
                    ..PathStats::EMPTY.counters
                },
                open_connections: index as u16,
                queued: 3 * index as u16,
                tcp: (key == PathKey::Tcp(11211)).then_some(TcpCounters {
                    connections: 9000,
                    refused_limit: 2,
                    handed_over: 5,
                    ..TcpCounters::default()
                }),
            };
        }
        stats.path_count = 4;
        stats.memory.heap_high_water = 77 << 20;
        stats.memory.tcp_connections = 2500;
        stats.counters.reassembled = 3;
        stats.transport.sent = 55;
        stats.transport.outbox_high_water = 9;
        stats.transport.drops[TransportDrop::PeerFenced as usize] = 4;
        stats.transport.peer_drops[2][TransportDrop::OutboxFull as usize] = 3;
        stats.transport.peer_drops[63][TransportDrop::BulkExhausted as usize] = 1;
        stats
    }

    #[test]
    fn a_snapshot_survives_encoding_and_json_shows_the_transport() {
        let stats = sample();
        let bytes = stats.encode();
        assert_eq!(CoreStats::decode(&bytes), Ok(stats));
        let mut json = String::new();
        write_core(&stats, &mut json);
        assert!(json.contains("\"transport\":{\"sent\":55,"), "{json}");
        assert!(
            json.contains("\"drops_by_peer\":{\"2\":{\"outbox_full\":3,"),
            "{json}"
        );
        assert!(json.contains("\"63\":{\"outbox_full\":0,\"peer_fenced\":0,\"bulk_exhausted\":1"));
        assert!(json.contains("\"tcp\":{\"connections\":9000,"), "{json}");
        assert!(json.contains("\"heap_high_water\":80740352,"), "{json}");
        assert!(json.contains("\"reassembled\":3,"), "{json}");
    }

    #[test]
    fn huge_counters_from_another_core_render() {
        // Found by the fuzz target `stats_snapshot` (fuzz/regressions/stats_snapshot/): packets
        // plus queue drops overflowed while rendering another core's snapshot as /stats JSON.
        let mut stats = sample();
        stats.paths[0].counters.packets = u64::MAX;
        stats.paths[0].counters.queue_drops = 2;
        stats.paths[0].counters.cycles = 7;
        let mut json = String::new();
        write_core(&stats, &mut json);
        assert!(json.contains("\"cycles_per_packet\":0,"), "{json}");
    }

    #[test]
    fn truncated_or_foreign_snapshots_are_errors_and_later_additions_are_skipped() {
        let bytes = sample().encode();
        for length in 0..bytes.len() {
            // Every cut either fails or (at a section boundary) decodes a shorter snapshot.
            if let Ok(partial) = CoreStats::decode(&bytes[..length]) {
                assert_eq!(partial.core, 3);
            }
        }
        assert_eq!(
            CoreStats::decode(&bytes[..5]),
            Err(SnapshotError::Truncated)
        );
        let mut future = bytes.clone();
        future[0] = 9;
        assert_eq!(
            CoreStats::decode(&future),
            Err(SnapshotError::UnknownVersion(9))
        );
        // A later writer: an extra counter at the end of section 1, and an unknown section.
        let mut later = bytes[..12].to_vec();
        push_section(&mut later, section::COUNTERS, |out| {
            push_u64s(out, &[5; CoreCounters::SCALARS + 1])
        });
        push_section(&mut later, 200, |out| out.extend_from_slice(b"new"));
        let decoded = CoreStats::decode(&later).unwrap();
        assert_eq!(
            (decoded.counters.rx_frames, decoded.counters.no_buffer),
            (5, 5)
        );
        let mut bad = bytes[..12].to_vec();
        push_section(&mut bad, section::PATH, |out| {
            out.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0])
        });
        assert_eq!(
            CoreStats::decode(&bad),
            Err(SnapshotError::BadSection(section::PATH))
        );
        let mut seed = 7u32;
        for _ in 0..2000 {
            let mut noise = bytes.clone();
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let at = 2 + seed as usize % (noise.len() - 2);
            noise[at] ^= (seed >> 24) as u8 | 1;
            let _ = CoreStats::decode(&noise);
        }
    }
}
