//! Host benchmark: urpc against a raw one-cache-line ping-pong (the physical limit), `rtrb` and
//! `crossbeam-channel`, on two threads pinned to cores 0 and 1.
//!
//! Measures round-trip latency (p50, p99; TSC cycles and ns) and one-way throughput of 64-byte
//! messages, in several interleaved rounds so that all four see the same machine noise, then
//! prints a table of the medians over rounds, each round's figures, and the target ratios:
//! urpc RTT / raw RTT (target ≤ 1.10) and urpc throughput / rtrb throughput (target ≥ 1.2).
//!
//! Run: `cargo bench -p urpc` (or `cargo bench -p urpc --bench urpc_bench -- --rounds 7`).
//! Options: `--rounds N` (default 5), `--pause` (execute `pause` in wait loops), `--ring-sizes`
//! (instead: urpc round trip for 2..256 slots beside the raw limits).
//!
//! "raw 2 lines" is a ping-pong with one line per direction, each written by one side only: the
//! limit for any design, urpc included, in which the two directions use different lines.
//! Every loop is bounded in count and in time; a stuck peer ends the run with a message.

use std::arch::x86_64::{_mm_lfence, _rdtsc};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use urpc::{ChannelRegion, Endpoint, Payload, RecvError, SendError, Side, PAYLOAD_SIZE};

/// Round trips per latency measurement (after warm-up), unless the time cap comes first.
const ROUND_TRIPS: usize = 400_000;
/// Round trips per batch whose mean RTT is taken (see `ping_pong`).
const BATCH: usize = 16;
/// Round trips discarded before measuring.
const WARM_UP_ROUND_TRIPS: usize = 20_000;
/// Longest one latency measurement may run.
const LATENCY_TIME_CAP: Duration = Duration::from_secs(1);
/// Messages per throughput measurement, unless the time cap comes first.
const MESSAGES: u64 = 10_000_000;
/// Longest one throughput measurement may run (the producer stops sending then).
const THROUGHPUT_TIME_CAP: Duration = Duration::from_secs(1);
/// A wait for the peer longer than this means it is stuck: abort the run.
const STUCK: Duration = Duration::from_secs(10);
/// Whether wait loops execute `pause` between polls (`--pause`); default: tight polling.
static PAUSE: AtomicBool = AtomicBool::new(false);
/// Slots (capacity) of every queue, so the comparison is like for like.
const CAPACITY: usize = 64;

/// One cache line, for the crates that carry a value type.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// The raw ping-pong's only shared memory: one line both threads write.
#[repr(C, align(64))]
struct SharedLine(AtomicU64);

/// Reads the TSC after earlier instructions completed (`lfence` keeps `rdtsc` from moving up).
#[inline(always)]
fn cycles() -> u64 {
    // SAFETY: `lfence` and `rdtsc` exist on every x86_64 CPU and have no memory-safety effects.
    unsafe {
        _mm_lfence();
        _rdtsc()
    }
}

/// TSC cycles per nanosecond, measured against the OS clock over 200 ms.
fn tsc_per_ns() -> f64 {
    let (start_instant, start_tsc) = (Instant::now(), cycles());
    while start_instant.elapsed() < Duration::from_millis(200) {
        std::hint::spin_loop();
    }
    let (elapsed, tsc) = (start_instant.elapsed(), cycles() - start_tsc);
    tsc as f64 / elapsed.as_nanos() as f64
}

/// Pins the calling thread to `core` (panics if the OS refuses: the figures would be meaningless).
fn pin(core: usize) {
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: core }),
        "cannot pin to core {core}"
    );
}

/// Spins on `poll` until it returns `Some`, giving up (and aborting the benchmark) after `STUCK`.
#[inline(always)]
fn spin_until<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        if let Some(value) = poll() {
            return value;
        }
        if PAUSE.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 16) {
            let start = *since.get_or_insert_with(Instant::now);
            if start.elapsed() > STUCK {
                eprintln!("urpc-bench: {what}: peer stuck for {STUCK:?}, aborting");
                std::process::exit(2);
            }
        }
    }
}

/// What a latency measurement yields: sorted round-trip times in cycles.
struct Latency {
    sorted_cycles: Vec<u64>,
    /// Mean round trip of each batch of `BATCH`, sorted.
    sorted_batch_means: Vec<f64>,
}

