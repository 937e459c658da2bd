//! The ARP path: smoltcp answers requests aimed at us; the sender of each ARP packet aimed at us
//! becomes a neighbour of every core (non-IP frames reach queue 0 only, so the other cores learn
//! it by message).

use super::{smoltcp_ingress, PathRunner, Reply, RunContext};
use crate::config::NetConfig;
use crate::device::{PathDevice, TxSink};
use crate::path::QueuedFrame;
use crate::peers::{NeighbourEntry, PeerMessage};
use drivers::pool::BUFFER_SIZE;
use smoltcp::iface::SocketSet;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address, Ipv4Cidr,
};

extern crate alloc;
use alloc::vec;

/// The ARP path's runner (no sockets).
pub(crate) struct ArpRunner {
    sockets: SocketSet<'static>,
}

impl ArpRunner {
    pub(crate) fn new() -> Self {
        Self {
            sockets: SocketSet::new(vec![]),
        }
    }
}

impl PathRunner for ArpRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let neighbour = match cx.pool.bytes(frame.buffer) {
            Ok(bytes) if !frame.forwarded => arp_sender(&bytes[..length], cx.config),
            _ => None,
        };
        let reply = smoltcp_ingress(cx, &mut self.sockets, frame);
        let mut sent = 0;
        if let Some(entry) = neighbour {
            let config = cx.config;
            for core in (0..config.core_count).filter(|core| *core != config.core) {
                if cx
                    .app
                    .peers
                    .send(core, &PeerMessage::Neighbour(entry))
                    .is_ok()
                {
                    sent += 1;
                }
            }
        }
        cx.notes.neighbours_sent += sent;
        reply
    }

    /// Installs a neighbour another core learnt: smoltcp 0.14 has no public call to insert one,
    /// but it fills its cache from any ARP packet aimed at us, so the neighbour's own reply is
    /// synthesized and fed to the interface (a reply produces no answer).
    fn on_peer_message(&mut self, cx: &mut RunContext<'_>, message: &PeerMessage<'_>) -> bool {
        let PeerMessage::Neighbour(entry) = message else {
            return false;
        };
        let frame = arp_reply_frame(*entry, cx.config.mac, cx.config.addresses.ip.address);
        let mut device = PathDevice {
            rx: Some(&frame),
            tx: TxSink::Staging(cx.staging),
        };
        let _ = cx
            .iface
            .poll_ingress_single(cx.now, &mut device, &mut self.sockets);
        cx.staging.length = None;
        true
    }
}

/// The sender of an ARP packet aimed at us, if it is a unicast neighbour on our subnet.
pub(crate) fn arp_sender(frame: &[u8], config: &NetConfig) -> Option<NeighbourEntry> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let packet = ArpPacket::new_checked(ethernet.payload()).ok()?;
    let ArpRepr::EthernetIpv4 {
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    let entry = NeighbourEntry {
        ip: source_protocol_addr.octets(),
        mac: source_hardware_addr.0,
    };
    let ours = Ipv4Cidr::new(
        Ipv4Address::from_octets(config.addresses.ip.address),
        config.addresses.ip.prefix.min(32),
    );
    let unicast_mac = source_hardware_addr.is_unicast() && entry.mac != [0; 6];
    let on_subnet = ours.contains_addr(&source_protocol_addr);
    let theirs = entry.ip;
    (unicast_mac && on_subnet && theirs != config.addresses.ip.address && theirs != [0; 4])
        .then_some(entry)
}

/// Length of an Ethernet frame carrying an Ethernet/IPv4 ARP packet (no padding).
pub const ARP_FRAME_LEN: usize = 42;

/// An ARP reply from `entry` to us, as the neighbour itself would send it.
pub fn arp_reply_frame(
    entry: NeighbourEntry,
    our_mac: [u8; 6],
    our_ip: [u8; 4],
) -> [u8; ARP_FRAME_LEN] {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(entry.mac),
        source_protocol_addr: Ipv4Address::from_octets(entry.ip),
        target_hardware_addr: EthernetAddress(our_mac),
        target_protocol_addr: Ipv4Address::from_octets(our_ip),
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(entry.mac),
        dst_addr: EthernetAddress(our_mac),
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = [0u8; ARP_FRAME_LEN];
    let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut view);
    arp.emit(&mut ArpPacket::new_unchecked(view.payload_mut()));
    frame
}
