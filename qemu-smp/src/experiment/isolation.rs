//! `isolation`: a victim UDP echo flow at a low fixed rate while a flood hits another path of
//! the same core, flood rate from 0 up (LRP, Druschel & Banga, OSDI 1996: traffic separation).
//! With lazy receiver processing, packets for a path that cannot keep up are dropped early, at
//! the cost of a classification, and the victim's latency and loss stay where they were; with
//! eager processing in arrival order the flood's protocol work delays the victim and a shared
//! queue drops it with the flood.
//!
//! Two floods, each swept for every configuration:
//! * `udp-discard`: 64-byte datagrams to port 9 (nobody answers), each vCPU at 10% of a host
//!   core. Cheap at its path, so what overflows is the NIC's receive ring, shared by victim and
//!   flood, while the capped vCPU is throttled (9 of every 10 ms): no software sees either.
//! * `icmp-echo`: a ping flood (the echo reply is built by the stack and sent), each vCPU at 50%
//!   (a 1 ms throttle, which the ring covers up to ~256 k frames/s). Cheap to classify, dear at
//!   its path: this overloads the path rather than the ring, which is what LRP can separate.
//!
//! The victim and the flood land on the same receive queue (the victim's source port chosen by
//! the Toeplitz hash), so the separation must come from the core's own processing, not from RSS.
//! Rows: Flotilla `mode=lrp-on` (default) and `mode=lrp-off` (kernel option `netd.lrp=off`),
//! Linux `mode=napi`; both guests' vCPUs capped at the same share for each flood.

use super::configuration::{Configuration, Target};
use super::csv::{Cell, Table};
use super::guest::{Endpoint, System};
use super::plot::{self, Panel, Series};
use super::sweep::{self, rate_text};
use super::{Context, Experiment, ExperimentError, Figure};
use drivers::nic::QueueId;
use loadgen::icmp::IcmpFlood;
use loadgen::{Arrivals, Outcome, Pace, Request, UdpLoad};
use std::time::Duration;

/// The registration.
pub const EXPERIMENT: Experiment = Experiment {
    name: "isolation",
    about: "victim UDP flow latency/loss while another path on its core is flooded (UDP discard; ICMP echo), LRP on/off vs Linux (LRP OSDI'96)",
    columns: &["system", "mode", "flood_pps", "victim_p50_us", "victim_p99_us", "victim_loss"],
    run,
};

const CORES: u32 = 2;
const FLOOD_FLOWS: usize = 8;
/// The ICMP identifier of the flood's requests.
const PING_IDENTIFIER: u16 = 0x464C;

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

/// What floods the victim's core.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// UDP datagrams to the discard port.
    UdpDiscard,
    /// ICMP echo requests.
    IcmpEcho,
}

/// One flood of the experiment: its kind, the `flood` column's value and the cap it runs under.
#[derive(Clone, Copy, Debug)]
struct Flood {
    kind: Kind,
    name: &'static str,
    share: f64,
}

const FLOODS: [Flood; 2] = [
    Flood {
        kind: Kind::UdpDiscard,
        name: "udp-discard",
        share: super::livelock::VCPU_SHARE,
    },
    Flood {
        kind: Kind::IcmpEcho,
        name: "icmp-echo",
        share: 0.5,
    },
];

impl Flood {
    /// The queue the flood lands on (the victim is put there too).
    fn queue(&self, endpoint: &Endpoint, queues: u32) -> QueueId {
        match self.kind {
            Kind::UdpDiscard => QueueId(0),
            Kind::IcmpEcho => {
                loadgen::flows::queue_of_addresses(endpoint.source, endpoint.address, queues as u16)
            }
        }
    }

