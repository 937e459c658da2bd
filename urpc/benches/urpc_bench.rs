//! Host benchmark: urpc against `rtrb` and `crossbeam-channel`, and against two raw ping-pongs
//! (the floors), on two threads pinned to two different CPUs.
//!
//! Like with like: every queue carries the same item, a 56-byte payload (`[u8; 56]`, urpc's
//! `Payload`), has the same number of slots (`CAPACITY`), and is driven by the same generic loop
//! (`round_trips` and `stream` below): the producer builds the payload of message `s` (`s`, `!s`,
//! then zeros) and pushes it by value or reference; the consumer pops it and decodes it (reads
//! all seven words, checks the sequence and the check word). urpc's extra rows (in place, batch)
//! use other urpc calls in the same loops and are not part of the target ratios.
//!
//! Method: the CPU list is read once, before any thread pins itself (a pinned thread's
//! `core_affinity::get_core_ids()` lists only its own CPU). Each round runs every contender once,
//! back to back, in an order rotated from round to round, so contenders see the same machine; a
//! target ratio is computed per round (urpc and its reference from the same round) and reported as
//! min / median / max over the rounds. A target is "met" when the median per-round ratio meets it;
//! the count of rounds that met it is printed beside.
//!
//! Run: `cargo bench -p urpc` (or `cargo bench -p urpc --bench urpc_bench -- --rounds 15`).
//! Options: `--rounds N` (default 11), `--pause` (execute `pause` in wait loops), `--ring-sizes`
//! (instead: urpc round trip and throughput for 2..256 slots beside the raw floors).
//! Every loop is bounded in count and in time; a stuck peer ends the run with a message.

