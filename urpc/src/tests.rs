//! Unit tests of the channel and the typed layer (single-threaded, deterministic).

use core::mem::MaybeUninit;

use crate::message::INLINE_CAPACITY;
use crate::*;

/// A notifier that counts calls.
#[derive(Default)]
struct CountingNotifier {
    calls: usize,
}

impl Notifier for CountingNotifier {
    fn notify(&mut self) {
        self.calls += 1;
    }
}

/// A payload whose first 8 bytes are `value` and the rest a pattern derived from it.
fn payload(value: u64) -> Payload {
    let mut payload = [0; PAYLOAD_SIZE];
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte = (value as u8).wrapping_mul(31).wrapping_add(index as u8);
    }
    payload[..8].copy_from_slice(&value.to_le_bytes());
    payload
}

fn value_of(payload: &Payload) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

#[test]
fn region_size_is_whole_cache_lines() {
    assert_eq!(ChannelRegion::<64>::SIZE, 64 + 2 * (2 + 64) * 64);
    assert_eq!(ChannelRegion::<2>::SIZE % SLOT_SIZE, 0);
    assert_eq!(
        core::mem::align_of::<ChannelRegion<8>>(),
        ChannelRegion::<8>::ALIGN
    );
}

#[test]
fn init_raw_checks_alignment_and_size_and_attach_checks_contents() {
    type Region = ChannelRegion<8>;
    let mut storage: Vec<MaybeUninit<Region>> = (0..2).map(|_| MaybeUninit::uninit()).collect();
    let base = storage.as_mut_ptr().cast::<u8>();
    let length = 2 * Region::SIZE;
    // SAFETY: `base .. base + length` is our allocation, used only here.
    unsafe {
        assert_eq!(
            Region::init_raw(base.add(8), length - 8).err(),
            Some(LayoutError::Misaligned {
                address: base as usize + 8
            })
        );
        assert_eq!(
            Region::init_raw(base, Region::SIZE - 1).err(),
            Some(LayoutError::TooSmall {
                length: Region::SIZE - 1,
                needed: Region::SIZE
            })
        );
    }
    // Attaching to zeroed memory is refused.
    // SAFETY: as above; the second region's memory is zeroed first, so it is initialised bytes.
    unsafe {
        let second = base.add(Region::SIZE);
        core::ptr::write_bytes(second, 0, Region::SIZE);
        assert_eq!(
            Region::attach_raw(second, Region::SIZE).err(),
            Some(LayoutError::NotInitialised)
        );
    }
    // SAFETY: as above; initialised by `init_raw` before `attach_raw`, same thread.
    let (mine, theirs) = unsafe {
        let mine = Region::init_raw(base, Region::SIZE).unwrap();
        (mine, Region::attach_raw(base, Region::SIZE).unwrap())
    };
    // A peer built for another slot count is refused.
    // SAFETY: same initialised memory; `ChannelRegion<4>` is smaller than `ChannelRegion<8>`.
    let other = unsafe { ChannelRegion::<4>::attach_raw(base, Region::SIZE) };
    assert_eq!(
        other.err(),
        Some(LayoutError::SlotCountMismatch {
            found: 8,
            expected: 4
        })
    );

    let mut a = mine.claim(Side::A).unwrap();
    let mut b = theirs.claim(Side::B).unwrap();
    a.sender.try_send(&payload(7)).unwrap();
    assert_eq!(value_of(&b.receiver.try_recv().unwrap()), 7);
    b.sender.try_send(&payload(8)).unwrap();
    assert_eq!(value_of(&a.receiver.try_recv().unwrap()), 8);
}

#[test]
fn init_in_typed_storage() {
    let mut storage = Box::new(MaybeUninit::<ChannelRegion<4>>::uninit());
    let region = ChannelRegion::init(&mut storage);
    assert_eq!(region.generation(), 1);
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    a.sender.try_send(&payload(1)).unwrap();
    assert_eq!(b.receiver.try_recv(), Ok(payload(1)));
}

#[test]
fn each_side_is_claimed_once() {
    let region = ChannelRegion::<4>::new_boxed();
    let _a = region.claim(Side::A).unwrap();
    assert_eq!(
        region.claim(Side::A).err(),
        Some(ClaimError::AlreadyClaimed(Side::A))
    );
    let _b = region.claim(Side::B).unwrap();
    assert_eq!(
        region.claim(Side::B).err(),
        Some(ClaimError::AlreadyClaimed(Side::B))
    );
}

