//! The per-core node: what a core decides, as code that builds and is tested on the host.
//!
//! [`Node::turn`] is one turn of the core's loop, in this order:
//!
//! 1. **Drain URPC**, bounded: at most [`mailbox::RECEIVE_BATCH`] letters from each link, each
//!    dispatched by family (monitor, netd, kernel); replies and forwards go out through the same
//!    mailbox. Peers written to are woken at the end of the phase.
//! 2. **Poll the NIC, run the paths, transmit**: one bounded netd turn (`CoreNet::poll`: an RX
//!    batch, classification, the paths with work, TX, RX refill).
//! 3. **Timers**: the monitor's tick when due, a statistics gathering when due, the optional
//!    `tick_hz=` deadline, and the scenarios hook (`bind=`, `netd.move=`, `hang=`, `fault=`, the
//!    URPC matrix, `netd.report=`).
//! 4. **Flush**: outboxes retried, consumed bulk buffers reported back, sleeping peers woken.
//!
//! Each phase returns a [`Next`] and the turn combines them: [`Next::Run`] if any phase has work
//! left (a link that gave a full batch, netd's `more_work`, `poll_us=` after traffic, a scenario
//! measuring), otherwise [`Next::Halt`] until the earliest deadline any phase named (smoltcp's
//! `poll_at`, the monitor's next heartbeat or sweep, the next gathering, an outbox retry, a
//! scenario's next step). The arch shell then halts only if [`Node::may_halt`] agrees with
//! interrupts off: the queue's interrupt unmasked and its ring still empty, every ring empty after
//! announcing sleep (URPC's sleep/notify handshake), and the deadline not passed. Anything that
//! arrives later raises an interrupt (MSI-X, wake-up IPI, the one-shot timer) that ends the halt.
//!
//! The node is driven through small traits: [`Platform`] (clock, wake-up of another core,
//! console), [`net::NetService`] (the network), [`flows::NicHome`] (the NIC's redirection table
//! and MSI-X routing, on the NIC's home core), [`flows::NicSource`] (how a core takes the NIC over
//! when it becomes the home: [`takeover`]) and [`hook::Hook`] (the scenarios). `arch/x86_64` keeps
//! the mechanisms: `hlt`, IPIs, the TSC, MMIO and the APIC timer.

pub mod bulk;
pub mod control;
pub mod flows;
pub mod framing;
pub mod hook;
pub mod mailbox;
pub mod net;
pub mod takeover;
pub mod wake;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;

pub use monitor::Instant;

use drivers::nic::FlowMap;
use framing::{Body, Family, KernelBulk, KernelMessage, Letter};
use mailbox::{LinkId, Mailbox, Received, OUTBOX_RETRY_NS, RECEIVE_BATCH};
use net::{node_instant, MailboxPeers, NetService};

/// What the node needs from the machine it runs on.
pub trait Platform {
    /// Nanoseconds since the kernel started (the same clock on every core).
    fn now(&self) -> Instant;
    /// The cycle counter (latency probes).
    fn cycles(&self) -> u64;
    /// Cycle-counter ticks per millisecond.
    fn cycles_per_ms(&self) -> u64;
    /// Wakes core `core` if it halted (an IPI).
    fn wake(&mut self, core: usize);
    /// Prints one console line.
    fn print(&mut self, line: core::fmt::Arguments<'_>);
    /// The cores this core wakes by IPI when a NIC queue interrupt reaches it (the holders of
    /// the other queues on its vectors: `wake::forward_targets`), after a core failed.
    fn set_wake_forwards(&mut self, cores: &[usize]);
}

/// Why a core stops for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The other monitors declared this core failed: it leaves service.
    Fenced,
    /// `hang=`: the core stops answering (interrupts off, halted).
    Hang,
    /// `fault=`: the core raises this exception (reported by the fault handler).
    Fault(crate::cmdline::FaultKind),
}

/// What the loop does after a turn: the value every phase returns and the turn combines.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Work is pending: run another turn at once.
    Run,
    /// Nothing is pending: halt until an interrupt, or until `until` at the latest.
    Halt {
        /// The earliest deadline, if any.
        until: Option<Instant>,
    },
    /// Leave the loop for good.
    Stop(Stop),
}

impl Next {
    /// Nothing pending and no deadline.
    pub const IDLE: Next = Next::Halt { until: None };

    /// Halt until `at` at the latest.
    pub fn until(at: Instant) -> Next {
        Next::Halt { until: Some(at) }
    }

