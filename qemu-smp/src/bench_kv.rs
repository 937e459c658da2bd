//! `qemu-smp bench kv`: memcached `get` round trips on ONE connection, keys this connection's
//! core owns (local) against keys other cores own (remote: a request and a reply between cores,
//! each core woken by IPI), and the URPC round trips with the pinged core polling against halted
//! (the difference is the IPI wake-up), all in one boot of a Flotilla guest (TCG, igb on a tap
//! device in a network namespace this benchmark creates; root).
//!
//! The connection's source port is chosen by the Toeplitz hash so that it lands on queue 0
//! (core 0). Keys are chosen by the server's own partition function, the same number per core.
//! Each round gets every key in turn (owners interleaved), so local and remote samples share the
//! same moments of host load; the report gives each round's p50s and ratio, and the spread over
//! rounds. Every phase is bounded in count and time.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::machine::{is_failure_line, Machine, MachineConfig, MachineError, Network};
use crate::tap::{TapError, TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use crate::{BuildError, DependencyError};

/// The memcached port.
const PORT: u16 = 11211;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Guest cores.
    pub cores: u32,
    /// Keys per owner core.
    pub keys_per_core: usize,
    /// Bytes of each small value.
    pub small: usize,
    /// Bytes of the one large value per core (0: none).
    pub large: usize,
    /// Rounds (each gets every key `gets_per_key` times).
    pub rounds: usize,
    /// Gets of each small key per round.
    pub gets_per_key: usize,
    /// URPC matrix rounds a pair (polled and halted); 0: no matrix.
    pub matrix_rounds: u32,
    /// Boot this image instead of building the workspace's (e.g. an older kernel, to compare;
    /// use `matrix_rounds = 0` for one that has no `urpc=wake`).
    pub kernel: Option<std::path::PathBuf>,
}

impl Settings {
    /// The defaults on `cores` cores.
    pub fn new(cores: u32) -> Self {
        Self {
            cores,
            keys_per_core: 8,
            small: 32,
            large: 100_000,
            rounds: 5,
            gets_per_key: 10,
            matrix_rounds: 200,
            kernel: None,
        }
    }
}

/// Why the benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// QEMU and friends are missing.
    Dependencies(DependencyError),
    /// The kernel did not build.
    Build(BuildError),
    /// The namespace or tap device could not be made (needs root).
    Namespace(TapError),
    /// QEMU could not start, or a console line never came.
    Machine(MachineError),
    /// The client thread could not join the namespace or open its socket.
    Socket(String),
    /// A socket operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// memcached answered something else than expected.
    BadReply(String),
    /// No source port lands on queue 0.
    NoPort,
    /// The client thread died.
    ClientPanicked,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dependencies(e) => write!(f, "{e}"),
            Self::Build(e) => write!(f, "{e}"),
            Self::Namespace(e) => write!(f, "bench kv needs a network namespace: {e}"),
            Self::Machine(e) => write!(f, "{e}"),
            Self::Socket(e) => write!(f, "the client socket: {e}"),
            Self::Io { what, error } => write!(f, "{what}: {error}"),
            Self::BadReply(what) => write!(f, "unexpected memcached reply: {what}"),
            Self::NoPort => write!(f, "no source port hashes to queue 0"),
            Self::ClientPanicked => write!(f, "the benchmark's client thread panicked"),
        }
    }
}

impl std::error::Error for BenchError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |error| BenchError::Io { what, error }
}

/// Percentiles of a set of samples, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Samples.
    pub samples: usize,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    fn of(samples: &[Duration]) -> Self {
        let mut micros: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        micros.sort_by(f64::total_cmp);
        let at = |p: usize| {
            micros
                .get((micros.len() * p / 100).min(micros.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            samples: micros.len(),
            p10: at(10),
            p50: at(50),
            p90: at(90),
            p99: at(99),
        }
    }
}

/// One round's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    /// Gets of small keys the connection's core owns.
    pub local: Percentiles,
    /// Gets of small keys other cores own.
    pub remote: Percentiles,
    /// Gets of the large value on the connection's core.
    pub large_local: Percentiles,
    /// Gets of large values other cores own.
    pub large_remote: Percentiles,
}

