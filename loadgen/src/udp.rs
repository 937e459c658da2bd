//! The UDP engine: many flows (one connected socket per source port), one thread per host core,
//! the requests due on a flow sent with one call (echo payloads, all of one size, as one UDP GSO
//! message the kernel cuts into datagrams; memcached requests with `sendmmsg`), replies read
//! with `recvmmsg`, paced open loop by a
//! [`Schedule`](crate::rate::Schedule) or closed loop by a window of outstanding requests.
//!
//! Open loop: each thread offers `rate / threads` requests per second (Poisson or constant),
//! whatever the server does; a send the socket refuses (full buffer) is counted, never retried.
//! Every request carries its send time (echo payloads in the payload; memcached requests by
//! their frame's request id, which indexes a per-flow table of send times), and each reply's
//! round trip goes into the thread's histogram. Replies that come within `drain` after the end
//! still count.

use crate::histogram::LatencyHistogram;
use crate::protocol::{self, MemcachedMix, ReplyKind};
use crate::rate::{Arrivals, Schedule, SplitMix64};
use crate::sys::{self, ReceiveBuffers, MAX_BATCH};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Open loop: `rate` requests per second in total, spaced by `arrivals`.
    Open {
        /// Requests per second over all threads and flows.
        rate: f64,
        /// Constant or Poisson spacing.
        arrivals: Arrivals,
    },
    /// Closed loop: `window` requests outstanding on every flow; a flow that hears nothing for
    /// `timeout` counts its window as lost and refills it.
    Closed {
        /// Requests outstanding per flow.
        window: u32,
        /// How long a flow waits for a reply before refilling.
        timeout: Duration,
    },
}

/// What each request is.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// A UDP echo payload of `bytes` bytes (at least the 24-byte header).
    Echo {
        /// Payload bytes.
        bytes: usize,
    },
    /// A memcached text-protocol request over UDP (8-byte frame header).
    Memcached(MemcachedMix),
}

/// One UDP load run.
#[derive(Clone, Debug)]
pub struct UdpLoad {
    /// The local address the flows are bound to.
    pub source: Ipv4Addr,
    /// Where requests go.
    pub target: SocketAddrV4,
    /// The flows' source ports (see [`crate::flows::spread_ports`]); 0 lets the kernel pick.
    pub ports: Vec<u16>,
    /// Pacing.
    pub pace: Pace,
    /// The request.
    pub request: Request,
    /// How long requests are sent.
    pub duration: Duration,
    /// How long replies are still read after the last request.
    pub drain: Duration,
    /// Sender threads (flows are dealt out among them); 0 means one per host core.
    pub threads: usize,
    /// The network namespace (`/run/netns/NAME`) the threads join before opening sockets.
    pub netns: Option<PathBuf>,
    /// Seed of the Poisson arrivals and the key choice.
    pub seed: u64,
}

