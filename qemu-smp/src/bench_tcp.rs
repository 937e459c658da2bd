//! `qemu-smp bench tcp`: TCP as a host, measured from the host's own Linux stack through a tap
//! device in a network namespace this benchmark creates (root), for Flotilla and for the Linux
//! baseline guest (`linux_guest`: Debian's Linux 6.1 with `echod`, a static epoll echo server on
//! port 7 that also answers HTTP on port 80) booted on the same QEMU line, NIC and cores in the
//! same run, by the same clients. Figures, not pass/fail:
//!
//! * bulk TCP echo: `bulk` bytes sent on one connection and read back as they come (a writer and
//!   a reader thread), and the same total over 16 connections at once: MB/s of payload echoed,
//!   first byte sent to last byte back;
//! * connection setup: connections opened, one byte echoed and closed, by 8 client threads for a
//!   fixed time: connections per second;
//! * `wrk` on HTTP (`GET /`, keep-alive) at 32, 1,000 and 10,000 connections for a few seconds:
//!   requests per second, p99 latency, socket errors (`ulimit -n 20000`: the host's hard limit).
//!
//! Each figure is measured `rounds` times per system (spread: min–max, and the median); the
//! systems alternate round by round so that both see the same host load. Every phase is bounded
//! in count and time.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::machine::{is_failure_line, Machine, MachineConfig, MachineError, Network};
use crate::tap::{TapError, TapNamespace, GUEST_ADDRESS};
use crate::{BuildError, DependencyError};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Guest cores (one NIC queue each).
    pub cores: u32,
    /// Rounds of every figure per system.
    pub rounds: usize,
    /// Bytes echoed in a bulk run (split evenly over the connections of the 16-connection run).
    pub bulk: usize,
    /// How long a connection-setup run lasts.
    pub setup_time: Duration,
    /// Connection counts of the `wrk` runs (0 skips HTTP).
    pub wrk_connections: Vec<u32>,
    /// How long each `wrk` run lasts.
    pub wrk_time: Duration,
    /// Extra kernel command-line options for Flotilla.
    pub cmdline: String,
    /// Measure the Linux guest too.
    pub linux: bool,
}

impl Settings {
    /// The settings on `cores` cores.
    pub fn new(cores: u32) -> Self {
        Self {
            cores,
            rounds: 3,
            bulk: 20 << 20,
            setup_time: Duration::from_secs(5),
            wrk_connections: vec![32, 1000, 10_000],
            wrk_time: Duration::from_secs(8),
            cmdline: String::new(),
            linux: true,
        }
    }
}

/// One `wrk` run.
#[derive(Clone, Debug, Default)]
pub struct WrkRun {
    /// Requests per second.
    pub requests_per_second: f64,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) and non-2xx responses.
    pub errors: u64,
    /// The errors by kind as wrk printed them (`connect 0, read 12, write 3, timeout 1`, then
    /// non-2xx responses if any); empty when there were none.
    pub error_kinds: String,
    /// What wrk printed, when it could not be read.
    pub note: String,
}

/// Every figure of one system, one entry per round.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Bulk echo on one connection, MB/s.
    pub bulk_one: Vec<f64>,
    /// Bulk echo over 16 connections, MB/s in total.
    pub bulk_sixteen: Vec<f64>,
    /// Connections set up (and one byte echoed) per second.
    pub setup: Vec<f64>,
    /// `wrk` runs by connection count.
    pub wrk: Vec<(u32, Vec<WrkRun>)>,
    /// Console lines that reported a failure.
    pub failures: Vec<String>,
    /// Flotilla's own view after each round (`/stats`: cycles per packet of the TCP paths,
    /// heap and TCP-budget high-water marks, most connections per core).
    pub details: Vec<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was asked for.
    pub settings: Settings,
    /// The host's 1-minute load average at the start and the end.
    pub host_load: (Option<f64>, Option<f64>),
    /// Flotilla.
    pub flotilla: Figures,
    /// The Linux guest (empty when not measured).
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
    /// The guest never accepted a TCP connection on the echo port.
    NeverServed(String),
    /// An echo came back wrong.
    BadEcho(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dependencies(e) => write!(f, "{e}"),
            Self::Build(e) => write!(f, "{e}"),
            Self::LinuxGuest(e) => write!(f, "{e}"),
            Self::Namespace(e) => write!(f, "bench tcp needs a network namespace: {e}"),
            Self::Machine(e) => write!(f, "{e}"),
            Self::JoinNamespace(e) => write!(f, "joining the benchmark's network namespace: {e}"),
            Self::Io { what, error } => write!(f, "{what}: {error}"),
            Self::NeverServed(console) => write!(
                f,
                "the guest never accepted a TCP connection on {GUEST_ADDRESS}:7; console:\n{console}"
            ),
            Self::BadEcho(what) => write!(f, "wrong echo: {what}"),
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

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
}

