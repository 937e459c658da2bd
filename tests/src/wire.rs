//! Raw Ethernet frames over `-netdev dgram` (UDP datagrams on loopback, no root): frames the
//! tests craft (any 5-tuple, malformed ones), the guest's replies parsed back, and QEMU's own
//! trace of which RX queue each frame reached, as an oracle for steering tests.

use crate::clients::fields;
use crate::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The guest's MAC address (QEMU's default for its first NIC).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC the raw-frame tests use for 10.0.2.2.
pub const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xfe, 0x00, 0x02];

pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying IPv4/UDP from PEER to GUEST.
pub fn udp_frame(source_port: u16, destination_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_length = 8 + payload.len();
    let total_length = 20 + udp_length;
    let mut frame = Vec::with_capacity(14 + total_length);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total_length as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&source_port.to_be_bytes()); // identification: any
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&PEER_IP);
    ip[16..20].copy_from_slice(&GUEST_IP);
    let ip_checksum = internet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(udp_length);
    udp.extend_from_slice(&source_port.to_be_bytes());
    udp.extend_from_slice(&destination_port.to_be_bytes());
    udp.extend_from_slice(&(udp_length as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = [
        &PEER_IP[..],
        &GUEST_IP[..],
        &[0, 17],
        &(udp_length as u16).to_be_bytes(),
    ]
    .concat();
    let mut checksum = internet_checksum(&[&pseudo, &udp]);
    if checksum == 0 {
        checksum = 0xFFFF;
    }
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&udp);
    frame
}

/// An ARP frame (operation 1 request, 2 reply) from PEER.
pub fn arp_frame(operation: u16, destination_mac: [u8; 6], target_mac: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&destination_mac);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    frame.extend_from_slice(&operation.to_be_bytes());
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&PEER_IP);
    frame.extend_from_slice(&target_mac);
    frame.extend_from_slice(&GUEST_IP);
    frame.resize(60, 0);
    frame
}

/// What the guest sent, as far as these tests care.
#[derive(Debug)]
pub enum FromGuest {
    /// An ARP request for `target`.
    ArpRequest { target: [u8; 4] },
    /// An ARP reply: `sender` is at `mac`.
    ArpReply { sender: [u8; 4], mac: [u8; 6] },
    /// A UDP datagram.
    Udp {
        destination_mac: [u8; 6],
        source: ([u8; 4], u16),
        destination: ([u8; 4], u16),
        payload: Vec<u8>,
    },
    /// Anything else (its length and ethertype, described).
    Other(String),
}

