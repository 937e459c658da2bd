//! The URPC round-trip matrix (`urpc=matrix[:ROUNDS]`, `urpc=wake[:ROUNDS]`): core 0 walks every
//! ordered pair of cores; the first core of a pair pings the second `ROUNDS` times and reports the
//! percentiles back, in the spirit of the Multikernel paper's Table 2.
//!
//! Two modes. **Polled** (`matrix`): the pinged core keeps polling for 20 ms after each ping, so
//! the figure is the channel's round trip. **Wake** (`wake`, after the polled matrix): the pinger
//! leaves 500 µs between probes and the pinged core halts in between, so each ping finds it
//! halted and the figure includes its wake-up (the sender's IPI, the interrupt, leaving `hlt`);
//! the difference between the two is the IPI wake-up latency. Lines:
//! `urpc: rtt A->B p50=.. p99=.. cycles (.. ns, .. ns)` (polled), `urpc: wake rtt A->B ...`
//! (wake), then
//! `urpc: matrix complete, N cores, K of P pairs answered` and `urpc: wake matrix complete, ...`.
//! The pinging core polls while it awaits a pong (a measurement, not the datapath).

use alloc::vec::Vec;

use crate::node::framing::KernelMessage;
use crate::node::hook::{Access, Hook};
use crate::node::mailbox::LinkId;
use crate::node::{Instant, Next};

/// A peer that does not answer a ping within this long is reported and skipped.
const PING_TIMEOUT_NS: u64 = 1_000_000_000;
/// The pinged core keeps polling this long after a polled-mode ping.
const PROBE_POLL_NS: u64 = 20_000_000;
/// In wake mode, the pinger waits this long between a pong and the next ping.
const WAKE_GAP_NS: u64 = 500_000;
/// Sequence bit marking a wake-mode ping (the pinged core then does not poll).
const WAKE_BIT: u64 = 1 << 63;

