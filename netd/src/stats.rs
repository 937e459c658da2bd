//! Counters of one core's stack, the `Copy` snapshot the monitor gathers from every core, and its
//! JSON form served by the HTTP application at `/stats`.

use crate::classify::{DropReason, PathKey, MAX_PATHS};
use crate::config::{CoreId, Dotted, MacAddress, NetConfig};
use crate::path::PathCounters;
use core::fmt::Write;

extern crate alloc;
use alloc::string::String;

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
    /// Poll steps run.
    pub polls: u64,
    /// Received frames dropped because no pool buffer was free to copy a forwarded frame into.
    pub no_buffer: u64,
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
}

impl PathStats {
    /// A placeholder for unused array entries.
    pub const EMPTY: PathStats = PathStats {
        key: PathKey::Arp,
        counters: PathCounters {
            packets: 0,
            bytes: 0,
            queue_drops: 0,
            forwarded_in: 0,
            tx_packets: 0,
            tx_bytes: 0,
            tx_drops: 0,
            cycles: 0,
            runs: 0,
            peer_messages: 0,
            connections: 0,
        },
        open_connections: 0,
    };
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

/// The name of a path in JSON and logs, e.g. `tcp:80`.
pub fn path_name(key: PathKey, out: &mut String) {
    let _ = match key {
        PathKey::Arp => write!(out, "arp"),
        PathKey::Icmp => write!(out, "icmp"),
        PathKey::Udp(port) => write!(out, "udp:{port}"),
        PathKey::Tcp(port) => write!(out, "tcp:{port}"),
    };
}

/// Appends `{"host":{...},"cores":[...]}` to `out`: the machine's addresses as people write
/// them (`"ip":"10.0.2.15/24","gateway":"10.0.2.2","mac":"52:54:00:12:34:56"`), then `cores`.
pub fn write_json(host: &NetConfig, cores: &[CoreStats], out: &mut String) {
    let _ = write!(
        out,
        "{{\"host\":{{\"ip\":\"{}\",\"gateway\":\"{}\",\"mac\":\"{}\"}},\"cores\":[",
        host.addresses.ip,
        Dotted(host.addresses.gateway),
        MacAddress(host.mac)
    );
    for (index, core) in cores.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let c = &core.counters;
        let _ = write!(
            out,
            "{{\"core\":{},\"uptime_ms\":{},\"rx_frames\":{},\"rx_bytes\":{},\"tx_frames\":{},\"tx_bytes\":{},\
             \"forwarded_out\":{},\"forwarded_in\":{},\"neighbours_sent\":{},\"neighbours_installed\":{},\
             \"polls\":{},\"no_buffer\":{},\"drops\":{{",
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
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{}\":{}", reason.name(), c.drops[*reason as usize]);
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
                "\",\"packets\":{},\"bytes\":{},\"queue_drops\":{},\"forwarded_in\":{},\"tx_packets\":{},\
                 \"tx_bytes\":{},\"tx_drops\":{},\"cycles\":{},\"runs\":{},\"peer_messages\":{},\
                 \"connections\":{},\"open_connections\":{}}}",
                p.packets,
                p.bytes,
                p.queue_drops,
                p.forwarded_in,
                p.tx_packets,
                p.tx_bytes,
                p.tx_drops,
                p.cycles,
                p.runs,
                p.peer_messages,
                p.connections,
                path.open_connections,
            );
        }
        out.push_str("]}");
    }
    out.push_str("]}");
}
