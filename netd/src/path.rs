//! Scout paths: the unit of scheduling and accounting, with a bounded LRP queue at the input.
//!
//! A path carries the frames of one [`PathKey`] from the classifier to its application. Its
//! input queue is where backlog lives (Lazy Receiver Processing): it is bounded, and a frame for
//! a full queue is dropped by the classifier before any checksum or protocol work is spent on it.
//! Protocol processing happens only when the path runs, and everything done for the path —
//! its share of receiving and classifying, protocol and application work, transmit — is charged
//! to its [`PathCounters`]. How a path processes its frames is its [`PathRunner`] (one per path
//! kind, in `runner/`); when it runs is the scheduler's business (`schedule.rs`).

use crate::classify::PathKey;
use crate::runner::PathRunner;
use crate::schedule::PathSchedule;
use drivers::pool::BufferId;
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;

/// Capacity of a path's input queue (the limit in use may be lower, see [`LrpQueue::set_limit`]).
pub const PATH_QUEUE_CAPACITY: usize = 256;

/// The default admission limit of a path's input queue.
pub const PATH_QUEUE_LIMIT: usize = 128;

/// A caller-supplied cycle counter (TSC on the kernel; a simulated clock in host tests).
pub type CycleCounter = fn() -> u64;

/// A frame waiting on a path, still in its pool buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedFrame {
    /// The buffer holding the frame.
    pub buffer: BufferId,
    /// Frame length in bytes.
    pub length: u16,
    /// Another core forwarded it here (it is never forwarded again).
    pub forwarded: bool,
}

/// A bounded FIFO with tail drop.
pub struct LrpQueue {
    frames: heapless::Deque<QueuedFrame, PATH_QUEUE_CAPACITY>,
    limit: usize,
}

impl LrpQueue {
    /// An empty queue admitting up to `limit` frames (clamped to the capacity).
    pub fn new(limit: usize) -> Self {
        Self {
            frames: heapless::Deque::new(),
            limit: limit.clamp(1, PATH_QUEUE_CAPACITY),
        }
    }

    /// Changes the admission limit (clamped to 1..=capacity). Frames already queued stay.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, PATH_QUEUE_CAPACITY);
    }

    /// Appends a frame, or gives it back when the queue is at its limit (tail drop).
    pub fn push(&mut self, frame: QueuedFrame) -> Result<(), QueuedFrame> {
        if self.is_full() {
            return Err(frame);
        }
        self.frames.push_back(frame)
    }

    /// Takes the oldest frame.
    pub fn pop(&mut self) -> Option<QueuedFrame> {
        self.frames.pop_front()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether the queue is at its admission limit (a new frame would be dropped).
    pub fn is_full(&self) -> bool {
        self.frames.len() >= self.limit
    }

    /// Whether the queue is behind: filled to three quarters of its limit or more.
    pub fn is_behind(&self) -> bool {
        self.frames.len() >= self.limit - self.limit / 4
    }
}

/// What a path has used and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Frames processed on this path.
    pub packets: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames dropped at classification because the path's queue was full (LRP: before checksum
    /// and protocol work).
    pub queue_drops: u64,
    /// Frames dropped after protocol work because the application's socket was full (only the
    /// `netd.mode=interrupt` baseline does protocol work before the application is ready).
    pub socket_drops: u64,
    /// Frames that arrived forwarded by another core.
    pub forwarded_in: u64,
    /// Frames this path transmitted.
    pub tx_packets: u64,
    /// Bytes this path transmitted.
    pub tx_bytes: u64,
    /// Frames this path produced that were dropped (no buffer or TX queue full).
    pub tx_drops: u64,
    /// Every cycle charged to the path: `cycles_receive + cycles_run + cycles_transmit`.
    pub cycles: u64,
    /// Cycles of receiving its frames: the path's share (by bytes) of taking each RX batch from
    /// the ring and classifying it, checksums included, and of refilling the ring.
    pub cycles_receive: u64,
    /// Cycles of its runs: protocol processing (smoltcp or the fast path) and the application,
    /// and peer messages handled for it.
    pub cycles_run: u64,
    /// Cycles of handing its frames to the TX ring and reclaiming them, its share by bytes.
    pub cycles_transmit: u64,
    /// Times the path ran.
    pub runs: u64,
    /// Turns in which the path had frames waiting but did not get to run them all (its credit
    /// or the turn's budget ran out).
    pub turns_deferred: u64,
    /// The most frames its queue held.
    pub queue_high_water: u64,
    /// Cross-core messages handled on this path.
    pub peer_messages: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

