//! `scaling`: UDP echo throughput on 1 → 8 cores, with COST (McSherry, Isard, Murray,
//! "Scalability! But at what COST?", HotOS 2015): the number of cores a system needs before it
//! beats the best single-core configuration of any system measured. On this 2-core host QEMU's
//! vCPU threads would just share the two host cores, so each vCPU thread gets its own cgroup
//! with the same share of a host core (the `vcpu_share` column): N vCPUs are then worth N times
//! one, and the host keeps room for QEMU's I/O thread and the generator.

use super::configuration::DEFAULTS;
use super::csv::{Cell, Table};
use super::guest::Endpoint;
use super::plot::{self, Panel, Series};
use super::sweep::{self, rate_text};
use super::{Context, Experiment, ExperimentError, Figure};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "scaling",
    about: "UDP echo throughput on 1..8 cores with per-vCPU caps, speedup and COST (McSherry et al. HotOS'15)",
    columns: &["system", "cores", "throughput_rps"],
    run,
};

/// Each vCPU thread's share of one host core.
pub const VCPU_SHARE: f64 = 0.10;
/// Flows (spread evenly over the cores' queues).
const FLOWS: usize = 32;
/// Requests outstanding per flow.
const WINDOW: u32 = 4;


/// COST of a series: the fewest cores whose throughput reaches `best_single`.
pub fn cost(series: &[(u32, f64)], best_single: f64) -> Option<u32> {
    series.iter().filter(|(_, rate)| *rate >= best_single).map(|(cores, _)| *cores).min()
}

fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    let core_counts: Vec<u32> = context.pick(vec![1, 2, 4], vec![1, 2, 4, 8]);
    let repeats = context.pick(1, 3);
    let duration = context.pick(Duration::from_millis(1500), Duration::from_secs(4));
    let columns = ["system", "cores", "throughput_rps", "vcpu_share", "runs", "min_rps", "max_rps", "stalls"];
    let mut table = Table::new(&columns);
    let remote = context.remote()?;
    let mut results: Vec<(String, Vec<(u32, f64)>)> = Vec::new();
    match &remote {
        Some(endpoint) => {
            // One machine of --target-cores cores; earlier rows of other configurations in the
            // same CSV are kept, so runs against machines of 1, 2, 4, ... 32 cores add up.
            let cores = context.options.target_cores;
            let path = context.options.out.join("scaling.csv");
            if let Ok(text) = std::fs::read_to_string(&path) {
                let mut lines = text.lines();
                if lines.next() == Some(columns.join(",").as_str()) {
                    for line in lines {
                        let cells: Vec<&str> = line.split(',').collect();
                        let same = cells.first() == Some(&context.options.target_system.as_str())
                            && cells.get(1) == Some(&cores.to_string().as_str());
                        if cells.len() == columns.len() && !same {
                            let _ = table.push(cells.iter().map(|c| Cell::from(*c)).collect());
                            if let (Ok(n), Ok(rate)) = (cells[1].parse(), cells[2].parse()) {
                                match results.iter_mut().find(|(name, _)| name == cells[0]) {
                                    Some((_, series)) => series.push((n, rate)),
                                    None => results.push((cells[0].to_string(), vec![(n, rate)])),
                                }
                            }
                        }
                    }
                }
            }
            context.steps(repeats as u64);
            let name = context.options.target_system.clone();
            let rate = measure(context, endpoint, cores, repeats, duration, &mut table, &name, "uncapped".into())?;
            match results.iter_mut().find(|(n, _)| *n == name) {
                Some((_, series)) => series.push((cores, rate)),
                None => results.push((name, vec![(cores, rate)])),
            }
        }
        None => {
            context.steps((2 * core_counts.len() * (1 + repeats)) as u64);
            for run in context.runs(&DEFAULTS) {
                let mut series = Vec::new();
                for cores in &core_counts {
                    let target = context.reach(&run, *cores, VCPU_SHARE)?;
                    let rate = measure(context, &target.endpoint, *cores, repeats, duration, &mut table, &run.system, target.limit.clone())?;
                    context.finish(&run, target);
                    series.push((*cores, rate));
                }
                results.push((run.system.clone(), series));
            }
        }
    }
    for (_, series) in &mut results {
        series.sort_by_key(|(cores, _)| *cores);
    }
    let best_single = results
        .iter()
        .flat_map(|(_, series)| series.iter().filter(|(cores, _)| *cores == 1).map(|(_, rate)| *rate))
        .fold(0.0, f64::max);
    let mut summary = Vec::new();
    for (name, series) in &results {
        let (first, last) = (series.first().copied().unwrap_or((1, 0.0)), series.last().copied().unwrap_or((1, 0.0)));
        let cost_text = match cost(series, best_single) {
            Some(cores) => format!("COST {cores}"),
            None => format!("COST unbounded (never reaches {} within {} cores)", rate_text(best_single), last.0),
        };
        summary.push(format!(
            "{name} {} -> {} on {} -> {} cores ({:.2}x), {cost_text}",
            rate_text(first.1),
            rate_text(last.1),
            first.0,
            last.0,
            last.1 / first.1.max(1e-9)
        ));
    }
    let mut series: Vec<Series> = results
        .iter()
        .enumerate()
        .map(|(index, (name, points))| Series::new(name.clone(), index, points.iter().map(|(c, r)| (f64::from(*c), *r)).collect()))
        .collect();
    let max_cores = results.iter().flat_map(|(_, s)| s.iter().map(|(c, _)| *c)).max().unwrap_or(1);
    series.push(
        Series::new(format!("best single core ({})", rate_text(best_single)), 5, vec![(1.0, best_single), (f64::from(max_cores), best_single)])
            .dashed(),
    );
    let cap_text = context.cap_text(VCPU_SHARE);
    plot::line_chart(
        &context.png_path(),
        &format!("Scaling and COST: UDP echo, {FLOWS} flows x {WINDOW} outstanding, {cap_text}"),
        &[Panel {
            title: "throughput vs cores".into(),
            x_label: "cores".into(),
            y_label: "echo replies/s".into(),
            log_x: false,
            log_y: false,
            series,
        }],
    )?;
    Ok(Figure {
        table,
        summary: summary.join("; "),
    })
}

