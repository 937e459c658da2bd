//! Overload, isolation and accounting on the simulated NIC with simulated clocks.
//!
//! Time is simulated: each core has a clock (1 cycle = 1 ns) that moves only by modelled costs —
//! `receive_cost` per frame taken from the ring (all receive work up to the path queue) and the
//! application's own cost per datagram (a [`Burner`] echo service) — plus a small fixed cost per
//! loop turn. Frames arrive on the simulated wire on a fixed schedule in simulated time; between
//! turns the harness injects every frame whose arrival time has passed on that core's clock, so
//! a long turn lets the ring fill (and the NIC drop when it is full) as real hardware would.
//! Everything else — classifier, paths, scheduler, smoltcp, the NIC's Toeplitz steering — is the
//! real code. The tests print their figures (`cargo test -p netd -- --nocapture`); the tables in
//! `docs/netd.md` come from them.

use super::harness::*;
use crate::app::{AppContext, Datagram, DatagramService, Service};
use crate::config::{Discipline, NetConfig, NetOptions};
use crate::{DropReason, PathKey};
use drivers::nic::QueueDatapath;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

/// An echo service that costs `cost` cycles of simulated time per datagram.
struct Burner {
    cost: u64,
}

impl DatagramService for Burner {
    fn name(&self) -> &'static str {
        "burner"
    }

    fn on_datagram(
        &mut self,
        _context: &mut AppContext<'_>,
        datagram: Datagram<'_>,
    ) -> Option<usize> {
        advance(self.cost);
        Some(datagram.length)
    }
}

/// Fixed cost of one kernel loop turn around the poll (not netd's; keeps time moving).
const TURN_COST: u64 = 50;

/// One flow of offered load.
#[derive(Clone, Debug)]
struct Flow {
    /// Name in reports.
    name: &'static str,
    /// The service port it goes to.
    port: u16,
    /// The client's source port (chooses the core).
    source_port: u16,
    /// The core the NIC steers it to.
    core: usize,
    /// Cycles between two frames (0: the flow is off).
    interval: u64,
}

/// What one flow got.
#[derive(Clone, Debug, Default)]
struct FlowReport {
    offered: u64,
    delivered: u64,
    latencies: Vec<u64>,
}

impl FlowReport {
    fn delivered_fraction(&self) -> f64 {
        self.delivered as f64 / self.offered.max(1) as f64
    }

    fn percentile(&self, p: f64) -> u64 {
        if self.latencies.is_empty() {
            return 0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn mean(&self) -> u64 {
        self.latencies.iter().sum::<u64>() / self.latencies.len().max(1) as u64
    }
}

/// What a simulation run produced.
struct Report {
    flows: BTreeMap<&'static str, FlowReport>,
    cluster: Cluster,
    /// Cycles of simulated time measured (after the warm-up), per core.
    measured_cycles: u64,
    /// Cycles spent inside `poll`, per core (what netd's own `cycles_total` must grow by).
    poll_cycles: Vec<u64>,
    /// netd's `cycles_total` per core before the run (the set-up's ARP exchange).
    cycles_before: Vec<u64>,
}

impl Report {
    /// Delivered frames per simulated millisecond, all flows named `name`.
    fn rate(&self, name: &str) -> f64 {
        let delivered: u64 = self
            .flows
            .iter()
            .filter(|(flow, _)| **flow == name)
            .map(|(_, report)| report.delivered)
            .sum();
        delivered as f64 * 1e6 / self.measured_cycles as f64
    }

    fn flow(&self, name: &str) -> &FlowReport {
        &self.flows[name]
    }

    fn sum(&self, f: impl Fn(&crate::stats::CoreCounters) -> u64) -> u64 {
        self.cluster
            .cores
            .iter()
            .map(|core| f(core.net.counters()))
            .sum()
    }

    fn path_sum(&self, port: u16, f: impl Fn(&crate::PathCounters) -> u64) -> u64 {
        self.cluster
            .cores
            .iter()
            .filter_map(|core| core.net.path(PathKey::Udp(port)))
            .map(|path| f(path.counters()))
            .sum()
    }
}

/// The payload of a load frame: flow index, arrival time.
fn payload(flow: usize, arrival: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(flow as u64).to_be_bytes());
    bytes[8..].copy_from_slice(&arrival.to_be_bytes());
    bytes
}

/// Reads a reply's flow index and arrival time back.
fn read_reply(frame: &[u8]) -> Option<(usize, u64)> {
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, UdpPacket};
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    let body = udp.payload();
    if body.len() != 16 {
        return None;
    }
    let flow = u64::from_be_bytes(body[..8].try_into().ok()?) as usize;
    let arrival = u64::from_be_bytes(body[8..].try_into().ok()?);
    Some((flow, arrival))
}

