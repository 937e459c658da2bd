//! `netd.report=MS`: every core prints `netd: stats core=K ...` (its stack's and its queue's
//! counters) every MS milliseconds; the QEMU tests read these lines.

use crate::node::hook::{Access, Hook};
use crate::node::{Instant, Next};

/// The periodic report.
pub struct Report {
    period_ns: u64,
    next: Option<Instant>,
}

impl Report {
    /// A report every `period_ms` milliseconds.
    pub fn new(period_ms: u32) -> Self {
        Self {
            period_ns: u64::from(period_ms) * 1_000_000,
            next: None,
        }
    }
}

impl Hook for Report {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        let next = *self
            .next
            .get_or_insert(access.online_at.after(self.period_ns));
        if access.now < next {
            return Next::until(next);
        }
        let at = access.now.after(self.period_ns);
        self.next = Some(at);
        if let Some((counters, queue)) = access.net {
            let drops: u64 = counters.drops.iter().sum();
            access.platform.print(format_args!(
                "netd: stats core={} rx_frames={} tx_frames={} forwarded_in={} forwarded_out={} drops={} queue_rx={} queue_tx={} queue_no_descriptor={}",
                access.core,
                counters.rx_frames,
                counters.tx_frames,
                counters.forwarded_in,
                counters.forwarded_out,
                drops,
                queue.rx_packets,
                queue.tx_packets,
                queue.rx_no_descriptor
            ));
        }
        Next::until(at)
    }
}
