//! `qemu-smp bench memcached`: the memcached `get` round trip on one connection for a key the
//! connection's own core owns against keys each other core owns (which cross cores as peer
//! messages), from the host's Linux stack through a tap device in a network namespace (root).
//!
//! The local key is the baseline, measured in the same run: the rounds interleave owners (every
//! round does `gets` sequential gets of each owner's key), so drift in the host's scheduling of
//! the guest's vCPUs hits all of them alike. The report gives p50 and p99 over all samples, the
//! spread of the per-round medians, and each remote key's p50 as a ratio of the local key's.
//! Every phase is bounded in count and in time.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use crate::machine::{Machine, MachineConfig, MachineError, Network};
use crate::tap::{TapError, TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use crate::{BuildError, DependencyError};
use drivers::rss::{self, FlowTuple, DEFAULT_KEY};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Guest cores.
    pub cores: u32,
    /// Sequential gets of each owner's key per round.
    pub gets: u32,
    /// Rounds.
    pub rounds: u32,
    /// Value bytes.
    pub value: usize,
    /// Extra kernel command-line options (e.g. `poll_us=1000`).
    pub cmdline: String,
}

/// Round trips of one key.
#[derive(Clone, Debug)]
pub struct KeyFigures {
    /// The core that owns the key.
    pub owner: u16,
    /// Median over all samples.
    pub p50: Duration,
    /// 99th percentile over all samples.
    pub p99: Duration,
    /// The smallest and largest per-round median.
    pub round_medians: (Duration, Duration),
}

/// The result.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was asked for.
    pub settings: Settings,
    /// The core serving the connection.
    pub serving_core: u16,
    /// One entry per owner core (the serving core's own key first).
    pub keys: Vec<KeyFigures>,
    /// The host's 1-minute load average at the start.
    pub host_load: Option<f64>,
}

/// Why the benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// QEMU and friends are missing.
    Dependencies(DependencyError),
    /// The kernel did not build.
    Build(BuildError),
    /// The namespace could not be made (needs root).
    Namespace(TapError),
    /// QEMU could not start.
    Machine(MachineError),
    /// The client could not join the namespace.
    JoinNamespace(String),
    /// A socket operation failed, or an answer was wrong.
    Client(String),
    /// The client thread died.
    ClientPanicked,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dependencies(e) => write!(f, "{e}"),
            Self::Build(e) => write!(f, "{e}"),
            Self::Namespace(e) => write!(f, "bench memcached needs a network namespace: {e}"),
            Self::Machine(e) => write!(f, "{e}"),
            Self::JoinNamespace(e) => write!(f, "joining the benchmark's network namespace: {e}"),
            Self::Client(e) => write!(f, "memcached client: {e}"),
            Self::ClientPanicked => write!(f, "the benchmark's client thread panicked"),
        }
    }
}

impl std::error::Error for BenchError {}