/// The arrival schedule of a run: every flow's next frame, and what was offered in the
/// measured window.
struct Schedule {
    flows: Vec<Flow>,
    next: Vec<u64>,
    offered: Vec<u64>,
    wire: drivers::sim::SimWire,
    warmup: u64,
    end: u64,
}

impl Arrivals for Schedule {
    fn arrive(&mut self, core: usize, now: u64) {
        // In arrival order across the flows, as on a wire.
        let due = |schedule: &Self| {
            (0..schedule.flows.len())
                .filter(|index| {
                    let flow = &schedule.flows[*index];
                    flow.core == core
                        && flow.interval > 0
                        && schedule.next[*index] <= now
                        && schedule.next[*index] < schedule.end
                })
                .min_by_key(|index| schedule.next[*index])
        };
        while let Some(index) = due(self) {
            let flow = &self.flows[index];
            let arrival = self.next[index];
            self.next[index] += flow.interval;
            if arrival >= self.warmup {
                self.offered[index] += 1;
            }
            self.wire.set_time_us(arrival / 1000);
            self.wire.inject(&udp_frame(
                flow.source_port,
                flow.port,
                &payload(index, arrival),
            ));
        }
    }
}

impl Schedule {
    /// The next arrival for `core` (or the end).
    fn next_for(&self, core: usize) -> u64 {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, flow)| flow.core == core && flow.interval > 0)
            .map(|(index, _)| self.next[index])
            .min()
            .unwrap_or(self.end)
            .min(self.end)
    }
}

/// Runs `flows` against `setup` for `warmup + measure` cycles of simulated time on every core.
fn simulate(setup: ClusterConfig, flows: &[Flow], warmup: u64, measure: u64) -> Report {
    let mut cluster = Cluster::with(setup);
    // Learn the client's address on every core first (ARP on queue 0, neighbours by message).
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    reset_clocks();
    let cycles_before: Vec<u64> = cluster
        .cores
        .iter()
        .map(|core| core.net.counters().cycles_total)
        .collect();
    let cores = cluster.cores.len();
    let end = warmup + measure;
    let schedule = Rc::new(RefCell::new(Schedule {
        flows: flows.to_vec(),
        next: flows.iter().map(|flow| flow.interval / 2).collect(),
        offered: vec![0; flows.len()],
        wire: cluster.nic.clone(),
        warmup,
        end,
    }));
    for core in cluster.cores.iter_mut() {
        core.nic.arrivals = Some(schedule.clone());
        core.nic.stamp = Some(cluster.nic.clone());
    }
    let mut delivered = vec![FlowReport::default(); flows.len()];
    let mut poll_cycles = vec![0u64; cores];
    // The core furthest behind runs next.
    let furthest_behind = || {
        (0..cores)
            .filter(|core| clock(*core) < end)
            .min_by_key(|core| clock(*core))
    };
    while let Some(core) = furthest_behind() {
        let now = clock(core);
        schedule.borrow_mut().arrive(core, now);
        let outcome = cluster.cores[core].poll(core, instant_of(now));
        let after = clock(core);
        poll_cycles[core] += after - now;
        for (left, frame) in std::mem::take(&mut cluster.cores[core].nic.sent) {
            // Counted by when they left, so the backlog a run ends with is not held against it.
            if let Some((flow, arrival)) = read_reply(&frame) {
                if left >= warmup && left < end {
                    delivered[flow].delivered += 1;
                    delivered[flow].latencies.push(left - arrival);
                }
            }
        }
        cluster.deliver_messages();
        set_current(core);
        advance(TURN_COST);
        let idle = outcome.received == 0 && outcome.transmitted == 0 && !outcome.more_work;
        if idle {
            // Halt until the next frame for this core arrives.
            let next_arrival = schedule.borrow().next_for(core);
            set_clock(core, clock(core).max(next_arrival));
        }
    }
    for core in cluster.cores.iter_mut() {
        core.nic.arrivals = None;
        core.nic.stamp = None;
    }
    let offered = schedule.borrow().offered.clone();
    let mut by_name: BTreeMap<&'static str, FlowReport> = BTreeMap::new();
    for ((flow, report), offered) in flows.iter().zip(delivered).zip(offered) {
        let entry = by_name.entry(flow.name).or_default();
        entry.offered += offered;
        entry.delivered += report.delivered;
        entry.latencies.extend(report.latencies);
    }
    Report {
        flows: by_name,
        cluster,
        measured_cycles: measure,
        poll_cycles,
        cycles_before,
    }
}

