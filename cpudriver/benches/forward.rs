//! Host benchmark: the cost of one forwarded frame between two cores (two threads), through the
//! node's mailbox (a `netd::PeerMessage::Frame` encoded once into a bulk buffer, its handle in
//! one slot, read in place by the receiver, returned by count), against the design it replaced,
//! measured in the same run: the encoded message copied through the ring in 48-byte chunks and
//! reassembled into a buffer on the receiving side.
//!
//! Figures: one-way streaming (ns per frame, frames of 64 and 1,514 bytes) and the round trip of
//! a frame answered by a one-slot reply (p50, p99), in several interleaved rounds; the report
//! gives each round and the medians. Run: `cargo bench -p cpudriver --bench forward`
//! (`-- --rounds N`, default 5). Threads are not pinned: on a small or loaded host, read the
//! spread, not one number. Every loop is bounded in count and in time.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use cpudriver::node::bulk::{BulkPool, BulkRegions};
use cpudriver::node::framing::{Body, Family};
use cpudriver::node::mailbox::{LinkId, Mailbox};
use cpudriver::node::net::MailboxPeers;
use netd::{PeerMessage, Peers};
use urpc::{ChannelRegion, Endpoint, Side};

/// Frames per streaming measurement.
const FRAMES: u64 = 200_000;
/// Round trips per latency measurement.
const ROUND_TRIPS: usize = 20_000;
/// A peer silent this long is stuck: abort.
const STUCK: Duration = Duration::from_secs(10);
/// Bytes per chunk in the old design.
const CHUNK: usize = 48;

fn pair() -> (Endpoint<'static>, Endpoint<'static>) {
    let region: &'static ChannelRegion = Box::leak(ChannelRegion::new_boxed());
    (
        region.claim(Side::A).expect("fresh"),
        region.claim(Side::B).expect("fresh"),
    )
}

/// Two mailboxes (cores 0 and 1) with 4 MiB pools, and the region table both read through.
fn mailboxes() -> (Mailbox, Mailbox, BulkRegions) {
    let (a, b) = pair();
    let bytes = 4 << 20;
    let pools: Vec<(usize, usize)> = (0..2)
        .map(|_| {
            let memory: &'static mut [u64] = Box::leak(vec![0u64; bytes / 8].into_boxed_slice());
            (memory.as_mut_ptr().expose_provenance(), bytes)
        })
        .collect();
    // SAFETY: fresh leaked memory per core, written only by that core's pool.
    let regions = unsafe { BulkRegions::new(&pools) };
    // SAFETY: the same memory, one pool each.
    let (pool0, pool1) = unsafe {
        (
            BulkPool::new(pools[0].0, bytes, urpc::RegionId(0)),
            BulkPool::new(pools[1].0, bytes, urpc::RegionId(1)),
        )
    };
    (
        Mailbox::new(0, vec![None, Some(a)], pool0),
        Mailbox::new(1, vec![Some(b), None], pool1),
        regions,
    )
}

fn frame(length: usize, sequence: u64) -> Vec<u8> {
    let mut bytes = vec![0x5A; length];
    bytes[..8].copy_from_slice(&sequence.to_le_bytes());
    bytes
}

/// Takes every waiting letter on link 0 (the sender), reading frames in place; returns the
/// frames seen and the last sequence.
fn drain(mailbox: &mut Mailbox, regions: &BulkRegions, seen: &mut u64, last: &mut u64) {
    let table = regions.table();
    while let Some(received) = mailbox.receive(LinkId(0), &table) {
        let Ok(letter) = received.letter else {
            panic!("a malformed letter");
        };
        let mut take = |bytes: &[u8]| {
            if let Ok(PeerMessage::Frame(frame)) = PeerMessage::decode(bytes) {
                *last = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
                *seen += 1;
            }
        };
        match letter.body {
            Body::Inline(inline) => take(inline.as_slice()),
            Body::Bulk { handle, .. } => {
                regions.with_view(0, handle, take).expect("a valid handle");
            }
        }
    }
    mailbox.flush(&mut |_| {});
}

/// Streams `FRAMES` frames of `length` bytes from core 0 to core 1; ns per frame.
fn mailbox_stream(length: usize) -> f64 {
    let (mut sender, mut receiver, regions) = mailboxes();
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let receiving = scope.spawn(|| {
            barrier.wait();
            let (mut seen, mut last, mut idle) = (0u64, 0u64, Instant::now());
            while seen < FRAMES {
                let before = seen;
                drain(&mut receiver, &regions, &mut seen, &mut last);
                if seen != before {
                    idle = Instant::now();
                }
                assert!(idle.elapsed() < STUCK, "the sender stopped");
            }
            assert_eq!(last, FRAMES - 1, "in order");
        });
        barrier.wait();
        let start = Instant::now();
        let mut sequence = 0;
        let bytes = frame(length, 0);
        let mut buffer = bytes.clone();
        while sequence < FRAMES {
            buffer[..8].copy_from_slice(&sequence.to_le_bytes());
            let sent = MailboxPeers {
                mailbox: &mut sender,
            }
            .send(1, &PeerMessage::Frame(&buffer));
            // Ring, outbox or pool full: a real core would count the drop; here, retry.
            if sent.is_ok() {
                sequence += 1;
            }
            // Returns arrive on the receiver's letters: take them, and retry the outbox.
            let table = regions.table();
            while sender.receive(LinkId(1), &table).is_some() {}
            sender.flush(&mut |_| {});
            assert!(start.elapsed() < STUCK * 3, "no progress");
        }
        receiving.join().expect("the receiver");
        start.elapsed().as_nanos() as f64 / FRAMES as f64
    })
}

