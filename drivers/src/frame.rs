//! Minimal, bounds-checked parsing of Ethernet frames: enough to compute the RSS tuple a NIC
//! hashes, to match five-tuple filters, and to check IPv4/TCP/UDP checksums the way a NIC's
//! receive checksum offload does. Used by the simulated NIC and the register models; never trusts
//! a length field without checking it against the bytes present.
#![forbid(unsafe_code)]

use crate::nic::{ChecksumStatus, HashTypes};
use crate::rss::FlowTuple;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// IP protocol number of TCP.
pub const PROTOCOL_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// What a frame's headers say, as far as steering and checksum offload care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    /// The addresses, and ports when the frame is an unfragmented TCP or UDP segment.
    pub tuple: Option<FlowTuple>,
    /// IP protocol number (0 when not IP).
    pub protocol: u8,
    /// Whether the IP packet is a fragment (ports not hashed).
    pub fragment: bool,
    /// Offset of the IP header in the frame.
    ip_offset: usize,
    /// Offset of the L4 header, when present.
    l4_offset: Option<usize>,
    /// End of the IP packet within the frame (excludes Ethernet padding).
    ip_end: usize,
    /// IP version (4 or 6; 0 when not IP).
    version: u8,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Parses `frame`; `None` when it is not IPv4/IPv6 (e.g. ARP) or too short to be.
pub fn parse(frame: &[u8]) -> Option<ParsedFrame> {
    let ethertype = be16(frame, 12)?;
    let ip = 14;
    match ethertype {
        ETHERTYPE_IPV4 => {
            let header = frame.get(ip..ip + 20)?;
            if header[0] >> 4 != 4 {
                return None;
            }
            let header_len = usize::from(header[0] & 0x0F) * 4;
            let total_len = usize::from(be16(header, 2)?);
            if header_len < 20 || total_len < header_len || ip + total_len > frame.len() {
                return None;
            }
            let flags_fragment = be16(header, 6)?;
            let fragment = flags_fragment & 0x3FFF != 0; // MF set or offset non-zero
            let protocol = header[9];
            let source: [u8; 4] = header[12..16].try_into().ok()?;
            let destination: [u8; 4] = header[16..20].try_into().ok()?;
            let l4 = ip + header_len;
            let ports = ports_of(frame, protocol, fragment, l4, ip + total_len);
            Some(ParsedFrame {
                tuple: Some(FlowTuple::V4 {
                    source,
                    destination,
                    ports,
                }),
                protocol,
                fragment,
                ip_offset: ip,
                l4_offset: (!fragment).then_some(l4),
                ip_end: ip + total_len,
                version: 4,
            })
        }
        ETHERTYPE_IPV6 => {
            let header = frame.get(ip..ip + 40)?;
            if header[0] >> 4 != 6 {
                return None;
            }
            let payload_len = usize::from(be16(header, 4)?);
            let end = ip + 40 + payload_len;
            if end > frame.len() {
                return None;
            }
            // Extension headers are not walked: a next header other than TCP/UDP hashes as
            // address-only, which is what the NICs do with their "ex" hash types disabled.
            let protocol = header[6];
            let source: [u8; 16] = header[8..24].try_into().ok()?;
            let destination: [u8; 16] = header[24..40].try_into().ok()?;
            let l4 = ip + 40;
            let ports = ports_of(frame, protocol, false, l4, end);
            Some(ParsedFrame {
                tuple: Some(FlowTuple::V6 {
                    source,
                    destination,
                    ports,
                }),
                protocol,
                fragment: false,
                ip_offset: ip,
                l4_offset: Some(l4),
                ip_end: end,
                version: 6,
            })
        }
        _ => None,
    }
}

fn ports_of(
    frame: &[u8],
    protocol: u8,
    fragment: bool,
    l4: usize,
    end: usize,
) -> Option<(u16, u16)> {
    if fragment || !(protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP) || l4 + 4 > end {
        return None;
    }
    Some((be16(frame, l4)?, be16(frame, l4 + 2)?))
}