/// A booted guest in its namespace.
struct System {
    name: &'static str,
    namespace: TapNamespace,
    machine: Machine,
}

impl System {
    fn boot(name: &'static str, mut config: MachineConfig) -> Result<Self, BenchError> {
        let namespace_name = format!("flotilla-bench-tcp-{}-{name}", std::process::id());
        let namespace = crate::experiment::guest::guest_namespace(&namespace_name)
            .map_err(BenchError::Namespace)?;
        config.network = Network::Tap {
            namespace: namespace.name.clone(),
            tap: namespace.tap.clone(),
        };
        let machine = Machine::start(&config, false).map_err(BenchError::Machine)?;
        let system = Self {
            name,
            namespace,
            machine,
        };
        let ready = system.in_namespace(|| {
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                if let Ok(mut stream) =
                    TcpStream::connect_timeout(&guest(7), Duration::from_millis(500))
                {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut byte = [0u8; 1];
                    if stream.write_all(b"x").is_ok() && stream.read_exact(&mut byte).is_ok() {
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })?;
        if !ready {
            return Err(BenchError::NeverServed(system.machine.console().join("\n")));
        }
        eprintln!("bench tcp: {name} serving TCP echo");
        Ok(system)
    }

    /// Runs `work` on a thread that joined this system's namespace.
    fn in_namespace<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BenchError> {
        let path = format!("/run/netns/{}", self.namespace.name);
        std::thread::spawn(move || -> Result<T, BenchError> {
            let file = File::open(&path).map_err(io(format!("opening {path}")))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| BenchError::JoinNamespace(e.to_string()))?;
            Ok(work())
        })
        .join()
        .map_err(|_| BenchError::JoinNamespace("the client thread panicked".into()))?
    }

    fn failures(&self) -> Vec<String> {
        self.machine
            .console()
            .into_iter()
            .filter(|line| is_failure_line(line))
            .collect()
    }
}

/// Echoes `total` bytes over `connections` connections at once; returns MB/s (10^6 bytes) of
/// payload echoed, from the first byte sent to the last one back.
fn bulk_echo(total: usize, connections: usize) -> Result<f64, BenchError> {
    let per_connection = total / connections.max(1);
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect_timeout(&guest(7), Duration::from_secs(5))
            .map_err(io("connecting for bulk echo"))?;
        stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(io("setting a read timeout"))?;
        streams.push(stream);
    }
    let start = Instant::now();
    let mut threads = Vec::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let mut writer = stream.try_clone().map_err(io("cloning a stream"))?;
        let mut reader = stream;
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk: Vec<u8> = (0..65536).map(|i| (i * 31 + index) as u8).collect();
            let mut sent = 0;
            while sent < per_connection {
                let n = chunk.len().min(per_connection - sent);
                writer.write_all(&chunk[..n])?;
                sent += n;
            }
            Ok(())
        });
        let receiver = std::thread::spawn(move || -> Result<(), String> {
            let mut buffer = vec![0u8; 65536];
            let mut received = 0;
            while received < per_connection {
                let n = reader
                    .read(&mut buffer)
                    .map_err(|e| format!("after {received} of {per_connection} bytes: {e}"))?;
                if n == 0 {
                    return Err(format!("closed after {received} of {per_connection} bytes"));
                }
                for (offset, byte) in buffer[..n].iter().enumerate() {
                    let at = (received + offset) % 65536;
                    if *byte != (at * 31 + index) as u8 {
                        return Err(format!("byte {} differs", received + offset));
                    }
                }
                received += n;
            }
            let _ = reader.shutdown(Shutdown::Both);
            Ok(())
        });
        threads.push((sender, receiver));
    }
    for (sender, receiver) in threads {
        let sent = sender
            .join()
            .map_err(|_| BenchError::BadEcho("sender panicked".into()))?;
        sent.map_err(io("sending bulk data"))?;
        receiver
            .join()
            .map_err(|_| BenchError::BadEcho("receiver panicked".into()))?
            .map_err(BenchError::BadEcho)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((per_connection * connections) as f64 / elapsed / 1e6)
}