    /// Both: a stop wins, then pending work, then the earlier deadline.
    pub fn and(self, other: Next) -> Next {
        match (self, other) {
            (Next::Stop(stop), _) | (_, Next::Stop(stop)) => Next::Stop(stop),
            (Next::Run, _) | (_, Next::Run) => Next::Run,
            (Next::Halt { until: a }, Next::Halt { until: b }) => Next::Halt {
                until: match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
        }
    }
}

/// Settings of one node.
#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    /// This core.
    pub core: usize,
    /// Cores in the machine.
    pub cores: usize,
    /// NIC queues (core `c < queues` receives through queue `c`; flow groups live on them).
    pub queues: u16,
    /// `poll_us=`: keep polling this long after network traffic before halting (0: halt as soon
    /// as nothing is pending).
    pub poll_after_traffic_ns: u64,
    /// `tick_hz=` (opt-in): also wake this often whatever the deadlines say.
    pub tick_ns: Option<u64>,
    /// How often a core with a network gathers every core's statistics for `/stats`.
    pub stats_period_ns: u64,
}

/// What the node counts about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Turns run.
    pub turns: u64,
    /// Halts (the shell halted after [`Node::may_halt`] agreed).
    pub halts: u64,
    /// Halts refused at the last moment (something arrived meanwhile).
    pub halts_refused: u64,
    /// Letters that did not decode or made no sense.
    pub malformed: u64,
}

/// One core's logic: its mailbox, its network, its monitor, its flow map and its scenarios.
pub struct Node<N: NetService> {
    pub(crate) config: NodeConfig,
    pub(crate) mailbox: Mailbox,
    pub(crate) regions: bulk::BulkRegions,
    pub(crate) net: Option<N>,
    /// The flow map when there is no network (with one, netd's classifier owns it).
    pub(crate) standalone_flows: Option<FlowMap>,
    pub(crate) steering: Option<Box<dyn flows::NicHome>>,
    pub(crate) takeover: takeover::Takeover,
    pub(crate) control: control::Control,
    pub(crate) hook: Option<Box<dyn hook::Hook>>,
    pub(crate) online_at: Instant,
    poll_until: Instant,
    /// Receive moderation: the queue's interrupt stays masked and the network is not polled
    /// before this (netd's `PollOutcome::hold_until`).
    hold_until: Option<Instant>,
    next_tick: Option<Instant>,
    next_transport_push: Instant,
    pub(crate) counters: NodeCounters,
    pub(crate) stopped: Option<Stop>,
}