#[test]
fn empty_ring_reports_empty_and_stays_consistent() {
    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for _ in 0..3 {
        assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));
        assert_eq!(a.receiver.try_recv(), Err(RecvError::Empty));
    }
    a.sender.try_send(&payload(1)).unwrap();
    assert_eq!(b.receiver.try_recv(), Ok(payload(1)));
    assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));
    // The other direction is independent.
    assert_eq!(a.receiver.try_recv(), Err(RecvError::Empty));
}

#[test]
fn full_ring_refuses_until_credits_return_in_batches() {
    const SLOTS: usize = 8;
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for value in 0..SLOTS as u64 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    assert_eq!(a.sender.try_send(&payload(99)), Err(SendError::Full));
    // Consuming fewer than SLOTS / 2 returns no credit yet.
    for value in 0..(SLOTS / 2 - 1) as u64 {
        assert_eq!(value_of(&b.receiver.try_recv().unwrap()), value);
    }
    assert_eq!(a.sender.try_send(&payload(99)), Err(SendError::Full));
    // The SLOTS/2-th message returns a batch of SLOTS / 2.
    assert_eq!(
        value_of(&b.receiver.try_recv().unwrap()),
        (SLOTS / 2 - 1) as u64
    );
    for value in SLOTS as u64..(SLOTS + SLOTS / 2) as u64 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    assert_eq!(a.sender.try_send(&payload(99)), Err(SendError::Full));
    for value in (SLOTS / 2) as u64..(SLOTS + SLOTS / 2) as u64 {
        assert_eq!(b.receiver.try_recv(), Ok(payload(value)));
    }
    assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));
}

#[test]
fn publish_credits_returns_a_partial_batch() {
    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for value in 0..4 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    assert_eq!(a.sender.known_credits(), 0);
    b.receiver.try_recv().unwrap();
    assert_eq!(a.sender.try_send(&payload(9)), Err(SendError::Full));
    // Batch is 2: one consumed message is not returned until asked.
    b.receiver.publish_credits();
    assert_eq!(a.sender.try_send(&payload(4)), Ok(()));
}