impl Latency {
    fn percentile(&self, fraction: f64) -> u64 {
        let index = ((self.sorted_cycles.len() - 1) as f64 * fraction).round() as usize;
        self.sorted_cycles[index]
    }

    fn batch_median(&self) -> f64 {
        self.sorted_batch_means[self.sorted_batch_means.len() / 2]
    }
}

/// Runs a ping-pong: `initiator(sequence)` performs one round trip on core 0, `responder()`
/// answers one request on core 1 and returns false when told to stop (request `u64::MAX`).
fn ping_pong<I, IF, R, RF>(initiator: I, responder: R) -> Latency
where
    I: FnOnce() -> IF + Send,
    IF: FnMut(u64),
    R: FnOnce() -> RF + Send,
    RF: FnMut() -> bool,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let barrier = &barrier;
        scope.spawn(move || {
            pin(1);
            let mut answer = responder();
            barrier.wait();
            while answer() {}
        });
        let measured = scope.spawn(move || {
            pin(0);
            let mut round_trip = initiator();
            barrier.wait();
            for sequence in 0..WARM_UP_ROUND_TRIPS as u64 {
                round_trip(sequence);
            }
            // Alternate single round trips (for percentiles) and batches of BATCH round trips
            // (their mean is not limited by the TSC's granularity, ~20 ns on this VM).
            let mut samples = Vec::with_capacity(ROUND_TRIPS);
            let mut batch_means = Vec::with_capacity(ROUND_TRIPS / BATCH);
            let start = Instant::now();
            let mut sequence = 0u64;
            while (sequence as usize) < ROUND_TRIPS {
                let before = cycles();
                round_trip(sequence);
                samples.push(cycles() - before);
                sequence += 1;
                let before = cycles();
                for _ in 0..BATCH {
                    round_trip(sequence);
                    sequence += 1;
                }
                batch_means.push((cycles() - before) as f64 / BATCH as f64);
                if samples.len() % 1024 == 0 && start.elapsed() > LATENCY_TIME_CAP {
                    break;
                }
            }
            round_trip(u64::MAX);
            samples.sort_unstable();
            batch_means.sort_by(f64::total_cmp);
            Latency {
                sorted_cycles: samples,
                sorted_batch_means: batch_means,
            }
        });
        measured.join().expect("initiator panicked")
    })
}

/// Runs a one-way stream: `produce(sequence)` sends one message on core 0 (spinning while
/// full), `consume()` receives one on core 1 (spinning while empty) and returns its sequence.
/// The producer ends with sequence `u64::MAX`, which the consumer does not count.
/// Returns messages per second, from the producer's start to the consumer's last receipt.
fn stream<P, PF, C, CF>(producer: P, consumer: C) -> f64
where
    P: FnOnce() -> PF + Send,
    PF: FnMut(u64),
    C: FnOnce() -> CF + Send,
    CF: FnMut() -> u64,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let barrier = &barrier;
        let consumer = scope.spawn(move || {
            pin(1);
            let mut receive = consumer();
            barrier.wait();
            let mut received = 0u64;
            let mut checksum = 0u64;
            loop {
                let sequence = receive();
                if sequence == u64::MAX {
                    break;
                }
                debug_assert_eq!(sequence, received);
                checksum = checksum.wrapping_add(sequence);
                received += 1;
            }
            let end = Instant::now();
            black_box(checksum);
            (received, end)
        });
        pin(0);
        let mut send = producer();
        barrier.wait();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < MESSAGES {
            send(sent);
            sent += 1;
            if sent.is_multiple_of(65536) && start.elapsed() > THROUGHPUT_TIME_CAP {
                break;
            }
        }
        // The end marker (not counted).
        send(u64::MAX);
        let (received, end) = consumer.join().expect("consumer panicked");
        assert_eq!(received, sent);
        received as f64 / end.duration_since(start).as_secs_f64()
    })
}

fn sequence_payload(sequence: u64) -> Payload {
    let mut payload = [0u8; PAYLOAD_SIZE];
    payload[..8].copy_from_slice(&sequence.to_le_bytes());
    payload
}

fn payload_sequence(payload: &Payload) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
}

fn line(sequence: u64) -> Line {
    Line([sequence, 0, 0, 0, 0, 0, 0, 0])
}

// ---------------------------------------------------------------------------------------------
// The four contenders.