/// A cluster of `cores` serving Burner echo services on `ports` (cost each), with receive cost
/// `receive_cost` and `discipline`.
fn setup(
    cores: u16,
    discipline: Discipline,
    receive_cost: u64,
    services: &[(u16, u64)],
) -> ClusterConfig {
    let mut setup = ClusterConfig::new(cores);
    setup.options = NetOptions {
        discipline,
        ..NetOptions::default()
    };
    setup.receive_cost = receive_cost;
    let services = services.to_vec();
    setup.services = Box::new(move |_config: &NetConfig| {
        services
            .iter()
            .map(|&(port, cost)| Service::datagram(port, Burner { cost }))
            .collect()
    });
    setup
}

/// `count` flows named `name` to `port` on each of `cores` cores, together offering `rate`
/// frames per cycle per core.
fn flows_on_every_core(
    cluster_for_ports: &Cluster,
    name: &'static str,
    port: u16,
    cores: u16,
    count: usize,
    per_core_interval: f64,
) -> Vec<Flow> {
    let mut flows = Vec::new();
    for core in 0..cores {
        for source_port in ports_for_core(cluster_for_ports, core, port, count) {
            flows.push(Flow {
                name,
                port,
                source_port,
                core: usize::from(core),
                interval: (per_core_interval * count as f64).round() as u64,
            });
        }
    }
    flows
}

const FLOOD_PORT: u16 = 7000;
const VICTIM_PORT: u16 = 7001;

/// Offered load factors, multiples of one core's capacity.
const LOADS: [f64; 7] = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0];

/// Per-core delivered rates (frames per simulated ms) at each of [`LOADS`].
fn curve(discipline: Discipline, cores: u16, receive_cost: u64, cost: u64) -> Vec<(f64, f64)> {
    let capacity_interval = (receive_cost + cost) as f64; // cycles per frame at capacity
    let ports_from = Cluster::with(setup(cores, discipline, 0, &[(FLOOD_PORT, cost)]));
    LOADS
        .iter()
        .map(|&load| {
            let flows = flows_on_every_core(
                &ports_from,
                "load",
                FLOOD_PORT,
                cores,
                8,
                capacity_interval / load,
            );
            let report = simulate(
                setup(cores, discipline, receive_cost, &[(FLOOD_PORT, cost)]),
                &flows,
                2_000_000,
                10_000_000,
            );
            (load, report.rate("load") / f64::from(cores))
        })
        .collect()
}

fn print_curve(label: &str, points: &[(f64, f64)], capacity: f64) {
    let mut line = String::new();
    for (load, rate) in points {
        line += &format!(" {load}x:{:.0}%", 100.0 * rate / capacity);
    }
    std::println!("{label}: delivered per core, % of capacity:{line}");
}

