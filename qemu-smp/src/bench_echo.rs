//! `qemu-smp bench echo`: UDP and TCP echo latency and throughput of a Flotilla guest, measured
//! from the host's own Linux stack through a tap device in a network namespace this benchmark
//! creates (root), next to the Linux baseline guest (`linux_guest`: Debian's Linux 6.1 with a
//! static echo server) booted on the same QEMU line, NIC and cores and measured in the same run
//! by the same client.
//!
//! Four figures (issue "netd"):
//! * boot to serving: QEMU start → the first UDP echo answered (a probe every 2 ms);
//! * UDP round trip, 64-byte payloads, 20,000 sequential requests on one flow: p50 and p99;
//! * UDP throughput: 16 flows (source ports chosen by the Toeplitz hash so they spread evenly
//!   over the queues), 4 requests outstanding on each, for 10 s: replies per second;
//! * TCP round trip, 64 bytes, 5,000 round trips on one connection: p50 and p99.
//!
//! The client runs in this process, on a thread that joins the namespace with `setns(2)` before
//! it opens any socket (sockets keep the namespace they were made in). The host's neighbour entry
//! for the guest is made permanent so that no ARP retry timer blurs the boot-to-serving time.
//! Every phase is bounded in count and in time.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::experiment::guest::{guest_namespace, wait_for_echo};
use crate::machine::{
    is_failure_line, parse_ready_line, Machine, MachineConfig, MachineError, Network,
};
use crate::tap::{TapError, GUEST_ADDRESS, HOST_ADDRESS};
use crate::{BuildError, DependencyError};

/// The echo port.
const ECHO_PORT: u16 = 7;

/// Target: round trips at most this fraction of Linux's.
pub const TARGET_ROUND_TRIP_RATIO: f64 = 0.4;
/// Target: throughput at least this multiple of Linux's.
pub const TARGET_THROUGHPUT_RATIO: f64 = 5.0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Guest cores (one NIC queue each).
    pub cores: u32,
    /// UDP and TCP payload bytes.
    pub payload: usize,
    /// Sequential UDP requests for the round-trip figure.
    pub udp_requests: u32,
    /// UDP flows for the throughput figure.
    pub flows: u16,
    /// Requests outstanding per flow.
    pub outstanding: u32,
    /// Length of the throughput run.
    pub throughput_time: Duration,
    /// TCP round trips on one connection.
    pub tcp_round_trips: u32,
    /// Extra kernel command-line options (e.g. `poll_us=1000`).
    pub cmdline: String,
}

impl Settings {
    /// The settings on `cores` cores.
    pub fn new(cores: u32) -> Self {
        Self {
            cores,
            payload: 64,
            udp_requests: 20_000,
            flows: 16,
            outstanding: 4,
            throughput_time: Duration::from_secs(10),
            tcp_round_trips: 5_000,
            cmdline: String::new(),
        }
    }
}

