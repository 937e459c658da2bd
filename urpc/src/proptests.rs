//! Property tests: random operation sequences against a model (one thread), and random send and
//! receive interleavings on two real threads checking FIFO order, no loss and no duplication.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;

use crate::*;

/// Every byte of the payload depends on `value`, so torn or stale slots are caught.
fn payload(value: u64) -> Payload {
    let mut payload = [0; PAYLOAD_SIZE];
    for (index, byte) in payload.iter_mut().enumerate().skip(8) {
        *byte = (value.rotate_left(index as u32) as u8) ^ index as u8;
    }
    payload[..8].copy_from_slice(&value.to_le_bytes());
    payload
}

/// One step of the single-threaded model test.
#[derive(Clone, Copy, Debug)]
enum Step {
    Send,
    /// `try_send_batch` with this `max`.
    SendBatch(usize),
    Receive,
    /// `try_recv_with` (the payload read in its slot).
    ReceiveInPlace,
    /// `try_recv_batch` with this `max`.
    ReceiveBatch(usize),
    PublishCredits,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Send),
        2 => (0..12usize).prop_map(Step::SendBatch),
        3 => Just(Step::Receive),
        1 => Just(Step::ReceiveInPlace),
        2 => (0..12usize).prop_map(Step::ReceiveBatch),
        1 => Just(Step::PublishCredits),
    ]
}

/// The ring's observable behaviour, including exactly when credits come back and how many
/// messages a batch call moves.
fn run_against_model<const SLOTS: usize>(steps: &[Step]) {
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    let mut queue = VecDeque::new();
    let (mut sent, mut consumed, mut credited) = (0u64, 0u64, 0u64);
    // The sender's own view of its limit: it reads the credit line only when it runs out.
    let mut known_limit = SLOTS as u64;
    let slots = SLOTS as u64;
    for step in steps {
        match *step {
            Step::Send => {
                if sent == known_limit {
                    known_limit = credited + slots;
                }
                let result = a.sender.try_send(&payload(sent));
                if sent == known_limit {
                    assert_eq!(result, Err(SendError::Full));
                } else {
                    assert_eq!(result, Ok(()));
                    queue.push_back(sent);
                    sent += 1;
                }
            }
            Step::SendBatch(max) => {
                let mut next = sent;
                let result = a.sender.try_send_batch(max, |slot| {
                    *slot = payload(next);
                    next += 1;
                });
                if max == 0 {
                    assert_eq!(result, Ok(0));
                    continue;
                }
                if sent == known_limit {
                    known_limit = credited + slots;
                }
                if sent == known_limit {
                    assert_eq!(result, Err(SendError::Full));
                    assert_eq!(next, sent, "fill not called when full");
                } else {
                    let expected = (max as u64).min(known_limit - sent);
                    assert_eq!(result, Ok(expected as usize));
                    assert_eq!(next, sent + expected, "fill called once per message");
                    queue.extend(sent..sent + expected);
                    sent += expected;
                }
            }
            Step::Receive | Step::ReceiveInPlace => {
                let received = if matches!(step, Step::Receive) {
                    b.receiver.try_recv()
                } else {
                    b.receiver.try_recv_with(|slot| *slot)
                };
                match queue.pop_front() {
                    None => assert_eq!(received, Err(RecvError::Empty)),
                    Some(value) => {
                        assert_eq!(received, Ok(payload(value)));
                        consumed += 1;
                        if consumed - credited >= slots / 2 {
                            credited = consumed;
                        }
                    }
                }
            }
            Step::ReceiveBatch(max) => {
                let mut seen = Vec::new();
                let result = b.receiver.try_recv_batch(max, |slot| seen.push(*slot));
                let expected = max.min(queue.len());
                if max > 0 && expected == 0 {
                    assert_eq!(result, Err(RecvError::Empty));
                } else {
                    assert_eq!(result, Ok(expected));
                }
                assert_eq!(seen.len(), expected, "each called once per message");
                for received in seen {
                    assert_eq!(received, payload(queue.pop_front().unwrap()));
                    consumed += 1;
                    if consumed - credited >= slots / 2 {
                        credited = consumed;
                    }
                }
            }
            Step::PublishCredits => {
                b.receiver.publish_credits();
                credited = consumed;
            }
        }
        assert_eq!(
            a.sender.known_credits() as u64,
            known_limit - sent,
            "the sender's credits"
        );
    }
}

/// Counts notifications; the receiving thread waits for the count to move.
struct SharedCounter<'a>(&'a AtomicUsize);

impl Notifier for SharedCounter<'_> {
    fn notify(&mut self) {
        // Release: pairs with the Acquire load of the halted receiver (test scaffolding only).
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// How each side of the two-thread test behaves.
#[derive(Clone, Debug)]
struct Schedule {
    messages: u64,
    send_bursts: Vec<usize>,
    receive_bursts: Vec<usize>,
    sender_pauses: Vec<u32>,
    receiver_pauses: Vec<u32>,
    /// The receiver tries to halt on every n-th empty poll (0: never).
    sleep_every: usize,
    /// The sender uses `try_send_batch` (a burst per call) instead of `try_send`.
    batch_send: bool,
    /// The receiver uses `try_recv_batch` (a burst per call) instead of `try_recv`.
    batch_receive: bool,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        1..3000u64,
        vec(1..24usize, 1..12),
        vec(1..24usize, 1..12),
        vec(0..300u32, 1..12),
        vec(0..300u32, 1..12),
        0..6usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                messages,
                send_bursts,
                receive_bursts,
                sender_pauses,
                receiver_pauses,
                sleep_every,
                batch_send,
                batch_receive,
            )| {
                Schedule {
                    messages,
                    send_bursts,
                    receive_bursts,
                    sender_pauses,
                    receiver_pauses,
                    sleep_every,
                    batch_send,
                    batch_receive,
                }
            },
        )
}