impl ParsedFrame {
    /// The tuple the NIC hashes under `types`, or `None` when no enabled type applies (the frame
    /// then goes to queue 0 with hash 0, like QEMU's igb with `E1000_MRQ_RSS_TYPE_NONE`).
    pub fn hash_tuple(&self, types: HashTypes) -> Option<FlowTuple> {
        let tuple = self.tuple?;
        let has_ports = matches!(
            tuple,
            FlowTuple::V4 { ports: Some(_), .. } | FlowTuple::V6 { ports: Some(_), .. }
        );
        let (ports_enabled, addresses_enabled) = match (self.version, self.protocol) {
            (4, PROTOCOL_TCP) => (types.tcp_ipv4, types.ipv4),
            (4, PROTOCOL_UDP) => (types.udp_ipv4, types.ipv4),
            (4, _) => (false, types.ipv4),
            (6, PROTOCOL_TCP) => (types.tcp_ipv6, types.ipv6),
            (6, PROTOCOL_UDP) => (types.udp_ipv6, types.ipv6),
            _ => (false, types.ipv6),
        };
        if has_ports && ports_enabled {
            Some(tuple)
        } else if addresses_enabled {
            Some(match tuple {
                FlowTuple::V4 {
                    source,
                    destination,
                    ..
                } => FlowTuple::V4 {
                    source,
                    destination,
                    ports: None,
                },
                FlowTuple::V6 {
                    source,
                    destination,
                    ..
                } => FlowTuple::V6 {
                    source,
                    destination,
                    ports: None,
                },
            })
        } else {
            None
        }
    }

    /// Checks the IPv4 header checksum and the TCP/UDP checksum, as receive checksum offload does.
    pub fn checksum_status(&self, frame: &[u8]) -> ChecksumStatus {
        let mut status = ChecksumStatus::default();
        if self.version == 4 {
            let header_len = usize::from(frame[self.ip_offset] & 0x0F) * 4;
            let header = &frame[self.ip_offset..self.ip_offset + header_len];
            if fold(sum(0, header)) == 0xFFFF {
                status.ipv4_ok = true;
            } else {
                status.error = true;
            }
        }
        let Some(l4) = self.l4_offset else {
            return status;
        };
        if !(self.protocol == PROTOCOL_TCP || self.protocol == PROTOCOL_UDP) {
            return status;
        }
        let segment = &frame[l4..self.ip_end];
        let minimum = if self.protocol == PROTOCOL_TCP { 20 } else { 8 };
        if segment.len() < minimum {
            status.error = true;
            return status;
        }
        if self.protocol == PROTOCOL_UDP && self.version == 4 && be16(segment, 6) == Some(0) {
            return status; // IPv4 UDP without checksum: nothing to check.
        }
        let mut total = match self.version {
            4 => sum(0, &frame[self.ip_offset + 12..self.ip_offset + 20]),
            _ => sum(0, &frame[self.ip_offset + 8..self.ip_offset + 40]),
        };
        total += u32::from(self.protocol) + segment.len() as u32;
        total = sum(total, segment);
        if fold(total) == 0xFFFF {
            status.l4_ok = true;
        } else {
            status.error = true;
        }
        status
    }
}

/// One's-complement sum of big-endian 16-bit words (odd byte padded with zero), not folded.
pub fn sum(mut total: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        total += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        total += u32::from(*last) << 8;
    }
    total
}

/// Folds a 32-bit one's-complement sum to 16 bits.
pub fn fold(mut total: u32) -> u16 {
    while total > 0xFFFF {
        total = (total & 0xFFFF) + (total >> 16);
    }
    total as u16
}

