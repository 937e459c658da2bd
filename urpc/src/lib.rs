//! URPC: message channels between cores over shared memory, made of 64-byte cache-line slots.
//!
//! This crate depends on nothing else in the workspace and builds `no_std` for the kernel; it is
//! tested on the host (unit, property and loom model tests). The protocol is documented in the
//! [`channel`] module; typed messages and buffer handles in [`message`]; the design, measured
//! figures and test commands in `docs/urpc.md`.
//!
//! How the kernel uses it:
//!
//! 1. One core reserves [`ChannelRegion::SIZE`] bytes aligned to [`ChannelRegion::ALIGN`] in memory
//!    both cores map, and calls [`ChannelRegion::init_raw`]; the other core calls
//!    [`ChannelRegion::attach_raw`] once told the address.
//! 2. Each core claims its [`Side`] with [`ChannelRegion::claim`], getting an [`Endpoint`]: a
//!    [`Sender`] and a [`Receiver`].
//! 3. [`Sender::try_send_message`] / [`Receiver::try_recv_message`] move [`Message`]s;
//!    [`Receiver::prepare_to_sleep`] and [`Sender::notify_if_sleeping`] with a [`Notifier`] let a
//!    receiver halt when idle.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub mod channel;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
mod sync;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod proptests;
#[cfg(all(test, not(loom)))]
mod tests;

pub use channel::{
    ChannelRegion, ClaimError, Endpoint, LayoutError, Notifier, Payload, Receiver, Sender, Side,
    SleepDecision, DEFAULT_SLOTS, PAYLOAD_SIZE, SLOT_SIZE,
};
pub use message::{
    BufferHandle, CoreMessage, DecodeError, InlineBytes, Message, RegionId, RegionTable,
    SharedRegion,
};

/// Why a send did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No free slot: the receiver has not returned enough credits. Retry later.
    Full,
    /// The peer restarted and re-initialised the channel; the message was not sent. The sender
    /// now works in `generation`, and retrying sends into the new generation.
    PeerRestarted {
        /// The new generation.
        generation: u32,
    },
}

/// Why no message was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// No message is waiting.
    Empty,
    /// The peer restarted and re-initialised the channel. Every message of the old generation
    /// that was published was delivered before this; the receiver now works in `generation`.
    PeerRestarted {
        /// The new generation.
        generation: u32,
    },
    /// A message arrived (and was consumed) but does not decode (typed receive only).
    Malformed(DecodeError),
}
