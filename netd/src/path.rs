//! Scout paths: the unit of scheduling and accounting, with a bounded LRP queue at the input.
//!
//! A path carries the frames of one [`PathKey`] from the classifier to its application. Its
//! input queue is bounded and tail-drops (Lazy Receiver Processing: when the application is
//! behind, the frame is dropped before any protocol work is spent on it). Everything done for the
//! path, smoltcp processing included, is charged to its [`PathCounters`].

use crate::app::Application;
use crate::classify::PathKey;
use drivers::pool::BufferId;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::time::Instant;

extern crate alloc;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Capacity of a path's input queue (the limit in use may be lower, see [`LrpQueue::set_limit`]).
pub const PATH_QUEUE_CAPACITY: usize = 256;

/// A caller-supplied cycle counter (TSC on the kernel; a deterministic counter in host tests).
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
        if self.frames.len() >= self.limit {
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
}

/// What a path has used and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Frames processed on this path.
    pub packets: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames tail-dropped at the input queue (application behind).
    pub queue_drops: u64,
    /// Frames that arrived forwarded by another core.
    pub forwarded_in: u64,
    /// Frames this path transmitted.
    pub tx_packets: u64,
    /// Bytes this path transmitted.
    pub tx_bytes: u64,
    /// Frames this path produced that were dropped (no buffer or TX queue full).
    pub tx_drops: u64,
    /// Cycles spent running the path (smoltcp and application).
    pub cycles: u64,
    /// Times the path ran.
    pub runs: u64,
    /// Cross-core messages handled on this path.
    pub peer_messages: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

/// How a TCP path keeps listening sockets available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Listening sockets kept armed (a burst this large is never refused).
    pub backlog: usize,
    /// Most sockets (listening and connected) the path may hold.
    pub max_sockets: usize,
    /// Receive buffer per socket, bytes.
    pub receive_buffer: usize,
    /// Send buffer per socket, bytes.
    pub send_buffer: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            backlog: 8,
            max_sockets: 64,
            receive_buffer: 8192,
            send_buffer: 16384,
        }
    }
}

/// One TCP socket of a path and what the path knows of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TcpSlot {
    pub(crate) handle: SocketHandle,
    /// The socket left `Listen` and the application was told (`on_open`).
    pub(crate) active: bool,
}

/// A path: key, input queue, counters, its own smoltcp sockets and its application.
pub struct Path {
    pub(crate) key: PathKey,
    pub(crate) queue: LrpQueue,
    pub(crate) counters: PathCounters,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) app: Option<Box<dyn Application>>,
    pub(crate) udp: Option<SocketHandle>,
    pub(crate) tcp: Vec<TcpSlot>,
    pub(crate) listener: ListenerConfig,
    /// The path must run even with an empty queue (peer message, application asked).
    pub(crate) wake: bool,
    /// smoltcp's next timer for this path's sockets.
    pub(crate) deadline: Option<Instant>,
}

impl Path {
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

    /// TCP connections open now (sockets not listening and not closed).
    pub fn open_connections(&self) -> usize {
        self.tcp.iter().filter(|slot| slot.active).count()
    }

    /// TCP sockets listening now.
    pub fn listening(&self) -> usize {
        self.tcp
            .iter()
            .filter(|slot| {
                self.sockets
                    .get::<smoltcp::socket::tcp::Socket>(slot.handle)
                    .state()
                    == smoltcp::socket::tcp::State::Listen
            })
            .count()
    }

    /// Changes the input queue's admission limit.
    pub fn set_queue_limit(&mut self, limit: usize) {
        self.queue.set_limit(limit);
    }
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
        assert!(queue.push(frame(2)).is_ok());
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