#[allow(clippy::too_many_arguments)]
fn measure(
    context: &mut Context,
    endpoint: &Endpoint,
    cores: u32,
    repeats: usize,
    duration: Duration,
    table: &mut Table,
    name: &str,
    share: Cell,
) -> Result<f64, ExperimentError> {
    let ports = sweep::spread(endpoint, sweep::ECHO_PORT, FLOWS, cores, 20_000..40_000);
    sweep::closed_echo(endpoint, &ports, WINDOW, Duration::from_millis(500))?;
    let mut rates = Vec::new();
    let mut stalls = 0;
    for run in 0..repeats {
        context.step(format!("{name} {cores} cores: run {}", run + 1));
        let outcome = sweep::closed_echo(endpoint, &ports, WINDOW, duration)?;
        stalls += outcome.stalls;
        rates.push(outcome.received_per_second());
    }
    let rate = sweep::median(&rates);
    context.check_ceiling(rate, &format!("{name} {cores} cores"));
    table
        .push(vec![
            name.into(),
            cores.into(),
            Cell::Number(rate, 0),
            share,
            (repeats as u64).into(),
            Cell::Number(rates.iter().copied().fold(f64::INFINITY, f64::min), 0),
            Cell::Number(rates.iter().copied().fold(0.0, f64::max), 0),
            stalls.into(),
        ])
        ?;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_the_fewest_cores_that_beat_the_best_single_core() {
        let flotilla = [(1, 26_000.0), (2, 53_000.0), (4, 97_000.0)];
        let linux = [(1, 1_000.0), (2, 2_100.0), (4, 4_000.0)];
        let best = 26_000.0;
        assert_eq!(cost(&flotilla, best), Some(1));
        assert_eq!(cost(&linux, best), None);
        assert_eq!(cost(&linux, 2_000.0), Some(2));
    }
}
