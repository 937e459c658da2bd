//! Scheduling and accounting of paths (Scout): who runs in a turn, for how long, and who pays
//! for every cycle.
//!
//! **Deficit of cycles charged.** Each path keeps a credit in cycles. A path with work gets one
//! quantum of credit at the start of each turn, without banking more than one quantum; its run
//! is charged the cycles it really took (read from the caller's cycle counter), so a path that
//! burns cycles goes negative and sits out turns until the quanta pay its debt: it gets fewer
//! turns, the others do not wait for it. Paths run in order of the cycles charged to them
//! recently (least first, so a path that has used little goes before a busy one and a light flow
//! waits for no flood), each taking at most as many frames as its credit covers at its measured
//! cost per frame, at most `path_frames_per_turn`. Once a turn
//! has used `turn_cycles`, no further path starts; the ones left keep their credit and lead the
//! next turn. A turn is therefore bounded in time, whatever the load.
//!
//! **Accounting.** [`Meter`] reads the counter at stage boundaries and hands out the cycles in
//! between; [`Shares`] splits a stage that served several paths at once (taking a batch from the
//! RX ring and classifying it, refilling the ring, handing frames to the TX ring and reclaiming
//! them) among those paths by the bytes each had in it. What no path can own — frames dropped
//! before their path was known, turns that found nothing — goes to core-wide counters, and the
//! laps of a turn add up to the turn exactly.

use crate::classify::MAX_PATHS;
use crate::path::CycleCounter;

/// Reads the cycle counter at stage boundaries.
pub(crate) struct Meter {
    counter: CycleCounter,
    start: u64,
    last: u64,
}

impl Meter {
    /// Starts measuring now.
    pub(crate) fn start(counter: CycleCounter) -> Self {
        let now = counter();
        Self {
            counter,
            start: now,
            last: now,
        }
    }

    /// Cycles since the previous lap (or the start).
    pub(crate) fn lap(&mut self) -> u64 {
        let now = (self.counter)();
        let spent = now.wrapping_sub(self.last);
        self.last = now;
        spent
    }

    /// Cycles from the start to the last lap (the sum of all laps).
    pub(crate) fn total(&self) -> u64 {
        self.last.wrapping_sub(self.start)
    }
}

/// A path's scheduling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PathSchedule {
    /// Cycles the path may still spend; negative after an overrun.
    pub(crate) credit: i64,
    /// Its measured cost per frame (moving average), 0 until measured.
    pub(crate) cost_per_frame: u64,
    /// Cycles charged per turn, a moving average over about eight turns: the order of turns
    /// (least charged first).
    pub(crate) recent: u64,
    /// Cycles charged since the turn began.
    spent: u64,
}

impl PathSchedule {
    pub(crate) fn new(quantum: u64) -> Self {
        Self {
            credit: quantum_of(quantum),
            cost_per_frame: 0,
            recent: 0,
            spent: 0,
        }
    }

    /// A turn begins: the last turn's charges go into the moving average, and one more quantum
    /// of credit, at most one banked. Idle turns repay an overrun too, so a path's debt is paid
    /// by time, whether or not it has work meanwhile.
    pub(crate) fn replenish(&mut self, quantum: u64) {
        self.recent = (7 * self.recent + core::mem::take(&mut self.spent)) / 8;
        let quantum = quantum_of(quantum);
        self.credit = self.credit.saturating_add(quantum).min(quantum);
    }

    /// Frames the path may take now: what its credit covers at its cost per frame (at least one
    /// when the credit is positive), at most `queued` and `cap`.
    pub(crate) fn frames_allowed(&self, queued: usize, cap: usize) -> usize {
        if self.credit <= 0 {
            return 0;
        }
        let limit = queued.min(cap);
        if self.cost_per_frame == 0 {
            return limit;
        }
        let covered = (self.credit as u64).div_ceil(self.cost_per_frame);
        limit.min(covered.max(1) as usize)
    }

    /// Charges a run that took `cycles` for `frames` frames.
    pub(crate) fn charge(&mut self, cycles: u64, frames: usize) {
        self.spent += cycles;
        self.credit = self
            .credit
            .saturating_sub(i64::try_from(cycles).unwrap_or(i64::MAX));
        if frames > 0 {
            let per_frame = cycles / frames as u64;
            self.cost_per_frame = if self.cost_per_frame == 0 {
                per_frame.max(1)
            } else {
                ((3 * self.cost_per_frame + per_frame) / 4).max(1)
            };
        }
    }
}