/// The 50th and 99th percentiles (nearest rank) of `samples`, which it sorts; `(0, 0)` if empty.
pub fn percentiles(samples: &mut [u64]) -> (u64, u64) {
    if samples.is_empty() {
        return (0, 0);
    }
    samples.sort_unstable();
    let rank = |p: usize| {
        samples[((samples.len() * p).div_ceil(100))
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    (rank(50), rank(99))
}

/// The ordered pairs of `cores`, pair `n` (row by row, skipping the diagonal).
pub fn pair(cores: usize, n: usize) -> Option<(usize, usize)> {
    let per_row = cores.checked_sub(1)?;
    if cores < 2 || n >= cores * per_row {
        return None;
    }
    let a = n / per_row;
    let mut b = n % per_row;
    if b >= a {
        b += 1;
    }
    Some((a, b))
}

struct Pinging {
    peer: usize,
    left: u32,
    wake: bool,
    samples: Vec<u64>,
    /// When the outstanding ping was sent (None: the next one waits for `next_at`).
    sent_at: Option<Instant>,
    next_at: Instant,
}

struct Coordinator {
    pair: usize,
    wake: bool,
    started: Instant,
    answered: usize,
}

/// One core's part of the matrix.
pub struct Matrix {
    rounds: u32,
    with_wake: bool,
    started: bool,
    pinging: Option<Pinging>,
    coordinator: Option<Coordinator>,
    poll_until: Option<Instant>,
}

impl Matrix {
    /// `rounds` round trips a pair; the wake matrix too when `with_wake`.
    pub fn new(rounds: u32, with_wake: bool) -> Self {
        Self {
            rounds,
            with_wake,
            started: false,
            pinging: None,
            coordinator: None,
            poll_until: None,
        }
    }

    fn start_pinging(&mut self, peer: usize, rounds: u32, wake: bool, access: &mut Access<'_>) {
        if peer >= access.cores || peer == access.core || rounds == 0 {
            return;
        }
        self.pinging = Some(Pinging {
            peer,
            left: rounds,
            wake,
            samples: Vec::with_capacity(rounds as usize),
            sent_at: None,
            next_at: access.now,
        });
    }

    fn finish_pinging(&mut self, access: &mut Access<'_>) {
        let Some(mut pinging) = self.pinging.take() else {
            return;
        };
        let (p50, p99) = percentiles(&mut pinging.samples);
        let mode = if pinging.wake { "wake rtt" } else { "rtt" };
        if pinging.samples.is_empty() {
            access.platform.print(format_args!(
                "urpc: {mode} {}->{} no answer for {} ms",
                access.core,
                pinging.peer,
                PING_TIMEOUT_NS / 1_000_000
            ));
        } else {
            let per_ms = access.platform.cycles_per_ms().max(1);
            access.platform.print(format_args!(
                "urpc: {mode} {}->{} p50={} p99={} cycles ({} ns, {} ns)",
                access.core,
                pinging.peer,
                p50,
                p99,
                u128::from(p50) * 1_000_000 / u128::from(per_ms),
                u128::from(p99) * 1_000_000 / u128::from(per_ms)
            ));
        }
        let done = KernelMessage::RttDone {
            peer: pinging.peer as u32,
            p50,
            p99,
            wake: pinging.wake,
        };
        if access.core == 0 {
            self.pair_done(0, pinging.peer, p50, pinging.wake, access);
        } else {
            let _ = access.send(LinkId(0), done);
        }
    }

    fn start_pair(&mut self, n: usize, wake: bool, access: &mut Access<'_>) {
        let answered = self.coordinator.as_ref().map_or(0, |c| c.answered);
        match pair(access.cores, n) {
            Some((a, b)) => {
                self.coordinator = Some(Coordinator {
                    pair: n,
                    wake,
                    started: access.now,
                    answered,
                });
                if a == 0 {
                    self.start_pinging(b, self.rounds, wake, access);
                } else {
                    let start = KernelMessage::RttStart {
                        peer: b as u32,
                        rounds: self.rounds,
                        wake,
                    };
                    let _ = access.send(LinkId(a), start);
                }
            }
            None => {
                let pairs = access.cores * (access.cores - 1);
                access.platform.print(format_args!(
                    "urpc: {}matrix complete, {} cores, {} of {} pairs answered (cycles of the guest's TSC; virtual under a hypervisor or TCG)",
                    if wake { "wake " } else { "" },
                    access.cores,
                    answered,
                    pairs
                ));
                self.coordinator = None;
                if !wake && self.with_wake {
                    self.coordinator = Some(Coordinator {
                        pair: 0,
                        wake: true,
                        started: access.now,
                        answered: 0,
                    });
                    self.start_pair(0, true, access);
                }
            }
        }
    }

    fn pair_done(
        &mut self,
        from: usize,
        peer: usize,
        p50: u64,
        wake: bool,
        access: &mut Access<'_>,
    ) {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return;
        };
        if coordinator.wake != wake || pair(access.cores, coordinator.pair) != Some((from, peer)) {
            return;
        }
        if p50 > 0 {
            coordinator.answered += 1;
        }
        let next = coordinator.pair + 1;
        self.start_pair(next, wake, access);
    }
}

impl Hook for Matrix {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        if access.core == 0 && !self.started {
            self.started = true;
            access.platform.print(format_args!(
                "urpc: latency matrix, {} round trips a pair",
                self.rounds
            ));
            self.start_pair(0, false, access);
        }
        let mut next = Next::IDLE;
        if let Some(coordinator) = self.coordinator.as_ref() {
            // A pinging core that died never reports: give up on its pair after a while.
            let limit = 3 * PING_TIMEOUT_NS + u64::from(self.rounds) * (10_000_000 + WAKE_GAP_NS);
            let deadline = coordinator.started.after(limit);
            if access.now >= deadline {
                let (n, wake) = (coordinator.pair, coordinator.wake);
                if let Some((a, b)) = pair(access.cores, n) {
                    access.platform.print(format_args!(
                        "urpc: rtt {a}->{b} no answer: core {a} did not report"
                    ));
                }
                self.start_pair(n + 1, wake, access);
            } else {
                next = next.and(Next::until(deadline));
            }
        }
        if let Some(pinging) = self.pinging.as_mut() {
            match pinging.sent_at {
                Some(sent) if access.now.as_nanos() - sent.as_nanos() > PING_TIMEOUT_NS => {
                    pinging.samples.clear();
                    self.finish_pinging(access);
                }
                Some(_) => next = Next::Run, // awaiting the pong: poll
                None if access.now >= pinging.next_at => {
                    let sequence =
                        pinging.samples.len() as u64 | if pinging.wake { WAKE_BIT } else { 0 };
                    let ping = KernelMessage::Ping {
                        sequence,
                        timestamp: access.cycles(),
                    };
                    let peer = pinging.peer;
                    pinging.sent_at = Some(access.now);
                    let _ = access.send(LinkId(peer), ping);
                    next = Next::Run;
                }
                None => next = next.and(Next::until(pinging.next_at)),
            }
        }
        if let Some(until) = self.poll_until {
            if access.now < until {
                next = Next::Run;
            } else {
                self.poll_until = None;
            }
        }
        next
    }

    fn kernel_letter(
        &mut self,
        link: LinkId,
        peer: usize,
        message: KernelMessage,
        access: &mut Access<'_>,
    ) {
        match message {
            KernelMessage::Ping { sequence, .. } if sequence & WAKE_BIT == 0 => {
                self.poll_until = Some(access.now.after(PROBE_POLL_NS));
            }
            KernelMessage::Pong { timestamp, .. } if link.0 == peer => {
                let now_cycles = access.cycles();
                let Some(pinging) = self.pinging.as_mut() else {
                    return;
                };
                if pinging.peer != peer || pinging.sent_at.is_none() {
                    return;
                }
                pinging.samples.push(now_cycles.wrapping_sub(timestamp));
                pinging.left -= 1;
                pinging.sent_at = None;
                pinging.next_at = if pinging.wake {
                    access.now.after(WAKE_GAP_NS)
                } else {
                    access.now
                };
                if pinging.left == 0 {
                    self.finish_pinging(access);
                }
            }
            KernelMessage::RttStart { peer, rounds, wake } => {
                self.start_pinging(peer as usize, rounds, wake, access)
            }
            KernelMessage::RttDone {
                peer: pinged,
                p50,
                wake,
                ..
            } if access.core == 0 => self.pair_done(peer, pinged as usize, p50, wake, access),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank_and_pairs_skip_the_diagonal() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut samples), (50, 99));
        assert_eq!(percentiles(&mut [5]), (5, 5));
        assert_eq!(percentiles(&mut []), (0, 0));
        let pairs: Vec<_> = (0..7).map(|n| pair(3, n)).collect();
        assert_eq!(
            pairs,
            [
                Some((0, 1)),
                Some((0, 2)),
                Some((1, 0)),
                Some((1, 2)),
                Some((2, 0)),
                Some((2, 1)),
                None
            ]
        );
        assert_eq!(pair(1, 0), None);
    }
}
