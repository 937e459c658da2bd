//! Shared helpers for the QEMU integration tests: build the kernel once, boot machines, collect
//! the machine-readable console lines.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use qemu_smp::machine::{is_failure_line, parse_ready_line};
pub use qemu_smp::{BootMedium, Machine, MachineConfig, Network};

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