use std::arch::x86_64::{_mm_lfence, _rdtsc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use urpc::{ChannelRegion, Payload, RecvError, SendError, Side, PAYLOAD_SIZE};

/// Slots (capacity) of every queue.
const CAPACITY: usize = 64;
/// Round trips per latency measurement (after warm-up), unless the time cap comes first.
const ROUND_TRIPS: usize = 200_000;
/// Round trips per batch whose mean RTT is taken (see `round_trips`).
const BATCH: usize = 16;
/// Round trips discarded before measuring.
const WARM_UP_ROUND_TRIPS: usize = 10_000;
/// Longest one latency measurement may run.
const LATENCY_TIME_CAP: Duration = Duration::from_millis(500);
/// Messages per throughput measurement, unless the time cap comes first.
const MESSAGES: u64 = 4_000_000;
/// Longest one throughput measurement may run (the producer stops sending then).
const THROUGHPUT_TIME_CAP: Duration = Duration::from_millis(500);
/// A wait for the peer longer than this means it is stuck: abort the run.
const STUCK: Duration = Duration::from_secs(10);
/// The round-trip target: urpc RTT / two-line ping-pong RTT.
const RTT_TARGET: f64 = 1.10;
/// The throughput target: urpc messages/s / rtrb messages/s.
const THROUGHPUT_TARGET: f64 = 1.20;
/// Whether wait loops execute `pause` between polls (`--pause`); default: tight polling.
static PAUSE: AtomicBool = AtomicBool::new(false);

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

/// The two CPUs the threads run on, read once at start (see the module documentation).
#[derive(Clone, Copy)]
struct Cpus {
    initiator: core_affinity::CoreId,
    responder: core_affinity::CoreId,
}

/// Pins the calling thread to `cpu` (panics if the OS refuses: the figures would be meaningless).
fn pin(cpu: core_affinity::CoreId) {
    assert!(
        core_affinity::set_for_current(cpu),
        "cannot pin to CPU {}",
        cpu.id
    );
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
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

// ---------------------------------------------------------------------------------------------
// The item and the two ends of a queue, as the generic loops see them.

/// The payload of message `sequence`: the sequence, its complement, zeros.
#[inline(always)]
fn encode(sequence: u64) -> Payload {
    let mut payload = [0u8; PAYLOAD_SIZE];
    payload[..8].copy_from_slice(&sequence.to_le_bytes());
    payload[8..16].copy_from_slice(&(!sequence).to_le_bytes());
    payload
}

/// Reads every word of a payload and returns its sequence; panics on a corrupt payload.
#[inline(always)]
fn decode(payload: &Payload) -> u64 {
    let word = |index: usize| {
        u64::from_le_bytes(
            payload[index * 8..index * 8 + 8]
                .try_into()
                .expect("8 bytes"),
        )
    };
    let sequence = word(0);
    let zeros = word(2) | word(3) | word(4) | word(5) | word(6);
    assert!(
        word(1) == !sequence && zeros == 0,
        "corrupt payload for sequence {sequence}"
    );
    sequence
}

/// The producing end of a queue of payloads.
trait Push: Send {
    /// Publishes `payload`; false if the queue is full.
    fn try_push(&mut self, payload: &Payload) -> bool;
    /// Publishes the payloads `encode(first..first + count)` (a batch where the queue offers one);
    /// returns how many it published, from 0 (full) to `count`.
    fn try_push_encoded(&mut self, first: u64, count: usize) -> usize {
        let _ = count;
        usize::from(self.try_push(&encode(first)))
    }
}

/// The consuming end of a queue of payloads.
trait Pop: Send {
    /// Takes the next payload and returns `read` of it; `None` if the queue is empty.
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R>;
    /// Takes up to `max` payloads, calling `each` on every one (a batch where the queue offers
    /// one); returns how many it took.
    fn try_pop_each(&mut self, max: usize, mut each: impl FnMut(&Payload)) -> usize {
        let _ = max;
        usize::from(self.try_pop_with(|payload| each(payload)).is_some())
    }
}

/// urpc's sender; `try_send` copies the payload into the slot.
struct UrpcPush<'a, const SLOTS: usize = CAPACITY>(urpc::Sender<'a, SLOTS>);
/// urpc's receiver, used through `try_recv` (the payload is copied out, like `pop`).
struct UrpcPop<'a, const SLOTS: usize = CAPACITY>(urpc::Receiver<'a, SLOTS>);
/// urpc's sender, calling `notify_if_sleeping` after every send (as a kernel that does not
/// batch its notifications would): the cost of the `SeqCst` fence and the sleep-line read.
struct UrpcPushNotify<'a>(urpc::Sender<'a, CAPACITY>);
/// urpc's receiver, used through `try_recv_with` (the payload is read in the slot).
struct UrpcPopInPlace<'a>(urpc::Receiver<'a, CAPACITY>);
/// urpc's sender used through `try_send_batch` (one credit check and one generation check a batch).
struct UrpcPushBatch<'a>(urpc::Sender<'a, CAPACITY>);
/// urpc's receiver used through `try_recv_batch` (one credit decision a batch, read in place).
struct UrpcPopBatch<'a>(urpc::Receiver<'a, CAPACITY>);

fn unexpected_send(error: SendError) -> ! {
    panic!("urpc send: {error:?}")
}
fn unexpected_recv(error: RecvError) -> ! {
    panic!("urpc receive: {error:?}")
}

impl<const SLOTS: usize> Push for UrpcPush<'_, SLOTS> {
    #[inline]
    fn try_push(&mut self, payload: &Payload) -> bool {
        match self.0.try_send(payload) {
            Ok(()) => true,
            Err(SendError::Full) => false,
            Err(other) => unexpected_send(other),
        }
    }
}
/// A notifier for a receiver that never halts in the benchmark (it is never called).
struct NeverNotified;
impl urpc::Notifier for NeverNotified {
    fn notify(&mut self) {
        panic!("the benchmark's receivers never prepare to sleep");
    }
}
impl Push for UrpcPushNotify<'_> {
    #[inline]
    fn try_push(&mut self, payload: &Payload) -> bool {
        match self.0.try_send(payload) {
            Ok(()) => {
                self.0.notify_if_sleeping(&mut NeverNotified);
                true
            }
            Err(SendError::Full) => false,
            Err(other) => unexpected_send(other),
        }
    }
}
impl<const SLOTS: usize> Pop for UrpcPop<'_, SLOTS> {
    #[inline]
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        match self.0.try_recv() {
            Ok(payload) => Some(read(&payload)),
            Err(RecvError::Empty) => None,
            Err(other) => unexpected_recv(other),
        }
    }
}
impl Pop for UrpcPopInPlace<'_> {
    #[inline]
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        match self.0.try_recv_with(read) {
            Ok(value) => Some(value),
            Err(RecvError::Empty) => None,
            Err(other) => unexpected_recv(other),
        }
    }
}
impl Push for UrpcPushBatch<'_> {
    #[inline]
    fn try_push(&mut self, payload: &Payload) -> bool {
        match self.0.try_send(payload) {
            Ok(()) => true,
            Err(SendError::Full) => false,
            Err(other) => unexpected_send(other),
        }
    }
    #[inline]
    fn try_push_encoded(&mut self, first: u64, count: usize) -> usize {
        let mut next = first;
        match self.0.try_send_batch(count, |payload| {
            *payload = encode(next);
            next += 1;
        }) {
            Ok(sent) => sent,
            Err(SendError::Full) => 0,
            Err(other) => unexpected_send(other),
        }
    }
}
impl Pop for UrpcPopBatch<'_> {
    #[inline]
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        match self.0.try_recv_with(read) {
            Ok(value) => Some(value),
            Err(RecvError::Empty) => None,
            Err(other) => unexpected_recv(other),
        }
    }
    #[inline]
    fn try_pop_each(&mut self, max: usize, each: impl FnMut(&Payload)) -> usize {
        match self.0.try_recv_batch(max, each) {
            Ok(count) => count,
            Err(RecvError::Empty) => 0,
            Err(other) => unexpected_recv(other),
        }
    }
}