impl<N: NetService> Node<N> {
    /// A node for `config.core`. `monitor` is the core's monitor; `net` its network (none without
    /// a NIC); `steering` the NIC's shared side (the NIC's home at boot, core 0, only; any core
    /// with a NIC also gets [`Self::with_nic`] to take it over).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        mailbox: Mailbox,
        regions: bulk::BulkRegions,
        net: Option<N>,
        steering: Option<Box<dyn flows::NicHome>>,
        monitor: monitor::Monitor<control::KernelHooks>,
        hook: Option<Box<dyn hook::Hook>>,
        now: Instant,
    ) -> Self {
        let standalone_flows = net
            .is_none()
            .then(|| FlowMap::round_robin(config.queues.max(1)));
        Self {
            config,
            mailbox,
            regions,
            net,
            standalone_flows,
            steering,
            takeover: takeover::Takeover::new(usize::from(config.queues.max(1))),
            control: control::Control::new(monitor, config.stats_period_ns),
            hook,
            online_at: now,
            poll_until: now,
            hold_until: None,
            next_tick: config.tick_ns.map(|period| now.after(period)),
            next_transport_push: now,
            counters: NodeCounters::default(),
            stopped: None,
        }
    }

    /// This core.
    pub fn core(&self) -> usize {
        self.config.core
    }

    /// The core's counters.
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// The core's mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// The core's network.
    pub fn net(&self) -> Option<&N> {
        self.net.as_ref()
    }

    /// The core's network, to change.
    pub fn net_mut(&mut self) -> Option<&mut N> {
        self.net.as_mut()
    }

    /// The core's monitor.
    pub fn monitor(&self) -> &monitor::Monitor<control::KernelHooks> {
        &self.control.monitor
    }

    /// The core's one flow map (netd's, or the node's own without a network).
    pub fn flows_mut(&mut self) -> &mut FlowMap {
        let queues = self.config.queues.max(1);
        match self.net.as_mut() {
            Some(net) => net.flow_map_mut(),
            None => self
                .standalone_flows
                .get_or_insert_with(|| FlowMap::round_robin(queues)),
        }
    }

    /// Milliseconds since the kernel started.
    pub fn uptime_ms(now: Instant) -> u64 {
        now.as_nanos() / 1_000_000
    }

    /// One turn of the loop (see the module documentation); `now` is read once at its start.
    pub fn turn(&mut self, now: Instant, platform: &mut dyn Platform) -> Next {
        if let Some(stop) = self.stopped {
            return Next::Stop(stop);
        }
        self.counters.turns += 1;
        self.check_pause(now, platform);
        let mut next = self.drain(now, platform);
        self.flush(platform);
        // A core that learnt it was declared failed stops here, before it touches the NIC.
        if let Some(stop) = self.stopped {
            return Next::Stop(stop);
        }
        next = next.and(self.poll_network(now, platform));
        self.flush(platform);
        next = next.and(self.timers(now, platform));
        next = next.and(
            self.flush(platform)
                .map_or(Next::IDLE, |()| Next::until(now.after(OUTBOX_RETRY_NS))),
        );
        match self.stopped {
            Some(stop) => Next::Stop(stop),
            None => next,
        }
    }

    /// Flushes the mailbox; `Some(())` when letters or returns still wait.
    fn flush(&mut self, platform: &mut dyn Platform) -> Option<()> {
        self.mailbox
            .flush(&mut |core| platform.wake(core))
            .then_some(())
    }

    /// Phase 1: at most [`RECEIVE_BATCH`] letters from each link.
    fn drain(&mut self, now: Instant, platform: &mut dyn Platform) -> Next {
        let mut next = Next::IDLE;
        for link in 0..self.mailbox.link_count() {
            let mut taken = 0;
            while taken < RECEIVE_BATCH {
                let table = self.regions.table();
                let Some(received) = self.mailbox.receive(LinkId(link), &table) else {
                    break;
                };
                taken += 1;
                self.dispatch(now, received, platform);
                if self.stopped.is_some() {
                    return Next::IDLE;
                }
            }
            if taken == RECEIVE_BATCH {
                next = Next::Run;
            }
        }
        next
    }

    /// Hands one letter to the subsystem of its family.
    fn dispatch(&mut self, now: Instant, received: Received, platform: &mut dyn Platform) {
        let Ok(letter) = received.letter else {
            self.counters.malformed += 1;
            return;
        };
        let peer = received.peer;
        match (letter.family, letter.body) {
            (Family::Monitor, Body::Inline(bytes)) => {
                self.monitor_letter(now, peer, bytes.as_slice(), platform);
            }
            (Family::Net, Body::Inline(bytes)) => self.net_letter(now, bytes.as_slice()),
            (Family::Net, Body::Bulk { handle, .. }) => {
                let Self {
                    regions,
                    net,
                    mailbox,
                    counters,
                    ..
                } = self;
                let handled = regions.with_view(peer, handle, |bytes| {
                    match (net.as_mut(), netd::PeerMessage::decode(bytes)) {
                        (Some(net), Ok(message)) => {
                            net.handle_peer_message(now, &message, &mut MailboxPeers { mailbox });
                            true
                        }
                        (None, _) => true,
                        (_, Err(_)) => false,
                    }
                });
                if handled != Some(true) {
                    counters.malformed += 1;
                }
            }
            (Family::Kernel, Body::Inline(bytes)) => {
                match KernelMessage::decode(bytes.as_slice()) {
                    Ok(message) => self.kernel_letter(now, received.link, peer, message, platform),
                    Err(_) => self.counters.malformed += 1,
                }
            }
            (Family::Kernel, Body::Bulk { tag, handle })
                if tag == KernelBulk::StatsSnapshot as u8 =>
            {
                let Self {
                    regions,
                    net,
                    control,
                    counters,
                    ..
                } = self;
                let absorbed = regions.with_view(peer, handle, |bytes| match net.as_mut() {
                    Some(net) => net.absorb_snapshot(peer as u16, bytes).is_ok(),
                    None => true,
                });
                if absorbed == Some(true) {
                    control.snapshot_arrived(peer);
                } else {
                    counters.malformed += 1;
                }
            }
            _ => self.counters.malformed += 1,
        }
    }

    /// A netd message carried inline.
    fn net_letter(&mut self, now: Instant, bytes: &[u8]) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        match netd::PeerMessage::decode(bytes) {
            Ok(message) => net.handle_peer_message(
                now,
                &message,
                &mut MailboxPeers {
                    mailbox: &mut self.mailbox,
                },
            ),
            Err(_) => self.counters.malformed += 1,
        }
    }

    /// A kernel message: pings are answered on the link they came on; the rest is the
    /// scenarios' (the URPC matrix, bound channels).
    fn kernel_letter(
        &mut self,
        now: Instant,
        link: LinkId,
        peer: usize,
        message: KernelMessage,
        platform: &mut dyn Platform,
    ) {
        if let KernelMessage::Ping {
            sequence,
            timestamp,
        } = message
        {
            let _ = self.mailbox.send(
                link,
                &Letter::kernel(KernelMessage::Pong {
                    sequence,
                    timestamp,
                }),
            );
        }
        self.with_hook(now, platform, |hook, access| {
            hook.kernel_letter(link, peer, message, access)
        });
    }

    /// Phase 2: one bounded network turn.
    fn poll_network(&mut self, now: Instant, platform: &mut dyn Platform) -> Next {
        if self.net.is_none() {
            return Next::IDLE;
        }
        if self.takeover.suspended() {
            // The NIC's home after a pause: not a frame until every peer was heard (takeover.rs).
            self.takeover.suspended_turns += 1;
            return Next::IDLE;
        }
        self.sync_flows(platform);
        let Some(net) = self.net.as_mut() else {
            return Next::IDLE;
        };
        if now >= self.next_transport_push {
            self.next_transport_push = now.after(1_000_000);
            net.set_transport_counters(self.mailbox.counters());
        }
        let outcome = net.poll(
            now,
            &mut MailboxPeers {
                mailbox: &mut self.mailbox,
            },
        );
        if outcome.stats_wanted {
            self.gather_stats(now, platform);
        }
        if self.config.poll_after_traffic_ns > 0
            && (outcome.received > 0 || outcome.transmitted > 0)
        {
            self.poll_until = now.after(self.config.poll_after_traffic_ns);
        }
        self.hold_until = outcome.hold_until.map(node_instant);
        if outcome.more_work || now < self.poll_until {
            Next::Run
        } else {
            Next::Halt {
                until: outcome.next_deadline.map(node_instant),
            }
            .and(Next::Halt {
                until: self.hold_until,
            })
        }
    }

    /// Phase 3: the monitor, statistics, the optional tick and the scenarios.
    fn timers(&mut self, now: Instant, platform: &mut dyn Platform) -> Next {
        let mut next = self.control_timers(now, platform);
        if let (Some(period), Some(at)) = (self.config.tick_ns, self.next_tick) {
            if now >= at {
                self.next_tick = Some(now.after(period));
            }
            next = next.and(Next::Halt {
                until: self.next_tick,
            });
        }
        let mut hook_next = Next::IDLE;
        self.with_hook(now, platform, |hook, access| hook_next = hook.turn(access));
        next.and(hook_next)
    }

    /// Runs `call` with the scenarios hook (if any), then handles what the monitor raised.
    pub(crate) fn with_hook(
        &mut self,
        now: Instant,
        platform: &mut dyn Platform,
        call: impl FnOnce(&mut dyn hook::Hook, &mut hook::Access<'_>),
    ) {
        let Some(mut hook) = self.hook.take() else {
            return;
        };
        self.hook_access(now, platform, |access| call(&mut *hook, access));
        self.hook = Some(hook);
        self.after_monitor(now, platform);
    }

    /// Runs `call` with an [`hook::Access`] to this node (the hook itself taken out by the caller).
    pub(crate) fn hook_access(
        &mut self,
        now: Instant,
        platform: &mut dyn Platform,
        call: impl FnOnce(&mut hook::Access<'_>),
    ) {
        let net = self
            .net
            .as_ref()
            .map(|net| (net.counters(), net.queue_stats()));
        let fallback;
        let flows: &FlowMap = match (&mut self.net, &self.standalone_flows) {
            (Some(net), _) => net.flow_map_mut(),
            (None, Some(flows)) => flows,
            (None, None) => {
                fallback = FlowMap::round_robin(self.config.queues.max(1));
                &fallback
            }
        };
        let mut access = hook::Access {
            now,
            core: self.config.core,
            cores: self.config.cores,
            online_at: self.online_at,
            counters: self.counters,
            flows,
            mailbox: &mut self.mailbox,
            control: &mut self.control,
            net,
            platform,
        };
        call(&mut access);
    }

    /// Before halting, with interrupts off: whether the core may halt now. Unmasks the queue's
    /// interrupt and looks at its ring, announces sleep on every link, and checks that `until`
    /// has not passed. Call [`Self::woke`] afterwards whatever it returned.
    pub fn may_halt(&mut self, now: Instant, until: Option<Instant>) -> bool {
        // A suspended home leaves its queues masked: a letter (IPI) ends the suspension.
        let suspended = self.takeover.suspended();
        // While receive moderation holds, the queue's interrupt stays masked: the frames that
        // arrive meanwhile wait for the hold's timer and are taken together.
        let holding = self.hold_until.is_some_and(|at| at > now);
        let may = until.is_none_or(|at| at > now)
            && (suspended || holding || !self.net.as_mut().is_some_and(|net| net.arm_and_check()))
            && self.mailbox.prepare_to_sleep();
        if may {
            self.counters.halts += 1;
        } else {
            self.counters.halts_refused += 1;
        }
        may
    }

    /// After the halt (or the decision not to halt).
    pub fn woke(&mut self) {
        self.mailbox.woke();
    }
}
