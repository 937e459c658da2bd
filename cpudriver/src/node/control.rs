//! Hosting the monitor (the distributed control plane) on each core: its hooks, its outbox (the
//! mailbox), its clock, statistics gathering, and what the core does with the events it raises.
//!
//! The monitor is a pure state machine (`monitor` crate); the node feeds it the monitor letters
//! that arrive, calls `tick` at its deadlines, and applies its events:
//! `MachineComplete` (core 0 opens TCP port 80 everywhere by agreement), `ChangeCommitted`
//! (a flow-group move: the flow map changes, the NIC's home rewrites the NIC's table from it),
//! `CoreFailed` (the failed core's flow groups are reassigned by the same rule on every core, its
//! mailbox links fenced, the network told the live cores, and the NIC's control and queue 0 taken
//! over if the failed core was the NIC's home: `takeover.rs`), `Fenced` (this core stops),
//! `StatsReady` (the gathered counters fill in `/stats` for cores whose snapshot did not arrive),
//! `BindingReady` (both ends claim the channel in the region the client lent and the mailbox
//! adds it as a link).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use monitor::{Change, CoreId, Hooks, Message, Outbox, Region, Vote, COUNTERS};

use super::framing::{Family, Inline, KernelBulk, Letter};
use super::mailbox::{LinkId, Mailbox};
use super::net::NetService;
use super::{Instant, Next, Node, Platform, Stop};

/// The kernel's side of the monitor.
pub struct KernelHooks {
    /// The counters this core reports in statistics gatherings (refreshed before each tick).
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
        // A binding's region comes from the client core's heap (identity-mapped memory in the
        // kernel, so the physical address is the pointer), 64-byte aligned, and holds a URPC
        // channel initialised here, before its address travels to the server in the bind request
        // (that message is the happens-before edge the server's `attach_raw` needs). Regions are
        // not returned: bindings live until a core fails.
        let len = len.max(urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::SIZE as u64);
        let bytes: Box<[u8]> = vec![0u8; usize::try_from(len).ok()? + 63].into_boxed_slice();
        let start = Box::leak(bytes).as_mut_ptr();
        let offset = start.align_offset(64);
        // SAFETY: `offset < 64`, inside the allocation of `len + 63` bytes.
        let base = unsafe { start.add(offset) };
        // SAFETY: `base .. base + len` lies inside the fresh leaked allocation, is used by nothing
        // else, and is shared only through the channel from now on (init_raw's conditions 1-3:
        // the peer attaches only after the bind request carrying the address).
        unsafe { urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::init_raw(base, len as usize) }
            .ok()?;
        Some(Region {
            base: base.expose_provenance() as u64,
            len,
        })
    }

    fn free_region(&mut self, _region: Region) {}

    fn counters(&mut self) -> [u64; COUNTERS] {
        self.counters
    }
}

/// The monitor's outbox: every message goes out at once through the mailbox (inline, family
/// monitor). A refused one is dropped: the monitor re-sends what matters until acknowledged.
pub struct MonitorOutbox<'a> {
    /// The core's mailbox.
    pub mailbox: &'a mut Mailbox,
}

impl Outbox for MonitorOutbox<'_> {
    fn send(&mut self, to: CoreId, message: Message) {
        let mut bytes = [0u8; monitor::MESSAGE_BYTES];
        let length = message.encode(&mut bytes);
        if let Some(inline) = Inline::new(&bytes[..length]) {
            let _ = self
                .mailbox
                .send(LinkId(to.index()), &Letter::inline(Family::Monitor, inline));
        }
    }
}

/// The monitor and what the core keeps about its requests.
pub struct Control {
    /// The core's monitor.
    pub monitor: monitor::Monitor<KernelHooks>,
    /// Agreements this core began: transaction, start, change.
    agreements: Vec<(monitor::TxId, Instant, Change)>,
    machine_complete_at: Option<Instant>,
    next_stats: Option<Instant>,
    stats_period_ns: u64,
    /// Cores whose snapshot arrived during the current gathering (bit per core).
    snapshots: u64,
}

impl Control {
    /// Hosting for `monitor`; gatherings every `stats_period_ns` once the machine is complete.
    pub fn new(monitor: monitor::Monitor<KernelHooks>, stats_period_ns: u64) -> Self {
        Self {
            monitor,
            agreements: Vec::new(),
            machine_complete_at: None,
            next_stats: None,
            stats_period_ns,
            snapshots: 0,
        }
    }

    /// When the machine became complete, as this core saw it.
    pub fn machine_complete_at(&self) -> Option<Instant> {
        self.machine_complete_at
    }

    /// A statistics snapshot from `core` arrived.
    pub fn snapshot_arrived(&mut self, core: usize) {
        if core < 64 {
            self.snapshots |= 1 << core;
        }
    }

    /// Proposes `change` to every live core; the outcome is printed when the monitor reports it.
    pub fn begin_agreement(
        &mut self,
        now: Instant,
        change: Change,
        mailbox: &mut Mailbox,
        platform: &mut dyn Platform,
    ) {
        match self
            .monitor
            .begin_agreement(now, change, &mut MonitorOutbox { mailbox })
        {
            Ok(tx) => self.agreements.push((tx, now, change)),
            Err(error) => platform.print(format_args!("monitor: agreement {change:?}: {error:?}")),
        }
    }
}