/// Round-trip percentiles of one run.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Round trips measured.
    pub samples: usize,
    /// Requests that got no answer in time.
    pub lost: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Fastest.
    pub min: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    fn from_samples(mut samples: Vec<Duration>, lost: u64) -> Self {
        samples.sort_unstable();
        let at = |percent: usize| {
            samples
                .get((samples.len() * percent / 100).min(samples.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            samples: samples.len(),
            lost,
            p50: at(50),
            p99: at(99),
            min: samples.first().copied().unwrap_or_default(),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// The throughput run.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Replies received in the measured window.
    pub replies: u64,
    /// Requests sent in the window.
    pub sent: u64,
    /// Times a flow waited 20 ms without a reply and refilled its window.
    pub stalls: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Replies per flow (how evenly the queues served).
    pub per_flow: Vec<u64>,
}

impl Throughput {
    /// Replies per second.
    pub fn per_second(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the client measured against one guest.
#[derive(Clone, Debug)]
pub struct Figures {
    /// QEMU start → first UDP echo answered.
    pub boot_to_serving: Duration,
    /// Flotilla's own "all cores online in T ms" figure, if it printed one.
    pub kernel_online_ms: Option<f64>,
    /// UDP round trips.
    pub udp: Latency,
    /// UDP throughput.
    pub throughput: Throughput,
    /// TCP round trips.
    pub tcp: Latency,
}

/// Everything one `bench echo` run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was asked for.
    pub settings: Settings,
    /// The host's 1-minute load average when the run started (the client and QEMU share the
    /// host's cores with whatever else runs).
    pub host_load: Option<f64>,
    /// Flotilla.
    pub flotilla: Figures,
    /// The Linux baseline guest, measured right after Flotilla by the same client.
    pub linux: Figures,
    /// The Linux guest's kernel package.
    pub linux_kernel: String,
}

/// Why the benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// QEMU and friends are missing.
    Dependencies(DependencyError),
    /// The kernel did not build.
    Build(BuildError),
    /// The Linux baseline guest could not be built.
    LinuxGuest(crate::linux_guest::LinuxGuestError),
    /// The namespace or tap device could not be made (needs root).
    Namespace(TapError),
    /// QEMU could not start.
    Machine(MachineError),
    /// The client thread could not join the namespace.
    JoinNamespace(String),
    /// A socket operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// The guest did not answer the first UDP echo in time.
    NeverServed {
        /// How long the probe tried.
        waited: Duration,
        /// The console.
        console: String,
    },
    /// A TCP echo came back wrong.
    BadEcho(String),
    /// The client thread died.
    ClientPanicked,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dependencies(e) => write!(f, "{e}"),
            Self::Build(e) => write!(f, "{e}"),
            Self::LinuxGuest(e) => write!(f, "{e}"),
            Self::Namespace(e) => write!(f, "bench echo needs a network namespace: {e}"),
            Self::Machine(e) => write!(f, "{e}"),
            Self::JoinNamespace(e) => write!(f, "joining the benchmark's network namespace: {e}"),
            Self::Io { what, error } => write!(f, "{what}: {error}"),
            Self::NeverServed { waited, console } => write!(
                f,
                "no UDP echo from {GUEST_ADDRESS}:{ECHO_PORT} within {waited:?} of QEMU's start; console:\n{console}"
            ),
            Self::BadEcho(what) => write!(f, "wrong echo: {what}"),
            Self::ClientPanicked => write!(f, "the benchmark's client thread panicked"),
        }
    }
}

impl std::error::Error for BenchError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |error| BenchError::Io { what, error }
}

fn guest(port: u16) -> SocketAddr {
    let address: Ipv4Addr = GUEST_ADDRESS.parse().expect("a valid address constant");
    SocketAddr::V4(SocketAddrV4::new(address, port))
}

fn host_address() -> Ipv4Addr {
    HOST_ADDRESS.parse().expect("a valid address constant")
}

/// Runs the benchmark with the settings on `cores` cores (progress on stderr).
pub fn run(cores: u32) -> Result<Report, BenchError> {
    run_with(Settings::new(cores))
}

/// Runs the benchmark with `settings` (progress on stderr): Flotilla, then the Linux guest.
pub fn run_with(settings: Settings) -> Result<Report, BenchError> {
    crate::ensure_dependencies(false).map_err(BenchError::Dependencies)?;
    let kernel = crate::build_kernel().map_err(BenchError::Build)?;
    let linux = crate::linux_guest::prepare().map_err(BenchError::LinuxGuest)?;
    let host_load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok());
    let cmdline = format!("log=warn urpc=off {}", settings.cmdline);
    let flotilla_config = MachineConfig::kernel(kernel, settings.cores, cmdline.trim_end());
    let flotilla = measure(&settings, flotilla_config, "flotilla")?;
    let mut linux_config = MachineConfig::kernel(
        linux.kernel.clone(),
        settings.cores,
        crate::linux_guest::CMDLINE,
    );
    linux_config.extra_args = linux.extra_args();
    let linux_figures = measure(&settings, linux_config, "linux")?;
    Ok(Report {
        settings,
        host_load,
        flotilla,
        linux: linux_figures,
        linux_kernel: linux.kernel_package,
    })
}