#[test]
fn under_overload_lrp_stays_flat_and_the_interrupt_baseline_collapses() {
    // Receiving costs a quarter of the per-frame work (as in the interrupt-driven systems the
    // livelock papers measured): 500 cycles to receive, 2,000 to serve.
    let (receive_cost, cost) = (500, 2_000);
    let capacity = 1e6 / (receive_cost + cost) as f64; // frames per ms per core
    for cores in [1u16, 2] {
        let lrp = curve(Discipline::Lrp, cores, receive_cost, cost);
        let interrupt = curve(Discipline::Interrupt, cores, receive_cost, cost);
        let fifo = curve(Discipline::SharedFifo, cores, receive_cost, cost);
        print_curve(&format!("{cores} core(s), LRP (default)"), &lrp, capacity);
        print_curve(&format!("{cores} core(s), lrp=off"), &fifo, capacity);
        print_curve(
            &format!("{cores} core(s), mode=interrupt"),
            &interrupt,
            capacity,
        );
        let peak = lrp.iter().map(|(_, rate)| *rate).fold(0.0, f64::max);
        assert!(
            peak > 0.85 * capacity,
            "LRP peak {peak:.0} of {capacity:.0}"
        );
        // Below capacity everything is served.
        assert!(lrp[0].1 > 0.98 * 0.5 * capacity, "{lrp:?}");
        for (load, rate) in &lrp[1..] {
            assert!(
                *rate >= 0.9 * peak,
                "{cores} core(s), LRP at {load}x delivers {rate:.0}/ms, under 90% of its peak {peak:.0}"
            );
        }
        let interrupt_peak = interrupt.iter().map(|(_, rate)| *rate).fold(0.0, f64::max);
        let (_, at_eight) = interrupt[interrupt.len() - 1];
        assert!(
            at_eight < 0.3 * interrupt_peak,
            "{cores} core(s): the interrupt baseline should collapse (receive livelock): \
             {at_eight:.0}/ms at 8x against a peak of {interrupt_peak:.0}"
        );
    }
}

