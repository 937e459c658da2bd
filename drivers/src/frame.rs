//! What a NIC sees in a frame, parsed with `smoltcp::wire` (its checked constructors are the
//! no-panic contract): the RSS tuple a NIC hashes, the fields five-tuple filters match, the
//! receive checksum check a NIC's checksum offload does, and the transmit checksums it fills in.
//! Used by the simulated NIC and the register models; never trusts a length field without
//! checking it against the bytes present. The checksum arithmetic is smoltcp's (`wire::checksum`),
//! the one internet-checksum routine of the workspace.
//!
//! Only Ethernet II frames carrying IPv4 are parsed: Flotilla is IPv4-only, so the simulated
//! NIC and the models steer other frames (IPv6 included) like non-IP ones, to queue 0 unhashed.
#![forbid(unsafe_code)]

use crate::nic::{ChecksumStatus, HashTypes, TxChecksum, TxL4Checksum};
use crate::rss::FlowTuple;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

/// IP protocol number of TCP.
pub const PROTOCOL_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// What a frame's headers say, as far as steering and checksum offload care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    /// The addresses, and ports when the frame is an unfragmented TCP or UDP segment.
    pub tuple: Option<FlowTuple>,
    /// IP protocol number.
    pub protocol: u8,
    /// Whether the IP packet is a fragment (ports not hashed).
    pub fragment: bool,
}

/// The IPv4 packet inside an Ethernet II frame, if the frame is one.
fn ipv4_of(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let header = &frame[EthernetFrame::<&[u8]>::header_len()..];
    let ip = Ipv4Packet::new_checked(header).ok()?;
    (ip.version() == 4).then_some(ip)
}

fn is_fragment<T: AsRef<[u8]>>(ip: &Ipv4Packet<T>) -> bool {
    ip.more_frags() || ip.frag_offset() != 0
}

/// Parses `frame`; `None` when it is not IPv4 (e.g. ARP, IPv6) or too short to be.
pub fn parse(frame: &[u8]) -> Option<ParsedFrame> {
    let ip = ipv4_of(frame)?;
    let fragment = is_fragment(&ip);
    let protocol = u8::from(ip.next_header());
    let payload = ip.payload();
    let ports = match ip.next_header() {
        _ if fragment => None,
        IpProtocol::Udp => UdpPacket::new_checked(payload)
            .ok()
            .map(|udp| (udp.src_port(), udp.dst_port())),
        IpProtocol::Tcp => TcpPacket::new_checked(payload)
            .ok()
            .map(|tcp| (tcp.src_port(), tcp.dst_port())),
        _ => None,
    };
    Some(ParsedFrame {
        tuple: Some(FlowTuple::V4 {
            source: ip.src_addr().octets(),
            destination: ip.dst_addr().octets(),
            ports,
        }),
        protocol,
        fragment,
    })
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
        let (ports_enabled, addresses_enabled) = match self.protocol {
            PROTOCOL_TCP => (types.tcp_ipv4, types.ipv4),
            PROTOCOL_UDP => (types.udp_ipv4, types.ipv4),
            _ => (false, types.ipv4),
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
        let Some(ip) = ipv4_of(frame) else {
            return status;
        };
        if ip.verify_checksum() {
            status.ipv4_ok = true;
        } else {
            status.error = true;
        }
        if self.fragment {
            return status;
        }
        let (source, destination) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        let valid = match ip.next_header() {
            IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
                // IPv4 UDP without checksum: nothing to check.
                Ok(udp) if udp.checksum() == 0 => return status,
                Ok(udp) => udp.verify_checksum(&source, &destination),
                Err(_) => false,
            },
            IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()) {
                Ok(tcp) => tcp.verify_checksum(&source, &destination),
                Err(_) => false,
            },
            _ => return status,
        };
        if valid {
            status.l4_ok = true;
        } else {
            status.error = true;
        }
        status
    }
}

/// The lengths of an IPv4 frame's link-layer and IPv4 headers (what a transmit context's MACLEN
/// and IPLEN must say), or `None` when the frame is not IPv4.
pub fn header_lengths(frame: &[u8]) -> Option<(u8, u8)> {
    let ip = ipv4_of(frame)?;
    Some((EthernetFrame::<&[u8]>::header_len() as u8, ip.header_len()))
}