/// The old design: the encoded message cut into 48-byte chunks, one slot each, reassembled.
fn chunked_stream(length: usize) -> f64 {
    let (mut a, mut b) = pair();
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let receiving = scope.spawn(|| {
            barrier.wait();
            let (mut seen, mut assembly, mut idle) = (0u64, Vec::new(), Instant::now());
            while seen < FRAMES {
                match b.receiver.try_recv() {
                    Ok(payload) => {
                        idle = Instant::now();
                        let total = usize::from(u16::from_le_bytes([payload[2], payload[3]]));
                        let used = usize::from(payload[1]);
                        if u16::from_le_bytes([payload[4], payload[5]]) == 0 {
                            assembly.clear();
                        }
                        assembly.extend_from_slice(&payload[8..8 + used]);
                        if assembly.len() >= total {
                            if let Ok(PeerMessage::Frame(_)) = PeerMessage::decode(&assembly) {
                                seen += 1;
                            }
                        }
                    }
                    Err(_) => assert!(idle.elapsed() < STUCK, "the sender stopped"),
                }
            }
        });
        barrier.wait();
        let start = Instant::now();
        let bytes = frame(length, 0);
        let mut encoded = vec![0u8; 4096];
        for sequence in 0..FRAMES {
            let mut buffer = bytes.clone();
            buffer[..8].copy_from_slice(&sequence.to_le_bytes());
            let total = PeerMessage::Frame(&buffer)
                .encode(&mut encoded)
                .expect("fits");
            for (index, chunk) in encoded[..total].chunks(CHUNK).enumerate() {
                loop {
                    let sent = a.sender.try_send_with(|payload| {
                        payload[0] = 0x20;
                        payload[1] = chunk.len() as u8;
                        payload[2..4].copy_from_slice(&(total as u16).to_le_bytes());
                        payload[4..6].copy_from_slice(&((index * CHUNK) as u16).to_le_bytes());
                        payload[8..8 + chunk.len()].copy_from_slice(chunk);
                    });
                    if sent.is_ok() {
                        break;
                    }
                    assert!(start.elapsed() < STUCK * 3, "no progress");
                }
            }
        }
        receiving.join().expect("the receiver");
        start.elapsed().as_nanos() as f64 / FRAMES as f64
    })
}

/// Round trips of a `length`-byte frame through the mailboxes, answered by a one-slot frame.
fn mailbox_round_trip(length: usize) -> (f64, f64) {
    let (mut a, mut b, regions) = mailboxes();
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let answering = scope.spawn(|| {
            barrier.wait();
            let (mut seen, mut last) = (0u64, 0u64);
            let start = Instant::now();
            while seen < ROUND_TRIPS as u64 {
                let before = seen;
                drain(&mut b, &regions, &mut seen, &mut last);
                for _ in before..seen {
                    let reply = frame(16, last);
                    while (MailboxPeers { mailbox: &mut b })
                        .send(0, &PeerMessage::Frame(&reply))
                        .is_err()
                    {}
                }
                b.flush(&mut |_| {});
                assert!(start.elapsed() < STUCK * 3, "no progress");
            }
        });
        barrier.wait();
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        let request = frame(length, 0);
        let table = regions.table();
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            while (MailboxPeers { mailbox: &mut a })
                .send(1, &PeerMessage::Frame(&request))
                .is_err()
            {
                a.flush(&mut |_| {});
            }
            a.flush(&mut |_| {});
            loop {
                if let Some(received) = a.receive(LinkId(1), &table) {
                    if matches!(received.letter.map(|l| l.family), Ok(Family::Net)) {
                        break;
                    }
                }
                assert!(sent.elapsed() < STUCK, "no answer");
            }
            samples.push(sent.elapsed().as_nanos() as f64);
        }
        answering.join().expect("the answerer");
        samples.sort_by(f64::total_cmp);
        (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        )
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--rounds N");
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "forwarded frame between two threads (not pinned); host load {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    println!(
        "{:<6} {:>16} {:>16} {:>16} {:>16} {:>22}",
        "round",
        "mailbox 64 B",
        "chunked 64 B",
        "mailbox 1514 B",
        "chunked 1514 B",
        "mailbox RTT 1514 B"
    );
    let mut columns: [Vec<f64>; 6] = Default::default();
    for round in 0..rounds {
        let figures = [
            mailbox_stream(64),
            chunked_stream(64),
            mailbox_stream(1514),
            chunked_stream(1514),
        ];
        let (p50, p99) = mailbox_round_trip(1514);
        println!(
            "{round:<6} {:>13.0} ns {:>13.0} ns {:>13.0} ns {:>13.0} ns {:>9.0} / {:>6.0} ns",
            figures[0], figures[1], figures[2], figures[3], p50, p99
        );
        for (column, value) in columns
            .iter_mut()
            .zip(figures.into_iter().chain([p50, p99]))
        {
            column.push(value);
        }
    }
    let [m64, c64, m1514, c1514, p50, p99] = columns.map(|mut c| median(&mut c));
    println!(
        "median: mailbox {m64:.0} ns vs chunked {c64:.0} ns per 64-byte frame ({:.2}x), mailbox {m1514:.0} ns vs chunked {c1514:.0} ns per 1514-byte frame ({:.2}x); round trip p50 {p50:.0} ns, p99 {p99:.0} ns",
        c64 / m64,
        c1514 / m1514
    );
}
