//! memcached over TCP, open loop: persistent connections (one per source port, so the same
//! Toeplitz spread puts connections on every guest core), requests dealt out round robin and
//! pipelined, each connection written and read with one syscall per batch. Replies come back in
//! request order on a connection, so a queue of send times per connection gives each reply its
//! round trip.

use crate::histogram::LatencyHistogram;
use crate::protocol::{self, MemcachedMix, ReplyKind};
use crate::rate::{Arrivals, Schedule, SplitMix64};
use crate::sys;
use crate::udp::{now_ns, LoadError, Outcome};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most requests outstanding on one connection before new ones are refused (counted as send
/// failures): the open loop stays bounded when the server falls behind, and the backlog an
/// overloaded server leaves for the next measurement stays small.
const MAX_PENDING: usize = 128;
/// Send time recorded for requests of an earlier run, whose replies are not timed.
const STALE: u64 = 0;

struct Connection {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    pending: VecDeque<u64>,
}

/// Persistent memcached connections to one server.
pub struct MemcachedTcp {
    connections: Vec<Connection>,
    mix: MemcachedMix,
    target: SocketAddrV4,
}

impl MemcachedTcp {
    /// Opens one connection from each of `ports` (0: any) on `source` to `target`, from inside
    /// the network namespace `netns` if given (the connections stay there).
    pub fn connect(
        source: Ipv4Addr,
        ports: &[u16],
        target: SocketAddrV4,
        mix: MemcachedMix,
        netns: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let ports = ports.to_vec();
        let netns = netns.map(Path::to_path_buf);
        let connections = std::thread::spawn(move || -> Result<Vec<Connection>, LoadError> {
            if let Some(path) = &netns {
                sys::join_network_namespace(path)
                    .map_err(|e| LoadError::Namespace(path.clone(), e))?;
            }
            ports
                .iter()
                .map(|port| open(source, *port, target))
                .collect()
        })
        .join()
        .map_err(|_| LoadError::ThreadPanicked)??;
        Ok(Self {
            connections,
            mix,
            target,
        })
    }

    /// The server.
    pub fn target(&self) -> SocketAddrV4 {
        self.target
    }

    /// Stores every key of the mix (spread over the connections, at most 8 outstanding on
    /// each, a key whose `set` got an error reply sent again) and waits for every `STORED`, at
    /// most `limit`; returns how many keys were stored.
    pub fn prefill(&mut self, limit: Duration) -> u64 {
        let count = self.connections.len().max(1);
        let mut to_store: Vec<VecDeque<u64>> = vec![VecDeque::new(); count];
        for key in 0..u64::from(self.mix.keys) {
            to_store[key as usize % count].push_back(key);
        }
        let mut in_flight: Vec<VecDeque<u64>> = vec![VecDeque::new(); count];
        let deadline = Instant::now() + limit;
        let mut stored = 0;
        while Instant::now() < deadline
            && (to_store.iter().any(|q| !q.is_empty()) || in_flight.iter().any(|q| !q.is_empty()))
        {
            for (index, connection) in self.connections.iter_mut().enumerate() {
                while in_flight[index].len() < 8 {
                    let Some(key) = to_store[index].pop_front() else {
                        break;
                    };
                    self.mix.write_set(key, &mut connection.out);
                    in_flight[index].push_back(key);
                }
                if !flush(connection) {
                    continue;
                }
                let mut chunk = [0u8; 16 << 10];
                while let Ok(n) = connection.stream.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    connection.input.extend_from_slice(&chunk[..n]);
                }
                let mut used = 0;
                while let Some((kind, length)) = protocol::parse_reply(&connection.input[used..]) {
                    used += length;
                    if let Some(key) = in_flight[index].pop_front() {
                        match kind {
                            ReplyKind::Stored => stored += 1,
                            _ => to_store[index].push_back(key),
                        }
                    }
                }
                connection.input.drain(..used);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        stored
    }

    /// Reads replies until no request is outstanding, at most `limit` (so that an overload
    /// run's backlog does not delay the next measurement); returns whether all came.
    pub fn settle(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut ignored = LatencyHistogram::new();
        while Instant::now() < deadline {
            let mut outstanding = false;
            for connection in &mut self.connections {
                let _ = flush(connection);
                read_replies(connection, &mut ignored);
                outstanding |= !connection.pending.is_empty();
            }
            if !outstanding {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Offers `rate` requests per second (`arrivals` spacing) for `duration` over `threads`
    /// threads (0: one per host core; at most one per connection), then reads replies for
    /// `drain` more.
    pub fn run(
        &mut self,
        rate: f64,
        arrivals: Arrivals,
        duration: Duration,
        drain: Duration,
        threads: usize,
        seed: u64,
    ) -> Outcome {
        let threads = if threads == 0 {
            sys::host_cpus()
        } else {
            threads
        }
        .clamp(1, self.connections.len().max(1));
        for connection in &mut self.connections {
            connection.pending.iter_mut().for_each(|sent| *sent = STALE);
        }
        let per_thread = self.connections.len().div_ceil(threads);
        let start = Instant::now() + Duration::from_millis(2);
        let mix = &self.mix;
        let mut total = Outcome::default();
        std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .connections
                .chunks_mut(per_thread.max(1))
                .enumerate()
                .map(|(thread, connections)| {
                    let schedule = Schedule::new(
                        rate / threads as f64,
                        arrivals,
                        seed.wrapping_add(thread as u64),
                    );
                    let random = SplitMix64::new(seed ^ ((thread as u64 + 1) << 40));
                    scope.spawn(move || {
                        sender(connections, mix, schedule, random, start, duration, drain)
                    })
                })
                .collect();
            for worker in workers {
                if let Ok(part) = worker.join() {
                    total.merge(part);
                }
            }
        });
        total.elapsed = duration;
        total
    }
}

fn open(source: Ipv4Addr, port: u16, target: SocketAddrV4) -> Result<Connection, LoadError> {
    let what = |action: &str| format!("{action} TCP {source}:{port} -> {target}");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| LoadError::Socket(what("creating"), e))?;
    let _ = socket.set_reuse_address(true);
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(source, port)).into())
        .map_err(|e| LoadError::Socket(what("binding"), e))?;
    socket
        .connect_timeout(&SocketAddr::V4(target).into(), Duration::from_secs(10))
        .map_err(|e| LoadError::Socket(what("connecting"), e))?;
    let _ = socket.set_nodelay(true);
    socket
        .set_nonblocking(true)
        .map_err(|e| LoadError::Socket(what("non-blocking"), e))?;
    Ok(Connection {
        stream: socket.into(),
        out: Vec::new(),
        input: Vec::new(),
        pending: VecDeque::new(),
    })
}