fn raw_latency() -> Latency {
    let shared = SharedLine(AtomicU64::new(0));
    let shared = &shared;
    ping_pong(
        move || {
            let mut next = 0u64;
            move |sequence| {
                // Request: an odd value; the answer is the next even value.
                next = if sequence == u64::MAX {
                    u64::MAX - 1
                } else {
                    next + 2
                };
                shared.0.store(next - 1, Ordering::Release);
                spin_until("raw initiator", || {
                    (shared.0.load(Ordering::Acquire) == next).then_some(())
                });
            }
        },
        move || {
            let mut last = 0u64;
            move || {
                let request = spin_until("raw responder", || {
                    let value = shared.0.load(Ordering::Acquire);
                    (value != last && value % 2 == 1).then_some(value)
                });
                last = request + 1;
                shared.0.store(last, Ordering::Release);
                request != u64::MAX - 2
            }
        },
    )
}

/// Like `raw_latency`, but each direction has its own line, written by one side only.
fn raw_two_lines_latency() -> Latency {
    let requests = SharedLine(AtomicU64::new(0));
    let answers = SharedLine(AtomicU64::new(0));
    let (requests, answers) = (&requests, &answers);
    ping_pong(
        move || {
            let mut next = 0u64;
            move |sequence: u64| {
                next = if sequence == u64::MAX {
                    u64::MAX
                } else {
                    next + 1
                };
                requests.0.store(next, Ordering::Release);
                spin_until("raw2 initiator", || {
                    (answers.0.load(Ordering::Acquire) == next).then_some(())
                });
            }
        },
        move || {
            let mut last = 0u64;
            move || {
                let request = spin_until("raw2 responder", || {
                    let value = requests.0.load(Ordering::Acquire);
                    (value != last).then_some(value)
                });
                last = request;
                answers.0.store(request, Ordering::Release);
                request != u64::MAX
            }
        },
    )
}

fn urpc_latency() -> Latency {
    urpc_latency_with::<CAPACITY>()
}

fn urpc_latency_with<const SLOTS: usize>() -> Latency {
    let mut storage = Box::<ChannelRegion<SLOTS>>::new_uninit();
    let region = ChannelRegion::init(&mut storage);
    let a = region.claim(Side::A).expect("side A");
    let b = region.claim(Side::B).expect("side B");
    ping_pong(
        move || {
            let Endpoint {
                mut sender,
                mut receiver,
            } = a;
            move |sequence| {
                sender
                    .try_send(&sequence_payload(sequence))
                    .expect("never full in ping-pong");
                spin_until("urpc initiator", || receiver.try_recv().ok());
            }
        },
        move || {
            let Endpoint {
                mut sender,
                mut receiver,
            } = b;
            move || {
                let request = spin_until("urpc responder", || receiver.try_recv().ok());
                sender.try_send(&request).expect("never full in ping-pong");
                payload_sequence(&request) != u64::MAX
            }
        },
    )
}

fn rtrb_latency() -> Latency {
    let (mut to_responder, mut at_responder) = rtrb::RingBuffer::<Line>::new(CAPACITY);
    let (mut to_initiator, mut at_initiator) = rtrb::RingBuffer::<Line>::new(CAPACITY);
    ping_pong(
        move || {
            move |sequence| {
                to_responder
                    .push(line(sequence))
                    .expect("never full in ping-pong");
                spin_until("rtrb initiator", || at_initiator.pop().ok());
            }
        },
        move || {
            move || {
                let request = spin_until("rtrb responder", || at_responder.pop().ok());
                to_initiator.push(request).expect("never full in ping-pong");
                request.0[0] != u64::MAX
            }
        },
    )
}

fn crossbeam_latency() -> Latency {
    let (to_responder, at_responder) = crossbeam_channel::bounded::<Line>(CAPACITY);
    let (to_initiator, at_initiator) = crossbeam_channel::bounded::<Line>(CAPACITY);
    ping_pong(
        move || {
            move |sequence| {
                to_responder
                    .try_send(line(sequence))
                    .expect("never full in ping-pong");
                spin_until("crossbeam initiator", || at_initiator.try_recv().ok());
            }
        },
        move || {
            move || {
                let request = spin_until("crossbeam responder", || at_responder.try_recv().ok());
                to_initiator
                    .try_send(request)
                    .expect("never full in ping-pong");
                request.0[0] != u64::MAX
            }
        },
    )
}