pub fn parse_frame(frame: &[u8]) -> FromGuest {
    let other = || {
        let ethertype = frame
            .get(12..14)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
        FromGuest::Other(format!("{} bytes, ethertype {ethertype:#06x}", frame.len()))
    };
    if frame.len() < 14 {
        return other();
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[14..];
    match ethertype {
        0x0806 if body.len() >= 28 => {
            let operation = u16::from_be_bytes([body[6], body[7]]);
            let mac: [u8; 6] = body[8..14].try_into().expect("6 bytes");
            let sender: [u8; 4] = body[14..18].try_into().expect("4 bytes");
            let target: [u8; 4] = body[24..28].try_into().expect("4 bytes");
            match operation {
                1 => FromGuest::ArpRequest { target },
                2 => FromGuest::ArpReply { sender, mac },
                _ => other(),
            }
        }
        0x0800 if body.len() >= 28 && body[9] == 17 => {
            let header = usize::from(body[0] & 0x0F) * 4;
            let total = usize::from(u16::from_be_bytes([body[2], body[3]]));
            if header < 20 || total > body.len() || total < header + 8 {
                return other();
            }
            let udp = &body[header..total];
            FromGuest::Udp {
                destination_mac: frame[0..6].try_into().expect("6 bytes"),
                source: (
                    body[12..16].try_into().expect("4 bytes"),
                    u16::from_be_bytes([udp[0], udp[1]]),
                ),
                destination: (
                    body[16..20].try_into().expect("4 bytes"),
                    u16::from_be_bytes([udp[2], udp[3]]),
                ),
                payload: udp[8..].to_vec(),
            }
        }
        _ => other(),
    }
}

/// The wire to a machine on `-netdev dgram`: every frame sent is recorded with the queue it
/// should land on, and ARP requests from the guest are answered (their replies go to queue 0).
pub struct Wire {
    socket: UdpSocket,
    qemu: SocketAddr,
    /// (what, predicted queue) for every frame sent, in order.
    pub sent: Vec<(String, u16)>,
    /// Frames from the guest that were neither echoes nor ARP.
    pub strays: Vec<String>,
}

impl Wire {
    /// Binds the test's end and picks QEMU's port: returns (wire, local, remote) for
    /// `Network::Datagram`.
    pub fn open() -> (Self, u16, u16) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test's end");
        let remote = socket.local_addr().expect("address").port();
        let local = loop {
            let probe = UdpSocket::bind("127.0.0.1:0").expect("bind a probe");
            let port = probe.local_addr().expect("address").port();
            if port != remote {
                break port;
            }
        };
        let qemu = SocketAddr::from((Ipv4Addr::LOCALHOST, local));
        (
            Self {
                socket,
                qemu,
                sent: Vec::new(),
                strays: Vec::new(),
            },
            local,
            remote,
        )
    }

    pub fn send(&mut self, frame: &[u8], what: String, queue: u16) {
        self.socket
            .send_to(frame, self.qemu)
            .expect("send a frame to QEMU");
        self.sent.push((what, queue));
    }

    /// The next frame from the guest that is not an ARP request (those are answered), until
    /// `deadline`.
    pub fn receive(&mut self, deadline: Instant) -> Option<FromGuest> {
        let mut buffer = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let (length, _) = match self.socket.recv_from(&mut buffer) {
                Ok(pair) => pair,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("receiving from QEMU: {e}"),
            };
            match parse_frame(&buffer[..length]) {
                FromGuest::ArpRequest { target } if target == PEER_IP => {
                    let reply = arp_frame(2, GUEST_MAC, GUEST_MAC);
                    self.send(&reply, "ARP reply to the guest".into(), 0);
                }
                FromGuest::ArpRequest { .. } => {}
                frame => return Some(frame),
            }
        }
    }

    /// Tells the guest where 10.0.2.2 is (ARP request for 10.0.2.15) until it answers; the
    /// link needs a moment after the stacks are up.
    pub fn introduce(&mut self, machine: &Machine) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            self.send(&arp_frame(1, [0xFF; 6], [0; 6]), "ARP request".into(), 0);
            let wait = Instant::now() + Duration::from_millis(500);
            while let Some(frame) = self.receive(wait) {
                if let FromGuest::ArpReply { sender, mac } = frame {
                    assert_eq!((sender, mac), (GUEST_IP, GUEST_MAC), "ARP reply");
                    return;
                }
            }
        }
        panic!(
            "the guest never answered ARP over -netdev dgram; console:\n{}",
            console_tail(machine, 40)
        );
    }

    /// Once ARP works: waits for QEMU's trace to settle and checks that everything so far went
    /// to queue 0 (ARP is not hashed). Returns (frames sent so far, RX events traced so far).
    pub fn baseline(&mut self, trace: &std::path::Path) -> (usize, usize) {
        std::thread::sleep(Duration::from_millis(300));
        let traced = traced_queues(trace);
        assert!(
            !traced.is_empty() && traced.iter().all(|q| *q == 0),
            "ARP frames should all be on queue 0: {traced:?}"
        );
        (self.sent.len(), traced.len())
    }

    /// Sends a UDP echo request on source port `port` (predicted on `queue`) and waits for the
    /// echo, up to 3 tries of 2 s. Returns whether it came.
    pub fn echo(&mut self, port: u16, queue: u16, label: &str) -> bool {
        let payload = format!("{label} port={port} predicted-queue={queue}").into_bytes();
        let frame = udp_frame(port, 7, &payload);
        for attempt in 0..3 {
            self.send(
                &frame,
                format!("{label} UDP :{port} (try {attempt})"),
                queue,
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Some(reply) = self.receive(deadline) {
                match reply {
                    FromGuest::Udp {
                        destination_mac,
                        source,
                        destination,
                        payload: echoed,
                    } if source == (GUEST_IP, 7) && destination == (PEER_IP, port) => {
                        assert_eq!(destination_mac, PEER_MAC, "echo to the wrong MAC");
                        if echoed == payload {
                            return true;
                        }
                        self.strays.push(format!(
                            "echo with other payload: {:?}",
                            String::from_utf8_lossy(&echoed)
                        ));
                    }
                    FromGuest::Other(description) => self.strays.push(description),
                    other => self.strays.push(format!("{other:?}")),
                }
            }
        }
        false
    }
}

/// The queue of every `e1000e_rx_written_to_guest` event in QEMU's trace, in order.
pub fn traced_queues(trace: &std::path::Path) -> Vec<u16> {
    let log = std::fs::read_to_string(trace).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("e1000e_rx_written_to_guest"))
        .filter_map(|line| {
            let rest = line.split("(queue ").nth(1)?;
            rest.trim_end_matches(')').trim().parse().ok()
        })
        .collect()
}

/// Waits (bounded) until the trace holds at least `count` events; returns them.
pub fn wait_for_trace(trace: &std::path::Path, count: usize) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queues = traced_queues(trace);
        if queues.len() >= count || Instant::now() >= deadline {
            return queues;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// QEMU's trace file, removed when the test ends (passed or failed).
pub struct TraceFile(pub PathBuf);

impl std::ops::Deref for TraceFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A machine on the datagram wire with QEMU's RX queue trace in a temporary file.
pub fn boot_on_wire(cmdline: &str, what: &str, cores: u16) -> (Machine, Wire, TraceFile) {
    let (wire, local, remote) = Wire::open();
    let trace = TraceFile(std::env::temp_dir().join(format!("{}.trace", unique_namespace(what))));
    let _ = std::fs::remove_file(&*trace);
    let mut config = MachineConfig::kernel(image(), u32::from(cores), cmdline);
    config.network = Network::Datagram { local, remote };
    config.extra_args = [
        "-trace",
        "e1000e_rx_written_to_guest",
        "-trace",
        "e1000e_rx_rss_type",
        "-D",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.to_string_lossy().into_owned()])
    .collect();
    let machine = boot_with_network(&config, cores);
    (machine, wire, trace)
}

/// The latest `netd: stats core=K ...` line of each core printed after console line `after`.
pub fn stats_after(
    machine: &mut Machine,
    after: usize,
    cores: u16,
) -> BTreeMap<u16, BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = machine.console();
        let mut latest = BTreeMap::new();
        for line in console.iter().skip(after) {
            if let Some(rest) = line.strip_prefix("netd: stats ") {
                let map = fields(rest);
                if let Some(core) = map.get("core").and_then(|c| c.parse::<u16>().ok()) {
                    latest.insert(core, map);
                }
            }
        }
        if latest.len() == usize::from(cores) || Instant::now() >= deadline {
            return latest;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
