//! `urpc-matrix`: the round-trip time of a URPC message between every ordered pair of cores,
//! measured inside the kernel (`urpc=matrix:ROUNDS`: core A sends a cache-line message to core
//! B and waits for the answer, ROUNDS times per pair, timed with the TSC), drawn as a heat map:
//! the Multikernel paper's Table 2 / Figure 3 (Baumann et al., SOSP 2009), which showed the
//! cost of a cache-line round trip between cores of one package and across packages.

use super::csv::{Cell, Table};
use super::{plot, Context, Experiment, ExperimentError, Figure};
use crate::machine::{is_failure_line, Machine, MachineConfig};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "urpc-matrix",
    about: "URPC round trip between every ordered pair of 8 cores, in TSC cycles (Multikernel SOSP'09 Table 2 / Fig. 3)",
    columns: &["from", "to", "p50_cycles", "p99_cycles"],
    run,
};

/// Parses `urpc: rtt A->B p50=X p99=Y ...` into (A, B, p50, p99).
pub fn parse_line(line: &str) -> Option<(u32, u32, Option<u64>, Option<u64>)> {
    let rest = line.strip_prefix("urpc: rtt ")?;
    let mut words = rest.split_whitespace();
    let (a, b) = words.next()?.split_once("->")?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    let mut p50 = None;
    let mut p99 = None;
    for word in words {
        if let Some(value) = word.strip_prefix("p50=") {
            p50 = value.parse().ok();
        } else if let Some(value) = word.strip_prefix("p99=") {
            p99 = value.parse().ok();
        }
    }
    Some((a, b, p50, p99))
}

fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    if context.options.target.is_some() {
        return Err(ExperimentError::NotRemote(
            "urpc-matrix runs inside the kernel: boot the remote machine with `urpc=matrix:ROUNDS` on its command line and read the `urpc: rtt` lines of its console".into(),
        ));
    }
    let cores: u32 = 8;
    let rounds: u32 = context.pick(100, 1000);
    context.steps(2);
    let kernel = context.kernel()?;
    let config = MachineConfig::kernel(kernel, cores, &format!("log=warn urpc=matrix:{rounds}"));
    context.record("qemu_command_lines", format!("qemu-system-x86_64 {}", config.qemu_args().join(" ")));
    context.step(format!("matrix of {cores} cores x {rounds} rounds"));
    let mut machine = Machine::start(&config, false).map_err(|e| ExperimentError::Setup(e.to_string()))?;
    let timeout = Duration::from_secs(60 + u64::from(cores * cores) * u64::from(rounds) / 200);
    let done = machine
        .wait_for("urpc: matrix complete", timeout, |l| l.starts_with("urpc: matrix complete") || is_failure_line(l))
        .map_err(|e| ExperimentError::Guest(e.to_string()))?;
    if !done.starts_with("urpc:") {
        return Err(ExperimentError::Guest(format!("boot failed: {done}")));
    }
    let mut table = Table::new(EXPERIMENT.columns);
    let mut grid = vec![vec![None; cores as usize]; cores as usize];
    let mut off_diagonal = Vec::new();
    for (a, b, p50, p99) in machine.console().iter().filter_map(|l| parse_line(l)) {
        table
            .push(vec![
                a.into(),
                b.into(),
                p50.map_or(Cell::Empty, Cell::from),
                p99.map_or(Cell::Empty, Cell::from),
            ])?;
        if let (Some(p50), true) = (p50, a < cores && b < cores) {
            grid[a as usize][b as usize] = Some(p50 as f64);
            if a != b {
                off_diagonal.push(p50 as f64);
            }
        }
    }
    drop(machine);
    context.step("drawing");
    plot::heat_map(
        &context.png_path(),
        &format!("URPC round trip p50 (TSC cycles), {cores} cores, {rounds} rounds/pair, QEMU TCG"),
        "pinging core",
        "answering core",
        &grid,
    )?;
    let pairs = table.rows().len();
    let summary = format!(
        "{pairs} ordered pairs of {cores} cores; p50 round trip min {:.0} / median {:.0} / max {:.0} cycles ({done})",
        off_diagonal.iter().copied().fold(f64::INFINITY, f64::min),
        super::sweep::median(&off_diagonal),
        off_diagonal.iter().copied().fold(0.0, f64::max),
    );
    context.record("note", "cycles are QEMU's virtual TSC under TCG on a 2-core host, not hardware cycles");
    Ok(Figure { table, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_parse() {
        assert_eq!(parse_line("urpc: rtt 0->3 p50=1200 p99=5400 n=100"), Some((0, 3, Some(1200), Some(5400))));
        assert_eq!(parse_line("urpc: rtt 2->2 skipped"), Some((2, 2, None, None)));
        assert_eq!(parse_line("urpc: matrix complete"), None);
    }
}
