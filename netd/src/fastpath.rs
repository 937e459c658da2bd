//! The UDP fast path: an application that answers datagrams in place gets the payload inside
//! the received frame's own pool buffer, and the reply leaves from that same buffer — no smoltcp
//! socket, no copy, no second buffer. Only frames the classifier already accepted come here
//! (Ethernet II, IPv4 with valid header and lengths, UDP to our address with a valid or absent
//! checksum); the headers are read and rewritten through `smoltcp::wire` (checked constructors,
//! no byte offsets here), and when the NIC offers transmit checksum offload the checksums are
//! left to it.
#![forbid(unsafe_code)]

use drivers::nic::{QueueCapabilities, TxChecksum, TxL4Checksum};
use smoltcp::wire::{
    checksum, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address,
    Ipv4Packet, UdpPacket, ETHERNET_HEADER_LEN, UDP_HEADER_LEN,
};

/// Largest frame the fast path builds (no jumbo frames).
pub const MAX_FRAME: usize = 1514;

/// Hop limit of replies.
const REPLY_HOP_LIMIT: u8 = 64;

/// A reply built in place: its length and the checksums left to the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InPlaceReply {
    /// Length of the reply frame.
    pub length: usize,
    /// What the NIC must compute ([`TxChecksum::NONE`] when software did it all).
    pub checksum: TxChecksum,
}

