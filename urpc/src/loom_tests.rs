//! loom model tests: every interleaving (up to a preemption bound) and every weak-memory outcome
//! loom models, of publish/consume with credits on 2- and 4-slot rings (single and batch calls),
//! the sleep/notify handshake, and a peer restart. Payload accesses go through loom's `UnsafeCell`, so a slot read
//! that is not ordered after its write (or a write not ordered after the previous read) fails.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p urpc --release --lib loom`.

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

use crate::*;

/// Runs `body` under loom with a preemption bound that keeps the suite within seconds.
/// Prints how many executions loom explored, so a model that explores nothing is noticed.
fn model(preemptions: usize, body: impl Fn() + Sync + Send + 'static) {
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = executions.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        body();
    });
    let explored = executions.load(std::sync::atomic::Ordering::Relaxed);
    println!("loom explored {explored} executions (preemption bound {preemptions})");
    assert!(explored > 1, "the model explored a single execution");
}

/// A region that lives for the whole model execution (loom threads need `'static`).
fn leak<const SLOTS: usize>() -> &'static ChannelRegion<SLOTS> {
    Box::leak(ChannelRegion::<SLOTS>::new_boxed())
}

fn payload(value: u8) -> Payload {
    [value; PAYLOAD_SIZE]
}

fn send_all<const SLOTS: usize>(sender: &mut Sender<'_, SLOTS>, count: u8) {
    for value in 0..count {
        while sender.try_send(&payload(value)) == Err(SendError::Full) {
            thread::yield_now();
        }
    }
}