    /// Offers `rate` floods per second for `duration` (on a thread of its own) while `victim`
    /// runs; returns the victim's outcome and the flood's.
    fn offer(
        &self,
        endpoint: &Endpoint,
        queues: u32,
        rate: f64,
        duration: Duration,
        victim: &UdpLoad,
    ) -> Result<(Outcome, Outcome), ExperimentError> {
        if rate <= 0.0 {
            return Ok((loadgen::udp::run(victim)?, Outcome::default()));
        }
        let flooding = match self.kind {
            Kind::UdpDiscard => {
                let ports: Vec<u16> = (0..FLOOD_FLOWS as u16)
                    .filter_map(|i| {
                        loadgen::flows::port_on_queue(
                            endpoint.source,
                            endpoint.address,
                            sweep::DISCARD_PORT,
                            self.queue(endpoint, queues),
                            queues as u16,
                            (45_000 + i * 500)..(45_500 + i * 500),
                        )
                    })
                    .collect();
                let load = UdpLoad {
                    target: endpoint.at(sweep::DISCARD_PORT),
                    request: Request::Echo { bytes: 64 },
                    drain: Duration::ZERO,
                    ..sweep::echo_load(
                        endpoint,
                        &ports,
                        Pace::Open {
                            rate,
                            arrivals: Arrivals::Poisson,
                        },
                        duration,
                    )
                };
                std::thread::spawn(move || loadgen::udp::run(&load))
            }
            Kind::IcmpEcho => {
                let flood = IcmpFlood {
                    source: endpoint.source,
                    target: endpoint.address,
                    rate,
                    arrivals: Arrivals::Poisson,
                    bytes: 56,
                    identifier: PING_IDENTIFIER,
                    duration,
                    drain: Duration::from_millis(100),
                    netns: endpoint.netns.clone(),
                    seed: 7,
                };
                std::thread::spawn(move || loadgen::icmp::run(&flood))
            }
        };
        let victim = loadgen::udp::run(victim);
        let flood = flooding
            .join()
            .map_err(|_| ExperimentError::Load(loadgen::LoadError::ThreadPanicked))??;
        Ok((victim?, flood))
    }
}

fn run(context: &mut Context) -> Result<Figure, ExperimentError> {
    let victim_rate: f64 = context.pick(500.0, 1000.0);
    let mut floods = vec![0.0];
    floods.extend(sweep::log_rates(4_000.0, 256_000.0, context.pick(3, 7)));
    let duration = context.pick(Duration::from_secs(1), Duration::from_secs(3));
    let mut table = Table::new(&[
        "system",
        "mode",
        "flood_pps",
        "victim_p50_us",
        "victim_p99_us",
        "victim_loss",
        "guest_cpu_limit",
        "flood",
        "victim_pps",
        "flood_requested_pps",
        "flood_answered_pps",
        "note",
    ]);
    let runs = context.runs(&CONFIGURATIONS);
    context.steps((runs.len() * (FLOODS.len() * floods.len() + 1)) as u64);
    let mut panels: Vec<(Vec<Series>, Vec<Series>)> = FLOODS.iter().map(|_| Default::default()).collect();
    let mut summary = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let mut target = context.reach(run, CORES, FLOODS[0].share)?;
        for (flood, (latency_series, loss_series)) in FLOODS.iter().zip(panels.iter_mut()) {
            context.recap(&mut target, flood.share)?;
            let (p99s, losses) =
                sweep_flood(context, &mut table, run, &target, flood, &floods, victim_rate, duration)?;
            let base = p99s.first().map_or(0.0, |p| p.1);
            let worst = p99s.last().map_or(0.0, |p| p.1);
            summary.push(format!(
                "{} {}: victim p99 {base:.0} us without flood, {worst:.0} us at {} flood, loss {:.1}%",
                run.label(),
                flood.name,
                rate_text(p99s.last().map_or(0.0, |p| p.0)),
                losses.last().map_or(0.0, |l| l.1)
            ));
            if let Some(guest) = target.guest.as_ref().filter(|g| g.system == System::Flotilla) {
                // Where the frames went, cumulative since boot.
                let drops = sweep::flotilla_drops(&target.endpoint, &["udp:7", "udp:9", "icmp"])
                    .unwrap_or_else(|e| e.to_string());
                let tap = guest.tap_counter("tx_dropped").map_or("?".into(), |n| n.to_string());
                context.record_list(
                    "guest_counters",
                    format!("{} after the {} sweep: tap tx_dropped={tap} | {drops}", run.label(), flood.name),
                );
            }
            let label = format!("{} {}", run.system, run.mode);
            latency_series.push(Series::new(label.clone(), index, p99s));
            loss_series.push(Series::new(label, index, losses));
        }
        context.finish(run, target);
    }
    let mut chart = Vec::new();
    for (flood, (latency_series, loss_series)) in FLOODS.iter().zip(panels) {
        let what = match flood.kind {
            Kind::UdpDiscard => format!("UDP to port {}", sweep::DISCARD_PORT),
            Kind::IcmpEcho => "ICMP echo (ping)".to_string(),
        };
        let cap = context.cap_text(flood.share);
        chart.push(Panel {
            title: format!("victim p99, flood: {what}; {cap}"),
            x_label: "flood (packets/s offered)".into(),
            y_label: "victim p99 (µs)".into(),
            log_x: false,
            log_y: true,
            series: latency_series,
        });
        chart.push(Panel {
            title: format!("victim loss, flood: {what}"),
            x_label: "flood (packets/s offered)".into(),
            y_label: "victim requests lost (%)".into(),
            log_x: false,
            log_y: false,
            series: loss_series,
        });
    }
    plot::line_chart(
        &context.png_path(),
        &format!("Traffic separation: {victim_rate:.0}/s victim UDP echo flow, flood on the same receive queue"),
        &chart,
    )?;
    Ok(Figure {
        table,
        summary: summary.join("; "),
    })
}

