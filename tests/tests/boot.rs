//! Boot tests: real kernel images in QEMU (TCG), checked from the serial console.

use flotilla_tests::*;
use std::time::Duration;

fn boot_cores(n: u32) {
    let config = MachineConfig::kernel(kernel(), n, "log=info exit=ready");
    let (_machine, console) = boot_until_ready(&config);
    assert_all_online(&console, n);
}

#[test]
fn boots_1_core() {
    boot_cores(1);
}

#[test]
fn boots_2_cores() {
    boot_cores(2);
}

#[test]
fn boots_4_cores() {
    boot_cores(4);
}

#[test]
fn boots_8_cores() {
    boot_cores(8);
}

#[test]
fn boots_16_cores() {
    boot_cores(16);
}

#[test]
fn numa_nodes_from_srat_give_each_core_local_memory() {
    let mut config = MachineConfig::kernel(kernel(), 4, "exit=ready");
    config.numa_nodes = 2;
    let (_machine, console) = boot_until_ready(&config);
    assert_all_online(&console, 4);
    for (core, node) in [(0, 0), (1, 0), (2, 1), (3, 1)] {
        let prefix = format!("flotilla: core {core} online apic={core} node={node} ");
        assert!(
            console.iter().any(|l| l.starts_with(&prefix)),
            "no '{prefix}' in:\n{}",
            console.join("\n")
        );
    }
}

fn iso_boot(uefi: bool) {
    let dir = std::env::temp_dir().join(format!("flotilla-iso-{}-{}", std::process::id(), uefi));
    std::fs::create_dir_all(&dir).unwrap();
    let iso = qemu_smp::build_iso(&kernel(), "log=info exit=ready", &dir.join("flotilla.iso"))
        .unwrap_or_else(|e| panic!("{e}"));
    let firmware = uefi.then(|| qemu_smp::Firmware::find().expect("OVMF installed").ovmf);
    let mut config = MachineConfig::kernel(kernel(), 2, "");
    config.medium = BootMedium::Iso {
        path: iso,
        uefi: firmware,
    };
    let (_machine, console) = boot_until_ready(&config);
    assert_all_online(&console, 2);
    assert!(
        console
            .iter()
            .any(|l| l.contains("Flotilla booting (Multiboot2)")),
        "not booted by GRUB:\n{}",
        console.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grub_iso_boots_under_seabios() {
    iso_boot(false);
}

#[test]
fn grub_iso_boots_under_ovmf() {
    iso_boot(true);
}

#[test]
fn a_fault_on_one_core_is_reported_and_the_others_keep_running() {
    let config = MachineConfig::kernel(kernel(), 4, "fault=2:ud");
    let mut machine = Machine::start(&config, false).unwrap();
    let fault = machine
        .wait_for("the fault report", BOOT_TIMEOUT, |l| {
            l.starts_with("flotilla: fault")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fault.starts_with("flotilla: fault core=2 vector=6 (#UD invalid opcode) error=0x0 rip=0x"),
        "{fault}"
    );
    let rip = fault
        .split("rip=0x")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert!(
        u64::from_str_radix(rip, 16).unwrap() >= 0x10_0000,
        "rip inside the kernel image: {fault}"
    );
    wait_for_alive_reports(&mut machine, &[0, 1, 3], 2, Duration::from_secs(60));
    let console = machine.console();
    let fault_at = console
        .iter()
        .position(|l| l.starts_with("flotilla: fault"))
        .unwrap();
    let last_alive = console
        .iter()
        .rposition(|l| l.contains(" alive after "))
        .unwrap();
    assert!(
        last_alive > fault_at,
        "the survivors reported after the fault"
    );
    assert!(!console
        .iter()
        .any(|l| l.starts_with("flotilla: core 2 alive")));
}

#[test]
fn a_bad_command_line_option_is_named_and_the_machine_still_boots() {
    let config = MachineConfig::kernel(kernel(), 2, "log=loud colour=red exit=ready");
    let (_machine, console) = boot_until_ready(&config);
    assert!(
        console
            .iter()
            .any(|l| l == "flotilla: command line: 'log=loud': bad value, default kept"),
        "{}",
        console.join("\n")
    );
    assert!(console
        .iter()
        .any(|l| l == "flotilla: command line: 'colour=red': unknown option, ignored"));
    assert_all_online(&console, 2);
}

#[test]
fn urpc_latency_matrix_covers_every_pair_of_4_cores() {
    let config = MachineConfig::kernel(kernel(), 4, "urpc=matrix:50");
    let mut machine = Machine::start(&config, false).unwrap();
    let summary = machine
        .wait_for("the matrix summary", BOOT_TIMEOUT, |l| {
            l.starts_with("urpc: matrix complete") || is_failure_line(l)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        summary.starts_with("urpc: matrix complete, 4 cores, 12 of 12 pairs answered"),
        "{summary}\n{}",
        machine.console().join("\n")
    );
    let console = machine.console();
    for a in 0..4 {
        for b in (0..4).filter(|&b| b != a) {
            let prefix = format!("urpc: rtt {a}->{b} p50=");
            let line = console
                .iter()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {prefix}"));
            let p50: u64 = line[prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let p99: u64 = line
                .split("p99=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(p50 > 0 && p99 >= p50, "{line}");
        }
    }
}
