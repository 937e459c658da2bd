//! `latency-load`: round-trip latency against achieved throughput under open-loop load with
//! Poisson arrivals, swept to saturation: the figure of IX (Belay et al., OSDI 2014), ZygOS
//! (Prekas et al., SOSP 2017) and Shenango (Ousterhout et al., NSDI 2019). Two workloads: UDP
//! echo (64 bytes, 16 flows) and memcached over TCP (16 connections, ETC-like: 90% get / 10%
//! set, 1,024 keys spread over every core, 32-byte values). Each system's capacity is probed
//! first (closed loop for echo; for memcached a ladder of open-loop rates, doubling until the
//! server answers less than 80% of them); the sweep then offers fixed fractions of it, so both
//! systems are swept from light load to past saturation.

use super::configuration::DEFAULTS;
use super::csv::{Cell, Table};
use super::guest::System;
use super::plot::{self, Panel, Series};
use super::sweep::{self, rate_text};
use super::{Context, Experiment, ExperimentError, Figure};
use loadgen::{Arrivals, MemcachedMix, MemcachedTcp};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "latency-load",
    about: "p50/p99 latency vs throughput, open-loop Poisson, UDP echo and memcached (IX OSDI'14 / ZygOS / Shenango)",
    columns: &["system", "workload", "offered_rps", "achieved_rps", "p50_us", "p99_us"],
    run,
};

const CORES: u32 = 2;
/// Each vCPU thread's share of a host core: larger than the overload experiments' so that
/// throttling (up to a period minus the quota at a time) does not dominate the latencies.
const VCPU_SHARE: f64 = 0.5;
const FLOWS: usize = 16;
/// The latency bound for "throughput at p99 ≤ bound" in the summary (issue 13's benchmark).
const P99_BOUND_US: f64 = 500.0;


fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    let fractions: Vec<f64> = context.pick(
        vec![0.2, 0.5, 0.8, 1.1],
        vec![0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.3],
    );
    let duration = context.pick(Duration::from_millis(1500), Duration::from_secs(4));
    let mut table = Table::new(&[
        "system",
        "workload",
        "offered_rps",
        "achieved_rps",
        "p50_us",
        "p99_us",
        "guest_cpu_limit",
        "requested_rps",
        "loss",
        "capacity_probe_rps",
        "errors",
    ]);
    let runs = context.runs(&DEFAULTS);
    context.steps((runs.len() * (2 * fractions.len() + 3)) as u64);
    let mut echo_series = Vec::new();
    let mut memcached_series = Vec::new();
    let mut summary = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let target = context.reach(run, CORES, VCPU_SHARE)?;
        let (endpoint, queues, limit) = (&target.endpoint, target.queues, &target.limit);
        let system_name = run.system.as_str();
        // UDP echo.
        let ports = sweep::spread(endpoint, sweep::ECHO_PORT, FLOWS, queues, 20_000..40_000);
        context.step(format!("{system_name}/udp-echo: capacity"));
        sweep::closed_echo(endpoint, &ports, 4, Duration::from_millis(400))?;
        let capacity = sweep::closed_echo(endpoint, &ports, 8, Duration::from_secs(1))?.received_per_second();
        let curve = sweep_curve(context, &mut table, system_name, "udp-echo", &fractions, capacity, limit, |rate, _| {
            sweep::open_echo(endpoint, &ports, rate, duration)
        })?;
        summary.push(curve.summary(system_name, "udp-echo", capacity, &fractions, ""));
        curve.draw(&mut echo_series, system_name, index);

        // memcached over TCP.
        let mix = MemcachedMix::default();
        let connection_ports = sweep::spread(endpoint, sweep::MEMCACHED_PORT, FLOWS, queues, 40_000..50_000);
        context.step(format!("{system_name}/memcached: connecting and storing {} keys", mix.keys));
        let mut client = MemcachedTcp::connect(
            endpoint.source,
            &connection_ports,
            endpoint.at(sweep::MEMCACHED_PORT),
            mix.clone(),
            endpoint.netns.as_deref(),
        )?;
        let stored = client.prefill(Duration::from_secs(20));
        if stored < u64::from(mix.keys) {
            context.note(format!("{system_name}/memcached: only {stored} of {} keys stored before the sweep", mix.keys));
        }
        // Capacity: a ladder of open-loop rates (doubling from 1 k/s, 0.5 s each; quick: from 2 k/s, 0.3 s) until the
        // server answers less than 80% of what it is offered; the best answered rate. (A single
        // overload run would measure how the server copes with a backlog, not its capacity.)
        let mut memcached_capacity: f64 = 100.0;
        let mut probe_rate: f64 = context.pick(2_000.0, 1_000.0);
        let step = context.pick(Duration::from_millis(300), Duration::from_millis(500));
        let (mut hits, mut misses) = (0, 0);
        while probe_rate <= 512_000.0 {
            let probe = client.run(probe_rate, Arrivals::Poisson, step, Duration::from_millis(300), 0, 3);
            client.settle(Duration::from_secs(5));
            hits += probe.hits;
            misses += probe.misses;
            let answered = probe.received_per_second();
            memcached_capacity = memcached_capacity.max(answered);
            if answered < 0.8 * probe_rate {
                break;
            }
            probe_rate *= 2.0;
        }
        client.settle(Duration::from_secs(10));
        let curve = sweep_curve(context, &mut table, system_name, "memcached", &fractions, memcached_capacity, limit, |rate, step| {
            let outcome = client.run(rate, Arrivals::Poisson, duration, Duration::from_millis(500), 0, 10 + step as u64);
            client.settle(Duration::from_secs(5));
            Ok(outcome)
        })?;
        let probe = format!(" (probe: {hits} hits, {misses} misses)");
        summary.push(curve.summary(system_name, "memcached", memcached_capacity, &fractions, &probe));
        curve.draw(&mut memcached_series, system_name, index);
        drop(client);
        if run.configuration.is_some_and(|c| c.system == System::Flotilla) {
            // The guest's own view of the sweep: where requests and replies were refused,
            // retried or dropped.
            match sweep::memcached_stats(endpoint, "stats flotilla") {
                Ok(stats) => context.record_list("guest_counters", format!("{system_name} memcached after the sweep: {stats}")),
                Err(e) => context.note(format!("{system_name}: stats flotilla: {e}")),
            }
            // Every core's counters (paths, drops by place, transport refusals) as JSON.
            let path = context.options.out.join(format!("{}.flotilla-stats.json", context.name));
            match sweep::http_get(endpoint, "/stats").map(|body| std::fs::write(&path, body)) {
                Ok(Ok(())) => context.record("guest_stats_file", path.display().to_string()),
                Ok(Err(e)) => context.note(format!("{}: {e}", path.display())),
                Err(e) => context.note(format!("{system_name}: /stats: {e}")),
            }
        }
        context.finish(run, target);
    }
    let limit_text = format!("{CORES} cores, {}", context.cap_text(VCPU_SHARE));
    let panel = |title: &str, series| Panel {
        title: title.into(),
        x_label: "achieved throughput (requests/s)".into(),
        y_label: "round trip (µs)".into(),
        log_x: false,
        log_y: true,
        series,
    };
    plot::line_chart(
        &context.png_path(),
        &format!("Latency vs load, open loop, Poisson arrivals, {limit_text}"),
        &[
            panel("UDP echo (64 B, 16 flows)", echo_series),
            panel("memcached over TCP (90% get, 16 connections)", memcached_series),
        ],
    )?;
    Ok(Figure {
        table,
        summary: summary.join("; "),
    })
}