#[test]
fn wrap_around_many_laps_preserves_order() {
    const SLOTS: usize = 4;
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    let mut next_send = 0u64;
    let mut next_receive = 0u64;
    // Uneven bursts so that the ring's fill level and the slot index drift across laps.
    for round in 0..500u64 {
        for _ in 0..(round % 5) {
            match a.sender.try_send(&payload(next_send)) {
                Ok(()) => next_send += 1,
                Err(SendError::Full) => break,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        for _ in 0..(round % 3 + 1) {
            match b.receiver.try_recv() {
                Ok(received) => {
                    assert_eq!(received, payload(next_receive));
                    next_receive += 1;
                }
                Err(RecvError::Empty) => break,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    while let Ok(received) = b.receiver.try_recv() {
        assert_eq!(received, payload(next_receive));
        next_receive += 1;
    }
    assert_eq!(next_send, next_receive);
    assert!(next_send > 100 * SLOTS as u64, "only {next_send} messages");
}

#[test]
fn sequence_numbers_wrap_past_u32_max() {
    const SLOTS: usize = 4;
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    let start = u32::MAX - 5;
    a.sender.skip_to_for_test(start);
    b.receiver.skip_to_for_test(start);
    for value in 0..40u64 {
        a.sender.try_send(&payload(value)).unwrap();
        assert_eq!(b.receiver.try_recv(), Ok(payload(value)));
        assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));
    }
}

#[test]
fn every_core_message_round_trips_through_a_channel() {
    let regions = [SharedRegion {
        id: RegionId(3),
        length: 4096,
    }];
    let table = RegionTable::new(&regions);
    let messages = [
        CoreMessage::Ping {
            sequence: 1,
            timestamp: u64::MAX,
        },
        CoreMessage::Pong {
            sequence: u64::MAX,
            timestamp: 0,
        },
        CoreMessage::Inline(InlineBytes::new(b"").unwrap()),
        CoreMessage::Inline(InlineBytes::new(b"hello, core 1").unwrap()),
        CoreMessage::Inline(InlineBytes::new(&[0xAB; INLINE_CAPACITY]).unwrap()),
        CoreMessage::Buffer {
            handle: BufferHandle::new(RegionId(3), 0, 4096),
            cookie: 7,
        },
        CoreMessage::Buffer {
            handle: BufferHandle::new(RegionId(3), 4000, 96),
            cookie: u32::MAX,
        },
        CoreMessage::Buffer {
            handle: BufferHandle::new(RegionId(3), 4096, 0),
            cookie: 0,
        },
    ];
    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for message in messages {
        a.sender.try_send_message(&message).unwrap();
        assert_eq!(
            b.receiver.try_recv_message::<CoreMessage>(&table),
            Ok(message)
        );
    }
}

#[test]
fn inline_bytes_refuses_more_than_a_slot() {
    assert_eq!(
        InlineBytes::new(&[0; INLINE_CAPACITY + 1]),
        Err(message::InlineTooLong {
            length: INLINE_CAPACITY + 1
        })
    );
    assert_eq!(InlineBytes::new(b"abc").unwrap().as_slice(), b"abc");
}

#[test]
fn buffer_handle_resolves_in_its_region() {
    let region_bytes: Vec<u8> = (0..=255).collect();
    let handle = BufferHandle::new(RegionId(0), 10, 4);
    assert_eq!(handle.slice(&region_bytes), Some(&[10, 11, 12, 13][..]));
    assert_eq!(handle.range(), 10..14);
    assert_eq!(
        BufferHandle::new(RegionId(0), 250, 10).slice(&region_bytes),
        None
    );
    assert_eq!(
        BufferHandle::new(RegionId(0), u64::MAX, 10).slice(&region_bytes),
        None
    );
}

/// Encodes a `Buffer` message by hand, for handles `BufferHandle::new` would also allow.
fn buffer_payload(region: u16, offset: u64, length: u32) -> Payload {
    let mut payload = [0; PAYLOAD_SIZE];
    CoreMessage::Buffer {
        handle: BufferHandle::new(RegionId(region), offset, length),
        cookie: 1,
    }
    .encode(&mut payload);
    payload
}

#[test]
fn malformed_slots_decode_to_errors_and_do_not_block_the_ring() {
    let regions = [SharedRegion {
        id: RegionId(1),
        length: 1000,
    }];
    let table = RegionTable::new(&regions);
    let mut cases: Vec<(Payload, DecodeError)> = Vec::new();
    cases.push(([0; PAYLOAD_SIZE], DecodeError::UnknownTag(0)));
    let mut unknown = [0; PAYLOAD_SIZE];
    unknown[0] = 200;
    cases.push((unknown, DecodeError::UnknownTag(200)));
    let mut ping_padding = [0; PAYLOAD_SIZE];
    CoreMessage::Ping {
        sequence: 1,
        timestamp: 2,
    }
    .encode(&mut ping_padding);
    ping_padding[40] = 1;
    cases.push((ping_padding, DecodeError::NonZeroPadding { offset: 40 }));
    let mut pong_padding = [0; PAYLOAD_SIZE];
    CoreMessage::Pong {
        sequence: 1,
        timestamp: 2,
    }
    .encode(&mut pong_padding);
    pong_padding[3] = 9;
    cases.push((pong_padding, DecodeError::NonZeroPadding { offset: 3 }));
    let mut too_long = [0; PAYLOAD_SIZE];
    too_long[0] = 3;
    too_long[1] = INLINE_CAPACITY as u8 + 1;
    cases.push((
        too_long,
        DecodeError::InlineTooLong {
            length: INLINE_CAPACITY as u8 + 1,
        },
    ));
    let mut inline_tail = [0; PAYLOAD_SIZE];
    CoreMessage::Inline(InlineBytes::new(b"abc").unwrap()).encode(&mut inline_tail);
    inline_tail[10] = 1;
    cases.push((inline_tail, DecodeError::NonZeroPadding { offset: 10 }));
    cases.push((
        buffer_payload(2, 0, 1),
        DecodeError::UnknownRegion(RegionId(2)),
    ));
    cases.push((
        buffer_payload(1, 990, 11),
        DecodeError::BufferOutOfBounds {
            region: RegionId(1),
            offset: 990,
            length: 11,
        },
    ));
    cases.push((
        buffer_payload(1, u64::MAX - 2, 5),
        DecodeError::BufferOutOfBounds {
            region: RegionId(1),
            offset: u64::MAX - 2,
            length: 5,
        },
    ));
    let mut buffer_padding = buffer_payload(1, 0, 1);
    buffer_padding[55] = 1;
    cases.push((buffer_padding, DecodeError::NonZeroPadding { offset: 55 }));

    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for (bytes, error) in cases {
        assert_eq!(CoreMessage::decode(&bytes, &table), Err(error));
        a.sender.try_send(&bytes).unwrap();
        assert_eq!(
            b.receiver.try_recv_message::<CoreMessage>(&table),
            Err(RecvError::Malformed(error))
        );
        // The malformed slot was consumed: the next message gets through.
        let good = CoreMessage::Ping {
            sequence: 5,
            timestamp: 6,
        };
        a.sender.try_send_message(&good).unwrap();
        assert_eq!(b.receiver.try_recv_message::<CoreMessage>(&table), Ok(good));
    }
    // Without regions, every handle is refused.
    assert_eq!(
        CoreMessage::decode(&buffer_payload(1, 0, 1), &RegionTable::EMPTY),
        Err(DecodeError::UnknownRegion(RegionId(1)))
    );
}

#[test]
fn restart_is_reported_once_to_each_surviving_endpoint() {
    const SLOTS: usize = 4;
    let region = ChannelRegion::<SLOTS>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    // Traffic in generation 1, some of it left unread on both rings.
    a.sender.try_send(&payload(1)).unwrap();
    a.sender.try_send(&payload(2)).unwrap();
    assert_eq!(b.receiver.try_recv(), Ok(payload(1)));
    b.sender.try_send(&payload(10)).unwrap();
    b.sender.try_send(&payload(11)).unwrap();
    assert_eq!(a.receiver.try_recv(), Ok(payload(10)));

    // B restarts: its old endpoints are gone with its old incarnation.
    let Endpoint {
        sender: _,
        receiver: _,
    } = b;
    // SAFETY: B's previous endpoints were consumed above, on this thread; A does not restart.
    let mut b = unsafe { region.restart(Side::B) };
    assert_eq!(region.generation(), 2);
    assert_eq!(b.sender.generation(), 2);
    // The new B must not write A's incoming ring before A acknowledged the new generation.
    assert_eq!(b.sender.try_send(&payload(20)), Err(SendError::Full));
    // The new B does not see A's unread generation-1 message.
    assert_eq!(b.receiver.try_recv(), Err(RecvError::Empty));

    // A still gets B's last generation-1 message, then the restart, once.
    assert_eq!(a.receiver.try_recv(), Ok(payload(11)));
    assert_eq!(
        a.receiver.try_recv(),
        Err(RecvError::PeerRestarted { generation: 2 })
    );
    assert_eq!(a.receiver.try_recv(), Err(RecvError::Empty));
    assert_eq!(a.receiver.generation(), 2);
    // A's sender learns it on its next send, which is not performed; the retry is.
    assert_eq!(
        a.sender.try_send(&payload(3)),
        Err(SendError::PeerRestarted { generation: 2 })
    );
    a.sender.try_send(&payload(3)).unwrap();
    assert_eq!(b.receiver.try_recv(), Ok(payload(3)));

    // A acknowledged, so the new B has credits now; full traffic in generation 2.
    for value in 20..20 + SLOTS as u64 {
        b.sender.try_send(&payload(value)).unwrap();
    }
    for value in 20..20 + SLOTS as u64 {
        assert_eq!(a.receiver.try_recv(), Ok(payload(value)));
    }
    for round in 0..3 * SLOTS as u64 {
        a.sender.try_send(&payload(round)).unwrap();
        assert_eq!(b.receiver.try_recv(), Ok(payload(round)));
    }
}

#[test]
fn sleeping_receiver_is_notified_once() {
    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    let mut notifier = CountingNotifier::default();

    // Nobody sleeps: publishing does not notify.
    a.sender.try_send(&payload(1)).unwrap();
    assert!(!a.sender.notify_if_sleeping(&mut notifier));
    // A message is pending: the receiver must not halt.
    assert_eq!(b.receiver.prepare_to_sleep(), SleepDecision::MessagePending);
    assert_eq!(b.receiver.try_recv(), Ok(payload(1)));

    assert_eq!(b.receiver.prepare_to_sleep(), SleepDecision::MayHalt);
    a.sender.try_send(&payload(2)).unwrap();
    assert!(a.sender.notify_if_sleeping(&mut notifier));
    a.sender.try_send(&payload(3)).unwrap();
    assert!(
        !a.sender.notify_if_sleeping(&mut notifier),
        "one notification per sleep"
    );
    assert_eq!(notifier.calls, 1);
    b.receiver.woke();
    assert_eq!(b.receiver.try_recv(), Ok(payload(2)));
    assert_eq!(b.receiver.try_recv(), Ok(payload(3)));
}

#[test]
fn prepare_to_sleep_returns_held_credits() {
    let region = ChannelRegion::<8>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let mut b = region.claim(Side::B).unwrap();
    for value in 0..8 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    for _ in 0..8 {
        b.receiver.try_recv().unwrap();
    }
    // All 8 consumed; batches of 4 returned all of them already. Take 3 more (below a batch).
    for value in 8..11 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    for _ in 0..3 {
        b.receiver.try_recv().unwrap();
    }
    assert_eq!(b.receiver.prepare_to_sleep(), SleepDecision::MayHalt);
    for value in 11..19 {
        a.sender.try_send(&payload(value)).unwrap();
    }
    assert_eq!(a.sender.try_send(&payload(99)), Err(SendError::Full));
}

#[test]
fn restart_cancels_sleep() {
    let region = ChannelRegion::<4>::new_boxed();
    let mut a = region.claim(Side::A).unwrap();
    let Endpoint {
        sender: _,
        receiver: _,
    } = region.claim(Side::B).unwrap();
    // SAFETY: B's previous endpoints were consumed above; A does not restart.
    let _b = unsafe { region.restart(Side::B) };
    assert_eq!(a.receiver.prepare_to_sleep(), SleepDecision::MessagePending);
    assert_eq!(
        a.receiver.try_recv(),
        Err(RecvError::PeerRestarted { generation: 2 })
    );
}

#[test]
fn endpoints_work_from_other_threads() {
    let region = ChannelRegion::<8>::new_boxed();
    let a = region.claim(Side::A).unwrap();
    let b = region.claim(Side::B).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let Endpoint {
                mut sender,
                mut receiver,
            } = b;
            // Echo 1000 messages back.
            let mut echoed = 0;
            while echoed < 1000 {
                if let Ok(message) = receiver.try_recv() {
                    while sender.try_send(&message) == Err(SendError::Full) {
                        std::thread::yield_now();
                    }
                    echoed += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let Endpoint {
            mut sender,
            mut receiver,
        } = a;
        for value in 0..1000 {
            while sender.try_send(&payload(value)) == Err(SendError::Full) {
                std::thread::yield_now();
            }
            loop {
                match receiver.try_recv() {
                    Ok(echo) => {
                        assert_eq!(echo, payload(value));
                        break;
                    }
                    Err(RecvError::Empty) => std::thread::yield_now(),
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        }
    });
}

/// Every byte of every shape: a non-zero byte where the format requires zero is reported at its
/// exact offset (the first one, with two set), and a non-zero byte inside a field is never taken
/// for padding.
#[test]
fn every_padding_byte_is_checked_and_no_field_byte_is() {
    let regions = [SharedRegion {
        id: RegionId(1),
        length: 1 << 40,
    }];
    let table = RegionTable::new(&regions);
    let mut shapes: Vec<(Payload, Vec<usize>)> = Vec::new();
    let mut ping = [0; PAYLOAD_SIZE];
    CoreMessage::Ping {
        sequence: 0,
        timestamp: 0,
    }
    .encode(&mut ping);
    shapes.push((ping, (8..24).collect()));
    let mut pong = [0; PAYLOAD_SIZE];
    CoreMessage::Pong {
        sequence: 0,
        timestamp: 0,
    }
    .encode(&mut pong);
    shapes.push((pong, (8..24).collect()));
    for length in [0, 1, 7, 8, 13, INLINE_CAPACITY - 1, INLINE_CAPACITY] {
        let mut inline = [0; PAYLOAD_SIZE];
        CoreMessage::Inline(InlineBytes::new(&vec![0; length]).unwrap()).encode(&mut inline);
        shapes.push((inline, (1..2 + length).collect()));
    }
    // Handle at 8..22 (region, offset, length), cookie at 24..28.
    let buffer = buffer_payload(1, 0, 0);
    shapes.push((buffer, (8..22).chain(24..28).collect()));
    for (good, fields) in shapes {
        for offset in 1..PAYLOAD_SIZE {
            let mut bytes = good;
            bytes[offset] = 0x80;
            let result = CoreMessage::decode(&bytes, &table);
            if fields.contains(&offset) {
                assert!(
                    !matches!(result, Err(DecodeError::NonZeroPadding { .. })),
                    "field byte {offset} of {good:?}: {result:?}"
                );
            } else {
                assert_eq!(
                    result,
                    Err(DecodeError::NonZeroPadding {
                        offset: offset as u8
                    }),
                    "padding byte {offset} of {good:?}"
                );
                if offset + 1 < PAYLOAD_SIZE && !fields.contains(&(offset + 1)) {
                    bytes[offset + 1] = 1;
                    assert_eq!(
                        CoreMessage::decode(&bytes, &table),
                        Err(DecodeError::NonZeroPadding {
                            offset: offset as u8
                        })
                    );
                }
            }
        }
    }
}
