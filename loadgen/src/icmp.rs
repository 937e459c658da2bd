//! An open-loop flood of ICMP echo requests ("ping flood") from one raw socket: requests due on
//! the [`Schedule`](crate::rate::Schedule) leave in `sendmmsg` batches, replies are read with
//! `recvmmsg` and timed by the send time each request carries in its payload. Packets are built
//! and parsed with `smoltcp::wire` (the workspace's one internet checksum). Needs root (a raw
//! socket; the experiments run as root anyway).
//!
//! The isolation experiment uses it as a flood that is cheap for the receiver to classify
//! (addresses and one protocol byte) and dear at its path (the echo reply is built and sent),
//! the kind of overload that lazy receiver processing can keep away from other paths of the
//! same core.

use crate::rate::{Arrivals, Schedule};
use crate::sys::{self, ReceiveBuffers, MAX_BATCH};
use crate::udp::{now_ns, LoadError, Outcome};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes of the payload that carry the send time (the rest is padding).
const STAMP: usize = 8;

/// One flood run.
#[derive(Clone, Debug)]
pub struct IcmpFlood {
    /// The local address requests come from.
    pub source: Ipv4Addr,
    /// Where they go.
    pub target: Ipv4Addr,
    /// Requests per second.
    pub rate: f64,
    /// Constant or Poisson spacing.
    pub arrivals: Arrivals,
    /// Echo payload bytes (at least 8: the send time).
    pub bytes: usize,
    /// The identifier field of every request (replies with another one are not ours).
    pub identifier: u16,
    /// How long requests are sent.
    pub duration: Duration,
    /// How long replies are still read after the last request.
    pub drain: Duration,
    /// The network namespace (`/run/netns/NAME`) the sender joins before opening its socket.
    pub netns: Option<PathBuf>,
    /// Seed of the Poisson arrivals.
    pub seed: u64,
}

/// Writes an echo request (`identifier`, `sequence`, the send time, `bytes` of payload) into
/// `out`, checksum included.
pub fn write_request(
    out: &mut Vec<u8>,
    identifier: u16,
    sequence: u16,
    sent_ns: u64,
    bytes: usize,
) {
    let mut data = vec![0x5A; bytes.max(STAMP)];
    data[..STAMP].copy_from_slice(&sent_ns.to_be_bytes());
    let repr = Icmpv4Repr::EchoRequest {
        ident: identifier,
        seq_no: sequence,
        data: &data,
    };
    out.clear();
    out.resize(repr.buffer_len(), 0);
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut out[..]),
        &ChecksumCapabilities::default(),
    );
}

/// The send time carried by `packet` (an IPv4 packet, as a raw socket delivers it) if it is an
/// echo reply with `identifier` and a valid checksum.
pub fn read_reply(packet: &[u8], identifier: u16) -> Option<u64> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).ok()? {
        Icmpv4Repr::EchoReply { ident, data, .. } if ident == identifier => {
            Some(u64::from_be_bytes(data.get(..STAMP)?.try_into().ok()?))
        }
        _ => None,
    }
}

fn raw_socket(source: Ipv4Addr, target: Ipv4Addr) -> Result<Socket, LoadError> {
    let what = |action: &str| format!("{action} raw ICMP socket {source} -> {target}");
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| LoadError::Socket(what("creating (needs root)"), e))?;
    let _ = socket.set_send_buffer_size(4 << 20);
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
        .map_err(|e| LoadError::Socket(what("binding"), e))?;
    socket
        .connect(&SockAddr::from(SocketAddrV4::new(target, 0)))
        .map_err(|e| LoadError::Socket(what("connecting"), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| LoadError::Socket(what("non-blocking"), e))?;
    Ok(socket)
}

/// Runs `flood` on a thread of its own (it joins the namespace) and returns what it measured:
/// requests sent, replies received and their round trips.
pub fn run(flood: &IcmpFlood) -> Result<Outcome, LoadError> {
    let flood = flood.clone();
    std::thread::spawn(move || -> Result<Outcome, LoadError> {
        if let Some(path) = &flood.netns {
            sys::join_network_namespace(path).map_err(|e| LoadError::Namespace(path.clone(), e))?;
        }
        let socket = raw_socket(flood.source, flood.target)?;
        Ok(send_and_count(&flood, &socket))
    })
    .join()
    .map_err(|_| LoadError::ThreadPanicked)?
}

