//! Host benchmark of one core's datapath alone: frames in a simulated RX ring → classifier →
//! UDP path (LRP queue, smoltcp, the echo application) → frames out on the TX ring, in
//! nanoseconds per packet, next to the 67 ns budget of 10 GbE line rate with 64-byte frames.
//!
//! Run with `cargo bench -p netd`. Loops are bounded; figures vary with the machine.

use drivers::nic::{
    ChecksumStatus, QueueDatapath, QueueId, QueueStats, ReceiveBatch, ReceivedFrame, TransmitFrame,
};
use drivers::pool::BufferPool;
use netd::app::default_applications;
use netd::{CoreNet, Instant, NetConfig, PeerError, PeerMessage, Peers};
use std::hint::black_box;
use std::time::Instant as WallClock;

const STACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const CLIENT_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const STACK_IP: [u8; 4] = [10, 0, 2, 15];
const CLIENT_IP: [u8; 4] = [10, 0, 2, 2];
/// 10 GbE, 64-byte frames (84 bytes on the wire with preamble and gap): 14.88 Mpps.
const LINE_RATE_BUDGET_NS: f64 = 67.2;

fn cycles() -> u64 {
    0
}

/// A simulated RX/TX queue replaying prepared frames; transmitted buffers are freed at once.
struct ReplayQueue {
    frames: Vec<Vec<u8>>,
    next: usize,
    remaining: usize,
    checksum: ChecksumStatus,
    transmitted: u64,
}

impl QueueDatapath for ReplayQueue {
    fn queue(&self) -> QueueId {
        QueueId(0)
    }
    fn receive(&mut self, pool: &mut BufferPool, batch: &mut ReceiveBatch) -> usize {
        let mut count = 0;
        while !batch.is_full() && self.remaining > 0 {
            let frame = &self.frames[self.next % self.frames.len()];
            let Some(buffer) = pool.alloc() else { break };
            // Stands for the NIC's DMA into the buffer.
            pool.bytes_mut(buffer).unwrap()[..frame.len()].copy_from_slice(frame);
            let _ = batch.push(ReceivedFrame {
                buffer,
                length: frame.len() as u16,
                rss_hash: 0,
                checksum: self.checksum,
            });
            self.next += 1;
            self.remaining -= 1;
            count += 1;
        }
        count
    }
    fn refill(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn transmit(&mut self, pool: &mut BufferPool, frames: &[TransmitFrame]) -> usize {
        for frame in frames {
            black_box(pool.bytes(frame.buffer).unwrap()[0]);
            pool.free(frame.buffer).unwrap();
        }
        self.transmitted += frames.len() as u64;
        frames.len()
    }
    fn reclaim(&mut self, _pool: &mut BufferPool) -> usize {
        0
    }
    fn stats(&self) -> QueueStats {
        QueueStats::default()
    }
    fn set_interrupt(&mut self, _enabled: bool) {}
}

struct NoPeers;

impl Peers for NoPeers {
    fn send(&mut self, _core: u16, _message: &PeerMessage<'_>) -> Result<(), PeerError> {
        Ok(())
    }
}

fn ethernet(destination: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn udp_frame(source_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 42 + payload.len()];
    let length = drivers::frame::build_udp_ipv4(
        &mut frame,
        CLIENT_MAC,
        STACK_MAC,
        (CLIENT_IP, source_port),
        (STACK_IP, 7),
        payload,
    );
    frame.truncate(length);
    frame
}

fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&STACK_IP);
    ethernet([0xff; 6], 0x0806, &arp)
}

/// Echoes `packets` datagrams of `payload` bytes through one core; returns ns per packet.
fn echo(packets: usize, payload: usize, checksum: ChecksumStatus) -> (f64, u64) {
    let config = NetConfig::new(STACK_MAC, 0, 1);
    let mut now = Instant::from_millis(0);
    let mut net = CoreNet::new(config, default_applications(&config), cycles, now).unwrap();
    let mut pool = BufferPool::new_host(2048);
    let mut peers = NoPeers;
    let body = vec![0x5a; payload];
    // Learn the client's address first, then replay 16 flows.
    let mut queue = ReplayQueue {
        frames: vec![arp_request()],
        next: 0,
        remaining: 1,
        checksum,
        transmitted: 0,
    };
    net.poll(now, &mut queue, &mut pool, &mut peers);
    queue.frames = (0..16).map(|n| udp_frame(40000 + n, &body)).collect();
    queue.remaining = packets;
    queue.transmitted = 0;
    let start = WallClock::now();
    let mut polls = 0u64;
    // Bounded: each poll takes at least one frame while any remain.
    while (queue.remaining > 0 || polls == 0) && polls < 10 * packets as u64 {
        let outcome = net.poll(now, &mut queue, &mut pool, &mut peers);
        polls += 1;
        if !outcome.more_work && queue.remaining == 0 {
            break;
        }
        now += netd::Duration::from_micros(1);
    }
    for _ in 0..4 {
        net.poll(now, &mut queue, &mut pool, &mut peers);
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    if queue.transmitted != packets as u64 {
        eprintln!(
            "{:?}\n{:?}",
            net.counters(),
            net.path(netd::PathKey::Udp(7)).unwrap().counters()
        );
    }
    assert_eq!(queue.transmitted, packets as u64, "every datagram echoed");
    (elapsed / packets as f64, polls)
}

fn main() {
    let packets = 400_000;
    println!("netd datapath benchmark: one core, RX ring -> classifier -> UDP path (smoltcp + echo) -> TX ring");
    println!("line-rate budget: {LINE_RATE_BUDGET_NS:.1} ns/packet (10 GbE, 64-byte frames)");
    let nic_checked = ChecksumStatus {
        ipv4_ok: true,
        l4_ok: true,
        error: false,
    };
    for (label, status) in [
        ("NIC-verified checksums", nic_checked),
        ("software-verified checksums", ChecksumStatus::default()),
    ] {
        for payload in [18usize, 512, 1472] {
            // Warm up, then measure.
            let _ = echo(20_000, payload, status);
            let (ns, polls) = echo(packets, payload, status);
            println!(
                "udp echo, {payload:>4}-byte payload, {label:<28}: {ns:>7.1} ns/packet/core  ({:.2}x budget, {:.1} packets/poll)",
                ns / LINE_RATE_BUDGET_NS,
                packets as f64 / polls as f64
            );
        }
    }
    // The classifier alone, for scale.
    let config = NetConfig::new(STACK_MAC, 0, 1);
    let net = CoreNet::new(
        config,
        default_applications(&config),
        cycles,
        Instant::from_millis(0),
    )
    .unwrap();
    let frame = udp_frame(40000, &[0x5a; 18]);
    let rounds = 2_000_000;
    let start = WallClock::now();
    for _ in 0..rounds {
        black_box(net.classifier().classify(
            black_box(&frame),
            ChecksumStatus::default(),
            0,
            false,
        ));
    }
    let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
    println!("classifier alone (software checksums, 64-byte frame): {ns:.1} ns/frame");
}