#[test]
fn a_flood_on_one_path_leaves_a_victim_path_alone_with_lrp_but_not_without() {
    // Receiving is cheap next to the service (20 against 2,000 cycles): LRP can look at every
    // frame of an 8x flood and drop the excess at the flood path's queue.
    let (receive_cost, cost) = (20, 2_000);
    let capacity_interval = (receive_cost + cost) as f64;
    for cores in [1u16, 2, 4] {
        let services = [(FLOOD_PORT, cost), (VICTIM_PORT, cost)];
        let ports_from = Cluster::with(setup(cores, Discipline::Lrp, 0, &services));
        // The victim offers 5% of a core's capacity on every core.
        let victim = flows_on_every_core(
            &ports_from,
            "victim",
            VICTIM_PORT,
            cores,
            2,
            capacity_interval / 0.05,
        );
        let mut results: BTreeMap<(Discipline, u32), Report> = BTreeMap::new();
        for discipline in [Discipline::Lrp, Discipline::SharedFifo] {
            for flood in [0.0, 8.0] {
                let mut flows = victim.clone();
                if flood > 0.0 {
                    flows.extend(flows_on_every_core(
                        &ports_from,
                        "flood",
                        FLOOD_PORT,
                        cores,
                        8,
                        capacity_interval / flood,
                    ));
                }
                let report = simulate(
                    setup(cores, discipline, receive_cost, &services),
                    &flows,
                    2_000_000,
                    10_000_000,
                );
                let victim = report.flow("victim");
                std::println!(
                    "{cores} core(s), {discipline:?}, flood {flood}x: victim delivered {:.1}%, \
                     latency mean {} p99 {} cycles; flood delivered {:.0}/ms/core; \
                     drops: flood path queue {}, shared FIFO {}, NIC ring {}",
                    100.0 * victim.delivered_fraction(),
                    victim.mean(),
                    victim.percentile(0.99),
                    report.rate("flood") / f64::from(cores),
                    report.path_sum(FLOOD_PORT, |p| p.queue_drops),
                    report.sum(|c| c.shared_queue_drops),
                    report.sum(|c| c.nic_rx_no_descriptor),
                );
                results.insert((discipline, flood as u32), report);
            }
        }
        let lrp_alone = results[&(Discipline::Lrp, 0)].flow("victim").clone();
        let lrp_flood = &results[&(Discipline::Lrp, 8)];
        let fifo_alone = results[&(Discipline::SharedFifo, 0)].flow("victim").clone();
        let fifo_flood = &results[&(Discipline::SharedFifo, 8)];
        // (Counted by departure in the window against arrivals in it: one frame of ~120 may
        // fall on either side of an edge.)
        assert!(lrp_alone.delivered_fraction() > 0.98 && fifo_alone.delivered_fraction() > 0.98);
        // With LRP the victim loses nothing and waits at most one quantum of the flood path
        // more (non-preemptive: a turn of the flood path may be under way when it arrives).
        let victim = lrp_flood.flow("victim");
        assert!(
            victim.delivered_fraction() >= lrp_alone.delivered_fraction() - 0.01,
            "{cores} core(s): LRP victim delivered {:.3}",
            victim.delivered_fraction()
        );
        let scheduler = crate::config::SchedulerConfig::for_cycles_per_microsecond(1000);
        let bound = lrp_alone.percentile(0.99)
            + scheduler.quantum_cycles
            + 2 * cost
            + scheduler.rx_frames_per_turn as u64 * receive_cost
            + 2 * TURN_COST;
        assert!(
            victim.percentile(0.99) <= bound,
            "{cores} core(s): LRP victim p99 {} above {bound}",
            victim.percentile(0.99)
        );
        // The flood still gets the rest of the core, dropped at its own queue, not at the NIC.
        assert!(lrp_flood.rate("flood") / f64::from(cores) > 0.85 * 1e6 / capacity_interval);
        assert!(lrp_flood.path_sum(FLOOD_PORT, |p| p.queue_drops) > 0);
        assert_eq!(lrp_flood.path_sum(VICTIM_PORT, |p| p.queue_drops), 0);
        assert_eq!(lrp_flood.sum(|c| c.nic_rx_no_descriptor), 0);
        // Without LRP the victim shares the flood's fate: dropped at the shared FIFO, and
        // queued behind it.
        let victim = fifo_flood.flow("victim");
        assert!(
            victim.delivered_fraction() < 0.5,
            "{cores} core(s): lrp=off victim delivered {:.3}",
            victim.delivered_fraction()
        );
        assert!(
            victim.percentile(0.99) > 10 * fifo_alone.percentile(0.99),
            "{cores} core(s): lrp=off victim p99 {} against {} alone",
            victim.percentile(0.99),
            fifo_alone.percentile(0.99)
        );
        assert!(fifo_flood.sum(|c| c.shared_queue_drops) > 0);
    }
}