/// Opens connections (echoing one byte on each, then closing) from 8 threads for `time`;
/// returns connections per second.
fn setup_rate(time: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let done = Arc::clone(&done);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) =
                        TcpStream::connect_timeout(&guest(7), Duration::from_secs(2))
                    else {
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut byte = [0u8; 1];
                    if stream.write_all(b"s").is_ok() && stream.read_exact(&mut byte).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Parses wrk's `--latency` report.
fn parse_wrk(text: &str) -> WrkRun {
    let mut run = WrkRun::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => run.requests_per_second = rate.parse().unwrap_or(0.0),
            ["99%", latency] => run.p99 = parse_wrk_duration(latency),
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
                run.error_kinds = rest.join(" ");
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                run.errors += count.parse::<u64>().unwrap_or(0);
                if !run.error_kinds.is_empty() {
                    run.error_kinds.push_str(", ");
                }
                run.error_kinds.push_str(&format!("non-2xx {count}"));
            }
            _ => {}
        }
    }
    if run.requests_per_second == 0.0 {
        run.note = text.lines().rev().take(6).collect::<Vec<_>>().join(" | ");
    }
    run
}

fn parse_wrk_duration(text: &str) -> Duration {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    Duration::from_secs_f64(number.parse::<f64>().unwrap_or(0.0) * scale)
}

/// One wrk run at `connections` connections for `time` (threads: 2, the host's cores).
fn wrk(namespace: &TapNamespace, connections: u32, time: Duration) -> WrkRun {
    let script = format!(
        "ulimit -n 20000 && exec wrk --latency -t2 -c{connections} -d{}s --timeout 10s http://{GUEST_ADDRESS}/",
        time.as_secs().max(1)
    );
    let output = namespace.command("sh").args(["-c", &script]).output();
    match output {
        Ok(output) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            parse_wrk(&text)
        }
        Err(error) => WrkRun {
            note: format!("wrk did not run: {error}"),
            ..WrkRun::default()
        },
    }
}

/// Flotilla's `/stats` after a round, summarised: per core, the TCP paths' packets and cycles
/// per packet, the heap and TCP-budget high-water marks (MiB) and the most connections.
fn stats_summary(namespace: &TapNamespace) -> String {
    let output = namespace
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{GUEST_ADDRESS}/stats"),
        ])
        .output();
    let Ok(output) = output else {
        return "no /stats (curl did not run)".into();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return "no /stats (not JSON)".into();
    };
    let mut lines = Vec::new();
    for core in json["cores"].as_array().into_iter().flatten() {
        let mib =
            |key: &str| core["memory"][key].as_u64().unwrap_or(0) as f64 / (1u64 << 20) as f64;
        let mut line = format!(
            "core {}: {} polls, {} holds, {} cycles idle, heap high water {:.1} MiB of {:.0}, TCP budget high water {:.1} MiB of {:.0}, most connections {}",
            core["core"],
            core["polls"],
            core["rx_holds"],
            core["cycles_idle"],
            mib("heap_high_water"),
            mib("heap_size"),
            mib("tcp_high_water"),
            mib("tcp_budget"),
            core["memory"]["tcp_most_connections"]
        );
        for path in core["paths"].as_array().into_iter().flatten() {
            let name = path["path"].as_str().unwrap_or("");
            if name.starts_with("tcp:") && path["packets"].as_u64().unwrap_or(0) > 0 {
                line.push_str(&format!(
                    "; {name}: {} packets in, {} out, {} runs, {} cycles/packet (by stage {}), drops {}",
                    path["packets"],
                    path["tx_packets"],
                    path["runs"],
                    path["cycles_per_packet"],
                    path["cycles_by_stage"],
                    path["drops"]
                ));
            }
        }
        lines.push(line);
    }
    lines.join("\n  ")
}

