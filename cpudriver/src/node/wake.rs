//! Every NIC queue wakes its core, also when the NIC has fewer MSI-X vectors than queues, and
//! also after a failed core's queue was adopted by another.
//!
//! The igb driver maps queue `q` to vector `q mod min(queues, vectors - 1)`
//! (`drivers::igb::queue_vector`), so with QEMU's 10 vectors and 16 queues, queues 9–15 share
//! vectors 0–6 with queues 0–6. In MSI-X mode the cause register (EICR) has one bit per vector,
//! not per queue, so it cannot tell sharers apart; instead each vector is routed to the lowest
//! core holding one of its queues, and that core, when the vector fires, forwards the wake-up by
//! IPI to the holders of the other queues on the vector (the interrupt handler does it, before
//! anything else). A woken sharer polls its own ring; spurious wake-ups cost one turn. Each sharer
//! unmasks the shared vector before it halts and looks at its own ring once more
//! (`Node::may_halt`), so an arrival while the vector was auto-masked is never lost.
//!
//! Who holds a queue ([`QueueHolders`]): core `q` holds queue `q` while it lives; once core 0
//! failed, queue 0 — where the NIC puts every frame RSS does not steer — is held by the NIC's
//! home, the lowest live core with a queue (`node::takeover`). The queues of other failed cores
//! are held by nobody: their flow groups are steered elsewhere, so they receive nothing new.

use monitor::CoreSet;

/// Queues a NIC has at most (the 82576's 16).
pub const MAX_QUEUES: usize = 16;

/// Which core polls each NIC queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueHolders {
    holders: [Option<u8>; MAX_QUEUES],
    queues: usize,
}

impl QueueHolders {
    /// At boot: core `q` holds queue `q`.
    pub fn boot(queues: usize) -> Self {
        Self::for_live(CoreSet::first(queues.min(MAX_QUEUES)), queues)
    }

    /// With the cores of `live` alive: core `q` holds queue `q` if it lives; queue 0 goes to the
    /// NIC's home ([`Self::home`]) when core 0 does not.
    pub fn for_live(live: CoreSet, queues: usize) -> Self {
        let queues = queues.clamp(1, MAX_QUEUES);
        let mut holders = [None; MAX_QUEUES];
        for (queue, holder) in holders.iter_mut().enumerate().take(queues) {
            if monitor::CoreId::new(queue as u8).is_some_and(|core| live.contains(core)) {
                *holder = Some(queue as u8);
            }
        }
        let home = home_of(live, queues);
        if holders[0].is_none() {
            holders[0] = home.map(|core| core as u8);
        }
        Self { holders, queues }
    }

    /// The core polling `queue`, if any.
    pub fn holder(&self, queue: usize) -> Option<usize> {
        self.holders.get(queue).copied().flatten().map(usize::from)
    }

    /// Queues in the machine.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// The NIC's home: the core that holds its control and queue 0 (the lowest live core with a
    /// queue: the monitor leader whenever the leader has a queue).
    pub fn home(&self) -> Option<usize> {
        self.holder(0)
    }

    /// The queues `core` polls.
    pub fn held_by(&self, core: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.queues).filter(move |&queue| self.holder(queue) == Some(core))
    }
}

/// The lowest core of `live` that has one of the `queues` queues.
fn home_of(live: CoreSet, queues: usize) -> Option<usize> {
    live.iter()
        .map(|core| core.index())
        .find(|&core| core < queues)
}

/// The vector of `queue` (of `queues`, under `vectors` MSI-X vectors), as the driver assigns it.
pub fn queue_vector(queue: usize, queues: usize, vectors: usize) -> Option<usize> {
    drivers::igb::queue_vector(queue as u16, queues as u16, vectors as u16).map(usize::from)
}

/// The core a vector's MSI-X entry points at: the lowest holder of its queues.
pub fn vector_core(vector: usize, vectors: usize, holders: &QueueHolders) -> Option<usize> {
    let queues = holders.queues();
    (0..queues)
        .filter(|&queue| queue_vector(queue, queues, vectors) == Some(vector))
        .filter_map(|queue| holders.holder(queue))
        .min()
}

/// The vectors that carry queues (`0..min(queues, vectors - 1)`), each with the core its MSI-X
/// entry must point at (`None`: no live holder; leave it).
pub fn vector_routes(
    vectors: usize,
    holders: &QueueHolders,
) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
    let used = holders.queues().min(vectors.saturating_sub(1));
    (0..used).map(move |vector| (vector, vector_core(vector, vectors, holders)))
}

