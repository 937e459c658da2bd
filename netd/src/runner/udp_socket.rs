//! UDP through smoltcp: datagrams go through smoltcp's UDP input into the path's socket, and the
//! datagram service drains the socket when the path's service runs. Used by `netd.udp=smoltcp`
//! (the baseline the fast path is measured against) and by the `netd.mode=interrupt` baseline,
//! whose "interrupt" does the protocol work up to the socket and whose applications run later.

use super::{smoltcp_egress, smoltcp_ingress, PathRunner, Progress, Reply, RunContext};
use crate::app::{Datagram, DatagramService, Peer};
use crate::path::QueuedFrame;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, UdpPacket};

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec;

/// Datagrams each of the socket's buffers holds.
pub const SOCKET_PACKETS: usize = 64;
/// Payload bytes each of the socket's buffers holds.
const SOCKET_BYTES: usize = SOCKET_PACKETS * 1536;
/// Largest datagram payload handled (a full Ethernet frame's).
const MAX_PAYLOAD: usize = 1472;

/// The runner of a datagram service behind a smoltcp UDP socket.
pub(crate) struct UdpSocketRunner {
    sockets: SocketSet<'static>,
    socket: SocketHandle,
    app: Box<dyn DatagramService>,
}

impl UdpSocketRunner {
    pub(crate) fn new(port: u16, app: Box<dyn DatagramService>) -> Self {
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; SOCKET_PACKETS],
                vec![0; SOCKET_BYTES],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        // Cannot fail: the port is not 0 (the registration names it) and the socket is fresh.
        let _ = socket.bind(port);
        let mut sockets = SocketSet::new(vec![]);
        let socket = sockets.add(socket);
        Self {
            sockets,
            socket,
            app,
        }
    }
}

impl PathRunner for UdpSocketRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let payload = cx
            .pool
            .bytes(frame.buffer)
            .ok()
            .and_then(|bytes| {
                udp_payload_length(&bytes[..usize::from(frame.length).min(bytes.len())])
            })
            .unwrap_or(0);
        let before = self.sockets.get::<udp::Socket>(self.socket).recv_queue();
        let reply = smoltcp_ingress(cx, &mut self.sockets, frame);
        let after = self.sockets.get::<udp::Socket>(self.socket).recv_queue();
        // smoltcp drops a datagram that does not fit, silently: the queue did not grow although
        // the datagram was for this socket (the classifier checked the port). An empty
        // datagram's fate cannot be seen this way; it counts as delivered.
        cx.notes.socket_drops += u64::from(payload > 0 && after == before);
        reply
    }

    fn frames_per_service(&self) -> usize {
        // The socket holds SOCKET_PACKETS datagrams; its service drains them between chunks.
        SOCKET_PACKETS / 2
    }

    fn service(&mut self, cx: &mut RunContext<'_>) -> Progress {
        let mut scratch = [0u8; MAX_PAYLOAD];
        let socket = self.sockets.get_mut::<udp::Socket>(self.socket);
        // Bounded by the socket's buffer.
        while socket.can_recv() {
            if !socket.can_send() {
                break;
            }
            let Ok((length, metadata)) = socket.recv_slice(&mut scratch) else {
                break;
            };
            // IPv4 only: the classifier drops IPv6 before smoltcp sees it.
            let IpAddress::Ipv4(address) = metadata.endpoint.addr else {
                continue;
            };
            let from = Peer {
                address: address.octets(),
                port: metadata.endpoint.port,
            };
            let reply = self.app.on_datagram(
                &mut cx.app,
                Datagram {
                    from,
                    payload: &mut scratch,
                    length,
                },
            );
            if let Some(reply) = reply {
                let _ = socket.send_slice(&scratch[..reply.min(MAX_PAYLOAD)], metadata.endpoint);
            }
        }
        let run_again = socket.can_recv();
        smoltcp_egress(cx, &mut self.sockets);
        Progress {
            run_again,
            connections_opened: 0,
        }
    }

    fn poll_at(
        &mut self,
        iface: &mut smoltcp::iface::Interface,
        now: smoltcp::time::Instant,
    ) -> Option<smoltcp::time::Instant> {
        iface.poll_at(now, &self.sockets)
    }

    fn application(&self) -> Option<&'static str> {
        Some(self.app.name())
    }
}

/// The payload length of the UDP datagram in `frame`, if it is one.
fn udp_payload_length(frame: &[u8]) -> Option<usize> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    Some(udp.payload().len())
}
