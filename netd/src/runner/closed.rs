//! The closed-port path: TCP and UDP addressed to us on a port no path serves. smoltcp, given the
//! frame and no socket, answers a TCP segment with a reset (RFC 9293 §3.10.7.1: none for a reset)
//! and a UDP datagram with an ICMP port unreachable (RFC 1122 §3.2.2.1; none for a broadcast,
//! which the classifier drops before). ICMP errors are rate limited per core by a token bucket
//! (`netd.icmp_rate` per second, bursts of a twentieth of that); what it holds back is counted
//! (`icmp_limited`). Resets are not limited: each answers one segment, and the path's queue and
//! credit bound what a flood of them costs.

use super::{smoltcp_ingress, PathRunner, Reply, RunContext};
use crate::path::QueuedFrame;
use drivers::pool::BUFFER_SIZE;
use smoltcp::iface::SocketSet;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet};

extern crate alloc;
use alloc::vec::Vec;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens, in millionths (so a rate below one per microsecond still accrues).
    micro_tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `rate` per second with bursts of a twentieth of it (at least 1).
    pub(crate) fn new(rate: u32) -> Self {
        let rate = u64::from(rate);
        let burst = (rate / 20).max(u64::from(rate > 0));
        Self {
            rate,
            burst,
            micro_tokens: burst * 1_000_000,
            last: None,
        }
    }

    /// Takes a token at `now`, if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = (now - last).total_micros();
            self.micro_tokens = self
                .micro_tokens
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.burst * 1_000_000);
        }
        self.last = Some(now);
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }
}

/// The closed-port path's runner.
pub(crate) struct ClosedRunner {
    none: SocketSet<'static>,
    icmp: TokenBucket,
}

impl ClosedRunner {
    /// A runner sending at most `icmp_rate` ICMP errors a second.
    pub(crate) fn new(icmp_rate: u32) -> Self {
        Self {
            none: SocketSet::new(Vec::new()),
            icmp: TokenBucket::new(icmp_rate),
        }
    }
}

/// Whether `frame` is an IPv4 UDP datagram (its answer would be an ICMP error).
fn is_udp(frame: &[u8]) -> bool {
    let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    Ipv4Packet::new_checked(ethernet.payload()).is_ok_and(|ip| ip.next_header() == IpProtocol::Udp)
}

impl PathRunner for ClosedRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let length = usize::from(frame.length).min(BUFFER_SIZE);
        let udp = cx
            .pool
            .bytes(frame.buffer)
            .is_ok_and(|bytes| is_udp(&bytes[..length]));
        if udp && !self.icmp.take(cx.now) {
            cx.notes.icmp_limited += 1;
            return Reply::Nothing;
        }
        smoltcp_ingress(cx, &mut self.none, frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::time::Duration;

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(1000);
        let start = Instant::from_secs(5);
        let burst = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 50);
        // Over one second, at most the rate (plus nothing banked beyond the burst).
        let mut granted = 0;
        for step in 1..=10_000u64 {
            if bucket.take(start + Duration::from_micros(step * 100)) {
                granted += 1;
            }
        }
        assert!((990..=1000).contains(&granted), "{granted}");
        let mut none = TokenBucket::new(0);
        assert!(!none.take(start));
        assert!(!none.take(start + Duration::from_secs(10)));
        let mut slow = TokenBucket::new(1);
        assert!(slow.take(start));
        assert!(!slow.take(start + Duration::from_millis(500)));
        assert!(slow.take(start + Duration::from_millis(1000)));
    }
}