/// Boots `config` on a tap device in a fresh namespace and measures it.
fn measure(
    settings: &Settings,
    mut config: MachineConfig,
    system: &str,
) -> Result<Figures, BenchError> {
    let name = format!("flotilla-bench-{}-{system}", std::process::id());
    let namespace = guest_namespace(&name).map_err(BenchError::Namespace)?;
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    eprintln!(
        "bench echo: {system}, {} cores, igb on {} in namespace {}, TCG; client on the host's Linux stack",
        settings.cores, namespace.tap, namespace.name
    );

    // The client thread joins the namespace first, then waits for QEMU's start instant.
    let (start_sender, start_receiver) = mpsc::channel::<Option<Instant>>();
    let client_settings = settings.clone();
    let netns_path = format!("/run/netns/{name}");
    let client = std::thread::spawn(move || -> Result<ClientResults, BenchError> {
        let file = File::open(&netns_path).map_err(io(format!("opening {netns_path}")))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| BenchError::JoinNamespace(e.to_string()))?;
        let probe = UdpSocket::bind((host_address(), 0)).map_err(io("binding the probe socket"))?;
        probe
            .connect(guest(ECHO_PORT))
            .map_err(io("connecting the probe socket"))?;
        let Ok(Some(started)) = start_receiver.recv() else {
            return Err(BenchError::ClientPanicked);
        };
        client_main(&client_settings, &probe, started)
    });
    let machine = Machine::start(&config, false);
    let _ = start_sender.send(machine.as_ref().ok().map(|m| m.started));
    let machine = machine.map_err(BenchError::Machine)?;
    let results = match client.join() {
        Ok(Ok(results)) => results,
        Ok(Err(BenchError::NeverServed { waited, .. })) => {
            return Err(BenchError::NeverServed {
                waited,
                console: machine.console().join("\n"),
            })
        }
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(BenchError::ClientPanicked),
    };
    let console = machine.console();
    if let Some(line) = console.iter().find(|l| is_failure_line(l)) {
        eprintln!("bench echo: warning: the console reported a failure: {line}");
    }
    let kernel_online_ms = console
        .iter()
        .find_map(|l| parse_ready_line(l))
        .map(|(_, ms)| ms);
    drop(machine);
    drop(namespace);
    Ok(Figures {
        boot_to_serving: results.boot_to_serving,
        kernel_online_ms,
        udp: results.udp,
        throughput: results.throughput,
        tcp: results.tcp,
    })
}

struct ClientResults {
    boot_to_serving: Duration,
    udp: Latency,
    throughput: Throughput,
    tcp: Latency,
}