fn send_and_count(flood: &IcmpFlood, socket: &Socket) -> Outcome {
    let mut outcome = Outcome::default();
    let mut schedule = Schedule::new(flood.rate, flood.arrivals, flood.seed);
    let mut arena: Vec<Vec<u8>> = (0..MAX_BATCH).map(|_| Vec::new()).collect();
    let mut buffers = ReceiveBuffers::new(2048);
    let fd = socket.as_raw_fd();
    let mut ready = Vec::new();
    let mut sequence = 0u16;
    let start = Instant::now();
    let end = start + flood.duration;
    let drain_end = end + flood.drain;
    loop {
        let now = Instant::now();
        if now >= drain_end {
            break;
        }
        let mut due = if now < end {
            schedule.due(now - start, 16 * MAX_BATCH)
        } else {
            0
        };
        while due > 0 {
            let count = due.min(MAX_BATCH);
            let stamp = now_ns();
            for message in arena.iter_mut().take(count) {
                sequence = sequence.wrapping_add(1);
                write_request(message, flood.identifier, sequence, stamp, flood.bytes);
            }
            let batch: Vec<&[u8]> = arena[..count].iter().map(Vec::as_slice).collect();
            let sent = sys::send_batch(fd, &batch).unwrap_or(0);
            outcome.sent += sent as u64;
            // Open loop: what the socket refused is counted, never retried.
            outcome.send_failures += (count - sent) as u64;
            due -= count;
        }
        let timeout = if now < end {
            schedule
                .until_next(now - start)
                .min(Duration::from_millis(1))
        } else {
            (drain_end - now).min(Duration::from_millis(1))
        };
        if sys::wait_ready(&[(fd, false)], &mut ready, timeout).unwrap_or(0) == 0 {
            continue;
        }
        loop {
            let count = sys::receive_batch(fd, &mut buffers).unwrap_or(0);
            let arrived = now_ns();
            for index in 0..count {
                match read_reply(buffers.message(index), flood.identifier) {
                    Some(sent) => {
                        outcome.received += 1;
                        outcome.latency.record_ns(arrived.saturating_sub(sent));
                    }
                    None => outcome.foreign += 1,
                }
            }
            if count < MAX_BATCH {
                break;
            }
        }
    }
    outcome.elapsed = flood.duration;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Repr};

    /// `icmp` inside an IPv4 header from the guest's address, as a raw socket delivers it.
    fn in_ipv4(icmp: &[u8]) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: Ipv4Address::new(10, 0, 2, 15),
            dst_addr: Ipv4Address::new(10, 0, 2, 2),
            next_header: IpProtocol::Icmp,
            payload_len: icmp.len(),
            hop_limit: 64,
        };
        let mut packet = vec![0u8; ip.buffer_len() + icmp.len()];
        let mut view = Ipv4Packet::new_unchecked(&mut packet[..]);
        ip.emit(&mut view, &ChecksumCapabilities::default());
        view.payload_mut().copy_from_slice(icmp);
        packet
    }

    /// What a host answering `request` would send back.
    fn answer(request: &[u8]) -> Vec<u8> {
        let icmp = Icmpv4Packet::new_checked(request).unwrap();
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap()
        else {
            panic!("not an echo request");
        };
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let mut bytes = vec![0u8; reply.buffer_len()];
        reply.emit(
            &mut Icmpv4Packet::new_unchecked(&mut bytes[..]),
            &ChecksumCapabilities::default(),
        );
        in_ipv4(&bytes)
    }

    #[test]
    fn a_reply_gives_back_the_send_time_of_our_requests_only() {
        let mut request = Vec::new();
        write_request(&mut request, 0x4C47, 7, 123_456_789, 56);
        assert_eq!(request.len(), 8 + 56);
        let reply = answer(&request);
        assert_eq!(read_reply(&reply, 0x4C47), Some(123_456_789));
        assert_eq!(read_reply(&reply, 0x4C48), None, "another identifier");
        let mut corrupt = reply.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(read_reply(&corrupt, 0x4C47), None, "a bad checksum");
        // A request (a raw socket also sees that kind) is not a reply.
        assert_eq!(read_reply(&in_ipv4(&request), 0x4C47), None);
    }
}