fn urpc_throughput() -> f64 {
    let mut storage = Box::<ChannelRegion<CAPACITY>>::new_uninit();
    let region = ChannelRegion::init(&mut storage);
    let mut a = region.claim(Side::A).expect("side A");
    let mut b = region.claim(Side::B).expect("side B");
    stream(
        move || {
            move |sequence| {
                let payload = sequence_payload(sequence);
                spin_until("urpc producer", || match a.sender.try_send(&payload) {
                    Ok(()) => Some(()),
                    Err(SendError::Full) => None,
                    Err(other) => panic!("{other:?}"),
                })
            }
        },
        move || {
            move || {
                let payload = spin_until("urpc consumer", || match b.receiver.try_recv() {
                    Ok(payload) => Some(payload),
                    Err(RecvError::Empty) => None,
                    Err(other) => panic!("{other:?}"),
                });
                payload_sequence(&black_box(payload))
            }
        },
    )
}

fn rtrb_throughput() -> f64 {
    let (mut producer, mut consumer) = rtrb::RingBuffer::<Line>::new(CAPACITY);
    stream(
        move || {
            move |sequence| {
                let value = line(sequence);
                spin_until("rtrb producer", || producer.push(value).ok());
            }
        },
        move || move || black_box(spin_until("rtrb consumer", || consumer.pop().ok())).0[0],
    )
}

