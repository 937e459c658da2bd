//! Counters of one core's stack, the `Copy` snapshot the monitor gathers from every core, and its
//! JSON form served by the HTTP application at `/stats`.

use crate::classify::{DropReason, PathKey, MAX_PATHS};
use crate::config::{CoreId, Dotted, MacAddress, NetConfig};
use crate::path::PathCounters;
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
    /// The kernel's cross-core transport (its mailbox), as last handed over.
    pub transport: TransportCounters,
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
        out.push_str("],");
        core.transport.write_json(out);
        out.push('}');
    }
    out.push_str("]}");
}

/// Version of the snapshot encoding [`CoreStats::encode`] writes.
pub const SNAPSHOT_VERSION: u16 = 1;

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
        }
    }

    /// The snapshot as bytes, to carry to another core: version (u16), core (u16) and uptime
    /// (u64), then sections of `tag (u8), length (u16), body`, every number little-endian.
    /// Sections: 1 core counters (u64s: rx_frames, rx_bytes, tx_frames, tx_bytes,
    /// forwarded_out, forwarded_in, neighbours_sent, neighbours_installed, polls, no_buffer),
    /// 2 drops by reason (u64s), 3 one per path (kind u8: 0 ARP, 1 ICMP, 2 UDP, 3 TCP; port u16;
    /// open connections u16; then the path's u64 counters in declaration order), 4 transport
    /// (u64s, `TransportCounters::scalars` order), 5 transport refusals by reason (u64s), 6 one
    /// per peer with refusals (peer u8, then u32s by reason). A reader skips sections it does not
    /// know and takes missing trailing numbers as 0, so counters are added at the end of a section
    /// (or in a new section) without a version change.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 110 * usize::from(self.path_count));
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.core.to_le_bytes());
        out.extend_from_slice(&self.uptime_ms.to_le_bytes());
        let c = &self.counters;
        push_section(&mut out, section::COUNTERS, |out| {
            push_u64s(
                out,
                &[
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
                ],
            )
        });
        push_section(&mut out, section::DROPS, |out| push_u64s(out, &c.drops));
        for path in self.paths() {
            push_section(&mut out, section::PATH, |out| {
                let (kind, port) = match path.key {
                    PathKey::Arp => (0u8, 0u16),
                    PathKey::Icmp => (1, 0),
                    PathKey::Udp(port) => (2, port),
                    PathKey::Tcp(port) => (3, port),
                };
                out.push(kind);
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(&path.open_connections.to_le_bytes());
                let p = &path.counters;
                push_u64s(
                    out,
                    &[
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
                    ],
                );
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
                    let mut values = [0u64; 10];
                    fill(&mut values, body);
                    let c = &mut stats.counters;
                    [
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
                    ] = values;
                }
                section::DROPS => fill(&mut stats.counters.drops, body),
                section::PATH => {
                    let index = usize::from(stats.path_count);
                    if index >= MAX_PATHS || body.len() < 5 {
                        return Err(SnapshotError::BadSection(tag));
                    }
                    let port = u16::from_le_bytes([body[1], body[2]]);
                    let key = match body[0] {
                        0 => PathKey::Arp,
                        1 => PathKey::Icmp,
                        2 => PathKey::Udp(port),
                        3 => PathKey::Tcp(port),
                        _ => return Err(SnapshotError::BadSection(tag)),
                    };
                    let mut values = [0u64; 11];
                    fill(&mut values, &body[5..]);
                    let [packets, bytes, queue_drops, forwarded_in, tx_packets, tx_bytes, tx_drops, cycles, runs, peer_messages, connections] =
                        values;
                    stats.paths[index] = PathStats {
                        key,
                        counters: PathCounters {
                            packets,
                            bytes,
                            queue_drops,
                            forwarded_in,
                            tx_packets,
                            tx_bytes,
                            tx_drops,
                            cycles,
                            runs,
                            peer_messages,
                            connections,
                        },
                        open_connections: u16::from_le_bytes([body[3], body[4]]),
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
                    ..PathStats::EMPTY.counters
                },
                open_connections: index as u16,
            };
        }
        stats.path_count = 4;
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
        write_json(
            &NetConfig::new([2, 0, 0, 0, 0, 1], 0, 4),
            &[stats],
            &mut json,
        );
        assert!(json.contains("\"transport\":{\"sent\":55,"), "{json}");
        assert!(
            json.contains("\"drops_by_peer\":{\"2\":{\"outbox_full\":3,"),
            "{json}"
        );
        assert!(json.contains("\"63\":{\"outbox_full\":0,\"peer_fenced\":0,\"bulk_exhausted\":1"));
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
        future[0] = 2;
        assert_eq!(
            CoreStats::decode(&future),
            Err(SnapshotError::UnknownVersion(2))
        );
        // A later writer: an extra counter at the end of section 1, and an unknown section.
        let mut later = bytes[..12].to_vec();
        push_section(&mut later, section::COUNTERS, |out| {
            push_u64s(out, &[5; 11])
        });
        push_section(&mut later, 200, |out| out.extend_from_slice(b"new"));
        let decoded = CoreStats::decode(&later).unwrap();
        assert_eq!(
            (decoded.counters.rx_frames, decoded.counters.no_buffer),
            (5, 5)
        );
        let mut bad = bytes[..12].to_vec();
        push_section(&mut bad, section::PATH, |out| {
            out.extend_from_slice(&[9, 0, 0, 0, 0])
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