/// The cores `core` wakes by IPI when a queue interrupt reaches it: the holders of the other
/// queues on the vectors routed to it. (No allocation: the kernel asks before its heap exists.)
pub fn forward_targets(
    core: usize,
    vectors: usize,
    holders: &QueueHolders,
) -> impl Iterator<Item = usize> + '_ {
    let queues = holders.queues();
    let mut seen = 0u64;
    (0..queues).filter_map(move |queue| {
        let holder = holders.holder(queue)?;
        let vector = queue_vector(queue, queues, vectors)?;
        let routed = vector_core(vector, vectors, holders)?;
        let new = holder < 64 && seen & (1 << holder) == 0;
        if holder != core && routed == core && new {
            seen |= 1 << holder;
            Some(holder)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use monitor::CoreId;

    fn targets(core: usize, vectors: usize, holders: &QueueHolders) -> Vec<usize> {
        forward_targets(core, vectors, holders).collect()
    }

    fn without(cores: usize, dead: &[u8]) -> CoreSet {
        let mut live = CoreSet::first(cores);
        for &core in dead {
            live.remove(CoreId::new(core).unwrap());
        }
        live
    }

    #[test]
    fn with_qemus_ten_vectors_every_one_of_sixteen_queues_is_woken() {
        let (queues, vectors) = (16, 10);
        let holders = QueueHolders::boot(queues);
        for queue in 0..queues {
            let vector = queue_vector(queue, queues, vectors).expect("every queue has a vector");
            let target = vector_core(vector, vectors, &holders).expect("routed");
            // Either the vector goes to the queue's own core, or that core forwards to it.
            assert!(
                target == queue || targets(target, vectors, &holders).contains(&queue),
                "queue {queue} (vector {vector}) is never woken"
            );
        }
        assert_eq!(targets(0, vectors, &holders), [9]);
        assert_eq!(targets(6, vectors, &holders), [15]);
        assert!(targets(7, vectors, &holders).is_empty());
        assert!(
            targets(9, vectors, &holders).is_empty(),
            "core 9 receives nothing"
        );
        // Enough vectors: no forwarding at all.
        for core in 0..16 {
            assert!(targets(core, 25, &QueueHolders::boot(16)).is_empty());
            assert!(targets(core, 10, &QueueHolders::boot(4)).is_empty());
        }
    }

    #[test]
    fn queue_0_goes_to_the_lowest_live_core_and_other_dead_queues_to_nobody() {
        let holders = QueueHolders::for_live(without(4, &[0]), 4);
        assert_eq!(holders.home(), Some(1));
        assert_eq!(holders.held_by(1).collect::<Vec<_>>(), [0, 1]);
        let holders = QueueHolders::for_live(without(4, &[0, 1]), 4);
        assert_eq!(holders.held_by(2).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(holders.holder(1), None);
        let holders = QueueHolders::for_live(without(4, &[2]), 4);
        assert_eq!(holders.home(), Some(0));
        assert_eq!(holders.holder(2), None);
        // More cores than queues: a live core without a queue is never the home.
        let mut live = CoreSet::EMPTY;
        live.insert(CoreId::new(20).unwrap());
        assert_eq!(QueueHolders::for_live(live, 16).home(), None);
    }

    #[test]
    fn after_core_0_fails_every_queue_is_still_woken() {
        // 16 queues on 10 vectors: vector 0 carries queues 0 and 9. Core 0 fails: its queue goes
        // to core 1, vector 0 is routed to core 1, which now wakes core 9 as well as core 10.
        let (queues, vectors) = (16, 10);
        for dead in [&[0u8][..], &[0, 1], &[3], &[0, 9], &[2, 11]] {
            let live = without(queues, dead);
            let holders = QueueHolders::for_live(live, queues);
            for queue in 0..queues {
                let Some(holder) = holders.holder(queue) else {
                    assert!(dead.contains(&(queue as u8)) && queue != 0);
                    continue;
                };
                assert!(live.contains(CoreId::new(holder as u8).unwrap()));
                let vector = queue_vector(queue, queues, vectors).unwrap();
                let target = vector_core(vector, vectors, &holders).expect("routed");
                assert!(live.contains(CoreId::new(target as u8).unwrap()));
                assert!(
                    target == holder || targets(target, vectors, &holders).contains(&holder),
                    "{dead:?}: queue {queue} (holder {holder}, vector {vector} to {target}) is never woken"
                );
            }
        }
        let holders = QueueHolders::for_live(without(16, &[0]), 16);
        assert_eq!(vector_core(0, vectors, &holders), Some(1));
        assert_eq!(targets(1, vectors, &holders), [9, 10]);
        let routes: Vec<_> = vector_routes(vectors, &holders).collect();
        assert_eq!(routes.len(), 9);
        assert_eq!(routes[0], (0, Some(1)));
        // Core 3 fails: vector 3 (queues 3 and 12) now goes to core 12, which forwards nothing.
        let holders = QueueHolders::for_live(without(16, &[3]), 16);
        assert_eq!(vector_core(3, vectors, &holders), Some(12));
        assert!(targets(12, vectors, &holders).is_empty());
    }
}