/// What a device's transmit checksum offload did to one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadApplied {
    /// The IPv4 header checksum was computed.
    pub ipv4_header: bool,
    /// The TCP or UDP checksum was computed.
    pub l4: bool,
}

/// Fills in the checksums `offload` asks for, as a NIC's transmit checksum offload does (and as
/// QEMU's igb model does it: the L4 checksum field is zeroed and recomputed over the pseudo-header
/// and the segment, whatever software seeded it with). Frames that are not IPv4, or whose L4
/// header does not match the request, are left alone (a device would send them as they are).
pub fn apply_tx_checksums(frame: &mut [u8], offload: TxChecksum) -> OffloadApplied {
    let mut applied = OffloadApplied::default();
    if ipv4_of(frame).is_none() {
        return applied;
    }
    let Ok(mut ethernet) = EthernetFrame::new_checked(frame) else {
        return applied;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(ethernet.payload_mut()) else {
        return applied;
    };
    if offload.ipv4_header {
        ip.fill_checksum();
        applied.ipv4_header = true;
    }
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let protocol = ip.next_header();
    let fragment = is_fragment(&ip);
    match (offload.l4, protocol) {
        (Some(TxL4Checksum::Udp), IpProtocol::Udp) if !fragment => {
            if let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) {
                udp.fill_checksum(&source, &destination);
                applied.l4 = true;
            }
        }
        (Some(TxL4Checksum::Tcp), IpProtocol::Tcp) if !fragment => {
            if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
                tcp.fill_checksum(&source, &destination);
                applied.l4 = true;
            }
        }
        _ => {}
    }
    applied
}

/// Segment `index` of the Ethernet/IPv4/TCP packet `packet` cut at `mss` payload bytes (TCP
/// segmentation as a NIC does it: the headers copied, the sequence number advanced, the IPv4
/// total length and identification (+`index`) set, FIN and PSH kept on the last segment only,
/// both checksums computed), written into `out`; returns its length, or `None` past the last
/// segment or when `packet` is not such a packet or `out` is too short.
pub fn tcp_segment(packet: &[u8], mss: usize, index: usize, out: &mut [u8]) -> Option<usize> {
    let ip = ipv4_of(packet)?;
    if ip.next_header() != IpProtocol::Tcp || is_fragment(&ip) || mss == 0 {
        return None;
    }
    let ip_header = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let tcp_header = usize::from(tcp.header_len());
    let payload = tcp.payload();
    let segments = payload.len().div_ceil(mss).max(1);
    if index >= segments {
        return None;
    }
    let start = index * mss;
    let chunk = &payload[start..(start + mss).min(payload.len())];
    let headers = ETHERNET_HEADER + ip_header + tcp_header;
    let length = headers + chunk.len();
    let out = out.get_mut(..length)?;
    out[..headers].copy_from_slice(&packet[..headers]);
    out[headers..].copy_from_slice(chunk);
    let last = index + 1 == segments;
    let (identification, sequence) = (ip.ident(), tcp.seq_number());
    let mut ip = Ipv4Packet::new_unchecked(&mut out[ETHERNET_HEADER..]);
    ip.set_total_len((ip_header + tcp_header + chunk.len()) as u16);
    ip.set_ident(identification.wrapping_add(index as u16));
    ip.fill_checksum();
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let mut tcp = TcpPacket::new_unchecked(&mut out[ETHERNET_HEADER + ip_header..]);
    tcp.set_seq_number(sequence + start);
    if !last {
        tcp.set_fin(false);
        tcp.set_psh(false);
    }
    tcp.fill_checksum(&source, &destination);
    Some(length)
}

