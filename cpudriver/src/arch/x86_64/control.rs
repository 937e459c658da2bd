//! Hosting the monitor (the distributed control plane) on each core: its hooks, its outbox,
//! and its clock.
//!
//! The monitor is a pure state machine (`monitor` crate); the core's loop feeds it the messages
//! that arrive on the URPC channels, calls `tick` at its deadlines, sends what it queued, and
//! applies the events it raises (flow-group moves, failed cores, fencing).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use monitor::{Change, CoreId, Hooks, Message, Outbox, Region, Vote, COUNTERS};

use super::{channels, control, net, port, tsc};
use crate::messages::KernelMessage;
use urpc::CoreMessage;

/// Monitor messages travel in a `KernelMessage::Monitor` slot of at most this many bytes.
pub const MONITOR_BYTES: usize = 54;

/// The kernel's side of the monitor.
pub struct KernelHooks {
    /// The counters this core reports in statistics gatherings (refreshed by the core's loop).
    pub counters: [u64; COUNTERS],
}

impl Hooks for KernelHooks {
    fn vote(&mut self, change: &Change) -> Vote {
        match change {
            // Flow groups are 0..128 (the redirection table); anything else is refused.
            Change::MoveFlowGroup { group, .. } if *group >= 128 => Vote::No,
            _ => Vote::Yes,
        }
    }

    fn allocate_region(&mut self, len: u64) -> Option<Region> {
        // A binding's region comes from the client core's heap (identity-mapped memory, so the
        // physical address is the pointer), 64-byte aligned, and holds a URPC channel that is
        // initialised here, before its address travels to the server in the bind request (that
        // message is the happens-before edge the server's `attach_raw` needs). Regions are not
        // returned: bindings live until a core fails.
        let len = len.max(urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::SIZE as u64);
        let bytes: Box<[u8]> = vec![0u8; usize::try_from(len).ok()? + 63].into_boxed_slice();
        let start = Box::leak(bytes).as_mut_ptr();
        let base = (start as u64).next_multiple_of(64);
        // SAFETY: `base .. base + len` lies inside the fresh leaked allocation, is used by nothing
        // else, and is shared only through the channel from now on.
        unsafe {
            urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::init_raw(base as *mut u8, len as usize)
        }
        .ok()?;
        Some(Region { base, len })
    }

    fn free_region(&mut self, _region: Region) {}

    fn counters(&mut self) -> [u64; COUNTERS] {
        self.counters
    }
}

/// Messages the monitor queued during one call, sent by the core afterwards.
#[derive(Default)]
pub struct Outgoing(pub Vec<(CoreId, Message)>);

impl Outbox for Outgoing {
    fn send(&mut self, to: CoreId, message: Message) {
        self.0.push((to, message));
    }
}

/// The monitor's clock: nanoseconds of TSC.
pub fn now(tsc_per_ms: u64) -> monitor::Instant {
    monitor::Instant::from_nanos(
        (u128::from(tsc::now()) * 1_000_000 / u128::from(tsc_per_ms)) as u64,
    )
}

/// Cores with a network gather every core's counters this often, so `/stats` is never stale by
/// more than this.
const STATS_PERIOD_MS: u64 = 2_000;

impl super::core_loop::Core {
    pub(super) fn gather_stats(&mut self) {
        let now = control::now(self.shared.tsc_per_ms);
        match self.monitor.request_stats(now, &mut self.outgoing) {
            Ok(_) => {}
            Err(error) => log::debug!("stats gathering: {error:?}"),
        }
        self.after_monitor();
    }

    /// Hands the gathered counters of every core that answered to this core's stack.
    pub(super) fn stats_ready(&mut self, responded: monitor::CoreSet) {
        let now = net::instant(self.shared.tsc_per_ms);
        let Some(network) = self.network.as_mut() else {
            return;
        };
        let template = network.net.stats(now);
        let mut cores = alloc::vec::Vec::new();
        for core in responded.iter() {
            let Some(values) = self.monitor.gathered(core) else {
                continue;
            };
            let (counters, uptime_ms) = crate::stats::unpack(values);
            cores.push(netd::CoreStats {
                core: core.index() as u16,
                uptime_ms,
                counters,
                path_count: 0,
                ..template
            });
        }
        network.net.update_stats(&cores);
    }
    /// Sends what the monitor queued and applies the events it raised.
    pub(super) fn after_monitor(&mut self) {
        for (to, message) in core::mem::take(&mut self.outgoing.0) {
            let mut encoded = [0u8; monitor::MESSAGE_BYTES];
            let length = message.encode(&mut encoded);
            if length > crate::messages::MONITOR_MESSAGE_BYTES {
                log::error!("monitor message of {length} bytes does not fit a slot: {message:?}");
                continue;
            }
            let mut bytes = [0u8; crate::messages::MONITOR_MESSAGE_BYTES];
            bytes[..length].copy_from_slice(&encoded[..length]);
            // The monitor re-sends what is not acknowledged, so a full ring may drop.
            let apic_id = self.shared.cores[to.index()].apic_id;
            if let Some(endpoint) = self
                .channels
                .endpoints
                .get_mut(to.index())
                .and_then(Option::as_mut)
            {
                let message = KernelMessage::Monitor {
                    length: length as u8,
                    bytes,
                };
                if net::send_kernel_message(endpoint, apic_id, &message, self.shared.tsc_per_ms, 1)
                    .is_ok()
                {
                    endpoint
                        .sender
                        .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                }
            }
        }
        while let Some(event) = self.monitor.poll_event() {
            self.monitor_event(event);
        }
    }

