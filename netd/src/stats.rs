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
}

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
}

impl PathStats {
    /// A placeholder for unused array entries.
    pub const EMPTY: PathStats = PathStats {
        key: PathKey::Arp,
        counters: PathCounters::ZERO,
        open_connections: 0,
        queued: 0,
    };

    /// The snapshot entry of `path`.
    pub fn of(path: &Path) -> Self {
        Self {
            key: path.key(),
            counters: *path.counters(),
            open_connections: path.open_connections() as u16,
            queued: path.queued() as u16,
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
}

impl CurrentPath<'_> {
    fn stats(&self) -> PathStats {
        PathStats {
            key: self.key,
            counters: *self.counters,
            open_connections: self.open_connections,
            queued: self.queued,
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
            per_packet(p.cycles, p.packets + p.queue_drops),
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
    }
    out.push_str("]}");
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