impl Push for rtrb::Producer<Payload> {
    #[inline]
    fn try_push(&mut self, payload: &Payload) -> bool {
        self.push(*payload).is_ok()
    }
}
impl Pop for rtrb::Consumer<Payload> {
    #[inline]
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        self.pop().ok().map(|payload| read(&payload))
    }
}
impl Push for crossbeam_channel::Sender<Payload> {
    #[inline]
    fn try_push(&mut self, payload: &Payload) -> bool {
        self.try_send(*payload).is_ok()
    }
}
impl Pop for crossbeam_channel::Receiver<Payload> {
    #[inline]
    fn try_pop_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Option<R> {
        self.try_recv().ok().map(|payload| read(&payload))
    }
}

/// Builds a fresh urpc channel of `SLOTS` slots and hands both sides' endpoints to `body`.
fn with_urpc<const SLOTS: usize, R>(
    body: impl FnOnce(urpc::Endpoint<'_, SLOTS>, urpc::Endpoint<'_, SLOTS>) -> R,
) -> R {
    let mut storage = Box::<ChannelRegion<SLOTS>>::new_uninit();
    let region = ChannelRegion::init(&mut storage);
    let a = region.claim(Side::A).expect("side A");
    let b = region.claim(Side::B).expect("side B");
    body(a, b)
}

// ---------------------------------------------------------------------------------------------
// The measurement loops.

/// What a latency measurement yields, in TSC cycles.
struct Latency {
    /// Single round trips, sorted.
    sorted_cycles: Vec<u64>,
    /// Mean round trip of each batch of `BATCH`, sorted.
    sorted_batch_means: Vec<f64>,
}

impl Latency {
    fn percentile(&self, fraction: f64) -> f64 {
        let index = ((self.sorted_cycles.len() - 1) as f64 * fraction).round() as usize;
        self.sorted_cycles[index] as f64
    }

    /// The median batch mean: the RTT figure (not limited by the TSC's granularity).
    fn rtt(&self) -> f64 {
        self.sorted_batch_means[self.sorted_batch_means.len() / 2]
    }
}

