//! Every NIC queue wakes its core, also when the NIC has fewer MSI-X vectors than queues.
//!
//! The igb driver maps queue `q` to vector `q mod min(queues, vectors - 1)`
//! (`drivers::igb::queue_vector`), so with QEMU's 10 vectors and 16 queues, queues 9–15 share
//! vectors 0–6 with queues 0–6. In MSI-X mode the cause register (EICR) has one bit per vector,
//! not per queue, so it cannot tell sharers apart; instead each vector is routed to the core of
//! its lowest queue, and that core, when the vector fires, forwards the wake-up by IPI to the
//! cores of the other queues on the vector (the interrupt handler does it, before anything else).
//! A woken sharer polls its own ring; spurious wake-ups cost one turn. Each sharer unmasks the
//! shared vector before it halts and looks at its own ring once more (`Node::may_halt`), so an
//! arrival while the vector was auto-masked is never lost.

/// The vector of `queue` (of `queues`, under `vectors` MSI-X vectors), as the driver assigns it.
pub fn queue_vector(queue: usize, queues: usize, vectors: usize) -> Option<usize> {
    drivers::igb::queue_vector(queue as u16, queues as u16, vectors as u16).map(usize::from)
}

/// The core a vector's MSI-X entry points at: the core of its lowest queue.
pub fn vector_core(vector: usize, queues: usize, vectors: usize) -> Option<usize> {
    (0..queues).find(|&queue| queue_vector(queue, queues, vectors) == Some(vector))
}

/// The cores `core` wakes by IPI when a queue interrupt reaches it: the other queues' cores on
/// the vectors routed to it. (No allocation: the kernel asks before its heap exists.)
pub fn forward_targets(core: usize, queues: usize, vectors: usize) -> impl Iterator<Item = usize> {
    (0..queues).filter(move |&queue| {
        queue != core
            && queue_vector(queue, queues, vectors)
                .and_then(|vector| vector_core(vector, queues, vectors))
                == Some(core)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn targets(core: usize, queues: usize, vectors: usize) -> Vec<usize> {
        forward_targets(core, queues, vectors).collect()
    }

    #[test]
    fn with_qemus_ten_vectors_every_one_of_sixteen_queues_is_woken() {
        let (queues, vectors) = (16, 10);
        for queue in 0..queues {
            let vector = queue_vector(queue, queues, vectors).expect("every queue has a vector");
            let target = vector_core(vector, queues, vectors).expect("routed");
            // Either the vector goes to the queue's own core, or that core forwards to it.
            assert!(
                target == queue || targets(target, queues, vectors).contains(&queue),
                "queue {queue} (vector {vector}) is never woken"
            );
        }
        assert_eq!(targets(0, queues, vectors), [9]);
        assert_eq!(targets(6, queues, vectors), [15]);
        assert!(targets(7, queues, vectors).is_empty());
        assert!(
            targets(9, queues, vectors).is_empty(),
            "core 9 receives nothing"
        );
        // Enough vectors: no forwarding at all.
        for core in 0..16 {
            assert!(targets(core, 16, 25).is_empty());
            assert!(targets(core, 4, 10).is_empty());
        }
    }
}