/// One system's curve of a workload: (achieved, p50) and (achieved, p99) per offered load.
#[derive(Default)]
struct Curve {
    p50s: Vec<(f64, f64)>,
    p99s: Vec<(f64, f64)>,
}

impl Curve {
    /// The summary: capacity, the latencies at the highest load ≤ 80% of it, and the most
    /// throughput achieved with p99 ≤ [`P99_BOUND_US`].
    fn summary(&self, system: &str, workload: &str, capacity: f64, fractions: &[f64], extra: &str) -> String {
        let at = fractions.iter().rposition(|f| *f <= 0.8).unwrap_or(0);
        let bounded = self
            .p99s
            .iter()
            .filter(|(_, p99)| *p99 <= P99_BOUND_US)
            .map(|(achieved, _)| *achieved)
            .fold(None, |best: Option<f64>, rate| Some(best.map_or(rate, |b| b.max(rate))));
        let bounded = bounded.map_or_else(|| "none".to_string(), rate_text);
        format!(
            "{system}/{workload} capacity {}, p50 {:.0} us / p99 {:.0} us at {:.0}% of it, {bounded} at p99 <= {P99_BOUND_US:.0} us{extra}",
            rate_text(capacity),
            self.p50s.get(at).map_or(0.0, |p| p.1),
            self.p99s.get(at).map_or(0.0, |p| p.1),
            100.0 * fractions[at]
        )
    }

    /// Adds the curve's p99 (solid) and p50 (dashed) series.
    fn draw(self, series: &mut Vec<Series>, system: &str, colour: usize) {
        series.push(Series::new(format!("{system} p99"), colour, self.p99s));
        series.push(Series::new(format!("{system} p50"), colour, self.p50s).dashed());
    }
}

/// Offers each fraction of `capacity` with `measure(rate, step)`, one row per load.
#[allow(clippy::too_many_arguments)]
fn sweep_curve(
    context: &mut Context,
    table: &mut Table,
    system: &str,
    workload: &str,
    fractions: &[f64],
    capacity: f64,
    limit: &Cell,
    mut measure: impl FnMut(f64, usize) -> Result<loadgen::Outcome, ExperimentError>,
) -> Result<Curve, ExperimentError> {
    let mut curve = Curve::default();
    for (step, fraction) in fractions.iter().enumerate() {
        let rate = (capacity * fraction).max(1.0);
        context.step(format!("{system}/{workload}: {}", rate_text(rate)));
        let outcome = measure(rate, step)?;
        let achieved = outcome.received_per_second();
        context.check_ceiling(achieved, &format!("{system}/{workload} achieved"));
        if outcome.errors > 0 {
            context.note(format!("{system}/{workload}: {} error replies at {}", outcome.errors, rate_text(rate)));
        }
        push(table, system, workload, &outcome, achieved, limit, rate, capacity)?;
        if let (Some(p50), Some(p99)) = (outcome.latency.p50_us(), outcome.latency.p99_us()) {
            curve.p50s.push((achieved, p50));
            curve.p99s.push((achieved, p99));
        }
    }
    Ok(curve)
}

#[allow(clippy::too_many_arguments)]
fn push(
    table: &mut Table,
    system: &str,
    workload: &str,
    outcome: &loadgen::Outcome,
    achieved: f64,
    limit: &Cell,
    requested: f64,
    capacity: f64,
) -> Result<(), ExperimentError> {
    table
        .push(vec![
            system.into(),
            workload.into(),
            Cell::Number(outcome.offered_per_second(), 0),
            Cell::Number(achieved, 0),
            outcome.latency.p50_us().into(),
            outcome.latency.p99_us().into(),
            limit.clone(),
            Cell::Number(requested, 0),
            Cell::Number(outcome.loss(), 4),
            Cell::Number(capacity, 0),
            outcome.errors.into(),
        ])
        .map_err(ExperimentError::from)
}