/// Builds a UDP-over-IPv4 Ethernet frame with correct checksums into `out`; returns its length.
/// For tests, the simulated NIC's users and the benchmark. `out` must hold 42 + payload bytes.
pub fn build_udp_ipv4(
    out: &mut [u8],
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    source: ([u8; 4], u16),
    destination: ([u8; 4], u16),
    payload: &[u8],
) -> usize {
    let length = 42 + payload.len();
    let out = &mut out[..length];
    out[0..6].copy_from_slice(&destination_mac);
    out[6..12].copy_from_slice(&source_mac);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_total = (20 + 8 + payload.len()) as u16;
    let ip = &mut out[14..34];
    ip.copy_from_slice(&[
        0x45,
        0,
        0,
        0,
        0,
        0,
        0x40,
        0,
        64,
        PROTOCOL_UDP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[12..16].copy_from_slice(&source.0);
    ip[16..20].copy_from_slice(&destination.0);
    let checksum = !fold(sum(0, ip));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp_len = (8 + payload.len()) as u16;
    out[34..36].copy_from_slice(&source.1.to_be_bytes());
    out[36..38].copy_from_slice(&destination.1.to_be_bytes());
    out[38..40].copy_from_slice(&udp_len.to_be_bytes());
    out[40..42].fill(0);
    out[42..].copy_from_slice(payload);
    let mut total = sum(0, &source.0);
    total = sum(total, &destination.0);
    total += u32::from(PROTOCOL_UDP) + u32::from(udp_len);
    total = sum(total, &out[34..]);
    let mut checksum = !fold(total);
    if checksum == 0 {
        checksum = 0xFFFF;
    }
    out[40..42].copy_from_slice(&checksum.to_be_bytes());
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame() -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; 100];
        let n = build_udp_ipv4(
            &mut out,
            [2; 6],
            [4; 6],
            ([10, 0, 0, 1], 4000),
            ([10, 0, 0, 2], 7),
            b"hello",
        );
        out.truncate(n);
        out
    }

    #[test]
    fn parses_udp_and_checks_checksums() {
        let frame = udp_frame();
        let parsed = parse(&frame).unwrap();
        assert_eq!(
            parsed.tuple,
            Some(FlowTuple::V4 {
                source: [10, 0, 0, 1],
                destination: [10, 0, 0, 2],
                ports: Some((4000, 7))
            })
        );
        let status = parsed.checksum_status(&frame);
        assert!(status.ipv4_ok && status.l4_ok && !status.error);
        let mut bad = frame.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        let status = parse(&bad).unwrap().checksum_status(&bad);
        assert!(status.ipv4_ok && !status.l4_ok && status.error);
    }

    #[test]
    fn hash_tuple_follows_hash_types() {
        let parsed = parse(&udp_frame()).unwrap();
        let none = HashTypes {
            ipv4: false,
            tcp_ipv4: false,
            udp_ipv4: false,
            ipv6: false,
            tcp_ipv6: false,
            udp_ipv6: false,
        };
        assert_eq!(parsed.hash_tuple(none), None);
        let addresses_only = HashTypes { ipv4: true, ..none };
        assert!(matches!(
            parsed.hash_tuple(addresses_only),
            Some(FlowTuple::V4 { ports: None, .. })
        ));
        assert!(matches!(
            parsed.hash_tuple(HashTypes::ALL),
            Some(FlowTuple::V4 { ports: Some(_), .. })
        ));
    }

    #[test]
    fn rejects_short_non_ip_and_lying_lengths() {
        assert_eq!(parse(&[0u8; 10]), None);
        let mut arp = std::vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), None);
        let mut frame = udp_frame();
        frame[16..18].copy_from_slice(&2000u16.to_be_bytes()); // IP total length beyond the frame
        assert_eq!(parse(&frame), None);
        // Fragments hash without ports.
        let mut fragment = udp_frame();
        fragment[20] = 0x20; // MF
        assert!(matches!(
            parse(&fragment).unwrap().tuple,
            Some(FlowTuple::V4 { ports: None, .. })
        ));
    }
}