fn quantum_of(quantum: u64) -> i64 {
    i64::try_from(quantum).unwrap_or(i64::MAX).max(1)
}

/// Who was served by a stage that served several paths at once, weighted by bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shares {
    weights: [u64; MAX_PATHS],
    unowned: u64,
}

/// Weight of one frame of `length` bytes: its bytes plus a fixed part for the descriptor and
/// header work every frame costs.
fn weight(length: u16) -> u64 {
    u64::from(length) + 64
}

impl Shares {
    /// A frame of `length` bytes for path `path`.
    pub(crate) fn add(&mut self, path: usize, length: u16) {
        if let Some(slot) = self.weights.get_mut(path) {
            *slot += weight(length);
        } else {
            self.unowned += weight(length);
        }
    }

    /// A frame of `length` bytes no path owns (dropped before its path was known).
    pub(crate) fn add_unowned(&mut self, length: u16) {
        self.unowned += weight(length);
    }

    /// Adds `other`'s weights.
    pub(crate) fn merge(&mut self, other: &Shares) {
        for (mine, theirs) in self.weights.iter_mut().zip(other.weights.iter()) {
            *mine += *theirs;
        }
        self.unowned += other.unowned;
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.unowned == 0 && self.weights.iter().all(|weight| *weight == 0)
    }

    /// Splits `cycles` by weight: calls `owned(path, cycles)` for each path with a share and
    /// returns the unowned part. The parts add up to `cycles` exactly (rounding goes to the
    /// unowned part, or to the last path when nothing is unowned). With no weight at all,
    /// everything is returned as unowned.
    pub(crate) fn split(&self, cycles: u64, mut owned: impl FnMut(usize, u64)) -> u64 {
        let total: u64 = self.weights.iter().sum::<u64>() + self.unowned;
        if total == 0 {
            return cycles;
        }
        let mut given = 0u64;
        let last = self
            .weights
            .iter()
            .rposition(|weight| *weight > 0)
            .filter(|_| self.unowned == 0);
        for (path, weight) in self.weights.iter().enumerate() {
            if *weight == 0 {
                continue;
            }
            let part = if Some(path) == last {
                cycles - given
            } else {
                (u128::from(cycles) * u128::from(*weight) / u128::from(total)) as u64
            };
            given += part;
            owned(path, part);
        }
        cycles - given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_does_not_bank_and_overruns_cost_turns() {
        let mut schedule = PathSchedule::new(100);
        schedule.replenish(100);
        assert_eq!(schedule.credit, 100, "at most one quantum banked");
        // Unmeasured: as many frames as allowed.
        assert_eq!(schedule.frames_allowed(50, 32), 32);
        schedule.charge(100, 10);
        assert_eq!((schedule.credit, schedule.cost_per_frame), (0, 10));
        assert_eq!(schedule.frames_allowed(50, 32), 0);
        schedule.replenish(100);
        assert_eq!(schedule.frames_allowed(50, 32), 10);
        assert_eq!(schedule.frames_allowed(3, 32), 3);
        // One frame that costs four quanta: the path sits out the next three turns.
        schedule.charge(400, 1);
        let mut turns_without = 0;
        for _ in 0..10 {
            schedule.replenish(100);
            if schedule.frames_allowed(50, 32) > 0 {
                break;
            }
            turns_without += 1;
        }
        assert_eq!(turns_without, 3);
        for _ in 0..3 {
            schedule.replenish(100);
        }
        assert_eq!(schedule.credit, 100);
    }

    #[test]
    fn shares_split_exactly_by_bytes() {
        let mut shares = Shares::default();
        assert_eq!(shares.split(1000, |_, _| panic!("no share")), 1000);
        shares.add(2, 36); // weight 36 + 64 = 100
        shares.add(5, 236); // weight 300
        let mut parts = std::vec::Vec::new();
        let unowned = shares.split(1001, |path, cycles| parts.push((path, cycles)));
        assert_eq!(unowned, 0);
        assert_eq!(parts, [(2, 250), (5, 751)]);
        shares.add_unowned(36); // weight 100
        let mut total = 0;
        let unowned = shares.split(1000, |_, cycles| total += cycles);
        assert_eq!(total + unowned, 1000);
        assert_eq!(unowned, 200);
        let mut other = Shares::default();
        other.add(2, 36);
        other.merge(&shares);
        assert!(!other.is_empty());
        assert!(Shares::default().is_empty());
    }
}
