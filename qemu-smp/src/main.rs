//! `qemu-smp`: build Flotilla, boot it in QEMU with N cores, make ISO images, run benchmarks.
//!
//! `cargo run -p qemu-smp -- run` boots 4 cores with an igb NIC on user networking;
//! `--exit-when-ready` ends with status 0 once every core is online (non-zero on a fault, a
//! failed boot or the timeout).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use qemu_smp::machine::{is_failure_line, parse_ready_line};
use qemu_smp::{Accel, BootMedium, Machine, MachineConfig, Network};

#[derive(Parser)]
#[command(
    name = "qemu-smp",
    version,
    about = "Build and boot Flotilla, the multikernel network OS, in QEMU"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetworkChoice {
    /// igb NIC on QEMU user networking, host ports forwarded to the guest (see README).
    User,
    /// igb NIC on a tap device in a new network namespace `flotilla` (root): the host side is
    /// 10.0.2.2/24, the guest 10.0.2.15/24; run clients with `ip netns exec flotilla ...`.
    Tap,
    /// No NIC.
    None,
}

#[derive(clap::Args, Clone)]
struct MachineArgs {
    /// Number of cores (1..=64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    cores: u32,
    /// Memory: a number of MiB, or with a suffix M or G (e.g. 512M, 2G).
    #[arg(long, default_value = "1G", value_parser = parse_memory)]
    mem: u32,
    /// QEMU accelerator: tcg (default) or kvm (opt-in, needs /dev/kvm).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Split cores and memory into this many NUMA nodes (QEMU then gives an SRAT).
    #[arg(long, default_value_t = 0)]
    numa: u32,
    /// Kernel command line (e.g. "log=debug").
    #[arg(long, default_value = "log=info")]
    cmdline: String,
    /// Boot from a GRUB ISO instead of QEMU's -kernel.
    #[arg(long)]
    iso: bool,
    /// With --iso: boot under UEFI (OVMF) instead of SeaBIOS.
    #[arg(long, requires = "iso")]
    uefi: bool,
}

