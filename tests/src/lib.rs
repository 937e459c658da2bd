//! Shared helpers for the QEMU integration tests: build the kernel once, boot machines, collect
//! the machine-readable console lines.
#![forbid(unsafe_code)]

pub mod clients;
pub mod stats;
pub mod wire;

use drivers::nic::QueueId;
use drivers::rss::{self, FlowTuple, RedirectionTable, DEFAULT_KEY};
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use qemu_smp::machine::{is_failure_line, parse_ready_line};
pub use qemu_smp::{BootMedium, Machine, MachineConfig, Network};

/// The guest's address on the tap network (`ip=` default).
pub const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
/// The host side of the tap network.
pub const PEER_IP: [u8; 4] = [10, 0, 2, 2];

/// How long a test waits for a boot under TCG on a loaded 2-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The kernel image, built once per test process (QEMU and friends installed first if missing).
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            qemu_smp::ensure_dependencies(true).unwrap_or_else(|e| panic!("{e}"));
            qemu_smp::build_kernel().unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// Boots `config` and waits for every core to come online; returns the machine and its console.
pub fn boot_until_ready(config: &MachineConfig) -> (Machine, Vec<String>) {
    let mut machine = Machine::start(config, false).unwrap_or_else(|e| panic!("{e}"));
    let line = machine
        .wait_for("all cores online", BOOT_TIMEOUT, |l| {
            parse_ready_line(l).is_some() || is_failure_line(l)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        parse_ready_line(&line).is_some(),
        "boot failed: {line}\n{}",
        machine.console().join("\n")
    );
    let console = machine.console();
    (machine, console)
}

/// The `flotilla: core K online apic=X ...` lines as (core, apic) pairs, sorted by core.
pub fn online_cores(console: &[String]) -> Vec<(u32, u32)> {
    let mut cores: Vec<(u32, u32)> = console
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("flotilla: core ")?;
            let (core, rest) = rest.split_once(" online apic=")?;
            let apic = rest.split_whitespace().next()?;
            Some((core.parse().ok()?, apic.parse().ok()?))
        })
        .collect();
    cores.sort_unstable();
    cores
}

/// Asserts that exactly cores `0..n` came online, each once, with distinct APIC ids.
pub fn assert_all_online(console: &[String], n: u32) {
    let cores = online_cores(console);
    let indices: Vec<u32> = cores.iter().map(|(core, _)| *core).collect();
    assert_eq!(
        indices,
        (0..n).collect::<Vec<_>>(),
        "console:\n{}",
        console.join("\n")
    );
    let mut apics: Vec<u32> = cores.iter().map(|(_, apic)| *apic).collect();
    apics.sort_unstable();
    apics.dedup();
    assert_eq!(apics.len(), n as usize, "duplicate APIC ids: {cores:?}");
    let ready = console
        .iter()
        .find_map(|l| parse_ready_line(l))
        .expect("ready line");
    assert_eq!(ready.0, n);
}

