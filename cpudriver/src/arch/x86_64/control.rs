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

use super::tsc;

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
