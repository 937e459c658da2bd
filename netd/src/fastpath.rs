//! The UDP fast path: an application that answers datagrams in place gets the payload inside
//! the received frame's own pool buffer, and the reply leaves from that same buffer — no smoltcp
//! socket, no copy, no second buffer. Only frames the classifier already accepted come here
//! (Ethernet II, IPv4 with valid header and lengths, UDP to our address with a valid or absent
//! checksum), so the rewrite trusts their layout but still checks every bound it uses.
#![forbid(unsafe_code)]

/// Largest frame the fast path builds (no jumbo frames).
pub const MAX_FRAME: usize = 1514;

const ETHERNET: usize = 14;

fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_finish(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Answers the UDP datagram in `frame[..length]` in place. `answer` gets the payload area (the
/// request's `n` bytes first; the whole rest of the buffer up to a full frame is writable) and
/// returns the reply's length, or `None` for no reply. Returns the reply frame's length, with
/// Ethernet, IPv4 and UDP headers turned around and checksums recomputed, or `None` when there
/// is no reply or the frame is not a plain IPv4/UDP frame.
pub fn answer_in_place(
    frame: &mut [u8],
    length: usize,
    our_mac: [u8; 6],
    answer: impl FnOnce(&mut [u8], usize) -> Option<usize>,
) -> Option<usize> {
    let length = length.min(frame.len());
    if length < ETHERNET + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = ETHERNET;
    let header = usize::from(frame[ip] & 0x0F) * 4;
    if frame[ip] >> 4 != 4 || header < 20 || frame[ip + 9] != 17 {
        return None;
    }
    let udp = ip + header;
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    if udp + 8 > length || ip + total > length || total < header + 8 {
        return None;
    }
    let datagram = usize::from(u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]));
    if datagram < 8 || udp + datagram > ip + total {
        return None;
    }
    let payload = udp + 8;
    let capacity = frame.len().min(MAX_FRAME).checked_sub(payload)?;
    let reply = answer(&mut frame[payload..payload + capacity], datagram - 8)?;
    if reply > capacity {
        return None;
    }

    // Ethernet: back to the sender, from us.
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&our_mac);
    // IPv4: swap addresses, fresh TTL, new length, header checksum over the header as it is.
    let mut addresses = [0u8; 8];
    addresses.copy_from_slice(&frame[ip + 12..ip + 20]);
    frame[ip + 12..ip + 16].copy_from_slice(&addresses[4..8]);
    frame[ip + 16..ip + 20].copy_from_slice(&addresses[0..4]);
    frame[ip + 8] = 64;
    let ip_total = (header + 8 + reply) as u16;
    frame[ip + 2..ip + 4].copy_from_slice(&ip_total.to_be_bytes());
    frame[ip + 10..ip + 12].fill(0);
    let ip_checksum = checksum_finish(checksum_add(0, &frame[ip..udp]));
    frame[ip + 10..ip + 12].copy_from_slice(&ip_checksum.to_be_bytes());
    // UDP: swap ports, new length, checksum over the pseudo-header and the datagram.
    let mut ports = [0u8; 4];
    ports.copy_from_slice(&frame[udp..udp + 4]);
    frame[udp..udp + 2].copy_from_slice(&ports[2..4]);
    frame[udp + 2..udp + 4].copy_from_slice(&ports[0..2]);
    let udp_length = (8 + reply) as u16;
    frame[udp + 4..udp + 6].copy_from_slice(&udp_length.to_be_bytes());
    frame[udp + 6..udp + 8].fill(0);
    let mut sum = checksum_add(0, &frame[ip + 12..ip + 20]);
    sum += 17 + u32::from(udp_length);
    sum = checksum_add(sum, &frame[udp..udp + 8 + reply]);
    let udp_checksum = match checksum_finish(sum) {
        0 => 0xFFFF, // zero means "no checksum" in UDP over IPv4 (RFC 768)
        value => value,
    };
    frame[udp + 6..udp + 8].copy_from_slice(&udp_checksum.to_be_bytes());
    Some(udp + 8 + reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Address, Ipv4Packet, UdpPacket};

    fn request(payload: &[u8]) -> std::vec::Vec<u8> {
        let mut frame = std::vec![0u8; 2048];
        frame[0..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame[22] = 17;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&[10, 0, 2, 2]);
        frame[30..34].copy_from_slice(&[10, 0, 2, 15]);
        frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&7u16.to_be_bytes());
        frame[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        frame[42..42 + payload.len()].copy_from_slice(payload);
        frame
    }

    #[test]
    fn echo_reply_has_turned_headers_and_valid_checksums() {
        let mut frame = request(b"hello, fast path");
        let length = 14 + 20 + 8 + 16;
        let reply =
            answer_in_place(&mut frame, length, [2, 0, 0, 0, 0, 1], |_, n| Some(n)).unwrap();
        assert_eq!(reply, length);
        let ethernet = EthernetFrame::new_checked(&frame[..reply]).unwrap();
        assert_eq!(ethernet.dst_addr().as_bytes(), &[2, 0, 0, 0, 0, 9]);
        assert_eq!(ethernet.src_addr().as_bytes(), &[2, 0, 0, 0, 0, 1]);
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
        assert_eq!((udp.src_port(), udp.dst_port()), (7, 40000));
        assert_eq!(udp.payload(), b"hello, fast path");
    }

    #[test]
    fn longer_replies_fit_and_odd_lengths_checksum_right() {
        let mut frame = request(b"x");
        let reply = answer_in_place(&mut frame, 14 + 20 + 8 + 1, [2; 6], |payload, _| {
            payload[..101].fill(b'y');
            Some(101)
        })
        .unwrap();
        let ip = Ipv4Packet::new_checked(&frame[14..reply]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert_eq!(udp.payload().len(), 101);
    }

    #[test]
    fn malformed_or_oversized_frames_get_no_reply() {
        let good = request(b"abc");
        for cut in 0..45 {
            let mut frame = good.clone();
            assert_eq!(
                answer_in_place(&mut frame, cut, [2; 6], |_, n| Some(n)),
                None,
                "cut {cut}"
            );
        }
        let mut frame = good.clone();
        frame[23] = 6; // TCP
        assert_eq!(
            answer_in_place(&mut frame, 45, [2; 6], |_, n| Some(n)),
            None
        );
        let mut frame = good.clone();
        frame[38..40].copy_from_slice(&3u16.to_be_bytes()); // UDP length below its header
        assert_eq!(
            answer_in_place(&mut frame, 45, [2; 6], |_, n| Some(n)),
            None
        );
        let mut frame = good.clone();
        assert_eq!(
            answer_in_place(&mut frame, 45, [2; 6], |_, _| Some(5000)),
            None
        );
        let mut frame = good;
        assert_eq!(answer_in_place(&mut frame, 45, [2; 6], |_, _| None), None);
        for seed in 0..2000u32 {
            let mut frame = request(b"fuzz");
            let at = 14 + (seed as usize * 7) % 40;
            frame[at] = (seed * 31) as u8;
            let _ = answer_in_place(&mut frame, 46, [2; 6], |_, n| Some(n));
        }
    }
}