/// Runs a ping-pong: `initiator(sequence)` performs one round trip on the initiator CPU,
/// `responder()` answers one request on the responder CPU and returns false when told to stop
/// (request `u64::MAX`).
fn ping_pong<IF, RF>(
    cpus: Cpus,
    initiator: impl FnOnce() -> IF + Send,
    responder: impl FnOnce() -> RF + Send,
) -> Latency
where
    IF: FnMut(u64),
    RF: FnMut() -> bool,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let barrier = &barrier;
        scope.spawn(move || {
            pin(cpus.responder);
            let mut answer = responder();
            barrier.wait();
            while answer() {}
        });
        let measured = scope.spawn(move || {
            pin(cpus.initiator);
            let mut round_trip = initiator();
            barrier.wait();
            for sequence in 0..WARM_UP_ROUND_TRIPS as u64 {
                round_trip(sequence);
            }
            // Alternate single round trips (for percentiles) and batches of BATCH round trips
            // (their mean is not limited by the TSC's granularity, ~20 ns on this VM).
            let mut samples = Vec::with_capacity(ROUND_TRIPS / BATCH);
            let mut batch_means = Vec::with_capacity(ROUND_TRIPS / BATCH);
            let start = Instant::now();
            let mut sequence = WARM_UP_ROUND_TRIPS as u64;
            while samples.len() * (BATCH + 1) < ROUND_TRIPS {
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
                if samples.len() % 256 == 0 && start.elapsed() > LATENCY_TIME_CAP {
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

/// The round trip of any queue pair: the initiator pushes message `s` and waits for it to come
/// back (decoding it); the responder pops a message and pushes the same payload back.
fn round_trips<P: Push, C: Pop>(
    cpus: Cpus,
    (mut to_responder, mut at_initiator): (P, C),
    (mut to_initiator, mut at_responder): (P, C),
) -> Latency {
    ping_pong(
        cpus,
        move || {
            move |sequence| {
                let payload = encode(sequence);
                spin_until("initiator send", || {
                    to_responder.try_push(&payload).then_some(())
                });
                let answer = spin_until("initiator receive", || at_initiator.try_pop_with(decode));
                assert_eq!(answer, sequence);
            }
        },
        move || {
            move || {
                let request = spin_until("responder receive", || {
                    at_responder.try_pop_with(|payload| *payload)
                });
                spin_until("responder send", || {
                    to_initiator.try_push(&request).then_some(())
                });
                decode(&request) != u64::MAX
            }
        },
    )
}

/// The physical floor of a ping-pong: one cache line that both threads write (odd = request,
/// even = answer).
fn raw_one_line(cpus: Cpus) -> Latency {
    #[repr(C, align(64))]
    struct SharedLine(AtomicU64);
    let shared = SharedLine(AtomicU64::new(0));
    let shared = &shared;
    ping_pong(
        cpus,
        move || {
            let mut next = 0u64;
            move |sequence| {
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

/// The floor of any design whose two directions use different lines (urpc, rtrb, any pair of
/// one-way queues): one line per direction, each written by one side only.
fn raw_two_lines(cpus: Cpus) -> Latency {
    #[repr(C, align(64))]
    struct SharedLine(AtomicU64);
    let requests = SharedLine(AtomicU64::new(0));
    let answers = SharedLine(AtomicU64::new(0));
    let (requests, answers) = (&requests, &answers);
    ping_pong(
        cpus,
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

/// One-way throughput of any queue: the producer pushes `encode(s)` for s = 0, 1, ... (spinning
/// while full), then the end marker `u64::MAX`; the consumer pops and decodes every message
/// (spinning while empty) and checks the sequence. `batch` > 1 uses the batch calls of `Push`
/// and `Pop` with at most that many messages per call. Returns messages per second, from the
/// producer's start to the consumer's receipt of the end marker.
fn stream<P: Push, C: Pop>(cpus: Cpus, (mut producer, mut consumer): (P, C), batch: usize) -> f64 {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let barrier = &barrier;
        let consumer = scope.spawn(move || {
            pin(cpus.responder);
            barrier.wait();
            let received = if batch > 1 {
                consume_batches(&mut consumer, batch)
            } else {
                consume(&mut consumer)
            };
            (received, Instant::now())
        });
        let producer = scope.spawn(move || {
            pin(cpus.initiator);
            barrier.wait();
            let start = Instant::now();
            let sent = if batch > 1 {
                produce_batches(&mut producer, batch, start)
            } else {
                produce(&mut producer, start)
            };
            (sent, start)
        });
        let (sent, start) = producer.join().expect("producer panicked");
        let (received, end) = consumer.join().expect("consumer panicked");
        assert_eq!(received, sent);
        received as f64 / end.duration_since(start).as_secs_f64()
    })
}

#[inline(never)]
fn produce<P: Push>(producer: &mut P, start: Instant) -> u64 {
    let mut sent = 0u64;
    while sent < MESSAGES {
        let payload = encode(sent);
        spin_until("producer", || producer.try_push(&payload).then_some(()));
        sent += 1;
        if sent.is_multiple_of(1 << 16) && start.elapsed() > THROUGHPUT_TIME_CAP {
            break;
        }
    }
    let end = encode(u64::MAX);
    spin_until("producer", || producer.try_push(&end).then_some(()));
    sent
}

#[inline(never)]
fn consume<C: Pop>(consumer: &mut C) -> u64 {
    let mut received = 0u64;
    loop {
        let sequence = spin_until("consumer", || consumer.try_pop_with(decode));
        if sequence == u64::MAX {
            return received;
        }
        assert_eq!(sequence, received, "out of order");
        received += 1;
    }
}

#[inline(never)]
fn produce_batches<P: Push>(producer: &mut P, batch: usize, start: Instant) -> u64 {
    let mut sent = 0u64;
    let mut since_check = 0u64;
    while sent < MESSAGES {
        let count = batch.min((MESSAGES - sent) as usize);
        let pushed = spin_until("producer", || {
            let pushed = producer.try_push_encoded(sent, count);
            (pushed > 0).then_some(pushed)
        });
        sent += pushed as u64;
        since_check += pushed as u64;
        if since_check >= 1 << 16 {
            since_check = 0;
            if start.elapsed() > THROUGHPUT_TIME_CAP {
                break;
            }
        }
    }
    let end = encode(u64::MAX);
    spin_until("producer", || producer.try_push(&end).then_some(()));
    sent
}

#[inline(never)]
fn consume_batches<C: Pop>(consumer: &mut C, batch: usize) -> u64 {
    let mut received = 0u64;
    let mut ended = false;
    while !ended {
        spin_until("consumer", || {
            let taken = consumer.try_pop_each(batch, |payload| {
                let sequence = decode(payload);
                if sequence == u64::MAX {
                    ended = true;
                } else {
                    assert!(!ended && sequence == received, "out of order");
                    received += 1;
                }
            });
            (taken > 0).then_some(())
        });
    }
    received
}

// ---------------------------------------------------------------------------------------------
// Rounds and the report.

/// Every measurement of a round, by contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    RawOneLine,
    RawTwoLines,
    UrpcLatency,
    UrpcNotifyLatency,
    RtrbLatency,
    CrossbeamLatency,
    UrpcThroughput,
    RtrbThroughput,
    CrossbeamThroughput,
    UrpcInPlaceThroughput,
    UrpcBatchThroughput,
}

const LATENCY_CONTENDERS: [Contender; 6] = [
    Contender::RawOneLine,
    Contender::RawTwoLines,
    Contender::UrpcLatency,
    Contender::UrpcNotifyLatency,
    Contender::RtrbLatency,
    Contender::CrossbeamLatency,
];
const THROUGHPUT_CONTENDERS: [Contender; 5] = [
    Contender::UrpcThroughput,
    Contender::RtrbThroughput,
    Contender::CrossbeamThroughput,
    Contender::UrpcInPlaceThroughput,
    Contender::UrpcBatchThroughput,
];
/// Messages per call of the batch row.
const BATCH_ROW: usize = 16;

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::RawOneLine => "raw 1 line",
            Contender::RawTwoLines => "raw 2 lines",
            Contender::UrpcLatency | Contender::UrpcThroughput => "urpc",
            Contender::RtrbLatency | Contender::RtrbThroughput => "rtrb",
            Contender::CrossbeamLatency | Contender::CrossbeamThroughput => "crossbeam",
            Contender::UrpcInPlaceThroughput => "urpc in place",
            Contender::UrpcNotifyLatency => "urpc + notify",
            Contender::UrpcBatchThroughput => "urpc batch 16",
        }
    }
}

/// Runs one latency contender.
fn measure_latency(contender: Contender, cpus: Cpus) -> Latency {
    match contender {
        Contender::RawOneLine => raw_one_line(cpus),
        Contender::RawTwoLines => raw_two_lines(cpus),
        Contender::UrpcLatency => with_urpc::<CAPACITY, _>(|a, b| {
            round_trips(
                cpus,
                (UrpcPush(a.sender), UrpcPop(a.receiver)),
                (UrpcPush(b.sender), UrpcPop(b.receiver)),
            )
        }),
        Contender::UrpcNotifyLatency => with_urpc::<CAPACITY, _>(|a, b| {
            round_trips(
                cpus,
                (UrpcPushNotify(a.sender), UrpcPop(a.receiver)),
                (UrpcPushNotify(b.sender), UrpcPop(b.receiver)),
            )
        }),
        Contender::RtrbLatency => {
            let (to_responder, at_responder) = rtrb::RingBuffer::<Payload>::new(CAPACITY);
            let (to_initiator, at_initiator) = rtrb::RingBuffer::<Payload>::new(CAPACITY);
            round_trips(
                cpus,
                (to_responder, at_initiator),
                (to_initiator, at_responder),
            )
        }
        Contender::CrossbeamLatency => {
            let (to_responder, at_responder) = crossbeam_channel::bounded::<Payload>(CAPACITY);
            let (to_initiator, at_initiator) = crossbeam_channel::bounded::<Payload>(CAPACITY);
            round_trips(
                cpus,
                (to_responder, at_initiator),
                (to_initiator, at_responder),
            )
        }
        _ => unreachable!("not a latency contender"),
    }
}

/// Runs one throughput contender; messages per second.
fn measure_throughput(contender: Contender, cpus: Cpus) -> f64 {
    match contender {
        Contender::UrpcThroughput => with_urpc::<CAPACITY, _>(|a, b| {
            stream(cpus, (UrpcPush(a.sender), UrpcPop(b.receiver)), 1)
        }),
        Contender::UrpcInPlaceThroughput => with_urpc::<CAPACITY, _>(|a, b| {
            stream(cpus, (UrpcPush(a.sender), UrpcPopInPlace(b.receiver)), 1)
        }),
        Contender::UrpcBatchThroughput => with_urpc::<CAPACITY, _>(|a, b| {
            stream(
                cpus,
                (UrpcPushBatch(a.sender), UrpcPopBatch(b.receiver)),
                BATCH_ROW,
            )
        }),
        Contender::RtrbThroughput => stream(cpus, rtrb::RingBuffer::<Payload>::new(CAPACITY), 1),
        Contender::CrossbeamThroughput => {
            stream(cpus, crossbeam_channel::bounded::<Payload>(CAPACITY), 1)
        }
        _ => unreachable!("not a throughput contender"),
    }
}

/// One latency contender's figures in one round (cycles).
#[derive(Clone, Copy, Default)]
struct LatencyFigures {
    rtt: f64,
    p50: f64,
    p99: f64,
}

/// Sorted copy of `values`.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values
}

fn median(values: &[f64]) -> f64 {
    let values = sorted(values);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// "min / median / max" of `values` with `decimals` decimals.
fn spread(values: &[f64], decimals: usize) -> String {
    let values = sorted(values);
    format!(
        "{:.*} / {:.*} / {:.*}",
        decimals,
        values[0],
        decimals,
        median(&values),
        decimals,
        values[values.len() - 1]
    )
}

/// `contenders` rotated left by `round` (each round starts with another contender).
fn rotated<const N: usize>(contenders: [Contender; N], round: usize) -> [Contender; N] {
    let mut order = contenders;
    order.rotate_left(round % N);
    order
}

/// Prints a target ratio's per-round spread and whether its median meets the target.
fn report_target(what: &str, ratios: &[f64], target: f64, at_most: bool) {
    let meets = |ratio: f64| {
        if at_most {
            ratio <= target
        } else {
            ratio >= target
        }
    };
    let met_rounds = ratios.iter().filter(|&&ratio| meets(ratio)).count();
    let (relation, verdict) = (
        if at_most { "<=" } else { ">=" },
        if meets(median(ratios)) {
            "MET"
        } else {
            "NOT MET"
        },
    );
    println!(
        "{what:<44} min / median / max over rounds = {}   target {relation} {target:.2}: {verdict} \
         (median; {met_rounds} of {} rounds meet it)",
        spread(ratios, 3),
        ratios.len()
    );
}

/// `--ring-sizes`: urpc round trip and throughput for several ring sizes, beside the floors.
fn ring_sizes(cpus: Cpus, rounds: usize) {
    fn urpc_pair<const SLOTS: usize>(cpus: Cpus) -> (f64, f64) {
        let rtt = with_urpc::<SLOTS, _>(|a, b| {
            round_trips(
                cpus,
                (UrpcPush(a.sender), UrpcPop(a.receiver)),
                (UrpcPush(b.sender), UrpcPop(b.receiver)),
            )
            .rtt()
        });
        let throughput = with_urpc::<SLOTS, _>(|a, b| {
            stream(cpus, (UrpcPush(a.sender), UrpcPop(b.receiver)), 1)
        });
        (rtt, throughput)
    }
    println!("ring sizes: urpc rtt (cycles) and throughput (M msg/s) per slot count");
    for round in 0..rounds {
        let raw = raw_one_line(cpus).rtt();
        let raw2 = raw_two_lines(cpus).rtt();
        let rtrb = stream(cpus, rtrb::RingBuffer::<Payload>::new(CAPACITY), 1);
        let sizes = [
            (2, urpc_pair::<2>(cpus)),
            (4, urpc_pair::<4>(cpus)),
            (8, urpc_pair::<8>(cpus)),
            (16, urpc_pair::<16>(cpus)),
            (64, urpc_pair::<64>(cpus)),
            (256, urpc_pair::<256>(cpus)),
        ];
        print!(
            "round {round}: raw 1 line {raw:.0}, raw 2 lines {raw2:.0}, rtrb({CAPACITY}) {:.1} M/s;",
            rtrb / 1e6
        );
        for (slots, (rtt, throughput)) in sizes {
            print!(" {slots}: {rtt:.0} cyc {:.1} M/s;", throughput / 1e6);
        }
        println!();
    }
}

fn main() {
    // Read the CPU list before any thread pins itself (see the module documentation).
    let cpu_list = core_affinity::get_core_ids().unwrap_or_default();
    if cpu_list.len() < 2 {
        eprintln!(
            "urpc-bench: needs 2 CPUs, found {} in this process's affinity mask",
            cpu_list.len()
        );
        std::process::exit(1);
    }
    let cpus = Cpus {
        initiator: cpu_list[0],
        responder: cpu_list[1],
    };
    let mut rounds = 11usize;
    let mut arguments = std::env::args().skip(1);
    let mut sizes = false;
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--rounds" => {
                rounds = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(rounds)
                    .clamp(1, 100)
            }
            "--pause" => PAUSE.store(true, Ordering::Relaxed),
            "--ring-sizes" => sizes = true,
            // Other arguments (cargo bench passes `--bench`) are ignored.
            _ => {}
        }
    }
    let load_before = load_average();
    let tsc_per_ns = tsc_per_ns();
    println!(
        "urpc-bench: CPUs {} and {} (of {} listed); {rounds} rounds; {CAPACITY}-slot queues; \
         {PAYLOAD_SIZE}-byte payloads for every queue; TSC {tsc_per_ns:.3} GHz; {}; \
         load average {load_before}",
        cpus.initiator.id,
        cpus.responder.id,
        cpu_list.len(),
        if PAUSE.load(Ordering::Relaxed) {
            "pause in wait loops"
        } else {
            "tight polling"
        }
    );
    if sizes {
        ring_sizes(cpus, rounds);
        return;
    }
    let started = Instant::now();
    let mut latency: Vec<Vec<(Contender, LatencyFigures)>> = Vec::new();
    let mut throughput: Vec<Vec<(Contender, f64)>> = Vec::new();
    for round in 0..rounds {
        let mut latencies = Vec::new();
        for contender in rotated(LATENCY_CONTENDERS, round) {
            let measured = measure_latency(contender, cpus);
            latencies.push((
                contender,
                LatencyFigures {
                    rtt: measured.rtt(),
                    p50: measured.percentile(0.50),
                    p99: measured.percentile(0.99),
                },
            ));
        }
        let mut rates = Vec::new();
        for contender in rotated(THROUGHPUT_CONTENDERS, round) {
            rates.push((contender, measure_throughput(contender, cpus)));
        }
        let rtt_of = |wanted: Contender| {
            latencies
                .iter()
                .find(|(contender, _)| *contender == wanted)
                .expect("measured")
                .1
                .rtt
        };
        let rate_of = |wanted: Contender| {
            rates
                .iter()
                .find(|(contender, _)| *contender == wanted)
                .expect("measured")
                .1
        };
        print!("round {round:>2}: rtt cyc");
        for contender in LATENCY_CONTENDERS {
            print!(" {} {:.0};", contender.name(), rtt_of(contender));
        }
        print!("  M msg/s");
        for contender in THROUGHPUT_CONTENDERS {
            print!(" {} {:.1};", contender.name(), rate_of(contender) / 1e6);
        }
        println!(
            "  urpc/raw2 rtt {:.3}, urpc/rtrb tput {:.3}",
            rtt_of(Contender::UrpcLatency) / rtt_of(Contender::RawTwoLines),
            rate_of(Contender::UrpcThroughput) / rate_of(Contender::RtrbThroughput)
        );
        latency.push(latencies);
        throughput.push(rates);
    }

    let latency_column = |wanted: Contender, pick: fn(&LatencyFigures) -> f64| -> Vec<f64> {
        latency
            .iter()
            .map(|round| {
                pick(
                    &round
                        .iter()
                        .find(|(contender, _)| *contender == wanted)
                        .expect("measured")
                        .1,
                )
            })
            .collect()
    };
    let rate_column = |wanted: Contender| -> Vec<f64> {
        throughput
            .iter()
            .map(|round| {
                round
                    .iter()
                    .find(|(contender, _)| *contender == wanted)
                    .expect("measured")
                    .1
                    / 1e6
            })
            .collect()
    };
    println!();
    println!("round trip, cycles, min / median / max over {rounds} rounds (rtt = median of the means of {BATCH}-round-trip batches; p50/p99 of single round trips, TSC-quantised):");
    for contender in LATENCY_CONTENDERS {
        let rtt = latency_column(contender, |figures| figures.rtt);
        println!(
            "  {:<14} rtt {:<24} = {:>6.1} ns median   p50 {:>6.0}   p99 {:>6.0}",
            contender.name(),
            spread(&rtt, 0),
            median(&rtt) / tsc_per_ns,
            median(&latency_column(contender, |figures| figures.p50)),
            median(&latency_column(contender, |figures| figures.p99)),
        );
    }
    println!("one-way throughput, M messages/s, min / median / max over {rounds} rounds:");
    for contender in THROUGHPUT_CONTENDERS {
        println!(
            "  {:<14} {}",
            contender.name(),
            spread(&rate_column(contender), 1)
        );
    }
    let per_round = |numerator: &[f64], denominator: &[f64]| -> Vec<f64> {
        numerator
            .iter()
            .zip(denominator)
            .map(|(top, bottom)| top / bottom)
            .collect()
    };
    let urpc_rtt = latency_column(Contender::UrpcLatency, |figures| figures.rtt);
    let raw2_rtt = latency_column(Contender::RawTwoLines, |figures| figures.rtt);
    let raw1_rtt = latency_column(Contender::RawOneLine, |figures| figures.rtt);
    let urpc_rate = rate_column(Contender::UrpcThroughput);
    let rtrb_rate = rate_column(Contender::RtrbThroughput);
    println!();
    println!("per-round ratios (each from one round's own measurements):");
    report_target(
        "urpc RTT / raw 2 lines RTT",
        &per_round(&urpc_rtt, &raw2_rtt),
        RTT_TARGET,
        true,
    );
    report_target(
        "urpc throughput / rtrb throughput",
        &per_round(&urpc_rate, &rtrb_rate),
        THROUGHPUT_TARGET,
        false,
    );
    println!(
        "  (no target) urpc RTT / raw 1 line RTT      {}",
        spread(&per_round(&urpc_rtt, &raw1_rtt), 3)
    );
    println!(
        "  (no target) urpc + notify RTT / raw 2 lines {}",
        spread(
            &per_round(
                &latency_column(Contender::UrpcNotifyLatency, |figures| figures.rtt),
                &raw2_rtt
            ),
            3
        )
    );
    println!(
        "  (no target) urpc in place / rtrb          {}",
        spread(
            &per_round(&rate_column(Contender::UrpcInPlaceThroughput), &rtrb_rate),
            3
        )
    );
    println!(
        "  (no target) urpc batch {BATCH_ROW} / rtrb           {}",
        spread(
            &per_round(&rate_column(Contender::UrpcBatchThroughput), &rtrb_rate),
            3
        )
    );
    println!(
        "total time {:.1} s; load average before {load_before}, after {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}