fn pause(iterations: u32) {
    for _ in 0..iterations {
        std::hint::spin_loop();
    }
    if iterations.is_multiple_of(7) {
        std::thread::yield_now();
    }
}

/// Longest a case may take before it is declared hung (a lost message or a lost wakeup).
const CASE_DEADLINE: Duration = Duration::from_secs(20);

fn run_two_threads<const SLOTS: usize>(schedule: &Schedule) {
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let a = region.claim(Side::A).unwrap();
    let b = region.claim(Side::B).unwrap();
    let notifications = AtomicUsize::new(0);
    let deadline = Instant::now() + CASE_DEADLINE;
    std::thread::scope(|scope| {
        let notifications = &notifications;
        scope.spawn(move || {
            let mut sender = a.sender;
            let mut notifier = SharedCounter(notifications);
            let mut next = 0;
            let mut round = 0;
            while next < schedule.messages {
                let burst = schedule.send_bursts[round % schedule.send_bursts.len()];
                let mut left = burst.min((schedule.messages - next) as usize);
                while schedule.batch_send && left > 0 {
                    let mut filled = next;
                    match sender.try_send_batch(left, |slot| {
                        *slot = payload(filled);
                        filled += 1;
                    }) {
                        Ok(count) => {
                            assert_eq!(filled, next + count as u64, "one fill per message");
                            next += count as u64;
                            left -= count;
                        }
                        Err(SendError::Full) => {
                            sender.notify_if_sleeping(&mut notifier);
                            assert!(Instant::now() < deadline, "sender stuck at {next}");
                            std::thread::yield_now();
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                for _ in 0..if schedule.batch_send { 0 } else { burst } {
                    if next == schedule.messages {
                        break;
                    }
                    loop {
                        match sender.try_send(&payload(next)) {
                            Ok(()) => break,
                            Err(SendError::Full) => {
                                // A sender that waits for credits must first wake the receiver
                                // it published to (part of the protocol's contract).
                                sender.notify_if_sleeping(&mut notifier);
                                assert!(Instant::now() < deadline, "sender stuck at {next}");
                                std::thread::yield_now();
                            }
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                    next += 1;
                }
                sender.notify_if_sleeping(&mut notifier);
                pause(schedule.sender_pauses[round % schedule.sender_pauses.len()]);
                round += 1;
            }
        });
        let mut receiver = b.receiver;
        let mut expected = 0;
        let mut round = 0;
        let mut empty_polls = 0;
        while expected < schedule.messages {
            let burst = schedule.receive_bursts[round % schedule.receive_bursts.len()];
            for _ in 0..burst {
                if expected == schedule.messages {
                    break;
                }
                let result = if schedule.batch_receive {
                    receiver.try_recv_batch(burst, |received| {
                        assert_eq!(*received, payload(expected), "FIFO, no loss, no duplicate");
                        expected += 1;
                    })
                } else {
                    receiver.try_recv().map(|received| {
                        assert_eq!(received, payload(expected), "FIFO, no loss, no duplicate");
                        expected += 1;
                        1
                    })
                };
                match result {
                    Ok(_) => {}
                    Err(RecvError::Empty) => {
                        assert!(Instant::now() < deadline, "receiver starved at {expected}");
                        empty_polls += 1;
                        if schedule.sleep_every != 0 && empty_polls % schedule.sleep_every == 0 {
                            // Acquire: pairs with the notifier's Release increment.
                            let seen = notifications.load(Ordering::Acquire);
                            if receiver.prepare_to_sleep() == SleepDecision::MayHalt {
                                // "Halt": wait for a notification. A lost wakeup hangs here.
                                while notifications.load(Ordering::Acquire) == seen {
                                    assert!(Instant::now() < deadline, "lost wakeup at {expected}");
                                    std::thread::yield_now();
                                }
                                receiver.woke();
                            }
                        }
                        break;
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            pause(schedule.receiver_pauses[round % schedule.receiver_pauses.len()]);
            round += 1;
        }
        assert_eq!(
            receiver.try_recv(),
            Err(RecvError::Empty),
            "nothing beyond the last message"
        );
    });
}

proptest! {
    #[test]
    fn single_thread_matches_model_two_slots(steps in vec(step(), 0..300)) {
        run_against_model::<2>(&steps);
    }

    #[test]
    fn single_thread_matches_model_eight_slots(steps in vec(step(), 0..600)) {
        run_against_model::<8>(&steps);
    }
}

proptest! {
    // Real threads on a 2-core machine shared with other work: few cases, bounded in time.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn two_threads_fifo_no_loss_no_duplication_four_slots(schedule in schedule()) {
        run_two_threads::<4>(&schedule);
    }

    #[test]
    fn two_threads_fifo_no_loss_no_duplication_sixty_four_slots(schedule in schedule()) {
        run_two_threads::<64>(&schedule);
    }
}