/// One round of every figure on `system`, appended to `figures`.
fn round(system: &System, settings: &Settings, figures: &mut Figures) -> Result<(), BenchError> {
    let bulk = settings.bulk;
    let one = system.in_namespace(move || bulk_echo(bulk, 1))??;
    let sixteen = system.in_namespace(move || bulk_echo(bulk, 16))??;
    let time = settings.setup_time;
    let setup = if time.is_zero() {
        0.0
    } else {
        system.in_namespace(move || setup_rate(time))?
    };
    eprintln!(
        "bench tcp: {}: bulk {one:.1} MB/s (1 connection), {sixteen:.1} MB/s (16); setup {setup:.0}/s",
        system.name
    );
    figures.bulk_one.push(one);
    figures.bulk_sixteen.push(sixteen);
    figures.setup.push(setup);
    for &connections in &settings.wrk_connections {
        // Let the previous run's connections finish closing.
        std::thread::sleep(Duration::from_secs(2));
        let run = wrk(&system.namespace, connections, settings.wrk_time);
        eprintln!(
            "bench tcp: {}: wrk -c{connections}: {:.0} requests/s, p99 {:.1} ms, {} errors{} {}",
            system.name,
            run.requests_per_second,
            run.p99.as_secs_f64() * 1e3,
            run.errors,
            if run.error_kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", run.error_kinds)
            },
            run.note
        );
        match figures.wrk.iter_mut().find(|(c, _)| *c == connections) {
            Some((_, runs)) => runs.push(run),
            None => figures.wrk.push((connections, vec![run])),
        }
    }
    if system.name == "flotilla" {
        let summary = stats_summary(&system.namespace);
        eprintln!("bench tcp: flotilla /stats:\n  {summary}");
        figures.details.push(summary);
    }
    Ok(())
}

/// Runs the benchmark (progress on stderr).
pub fn run(settings: Settings) -> Result<Report, BenchError> {
    crate::ensure_dependencies(false).map_err(BenchError::Dependencies)?;
    let kernel = crate::build_kernel().map_err(BenchError::Build)?;
    let start_load = load_average();
    let cmdline = format!("log=warn urpc=off {}", settings.cmdline);
    let flotilla_config = MachineConfig::kernel(kernel, settings.cores, cmdline.trim_end());
    let (linux_config, linux_kernel) = if settings.linux {
        let linux = crate::linux_guest::prepare().map_err(BenchError::LinuxGuest)?;
        let mut config = MachineConfig::kernel(
            linux.kernel.clone(),
            settings.cores,
            crate::linux_guest::CMDLINE,
        );
        config.extra_args = linux.extra_args();
        (Some(config), linux.kernel_package)
    } else {
        (None, String::new())
    };
    let mut flotilla = Figures::default();
    let mut linux = Figures::default();
    // One guest at a time (the host has two cores); the systems alternate round by round.
    for index in 0..settings.rounds.max(1) {
        eprintln!("bench tcp: round {} of {}", index + 1, settings.rounds);
        let system = System::boot("flotilla", flotilla_config.clone())?;
        round(&system, &settings, &mut flotilla)?;
        flotilla.failures.extend(system.failures());
        drop(system);
        if let Some(config) = &linux_config {
            let system = System::boot("linux", config.clone())?;
            round(&system, &settings, &mut linux)?;
            drop(system);
        }
    }
    Ok(Report {
        settings,
        host_load: (start_load, load_average()),
        flotilla,
        linux,
        linux_kernel,
    })
}