/// Everything the client does, inside the namespace.
fn client_main(
    settings: &Settings,
    probe: &UdpSocket,
    started: Instant,
) -> Result<ClientResults, BenchError> {
    let limit = Duration::from_secs(180);
    let boot_to_serving =
        wait_for_echo(probe, started, limit, || None).map_err(|_| BenchError::NeverServed {
            waited: limit,
            console: String::new(),
        })?;
    eprintln!(
        "bench echo: serving {:.2} s after QEMU started",
        boot_to_serving.as_secs_f64()
    );
    let udp = udp_round_trips(probe, settings)?;
    eprintln!(
        "bench echo: UDP round trips: {} samples, p50 {:.0} µs, p99 {:.0} µs, {} lost",
        udp.samples,
        micros(udp.p50),
        micros(udp.p99),
        udp.lost
    );
    let throughput = udp_throughput(settings)?;
    eprintln!(
        "bench echo: UDP throughput: {:.0} replies/s ({} flows × {} outstanding, {} stalls)",
        throughput.per_second(),
        settings.flows,
        settings.outstanding,
        throughput.stalls
    );
    let tcp = tcp_round_trips(settings)?;
    eprintln!(
        "bench echo: TCP round trips: {} samples, p50 {:.0} µs, p99 {:.0} µs",
        tcp.samples,
        micros(tcp.p50),
        micros(tcp.p99)
    );
    Ok(ClientResults {
        boot_to_serving,
        udp,
        throughput,
        tcp,
    })
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// A payload of `length` bytes (at least 8) starting with `sequence`.
fn payload(sequence: u64, length: usize) -> Vec<u8> {
    let mut bytes = vec![0x5A; length.max(8)];
    bytes[..8].copy_from_slice(&sequence.to_be_bytes());
    bytes
}

fn sequence_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Sends `count` requests one after the other on `socket` and times each answer (200 ms
/// timeout per request; the whole run is bounded by `limit`).
fn sequential_udp(
    socket: &UdpSocket,
    first_sequence: u64,
    count: u32,
    length: usize,
    limit: Duration,
) -> Result<(Vec<Duration>, u64), BenchError> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io("setting the UDP timeout"))?;
    let deadline = Instant::now() + limit;
    let mut samples = Vec::with_capacity(count as usize);
    let mut lost = 0;
    let mut buffer = [0u8; 2048];
    for sequence in first_sequence..first_sequence + u64::from(count) {
        if Instant::now() >= deadline {
            break;
        }
        let request = payload(sequence, length);
        let sent = Instant::now();
        socket.send(&request).map_err(io("sending a UDP request"))?;
        loop {
            match socket.recv(&mut buffer) {
                Ok(n) if buffer[..n] == request[..] => {
                    samples.push(sent.elapsed());
                    break;
                }
                Ok(_) => continue, // a late answer to an earlier request
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    Ok((samples, lost))
}

fn udp_round_trips(socket: &UdpSocket, settings: &Settings) -> Result<Latency, BenchError> {
    // Warm up (caches, the guest's neighbour entry, TCG's translated code).
    sequential_udp(
        socket,
        1 << 32,
        500,
        settings.payload,
        Duration::from_secs(30),
    )?;
    let (samples, lost) = sequential_udp(
        socket,
        1 << 33,
        settings.udp_requests,
        settings.payload,
        Duration::from_secs(180),
    )?;
    Ok(Latency::from_samples(samples, lost))
}

/// Source ports for `flows` flows to the echo port, spread evenly over `queues` queues by the
/// Toeplitz hash under the guest's default redirection table.
fn spread_ports(flows: u16, queues: u16) -> Vec<u16> {
    use drivers::rss::{default_table, queue_of, FlowTuple, DEFAULT_KEY};
    let table = default_table(queues);
    let flow = FlowTuple::V4 {
        source: host_address().octets(),
        destination: GUEST_ADDRESS
            .parse::<Ipv4Addr>()
            .expect("a valid address constant")
            .octets(),
        ports: Some((0, ECHO_PORT)),
    };
    let queues = queues.clamp(1, 16);
    let mut chosen = Vec::new();
    let mut per_queue = vec![0u16; usize::from(queues)];
    let share = flows.div_ceil(queues);
    for port in 20_000u16..30_000 {
        if chosen.len() == usize::from(flows) {
            break;
        }
        let queue = queue_of(&table, flow.with_source_port(port).hash(&DEFAULT_KEY)).0;
        let taken = &mut per_queue[usize::from(queue) % usize::from(queues)];
        if *taken < share {
            *taken += 1;
            chosen.push(port);
        }
    }
    chosen
}

fn udp_throughput(settings: &Settings) -> Result<Throughput, BenchError> {
    let queues = u16::try_from(settings.cores).unwrap_or(16).min(16);
    let ports = spread_ports(settings.flows, queues);
    let mut sockets = Vec::new();
    for port in &ports {
        let socket = UdpSocket::bind((host_address(), *port))
            .map_err(io(format!("binding UDP port {port}")))?;
        socket
            .connect(guest(ECHO_PORT))
            .map_err(io("connecting a flow"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(io("setting a flow's timeout"))?;
        sockets.push(socket);
    }
    let barrier = Arc::new(Barrier::new(sockets.len() + 1));
    let window = settings.outstanding.max(1);
    let length = settings.payload;
    let run_for = settings.throughput_time;
    let workers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(flow, socket)| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let end = start + run_for;
                let (mut replies, mut sent, mut stalls) = (0u64, 0u64, 0u64);
                let mut sequence = (flow as u64) << 40;
                let mut in_flight = 0u32;
                let mut buffer = [0u8; 2048];
                while Instant::now() < end {
                    while in_flight < window {
                        sequence += 1;
                        if socket.send(&payload(sequence, length)).is_ok() {
                            sent += 1;
                        }
                        in_flight += 1;
                    }
                    match socket.recv(&mut buffer) {
                        Ok(n) if sequence_of(&buffer[..n]).is_some() => {
                            if Instant::now() < end {
                                replies += 1;
                            }
                            in_flight = in_flight.saturating_sub(1);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            // Nothing for 20 ms: count the window as lost and refill it.
                            stalls += 1;
                            in_flight = 0;
                        }
                    }
                }
                (replies, sent, stalls, start.elapsed())
            })
        })
        .collect();
    barrier.wait();
    let mut result = Throughput::default();
    for worker in workers {
        let (replies, sent, stalls, elapsed) =
            worker.join().map_err(|_| BenchError::ClientPanicked)?;
        result.replies += replies;
        result.sent += sent;
        result.stalls += stalls;
        result.per_flow.push(replies);
        result.elapsed = result.elapsed.max(elapsed.min(run_for));
    }
    Ok(result)
}

fn tcp_round_trips(settings: &Settings) -> Result<Latency, BenchError> {
    let mut stream = TcpStream::connect_timeout(&guest(ECHO_PORT), Duration::from_secs(10))
        .map_err(io("connecting to TCP echo"))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io("setting the TCP timeout"))?;
    let mut round_trip = |sequence: u64| -> Result<Duration, BenchError> {
        let request = payload(sequence, settings.payload);
        let mut answer = vec![0u8; request.len()];
        let sent = Instant::now();
        stream.write_all(&request).map_err(io("sending on TCP"))?;
        stream
            .read_exact(&mut answer)
            .map_err(io("reading the TCP echo"))?;
        let elapsed = sent.elapsed();
        if answer != request {
            return Err(BenchError::BadEcho(format!(
                "TCP round trip {sequence}: sent {request:02x?}, got {answer:02x?}"
            )));
        }
        Ok(elapsed)
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    for sequence in 0..200 {
        round_trip(sequence)?;
    }
    let mut samples = Vec::with_capacity(settings.tcp_round_trips as usize);
    for sequence in 0..u64::from(settings.tcp_round_trips) {
        if Instant::now() >= deadline {
            break;
        }
        samples.push(round_trip(1_000 + sequence)?);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(Latency::from_samples(samples, 0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let (fl, linux) = (&self.flotilla, &self.linux);
        let verdict = |met: bool| if met { "met" } else { "not met" };
        writeln!(
            f,
            "bench echo: Flotilla and the Linux baseline guest ({}), {} cores each, igb on a tap device, TCG, measured in this run by the same client",
            self.linux_kernel, s.cores
        )?;
        writeln!(
            f,
            "{:<34} {:>12} {:>12} {:>8}  target",
            "", "Flotilla", "Linux", "ratio"
        )?;
        let round_trip =
            |f: &mut fmt::Formatter<'_>, name: &str, value: Duration, linux: Duration| {
                let ratio = micros(value) / micros(linux).max(1e-9);
                writeln!(
                f,
                "{name:<34} {:>9.0} µs {:>9.0} µs {ratio:>7.2}x  <= {TARGET_ROUND_TRIP_RATIO}x: {}",
                micros(value),
                micros(linux),
                verdict(ratio <= TARGET_ROUND_TRIP_RATIO)
            )
            };
        round_trip(
            f,
            &format!(
                "UDP round trip p50 ({} B, {} req)",
                s.payload, fl.udp.samples
            ),
            fl.udp.p50,
            linux.udp.p50,
        )?;
        round_trip(f, "UDP round trip p99", fl.udp.p99, linux.udp.p99)?;
        let (ours, theirs) = (fl.throughput.per_second(), linux.throughput.per_second());
        let ratio = ours / theirs.max(1e-9);
        writeln!(
            f,
            "{:<34} {:>7.1} k/s {:>7.1} k/s {ratio:>7.2}x  >= {TARGET_THROUGHPUT_RATIO}x: {}",
            format!(
                "UDP echo replies ({}x{}, {} s)",
                s.flows,
                s.outstanding,
                s.throughput_time.as_secs()
            ),
            ours / 1000.0,
            theirs / 1000.0,
            verdict(ratio >= TARGET_THROUGHPUT_RATIO)
        )?;
        round_trip(
            f,
            &format!(
                "TCP round trip p50 ({} B, {} rt)",
                s.payload, fl.tcp.samples
            ),
            fl.tcp.p50,
            linux.tcp.p50,
        )?;
        let (ready, linux_ready) = (
            fl.boot_to_serving.as_secs_f64(),
            linux.boot_to_serving.as_secs_f64(),
        );
        writeln!(
            f,
            "{:<34} {:>10.2} s {:>10.2} s {:>7.2}x  (no target)",
            "QEMU start -> first UDP echo",
            ready,
            linux_ready,
            ready / linux_ready.max(1e-9)
        )?;
        for (name, figures) in [("Flotilla", fl), ("Linux", linux)] {
            writeln!(
                f,
                "details {name}: UDP min {:.0} / max {:.0} µs, {} lost; TCP p99 {:.0} µs (min {:.0}, max {:.0}); throughput {} sent, {} replies, {} stalls of 20 ms, per flow {:?}{}",
                micros(figures.udp.min),
                micros(figures.udp.max),
                figures.udp.lost,
                micros(figures.tcp.p99),
                micros(figures.tcp.min),
                micros(figures.tcp.max),
                figures.throughput.sent,
                figures.throughput.replies,
                figures.throughput.stalls,
                figures.throughput.per_flow,
                figures
                    .kernel_online_ms
                    .map(|ms| format!("; kernel: all cores online {ms:.1} ms after entry"))
                    .unwrap_or_default()
            )?;
        }
        write!(
            f,
            "note: TCG runs one host thread per guest core and the client shares the host's cores; the client is the plain one (one syscall per packet), whose ceiling is near Flotilla's throughput figure: `qemu-smp experiment scaling` uses the batched generator; figures vary run to run{}",
            self.host_load
                .map(|load| format!(" (host load average {load:.2} at the start)"))
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_spread() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let latency = Latency::from_samples(samples, 3);
        assert_eq!(latency.p50, Duration::from_micros(51));
        assert_eq!(latency.p99, Duration::from_micros(100));
        assert_eq!(
            (latency.min, latency.max),
            (Duration::from_micros(1), Duration::from_micros(100))
        );
        assert_eq!(latency.lost, 3);
        let empty = Latency::from_samples(Vec::new(), 0);
        assert_eq!(empty.p50, Duration::ZERO);

        let ports = spread_ports(16, 2);
        assert_eq!(ports.len(), 16);
        let table = drivers::rss::default_table(2);
        let flow = drivers::rss::FlowTuple::V4 {
            source: [10, 0, 2, 2],
            destination: [10, 0, 2, 15],
            ports: Some((0, 7)),
        };
        let on_queue_1 = ports
            .iter()
            .filter(|p| {
                drivers::rss::queue_of(
                    &table,
                    flow.with_source_port(**p).hash(&drivers::rss::DEFAULT_KEY),
                )
                .0 == 1
            })
            .count();
        assert_eq!(on_queue_1, 8);
        assert_eq!(sequence_of(&payload(77, 64)), Some(77));
    }

    /// The whole benchmark (root, QEMU, ~1 min): `cargo test -p qemu-smp --lib bench_echo -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_echo_runs() {
        let cores = std::env::var("BENCH_ECHO_CORES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2);
        match run(cores) {
            Ok(report) => println!("{report}"),
            Err(error) => panic!("{error}"),
        }
    }
}