/// Writes what the connection can take now; false if it is closed.
fn flush(connection: &mut Connection) -> bool {
    while !connection.out.is_empty() {
        match connection.stream.write(&connection.out) {
            Ok(0) => return false,
            Ok(written) => {
                connection.out.drain(..written);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads what arrived and times each complete reply; returns [hits, misses, stored, errors] and
/// the number of timed replies.
fn read_replies(connection: &mut Connection, histogram: &mut LatencyHistogram) -> ([u64; 4], u64) {
    let mut counts = [0u64; 4];
    let mut timed = 0;
    let mut chunk = [0u8; 16 << 10];
    loop {
        match connection.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => connection.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let arrived = now_ns();
    let mut used = 0;
    while let Some((kind, length)) = protocol::parse_reply(&connection.input[used..]) {
        used += length;
        counts[match kind {
            ReplyKind::Hit => 0,
            ReplyKind::Miss => 1,
            ReplyKind::Stored => 2,
            ReplyKind::Error => 3,
        }] += 1;
        if let Some(sent) = connection.pending.pop_front() {
            // Error replies are counted apart; only answers are timed and count as achieved.
            if sent != STALE && kind != ReplyKind::Error {
                histogram.record_ns(arrived.saturating_sub(sent));
                timed += 1;
            }
        }
    }
    connection.input.drain(..used);
    (counts, timed)
}

fn sender(
    connections: &mut [Connection],
    mix: &MemcachedMix,
    mut schedule: Schedule,
    mut random: SplitMix64,
    start: Instant,
    duration: Duration,
    drain: Duration,
) -> Outcome {
    let mut outcome = Outcome::default();
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let end = start + duration;
    let drain_end = end + drain;
    let mut cursor = 0;
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if now >= drain_end
            || (now >= end
                && connections
                    .iter()
                    .all(|c| c.pending.iter().all(|s| *s == STALE)))
        {
            break;
        }
        if now < end {
            let due = schedule.due(now - start, 1024);
            let stamp = now_ns();
            let count = connections.len();
            for _ in 0..due {
                let connection = &mut connections[cursor];
                cursor = (cursor + 1) % count;
                if connection.pending.len() >= MAX_PENDING {
                    outcome.send_failures += 1;
                    continue;
                }
                mix.write_request(&mut random, &mut connection.out);
                connection.pending.push_back(stamp);
                outcome.sent += 1;
            }
        }
        for connection in connections.iter_mut() {
            if !connection.out.is_empty() {
                let _ = flush(connection);
            }
        }
        let fds: Vec<(i32, bool)> = connections
            .iter()
            .map(|c| (c.stream.as_raw_fd(), !c.out.is_empty()))
            .collect();
        let timeout = if now < end {
            schedule
                .until_next(now - start)
                .min(Duration::from_millis(1))
        } else {
            Duration::from_millis(1)
        };
        if sys::wait_ready(&fds, &mut ready, timeout).unwrap_or(0) == 0 {
            continue;
        }
        for (index, connection) in connections.iter_mut().enumerate() {
            if ready[index] & libc::POLLIN != 0 {
                let (counts, timed) = read_replies(connection, &mut outcome.latency);
                outcome.hits += counts[0];
                outcome.misses += counts[1];
                outcome.stored += counts[2];
                outcome.errors += counts[3];
                outcome.received += timed;
            }
        }
    }
    outcome
}