/// Waits (at most `timeout` each) for `flotilla: core K alive after ...` reports until every
/// core of `expected` has reported; panics if `silent` reports.
pub fn wait_for_alive_reports(
    machine: &mut Machine,
    expected: &[u32],
    silent: u32,
    timeout: Duration,
) {
    let mut alive = std::collections::BTreeSet::new();
    while !expected.iter().all(|core| alive.contains(core)) {
        let line = machine
            .wait_for("alive reports", timeout, |l| l.contains(" alive after "))
            .unwrap_or_else(|e| panic!("{e}"));
        let core: u32 = line
            .strip_prefix("flotilla: core ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|core| core.parse().ok())
            .unwrap_or_else(|| panic!("malformed alive report: {line}"));
        assert_ne!(core, silent, "core {silent} should have stopped: {line}");
        alive.insert(core);
    }
}

/// Returns the first console line containing `needle`, from what was printed already or by
/// waiting for it; panics with the console's tail on a timeout or a failure line.
pub fn line_containing(machine: &mut Machine, what: &str, needle: &str) -> String {
    if let Some(line) = machine.console().into_iter().find(|l| l.contains(needle)) {
        return line;
    }
    let line = machine
        .wait_for(what, BOOT_TIMEOUT, |l| {
            l.contains(needle) || is_failure_line(l)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !is_failure_line(&line),
        "{line}\n{}",
        machine.console().join("\n")
    );
    line
}

// ---------------------------------------------------------------------------------------------
// Helpers of the network tests (tests/tests/net.rs, tests/tests/memcached.rs)
// ---------------------------------------------------------------------------------------------

/// The image to boot: `FLOTILLA_TEST_KERNEL` if set, else the workspace's kernel (built once).
pub fn image() -> PathBuf {
    std::env::var_os("FLOTILLA_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(kernel)
}

/// A namespace name no other test (or test process) uses at the same time.
pub fn unique_namespace(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "flotilla-test-{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails (never skips) unless this process runs as root: tap tests need `ip netns`.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "this test creates a network namespace and a tap device: run it as root (effective uid is {uid})"
    );
}

/// Fails with the install command unless `program` is on the PATH.
pub fn require_program(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{program}` is missing: run `bash qemu-smp/install-deps.sh` (Debian package {package})"
    );
}

/// A Python 3 that can import `module`: Debian's `/usr/bin/python3` first (where
/// `python3-pymemcache` installs), then whatever `python3` the PATH gives.
pub fn python_with(module: &str) -> String {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success());
        if ok {
            return candidate.to_string();
        }
    }
    panic!(
        "no python3 can import `{module}`: run `bash qemu-smp/install-deps.sh` (Debian packages python3 and python3-pymemcache)"
    );
}

/// Runs `command` to completion, killing it after `limit`; returns its output.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|mut stream| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let output = Output {
        status,
        stdout: out.next().unwrap_or_default(),
        stderr: out.next().unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "{description} did not finish within {limit:?}; it printed:\n{}",
        text(&output)
    );
    output
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Boots `config` and waits until every core is online and every core's network stack is up
/// (`netd: core K up`). Any fault, panic or "networking off" fails the test with the console.
pub fn boot_with_network(config: &MachineConfig, cores: u16) -> Machine {
    let mut machine = Machine::start(config, false).unwrap_or_else(|e| panic!("{e}"));
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let complete = |lines: &[String]| {
        lines.iter().any(|l| parse_ready_line(l).is_some())
            && (0..cores).all(|core| {
                let prefix = format!("netd: core {core} up");
                lines.iter().any(|l| l.starts_with(&prefix))
            })
    };
    let failed = |line: &str| is_failure_line(line) || line.contains("networking off");
    let early = machine.console();
    if !complete(&early) {
        seen.borrow_mut().extend(early);
        let line = machine
            .wait_for(
                "every core online with its network stack up",
                BOOT_TIMEOUT,
                |line| {
                    let mut seen = seen.borrow_mut();
                    seen.push(line.to_string());
                    failed(line) || complete(&seen)
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !failed(&line),
            "boot failed: {line}\nconsole:\n{}",
            machine.console().join("\n")
        );
    }
    machine
}

/// The console's last lines, for failure messages.
pub fn console_tail(machine: &Machine, lines: usize) -> String {
    let console = machine.console();
    let start = console.len().saturating_sub(lines);
    console[start..].join("\n")
}

/// Source ports (from `ports`) for flows 10.0.2.2:port → 10.0.2.15:`destination` that land on
/// each queue under `table`, `per_queue` of each, in queue-interleaved order: (port, queue).
pub fn ports_by_queue(
    table: &RedirectionTable,
    destination: u16,
    per_queue: usize,
    ports: std::ops::RangeInclusive<u16>,
) -> Vec<(u16, u16)> {
    let queues = usize::from(table.iter().map(|q| q & 0x0F).max().unwrap_or(0)) + 1;
    let mut found: Vec<Vec<u16>> = vec![Vec::new(); queues];
    let flow = FlowTuple::V4 {
        source: PEER_IP,
        destination: GUEST_IP,
        ports: Some((0, destination)),
    };
    for port in ports {
        let QueueId(queue) = rss::queue_of(table, flow.with_source_port(port).hash(&DEFAULT_KEY));
        let bucket = &mut found[usize::from(queue)];
        if bucket.len() < per_queue {
            bucket.push(port);
        }
        if found.iter().all(|b| b.len() == per_queue) {
            break;
        }
    }
    assert!(
        found.iter().all(|b| b.len() == per_queue),
        "port range too small to find {per_queue} ports per queue: {found:?}"
    );
    (0..per_queue)
        .flat_map(|i| (0..queues).map(move |q| (q, i)))
        .map(|(q, i)| (found[q][i], q as u16))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers of the tap tests (a machine on a tap device in a network namespace the test creates)
// ---------------------------------------------------------------------------------------------

/// The configuration of `cores` cores booting `image()` with `cmdline`, networked through the
/// tap device of `namespace`.
pub fn tap_config(namespace: &TapNamespace, cores: u16, cmdline: &str) -> MachineConfig {
    let mut config = MachineConfig::kernel(image(), u32::from(cores), cmdline);
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    config
}

/// Creates a fresh namespace (named after `what`, see [`unique_namespace`]) with a tap device,
/// boots `cores` cores with `cmdline` on it and waits until every network stack is up
/// ([`boot_with_network`]).
pub fn boot_on_tap(what: &str, cores: u16, cmdline: &str) -> (TapNamespace, Machine) {
    let namespace = TapNamespace::create(&unique_namespace(what)).unwrap_or_else(|e| panic!("{e}"));
    let machine = boot_with_network(&tap_config(&namespace, cores, cmdline), cores);
    (namespace, machine)
}

/// Pings the guest from `namespace` (`ping -c COUNT -W WAIT`) until a round is answered in full
/// (exit status 0 and ` 0% packet loss`), at most `rounds` rounds; returns whether one was and
/// the last round's output.
pub fn ping_until_answered(
    namespace: &TapNamespace,
    count: u32,
    wait_seconds: u32,
    rounds: u32,
) -> (bool, Output) {
    let mut last = None;
    for _ in 0..rounds {
        let output = run_bounded(
            namespace.command("ping").args([
                "-c",
                &count.to_string(),
                "-W",
                &wait_seconds.to_string(),
                GUEST_ADDRESS,
            ]),
            Duration::from_secs(30),
        );
        if output.status.success() && text(&output).contains(" 0% packet loss") {
            return (true, output);
        }
        last = Some(output);
    }
    (false, last.expect("at least one round of ping"))
}

/// Asserts that no console line reports a fault or a panic ([`is_failure_line`]); the message
/// is `a fault or panic{when}:` and the whole console.
pub fn assert_no_fault(console: &[String], when: &str) {
    assert!(
        console.iter().all(|line| !is_failure_line(line)),
        "a fault or panic{when}:\n{}",
        console.join("\n")
    );
}

/// Asserts that no monitor declared a core failed (no `saw core K fail` line); the message is
/// `a core was declared failed{when}:` and those lines.
pub fn assert_no_core_declared_failed(console: &[String], when: &str) {
    let failures: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("saw core") && line.contains("fail"))
        .collect();
    assert!(
        failures.is_empty(),
        "a core was declared failed{when}: {failures:?}"
    );
}

/// The pid of the QEMU process living in namespace `name` (found by its network namespace),
/// looked for for at most 5 s.
pub fn qemu_in_namespace(name: &str) -> u32 {
    let inode = std::fs::metadata(format!("/run/netns/{name}"))
        .expect("namespace file")
        .ino();
    for _ in 0..100 {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            if comm.starts_with("qemu-system") && net.ok() == Some(inode) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no QEMU process found in namespace {name}");
}