/// Everything one `bench kv` run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was asked for.
    pub settings: Settings,
    /// The host's 1-minute load average at the start and at the end.
    pub host_load: (Option<f64>, Option<f64>),
    /// Each round.
    pub rounds: Vec<Round>,
    /// URPC round trips, median over the ordered pairs of each pair's p50, in ns: with the
    /// pinged core polling, and halted between probes.
    pub urpc_polled_ns: Option<f64>,
    /// The same with the pinged core halted.
    pub urpc_halted_ns: Option<f64>,
}

fn load() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
}

/// Runs the benchmark (progress on stderr).
pub fn run(settings: Settings) -> Result<Report, BenchError> {
    crate::ensure_dependencies(false).map_err(BenchError::Dependencies)?;
    let kernel = match &settings.kernel {
        Some(path) => path.clone(),
        None => crate::build_kernel().map_err(BenchError::Build)?,
    };
    let load_before = load();
    let name = format!("flotilla-kv-{}", std::process::id());
    let namespace = TapNamespace::create(&name).map_err(BenchError::Namespace)?;
    let cmdline = match settings.matrix_rounds {
        0 => "log=warn urpc=off".to_string(),
        rounds => format!("log=warn urpc=wake:{rounds}"),
    };
    let mut config = MachineConfig::kernel(kernel, settings.cores, &cmdline);
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    eprintln!(
        "bench kv: {} cores, igb on {} in namespace {}, TCG; one memcached connection on core 0",
        settings.cores, namespace.tap, namespace.name
    );
    let mut machine = Machine::start(&config, false).map_err(BenchError::Machine)?;
    let timeout = Duration::from_secs(120 + u64::from(settings.matrix_rounds) / 2);
    let awaited = if settings.matrix_rounds > 0 {
        "urpc: wake matrix complete"
    } else {
        "flotilla: all"
    };
    let line = machine
        .wait_for(awaited, timeout, |l| {
            l.starts_with(awaited) || is_failure_line(l)
        })
        .map_err(BenchError::Machine)?;
    if is_failure_line(&line) {
        return Err(BenchError::BadReply(format!("the guest failed: {line}")));
    }
    let console = machine.console();
    let (urpc_polled_ns, urpc_halted_ns) = (matrix_ns(&console, false), matrix_ns(&console, true));
    let client_settings = settings.clone();
    let netns = format!("/run/netns/{name}");
    let client = std::thread::spawn(move || -> Result<Vec<Round>, BenchError> {
        let file = File::open(&netns).map_err(io(format!("opening {netns}")))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| BenchError::Socket(e.to_string()))?;
        client_main(&client_settings)
    });
    let rounds = client.join().map_err(|_| BenchError::ClientPanicked)??;
    if let Some(line) = machine.console().iter().find(|l| is_failure_line(l)) {
        eprintln!("bench kv: warning: the console reported a failure: {line}");
    }
    drop(machine);
    drop(namespace);
    Ok(Report {
        settings,
        host_load: (load_before, load()),
        rounds,
        urpc_polled_ns,
        urpc_halted_ns,
    })
}

/// The median over pairs of each pair's p50 in ns, from `urpc: [wake ]rtt A->B ... (N ns, M ns)`.
fn matrix_ns(console: &[String], halted: bool) -> Option<f64> {
    let prefix = if halted {
        "urpc: wake rtt "
    } else {
        "urpc: rtt "
    };
    let mut values: Vec<f64> = console
        .iter()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| rest.split_once('(')?.1.split(" ns").next()?.parse().ok())
        .collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// A TCP connection from a source port whose flow lands on queue 0 (core 0).