/// (flood offered, value) points of one curve.
type Points = Vec<(f64, f64)>;

/// The victim's p99 and loss (%) against the flood offered, one row per flood rate.
#[allow(clippy::too_many_arguments)]
fn sweep_flood(
    context: &mut Context,
    table: &mut Table,
    run: &super::configuration::Run,
    target: &Target,
    flood: &Flood,
    rates: &[f64],
    victim_rate: f64,
    duration: Duration,
) -> Result<(Points, Points), ExperimentError> {
    let endpoint = &target.endpoint;
    let queue = flood.queue(endpoint, target.queues);
    let victim_port = loadgen::flows::port_on_queue(
        endpoint.source,
        endpoint.address,
        sweep::ECHO_PORT,
        queue,
        target.queues as u16,
        30_000..31_000,
    )
    .ok_or_else(|| ExperimentError::Setup(format!("no victim port on queue {}", queue.0)))?;
    sweep::closed_echo(endpoint, &[victim_port], 4, Duration::from_millis(300))?;
    let victim = UdpLoad {
        threads: 1,
        ..sweep::echo_load(
            endpoint,
            &[victim_port],
            Pace::Open {
                rate: victim_rate,
                arrivals: Arrivals::Constant,
            },
            duration,
        )
    };
    let (mut p99s, mut losses) = (Vec::new(), Vec::new());
    for rate in rates {
        context.step(format!("{} {}: flood {}", run.label(), flood.name, rate_text(*rate)));
        // The flood starts with the victim and lasts a little longer than it.
        let (outcome, flooded) = flood.offer(
            endpoint,
            target.queues,
            *rate,
            duration + Duration::from_millis(100),
            &victim,
        )?;
        let flood_offered = flooded.offered_per_second();
        let (p50, p99, loss) = (outcome.latency.p50_us(), outcome.latency.p99_us(), outcome.loss());
        table.push(vec![
            run.system.as_str().into(),
            run.mode.as_str().into(),
            Cell::Number(flood_offered, 0),
            p50.into(),
            p99.into(),
            Cell::Number(loss, 4),
            target.limit.clone(),
            flood.name.into(),
            Cell::Number(outcome.offered_per_second(), 0),
            Cell::Number(*rate, 0),
            Cell::Number(flooded.received_per_second(), 0),
            target.note.as_str().into(),
        ])?;
        if let Some(p99) = p99 {
            p99s.push((flood_offered, p99));
        }
        losses.push((flood_offered, loss * 100.0));
    }
    Ok((p99s, losses))
}