#[derive(Subcommand)]
enum Commands {
    /// Build the kernel and boot it in QEMU (serial console on this terminal; Ctrl-C to stop).
    Run {
        #[command(flatten)]
        machine: MachineArgs,
        /// The network.
        #[arg(long, value_enum, default_value_t = NetworkChoice::User)]
        net: NetworkChoice,
        /// Exit 0 once all cores are online; non-zero on a fault, a failed boot or the timeout.
        #[arg(long)]
        exit_when_ready: bool,
        /// Seconds to wait with --exit-when-ready.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// With --net user: forward host port HOST on 127.0.0.1 to guest port GUEST, as
        /// `[tcp:|udp:]HOST:GUEST` (TCP if not named); repeatable; replaces the default for that
        /// guest port. Defaults: 8080→80, 7007→7 (TCP and UDP), 11211→11211; a busy default is
        /// replaced by a free port, and the console says which.
        #[arg(long, value_name = "[PROTO:]HOST:GUEST", value_parser = qemu_smp::forward::parse_forward)]
        forward: Vec<qemu_smp::forward::Forward>,
        #[command(flatten)]
        debug: qemu_smp::debug::DebugArgs,
        /// Extra arguments for QEMU, after `--`.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Build the kernel image and print its path on the last line.
    Build,
    /// Attach gdb to a machine started with `run --gdb`: the kernel ELF's symbols, Flotilla's
    /// gdb extension (qemu-smp/gdb/flotilla.py), thread N = core N-1.
    Gdb(qemu_smp::debug::GdbArgs),
    /// Build a GRUB ISO (BIOS and UEFI) and print its path on the last line.
    Iso {
        /// Where to write the ISO.
        #[arg(long, default_value = "target/flotilla.iso")]
        output: PathBuf,
        /// Kernel command line baked into grub.cfg.
        #[arg(long, default_value = "log=info")]
        cmdline: String,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Run an experiment (`experiment list` names them): CSV, PNG and provenance in --out.
    Experiment(qemu_smp::experiment::ExperimentArgs),
    /// Install QEMU, OVMF and the GRUB tools (Debian, as root) or print how to; add the kernel's
    /// Rust target and components (rust-toolchain.toml) to the toolchain with rustup.
    Setup,
    /// Run every coverage-guided fuzz target (fuzz/, cargo-fuzz on nightly) for N minutes each,
    /// one at a time; prints executions per target (docs/fuzzing.md).
    Fuzz(qemu_smp::fuzz::FuzzArgs),
    /// Run every test: host unit/property tests and the QEMU integration tests
    /// (`cargo test --workspace`), then the loom model tests of the URPC channel.
    Test,
}

#[derive(Subcommand)]
enum Bench {
    /// QEMU start → all cores online, median of several boots.
    Boot {
        /// Number of cores.
        #[arg(long, default_value_t = 4)]
        cores: u32,
        /// Number of boots.
        #[arg(long, default_value_t = 7)]
        runs: u32,
    },
    /// UDP/TCP echo round trips, UDP throughput and boot-to-serving time over a tap device in a
    /// network namespace (root), next to a Linux 6.1 guest on the same QEMU, NIC and cores.
    Echo {
        /// Number of cores.
        #[arg(long, default_value_t = 2)]
        cores: u32,
        /// Extra kernel command-line options for the guest (e.g. "poll_us=1000").
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// TCP as a host: bulk echo MB/s on 1 and 16 connections, connection setup rate, and wrk on
    /// HTTP at 32, 1,000 and 10,000 connections, next to a Linux 6.1 guest on the same QEMU, NIC
    /// and cores, over a tap device (root).
    Tcp {
        /// Number of cores.
        #[arg(long, default_value_t = 4)]
        cores: u32,
        /// Rounds of every figure per system.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// MiB echoed per bulk run.
        #[arg(long, default_value_t = 20)]
        bulk_mb: usize,
        /// wrk connection counts, comma-separated (empty: no HTTP runs).
        #[arg(long, default_value = "32,1000,10000")]
        wrk: String,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 8)]
        wrk_seconds: u64,
        /// Seconds of the connection-setup run (0: none).
        #[arg(long, default_value_t = 5)]
        setup_seconds: u64,
        /// Skip the Linux guest.
        #[arg(long)]
        no_linux: bool,
        /// Extra kernel command-line options for Flotilla (e.g. "netd.tcp_buffer_kb=64").
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// memcached get round trips on one connection, local key vs remote key, and the IPI
    /// wake-up (URPC round trip with the peer halted vs polling), over a tap device (root).
    Kv {
        /// Number of cores.
        #[arg(long, default_value_t = 4)]
        cores: u32,
        /// Rounds (the report gives each, and the spread).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Bytes of the one large value per core (0: none).
        #[arg(long, default_value_t = 100_000)]
        large: usize,
        /// URPC matrix rounds a pair, polled and halted (0: none).
        #[arg(long, default_value_t = 200)]
        matrix_rounds: u32,
        /// Boot this kernel image instead of building the workspace's (to compare kernels).
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// The in-kernel URPC round-trip matrix (every ordered pair of cores), as CSV.
    Urpc {
        /// Number of cores.
        #[arg(long, default_value_t = 4)]
        cores: u32,
        /// Round trips per pair.
        #[arg(long, default_value_t = 1000)]
        rounds: u32,
        /// Also write the CSV to this file.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
}

fn parse_memory(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('G' | 'g') => (&text[..text.len() - 1], 1024),
        Some('M' | 'm') => (&text[..text.len() - 1], 1),
        _ => (text, 1),
    };
    let value: u32 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a memory size (e.g. 512M, 2G)"))?;
    let mb = value
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))?;
    if mb < 64 {
        return Err(format!("'{text}': Flotilla needs at least 64M"));
    }
    Ok(mb)
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("qemu-smp: {message}");
    ExitCode::FAILURE
}

fn prepare(machine: &MachineArgs, exit_when_ready: bool) -> Result<MachineConfig, ExitCode> {
    qemu_smp::ensure_dependencies(machine.iso).map_err(fail)?;
    let kernel = qemu_smp::build_kernel().map_err(fail)?;
    let mut cmdline = machine.cmdline.clone();
    if exit_when_ready {
        cmdline.push_str(" exit=ready");
    }
    let mut config = MachineConfig::kernel(kernel.clone(), machine.cores, &cmdline);
    config.memory_mb = machine.mem;
    config.accel = machine.accel;
    config.numa_nodes = machine.numa;
    if machine.iso {
        let output = qemu_smp::workspace_root()
            .join("target")
            .join(format!("flotilla-{}.iso", std::process::id()));
        let iso = qemu_smp::build_iso(&kernel, &cmdline, &output).map_err(fail)?;
        let uefi = if machine.uefi {
            Some(
                qemu_smp::Firmware::find()
                    .ok_or_else(|| fail("OVMF not found (apt-get install ovmf)"))?
                    .ovmf,
            )
        } else {
            None
        };
        config.medium = BootMedium::Iso { path: iso, uefi };
    }
    Ok(config)
}

/// Settings of `run` beyond the machine itself.
struct RunOptions {
    net: NetworkChoice,
    exit_when_ready: bool,
    timeout: u64,
    forward: Vec<qemu_smp::forward::Forward>,
    debug: qemu_smp::debug::DebugArgs,
    qemu_args: Vec<String>,
}

fn run(machine: MachineArgs, options: RunOptions) -> ExitCode {
    let RunOptions {
        net,
        exit_when_ready,
        timeout,
        forward: forwards,
        debug,
        qemu_args,
    } = options;
    if !forwards.is_empty() && net != NetworkChoice::User {
        return fail("--forward applies to --net user only");
    }
    let mut config = match prepare(&machine, exit_when_ready) {
        Ok(config) => config,
        Err(code) => return code,
    };
    config.extra_args = qemu_args;
    let mut _namespace = None;
    match net {
        NetworkChoice::User => {
            use qemu_smp::forward;
            let resolved = match forward::resolve(
                &forwards,
                forward::host_port_free,
                forward::any_free_port,
            ) {
                Ok(resolved) => resolved,
                Err(message) => return fail(message),
            };
            for note in &resolved.notes {
                eprintln!("qemu-smp: {note}");
            }
            let described: Vec<String> = resolved
                .rules
                .iter()
                .map(|(rule, what)| format!("{rule} ({what})"))
                .collect();
            eprintln!(
                "qemu-smp: user networking; forwarded: {}",
                described.join(", ")
            );
            config.network = Network::User(
                resolved
                    .rules
                    .iter()
                    .map(|(rule, _)| (rule.proto.name(), rule.host, rule.guest))
                    .collect(),
            );
        }
        NetworkChoice::Tap => {
            let namespace = match qemu_smp::tap::TapNamespace::create("flotilla") {
                Ok(namespace) => namespace,
                Err(e) => return fail(e),
            };
            eprintln!(
                "qemu-smp: namespace 'flotilla': host {}/{} on {}, guest {}; e.g. `ip netns exec flotilla ping {}`",
                qemu_smp::tap::HOST_ADDRESS,
                qemu_smp::tap::PREFIX,
                namespace.tap,
                qemu_smp::tap::GUEST_ADDRESS,
                qemu_smp::tap::GUEST_ADDRESS
            );
            config.network = Network::Tap {
                namespace: namespace.name.clone(),
                tap: namespace.tap.clone(),
            };
            _namespace = Some(namespace);
        }
        NetworkChoice::None => {}
    }
    match qemu_smp::debug::configure(
        &mut config,
        &debug,
        &qemu_smp::kernel_image_path(),
        exit_when_ready,
    ) {
        Ok(notes) => notes.iter().for_each(|note| eprintln!("qemu-smp: {note}")),
        Err(e) => return fail(e),
    }
    eprintln!(
        "qemu-smp: qemu-system-x86_64 {}",
        config.qemu_args().join(" ")
    );
    let mut vm = match Machine::start(&config, true) {
        Ok(vm) => vm,
        Err(e) => return fail(e),
    };
    if !exit_when_ready {
        return match vm.wait() {
            Some(0) | None => ExitCode::SUCCESS,
            Some(code) => fail(format!("QEMU exited with status {code}")),
        };
    }
    let result = vm.wait_for("all cores online", Duration::from_secs(timeout), |line| {
        parse_ready_line(line).is_some() || is_failure_line(line)
    });
    let _ = cleanup_iso(&config);
    match result {
        Ok(line) if parse_ready_line(&line).is_some() => ExitCode::SUCCESS,
        Ok(line) => fail(format!("boot failed: {line}")),
        Err(e) => fail(e),
    }
}

fn cleanup_iso(config: &MachineConfig) -> std::io::Result<()> {
    if let BootMedium::Iso { path, .. } = &config.medium {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn bench_boot(cores: u32, runs: u32) -> ExitCode {
    let args = MachineArgs {
        cores,
        mem: 1024,
        accel: Accel::Tcg,
        numa: 0,
        cmdline: "log=warn".into(),
        iso: false,
        uefi: false,
    };
    let config = match prepare(&args, true) {
        Ok(config) => config,
        Err(code) => return code,
    };
    println!("bench boot: {cores} cores, TCG, {runs} runs (QEMU start -> 'all cores online' on the host clock)");
    let mut host_ms = Vec::new();
    let mut kernel_ms = Vec::new();
    for run in 1..=runs.max(1) {
        let start = Instant::now();
        let mut vm = match Machine::start(&config, false) {
            Ok(vm) => vm,
            Err(e) => return fail(e),
        };
        match vm.wait_for("all cores online", Duration::from_secs(60), |l| {
            parse_ready_line(l).is_some() || is_failure_line(l)
        }) {
            Ok(line) => match parse_ready_line(&line) {
                Some((_, kernel)) => {
                    let host = start.elapsed().as_secs_f64() * 1000.0;
                    println!("  run {run}: {host:.1} ms host, {kernel:.1} ms in-kernel (entry -> all online)");
                    host_ms.push(host);
                    kernel_ms.push(kernel);
                }
                None => return fail(format!("boot failed: {line}")),
            },
            Err(e) => return fail(e),
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let host = median(&mut host_ms);
    let kernel = median(&mut kernel_ms);
    println!("median: {host:.1} ms QEMU start -> all {cores} cores online (min {:.1}, max {:.1}); in-kernel {kernel:.1} ms", host_ms[0], host_ms[host_ms.len() - 1]);
    println!(
        "vs Linux 6.1 guest on the same QEMU (~5000 ms): {:.1}x faster",
        5000.0 / host
    );
    println!(
        "vs bare 4-core bring-up reference (240 ms): {:.2}x; target < 500 ms: {}",
        host / 240.0,
        if host < 500.0 { "met" } else { "not met" }
    );
    ExitCode::SUCCESS
}

fn bench_urpc(cores: u32, rounds: u32, csv: Option<PathBuf>) -> ExitCode {
    let args = MachineArgs {
        cores,
        mem: 1024,
        accel: Accel::Tcg,
        numa: 0,
        cmdline: format!("log=warn urpc=matrix:{rounds}"),
        iso: false,
        uefi: false,
    };
    let config = match prepare(&args, false) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut vm = match Machine::start(&config, false) {
        Ok(vm) => vm,
        Err(e) => return fail(e),
    };
    let timeout = Duration::from_secs(60 + u64::from(cores * cores) * u64::from(rounds) / 200);
    let done = vm.wait_for("urpc: matrix complete", timeout, |l| {
        l.starts_with("urpc: matrix complete") || is_failure_line(l)
    });
    let summary = match done {
        Ok(line) if line.starts_with("urpc:") => line,
        Ok(line) => return fail(format!("boot failed: {line}")),
        Err(e) => return fail(e),
    };
    let mut table = String::from("from,to,p50_cycles,p99_cycles\n");
    let mut grid = vec![vec![String::from("-"); cores as usize]; cores as usize];
    for line in vm.console() {
        let Some(rest) = line.strip_prefix("urpc: rtt ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(pair), Some(p50), Some(p99)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some((a, b)) = pair.split_once("->") else {
            continue;
        };
        let (Some(p50), Some(p99)) = (p50.strip_prefix("p50="), p99.strip_prefix("p99=")) else {
            table.push_str(&format!("{a},{b},,\n"));
            continue;
        };
        table.push_str(&format!("{a},{b},{p50},{p99}\n"));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            if a < grid.len() && b < grid.len() {
                grid[a][b] = p50.to_string();
            }
        }
    }
    print!("{table}");
    println!("p50 round trip in cycles, row = pinging core, column = answering core:");
    print!("{:>6}", "");
    for b in 0..cores {
        print!("{b:>10}");
    }
    println!();
    for (a, row) in grid.iter().enumerate() {
        print!("{a:>6}");
        for cell in row {
            print!("{cell:>10}");
        }
        println!();
    }
    println!("{summary}");
    println!("note: TCG runs one host thread per guest core on a 2-core host; cycles are QEMU's virtual TSC, not hardware cycles.");
    if let Some(path) = csv {
        if let Err(e) = std::fs::write(&path, table) {
            return fail(format!("{}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

fn run_tests() -> ExitCode {
    if let Err(e) = qemu_smp::ensure_dependencies(true) {
        return fail(e);
    }
    let root = qemu_smp::workspace_root();
    if let Err(e) = qemu_smp::ensure_toolchain(&root) {
        return fail(e);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps: [(&str, Vec<&str>, Option<&str>); 2] = [
        // One test at a time: QEMU tests each run several guest cores on this host's few cores,
        // and two at once starve each other's guests (timeouts, false failure verdicts). Every
        // test binary runs even after one fails, so a run reports every failure.
        (
            "host and QEMU tests",
            vec![
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ],
            None,
        ),
        (
            "loom model tests of the URPC channel",
            vec![
                "test",
                "-p",
                "urpc",
                "--release",
                "--lib",
                "--target-dir",
                "target/loom",
                "loom",
            ],
            Some("--cfg loom"),
        ),
    ];
    let (mut passed, mut failed) = (0u64, 0u64);
    for (name, args, rustflags) in steps {
        eprintln!("qemu-smp test: {name}: cargo {}", args.join(" "));
        let mut command = std::process::Command::new(&cargo);
        command
            .current_dir(&root)
            .args(&args)
            .stdout(std::process::Stdio::piped());
        match rustflags {
            Some(flags) => command.env("RUSTFLAGS", flags),
            None => command.env_remove("RUSTFLAGS"),
        };
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return fail(format!("could not run cargo: {e}")),
        };
        // Echo the test output as it comes, and add up libtest's "test result" lines.
        let stdout = child.stdout.take().expect("stdout is piped");
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                        .and_then(|n| n.split_whitespace().last())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += count(" passed");
                failed += count(" failed");
            }
        }
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                println!("tests: {passed} passed, {failed} failed");
                return fail(format!("{name} failed ({status})"));
            }
            Err(e) => return fail(format!("cargo: {e}")),
        }
    }
    println!("tests: {passed} passed, {failed} failed");
    eprintln!("qemu-smp test: all test suites passed");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Run {
            machine,
            net,
            exit_when_ready,
            timeout,
            forward,
            debug,
            qemu_args,
        } => run(
            machine,
            RunOptions {
                net,
                exit_when_ready,
                timeout,
                forward,
                debug,
                qemu_args,
            },
        ),
        Commands::Build => match qemu_smp::build_kernel() {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Commands::Gdb(args) => match qemu_smp::debug::attach(&args) {
            Ok(status) if status.success() => ExitCode::SUCCESS,
            Ok(status) => fail(format!("gdb exited with {status}")),
            Err(e) => fail(e),
        },
        Commands::Iso { output, cmdline } => {
            if let Err(e) = qemu_smp::ensure_dependencies(true) {
                return fail(e);
            }
            let kernel = match qemu_smp::build_kernel() {
                Ok(kernel) => kernel,
                Err(e) => return fail(e),
            };
            match qemu_smp::build_iso(&kernel, &cmdline, &output) {
                Ok(path) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Commands::Bench {
            which: Bench::Boot { cores, runs },
        } => bench_boot(cores, runs),
        Commands::Bench {
            which: Bench::Urpc { cores, rounds, csv },
        } => bench_urpc(cores, rounds, csv),
        Commands::Bench {
            which: Bench::Echo { cores, cmdline },
        } => {
            if let Err(e) = qemu_smp::ensure_dependencies(false) {
                return fail(e);
            }
            let mut settings = qemu_smp::bench_echo::Settings::new(cores);
            settings.cmdline = cmdline;
            match qemu_smp::bench_echo::run_with(settings) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Commands::Bench {
            which:
                Bench::Tcp {
                    cores,
                    rounds,
                    bulk_mb,
                    wrk,
                    wrk_seconds,
                    setup_seconds,
                    no_linux,
                    cmdline,
                },
        } => {
            let mut settings = qemu_smp::bench_tcp::Settings::new(cores);
            settings.rounds = rounds;
            settings.bulk = bulk_mb << 20;
            settings.wrk_connections = wrk
                .split(',')
                .filter_map(|count| count.trim().parse().ok())
                .collect();
            settings.wrk_time = std::time::Duration::from_secs(wrk_seconds);
            settings.setup_time = std::time::Duration::from_secs(setup_seconds);
            settings.linux = !no_linux;
            settings.cmdline = cmdline;
            match qemu_smp::bench_tcp::run(settings) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Commands::Bench {
            which:
                Bench::Kv {
                    cores,
                    rounds,
                    large,
                    matrix_rounds,
                    kernel,
                },
        } => {
            let mut settings = qemu_smp::bench_kv::Settings::new(cores);
            settings.rounds = rounds;
            settings.matrix_rounds = matrix_rounds;
            settings.large = large;
            settings.kernel = kernel;
            match qemu_smp::bench_kv::run(settings) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Commands::Test => run_tests(),
        Commands::Fuzz(args) => qemu_smp::fuzz::run(&args),
        Commands::Experiment(args) => match qemu_smp::experiment::command(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Commands::Setup => match qemu_smp::ensure_dependencies(true)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                qemu_smp::ensure_toolchain(&qemu_smp::workspace_root()).map_err(|e| e.to_string())
            }) {
            Ok(()) => {
                println!(
                    "qemu-smp: QEMU, OVMF, the GRUB tools and the kernel's Rust target are present"
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}
