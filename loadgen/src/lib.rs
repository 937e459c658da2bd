//! Flotilla's load generator: open-loop load at a target rate (constant or Poisson arrivals)
//! over many flows whose source ports the Toeplitz hash spreads over every guest queue; UDP echo
//! and memcached's text protocol over UDP and TCP; ICMP echo floods; a send timestamp in every request and an
//! HdrHistogram of round trips; `sendmmsg`/`recvmmsg` batches; one sender thread per host core.
//! It measures its own ceiling on loopback next to a plain one-syscall-per-packet client
//! ([`ceiling::measure`]) so that every experiment can say whether it measured the guest or the
//! generator. Linux only. See `docs/experiments.md`.

pub mod ceiling;
pub mod flows;
pub mod histogram;
pub mod icmp;
pub mod protocol;
pub mod rate;
pub mod sys;
pub mod tcp;
pub mod udp;

pub use ceiling::{Ceiling, EchoServer};
pub use histogram::LatencyHistogram;
pub use protocol::MemcachedMix;
pub use rate::{Arrivals, Schedule};
pub use tcp::MemcachedTcp;
pub use udp::{LoadError, Outcome, Pace, Request, UdpLoad};