impl<N: NetService> Node<N> {
    /// A monitor letter from `peer`. A statistics request is also answered with this core's
    /// netd snapshot, by reference, beside the monitor's own counters.
    pub(crate) fn monitor_letter(
        &mut self,
        now: Instant,
        peer: usize,
        bytes: &[u8],
        platform: &mut dyn Platform,
    ) {
        let Some(from) = CoreId::new(peer as u8) else {
            return;
        };
        self.takeover.heard(peer);
        let mut outbox = MonitorOutbox {
            mailbox: &mut self.mailbox,
        };
        match Message::decode(bytes) {
            Ok(message) => {
                if let (Message::StatsRequest { .. }, Some(net)) = (&message, self.net.as_mut()) {
                    net.set_transport_counters(outbox.mailbox.counters());
                    let snapshot = net.snapshot_bytes(now);
                    let _ = outbox.mailbox.send_bulk(
                        LinkId(peer),
                        Family::Kernel,
                        KernelBulk::StatsSnapshot as u8,
                        snapshot.len(),
                        |buffer| {
                            buffer.copy_from_slice(&snapshot);
                            true
                        },
                    );
                }
                self.control.monitor.handle(now, from, message, &mut outbox);
            }
            Err(_) => {
                // Counted by the monitor as a decode error.
                let _ = self
                    .control
                    .monitor
                    .handle_bytes(now, from, bytes, &mut outbox);
                self.counters.malformed += 1;
            }
        }
        self.after_monitor(now, platform);
    }

    /// Applies every event the monitor raised (and those that applying them raises).
    pub(crate) fn after_monitor(&mut self, now: Instant, platform: &mut dyn Platform) {
        while let Some(event) = self.control.monitor.poll_event() {
            self.monitor_event(now, event, platform);
            if let Some(mut hook) = self.hook.take() {
                self.hook_access(now, platform, |access| hook.event(&event, access));
                self.hook = Some(hook);
            }
        }
    }

    /// The monitor's clock and the statistics schedule (phase 3 of the turn).
    pub(crate) fn control_timers(&mut self, now: Instant, platform: &mut dyn Platform) -> Next {
        if now >= self.control.monitor.next_deadline() {
            if let Some(net) = self.net.as_ref() {
                self.control.monitor.hooks_mut().counters =
                    crate::stats::pack(&net.counters(), Self::uptime_ms(now));
            }
            self.control.monitor.tick(
                now,
                &mut MonitorOutbox {
                    mailbox: &mut self.mailbox,
                },
            );
            self.after_monitor(now, platform);
        }
        let mut next = Next::until(self.control.monitor.next_deadline());
        if let Some(at) = self.control.next_stats {
            if now >= at {
                self.control.next_stats = Some(now.after(self.control.stats_period_ns));
                self.gather_stats(now, platform);
            }
            next = next.and(Next::Halt {
                until: self.control.next_stats,
            });
        }
        next
    }

    /// Starts gathering every core's statistics (their snapshots come by reference).
    pub(crate) fn gather_stats(&mut self, now: Instant, platform: &mut dyn Platform) {
        let requested = self.control.monitor.request_stats(
            now,
            &mut MonitorOutbox {
                mailbox: &mut self.mailbox,
            },
        );
        if requested.is_ok() {
            self.control.snapshots = 0;
        }
        self.after_monitor(now, platform);
    }