impl PathCounters {
    /// All zero.
    pub const ZERO: Self = Self {
        packets: 0,
        bytes: 0,
        queue_drops: 0,
        socket_drops: 0,
        forwarded_in: 0,
        tx_packets: 0,
        tx_bytes: 0,
        tx_drops: 0,
        cycles: 0,
        cycles_receive: 0,
        cycles_run: 0,
        cycles_transmit: 0,
        runs: 0,
        turns_deferred: 0,
        queue_high_water: 0,
        peer_messages: 0,
        connections: 0,
    };
}

/// A path: key, input queue, counters, its runner (protocol and application) and its
/// scheduling state.
pub struct Path {
    pub(crate) key: PathKey,
    pub(crate) queue: LrpQueue,
    pub(crate) counters: PathCounters,
    pub(crate) runner: Box<dyn PathRunner>,
    pub(crate) schedule: PathSchedule,
    /// The path must run even with an empty queue (peer message, application asked).
    pub(crate) wake: bool,
    /// The path's next timer: the earlier of the runner's (smoltcp retransmission, delayed
    /// ACK, ...) and the application's `app_deadline`.
    pub(crate) deadline: Option<Instant>,
    /// When the application asked to run again without frames (`AppContext::wake_at`: set by
    /// its last service run, moved earlier by peer messages in between).
    pub(crate) app_deadline: Option<Instant>,
    /// TCP connections open after the path's last run.
    pub(crate) open_connections: usize,
    /// The last turn a frame for the path was received (0: never).
    pub(crate) last_admitted: u64,
    /// What the path's TCP runs noticed (refusals, timeouts, strays), for `/stats`.
    pub(crate) tcp_events: crate::runner::tcp::TcpEvents,
}

impl Path {
    pub(crate) fn new(key: PathKey, runner: Box<dyn PathRunner>, quantum: u64) -> Self {
        Self {
            key,
            queue: LrpQueue::new(PATH_QUEUE_LIMIT),
            counters: PathCounters::default(),
            runner,
            schedule: PathSchedule::new(quantum),
            wake: false,
            deadline: None,
            app_deadline: None,
            open_connections: 0,
            last_admitted: 0,
            tcp_events: Default::default(),
        }
    }

    /// The path's key.
    pub fn key(&self) -> PathKey {
        self.key
    }

    /// The path's counters.
    pub fn counters(&self) -> &PathCounters {
        &self.counters
    }

    /// Frames waiting in the input queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// TCP connections open (after the path's last run).
    pub fn open_connections(&self) -> usize {
        self.open_connections
    }

    /// A TCP path's counters: its connection table now and what its runs noticed (`None` for
    /// other kinds).
    pub fn tcp(&self) -> Option<crate::runner::tcp::TcpCounters> {
        self.runner
            .tcp_gauges()
            .map(|gauges| gauges.with_events(&self.tcp_events))
    }

    /// The application's name (`None` for ARP and ICMP).
    pub fn application(&self) -> Option<&'static str> {
        self.runner.application()
    }

    /// Changes the input queue's admission limit.
    pub fn set_queue_limit(&mut self, limit: usize) {
        self.queue.set_limit(limit);
    }

    /// Whether the path has work for a turn: frames queued, a wake-up, or a timer due at `now`.
    pub(crate) fn has_work(&self, now: Instant) -> bool {
        !self.queue.is_empty() || self.wake || self.deadline.is_some_and(|due| due <= now)
    }

    /// Adds `cycles` of `stage` to the path's counters.
    pub(crate) fn charge(&mut self, stage: Stage, cycles: u64) {
        self.counters.cycles += cycles;
        match stage {
            Stage::Receive => self.counters.cycles_receive += cycles,
            Stage::Run => self.counters.cycles_run += cycles,
            Stage::Transmit => self.counters.cycles_transmit += cycles,
        }
    }
}

/// Where cycles charged to a path were spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Taking frames from the RX ring, classifying them (checksums included), queueing, refill.
    Receive,
    /// Protocol processing and the application.
    Run,
    /// Handing frames to the TX ring and reclaiming them.
    Transmit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrp_queue_tail_drops_at_its_limit() {
        let mut queue = LrpQueue::new(2);
        let frame = |n| QueuedFrame {
            buffer: BufferId(n),
            length: 60,
            forwarded: false,
        };
        assert!(queue.push(frame(1)).is_ok());
        assert!(!queue.is_full());
        assert!(queue.push(frame(2)).is_ok());
        assert!(queue.is_full());
        assert_eq!(queue.push(frame(3)), Err(frame(3)));
        assert_eq!(queue.pop(), Some(frame(1)));
        assert!(queue.push(frame(4)).is_ok());
        assert_eq!(queue.pop(), Some(frame(2)));
        assert_eq!(queue.pop(), Some(frame(4)));
        assert!(queue.is_empty());
        queue.set_limit(100_000);
        for n in 0..PATH_QUEUE_CAPACITY as u32 {
            assert!(queue.push(frame(n)).is_ok());
        }
        assert!(queue.push(frame(0)).is_err());
    }
}
