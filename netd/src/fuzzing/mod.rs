//! Entry points of the coverage-guided fuzz targets over netd (`fuzz/`, built with cargo-fuzz),
//! kept here so that the stable test suite replays the same code on the kept inputs
//! (`fuzz/regressions/`, `fuzz/seeds/`). Host tooling only: compiled for tests and with the
//! `fuzzing` feature, never into the kernel. See `docs/fuzzing.md`.
//!
//! Frame targets: [`classify`], [`fastpath`], [`core_net`] (whole stacks on the simulated NIC).
//! Message targets ([`messages`]): peer messages, statistics snapshots. Application targets
//! ([`apps`]): memcached's parser and sessions, HTTP requests, the command-line options.

pub mod apps;
pub mod messages;
mod net;

pub use apps::{command_line, http_requests, memcached_protocol, memcached_session};
pub use messages::{peer_message, stats_snapshot};
pub use net::core_net;

use crate::classify::{Classifier, PathIndex, PathKey, PathSet, Verdict};
use crate::fastpath::{answer_in_place, MAX_FRAME};
use drivers::nic::{ChecksumStatus, QueueCapabilities};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket, ETHERNET_HEADER_LEN,
};

extern crate alloc;
use alloc::vec;

/// The input, read front to back; reads past the end give zeros.
pub(crate) struct Input<'a>(pub(crate) &'a [u8]);

impl<'a> Input<'a> {
    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// At most `count` bytes.
    pub(crate) fn bytes(&mut self, count: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(count.min(self.0.len()));
        self.0 = rest;
        taken
    }
    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.0)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Our MAC address in the frame targets (the harness's and QEMU's).
pub(crate) const STACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Our IPv4 address in the frame targets.
pub(crate) const STACK_IP: [u8; 4] = [10, 0, 2, 15];

/// Makes the IPv4 header checksum and the ICMP, UDP or TCP checksum of `frame` right, where the
/// headers let them be computed (the fuzzer cannot find checksums; without this nearly every
/// frame would stop at the checksum check). Leaves anything it cannot parse as it is.
pub(crate) fn fix_checksums(frame: &mut [u8]) {
    let Ok(ethernet) = EthernetFrame::new_checked(&*frame) else {
        return;
    };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[ETHERNET_HEADER_LEN..]) else {
        return;
    };
    ip.fill_checksum();
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let protocol = ip.next_header();
    let payload = ip.payload_mut();
    match protocol {
        IpProtocol::Icmp => {
            if let Ok(mut message) = Icmpv4Packet::new_checked(payload) {
                message.fill_checksum();
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut datagram) = UdpPacket::new_checked(payload) {
                datagram.fill_checksum(&source, &destination);
            }
        }
        IpProtocol::Tcp => {
            if let Ok(mut segment) = TcpPacket::new_checked(payload) {
                segment.fill_checksum(&source, &destination);
            }
        }
        _ => {}
    }
}

/// `classify`: one frame through a core's classifier, with what the NIC says about it, then,
/// when the classifier hands a UDP datagram to a path, through the UDP fast path as an echo.
/// Input: flags (bit 0 fix the checksums, bits 1..=3 the NIC's checksum status, bit 4 the frame
/// was forwarded), the full paths (u16), the NIC's RSS hash (u32), the core and the core count,
/// then the frame. A delivered frame names a path of the table; the fast path's reply of a
/// datagram the classifier took must be a well-formed frame back to the sender.
pub fn classify(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let full = PathSet(input.u16());
    let rss_hash = input.u32();
    let cores = input.u8();
    let core_count = u16::from(cores % 4) + 1;
    let core = u16::from(cores >> 4) % core_count;
    let mut frame = vec![0u8; 2048];
    let bytes = input.rest();
    let length = bytes.len().min(frame.len());
    frame[..length].copy_from_slice(&bytes[..length]);
    if flags & 1 != 0 {
        fix_checksums(&mut frame[..length]);
    }
    let checksum = ChecksumStatus {
        ipv4_ok: flags & 2 != 0,
        l4_ok: flags & 4 != 0,
        error: flags & 8 != 0,
    };
    let forwarded = flags & 16 != 0;

    let keys = [
        PathKey::Arp,
        PathKey::Icmp,
        PathKey::Udp(7),
        PathKey::Udp(9),
        PathKey::Tcp(7),
        PathKey::Tcp(80),
        PathKey::Tcp(11211),
    ];
    let mut classifier = Classifier::new(STACK_MAC, STACK_IP, 24, core, core_count);
    for (index, key) in keys.iter().enumerate() {
        assert!(classifier.add_path(*key, PathIndex(index as u8)));
    }
    classifier.set_hash_function(|bytes| drivers::rss::toeplitz(&drivers::rss::DEFAULT_KEY, bytes));
    let verdict =
        classifier.classify_admitting(&frame[..length], checksum, rss_hash, forwarded, full);
    match verdict {
        Verdict::Deliver(path) | Verdict::PathFull(path) => {
            assert!(
                usize::from(path.0) < keys.len(),
                "{verdict:?} names no path"
            );
            assert_eq!(
                matches!(verdict, Verdict::PathFull(_)),
                full.contains(path),
                "{verdict:?} disagrees with the full paths {full:?}"
            );
        }
        Verdict::Forward(owner) => {
            assert!(!forwarded, "a forwarded frame is forwarded again");
            assert!(owner < core_count && owner != core, "forwarded to {owner}");
        }
        Verdict::Drop(_) => {}
    }
    if let Verdict::Deliver(PathIndex(path @ (2 | 3))) = verdict {
        let offload = QueueCapabilities {
            tx_checksum_ipv4: flags & 32 != 0,
            tx_checksum_udp: flags & 64 != 0,
            tx_checksum_tcp: false,
            tx_tcp_segmentation: false,
        };
        let reply = answer_in_place(
            &mut frame,
            length,
            STACK_MAC,
            STACK_IP,
            offload,
            |_, n, _| (path == 2).then_some(n),
        );
        if path == 2 {
            let reply = reply.expect("the fast path answers every datagram the classifier took");
            check_reply(
                &frame[..reply.length],
                reply.checksum == drivers::nic::TxChecksum::NONE,
            );
        } else {
            assert_eq!(reply, None);
        }
    }
}

