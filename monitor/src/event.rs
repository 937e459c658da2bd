//! What the monitor tells the local subsystems: the [`Event`] enum and the fixed-capacity queue
//! the caller drains with [`crate::Monitor::poll_event`].

use crate::message::{BindAnswer, RegisterOutcome};
use crate::types::{BindingId, Change, CoreId, CoreInfo, CoreSet, Name, Region, TxId};

/// Capacity of the event queue. Drain it after every call into the monitor; one call produces at
/// most a few events per core of the machine.
pub const EVENT_CAPACITY: usize = 128;

/// Which end of a binding this core holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The core that asked for the binding and lent the region.
    Client,
    /// The core whose registered service was bound to.
    Server,
}

/// Why a binding did not complete (reported on the client's core only: the server side never
/// announced it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindFailure {
    /// The directory knows no such name.
    NoSuchName,
    /// The server's monitor refused the binding.
    Refused(BindAnswer),
    /// No answer within the binding timeout.
    Timeout,
    /// The server's core failed before the binding completed.
    PeerFailed,
}

/// Something the local subsystems must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer greeted this core for the first time.
    PeerUp(CoreInfo),
    /// The boot handshake finished: every expected core greeted the leader or was declared failed.
    MachineComplete {
        /// The live cores of the machine, as this core knows them.
        members: CoreSet,
    },
    /// A core was declared failed (by this core's detector or by another monitor's verdict). The
    /// verdict is final: its messages are ignored from now on.
    CoreFailed(CoreId),
    /// Another monitor declared *this* core failed. The monitor has stopped; the kernel must take
    /// the core out of service (stop its data plane and halt), because the others have already
    /// moved on without it.
    Fenced,
    /// The directory answered a registration made by [`crate::Monitor::register_name`].
    NameRegistered {
        /// The name.
        name: Name,
        /// The outcome; anything but `Registered` means the name is not registered.
        outcome: RegisterOutcome,
    },
    /// After the directory moved to another core (its core failed), re-registering `name` found it
    /// taken: this core no longer owns it.
    NameLost {
        /// The name.
        name: Name,
    },
    /// A binding completed on this end; the other end gets (or got) the same event. The region is
    /// the client core's memory; from here on the channel belongs to the two endpoints and the
    /// monitors step out.
    BindingReady {
        /// The binding.
        binding: BindingId,
        /// This core's end.
        role: Role,
        /// The service name.
        name: Name,
        /// The core at the other end.
        peer: CoreId,
        /// The shared region for the channel.
        region: Region,
    },
    /// A binding asked for by [`crate::Monitor::bind`] did not complete, on either end. Its region
    /// was returned through [`crate::Hooks::free_region`].
    BindingFailed {
        /// The binding.
        binding: BindingId,
        /// The service name.
        name: Name,
        /// Why.
        reason: BindFailure,
    },
    /// The core at the other end of a ready binding failed. On the client's core the region is
    /// still owned by the endpoint, which releases it when done.
    BindingBroken {
        /// The binding.
        binding: BindingId,
        /// This core's end.
        role: Role,
        /// The failed core.
        peer: CoreId,
    },
    /// An agreed change holds on every live core: apply it.
    ChangeCommitted {
        /// The transaction.
        tx: TxId,
        /// The change.
        change: Change,
    },
    /// A change this core had prepared (or began) was dropped: release whatever the vote held.
    ChangeAborted {
        /// The transaction.
        tx: TxId,
        /// The change.
        change: Change,
    },
    /// A statistics gathering finished; read the counters with [`crate::Monitor::gathered`].
    StatsReady {
        /// The gathering, as returned by [`crate::Monitor::request_stats`].
        request: u32,
        /// Cores whose counters arrived (this core included).
        responded: CoreSet,
        /// Cores asked that did not answer (failed, or silent until the timeout).
        missing: CoreSet,
        /// Whether the gathering ended by timeout rather than by every live core answering.
        timed_out: bool,
    },
}

/// A fixed ring of pending events.
#[derive(Debug)]
pub(crate) struct EventQueue {
    slots: [Option<Event>; EVENT_CAPACITY],
    head: usize,
    len: usize,
    /// Events lost because the queue was full.
    pub(crate) dropped: u64,
}

impl EventQueue {
    pub(crate) const fn new() -> EventQueue {
        EventQueue {
            slots: [None; EVENT_CAPACITY],
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, event: Event) {
        if self.len == EVENT_CAPACITY {
            self.dropped += 1;
            return;
        }
        self.slots[(self.head + self.len) % EVENT_CAPACITY] = Some(event);
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<Event> {
        if self.len == 0 {
            return None;
        }
        let event = self.slots[self.head].take();
        self.head = (self.head + 1) % EVENT_CAPACITY;
        self.len -= 1;
        event
    }
}