fn client_error(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |error| BenchError::Client(format!("{what}: {error}"))
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted
        .get((sorted.len() * percent / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// One request and its whole answer (up to `end`).
fn exchange(stream: &mut TcpStream, request: &[u8], end: &[u8]) -> Result<Vec<u8>, BenchError> {
    stream.write_all(request).map_err(client_error("sending"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.ends_with(end) {
        let count = stream.read(&mut buffer).map_err(client_error("reading"))?;
        if count == 0 {
            return Err(BenchError::Client("the guest closed the connection".into()));
        }
        answer.extend_from_slice(&buffer[..count]);
    }
    Ok(answer)
}

/// The queue (= core) the NIC steers a flow from `port` on the host to memcached to.
fn serving_queue(port: u16, cores: u16) -> u16 {
    let table = rss::default_table(cores);
    let flow = FlowTuple::V4 {
        source: HOST_ADDRESS.parse::<Ipv4Addr>().expect("constant").octets(),
        destination: GUEST_ADDRESS
            .parse::<Ipv4Addr>()
            .expect("constant")
            .octets(),
        ports: Some((port, 11211)),
    };
    rss::queue_of(&table, flow.hash(&DEFAULT_KEY)).0
}

fn client(settings: &Settings) -> Result<(u16, Vec<KeyFigures>), BenchError> {
    let address: Ipv4Addr = GUEST_ADDRESS.parse().expect("constant");
    let guest = SocketAddr::V4(SocketAddrV4::new(address, 11211));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stream = loop {
        match TcpStream::connect_timeout(&guest, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => return Err(client_error("connecting")(error)),
        }
    };
    stream
        .set_nodelay(true)
        .map_err(client_error("TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(client_error("timeout"))?;
    let cores = settings.cores as u16;
    let port = stream
        .local_addr()
        .map_err(client_error("local address"))?
        .port();
    let serving = serving_queue(port, cores);
    // One key per owner, the serving core's first.
    let mut owners: Vec<u16> = vec![serving];
    owners.extend((0..cores).filter(|core| *core != serving));
    let keys: Vec<String> = owners
        .iter()
        .map(|owner| {
            (0..)
                .map(|n| format!("bench-{n}"))
                .find(|key| netd::app::memcached::key_owner(key.as_bytes(), cores) == *owner)
                .expect("a key for every core")
        })
        .collect();
    let value = vec![b'v'; settings.value];
    for key in &keys {
        let mut request = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        request.extend_from_slice(&value);
        request.extend_from_slice(b"\r\n");
        let answer = exchange(&mut stream, &request, b"\r\n")?;
        if answer != b"STORED\r\n" {
            return Err(BenchError::Client(format!(
                "set {key}: {:?}",
                String::from_utf8_lossy(&answer)
            )));
        }
    }
    let expected_length =
        |key: &str| format!("VALUE {key} 0 {}\r\n", value.len()).len() + value.len() + 7;
    // Warm up every path (ARP, first peer messages).
    for key in &keys {
        for _ in 0..50 {
            exchange(&mut stream, format!("get {key}\r\n").as_bytes(), b"END\r\n")?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); keys.len()];
    let mut medians: Vec<Vec<Duration>> = vec![Vec::new(); keys.len()];
    let limit = Instant::now() + Duration::from_secs(600);
    for _ in 0..settings.rounds {
        for (index, key) in keys.iter().enumerate() {
            let request = format!("get {key}\r\n").into_bytes();
            let mut round = Vec::with_capacity(settings.gets as usize);
            for _ in 0..settings.gets {
                if Instant::now() > limit {
                    break;
                }
                let sent = Instant::now();
                let answer = exchange(&mut stream, &request, b"END\r\n")?;
                round.push(sent.elapsed());
                if answer.len() != expected_length(key) {
                    return Err(BenchError::Client(format!(
                        "get {key}: {} bytes back",
                        answer.len()
                    )));
                }
            }
            round.sort_unstable();
            medians[index].push(percentile(&round, 50));
            samples[index].extend(round);
        }
    }
    let figures = owners
        .iter()
        .zip(samples.iter_mut().zip(medians.iter()))
        .map(|(owner, (all, medians))| {
            all.sort_unstable();
            KeyFigures {
                owner: *owner,
                p50: percentile(all, 50),
                p99: percentile(all, 99),
                round_medians: (
                    medians.iter().min().copied().unwrap_or_default(),
                    medians.iter().max().copied().unwrap_or_default(),
                ),
            }
        })
        .collect();
    Ok((serving, figures))
}

/// Runs the benchmark (progress on stderr).
pub fn run(settings: Settings) -> Result<Report, BenchError> {
    crate::ensure_dependencies(false).map_err(BenchError::Dependencies)?;
    let kernel = crate::build_kernel().map_err(BenchError::Build)?;
    let host_load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok());
    let name = format!("flotilla-bench-memcached-{}", std::process::id());
    let namespace = TapNamespace::create(&name).map_err(BenchError::Namespace)?;
    let cmdline = format!("log=warn urpc=off {}", settings.cmdline);
    let mut config = MachineConfig::kernel(kernel, settings.cores, cmdline.trim_end());
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    eprintln!(
        "bench memcached: {} cores, igb on {} in namespace {}, TCG; one connection, {} rounds of {} gets per key",
        settings.cores, namespace.tap, namespace.name, settings.rounds, settings.gets
    );
    let machine = Machine::start(&config, false).map_err(BenchError::Machine)?;
    let netns_path = format!("/run/netns/{name}");
    let client_settings = settings.clone();
    let thread = std::thread::spawn(move || -> Result<(u16, Vec<KeyFigures>), BenchError> {
        let file = File::open(&netns_path)
            .map_err(|e| BenchError::JoinNamespace(format!("{netns_path}: {e}")))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| BenchError::JoinNamespace(e.to_string()))?;
        client(&client_settings)
    });
    let result = thread.join().map_err(|_| BenchError::ClientPanicked)?;
    drop(machine);
    drop(namespace);
    let (serving_core, keys) = result?;
    Ok(Report {
        settings,
        serving_core,
        keys,
        host_load,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        writeln!(
            f,
            "memcached get round trip, one connection served by core {}, {} cores, {}-byte values, {} rounds × {} gets per key, command line '{}' (host load {})",
            self.serving_core,
            s.cores,
            s.value,
            s.rounds,
            s.gets,
            s.cmdline,
            self.host_load.map_or("unknown".into(), |load| format!("{load:.2}"))
        )?;
        writeln!(
            f,
            "| key owner | p50 | p99 | per-round p50 | p50 vs the local key |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        let local = self.keys.first().map_or(Duration::ZERO, |key| key.p50);
        for (index, key) in self.keys.iter().enumerate() {
            let owner = if index == 0 {
                format!("core {} (local)", key.owner)
            } else {
                format!("core {} (remote)", key.owner)
            };
            writeln!(
                f,
                "| {owner} | {:.0} µs | {:.0} µs | {:.0}–{:.0} µs | {:.2}× |",
                micros(key.p50),
                micros(key.p99),
                micros(key.round_medians.0),
                micros(key.round_medians.1),
                micros(key.p50) / micros(local).max(1e-9)
            )?;
        }
        Ok(())
    }
}
