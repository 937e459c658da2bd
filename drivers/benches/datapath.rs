//! Per-packet cost of the driver datapath on the host, printed next to the 10GbE line-rate
//! budget of 67 ns per 64-byte frame (84 bytes on the wire with preamble and gap, at 10 Gb/s).
//!
//! Three figures, each over a bounded number of packets (echo: receive, then transmit the same
//! buffer, then reclaim and refill; batches of 32):
//! 1. ring logic only: the igb/ixgbe `DescriptorQueue` with the device played by writing
//!    descriptors back directly, registers a no-op. This is the driver's own CPU cost (no MMIO:
//!    on hardware add two uncached tail writes per batch, amortised over the batch).
//! 2. through the 82576 register model: adds the model's parsing, Toeplitz hash, copies, lock.
//! 3. through the simulated NIC (`sim`): the host test device, for comparison.
//!
//! Run with `cargo bench -p drivers`.

use std::hint::black_box;
use std::time::Instant;

use drivers::dma::QueueMemory;
use drivers::frame::build_udp_ipv4;
use drivers::nic::{QueueDatapath, QueueId, ReceiveBatch, TransmitFrame};
use drivers::pool::BufferPool;
use drivers::registers::RegisterAccess;
use drivers::ring::{DescriptorQueue, QueueRegisters};

const BUDGET_NS: f64 = 67.2;
const BATCH: usize = 32;
const PACKETS: usize = 2_000_000;

/// Registers that cost nothing (the datapath writes only tails).
#[derive(Clone, Copy)]
struct NoRegisters;
impl RegisterAccess for NoRegisters {
    fn read32(&self, _: usize) -> u32 {
        0
    }
    fn write32(&self, _: usize, value: u32) {
        black_box(value);
    }
}

fn echo_batch<Q: QueueDatapath>(
    queue: &mut Q,
    pool: &mut BufferPool,
    frames: &mut Vec<TransmitFrame>,
) -> usize {
    let mut batch = ReceiveBatch::new();
    let n = queue.receive(pool, &mut batch);
    frames.clear();
    frames.extend(batch.iter().map(|f| TransmitFrame::new(f.buffer, f.length)));
    let sent = queue.transmit(pool, frames);
    for frame in &frames[sent..] {
        let _ = pool.free(frame.buffer);
    }
    queue.reclaim(pool);
    queue.refill(pool);
    n
}

fn report(name: &str, packets: usize, seconds: f64) {
    let ns = seconds * 1e9 / packets as f64;
    let verdict = if ns <= BUDGET_NS { "within" } else { "over" };
    println!("{name:<44} {ns:>8.1} ns/packet  ({verdict} the {BUDGET_NS:.0} ns 10GbE budget, {packets} packets)");
}

fn ring_only() {
    let offsets = QueueRegisters {
        rx_tail: 0x18,
        tx_tail: 0x28,
        rx_drop_counter: None,
        interrupt_mask_set: 0,
        interrupt_mask_clear: 0,
        interrupt_bit: None,
        missed_packets_counter: None,
        tx_checksum_offload: false,
        tx_check_context: false,
        tx_tcp_segmentation: false,
    };
    let mut queue = DescriptorQueue::new(
        QueueId(0),
        NoRegisters,
        offsets,
        QueueMemory::new_host(512).unwrap(),
    );
    let mut pool = BufferPool::new_host(1024);
    queue.refill(&mut pool);
    let mut frames = Vec::with_capacity(BATCH);
    let mut done = 0;
    // Warm-up, then the timed run.
    for _ in 0..1000 {
        queue.emulate_device(BATCH as u16, 60);
        echo_batch(&mut queue, &mut pool, &mut frames);
    }
    let start = Instant::now();
    while done < PACKETS {
        queue.emulate_device(BATCH as u16, 60);
        done += echo_batch(&mut queue, &mut pool, &mut frames);
    }
    report(
        "ring logic (RX+TX, device emulated)",
        done,
        start.elapsed().as_secs_f64(),
    );
}

fn frame() -> Vec<u8> {
    let mut out = vec![0u8; 64];
    let n = build_udp_ipv4(
        &mut out,
        [2; 6],
        [4; 6],
        ([10, 0, 0, 1], 4000),
        ([10, 0, 0, 2], 7),
        &[0u8; 18],
    );
    out.truncate(n);
    out
}

fn igb_model() {
    let model = drivers::igb::model::new_model();
    let config = drivers::igb::IgbConfig {
        ring_size: 512,
        ..drivers::igb::IgbConfig::new(1)
    };
    let (_control, mut queues) = drivers::igb::init(
        model.clone(),
        &mut |_| {},
        &config,
        [QueueMemory::new_host(512).unwrap()],
    )
    .unwrap();
    let queue = &mut queues[0];
    let mut pool = BufferPool::new_host(1024);
    queue.refill(&mut pool);
    let bytes = frame();
    let mut frames = Vec::with_capacity(BATCH);
    let packets = PACKETS / 10;
    let mut done = 0;
    let start = Instant::now();
    while done < packets {
        for _ in 0..BATCH {
            model.receive(&bytes);
        }
        done += echo_batch(queue, &mut pool, &mut frames);
        model.take_transmitted();
        model.state().received.clear();
        model.state().writes.clear();
    }
    report(
        "82576 register model (driver + model)",
        done,
        start.elapsed().as_secs_f64(),
    );
}

fn sim() {
    let (wire, _control, mut queues) = drivers::sim::sim_nic(drivers::sim::SimConfig {
        ring_size: 512,
        capture: false,
        ..drivers::sim::SimConfig::new(1)
    });
    let queue = &mut queues[0];
    let mut pool = BufferPool::new_host(1024);
    queue.refill(&mut pool);
    let bytes = frame();
    let mut frames = Vec::with_capacity(BATCH);
    let packets = PACKETS / 10;
    let mut done = 0;
    let start = Instant::now();
    while done < packets {
        for _ in 0..BATCH {
            wire.inject(&bytes);
        }
        done += echo_batch(queue, &mut pool, &mut frames);
        wire.take_transmitted();
    }
    report(
        "simulated NIC (sim::SimQueue)",
        done,
        start.elapsed().as_secs_f64(),
    );
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run the same bounded work either way.
    println!("per-packet driver cost, 64-byte frames, batches of {BATCH} (host, release build)");
    ring_only();
    igb_model();
    sim();
}