fn receive_all<const SLOTS: usize>(receiver: &mut Receiver<'_, SLOTS>, count: u8) {
    for value in 0..count {
        loop {
            match receiver.try_recv() {
                Ok(received) => {
                    assert_eq!(received, payload(value));
                    break;
                }
                Err(RecvError::Empty) => thread::yield_now(),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(receiver.try_recv(), Err(RecvError::Empty));
}

/// 3 messages through 2 slots: wraps, and credits come back after every message.
#[test]
fn loom_publish_consume_two_slots() {
    model(6, || {
        let region = leak::<2>();
        let mut a = region.claim(Side::A).unwrap();
        let mut b = region.claim(Side::B).unwrap();
        let sender = thread::spawn(move || send_all(&mut a.sender, 3));
        receive_all(&mut b.receiver, 3);
        sender.join().unwrap();
    });
}

/// 6 messages through 4 slots: credits come back in batches of 2, the sender blocks on Full.
#[test]
fn loom_credit_protocol_four_slots() {
    model(6, || {
        let region = leak::<4>();
        let mut a = region.claim(Side::A).unwrap();
        let mut b = region.claim(Side::B).unwrap();
        let sender = thread::spawn(move || send_all(&mut a.sender, 6));
        receive_all(&mut b.receiver, 6);
        sender.join().unwrap();
    });
}

/// 6 messages through 4 slots with the batch calls: the sender writes up to 3 slots per call
/// (each with its own header store), the receiver reads up to 2 per call in place.
#[test]
fn loom_batch_send_and_receive_four_slots() {
    model(6, || {
        let region = leak::<4>();
        let mut a = region.claim(Side::A).unwrap();
        let mut b = region.claim(Side::B).unwrap();
        let sender = thread::spawn(move || {
            let mut next = 0u8;
            while next < 6 {
                let max = usize::from(6 - next).min(3);
                match a.sender.try_send_batch(max, |slot| {
                    *slot = payload(next);
                    next += 1;
                }) {
                    Ok(_) => {}
                    Err(SendError::Full) => thread::yield_now(),
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        });
        let mut expected = 0u8;
        while expected < 6 {
            match b.receiver.try_recv_batch(2, |slot| {
                assert_eq!(*slot, payload(expected));
                expected += 1;
            }) {
                Ok(count) => assert!((1..=2).contains(&count)),
                Err(RecvError::Empty) => thread::yield_now(),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));
        sender.join().unwrap();
    });
}

/// Both directions at once on 2-slot rings: a request and its reply, twice.
#[test]
fn loom_ping_pong_both_rings() {
    model(6, || {
        let region = leak::<2>();
        let a = region.claim(Side::A).unwrap();
        let b = region.claim(Side::B).unwrap();
        let echo = thread::spawn(move || {
            let Endpoint {
                mut sender,
                mut receiver,
            } = b;
            for _ in 0..2 {
                let message = loop {
                    match receiver.try_recv() {
                        Ok(message) => break message,
                        Err(_) => thread::yield_now(),
                    }
                };
                while sender.try_send(&message).is_err() {
                    thread::yield_now();
                }
            }
        });
        let Endpoint {
            mut sender,
            mut receiver,
        } = a;
        for value in 0..2 {
            while sender.try_send(&payload(value)).is_err() {
                thread::yield_now();
            }
            loop {
                match receiver.try_recv() {
                    Ok(message) => {
                        assert_eq!(message, payload(value));
                        break;
                    }
                    Err(_) => thread::yield_now(),
                }
            }
        }
        echo.join().unwrap();
    });
}

/// Counts notifications with a loom atomic (loom checks its accesses too).
struct LoomCounter(&'static AtomicU32);

impl Notifier for LoomCounter {
    fn notify(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The lost-wakeup race: the receiver halts only if a notification is then guaranteed.
#[test]
fn loom_sleep_notify_handshake() {
    model(6, || {
        let region = leak::<2>();
        let notifications: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let mut a = region.claim(Side::A).unwrap();
        let mut b = region.claim(Side::B).unwrap();
        let sender = thread::spawn(move || {
            a.sender.try_send(&payload(1)).unwrap();
            a.sender.notify_if_sleeping(&mut LoomCounter(notifications));
        });
        let halted = match b.receiver.try_recv() {
            Ok(message) => {
                assert_eq!(message, payload(1));
                false
            }
            Err(RecvError::Empty) => match b.receiver.prepare_to_sleep() {
                SleepDecision::MayHalt => true,
                SleepDecision::MessagePending => {
                    assert_eq!(b.receiver.try_recv(), Ok(payload(1)));
                    false
                }
            },
            Err(other) => panic!("unexpected {other:?}"),
        };
        sender.join().unwrap();
        if halted {
            assert_eq!(notifications.load(Ordering::Relaxed), 1, "lost wakeup");
            b.receiver.woke();
            assert_eq!(b.receiver.try_recv(), Ok(payload(1)));
        }
    });
}

/// The same handshake without the SeqCst fences (Release store, Acquire load only): loom must
/// find the interleaving where the receiver halts and nobody notifies. This shows the test above
/// can fail, and why the fences are there.
#[test]
#[should_panic(expected = "lost wakeup")]
fn loom_sleep_notify_without_fences_loses_wakeups() {
    model(6, || {
        let published: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let sleeping: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let sender = thread::spawn(move || {
            published.store(1, Ordering::Release);
            sleeping.load(Ordering::Acquire) == 1
        });
        sleeping.store(1, Ordering::Release);
        let halted = published.load(Ordering::Acquire) == 0;
        let notified = sender.join().unwrap();
        assert!(!halted || notified, "lost wakeup");
    });
}

/// A restart of side B while A's receiver still holds B's old-generation message: A gets the old
/// message, then the restart, then the new B's message, and the new B writes no slot A might
/// still be reading.
#[test]
fn loom_peer_restart() {
    model(6, || {
        let region = leak::<2>();
        let mut a = region.claim(Side::A).unwrap();
        let mut old_b = region.claim(Side::B).unwrap();
        old_b.sender.try_send(&payload(1)).unwrap();
        old_b.sender.try_send(&payload(2)).unwrap();
        let Endpoint {
            sender: _,
            receiver: _,
        } = old_b;
        let restarted = thread::spawn(move || {
            // SAFETY: B's old endpoints were consumed before this thread was spawned; A never
            // restarts.
            let mut b = unsafe { region.restart(Side::B) };
            while b.sender.try_send(&payload(3)) == Err(SendError::Full) {
                thread::yield_now();
            }
        });
        let mut received = Vec::new();
        let mut restarts = 0;
        while received.len() < 3 {
            match a.receiver.try_recv() {
                Ok(message) => received.push(message[0]),
                Err(RecvError::Empty) => thread::yield_now(),
                Err(RecvError::PeerRestarted { generation }) => {
                    assert_eq!(generation, 2);
                    restarts += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        restarted.join().unwrap();
        assert_eq!(received, [1, 2, 3]);
        assert_eq!(restarts, 1);
    });
}
