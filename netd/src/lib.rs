//! netd, Flotilla's data plane: a per-core smoltcp stack behind an early classifier, Scout paths
//! with Lazy-Receiver-Processing queues, and the applications served on them (ICMP echo, UDP and
//! TCP echo, HTTP with `/stats`, a memcached-protocol store partitioned across cores).
//!
//! Dependency rule: netd depends on `drivers` (the NIC API and buffer pools) and on nothing else
//! in the workspace. What it needs from URPC and the monitor is the [`Peers`] trait and the
//! [`CoreStats`] snapshot, which the kernel wires up. Design notes: `docs/netd.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

/// Implements `SCALARS`, `scalars` and `set_scalars` for a struct of `u64` counters from one
/// list of its fields, in the order of the snapshot encoding (`stats::CoreStats::encode`): a
/// counter added to the struct is added at the end of its list.
macro_rules! scalar_counters {
    ($type:ty { $($field:ident),+ $(,)? }) => {
        impl $type {
            /// Number of [`Self::scalars`].
            pub const SCALARS: usize = [$(stringify!($field)),+].len();

            /// The counters as numbers, in the snapshot encoding's order.
            pub fn scalars(&self) -> [u64; Self::SCALARS] {
                [$(self.$field),+]
            }

            /// Sets the counters from numbers in [`Self::scalars`] order.
            pub fn set_scalars(&mut self, values: &[u64; Self::SCALARS]) {
                [$(self.$field),+] = *values;
            }
        }
    };
}

pub mod app;
pub mod classify;
pub mod config;
pub mod device;
pub mod fastpath;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod moves;
pub mod path;
pub mod peers;
pub mod runner;
pub(crate) mod schedule;
pub mod stack;
pub mod stats;
pub mod transport;

#[cfg(test)]
mod tests;

pub use app::Service;
pub use classify::{pick_source_port, DropReason, FlowTable, PathKey, RssHashFn, Verdict};
pub use config::{
    parse_command_line, parse_memcached_memory, parse_options, Addresses, CoreId, Discipline,
    Dotted, Ipv4Cidr, MacAddress, NetConfig, NetOptions, OptionError, SchedulerConfig, TcpOptions,
    UdpPath, WallClock,
};
pub use path::{CycleCounter, PathCounters};
pub use peers::{
    KvOperation, KvReply, KvRequest, KvStatus, NeighbourEntry, PeerError, PeerMessage, Peers,
    StoreMode, MAX_KV_MESSAGE,
};
pub use runner::tcp::TcpCounters;
pub use smoltcp::time::{Duration, Instant};
pub use stack::{CoreNet, HeapProbe, HeapUsage, NetError, PollOutcome};
pub use stats::{CoreCounters, CoreStats, MemoryCounters, PathStats, SnapshotError, StatsView};
pub use transport::{TransportCounters, TransportDrop, TRANSPORT_PEERS};