/// `median (min–max)` of `values`, formatted with `precision` decimals.
fn spread(values: &[f64], precision: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    format!(
        "{median:.precision$} ({:.precision$}–{:.precision$})",
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.1}"));
        writeln!(
            f,
            "bench tcp: Flotilla and the Linux baseline guest ({}), {} cores each, igb on a tap device, TCG; {} rounds each, median (min–max); host load {} → {}",
            if self.linux_kernel.is_empty() { "not measured" } else { &self.linux_kernel },
            s.cores,
            s.rounds,
            load(self.host_load.0),
            load(self.host_load.1)
        )?;
        writeln!(
            f,
            "{:<40} {:>26} {:>26} {:>7}",
            "", "Flotilla", "Linux", "ratio"
        )?;
        let (fl, lx) = (&self.flotilla, &self.linux);
        let row =
            |f: &mut fmt::Formatter<'_>, name: &str, ours: &[f64], theirs: &[f64], p: usize| {
                let ratio = if theirs.is_empty() || median(theirs) == 0.0 {
                    "-".to_string()
                } else {
                    format!("{:.2}x", median(ours) / median(theirs))
                };
                writeln!(
                    f,
                    "{name:<40} {:>26} {:>26} {ratio:>7}",
                    spread(ours, p),
                    spread(theirs, p),
                )
            };
        row(
            f,
            &format!("bulk echo, 1 connection, MB/s ({} MB)", s.bulk >> 20),
            &fl.bulk_one,
            &lx.bulk_one,
            1,
        )?;
        row(
            f,
            "bulk echo, 16 connections, MB/s",
            &fl.bulk_sixteen,
            &lx.bulk_sixteen,
            1,
        )?;
        row(f, "connection setup, per second", &fl.setup, &lx.setup, 0)?;
        for (connections, runs) in &fl.wrk {
            let theirs: &[WrkRun] = lx
                .wrk
                .iter()
                .find(|(c, _)| c == connections)
                .map_or(&[], |(_, runs)| runs.as_slice());
            let rate = |runs: &[WrkRun]| {
                runs.iter()
                    .map(|r| r.requests_per_second)
                    .collect::<Vec<_>>()
            };
            let p99 = |runs: &[WrkRun]| {
                runs.iter()
                    .map(|r| r.p99.as_secs_f64() * 1e3)
                    .collect::<Vec<_>>()
            };
            let errors = |runs: &[WrkRun]| runs.iter().map(|r| r.errors as f64).collect::<Vec<_>>();
            row(
                f,
                &format!("wrk -c{connections}: requests/s"),
                &rate(runs),
                &rate(theirs),
                0,
            )?;
            row(
                f,
                &format!("wrk -c{connections}: p99 ms"),
                &p99(runs),
                &p99(theirs),
                1,
            )?;
            row(
                f,
                &format!("wrk -c{connections}: socket errors"),
                &errors(runs),
                &errors(theirs),
                0,
            )?;
            for run in runs.iter().chain(theirs).filter(|run| !run.note.is_empty()) {
                writeln!(f, "  note: {}", run.note)?;
            }
        }
        for line in &fl.failures {
            writeln!(f, "Flotilla console reported: {line}")?;
        }
        if let Some(last) = fl.details.last() {
            writeln!(f, "Flotilla's /stats after the last round:\n  {last}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let text = "Running 8s test @ http://10.0.2.15/\n  2 threads and 1000 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    20.11ms   10.00ms 200.00ms   80.00%\n  Latency Distribution\n     50%   18.00ms\n     75%   25.00ms\n     90%   30.00ms\n     99%    1.20s\n  170000 requests in 8.00s, 100.00MB read\n  Socket errors: connect 0, read 12, write 3, timeout 1\nRequests/sec:  21250.50\nTransfer/sec:     12.50MB\n";
        let run = parse_wrk(text);
        assert_eq!(run.requests_per_second, 21250.5);
        assert_eq!(run.p99, Duration::from_millis(1200));
        assert_eq!(run.errors, 16);
        assert_eq!(run.error_kinds, "connect 0, read 12, write 3, timeout 1");
        assert!(run.note.is_empty());
        assert_eq!(parse_wrk_duration("850.00us"), Duration::from_micros(850));
        assert!(!parse_wrk("wrk: command not found").note.is_empty());
    }

    #[test]
    fn spreads_read_as_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(spread(&[], 0), "-");
    }
}