/// Answers the UDP datagram in `frame[..length]` in place. `answer` gets the payload area (the
/// request's `n` bytes first; the whole rest of the buffer up to a full frame is writable) and the
/// sender's address and port, and returns the reply's length, or `None` for no reply. Returns the reply frame, with Ethernet,
/// IPv4 and UDP headers turned around and sent from `our_mac` and `our_ip` (never from the
/// request's destination, which may be a broadcast address); its checksums are computed here, or left to the NIC for
/// what `offload` says it computes (the IPv4 checksum field then holds 0 and the UDP one the
/// pseudo-header sum, as the 82576 and 82599 datasheets ask). `None` when there is no reply or
/// the frame is not a plain IPv4/UDP frame.
#[inline]
pub fn answer_in_place(
    frame: &mut [u8],
    length: usize,
    our_mac: [u8; 6],
    our_ip: [u8; 4],
    offload: QueueCapabilities,
    answer: impl FnOnce(&mut [u8], usize, ([u8; 4], u16)) -> Option<usize>,
) -> Option<InPlaceReply> {
    let length = length.min(frame.len());
    // Read the request (validated by the classifier; checked again, it costs a few compares).
    let (peer_mac, header_length, request_payload, sender) = {
        let ethernet = EthernetFrame::new_checked(&frame[..length]).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..length]).ok()?;
        if ip.version() != 4 || ip.next_header() != IpProtocol::Udp {
            return None;
        }
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        (
            ethernet.src_addr(),
            usize::from(ip.header_len()),
            usize::from(udp.len()) - UDP_HEADER_LEN,
            (ip.src_addr().octets(), udp.src_port()),
        )
    };
    let payload_at = ETHERNET_HEADER_LEN + header_length + UDP_HEADER_LEN;
    let capacity = frame.len().min(MAX_FRAME).checked_sub(payload_at)?;
    let reply = answer(
        &mut frame[payload_at..payload_at + capacity],
        request_payload,
        sender,
    )?;
    if reply > capacity {
        return None;
    }
    let reply_length = payload_at + reply;
    let datagram_length = (UDP_HEADER_LEN + reply) as u16;

    // The write views below cover exactly the reply, whose headers are the request's (checked
    // above: Ethernet, an IPv4 header of `header_length` bytes, 8 bytes of UDP header) and whose
    // payload `answer` wrote: every field they touch lies inside them, so they are built
    // unchecked, once each.
    let reply_frame = &mut frame[..reply_length];
    let mut ethernet = EthernetFrame::new_unchecked(&mut reply_frame[..]);
    ethernet.set_dst_addr(peer_mac);
    ethernet.set_src_addr(EthernetAddress(our_mac));
    // IPv4: to the sender from our own address (a datagram to a broadcast address is answered
    // from it too: a broadcast source is invalid, RFC 1122 3.2.1.3), fresh TTL, the reply's length.
    let mut ip = Ipv4Packet::new_unchecked(&mut reply_frame[ETHERNET_HEADER_LEN..]);
    let (peer, us) = (ip.src_addr(), Ipv4Address::from_octets(our_ip));
    ip.set_src_addr(us);
    ip.set_dst_addr(peer);
    ip.set_hop_limit(REPLY_HOP_LIMIT);
    ip.set_total_len((header_length + usize::from(datagram_length)) as u16);
    let offload_ipv4 = offload.tx_checksum_ipv4;
    if offload_ipv4 {
        ip.set_checksum(0);
    } else {
        ip.fill_checksum();
    }
    // UDP: swap ports, the reply's length, the checksum (or its pseudo-header seed).
    let mut udp = UdpPacket::new_unchecked(&mut reply_frame[ETHERNET_HEADER_LEN + header_length..]);
    let (source_port, destination_port) = (udp.src_port(), udp.dst_port());
    udp.set_src_port(destination_port);
    udp.set_dst_port(source_port);
    udp.set_len(datagram_length);
    let offload_udp = offload.tx_checksum_udp;
    if offload_udp {
        udp.set_checksum(checksum::pseudo_header_v4(
            &us,
            &peer,
            IpProtocol::Udp,
            u32::from(datagram_length),
        ));
    } else {
        udp.fill_checksum(&IpAddress::Ipv4(us), &IpAddress::Ipv4(peer));
    }
    let checksum = if offload_ipv4 || offload_udp {
        TxChecksum {
            ipv4_header: offload_ipv4,
            l4: offload_udp.then_some(TxL4Checksum::Udp),
            l2_length: ETHERNET_HEADER_LEN as u8,
            l3_length: header_length as u8,
        }
    } else {
        TxChecksum::NONE
    };
    Some(InPlaceReply {
        length: reply_length,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers::frame::{apply_tx_checksums, build_udp_ipv4};
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Address, Ipv4Packet, UdpPacket};

    const US: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const US_IP: [u8; 4] = [10, 0, 2, 15];
    const NO_OFFLOAD: QueueCapabilities = QueueCapabilities {
        tx_checksum_ipv4: false,
        tx_checksum_udp: false,
        tx_checksum_tcp: false,
        tx_tcp_segmentation: false,
    };

    /// A request in a 2 KiB buffer (as in a pool buffer) and its length.
    fn request(payload: &[u8]) -> (std::vec::Vec<u8>, usize) {
        let mut frame = std::vec![0u8; 2048];
        let length = build_udp_ipv4(
            &mut frame,
            [2, 0, 0, 0, 0, 9],
            US,
            ([10, 0, 2, 2], 40000),
            ([10, 0, 2, 15], 7),
            payload,
        );
        (frame, length)
    }

    fn check_reply(frame: &[u8], payload: &[u8]) {
        let ethernet = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(ethernet.dst_addr().as_bytes(), &[2, 0, 0, 0, 0, 9]);
        assert_eq!(ethernet.src_addr().as_bytes(), &US);
        let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Address::new(10, 0, 2, 15));
        assert_eq!(ip.dst_addr(), Ipv4Address::new(10, 0, 2, 2));
        assert_eq!(ip.hop_limit(), 64);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert_ne!(udp.checksum(), 0);
        assert_eq!((udp.src_port(), udp.dst_port()), (7, 40000));
        assert_eq!(udp.payload(), payload);
    }

    #[test]
    fn echo_reply_has_turned_headers_and_valid_checksums() {
        let (mut frame, length) = request(b"hello, fast path");
        let reply =
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n)).unwrap();
        assert_eq!(reply.length, length);
        assert_eq!(reply.checksum, TxChecksum::NONE);
        check_reply(&frame[..reply.length], b"hello, fast path");
    }

    #[test]
    fn longer_and_shorter_replies_fit_and_odd_lengths_checksum_right() {
        let (mut frame, length) = request(b"x");
        let reply = answer_in_place(
            &mut frame,
            length,
            US,
            US_IP,
            NO_OFFLOAD,
            |payload, _, _| {
                payload[..101].fill(b'y');
                Some(101)
            },
        )
        .unwrap();
        check_reply(&frame[..reply.length], &[b'y'; 101]);
        let (mut frame, length) = request(&[b'z'; 300]);
        let reply =
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, _, _| Some(3)).unwrap();
        assert_eq!(reply.length, 42 + 3);
        check_reply(&frame[..reply.length], b"zzz");
    }

    #[test]
    fn with_offload_the_nic_fills_the_checksums() {
        let offload = QueueCapabilities {
            tx_checksum_ipv4: true,
            tx_checksum_udp: true,
            tx_checksum_tcp: true,
            tx_tcp_segmentation: true,
        };
        let (mut frame, length) = request(b"offloaded");
        let reply =
            answer_in_place(&mut frame, length, US, US_IP, offload, |_, n, _| Some(n)).unwrap();
        assert_eq!(
            reply.checksum,
            TxChecksum {
                ipv4_header: true,
                l4: Some(TxL4Checksum::Udp),
                l2_length: 14,
                l3_length: 20
            }
        );
        let mut wire = frame[..reply.length].to_vec();
        {
            let ip = Ipv4Packet::new_checked(&wire[14..]).unwrap();
            assert_eq!(ip.checksum(), 0, "left to the NIC");
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            let seed = checksum::pseudo_header_v4(
                &ip.src_addr(),
                &ip.dst_addr(),
                IpProtocol::Udp,
                u32::from(udp.len()),
            );
            assert_eq!(udp.checksum(), seed, "seeded with the pseudo-header sum");
        }
        let applied = apply_tx_checksums(&mut wire, reply.checksum);
        assert!(applied.ipv4_header && applied.l4);
        check_reply(&wire, b"offloaded");
    }

    #[test]
    fn a_datagram_to_a_broadcast_address_is_answered_from_our_own() {
        // Caught by the `classify` fuzz target's reply check (fuzz/regressions/classify/udp-broadcast-source):
        // the reply took the request's destination, 255.255.255.255, as its source.
        for broadcast in [[255; 4], [10, 0, 2, 255]] {
            let mut frame = std::vec![0u8; 2048];
            let length = build_udp_ipv4(
                &mut frame,
                [2, 0, 0, 0, 0, 9],
                [0xff; 6],
                ([10, 0, 2, 2], 40000),
                (broadcast, 7),
                b"anyone?",
            );
            let reply =
                answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n))
                    .unwrap();
            check_reply(&frame[..reply.length], b"anyone?");
        }
    }

    #[test]
    fn malformed_or_oversized_frames_get_no_reply() {
        let (good, length) = request(b"abc");
        for cut in 0..length {
            let mut frame = good.clone();
            assert_eq!(
                answer_in_place(&mut frame, cut, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n)),
                None,
                "cut {cut}"
            );
        }
        let mut frame = good.clone();
        frame[23] = 6; // TCP
        assert_eq!(
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n)),
            None
        );
        let mut frame = good.clone();
        frame[38..40].copy_from_slice(&3u16.to_be_bytes()); // UDP length below its header
        assert_eq!(
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n)),
            None
        );
        let mut frame = good.clone();
        assert_eq!(
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, _, _| Some(
                5000
            )),
            None
        );
        let mut frame = good.clone();
        assert_eq!(
            answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, _, _| None),
            None
        );
        for seed in 0..2000u32 {
            let mut frame = good.clone();
            let at = 14 + (seed as usize * 7) % 40;
            frame[at] = (seed * 31) as u8;
            let _ = answer_in_place(&mut frame, length, US, US_IP, NO_OFFLOAD, |_, n, _| Some(n));
        }
    }
}
