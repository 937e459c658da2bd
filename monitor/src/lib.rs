//! Flotilla's monitor: the distributed control plane, one monitor per core, agreeing by messages.
//!
//! Each core's kernel hosts a [`Monitor`]. Monitors share no memory; they exchange [`Message`]s
//! (each encodes into at most [`MESSAGE_BYTES`] bytes, one URPC slot payload) and together
//! provide:
//!
//! - the boot handshake (module `boot`): every monitor learns its peers' [`CoreInfo`]; the leader
//!   reports when the machine is complete;
//! - failure detection (module `failure`): heartbeats, final verdicts gossiped to every monitor,
//!   and [`reassign_flow_groups`] for the data plane's recovery;
//! - the name service and channel binding (modules `names`, `binding`), with a binding completing
//!   on both ends or on neither;
//! - agreement (module `agreement`): two-phase commit of [`Change`]s, with a termination protocol
//!   for a failed coordinator;
//! - statistics gathering (module `stats`).
//!
//! The monitor is an explicit state machine. It never reads a clock (every entry point takes the
//! current [`Instant`]), never blocks, and never allocates. The kernel drives it:
//! [`Monitor::handle`] for each arriving message, [`Monitor::tick`] by
//! [`Monitor::next_deadline`], the request entry points ([`Monitor::begin_agreement`],
//! [`Monitor::register_name`], [`Monitor::bind`], [`Monitor::request_stats`]), and
//! [`Monitor::poll_event`] after each call to hear what happened. Messages go out through the
//! [`Outbox`] the caller passes in; local decisions (votes, memory for channel regions, counters)
//! come from the [`Hooks`] the monitor owns. `docs/monitor.md` describes the protocols.
//!
//! The crate depends on nothing else in the workspace (URPC carries the encoded bytes; the monitor
//! does not know how).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod agreement;
mod binding;
mod boot;
mod event;
mod failure;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod monitor;
mod names;
mod stats;
mod types;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use agreement::AgreementError;
pub use binding::{BindError, MAX_BINDINGS};
pub use event::{BindFailure, Event, Role, EVENT_CAPACITY};
pub use failure::reassign_flow_groups;
pub use message::{
    BindAnswer, DecodeError, Message, RegisterOutcome, TxState, Vote, COUNTERS,
    COUNTERS_PER_MESSAGE, COUNTER_CHUNKS, MESSAGE_BYTES,
};
pub use monitor::{Config, ConfigError, Hooks, Monitor, MonitorCounters, Outbox};
pub use names::{RegisterError, MAX_DIRECTORY_NAMES, MAX_LOCAL_NAMES};
pub use stats::StatsError;
pub use types::{
    BindingId, Change, CoreId, CoreInfo, CoreSet, Instant, Name, NameError, Protocol, Region, TxId,
    MAX_CORES, NAME_BYTES,
};
