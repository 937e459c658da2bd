//! `livelock`: delivered UDP echo rate against offered rate, from below the guest's knee to far
//! beyond it (Mogul & Ramakrishnan, "Eliminating receive livelock in an interrupt-driven
//! kernel", TOCS 1997, Figure 6-1; LRP, OSDI 1996, throughput vs offered load). A design that
//! does all receive work to completion at the rate it can finish it keeps delivering its peak
//! rate under overload; one that lets interrupts preempt the work that consumes packets
//! delivers less and less as the offered rate grows.
//!
//! Rows: Flotilla `mode=poll` (the default: the core polls its queue while there is work),
//! Flotilla `mode=interrupt` (kernel option `netd.mode=interrupt`), Linux `mode=napi`. Every
//! vCPU thread of both guests is capped at the same share of a host core
//! (`guest_cpu_limit`), so that the generator on this 2-core host offers many times the knee.

use super::configuration::Configuration;
use super::csv::{Cell, Table};
use super::guest::System;
use super::plot::{self, Panel, Series};
use super::sweep::{self, rate_text};
use super::{Context, Experiment, ExperimentError, Figure};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "livelock",
    about: "delivered vs offered UDP echo rate, poll vs interrupt vs Linux NAPI (Mogul & Ramakrishnan TOCS'97 Fig. 6-1; LRP OSDI'96)",
    columns: &["system", "mode", "offered_pps", "delivered_pps", "guest_cpu_limit"],
    run,
};

/// Guest cores.
pub const CORES: u32 = 2;
/// Each vCPU thread's share of one host core.
pub const VCPU_SHARE: f64 = 0.10;
/// UDP flows (spread over the queues by the Toeplitz hash).
const FLOWS: usize = 16;

const CONFIGURATIONS: [Configuration; 3] = [
    Configuration {
        system: System::Flotilla,
        mode: "poll",
        cmdline: "",
    },
    Configuration {
        system: System::Flotilla,
        mode: "interrupt",
        cmdline: "netd.mode=interrupt",
    },
    Configuration {
        system: System::Linux,
        mode: "napi",
        cmdline: "",
    },
];

fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    let rates = sweep::log_rates(1_000.0, 400_000.0, context.pick(6, 10));
    let duration = context.pick(Duration::from_secs(1), Duration::from_secs(3));
    let mut table = Table::new(&[
        "system",
        "mode",
        "offered_pps",
        "delivered_pps",
        "guest_cpu_limit",
        "requested_pps",
        "loss",
        "p50_us",
        "p99_us",
        "send_failures",
        "note",
    ]);
    let mut series = Vec::new();
    let mut summary = Vec::new();
    let runs = context.runs(&CONFIGURATIONS);
    context.steps((runs.len() * (rates.len() + 1)) as u64);
    for (index, run) in runs.iter().enumerate() {
        let target = context.reach(run, CORES, VCPU_SHARE)?;
        let (endpoint, queues) = (&target.endpoint, target.queues);
        let ports = sweep::spread(endpoint, sweep::ECHO_PORT, FLOWS, queues, 20_000..40_000);
        sweep::closed_echo(endpoint, &ports, 4, Duration::from_millis(500))?;
        let mut points = Vec::new();
        for rate in &rates {
            context.step(format!("{}: offering {}", run.label(), rate_text(*rate)));
            let outcome = sweep::open_echo(endpoint, &ports, *rate, duration)?;
            let (offered, delivered) = (outcome.offered_per_second(), outcome.received_per_second());
            context.check_ceiling(delivered, &format!("{} delivered", run.label()));
            table.push(vec![
                    run.system.as_str().into(),
                    run.mode.as_str().into(),
                    Cell::Number(offered, 0),
                    Cell::Number(delivered, 0),
                    target.limit.clone(),
                    Cell::Number(*rate, 0),
                    Cell::Number(outcome.loss(), 4),
                    outcome.latency.p50_us().into(),
                    outcome.latency.p99_us().into(),
                    outcome.send_failures.into(),
                    target.note.as_str().into(),
                ])?;
            points.push((offered, delivered));
        }
        context.finish(run, target);
        let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let last = points.last().map_or(0.0, |p| p.1);
        summary.push(format!(
            "{} peak {}, at {} offered {} ({:.0}% of peak)",
            run.label(),
            rate_text(peak),
            rate_text(points.last().map_or(0.0, |p| p.0)),
            rate_text(last),
            100.0 * last / peak.max(1e-9)
        ));
        series.push(Series::new(format!("{} {}", run.system, run.mode), index, points));
    }
    let top = rates.last().copied().unwrap_or(1.0);
    series.push(Series::new("delivered = offered", 5, vec![(rates[0], rates[0]), (top, top)]).dashed());
    let limit_text = context.cap_text(VCPU_SHARE);
    plot::line_chart(
        &context.png_path(),
        &format!("Receive livelock: UDP echo, {CORES} cores, {FLOWS} flows, {limit_text}"),
        &[Panel {
            title: "delivered vs offered load".into(),
            x_label: "offered (packets/s)".into(),
            y_label: "delivered echo replies (packets/s)".into(),
            log_x: true,
            log_y: true,
            series,
        }],
    )?;
    Ok(Figure {
        table,
        summary: summary.join("; "),
    })
}