impl UdpLoad {
    /// Open-loop echo load of `rate` requests per second for `duration`, 64-byte payloads,
    /// Poisson arrivals, one thread per host core.
    pub fn echo(
        source: Ipv4Addr,
        target: SocketAddrV4,
        ports: Vec<u16>,
        rate: f64,
        duration: Duration,
    ) -> Self {
        Self {
            source,
            target,
            ports,
            pace: Pace::Open {
                rate,
                arrivals: Arrivals::Poisson,
            },
            request: Request::Echo { bytes: 64 },
            duration,
            drain: Duration::from_millis(200),
            threads: 0,
            netns: None,
            seed: 1,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests the kernel accepted.
    pub sent: u64,
    /// Requests the socket refused (buffer full, no route): offered but never on the wire.
    pub send_failures: u64,
    /// Replies received (ours, well formed).
    pub received: u64,
    /// Datagrams received that were not replies to our requests.
    pub foreign: u64,
    /// Closed loop: windows refilled after a timeout.
    pub stalls: u64,
    /// memcached: gets that hit, gets that missed, stored sets, error replies.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// See `hits`.
    pub stored: u64,
    /// See `hits`.
    pub errors: u64,
    /// The sending window.
    pub elapsed: Duration,
    /// How far behind its schedule the slowest sender was at the end (requests due but not
    /// yet sent, as time): more than a few milliseconds means the generator, not the server,
    /// limited the offered load.
    pub max_lag: Duration,
    /// Round-trip times.
    pub latency: LatencyHistogram,
    /// Replies per flow, in the order of `UdpLoad::ports`.
    pub per_flow: Vec<u64>,
}

impl Outcome {
    /// Requests offered per second (accepted by the kernel).
    pub fn offered_per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Replies per second.
    pub fn received_per_second(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Fraction of sent requests that got no reply.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - (self.received as f64 / self.sent as f64).min(1.0)
    }

    pub(crate) fn merge(&mut self, other: Outcome) {
        self.sent += other.sent;
        self.send_failures += other.send_failures;
        self.received += other.received;
        self.foreign += other.foreign;
        self.stalls += other.stalls;
        self.hits += other.hits;
        self.misses += other.misses;
        self.stored += other.stored;
        self.errors += other.errors;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.max_lag = self.max_lag.max(other.max_lag);
        self.latency.merge(&other.latency);
    }
}

/// Why a run failed.
#[derive(Debug)]
pub enum LoadError {
    /// Joining the network namespace failed.
    Namespace(PathBuf, io::Error),
    /// A socket could not be made, bound or connected.
    Socket(String, io::Error),
    /// A sender thread panicked.
    ThreadPanicked,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Namespace(path, e) => {
                write!(f, "joining network namespace {}: {e}", path.display())
            }
            Self::Socket(what, e) => write!(f, "{what}: {e}"),
            Self::ThreadPanicked => write!(f, "a load generator thread panicked"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Nanoseconds since the first call in this process (the clock every timestamp uses).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A non-blocking UDP socket bound to `source:port` and connected to `target`, with large
/// buffers.
pub fn flow_socket(
    source: Ipv4Addr,
    port: u16,
    target: SocketAddrV4,
) -> Result<UdpSocket, LoadError> {
    let what = |action: &str| format!("{action} UDP {source}:{port} -> {target}");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| LoadError::Socket(what("creating"), e))?;
    let _ = socket.set_reuse_address(true);
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(source, port)).into())
        .map_err(|e| LoadError::Socket(what("binding"), e))?;
    socket
        .connect(&SocketAddr::V4(target).into())
        .map_err(|e| LoadError::Socket(what("connecting"), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| LoadError::Socket(what("non-blocking"), e))?;
    Ok(socket.into())
}

/// Runs `load` and returns what it measured.
pub fn run(load: &UdpLoad) -> Result<Outcome, LoadError> {
    let threads = if load.threads == 0 {
        sys::host_cpus()
    } else {
        load.threads
    }
    .clamp(1, load.ports.len().max(1));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let start = Arc::new(OnceLock::<Instant>::new());
    let mut workers = Vec::new();
    for thread in 0..threads {
        let flows: Vec<(usize, u16)> = load
            .ports
            .iter()
            .copied()
            .enumerate()
            .filter(|(index, _)| index % threads == thread)
            .collect();
        let load = load.clone();
        let barrier = Arc::clone(&barrier);
        let start = Arc::clone(&start);
        workers.push(std::thread::spawn(move || {
            let prepared = prepare(&load, &flows);
            barrier.wait();
            let sockets = prepared?;
            barrier.wait();
            let start = *start
                .get()
                .expect("the start is set before the second barrier");
            Ok::<_, LoadError>(sender(&load, thread, threads, &flows, &sockets, start))
        }));
    }
    barrier.wait();
    // Every thread has its sockets (or failed): start together a moment from now.
    let _ = start.set(Instant::now() + Duration::from_millis(5));
    barrier.wait();
    let mut outcome = Outcome {
        per_flow: vec![0; load.ports.len()],
        ..Outcome::default()
    };
    let mut first_error = None;
    for worker in workers {
        match worker.join() {
            Ok(Ok((part, per_flow))) => {
                for (index, count) in per_flow {
                    outcome.per_flow[index] += count;
                }
                outcome.merge(part);
            }
            Ok(Err(error)) => first_error = first_error.or(Some(error)),
            Err(_) => first_error = first_error.or(Some(LoadError::ThreadPanicked)),
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(outcome),
    }
}

fn prepare(load: &UdpLoad, flows: &[(usize, u16)]) -> Result<Vec<UdpSocket>, LoadError> {
    if let Some(path) = &load.netns {
        sys::join_network_namespace(path).map_err(|e| LoadError::Namespace(path.clone(), e))?;
    }
    let sockets: Vec<UdpSocket> = flows
        .iter()
        .map(|(_, port)| flow_socket(load.source, *port, load.target))
        .collect::<Result<_, _>>()?;
    if let Request::Echo { bytes } = load.request {
        for socket in &sockets {
            sys::enable_udp_segmentation(socket.as_raw_fd(), bytes.max(protocol::ECHO_HEADER))
                .map_err(|e| LoadError::Socket("UDP_SEGMENT (Linux 4.18+)".into(), e))?;
        }
    }
    Ok(sockets)
}

/// Per-flow sending state.
struct Flow {
    /// Requests outstanding (closed loop).
    in_flight: u32,
    /// When the flow last heard a reply or refilled (closed loop).
    last_progress: Instant,
    /// Next sequence number / memcached request id.
    sequence: u64,
    /// memcached: send time of each request id.
    sent_at: Vec<u64>,
    /// Replies received.
    received: u64,
}

fn sender(
    load: &UdpLoad,
    thread: usize,
    threads: usize,
    flows: &[(usize, u16)],
    sockets: &[UdpSocket],
    start: Instant,
) -> (Outcome, Vec<(usize, u64)>) {
    let mut outcome = Outcome::default();
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let memcached = matches!(load.request, Request::Memcached(_));
    let mut state: Vec<Flow> = flows
        .iter()
        .map(|(index, _)| Flow {
            in_flight: 0,
            last_progress: start,
            sequence: (*index as u64) << 40,
            sent_at: if memcached {
                vec![0; 1 << 16]
            } else {
                Vec::new()
            },
            received: 0,
        })
        .collect();
    let mut schedule = match load.pace {
        Pace::Open { rate, arrivals } => Some(Schedule::new(
            rate / threads as f64,
            arrivals,
            load.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(thread as u64),
        )),
        Pace::Closed { .. } => None,
    };
    let mut random = SplitMix64::new(load.seed ^ ((thread as u64) << 32));
    let slot = match &load.request {
        Request::Echo { bytes } => (*bytes).max(protocol::ECHO_HEADER),
        Request::Memcached(mix) => 64 + mix.value_bytes,
    };
    let mut arena: Vec<Vec<u8>> = (0..MAX_BATCH).map(|_| Vec::with_capacity(slot)).collect();
    let mut buffers = ReceiveBuffers::new(2048);
    let fds: Vec<(i32, bool)> = sockets.iter().map(|s| (s.as_raw_fd(), false)).collect();
    let mut ready = Vec::new();
    let end = start + load.duration;
    let drain_end = end + load.drain;
    let mut cursor = 0usize;
    let mut per_flow_due = vec![0usize; flows.len()];
    loop {
        let now = Instant::now();
        if now >= drain_end {
            break;
        }
        let sending = now < end;
        let mut sent_any = false;
        if sending && !flows.is_empty() {
            // How many requests each flow sends now.
            match (&mut schedule, load.pace) {
                (Some(schedule), _) => {
                    let elapsed = now - start;
                    let due = schedule.due(elapsed, MAX_BATCH * flows.len());
                    for _ in 0..due {
                        per_flow_due[cursor] += 1;
                        cursor = (cursor + 1) % flows.len();
                    }
                }
                (None, Pace::Closed { window, timeout }) => {
                    for (index, flow) in state.iter_mut().enumerate() {
                        if flow.in_flight > 0 && now - flow.last_progress > timeout {
                            outcome.stalls += 1;
                            flow.in_flight = 0;
                        }
                        let room = window.saturating_sub(flow.in_flight) as usize;
                        per_flow_due[index] = room.min(MAX_BATCH);
                        if room > 0 && flow.in_flight == 0 {
                            flow.last_progress = now;
                        }
                    }
                }
                (None, Pace::Open { .. }) => unreachable!("an open pace has a schedule"),
            }
            for (index, socket) in sockets.iter().enumerate() {
                let count = std::mem::take(&mut per_flow_due[index]);
                if count == 0 {
                    continue;
                }
                let flow = &mut state[index];
                let stamp = now_ns();
                let sent = match &load.request {
                    Request::Echo { .. } => {
                        // Equal-sized datagrams: one message, cut by UDP GSO.
                        let message = &mut arena[0];
                        message.clear();
                        message.resize(slot * count, 0);
                        for chunk in message.chunks_mut(slot) {
                            flow.sequence += 1;
                            protocol::write_echo(
                                chunk,
                                flows[index].0 as u32,
                                flow.sequence,
                                stamp,
                            );
                        }
                        match sys::send_batch(socket.as_raw_fd(), &[message.as_slice()]) {
                            Ok(1) => count,
                            _ => 0,
                        }
                    }
                    Request::Memcached(mix) => {
                        for message in arena.iter_mut().take(count) {
                            message.clear();
                            flow.sequence += 1;
                            let id = flow.sequence as u16;
                            flow.sent_at[usize::from(id)] = stamp;
                            protocol::write_udp_frame_header(message, id);
                            mix.write_request(&mut random, message);
                        }
                        let batch: Vec<&[u8]> = arena[..count].iter().map(Vec::as_slice).collect();
                        sys::send_batch(socket.as_raw_fd(), &batch).unwrap_or(0)
                    }
                };
                outcome.sent += sent as u64;
                outcome.send_failures += (count - sent) as u64;
                flow.in_flight += sent as u32;
                sent_any |= sent > 0;
            }
        }
        // Wait for replies (or the next due request), then read every readable socket.
        let timeout = if sent_any {
            Duration::ZERO
        } else if !sending {
            (drain_end - now).min(Duration::from_millis(1))
        } else {
            match &schedule {
                Some(schedule) => schedule
                    .until_next(now - start)
                    .min(Duration::from_millis(1)),
                None => Duration::from_millis(1),
            }
        };
        if sys::wait_ready(&fds, &mut ready, timeout).unwrap_or(0) == 0 {
            continue;
        }
        for (index, socket) in sockets.iter().enumerate() {
            if ready[index] & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let count = sys::receive_batch(socket.as_raw_fd(), &mut buffers).unwrap_or(0);
                let arrived = now_ns();
                let flow = &mut state[index];
                for message in 0..count {
                    let reply = buffers.message(message);
                    let sent_at = match &load.request {
                        Request::Echo { .. } => protocol::read_echo(reply).map(|(_, _, at)| at),
                        Request::Memcached(_) => {
                            protocol::read_udp_frame(reply).map(|(id, body)| {
                                match protocol::parse_reply(body).map(|(kind, _)| kind) {
                                    Some(ReplyKind::Hit) => outcome.hits += 1,
                                    Some(ReplyKind::Miss) => outcome.misses += 1,
                                    Some(ReplyKind::Stored) => outcome.stored += 1,
                                    _ => outcome.errors += 1,
                                }
                                flow.sent_at[usize::from(id)]
                            })
                        }
                    };
                    match sent_at {
                        Some(at) => {
                            outcome.received += 1;
                            flow.received += 1;
                            flow.in_flight = flow.in_flight.saturating_sub(1);
                            flow.last_progress = Instant::now();
                            outcome.latency.record_ns(arrived.saturating_sub(at));
                        }
                        None => outcome.foreign += 1,
                    }
                }
                if count < MAX_BATCH {
                    break;
                }
            }
        }
    }
    if let (Some(schedule), Pace::Open { rate, .. }) = (&schedule, load.pace) {
        // How far behind its schedule the sender ended: requests due but never issued, in time.
        let per_thread = (rate / threads as f64).max(1e-9);
        let missing =
            (load.duration.as_secs_f64() * per_thread - schedule.issued() as f64).max(0.0);
        outcome.max_lag = Duration::from_secs_f64((missing / per_thread).min(1e6));
    }
    outcome.elapsed = load.duration;
    let per_flow = flows
        .iter()
        .zip(&state)
        .map(|((index, _), flow)| (*index, flow.received))
        .collect();
    (outcome, per_flow)
}