#[test]
fn drops_are_counted_where_they_happen_and_every_frame_is_accounted_for() {
    // Expensive receive (the receive quota leaves frames to the NIC) and cheap receive (LRP
    // drops at the path queue, and leaves the ring to the NIC while the path is behind), at 8x.
    for (receive_cost, quota_limits) in [(500u64, true), (20, false)] {
        let cost = 2_000;
        let services = [(FLOOD_PORT, cost)];
        let ports_from = Cluster::with(setup(1, Discipline::Lrp, 0, &services));
        let flows = flows_on_every_core(
            &ports_from,
            "flood",
            FLOOD_PORT,
            1,
            8,
            (receive_cost + cost) as f64 / 8.0,
        );
        let report = simulate(
            setup(1, Discipline::Lrp, receive_cost, &services),
            &flows,
            0,
            5_000_000,
        );
        let core = &report.cluster.cores[0];
        let counters = core.net.counters();
        let path = *core.net.path(PathKey::Udp(FLOOD_PORT)).unwrap().counters();
        let wire = report.cluster.nic.stats();
        let queued = core.net.path(PathKey::Udp(FLOOD_PORT)).unwrap().queued() as u64;
        let in_ring = report.cluster.nic.pending(drivers::nic::QueueId(0)) as u64;
        let nic_drops = core.nic.inner.stats().rx_no_descriptor;
        // Every frame on the wire is in exactly one place: dropped by the NIC (its count), still
        // in the ring (the NIC's), or taken by the stack (netd's count)...
        assert_eq!(
            wire.injected,
            nic_drops + in_ring + counters.rx_frames,
            "receive cost {receive_cost}"
        );
        // ... and each frame the stack took (the ARP request of the set-up is one) was served,
        // dropped at its path's queue, or waits there.
        assert_eq!(
            counters.rx_frames,
            1 + path.queue_drops + path.packets + queued,
            "receive cost {receive_cost}: {path:?}"
        );
        assert_eq!(counters.drops.iter().sum::<u64>(), 0);
        // The NIC drops what the stack leaves in the ring, for one of two reasons.
        assert!(nic_drops > 0, "{counters:?}");
        if quota_limits {
            // Receiving is dear: the turn's quota (a share of the path's work) leaves the excess
            // in the ring.
            assert!(counters.rx_quota_reached > 0, "{counters:?}");
        } else {
            // Receiving is cheap: the excess is looked at and dropped at the path's queue, until
            // the flood's path — the only active one — is behind; then turns leave the ring to
            // the NIC.
            assert!(path.queue_drops > 0);
            assert!(counters.rx_withheld > 0, "{counters:?}");
        }
        std::println!(
            "receive cost {receive_cost}: injected {}, NIC ring drops {}, path queue drops {}, \
             served {}, receive quota reached in {} turns, receive withheld in {} of {} turns",
            wire.injected,
            nic_drops,
            path.queue_drops,
            path.packets,
            counters.rx_quota_reached,
            counters.rx_withheld,
            counters.polls
        );
        // netd reads the NIC's counter every 10 ms: a turn after that shows it in /stats.
        let mut cluster = report.cluster;
        let later = cluster.now + smoltcp::time::Duration::from_millis(20);
        let _ = cluster.cores[0].poll(0, later);
        assert_eq!(
            cluster.cores[0].net.counters().nic_rx_no_descriptor,
            cluster.cores[0].nic.inner.stats().rx_no_descriptor
        );
    }
}