fn crossbeam_throughput() -> f64 {
    let (producer, consumer) = crossbeam_channel::bounded::<Line>(CAPACITY);
    stream(
        move || {
            move |sequence| {
                let value = line(sequence);
                spin_until("crossbeam producer", || producer.try_send(value).ok());
            }
        },
        move || {
            move || {
                black_box(spin_until("crossbeam consumer", || {
                    consumer.try_recv().ok()
                }))
                .0[0]
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------

/// One contender's figures in one round.
#[derive(Clone, Copy, Default)]
struct Figures {
    /// Median of the means of batches of `BATCH` round trips.
    batch_p50_cycles: f64,
    p50_cycles: f64,
    p99_cycles: f64,
    messages_per_second: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn main() {
    let mut rounds = 5usize;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        if argument == "--rounds" {
            rounds = arguments
                .next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(rounds)
                .clamp(1, 20);
        }
        if argument == "--pause" {
            PAUSE.store(true, Ordering::Relaxed);
        }
        // Other arguments (cargo bench passes `--bench`) are ignored.
    }
    if std::env::args().any(|argument| argument == "--ring-sizes") {
        // urpc round trip against ring size, beside both raw limits (median batch RTT, cycles).
        for _ in 0..3 {
            let raw = raw_latency().batch_median();
            let raw2 = raw_two_lines_latency().batch_median();
            let s2 = urpc_latency_with::<2>().batch_median();
            let s4 = urpc_latency_with::<4>().batch_median();
            let s8 = urpc_latency_with::<8>().batch_median();
            let s64 = urpc_latency_with::<64>().batch_median();
            let s256 = urpc_latency_with::<256>().batch_median();
            println!(
                "rtt cycles: raw line {raw:.0}, raw 2 lines {raw2:.0}, urpc 2 slots {s2:.0}, 4 slots {s4:.0}, \
                 8 slots {s8:.0}, 64 slots {s64:.0}, 256 slots {s256:.0}"
            );
        }
        return;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default().len();
    if cores < 2 {
        eprintln!("urpc-bench: needs 2 cores, found {cores}");
        std::process::exit(1);
    }
    let tsc_per_ns = tsc_per_ns();
    println!(
        "urpc-bench: {rounds} rounds; threads pinned to cores 0 and 1; {CAPACITY}-slot queues; \
         64-byte messages (urpc: 56 payload + 8 header in one line); TSC {tsc_per_ns:.3} GHz"
    );
    const NAMES: [&str; 5] = ["raw line", "raw 2 lines", "urpc", "rtrb", "crossbeam"];
    const RAW: usize = 0;
    const URPC: usize = 2;
    const RTRB: usize = 3;
    let mut per_round: Vec<[Figures; 5]> = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let mut figures = [Figures::default(); 5];
        let latencies = [
            raw_latency(),
            raw_two_lines_latency(),
            urpc_latency(),
            rtrb_latency(),
            crossbeam_latency(),
        ];
        for (slot, latency) in figures.iter_mut().zip(&latencies) {
            slot.batch_p50_cycles = latency.batch_median();
            slot.p50_cycles = latency.percentile(0.50) as f64;
            slot.p99_cycles = latency.percentile(0.99) as f64;
        }
        figures[URPC].messages_per_second = Some(urpc_throughput());
        figures[RTRB].messages_per_second = Some(rtrb_throughput());
        figures[4].messages_per_second = Some(crossbeam_throughput());
        print!("round {round}:");
        for (name, figure) in NAMES.iter().zip(&figures) {
            print!("  {name} rtt {:.0} cyc", figure.batch_p50_cycles);
            if let Some(rate) = figure.messages_per_second {
                print!(" {:.1} M/s", rate / 1e6);
            }
            print!(";");
        }
        println!(
            "  ratios rtt {:.3} tput {:.3}",
            figures[URPC].batch_p50_cycles / figures[RAW].batch_p50_cycles,
            figures[URPC].messages_per_second.unwrap_or(0.0)
                / figures[RTRB].messages_per_second.unwrap_or(1.0)
        );
        per_round.push(figures);
    }

    println!();
    println!("medians over {rounds} rounds:");
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>14}",
        "",
        "rtt cyc",
        "p50 cyc",
        "p99 cyc",
        "rtt ns",
        "p50 ns",
        "p99 ns",
        "M msg/s",
        "M msg/s range"
    );
    let mut medians = [Figures::default(); 5];
    for (index, name) in NAMES.iter().enumerate() {
        let column = |pick: fn(&Figures) -> f64| {
            median(per_round.iter().map(|round| pick(&round[index])).collect())
        };
        let rates: Vec<f64> = per_round
            .iter()
            .filter_map(|round| round[index].messages_per_second)
            .collect();
        medians[index] = Figures {
            batch_p50_cycles: column(|figure| figure.batch_p50_cycles),
            p50_cycles: column(|figure| figure.p50_cycles),
            p99_cycles: column(|figure| figure.p99_cycles),
            messages_per_second: (!rates.is_empty()).then(|| median(rates.clone())),
        };
        let figure = medians[index];
        let (rate, spread) = match figure.messages_per_second {
            Some(rate) => {
                let low = rates.iter().copied().fold(f64::INFINITY, f64::min);
                let high = rates.iter().copied().fold(0.0, f64::max);
                (
                    format!("{:.1}", rate / 1e6),
                    format!("{:.1}..{:.1}", low / 1e6, high / 1e6),
                )
            }
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        println!(
            "{:<10} {:>9.0} {:>9.0} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>14}",
            name,
            figure.batch_p50_cycles,
            figure.p50_cycles,
            figure.p99_cycles,
            figure.batch_p50_cycles / tsc_per_ns,
            figure.p50_cycles / tsc_per_ns,
            figure.p99_cycles / tsc_per_ns,
            rate,
            spread
        );
    }
    let rtt_ratios: Vec<f64> = per_round
        .iter()
        .map(|round| round[URPC].batch_p50_cycles / round[RAW].batch_p50_cycles)
        .collect();
    let throughput_ratios: Vec<f64> = per_round
        .iter()
        .map(|round| {
            round[URPC].messages_per_second.unwrap_or(0.0)
                / round[RTRB].messages_per_second.unwrap_or(1.0)
        })
        .collect();
    let spread = |values: &[f64]| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(0.0, f64::max);
        format!("{low:.3}..{high:.3}")
    };
    println!();
    println!(
        "ratio urpc RTT / raw RTT                  = {:.3} (target <= 1.10; per round {})",
        median(rtt_ratios.clone()),
        spread(&rtt_ratios)
    );
    println!(
        "ratio urpc throughput / rtrb throughput   = {:.3} (target >= 1.20; per round {})",
        median(throughput_ratios.clone()),
        spread(&throughput_ratios)
    );
    println!(
        "ratio urpc RTT p50 / raw RTT p50 (single) = {:.3}",
        medians[URPC].p50_cycles / medians[RAW].p50_cycles
    );
    println!(
        "ratio urpc RTT p99 / raw RTT p99 (single) = {:.3}",
        medians[URPC].p99_cycles / medians[RAW].p99_cycles
    );
    println!(
        "rtt = median over batches of the mean of {BATCH} round trips; p50/p99 = single round trips \
         (TSC granularity here is coarse); M msg/s = one-way 64-byte messages"
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}