fn connect_on_core_zero(cores: u32) -> Result<TcpStream, BenchError> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    let host: Ipv4Addr = HOST_ADDRESS.parse().expect("a valid address constant");
    let guest: Ipv4Addr = GUEST_ADDRESS.parse().expect("a valid address constant");
    let table = drivers::rss::default_table(cores as u16);
    let flow = drivers::rss::FlowTuple::V4 {
        source: host.octets(),
        destination: guest.octets(),
        ports: Some((0, PORT)),
    };
    let mut first = 40_000 + (std::process::id() % 10_000) as u16;
    for _ in 0..20 {
        let port = drivers::rss::source_port_for_queue(
            &drivers::rss::DEFAULT_KEY,
            &table,
            flow,
            drivers::nic::QueueId(0),
            first..=60_999,
        )
        .ok_or(BenchError::NoPort)?;
        first = port + 1;
        let fd: OwnedFd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .map_err(|e| BenchError::Socket(e.to_string()))?;
        let _ = socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true);
        if socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(host, port)),
        )
        .is_err()
        {
            continue;
        }
        let to = SockaddrIn::from(SocketAddrV4::new(guest, PORT));
        if socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &to).is_ok() {
            let stream = TcpStream::from(fd);
            stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
            return Ok(stream);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(BenchError::Socket("could not connect to memcached".into()))
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, BenchError> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(io("reading a reply line"))?;
    Ok(line)
}

/// One `get` of `key`, whose value must be `length` bytes; returns the round trip.
fn get(
    reader: &mut BufReader<TcpStream>,
    key: &str,
    length: usize,
) -> Result<Duration, BenchError> {
    let sent = Instant::now();
    reader
        .get_mut()
        .write_all(format!("get {key}\r\n").as_bytes())
        .map_err(io("sending a get"))?;
    let header = read_line(reader)?;
    if !header.starts_with("VALUE ") || !header.trim_end().ends_with(&format!(" {length}")) {
        return Err(BenchError::BadReply(format!("get {key}: {header:?}")));
    }
    let mut data = vec![0u8; length + 2];
    reader
        .read_exact(&mut data)
        .map_err(io("reading a value"))?;
    let end = read_line(reader)?;
    if end != "END\r\n" {
        return Err(BenchError::BadReply(format!(
            "get {key}: {end:?} after the value"
        )));
    }
    Ok(sent.elapsed())
}

fn client_main(settings: &Settings) -> Result<Vec<Round>, BenchError> {
    let cores = settings.cores as u16;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match connect_on_core_zero(settings.cores) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(e),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("setting the timeout"))?;
    let mut reader = BufReader::new(stream);
    let key_for = |owner: u16, n: usize, tag: &str| {
        (0..1_000_000)
            .map(|i| format!("bench-{tag}-{owner}-{n}-{i}"))
            .find(|key| netd::app::memcached::key_owner(key.as_bytes(), cores) == owner)
            .expect("a key for every core")
    };
    let mut small = Vec::new();
    let mut large = Vec::new();
    for n in 0..settings.keys_per_core {
        for owner in 0..cores {
            small.push((owner, key_for(owner, n, "small")));
        }
    }
    if settings.large > 0 {
        for owner in 0..cores {
            large.push((owner, key_for(owner, 0, "large")));
        }
    }
    let mut set = |key: &str, length: usize| -> Result<(), BenchError> {
        let stream = reader.get_mut();
        stream
            .write_all(format!("set {key} 0 0 {length}\r\n").as_bytes())
            .and_then(|()| stream.write_all(&vec![b'v'; length]))
            .and_then(|()| stream.write_all(b"\r\n"))
            .map_err(io("sending a set"))?;
        match read_line(&mut reader)?.as_str() {
            "STORED\r\n" => Ok(()),
            other => Err(BenchError::BadReply(format!("set {key}: {other:?}"))),
        }
    };
    for (_, key) in &small {
        set(key, settings.small)?;
    }
    for (_, key) in &large {
        set(key, settings.large)?;
    }
    // Warm up every key once.
    for (_, key) in &small {
        get(&mut reader, key, settings.small)?;
    }
    let mut rounds = Vec::new();
    let bound = Instant::now() + Duration::from_secs(600);
    for round in 0..settings.rounds {
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        let (mut large_local, mut large_remote) = (Vec::new(), Vec::new());
        for _ in 0..settings.gets_per_key {
            for (owner, key) in &small {
                let took = get(&mut reader, key, settings.small)?;
                if *owner == 0 { &mut local } else { &mut remote }.push(took);
            }
            for (owner, key) in &large {
                let took = get(&mut reader, key, settings.large)?;
                if *owner == 0 {
                    &mut large_local
                } else {
                    &mut large_remote
                }
                .push(took);
            }
            if Instant::now() > bound {
                break;
            }
        }
        let figures = Round {
            local: Percentiles::of(&local),
            remote: Percentiles::of(&remote),
            large_local: Percentiles::of(&large_local),
            large_remote: Percentiles::of(&large_remote),
        };
        eprintln!(
            "bench kv: round {round}: local p50 {:.0} µs, remote p50 {:.0} µs ({:.2}x); 100 kB local {:.0} µs, remote {:.0} µs",
            figures.local.p50,
            figures.remote.p50,
            figures.remote.p50 / figures.local.p50.max(1e-9),
            figures.large_local.p50,
            figures.large_remote.p50
        );
        rounds.push(figures);
    }
    Ok(rounds)
}

