//! The generator's own ceiling, measured on loopback in the same run as every experiment: the
//! echo rate this generator reaches against an in-process batched echo server on 127.0.0.1,
//! next to what a plain client reaches against the same server (one thread, one `send` and one
//! `recv` syscall per packet, `poll` for readiness, 16 flows with 4 requests outstanding each:
//! the kind of client the earlier benchmarks used). A guest figure near or above the ceiling
//! measures the generator, not the guest.

use crate::protocol;
use crate::sys::{self, ReceiveBuffers, MAX_BATCH};
use crate::udp::{self, LoadError, Pace, Request, UdpLoad};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A UDP echo server on 127.0.0.1: `threads` `SO_REUSEPORT` sockets on one port, each served by
/// its own thread with `recvmmsg`/`sendmmsg`, with UDP GRO on receive and GSO on send so that
/// it costs as little as it can (the ceiling is the generator's, not this server's). Its
/// replies reach the generator as ordinary datagrams, as a guest's do. Stops when dropped.
pub struct EchoServer {
    address: SocketAddrV4,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn reuse_port_socket(port: u16) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    let socket: UdpSocket = socket.into();
    sys::enable_udp_gro(socket.as_raw_fd())?;
    Ok(socket)
}

impl EchoServer {
    /// Starts the server with `threads` threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let first = reuse_port_socket(0)?;
        let port = first.local_addr()?.port();
        let mut sockets = vec![first];
        for _ in 1..threads.max(1) {
            sockets.push(reuse_port_socket(port)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .map(|socket| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve(&socket, &stop))
            })
            .collect();
        Ok(Self {
            address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            stop,
            threads,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Relaxed: the flag carries no data; the threads see it within one 20 ms poll.
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut buffers = ReceiveBuffers::new(65_536);
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if sys::wait_ready(&[(fd, false)], &mut ready, Duration::from_millis(20)).unwrap_or(0) == 0
        {
            continue;
        }
        loop {
            let count = sys::receive_batch(fd, &mut buffers).unwrap_or(0);
            if count == 0 {
                break;
            }
            // A coalesced message goes back as datagrams of the size they came in.
            let replies: Vec<(&[u8], SocketAddrV4, Option<usize>)> = (0..count)
                .map(|i| {
                    (
                        buffers.message(i),
                        buffers.source(i),
                        buffers.segment_size(i),
                    )
                })
                .collect();
            let _ = sys::send_batch_to(fd, &replies);
            if count < MAX_BATCH {
                break;
            }
        }
    }
}

/// The plain client: one thread, `flows` sockets with `window` requests outstanding each, one
/// syscall per packet; returns echoes per second over `duration`.
pub fn plain_client(
    target: SocketAddrV4,
    flows: usize,
    window: u32,
    duration: Duration,
) -> Result<f64, LoadError> {
    let sockets: Vec<UdpSocket> = (0..flows.max(1))
        .map(|_| udp::flow_socket(Ipv4Addr::LOCALHOST, 0, target))
        .collect::<Result<_, _>>()?;
    let fds: Vec<(i32, bool)> = sockets.iter().map(|s| (s.as_raw_fd(), false)).collect();
    let mut in_flight = vec![0u32; sockets.len()];
    let mut last_reply = vec![Instant::now(); sockets.len()];
    let mut request = [0u8; 64];
    let mut reply = [0u8; 2048];
    let mut ready = Vec::new();
    let mut echoes = 0u64;
    let mut sequence = 0u64;
    let start = Instant::now();
    let end = start + duration;
    while Instant::now() < end {
        for (index, socket) in sockets.iter().enumerate() {
            if in_flight[index] > 0 && last_reply[index].elapsed() > Duration::from_millis(20) {
                in_flight[index] = 0;
            }
            while in_flight[index] < window {
                sequence += 1;
                protocol::write_echo(&mut request, index as u32, sequence, udp::now_ns());
                if socket.send(&request).is_err() {
                    break;
                }
                in_flight[index] += 1;
            }
        }
        if sys::wait_ready(&fds, &mut ready, Duration::from_millis(1)).unwrap_or(0) == 0 {
            continue;
        }
        for (index, socket) in sockets.iter().enumerate() {
            if ready[index] & libc::POLLIN == 0 {
                continue;
            }
            while let Ok(length) = socket.recv(&mut reply) {
                if protocol::read_echo(&reply[..length]).is_some() {
                    echoes += 1;
                    in_flight[index] = in_flight[index].saturating_sub(1);
                    last_reply[index] = Instant::now();
                }
            }
        }
    }
    Ok(echoes as f64 / start.elapsed().as_secs_f64())
}

/// The generator's ceiling next to the plain client's rate, both on loopback.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// This generator (batched, one thread per host core, 16 flows × 32 outstanding): echoes/s.
    pub generator_per_second: f64,
    /// The plain single-threaded client (16 flows × 4 outstanding): echoes/s.
    pub plain_per_second: f64,
    /// The generator's open-loop offered rate into the same server: requests/s.
    pub offered_per_second: f64,
}