    pub(super) fn monitor_event(&mut self, event: monitor::Event) {
        use monitor::{Change, Event, Protocol};
        match event {
            Event::MachineComplete { members } => {
                if let Some((server, client)) = self.shared.options.bind_demo {
                    if server as usize == self.index {
                        let now = control::now(self.shared.tsc_per_ms);
                        let name = monitor::Name::new(b"echo").expect("a valid name");
                        if let Err(error) =
                            self.monitor.register_name(now, name, &mut self.outgoing)
                        {
                            crate::kprintln!("monitor: register 'echo': {error:?}");
                        }
                    }
                    if client as usize == self.index {
                        // Give the server's registration time to reach the directory.
                        self.bind_at = Some(tsc::now() + 100 * self.shared.tsc_per_ms);
                    }
                }
                if self.index == 0 {
                    self.machine_complete_tsc = Some(tsc::now());
                    crate::kprintln!(
                        "monitor: machine complete, {} cores, at {} ms",
                        members.len(),
                        self.uptime_ms()
                    );
                    // The first agreement: open the HTTP port on every core.
                    self.begin_agreement(Change::OpenPort {
                        proto: Protocol::Tcp,
                        port: 80,
                    });
                }
            }
            Event::CoreFailed(core) => {
                crate::kprintln!(
                    "monitor: core {} saw core {} fail at {} ms",
                    self.index,
                    core.index(),
                    self.uptime_ms()
                );
                let moved =
                    monitor::reassign_flow_groups(&mut self.flow_owners, self.monitor.live());
                self.apply_flow_table();
                if self.index == 0 {
                    crate::kprintln!(
                        "monitor: {} flow groups of core {} moved to the live cores",
                        moved,
                        core.index()
                    );
                }
            }
            Event::Fenced => {
                crate::kprintln!(
                    "monitor: core {} was declared failed by the others; it stops",
                    self.index
                );
                port::halt_forever();
            }
            Event::ChangeCommitted { tx, change } => {
                if let Some(position) = self.agreements.iter().position(|(id, _, _)| *id == tx) {
                    let (_, started, _) = self.agreements.swap_remove(position);
                    let micros = (tsc::now() - started) * 1000 / self.shared.tsc_per_ms;
                    crate::kprintln!(
                        "monitor: agreement {:?} committed on {} cores in {} us",
                        change,
                        self.monitor.live().len(),
                        micros
                    );
                }
                if let Change::MoveFlowGroup { group, to, .. } = change {
                    if let Some(slot) = self.flow_owners.get_mut(usize::from(group)) {
                        *slot = to;
                    }
                    self.apply_flow_table();
                    if self.index == 0 {
                        crate::kprintln!(
                            "monitor: flow group {} now on core {}",
                            group,
                            to.index()
                        );
                    }
                }
            }
            Event::ChangeAborted { tx, change } => {
                self.agreements.retain(|(id, _, _)| *id != tx);
                crate::kprintln!("monitor: agreement {:?} aborted", change);
            }
            Event::StatsReady { responded, .. } => self.stats_ready(responded),
            Event::NameRegistered { name, outcome } => {
                crate::kprintln!(
                    "monitor: core {} registered '{}': {:?}",
                    self.index,
                    core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                    outcome
                );
            }
            Event::BindingReady {
                role,
                name,
                peer,
                region,
                ..
            } => {
                // SAFETY: the client initialised the channel in this region before its address
                // was sent (KernelHooks::allocate_region); the region lives forever.
                let channel = unsafe {
                    urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::attach_raw(
                        region.base as *const u8,
                        region.len as usize,
                    )
                };
                let side = if role == monitor::Role::Client {
                    urpc::Side::A
                } else {
                    urpc::Side::B
                };
                match channel.map(|channel| channel.claim(side)) {
                    Ok(Ok(mut endpoint)) => {
                        crate::kprintln!(
                            "monitor: binding '{}' ready on core {} as {:?}, peer core {}, region {:#x}+{:#x}",
                            core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                            self.index,
                            role,
                            peer.index(),
                            region.base,
                            region.len
                        );
                        if role == monitor::Role::Client {
                            let ping = CoreMessage::Ping {
                                sequence: 1,
                                timestamp: tsc::now(),
                            };
                            let _ = endpoint.sender.try_send_message(&ping);
                            let apic_id = self.shared.cores[peer.index()].apic_id;
                            endpoint
                                .sender
                                .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                        }
                        self.bound.push((peer.index(), endpoint, role));
                    }
                    Ok(Err(error)) => crate::kprintln!("monitor: binding channel: {error:?}"),
                    Err(error) => crate::kprintln!("monitor: binding region unusable: {error:?}"),
                }
            }
            Event::BindingFailed { name, reason, .. } => {
                crate::kprintln!(
                    "monitor: binding '{}' failed: {:?}",
                    core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                    reason
                );
            }
            other => log::debug!("monitor event: {other:?}"),
        }
    }