#[test]
fn every_cycle_is_charged_to_the_path_that_spent_it() {
    // Two paths: one service costs three times the other. Receive costs 100 per frame.
    let (receive_cost, heavy, light) = (100u64, 3_000u64, 1_000u64);
    let services = [(FLOOD_PORT, heavy), (VICTIM_PORT, light)];
    let ports_from = Cluster::with(setup(1, Discipline::Lrp, 0, &services));
    // Both overloaded (each alone would need more than the core).
    let mut flows = flows_on_every_core(&ports_from, "heavy", FLOOD_PORT, 1, 4, 1_000.0);
    flows.extend(flows_on_every_core(
        &ports_from,
        "light",
        VICTIM_PORT,
        1,
        4,
        400.0,
    ));
    let report = simulate(
        setup(1, Discipline::Lrp, receive_cost, &services),
        &flows,
        0,
        20_000_000,
    );
    let core = &report.cluster.cores[0];
    let counters = core.net.counters();
    let heavy_path = *core.net.path(PathKey::Udp(FLOOD_PORT)).unwrap().counters();
    let light_path = *core.net.path(PathKey::Udp(VICTIM_PORT)).unwrap().counters();
    // The cycles of every turn went somewhere, and nowhere twice.
    let paths: u64 = core
        .net
        .paths()
        .iter()
        .map(|path| path.counters().cycles)
        .sum();
    assert_eq!(
        paths + counters.cycles_idle + counters.cycles_unclassified,
        counters.cycles_total
    );
    assert_eq!(
        counters.cycles_total - report.cycles_before[0],
        report.poll_cycles[0]
    );
    // Each path's runs cost exactly what its service burnt, nothing of the other's.
    assert_eq!(heavy_path.cycles_run, heavy_path.packets * heavy);
    assert_eq!(light_path.cycles_run, light_path.packets * light);
    // Receiving is charged per frame to the path the frame was for: served, dropped at its
    // queue, or still waiting there.
    let queued = |port| core.net.path(PathKey::Udp(port)).unwrap().queued() as u64;
    assert_eq!(
        heavy_path.cycles_receive,
        (heavy_path.packets + heavy_path.queue_drops + queued(FLOOD_PORT)) * receive_cost
    );
    assert_eq!(
        light_path.cycles_receive,
        (light_path.packets + light_path.queue_drops + queued(VICTIM_PORT)) * receive_cost
    );
    assert_eq!(
        heavy_path.cycles,
        heavy_path.cycles_receive + heavy_path.cycles_run + heavy_path.cycles_transmit
    );
    // Deficit of cycles: both get about the same cycles, so the path that burns three times
    // as much per frame gets about a third of the frames (turns), not the same number.
    let ratio = heavy_path.cycles_run as f64 / light_path.cycles_run as f64;
    assert!((0.8..1.25).contains(&ratio), "cycles ratio {ratio:.2}");
    let packets = light_path.packets as f64 / heavy_path.packets as f64;
    assert!((2.4..3.75).contains(&packets), "packets ratio {packets:.2}");
    std::println!(
        "heavy path: {} packets, {} cycles/packet; light path: {} packets, {} cycles/packet; \
         idle {} unclassified {} total {}",
        heavy_path.packets,
        heavy_path.cycles / heavy_path.packets.max(1),
        light_path.packets,
        light_path.cycles / light_path.packets.max(1),
        counters.cycles_idle,
        counters.cycles_unclassified,
        counters.cycles_total
    );
    // Malformed frames, dropped before a path is known, are charged to no path.
    let mut cluster = Cluster::with(setup(1, Discipline::Lrp, receive_cost, &services));
    for _ in 0..10 {
        cluster.inject(&ethernet(STACK_MAC, CLIENT_MAC, 0x86dd, &[0u8; 40]));
    }
    let before = *cluster.cores[0].net.counters();
    let now = cluster.now;
    cluster.cores[0].poll(0, now);
    let after = *cluster.cores[0].net.counters();
    assert_eq!(
        after.drops[DropReason::UnsupportedEtherType as usize]
            - before.drops[DropReason::UnsupportedEtherType as usize],
        10
    );
    assert_eq!(
        after.cycles_unclassified - before.cycles_unclassified,
        10 * receive_cost
    );
}

#[test]
fn a_turn_is_bounded_in_time_under_any_load() {
    let (receive_cost, cost) = (500, 2_000);
    let services = [(FLOOD_PORT, cost)];
    let ports_from = Cluster::with(setup(1, Discipline::Lrp, 0, &services));
    let flows = flows_on_every_core(
        &ports_from,
        "flood",
        FLOOD_PORT,
        1,
        8,
        (receive_cost + cost) as f64 / 8.0,
    );
    let scheduler = crate::config::SchedulerConfig::for_cycles_per_microsecond(1000);
    for discipline in [
        Discipline::Lrp,
        Discipline::SharedFifo,
        Discipline::Interrupt,
    ] {
        let report = simulate(
            setup(1, discipline, receive_cost, &services),
            &flows,
            0,
            5_000_000,
        );
        let longest = report.cluster.cores[0].net.counters().longest_turn_cycles;
        std::println!("{discipline:?}: longest turn {longest} cycles at 8x");
        let bound = match discipline {
            // The turn's budget, plus the last run started within it, plus a full receive.
            Discipline::Lrp | Discipline::SharedFifo => {
                scheduler.turn_cycles
                    + scheduler.quantum_cycles
                    + cost
                    + scheduler.rx_frames_per_turn as u64 * receive_cost
            }
            // The drain limit: protocol work for every frame, then one pass of applications.
            Discipline::Interrupt => {
                crate::stack::INTERRUPT_DRAIN_LIMIT as u64 * receive_cost + 64 * cost
            }
        };
        assert!(longest <= bound, "{discipline:?}: {longest} > {bound}");
    }
}