impl Ceiling {
    /// Generator over plain client.
    pub fn ratio(&self) -> f64 {
        self.generator_per_second / self.plain_per_second.max(1e-9)
    }
}

impl std::fmt::Display for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generator ceiling on loopback {:.0} k echoes/s ({:.0} k requests/s offered open loop); plain single-threaded client {:.0} k/s; ratio {:.1}x",
            self.generator_per_second / 1e3,
            self.offered_per_second / 1e3,
            self.plain_per_second / 1e3,
            self.ratio()
        )
    }
}

/// Measures [`Ceiling`]: each of the three phases runs `duration` against one loopback server.
pub fn measure(duration: Duration) -> Result<Ceiling, LoadError> {
    let server = EchoServer::start(sys::host_cpus())
        .map_err(|e| LoadError::Socket("starting the loopback echo server".into(), e))?;
    let target = server.address();
    let plain_per_second = plain_client(target, 16, 4, duration)?;
    let closed = UdpLoad {
        source: Ipv4Addr::LOCALHOST,
        target,
        ports: vec![0; 16],
        pace: Pace::Closed {
            window: 32,
            timeout: Duration::from_millis(20),
        },
        request: Request::Echo { bytes: 64 },
        duration,
        drain: Duration::from_millis(20),
        threads: 0,
        netns: None,
        seed: 7,
    };
    let generator_per_second = udp::run(&closed)?.received_per_second();
    let open = UdpLoad {
        pace: Pace::Open {
            rate: 5e6,
            arrivals: crate::rate::Arrivals::Constant,
        },
        ..closed
    };
    let offered_per_second = udp::run(&open)?.offered_per_second();
    Ok(Ceiling {
        generator_per_second,
        plain_per_second,
        offered_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Arrivals;

    #[test]
    fn the_loopback_server_echoes_and_the_generator_keeps_its_rate() {
        let server = EchoServer::start(2).unwrap();
        // Open loop at 20 k/s for half a second, constant spacing: the generator sends what is
        // due, never more, and the server answers every request.
        let load = UdpLoad {
            pace: Pace::Open {
                rate: 20_000.0,
                arrivals: Arrivals::Constant,
            },
            duration: Duration::from_millis(500),
            ..UdpLoad::echo(
                Ipv4Addr::LOCALHOST,
                server.address(),
                vec![0; 4],
                20_000.0,
                Duration::ZERO,
            )
        };
        let outcome = udp::run(&load).unwrap();
        assert!(outcome.sent <= 10_000, "sent {} > due 10000", outcome.sent);
        assert!(
            outcome.sent >= 5_000,
            "sent only {} of 10000 due",
            outcome.sent
        );
        assert_eq!(
            outcome.received, outcome.sent,
            "loopback loses nothing: {outcome:?}"
        );
        assert_eq!(outcome.latency.count(), outcome.received);
        assert!(
            outcome.per_flow.iter().all(|n| *n > 0),
            "{:?}",
            outcome.per_flow
        );
        let plain = plain_client(server.address(), 4, 1, Duration::from_millis(200)).unwrap();
        assert!(plain > 0.0);
    }
}
