//! `isolation`: a victim UDP echo flow at a low fixed rate while a second set of flows floods
//! another port on the same core, flood rate from 0 up (LRP, Druschel & Banga, OSDI 1996:
//! traffic separation). With lazy receiver processing, packets for a port nobody keeps up with
//! are dropped early, at the cost of a classification, and the victim's latency and loss stay
//! where they were; with eager processing the flood's protocol work delays the victim.
//!
//! The victim and the flood land on the same receive queue (source ports chosen by the
//! Toeplitz hash), so the separation must come from the core's own processing, not from RSS.
//! Rows: Flotilla `mode=lrp-on` (default) and `mode=lrp-off` (kernel option `netd.lrp=off`),
//! Linux `mode=napi`; both guests' vCPUs capped at the same share.

use super::csv::{Cell, Table};
use super::guest::{Endpoint, System};
use super::plot::{self, Panel, Series};
use super::sweep::{self, rate_text};
use super::{Context, Experiment, ExperimentError, Figure};
use drivers::nic::QueueId;
use loadgen::{Arrivals, Pace, Request, UdpLoad};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "isolation",
    about: "victim UDP flow latency/loss while another port on its core is flooded, LRP on/off vs Linux (LRP OSDI'96)",
    columns: &["system", "mode", "flood_pps", "victim_p50_us", "victim_p99_us", "victim_loss"],
    run,
};

const CORES: u32 = 2;
const VCPU_SHARE: f64 = super::livelock::VCPU_SHARE;
const FLOOD_FLOWS: usize = 8;

struct Configuration {
    system: System,
    mode: &'static str,
    cmdline: &'static str,
}

const CONFIGURATIONS: [Configuration; 3] = [
    Configuration {
        system: System::Flotilla,
        mode: "lrp-on",
        cmdline: "",
    },
    Configuration {
        system: System::Flotilla,
        mode: "lrp-off",
        cmdline: "netd.lrp=off",
    },
    Configuration {
        system: System::Linux,
        mode: "napi",
        cmdline: "",
    },
];

fn flood_ports(endpoint: &Endpoint, queues: u32) -> Vec<u16> {
    (0..FLOOD_FLOWS as u16)
        .filter_map(|i| {
            loadgen::flows::port_on_queue(
                endpoint.source,
                endpoint.address,
                sweep::DISCARD_PORT,
                QueueId(0),
                queues as u16,
                (45_000 + i * 500)..(45_500 + i * 500),
            )
        })
        .collect()
}

fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    let victim_rate: f64 = context.pick(500.0, 1000.0);
    let mut floods = vec![0.0];
    floods.extend(sweep::log_rates(4_000.0, 256_000.0, context.pick(4, 7)));
    let duration = context.pick(Duration::from_secs(1), Duration::from_secs(3));
    let mut table = Table::new(&[
        "system",
        "mode",
        "flood_pps",
        "victim_p50_us",
        "victim_p99_us",
        "victim_loss",
        "guest_cpu_limit",
        "victim_pps",
        "flood_requested_pps",
        "note",
    ]);
    let remote = context.remote()?;
    let runs: Vec<(usize, String, String, &str)> = match &remote {
        Some(_) => vec![(0, context.options.target_system.clone(), "target".into(), "")],
        None => CONFIGURATIONS
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.system.name().to_string(), c.mode.to_string(), c.cmdline))
            .collect(),
    };
    context.steps((runs.len() * (floods.len() + 1)) as u64);
    let (mut latency_series, mut loss_series, mut summary) = (Vec::new(), Vec::new(), Vec::new());
    for (index, system_name, mode, cmdline) in &runs {
        let mut guest = None;
        let (endpoint, queues, limit): (Endpoint, u32, Cell) = match &remote {
            Some(endpoint) => (endpoint.clone(), context.options.target_cores, "uncapped".into()),
            None => {
                context.step(format!("booting {system_name} ({mode})"));
                let mut booted = context.boot(CONFIGURATIONS[*index].system, CORES, cmdline)?;
                context.cap(&mut booted, VCPU_SHARE)?;
                let endpoint = booted.endpoint.clone();
                guest = Some(booted);
                (endpoint, CORES, VCPU_SHARE.into())
            }
        };
        let note = guest
            .as_ref()
            .filter(|g| !g.ignored_options().is_empty())
            .map(|_| format!("{cmdline} not implemented by this kernel (ignored): same as the default"))
            .unwrap_or_default();
        if !note.is_empty() {
            context.note(format!("{system_name}/{mode}: {note}"));
        }
        let victim_port = loadgen::flows::port_on_queue(
            endpoint.source,
            endpoint.address,
            sweep::ECHO_PORT,
            QueueId(0),
            queues as u16,
            30_000..31_000,
        )
        .ok_or_else(|| ExperimentError::Setup("no victim port on queue 0".into()))?;
        let flood = flood_ports(&endpoint, queues);
        sweep::closed_echo(&endpoint, &[victim_port], 4, Duration::from_millis(300))?;
        let (mut p99s, mut losses) = (Vec::new(), Vec::new());
        for flood_rate in &floods {
            context.step(format!("{system_name}/{mode}: flood {}", rate_text(*flood_rate)));
            let victim = UdpLoad {
                threads: 1,
                ..sweep::echo_load(
                    &endpoint,
                    &[victim_port],
                    Pace::Open {
                        rate: victim_rate,
                        arrivals: Arrivals::Constant,
                    },
                    duration,
                )
            };
            let flood_load = UdpLoad {
                target: endpoint.at(sweep::DISCARD_PORT),
                request: Request::Echo { bytes: 64 },
                drain: Duration::ZERO,
                ..sweep::echo_load(
                    &endpoint,
                    &flood,
                    Pace::Open {
                        rate: flood_rate.max(1.0),
                        arrivals: Arrivals::Poisson,
                    },
                    duration + Duration::from_millis(100),
                )
            };
            let flooding = (*flood_rate > 0.0).then(|| std::thread::spawn(move || loadgen::udp::run(&flood_load)));
            let outcome = loadgen::udp::run(&victim)?;
            let flood_offered = match flooding {
                Some(handle) => handle
                    .join()
                    .map_err(|_| ExperimentError::Load(loadgen::LoadError::ThreadPanicked))??
                    .offered_per_second(),
                None => 0.0,
            };
            let (p50, p99, loss) = (outcome.latency.p50_us(), outcome.latency.p99_us(), outcome.loss());
            table
                .push(vec![
                    system_name.as_str().into(),
                    mode.as_str().into(),
                    Cell::Number(flood_offered, 0),
                    p50.into(),
                    p99.into(),
                    Cell::Number(loss, 4),
                    limit.clone(),
                    Cell::Number(outcome.offered_per_second(), 0),
                    Cell::Number(*flood_rate, 0),
                    note.as_str().into(),
                ])
                .map_err(|e| ExperimentError::Columns(format!("{e:?}")))?;
            if let Some(p99) = p99 {
                p99s.push((flood_offered, p99));
            }
            losses.push((flood_offered, loss * 100.0));
        }
        let base = p99s.first().map_or(0.0, |p| p.1);
        let worst = p99s.last().map_or(0.0, |p| p.1);
        summary.push(format!(
            "{system_name}/{mode} victim p99 {base:.0} us without flood, {worst:.0} us at {} flood, loss {:.1}%",
            rate_text(p99s.last().map_or(0.0, |p| p.0)),
            losses.last().map_or(0.0, |l| l.1)
        ));
        latency_series.push(Series::new(format!("{system_name} {mode}"), *index, p99s));
        loss_series.push(Series::new(format!("{system_name} {mode}"), *index, losses));
    }
    let limit_text = if remote.is_some() {
        "uncapped".to_string()
    } else {
        format!("each vCPU capped at {:.0}% of a host core", VCPU_SHARE * 100.0)
    };
    plot::line_chart(
        &context.png_path(),
        &format!(
            "Traffic separation: {victim_rate:.0}/s victim echo flow, flood to port {} on the same queue, {limit_text}",
            sweep::DISCARD_PORT
        ),
        &[
            Panel {
                title: "victim p99 round trip".into(),
                x_label: "flood (packets/s offered)".into(),
                y_label: "victim p99 (µs)".into(),
                log_x: false,
                log_y: true,
                series: latency_series,
            },
            Panel {
                title: "victim loss".into(),
                x_label: "flood (packets/s offered)".into(),
                y_label: "victim requests lost (%)".into(),
                log_x: false,
                log_y: false,
                series: loss_series,
            },
        ],
    )?;
    Ok(Figure {
        table,
        summary: summary.join("; "),
    })
}