    /// What the core does with one monitor event.
    fn monitor_event(&mut self, now: Instant, event: monitor::Event, platform: &mut dyn Platform) {
        use monitor::{Event, Protocol};
        let core = self.config.core;
        match event {
            Event::MachineComplete { members } => {
                self.control.machine_complete_at = Some(now);
                if self.net.is_some() {
                    self.control.next_stats = Some(now.after(self.control.stats_period_ns));
                }
                if core == 0 {
                    platform.print(format_args!(
                        "monitor: machine complete, {} cores, at {} ms",
                        members.len(),
                        Self::uptime_ms(now)
                    ));
                    // The first agreement: open the HTTP port on every core.
                    let change = Change::OpenPort {
                        proto: Protocol::Tcp,
                        port: 80,
                    };
                    self.control
                        .begin_agreement(now, change, &mut self.mailbox, platform);
                }
            }
            Event::CoreFailed(failed) => {
                platform.print(format_args!(
                    "monitor: core {} saw core {} fail at {} ms",
                    core,
                    failed.index(),
                    Self::uptime_ms(now)
                ));
                let reclaimed = self.mailbox.fence(failed.index());
                let live = self.control.monitor.live();
                if let Some(net) = self.net.as_mut() {
                    net.set_live_cores(live.bits());
                }
                let mut moved_to = [0usize; monitor::MAX_CORES];
                let moved = self.reassign_flow_groups(live, &mut moved_to);
                self.take_over(now, failed.index(), live, platform);
                self.sync_flows(platform);
                // The machine-wide line comes from the leader (with a NIC, the NIC's home).
                if self.control.monitor.leader().index() == core {
                    let mut to = alloc::string::String::new();
                    for (target, count) in moved_to.iter().enumerate().filter(|(_, n)| **n > 0) {
                        let _ = core::fmt::Write::write_fmt(
                            &mut to,
                            format_args!(", {count} to core {target}"),
                        );
                    }
                    platform.print(format_args!(
                        "monitor: {} flow groups of core {} moved to the live cores{}",
                        moved,
                        failed.index(),
                        to
                    ));
                }
                if reclaimed > 0 {
                    platform.print(format_args!(
                        "monitor: core {core} took back {reclaimed} bulk buffers lent to core {}",
                        failed.index()
                    ));
                }
            }
            Event::Fenced => {
                platform.print(format_args!(
                    "monitor: core {core} was declared failed by the others; it stops"
                ));
                self.stopped = Some(Stop::Fenced);
            }
            Event::ChangeCommitted { tx, change } => {
                if let Some(position) = self.control.agreements.iter().position(|a| a.0 == tx) {
                    let (_, started, _) = self.control.agreements.swap_remove(position);
                    platform.print(format_args!(
                        "monitor: agreement {:?} committed on {} cores in {} us",
                        change,
                        self.control.monitor.live().len(),
                        now.as_nanos().saturating_sub(started.as_nanos()) / 1000
                    ));
                }
                if let Change::MoveFlowGroup { group, to, .. } = change {
                    self.move_flow_group(group, to, platform);
                    if self.control.monitor.leader().index() == core {
                        platform.print(format_args!(
                            "monitor: flow group {} now on core {}",
                            group,
                            to.index()
                        ));
                    }
                }
            }
            Event::ChangeAborted { tx, change } => {
                self.control.agreements.retain(|a| a.0 != tx);
                platform.print(format_args!("monitor: agreement {change:?} aborted"));
            }
            Event::StatsReady { responded, .. } => self.stats_ready(responded),
            Event::NameRegistered { name, outcome } => platform.print(format_args!(
                "monitor: core {} registered '{}': {:?}",
                core,
                core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                outcome
            )),
            Event::BindingReady {
                role,
                name,
                peer,
                region,
                ..
            } => self.binding_ready(now, role, name, peer, region, platform),
            Event::BindingFailed { name, reason, .. } => platform.print(format_args!(
                "monitor: binding '{}' failed: {:?}",
                core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                reason
            )),
            _ => {}
        }
    }

    /// A gathering finished: cores that answered the monitor but whose snapshot did not arrive
    /// (a full pool, a full outbox) are shown with the counters the monitor carried.
    fn stats_ready(&mut self, responded: monitor::CoreSet) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        for core in responded.iter() {
            let index = core.index();
            if index == self.config.core || self.control.snapshots & (1 << index) != 0 {
                continue;
            }
            let Some(values) = self.control.monitor.gathered(core) else {
                continue;
            };
            let (counters, uptime_ms) = crate::stats::unpack(values);
            let mut stats = netd::CoreStats::empty(index as u16);
            stats.counters = counters;
            stats.uptime_ms = uptime_ms;
            let _ = net.absorb_snapshot(index as u16, &stats.encode());
        }
    }

    /// Both ends of a binding claim the channel in the region the client lent.
    fn binding_ready(
        &mut self,
        now: Instant,
        role: monitor::Role,
        name: monitor::Name,
        peer: CoreId,
        region: Region,
        platform: &mut dyn Platform,
    ) {
        let address = core::ptr::with_exposed_provenance::<u8>(region.base as usize);
        // SAFETY: the client initialised a channel in this region before its address was sent
        // (KernelHooks::allocate_region), and the region lives forever (attach_raw's conditions).
        let channel = unsafe {
            urpc::ChannelRegion::<{ urpc::DEFAULT_SLOTS }>::attach_raw(address, region.len as usize)
        };
        let side = match role {
            monitor::Role::Client => urpc::Side::A,
            monitor::Role::Server => urpc::Side::B,
        };
        match channel.map(|channel| channel.claim(side)) {
            Ok(Ok(endpoint)) => {
                platform.print(format_args!(
                    "monitor: binding '{}' ready on core {} as {:?}, peer core {}, region {:#x}+{:#x}",
                    core::str::from_utf8(name.as_bytes()).unwrap_or("?"),
                    self.config.core,
                    role,
                    peer.index(),
                    region.base,
                    region.len
                ));
                let link = self.mailbox.add_bound(peer.index(), endpoint);
                if let Some(mut hook) = self.hook.take() {
                    self.hook_access(now, platform, |access| {
                        hook.bound(link, peer.index(), role, access)
                    });
                    self.hook = Some(hook);
                }
            }
            Ok(Err(error)) => platform.print(format_args!("monitor: binding channel: {error:?}")),
            Err(error) => {
                platform.print(format_args!("monitor: binding region unusable: {error:?}"))
            }
        }
    }
}
