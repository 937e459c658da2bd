//! The URPC latency matrix (`urpc=matrix`): core 0 walks every ordered pair of cores; the
//! first core of a pair pings the second and reports the percentiles back, in the spirit of the
//! Multikernel paper's Table 2.

use urpc::CoreMessage;

use super::{apic, tsc};
use crate::messages::KernelMessage;

use super::core_loop::Core;

/// The latency self-test: core 0 walks the ordered pairs; the first core of each pair pings the
/// second `rounds` times and reports percentiles back to core 0.
#[derive(Default)]
pub(super) struct RttState {
    /// Core 0 only: the pair being measured (index into the ordered pair list) and whether done.
    pub(super) coordinator: Option<(usize, bool)>,
    /// The pinging side: peer, rounds left, samples so far.
    pub(super) pinging: Option<(usize, u32, alloc::vec::Vec<u64>)>,
    /// TSC of the last ping sent (to give up on a peer that stopped answering).
    pub(super) last_ping: u64,
    /// Core 0 only: pairs that answered.
    pub(super) answered: usize,
    /// Core 0 only: TSC when the current pair started.
    pub(super) pair_started: u64,
}

/// A peer that does not answer a ping within this many milliseconds is reported and skipped.
pub(super) const PING_TIMEOUT_MS: u64 = 1_000;

impl Core {
    pub(super) fn start_pinging(&mut self, peer: usize, rounds: u32) {
        if peer >= self.cores() || peer == self.index || rounds == 0 {
            return;
        }
        self.rtt.pinging = Some((
            peer,
            rounds,
            alloc::vec::Vec::with_capacity(rounds as usize),
        ));
        self.rtt.last_ping = tsc::now();
        self.send(
            peer,
            KernelMessage::Core(CoreMessage::Ping {
                sequence: 0,
                timestamp: tsc::now(),
            }),
        );
    }

    pub(super) fn finish_pinging(&mut self) {
        let Some((peer, _, mut samples)) = self.rtt.pinging.take() else {
            return;
        };
        let (p50, p99) = crate::messages::percentiles(&mut samples);
        crate::kprintln!(
            "urpc: rtt {}->{} p50={} p99={} cycles",
            self.index,
            peer,
            p50,
            p99
        );
        let done = KernelMessage::RttDone {
            peer: peer as u32,
            p50,
            p99,
        };
        if self.index == 0 {
            self.handle(0, done);
        } else {
            self.send(0, done);
        }
    }

    /// The ordered pairs of the matrix, pair `n`.
    pub(super) fn pair(&self, n: usize) -> Option<(usize, usize)> {
        let cores = self.cores();
        let per_row = cores - 1;
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

    pub(super) fn start_pair(&mut self, n: usize) {
        let rounds = self.shared.options.urpc_matrix_rounds;
        match self.pair(n) {
            Some((a, b)) => {
                self.rtt.coordinator = Some((n, false));
                self.rtt.pair_started = tsc::now();
                if a == 0 {
                    self.start_pinging(b, rounds);
                } else {
                    self.send(
                        a,
                        KernelMessage::RttStart {
                            peer: b as u32,
                            rounds,
                        },
                    );
                }
            }
            None => {
                self.rtt.coordinator = Some((n, true));
                let pairs = self.cores() * (self.cores() - 1);
                let note = if apic::under_hypervisor() {
                    " (under a hypervisor/TCG: virtual TSC cycles, not hardware cycles)"
                } else {
                    ""
                };
                crate::kprintln!(
                    "urpc: matrix complete, {} cores, {} of {} pairs answered{}",
                    self.cores(),
                    self.rtt.answered,
                    pairs,
                    note
                );
            }
        }
    }

    pub(super) fn pair_done(&mut self, from: usize, peer: usize, p50: u64, _p99: u64) {
        if self.index != 0 {
            return;
        }
        if let Some((n, false)) = self.rtt.coordinator {
            if self.pair(n) == Some((from, peer)) {
                if p50 > 0 {
                    self.rtt.answered += 1;
                }
                self.start_pair(n + 1);
            }
        }
    }
}