    pub(super) fn begin_agreement(&mut self, change: monitor::Change) {
        let now = control::now(self.shared.tsc_per_ms);
        match self
            .monitor
            .begin_agreement(now, change, &mut self.outgoing)
        {
            Ok(tx) => self.agreements.push((tx, tsc::now(), change)),
            Err(error) => log::warn!("agreement {change:?}: {error:?}"),
        }
        self.after_monitor();
    }

    /// Applies `flow_owners` to this core's stack and, on core 0, to the NIC.
    pub(super) fn apply_flow_table(&mut self) {
        let owners: [netd::CoreId; 128] =
            core::array::from_fn(|g| self.flow_owners[g].index() as u16);
        if let Some(network) = self.network.as_mut() {
            network.net.set_flow_table(&owners);
        }
        if let Some(control) = self.nic_control.as_mut() {
            use drivers::nic::{FlowGroup, NicControl, QueueId};
            for (group, owner) in owners.iter().enumerate() {
                if control.flow_group(FlowGroup(group as u8)) != Ok(QueueId(*owner)) {
                    if let Err(error) =
                        control.set_flow_group(FlowGroup(group as u8), QueueId(*owner))
                    {
                        log::error!("redirection table entry {group}: {error:?}");
                    }
                }
            }
        }
    }

    /// Feeds the monitor its clock and, on core 0, makes a requested flow-group move.
    pub(super) fn run_monitor(&mut self) {
        if self.bind_at.is_some_and(|at| tsc::now() >= at) {
            self.bind_at = None;
            let now = control::now(self.shared.tsc_per_ms);
            let name = monitor::Name::new(b"echo").expect("a valid name");
            if let Err(error) = self.monitor.bind(now, name, &mut self.outgoing) {
                crate::kprintln!("monitor: bind 'echo': {error:?}");
            }
            self.after_monitor();
        }
        let now = control::now(self.shared.tsc_per_ms);
        if now >= self.monitor.next_deadline() {
            if let Some(network) = self.network.as_ref() {
                let uptime = self.uptime_ms();
                self.monitor.hooks_mut().counters =
                    crate::stats::pack(network.net.counters(), uptime);
            }
            self.monitor.tick(now, &mut self.outgoing);
            self.after_monitor();
            if self.network.is_some()
                && self.monitor.is_machine_complete()
                && tsc::now() - self.last_stats_tsc > STATS_PERIOD_MS * self.shared.tsc_per_ms
            {
                self.last_stats_tsc = tsc::now();
                self.gather_stats();
            }
        }
        if let (Some(request), Some(complete)) = (
            self.shared.options.move_flow_group,
            self.machine_complete_tsc,
        ) {
            if !self.move_requested
                && tsc::now() - complete >= u64::from(request.after_ms) * self.shared.tsc_per_ms
            {
                self.move_requested = true;
                let from = self.flow_owners[usize::from(request.group)];
                match monitor::CoreId::new(request.to as u8).filter(|to| to.index() < self.cores())
                {
                    Some(to) => self.begin_agreement(monitor::Change::MoveFlowGroup {
                        group: request.group,
                        from,
                        to,
                    }),
                    None => crate::kprintln!("monitor: netd.move: no core {}", request.to),
                }
            }
        }
    }
}