fn spread(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
    (
        values.first().copied().unwrap_or(0.0),
        median,
        values.last().copied().unwrap_or(0.0),
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let show = |value: Option<f64>| value.map_or("?".to_string(), |v| format!("{v:.2}"));
        writeln!(
            f,
            "bench kv: Flotilla, {} cores, TCG, igb on a tap; one memcached connection on core 0; host load {} -> {}",
            s.cores,
            show(self.host_load.0),
            show(self.host_load.1)
        )?;
        writeln!(
            f,
            "{} rounds; each round gets {} keys of {} B ({} per core) {} times, and one {} B key per core",
            self.rounds.len(),
            s.keys_per_core * s.cores as usize,
            s.small,
            s.keys_per_core,
            s.gets_per_key,
            s.large
        )?;
        writeln!(
            f,
            "{:<6} {:>28} {:>28} {:>7} {:>14} {:>14}",
            "round",
            "local p10/p50/p90 µs",
            "remote p10/p50/p90 µs",
            "ratio",
            "100kB local",
            "100kB remote"
        )?;
        for (index, r) in self.rounds.iter().enumerate() {
            writeln!(
                f,
                "{index:<6} {:>28} {:>28} {:>6.2}x {:>11.0} µs {:>11.0} µs",
                format!("{:.0}/{:.0}/{:.0}", r.local.p10, r.local.p50, r.local.p90),
                format!(
                    "{:.0}/{:.0}/{:.0}",
                    r.remote.p10, r.remote.p50, r.remote.p90
                ),
                r.remote.p50 / r.local.p50.max(1e-9),
                r.large_local.p50,
                r.large_remote.p50
            )?;
        }
        let (low, median, high) = spread(
            self.rounds
                .iter()
                .map(|r| r.remote.p50 / r.local.p50.max(1e-9)),
        );
        let (local_low, local_median, local_high) = spread(self.rounds.iter().map(|r| r.local.p50));
        let (remote_low, remote_median, remote_high) =
            spread(self.rounds.iter().map(|r| r.remote.p50));
        writeln!(
            f,
            "p50 over rounds (min / median / max): local {local_low:.0} / {local_median:.0} / {local_high:.0} µs, remote {remote_low:.0} / {remote_median:.0} / {remote_high:.0} µs"
        )?;
        writeln!(
            f,
            "remote/local p50 ratio over rounds: {low:.2} / {median:.2} / {high:.2} (goal <= 1.5: {})",
            if median <= 1.5 { "met" } else { "not met" }
        )?;
        match (self.urpc_polled_ns, self.urpc_halted_ns) {
            (Some(polled), Some(halted)) => writeln!(
                f,
                "URPC round trip, median over pairs of the pair's p50: peer polling {:.1} µs, peer halted {:.1} µs -> IPI wake-up ≈ {:.1} µs (TCG)",
                polled / 1000.0,
                halted / 1000.0,
                (halted - polled) / 1000.0
            ),
            _ => writeln!(f, "URPC matrices: no figures on the console"),
        }
    }
}
