//! The one hook through which the loop calls the scenarios (`cpudriver::scenarios`): injection
//! and demonstration code lives apart from the real loop and may only do what [`Access`] allows.

use drivers::nic::{FlowMap, QueueStats};
use netd::CoreCounters;

use super::control::Control;
use super::framing::{KernelMessage, Letter};
use super::mailbox::{LinkId, Mailbox, Refusal};
use super::{Instant, Next, NodeCounters, Platform};

/// What the scenarios are told, each call with an [`Access`] to the node.
pub trait Hook {
    /// Once per turn, in the timers phase: returns whether the scenario keeps the core busy, when
    /// it wants to run next, or that the core must stop.
    fn turn(&mut self, access: &mut Access<'_>) -> Next;

    /// An event the monitor raised (after the node handled it).
    fn event(&mut self, _event: &monitor::Event, _access: &mut Access<'_>) {}

    /// A kernel message arrived on `link` from `peer` (pings were already answered).
    fn kernel_letter(
        &mut self,
        _link: LinkId,
        _peer: usize,
        _message: KernelMessage,
        _access: &mut Access<'_>,
    ) {
    }

    /// The monitors bound a channel to `peer`; it is `link` in the mailbox.
    fn bound(
        &mut self,
        _link: LinkId,
        _peer: usize,
        _role: monitor::Role,
        _access: &mut Access<'_>,
    ) {
    }
}

/// What a scenario may see and do.
pub struct Access<'a> {
    /// The turn's time.
    pub now: Instant,
    /// This core.
    pub core: usize,
    /// Cores in the machine.
    pub cores: usize,
    /// When this core's loop started.
    pub online_at: Instant,
    /// The node's counters.
    pub counters: NodeCounters,
    /// The core's flow map.
    pub flows: &'a FlowMap,
    /// The mailbox (scenarios send kernel messages).
    pub(crate) mailbox: &'a mut Mailbox,
    /// The monitor's hosting.
    pub(crate) control: &'a mut Control,
    /// The network's counters and its queue's, when there is a network.
    pub net: Option<(CoreCounters, QueueStats)>,
    /// The machine.
    pub platform: &'a mut dyn Platform,
}

impl Access<'_> {
    /// Sends a kernel message on `link`.
    pub fn send(&mut self, link: LinkId, message: KernelMessage) -> Result<(), Refusal> {
        self.mailbox.send(link, &Letter::kernel(message))
    }

    /// Prints a console line.
    pub fn print(&mut self, line: core::fmt::Arguments<'_>) {
        self.platform.print(line);
    }

    /// The cycle counter.
    pub fn cycles(&self) -> u64 {
        self.platform.cycles()
    }

    /// When the machine became complete (the monitors' boot handshake), as this core saw it.
    pub fn machine_complete_at(&self) -> Option<Instant> {
        self.control.machine_complete_at()
    }

    /// Registers `name` with the monitors (`Event::NameRegistered` answers).
    pub fn register_name(&mut self, name: monitor::Name) -> Result<(), monitor::RegisterError> {
        self.control.monitor.register_name(
            self.now,
            name,
            &mut super::control::MonitorOutbox {
                mailbox: self.mailbox,
            },
        )
    }

    /// Asks the monitors for a channel to the core serving `name` (`Event::BindingReady`).
    pub fn bind(&mut self, name: monitor::Name) -> Result<monitor::BindingId, monitor::BindError> {
        self.control.monitor.bind(
            self.now,
            name,
            &mut super::control::MonitorOutbox {
                mailbox: self.mailbox,
            },
        )
    }

    /// Proposes `change` to every live core (two-phase commit).
    pub fn begin_agreement(&mut self, change: monitor::Change) {
        self.control
            .begin_agreement(self.now, change, self.mailbox, self.platform);
    }
}
