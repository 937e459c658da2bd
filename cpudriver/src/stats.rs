//! Packing a core's network counters into the monitor's statistics vector and back, so that
//! `/stats` on any core can show every core's counters, gathered through the monitors.
//!
//! Layout of the `monitor::COUNTERS` (24) values: 0 rx_frames, 1 rx_bytes, 2 tx_frames,
//! 3 tx_bytes, 4 forwarded_out, 5 forwarded_in, 6 neighbours_sent, 7 neighbours_installed,
//! 8 polls, 9 no_buffer, 10 uptime_ms, 11 reserved (0), 12..24 drops by reason.
#![forbid(unsafe_code)]

use monitor::COUNTERS;
use netd::CoreCounters;

const DROPS_AT: usize = 12;
const _: () = assert!(DROPS_AT + netd::DropReason::COUNT <= COUNTERS);

/// Packs `counters` and the stack's uptime.
pub fn pack(counters: &CoreCounters, uptime_ms: u64) -> [u64; COUNTERS] {
    let mut values = [0u64; COUNTERS];
    values[..11].copy_from_slice(&[
        counters.rx_frames,
        counters.rx_bytes,
        counters.tx_frames,
        counters.tx_bytes,
        counters.forwarded_out,
        counters.forwarded_in,
        counters.neighbours_sent,
        counters.neighbours_installed,
        counters.polls,
        counters.no_buffer,
        uptime_ms,
    ]);
    values[DROPS_AT..DROPS_AT + counters.drops.len()].copy_from_slice(&counters.drops);
    values
}

/// Unpacks what [`pack`] produced: the counters and the uptime.
pub fn unpack(values: &[u64; COUNTERS]) -> (CoreCounters, u64) {
    let mut counters = CoreCounters {
        rx_frames: values[0],
        rx_bytes: values[1],
        tx_frames: values[2],
        tx_bytes: values[3],
        forwarded_out: values[4],
        forwarded_in: values[5],
        neighbours_sent: values[6],
        neighbours_installed: values[7],
        polls: values[8],
        no_buffer: values[9],
        ..CoreCounters::default()
    };
    let drops = counters.drops.len();
    counters
        .drops
        .copy_from_slice(&values[DROPS_AT..DROPS_AT + drops]);
    (counters, values[10])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_the_round_trip() {
        let mut counters = CoreCounters {
            rx_frames: 1,
            rx_bytes: 2,
            tx_frames: 3,
            tx_bytes: 4,
            ..Default::default()
        };
        counters.forwarded_out = 5;
        counters.forwarded_in = 6;
        counters.neighbours_sent = 7;
        counters.neighbours_installed = 8;
        counters.polls = 9;
        counters.no_buffer = 10;
        for (reason, slot) in counters.drops.iter_mut().enumerate() {
            *slot = 100 + reason as u64;
        }
        let (back, uptime) = unpack(&pack(&counters, 4242));
        assert_eq!(back, counters);
        assert_eq!(uptime, 4242);
    }
}