/// A fast-path reply is an IPv4/UDP frame from us, its lengths consistent (and, when software
/// computed them, its checksums right).
fn check_reply(frame: &[u8], software_checksums: bool) {
    let ethernet = EthernetFrame::new_checked(frame).expect("a whole Ethernet header");
    assert_eq!(ethernet.src_addr().as_bytes(), &STACK_MAC);
    let ip = Ipv4Packet::new_checked(ethernet.payload()).expect("a consistent IPv4 header");
    assert_eq!(
        ip.src_addr().octets(),
        STACK_IP,
        "the reply comes from our address"
    );
    assert_eq!(usize::from(ip.total_len()), ethernet.payload().len());
    let udp = UdpPacket::new_checked(ip.payload()).expect("a consistent UDP header");
    assert_eq!(usize::from(udp.len()), ip.payload().len());
    if software_checksums {
        assert!(ip.verify_checksum());
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
    }
}

/// `fastpath`: the UDP fast path alone on any frame, as any application may answer. Input:
/// offload flags, the frame length the receive path claims (u16), the reply length the
/// application returns (u16; 0xFFFF: no reply), the buffer size (u16), then the frame. The
/// reply, when there is one, stays inside the buffer and a full frame, and is well formed.
pub fn fastpath(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let claimed = usize::from(input.u16());
    let answer = input.u16();
    let size = usize::from(input.u16()) % 4096;
    let bytes = input.rest();
    let mut frame = vec![0u8; size];
    let copied = bytes.len().min(size);
    frame[..copied].copy_from_slice(&bytes[..copied]);
    if flags & 1 != 0 {
        fix_checksums(&mut frame[..copied]);
    }
    let offload = QueueCapabilities {
        tx_checksum_ipv4: flags & 2 != 0,
        tx_checksum_udp: flags & 4 != 0,
        tx_checksum_tcp: false,
        tx_tcp_segmentation: false,
    };
    let reply = answer_in_place(
        &mut frame,
        claimed,
        STACK_MAC,
        STACK_IP,
        offload,
        |payload, _, _| {
            if answer == 0xFFFF {
                return None;
            }
            let length = usize::from(answer);
            if let Some(area) = payload.get_mut(..length) {
                area.fill(b'r');
            }
            Some(length)
        },
    );
    if let Some(reply) = reply {
        assert!(
            reply.length <= frame.len() && reply.length <= MAX_FRAME,
            "{reply:?}"
        );
        check_reply(
            &frame[..reply.length],
            reply.checksum == drivers::nic::TxChecksum::NONE,
        );
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::path::PathBuf;
    use std::vec::Vec;

    /// Every kept input of `target` (`fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`),
    /// with its path; the seeds must exist (a renamed target must not skip its replay silently).
    pub(crate) fn kept_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut inputs = Vec::new();
        for kind in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("readable directory").path();
                let bytes = std::fs::read(&path).expect("readable input");
                inputs.push((path, bytes));
            }
        }
        inputs.sort();
        assert!(
            inputs
                .iter()
                .any(|(path, _)| path.components().any(|c| c.as_os_str() == "seeds")),
            "no seeds for fuzz target {target} under {}",
            fuzz.display()
        );
        inputs
    }

    fn replay(target: &str, harness: fn(&[u8])) {
        for (path, bytes) in kept_inputs(target) {
            std::eprintln!("replaying {}", path.display());
            harness(&bytes);
        }
    }

    #[test]
    fn classify_inputs_replay() {
        replay("classify", super::classify);
    }

    #[test]
    fn fastpath_inputs_replay() {
        replay("fastpath", super::fastpath);
    }

    #[test]
    fn core_net_inputs_replay() {
        replay("core_net", super::core_net);
    }

    #[test]
    fn peer_message_inputs_replay() {
        replay("peer_message", super::peer_message);
    }

    #[test]
    fn stats_snapshot_inputs_replay() {
        replay("stats_snapshot", super::stats_snapshot);
    }

    #[test]
    fn memcached_protocol_inputs_replay() {
        replay("memcached_protocol", super::memcached_protocol);
    }

    #[test]
    fn memcached_session_inputs_replay() {
        replay("memcached_session", super::memcached_session);
    }

    #[test]
    fn http_inputs_replay() {
        replay("http", super::http_requests);
    }
}