/// Bytes of an Ethernet II header.
const ETHERNET_HEADER: usize = 14;

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
    let udp = UdpRepr {
        src_port: source.1,
        dst_port: destination.1,
    };
    let ip = Ipv4Repr {
        src_addr: Ipv4Address::from_octets(source.0),
        dst_addr: Ipv4Address::from_octets(destination.0),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(source_mac),
        dst_addr: EthernetAddress(destination_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let length = ethernet.buffer_len() + ip.buffer_len() + ip.payload_len;
    let checksums = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut out[..length]);
    ethernet.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &checksums);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        payload.len(),
        |bytes| bytes.copy_from_slice(payload),
        &checksums,
    );
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
        assert_eq!(frame.len(), 42 + 5);
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
        let mut bad = frame.clone();
        bad[14 + 8] ^= 1; // TTL: the IPv4 header checksum no longer matches
        let status = parse(&bad).unwrap().checksum_status(&bad);
        assert!(!status.ipv4_ok && status.error);
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
        let mut ipv6 = std::vec![0u8; 80];
        ipv6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(parse(&ipv6), None, "IPv6 is not parsed");
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
        // A UDP header shorter than 8 bytes: addresses only.
        let mut short = udp_frame();
        short[16..18].copy_from_slice(&(20u16 + 4).to_be_bytes());
        assert!(matches!(
            parse(&short).unwrap().tuple,
            Some(FlowTuple::V4 { ports: None, .. })
        ));
    }

    #[test]
    fn transmit_offload_fills_what_was_asked() {
        let good = udp_frame();
        let mut frame = good.clone();
        frame[24..26].fill(0); // IPv4 header checksum
        frame[40..42].copy_from_slice(&[0x12, 0x34]); // a seed the device ignores
        let none = apply_tx_checksums(&mut frame.clone(), TxChecksum::default());
        assert_eq!(none, OffloadApplied::default());
        let applied = apply_tx_checksums(
            &mut frame,
            TxChecksum {
                ipv4_header: true,
                l4: Some(TxL4Checksum::Udp),
                l2_length: 14,
                l3_length: 20,
            },
        );
        assert_eq!(
            applied,
            OffloadApplied {
                ipv4_header: true,
                l4: true
            }
        );
        assert_eq!(frame, good);
        // A TCP request on a UDP frame is not honoured.
        let mut frame = good.clone();
        let applied = apply_tx_checksums(
            &mut frame,
            TxChecksum {
                ipv4_header: false,
                l4: Some(TxL4Checksum::Tcp),
                l2_length: 14,
                l3_length: 20,
            },
        );
        assert!(!applied.l4);
    }

    #[test]
    fn tcp_segments_carry_their_own_headers_and_checksums() {
        use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
        let payload: std::vec::Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let tcp = TcpRepr {
            src_port: 7,
            dst_port: 40000,
            control: TcpControl::Fin,
            seq_number: TcpSeqNumber(100),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &payload,
        };
        let (source, destination) = (
            Ipv4Address::new(10, 0, 2, 15),
            Ipv4Address::new(10, 0, 2, 2),
        );
        let ip = Ipv4Repr {
            src_addr: source,
            dst_addr: destination,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut packet = std::vec![0u8; 14 + 20 + tcp.buffer_len()];
        packet[12..14].copy_from_slice(&[0x08, 0x00]);
        let checksums = ChecksumCapabilities::default();
        let mut ipv4 = Ipv4Packet::new_unchecked(&mut packet[14..]);
        ip.emit(&mut ipv4, &checksums);
        tcp.emit(
            &mut TcpPacket::new_unchecked(ipv4.payload_mut()),
            &IpAddress::Ipv4(source),
            &IpAddress::Ipv4(destination),
            &checksums,
        );
        let mut out = [0u8; 1600];
        let mut total = 0;
        for index in 0..3 {
            let length = tcp_segment(&packet, 1400, index, &mut out).unwrap();
            let ip = Ipv4Packet::new_checked(&out[14..length]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), length - 14);
            let segment = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(segment.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
            assert_eq!(
                segment.seq_number(),
                TcpSeqNumber(100 + 1400 * index as i32)
            );
            assert_eq!(segment.fin(), index == 2);
            assert_eq!(
                segment.payload(),
                &payload[1400 * index..(1400 * (index + 1)).min(3000)]
            );
            total += segment.payload().len();
        }
        assert_eq!(total, 3000);
        assert_eq!(tcp_segment(&packet, 1400, 3, &mut out), None);
        assert_eq!(tcp_segment(&packet[..30], 1400, 0, &mut out), None);
        assert_eq!(tcp_segment(&packet, 1400, 0, &mut out[..100]), None);
    }
}
