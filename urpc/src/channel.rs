//! The URPC channel: two one-way rings of 64-byte cache-line slots in one shared memory region.
//!
//! # Region layout
//!
//! A [`ChannelRegion`] is `#[repr(C)]` and made only of whole cache lines (64 bytes each):
//!
//! ```text
//! line 0            control   magic, slot count, generation, claims      written at init/restart
//! ring 0 (A -> B)   credit    (generation << 32) | consumed count        written by B (receiver)
//!                   sleep     receiver-is-halting flag                    written by B; cleared by A
//!                   slot 0 .. slot N-1                                    written by A (sender)
//! ring 1 (B -> A)   credit, sleep, slots: the same with the roles swapped
//! ```
//!
//! # Slot layout
//!
//! ```text
//! bytes 0..8    header: u64 = (generation << 32) | sequence     stored last, with Release
//! bytes 8..64   payload: 56 bytes                               plain stores, before the header
//! ```
//!
//! `sequence` is the sender's count of messages published in this generation (wrapping `u32`);
//! message number `s` goes to slot `s mod N`. The receiver keeps its own count `r` and
//! knows which header value makes slot `r mod N` fresh: exactly `(generation << 32) | r`. A slot
//! holds either zero (never written since init; a generation is never 0), the previous lap's
//! stamp `r - N`, or a stamp of an older generation, all different from the expected value. So
//! the receiver tells a fresh message from a stale one by comparing one word it has to load anyway,
//! and never reads an index the sender writes.
//!
//! # Who owns a slot when
//!
//! 1. Slot `s mod N` belongs to the sender while `s - consumed < N`, where `consumed` is the last
//!    count the receiver published on the credit line. The sender writes the payload with plain
//!    stores, then publishes the message with one `Release` store of the header.
//! 2. From that store on, the slot belongs to the receiver. Its `Acquire` load of the header
//!    sees the stamp, it reads the payload (`try_recv` and `try_recv_message` copy it out, so a
//!    decoder never sees bytes a misbehaving peer changes; `try_recv_with` and `try_recv_batch`
//!    hand the bytes in the slot to a closure), and only then increments its count.
//! 3. The slot returns to the sender when the receiver publishes a count beyond it on the credit
//!    line (`Release`), and the sender observes it (`Acquire`). The receiver publishes every `N/2`
//!    messages (and before halting), so the sender reads the credit line at most once per `N/2`
//!    messages it sends, only when it runs out of credits it already knows of.
//!
//! # Which lines each side writes, and why
//!
//! In steady state the sender writes only slot lines, and the receiver writes only its credit line,
//! once every `N/2` messages. Per message, exactly one line moves from the sender's cache to the
//! receiver's: the slot itself, which must move anyway because it carries the data. There is no
//! shared head or tail index that both cores write (or that one writes and the other polls) on
//! every message. The sender's per-message read of the control line (generation) hits its own
//! cache: that line is written only at claim and restart. The sleep line is read only by
//! `notify_if_sleeping`, never by a send.
//!
//! # Generations: peer restart
//!
//! The control line holds the channel's generation (never 0). Every header and every credit word
//! carries the generation it was written in, and an endpoint accepts only words of its own
//! generation. A core that restarts calls [`ChannelRegion::restart`], which resets the credit and
//! sleep lines it owns as a receiver and then publishes generation + 1 (`Release`). The surviving
//! peer's endpoints notice (the sender on its next send, the receiver when its next slot is not
//! fresh, so messages published before the restart are still delivered), return
//! [`SendError::PeerRestarted`] / [`RecvError::PeerRestarted`] once, and carry on in the new
//! generation from sequence 0. A restarted sender starts with no credits: it may write slots only
//! after the survivor's receiver acknowledged the new generation on its credit line, i.e. after
//! it stopped reading the old generation's slots.
//!
//! # Sleeping receivers and notification
//!
//! A receiver that wants to halt calls [`Receiver::prepare_to_sleep`]: it stores `1` on its sleep
//! line, issues a `SeqCst` fence, and loads its next slot's header again. A sender that published
//! messages calls [`Sender::notify_if_sleeping`]: a `SeqCst` fence, then it loads the sleep flag,
//! and if set clears it and calls [`Notifier::notify`] (an IPI in the kernel). This is the
//! store-buffering (Dekker) pattern: each side stores, then loads what the other stored, and
//! Release/Acquire does not order a store before a later load, on x86 or in the language model.
//! The two fences are totally ordered: if the receiver's fence comes first, the sender's load sees
//! the flag and notifies; if the sender's comes first, the receiver's load sees the message and it
//! does not halt. Either way no wakeup is lost. The fence costs an `mfence`, which is why
//! `try_send` does not notify by itself: call `notify_if_sleeping` once per batch of sends, and
//! before waiting on `Full`.

use core::mem::{size_of, MaybeUninit};
use core::ptr::{self, addr_of_mut};

use crate::message::{Message, RegionTable};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::{RecvError, SendError};

/// Size of one slot: one x86_64 cache line.
pub const SLOT_SIZE: usize = 64;
/// Size of the header word at the start of every slot.
pub const HEADER_SIZE: usize = 8;
/// Bytes of message in one slot.
pub const PAYLOAD_SIZE: usize = SLOT_SIZE - HEADER_SIZE;
/// Slots per ring of [`ChannelRegion`] unless a count is named.
pub const DEFAULT_SLOTS: usize = 64;

/// The bytes of one message, as carried in a slot.
pub type Payload = [u8; PAYLOAD_SIZE];

/// Written in the control line by initialisation; checked by [`ChannelRegion::attach_raw`].
const MAGIC: u32 = 0x5552_5043; // "URPC"

/// Bit in the control line's `claims` word for each side.
const fn claim_bit(side: Side) -> u32 {
    match side {
        Side::A => 1,
        Side::B => 2,
    }
}

/// The header (or credit word) value for `count` in `generation`.
#[inline(always)]
const fn stamp(generation: u32, count: u32) -> u64 {
    ((generation as u64) << 32) | count as u64
}

/// The next generation after `generation`, skipping 0 (which marks never-written slots).
const fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

/// One message slot: a header word and the payload, in exactly one cache line.
#[repr(C, align(64))]
struct Slot {
    /// `(generation << 32) | sequence`, stored last by the sender with `Release`.
    header: AtomicU64,
    /// The message bytes; owned by whichever side the protocol (module doc) says.
    payload: UnsafeCell<Payload>,
}

/// The channel-wide line: written at initialisation, when an endpoint is claimed, and on restart.
#[repr(C, align(64))]
struct ControlLine {
    /// [`MAGIC`] once initialised.
    magic: AtomicU32,
    /// Slots per ring, so a peer built with another count is refused on attach.
    slots: AtomicU32,
    /// The current generation, never 0.
    generation: AtomicU32,
    /// Which sides' endpoints were handed out (bit per [`Side`]).
    claims: AtomicU32,
}

/// The receiver's flow-control line for one ring.
#[repr(C, align(64))]
struct CreditLine {
    /// `(generation << 32) | messages consumed`, stored by the receiver with `Release`.
    consumed: AtomicU64,
}

/// The receiver's "I am about to halt" flag for one ring.
#[repr(C, align(64))]
struct SleepLine {
    /// 1 while the receiver may be halted waiting for a notification.
    sleeping: AtomicU32,
}

/// One direction of a channel.
#[repr(C)]
struct Ring<const SLOTS: usize> {
    credit: CreditLine,
    sleep: SleepLine,
    slots: [Slot; SLOTS],
}

// SAFETY: every field of a ring is an atomic except the slot payloads (so `ChannelRegion`,
// and the endpoints' references to rings, are `Sync`/`Send`).
// A payload is only accessed through the unique `Sender` (writes) and unique `Receiver` (reads)
// of its ring (uniqueness: `claim` hands each side out once; `restart`'s contract covers the
// rest), and only while the slot-ownership protocol in the module documentation gives that
// endpoint the slot, which the Release/Acquire pairs on the header and credit words enforce.
unsafe impl<const SLOTS: usize> Sync for Ring<SLOTS> {}

// The layout the protocol relies on. loom's atomics are larger, so only for the real build.
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(core::mem::align_of::<Slot>() == SLOT_SIZE);
    assert!(core::mem::offset_of!(Slot, payload) == HEADER_SIZE);
    assert!(size_of::<ControlLine>() == SLOT_SIZE);
    assert!(size_of::<CreditLine>() == SLOT_SIZE);
    assert!(size_of::<SleepLine>() == SLOT_SIZE);
    assert!(size_of::<Ring<4>>() == 6 * SLOT_SIZE);
    assert!(size_of::<ChannelRegion<4>>() == 13 * SLOT_SIZE);
};

/// The two ends of a channel. Side A sends on ring 0 and receives on ring 1; side B the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The end that sends on ring 0 (by convention, the core that initialised the region).
    A,
    /// The end that sends on ring 1.
    B,
}

/// Why a region cannot be used as a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The base address is not aligned to [`ChannelRegion::ALIGN`].
    Misaligned {
        /// The address given.
        address: usize,
    },
    /// The region is smaller than [`ChannelRegion::SIZE`].
    TooSmall {
        /// Bytes given.
        length: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The region does not hold an initialised channel (no magic number).
    NotInitialised,
    /// The region holds a channel with another number of slots per ring.
    SlotCountMismatch {
        /// Slots per ring in the region.
        found: u32,
        /// Slots per ring this code was built for.
        expected: u32,
    },
}

/// Why an endpoint could not be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// This side's endpoints were already claimed (they are unique: one sender per ring).
    AlreadyClaimed(Side),
}

/// What [`Receiver::prepare_to_sleep`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum SleepDecision {
    /// The flag is published and the ring was empty after it: the caller may halt; a sender
    /// that publishes from now on will notify. Call [`Receiver::woke`] after waking up.
    MayHalt,
    /// A message (or a restart) arrived: the flag was withdrawn and the caller must not halt.
    MessagePending,
}

/// How a sender wakes a receiver that halted: the kernel sends an IPI; host tests count calls.
pub trait Notifier {
    /// Wakes the receiving core. Called at most once per [`Receiver::prepare_to_sleep`] that
    /// returned [`SleepDecision::MayHalt`], after the message is published.
    fn notify(&mut self);
}

/// Both endpoints one side owns: a sender on its outgoing ring, a receiver on its incoming ring.
pub struct Endpoint<'a, const SLOTS: usize = DEFAULT_SLOTS> {
    /// Sends to the other side.
    pub sender: Sender<'a, SLOTS>,
    /// Receives from the other side.
    pub receiver: Receiver<'a, SLOTS>,
}

/// A channel: the control line and two rings of `SLOTS` cache-line slots (a power of two, ≥ 2).
///
/// It lives in memory shared by two cores; see the module documentation for the protocol.
/// Obtain one with [`ChannelRegion::init`], [`ChannelRegion::init_raw`] (the kernel's way, over a
/// region of [`ChannelRegion::SIZE`] bytes), or `ChannelRegion::new_boxed` on the host (feature
/// `std`).
#[repr(C)]
pub struct ChannelRegion<const SLOTS: usize = DEFAULT_SLOTS> {
    control: ControlLine,
    rings: [Ring<SLOTS>; 2],
}

impl<const SLOTS: usize> ChannelRegion<SLOTS> {
    /// Bytes a caller must reserve for one channel.
    pub const SIZE: usize = size_of::<Self>();
    /// Alignment the region must have (one cache line).
    pub const ALIGN: usize = SLOT_SIZE;
    /// Post-monomorphisation check of `SLOTS`.
    const VALID_SLOTS: () = assert!(
        SLOTS.is_power_of_two() && SLOTS >= 2 && SLOTS <= (1 << 30),
        "SLOTS must be a power of two between 2 and 2^30"
    );

    /// Initialises a channel in `storage` (generation 1, nothing claimed) and returns it.
    ///
    /// With `&'static mut` storage this gives the `&'static` region the kernel hands to both
    /// cores. The peer must learn of the region only after this returns (the boot handshake that
    /// passes the pointer provides the ordering).
    pub fn init(storage: &mut MaybeUninit<Self>) -> &Self {
        let this = storage.as_mut_ptr();
        // SAFETY: `this` comes from a live `&mut MaybeUninit<Self>`: valid for writes of `Self`,
        // aligned, and not accessed by anyone else for the borrow's duration (condition 1 and 2
        // of `write_initial`).
        unsafe { Self::write_initial(this) };
        // SAFETY: `write_initial` initialised every field.
        unsafe { storage.assume_init_ref() }
    }

    /// Initialises a channel in raw shared memory and returns a reference to it.
    ///
    /// Fails without writing if `base` is not aligned to [`Self::ALIGN`] or `length` is less
    /// than [`Self::SIZE`].
    ///
    /// # Safety
    ///
    /// 1. `base .. base + length` is valid for reads and writes for `'a`.
    /// 2. Nothing else accesses that memory while this runs, and afterwards it is accessed only
    ///    through the returned reference, or ones from [`Self::attach_raw`] on the same memory.
    /// 3. The peer attaches only after this returned (a happens-before edge, e.g. the boot
    ///    handshake that tells it the address).
    pub unsafe fn init_raw<'a>(base: *mut u8, length: usize) -> Result<&'a Self, LayoutError> {
        Self::check_bounds(base as usize, length)?;
        let this = base.cast::<Self>();
        // SAFETY: `check_bounds` checked alignment and size; the caller guarantees validity and
        // exclusive access (conditions 1 and 2).
        unsafe { Self::write_initial(this) };
        // SAFETY: initialised just above; valid and shared only through `&Self` for 'a
        // (conditions 1 and 2).
        Ok(unsafe { &*this })
    }

    /// Returns the channel another core initialised with [`Self::init_raw`] in this memory.
    ///
    /// Checks alignment, size, the magic number and the slot count.
    ///
    /// # Safety
    ///
    /// 1. `base .. base + length` is valid for reads and writes for `'a`.
    /// 2. [`Self::init_raw`] on the same memory (possibly at another virtual address) returned
    ///    before this call (happens-before), and the memory is used only through this API.
    pub unsafe fn attach_raw<'a>(base: *const u8, length: usize) -> Result<&'a Self, LayoutError> {
        Self::check_bounds(base as usize, length)?;
        // SAFETY: aligned and large enough (checked), valid and initialised (conditions 1, 2).
        let this = unsafe { &*base.cast::<Self>() };
        // Relaxed: the caller's happens-before edge (condition 2) already orders init before us.
        if this.control.magic.load(Ordering::Relaxed) != MAGIC {
            return Err(LayoutError::NotInitialised);
        }
        let found = this.control.slots.load(Ordering::Relaxed);
        if found != SLOTS as u32 {
            return Err(LayoutError::SlotCountMismatch {
                found,
                expected: SLOTS as u32,
            });
        }
        Ok(this)
    }

    /// Allocates and initialises a channel on the heap (host tests and benchmarks).
    #[cfg(any(test, feature = "std"))]
    pub fn new_boxed() -> std::boxed::Box<Self> {
        let mut storage = std::boxed::Box::<Self>::new_uninit();
        // SAFETY: a fresh, exclusively owned, correctly aligned allocation of `Self`
        // (conditions 1 and 2 of `write_initial`).
        unsafe { Self::write_initial(storage.as_mut_ptr()) };
        // SAFETY: `write_initial` initialised every field.
        unsafe { storage.assume_init() }
    }

    /// The current generation (starts at 1; incremented by each [`Self::restart`]).
    pub fn generation(&self) -> u32 {
        // Acquire: pairs with the Release store in `restart`.
        self.control.generation.load(Ordering::Acquire)
    }

    /// Hands out `side`'s sender and receiver. Each side can be claimed once per region.
    pub fn claim(&self, side: Side) -> Result<Endpoint<'_, SLOTS>, ClaimError> {
        // AcqRel: the claim bit is a lock taken once; pairs with a concurrent claim's fetch_or.
        let previous = self
            .control
            .claims
            .fetch_or(claim_bit(side), Ordering::AcqRel);
        if previous & claim_bit(side) != 0 {
            return Err(ClaimError::AlreadyClaimed(side));
        }
        Ok(self.endpoint(side, self.generation()))
    }

    /// Re-initialises the channel for a core that restarted and returns `side`'s new endpoints.
    ///
    /// Publishes the next generation: the peer's endpoints report `PeerRestarted` once and then
    /// continue with the new endpoints. The new sender gets credits when the peer's receiver has
    /// acknowledged the new generation (it does so on its first receive after the restart).
    ///
    /// # Safety
    ///
    /// 1. No endpoint of `side` from an earlier claim or restart is used again, and all accesses
    ///    it made happen-before this call (the old incarnation of the core is gone).
    /// 2. The peer is not itself calling `restart` concurrently.
    pub unsafe fn restart(&self, side: Side) -> Endpoint<'_, SLOTS> {
        let incoming = self.ring(side, false);
        // Acquire: pairs with the Release store of an earlier `restart` (or init's happens-before).
        let old = self.control.generation.load(Ordering::Acquire);
        let new = next_generation(old);
        // This side is the receiver of `incoming`; by condition 1 nobody else writes these lines.
        // Grant the (surviving) peer's sender a full ring in the new generation. Relaxed: ordered
        // before the peer's reads by the Release store of the generation below.
        incoming
            .credit
            .consumed
            .store(stamp(new, 0), Ordering::Relaxed);
        incoming.sleep.sleeping.store(0, Ordering::Relaxed);
        // Nothing to reset on the outgoing ring: the peer's receiver ignores slots stamped with an
        // older generation, and this side writes slots only once the peer grants credits.
        // Release: pairs with the peer's Acquire loads of the generation (Sender::check_generation,
        // Receiver::try_recv), publishing the credit line reset above.
        self.control.generation.store(new, Ordering::Release);
        self.control
            .claims
            .fetch_or(claim_bit(side), Ordering::AcqRel);
        self.endpoint(side, new)
    }

    /// Builds `side`'s endpoints in `generation`.
    fn endpoint(&self, side: Side, generation: u32) -> Endpoint<'_, SLOTS> {
        let mut sender = Sender {
            control: &self.control,
            ring: self.ring(side, true),
            generation,
            count: 0,
            limit: 0,
        };
        sender.refresh_credits();
        Endpoint {
            sender,
            receiver: Receiver {
                control: &self.control,
                ring: self.ring(side, false),
                generation,
                count: 0,
                credited: 0,
            },
        }
    }

    /// `side`'s outgoing ring if `outgoing`, else its incoming ring.
    fn ring(&self, side: Side, outgoing: bool) -> &Ring<SLOTS> {
        match (side, outgoing) {
            (Side::A, true) | (Side::B, false) => &self.rings[0],
            (Side::A, false) | (Side::B, true) => &self.rings[1],
        }
    }

    /// Checks that `address .. address + length` can hold a region.
    fn check_bounds(address: usize, length: usize) -> Result<(), LayoutError> {
        if !address.is_multiple_of(Self::ALIGN) {
            return Err(LayoutError::Misaligned { address });
        }
        if length < Self::SIZE {
            return Err(LayoutError::TooSmall {
                length,
                needed: Self::SIZE,
            });
        }
        Ok(())
    }

    /// Writes the initial state (generation 1, zeroed slots, full credits) into `this`.
    ///
    /// # Safety
    ///
    /// 1. `this` is valid for writes of `Self` and aligned.
    /// 2. Nothing else accesses `*this` while this runs.
    unsafe fn write_initial(this: *mut Self) {
        let () = Self::VALID_SLOTS;
        let generation = 1;
        // SAFETY: (all writes below) `this` is valid and aligned (condition 1) and exclusively
        // ours (condition 2); `addr_of_mut!` projects to fields without creating references to
        // the uninitialised memory, and `ptr::write` does not read or drop the old contents.
        unsafe {
            let control = addr_of_mut!((*this).control);
            ptr::write(addr_of_mut!((*control).magic), AtomicU32::new(MAGIC));
            ptr::write(addr_of_mut!((*control).slots), AtomicU32::new(SLOTS as u32));
            ptr::write(
                addr_of_mut!((*control).generation),
                AtomicU32::new(generation),
            );
            ptr::write(addr_of_mut!((*control).claims), AtomicU32::new(0));
            for ring_index in 0..2 {
                let ring = addr_of_mut!((*this).rings[ring_index]);
                let credit = AtomicU64::new(stamp(generation, 0));
                ptr::write(addr_of_mut!((*ring).credit.consumed), credit);
                ptr::write(addr_of_mut!((*ring).sleep.sleeping), AtomicU32::new(0));
                for slot_index in 0..SLOTS {
                    let slot = addr_of_mut!((*ring).slots[slot_index]);
                    ptr::write(addr_of_mut!((*slot).header), AtomicU64::new(0));
                    ptr::write(
                        addr_of_mut!((*slot).payload),
                        UnsafeCell::new([0; PAYLOAD_SIZE]),
                    );
                }
            }
        }
    }
}

/// The sending end of one ring. Unique per ring; `Send`, so it can move to the core that uses it.
pub struct Sender<'a, const SLOTS: usize = DEFAULT_SLOTS> {
    control: &'a ControlLine,
    ring: &'a Ring<SLOTS>,
    /// The generation this sender writes in.
    generation: u32,
    /// Messages published in this generation (wrapping); the next goes to slot `count % SLOTS`.
    count: u32,
    /// `count` may advance up to (excluding) this: receiver's published consumed count + SLOTS.
    limit: u32,
}

impl<'a, const SLOTS: usize> Sender<'a, SLOTS> {
    /// Publishes one raw payload, or fails with `Full` (no credit) or `PeerRestarted`.
    ///
    /// Does not notify a sleeping receiver: call [`Self::notify_if_sleeping`] after a batch.
    #[inline]
    pub fn try_send(&mut self, payload: &Payload) -> Result<(), SendError> {
        self.try_send_with(|slot| *slot = *payload)
    }

    /// Encodes `message` (into a zeroed payload) and publishes it, as [`Self::try_send`].
    #[inline]
    pub fn try_send_message<M: Message>(&mut self, message: &M) -> Result<(), SendError> {
        let mut payload = [0; PAYLOAD_SIZE];
        message.encode(&mut payload);
        self.try_send(&payload)
    }

    /// Publishes a message that `fill` writes directly into the slot's payload.
    ///
    /// `fill` sees the bytes of the message that used this slot one lap earlier; it must write
    /// every byte the receiver will look at. `fill` is not called if the send fails.
    #[inline]
    pub fn try_send_with(&mut self, fill: impl FnOnce(&mut Payload)) -> Result<(), SendError> {
        self.check_generation()?;
        if self.count == self.limit && !self.refresh_credits() {
            return Err(SendError::Full);
        }
        let slot = &self.ring.slots[self.count as usize & (SLOTS - 1)];
        // SAFETY: `count - consumed < SLOTS` (checked above against `limit`), so by the
        // protocol this slot belongs to the sender: the receiver's reads of it happened-before
        // the credit store we acquired in `refresh_credits`, and it reads it again only after the
        // header store below. The `Sender` is unique for this ring, so no other writer exists.
        slot.payload
            .with_mut(|payload| fill(unsafe { &mut *payload }));
        // Release: pairs with the receiver's Acquire load of this header in `try_recv`, making
        // the payload writes above visible to it. This store hands the slot to the receiver.
        slot.header
            .store(stamp(self.generation, self.count), Ordering::Release);
        self.count = self.count.wrapping_add(1);
        Ok(())
    }

    /// Publishes up to `max` messages, each written by `fill` directly into its slot (as in
    /// [`Self::try_send_with`]), as many as the credits allow; returns how many (at least 1).
    ///
    /// Fails with `Full` if not even one slot is free (then `fill` is not called) and with
    /// `PeerRestarted` as [`Self::try_send`] does; `max` = 0 sends nothing and returns `Ok(0)`.
    /// The credit line is read at most once per call, and only when the credits this sender
    /// knows of ran out. Does not notify: call [`Self::notify_if_sleeping`] after it.
    #[inline]
    pub fn try_send_batch(
        &mut self,
        max: usize,
        mut fill: impl FnMut(&mut Payload),
    ) -> Result<usize, SendError> {
        self.check_generation()?;
        if max == 0 {
            return Ok(0);
        }
        if self.count == self.limit && !self.refresh_credits() {
            return Err(SendError::Full);
        }
        let batch = (self.limit.wrapping_sub(self.count) as usize).min(max);
        let mut count = self.count;
        for _ in 0..batch {
            let slot = &self.ring.slots[count as usize & (SLOTS - 1)];
            // SAFETY: `count - consumed < SLOTS` for every count of this batch (`batch` is at
            // most `limit - self.count`), so, as in `try_send_with`, the slot belongs to the
            // sender until the header store below; the `Sender` is the ring's only writer.
            slot.payload
                .with_mut(|payload| fill(unsafe { &mut *payload }));
            // Release: pairs with the receiver's Acquire load of this header, as in
            // `try_send_with`; hands this slot to the receiver.
            slot.header
                .store(stamp(self.generation, count), Ordering::Release);
            count = count.wrapping_add(1);
        }
        self.count = count;
        Ok(batch)
    }

    /// Wakes the receiver if it announced it is halting: call after publishing a batch, and
    /// before waiting on [`SendError::Full`] (a halted receiver returns no credits).
    ///
    /// Returns whether `notifier` was called. See the module documentation for the fences.
    #[inline]
    pub fn notify_if_sleeping<N: Notifier + ?Sized>(&mut self, notifier: &mut N) -> bool {
        // SeqCst fence: pairs with the SeqCst fence in `Receiver::prepare_to_sleep`. It orders
        // our earlier header stores before the flag load below (store -> load), which no
        // Release/Acquire pair can do; see "Sleeping receivers" in the module documentation.
        fence(Ordering::SeqCst);
        let flag = &self.ring.sleep.sleeping;
        // Relaxed: ordering comes from the fences; the swap makes sure one IPI per sleep.
        if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0 {
            notifier.notify();
            return true;
        }
        false
    }

    /// Slots this sender may fill before it must read the receiver's credit line again.
    pub fn known_credits(&self) -> u32 {
        self.limit.wrapping_sub(self.count)
    }

    /// The generation this sender is in.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Moves the sequence to `count` (with a full ring of credits), to test `u32` wrap-around.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn skip_to_for_test(&mut self, count: u32) {
        self.count = count;
        self.limit = count.wrapping_add(SLOTS as u32);
    }

    /// Detects a peer restart: a changed generation on the control line.
    #[inline(always)]
    fn check_generation(&mut self) -> Result<(), SendError> {
        // Acquire: pairs with the Release store in `ChannelRegion::restart`, so the restarted
        // receiver's reset of its credit line is visible to `refresh_credits` below.
        let current = self.control.generation.load(Ordering::Acquire);
        if current == self.generation {
            return Ok(());
        }
        self.adopt_generation(current);
        Err(SendError::PeerRestarted {
            generation: current,
        })
    }

    /// Restarts this sender's sequence in `generation`.
    #[cold]
    fn adopt_generation(&mut self, generation: u32) {
        self.generation = generation;
        self.count = 0;
        self.limit = 0;
        self.refresh_credits();
    }

    /// Reads the receiver's credit line; returns whether a slot is free now.
    #[inline(never)]
    fn refresh_credits(&mut self) -> bool {
        // Acquire: pairs with the receiver's Release store in `Receiver::publish_credits` (or in
        // `restart`), so its reads of the returned slots happen-before our overwrites.
        let word = self.ring.credit.consumed.load(Ordering::Acquire);
        if (word >> 32) as u32 == self.generation {
            self.limit = (word as u32).wrapping_add(SLOTS as u32);
        }
        self.count != self.limit
    }
}

/// The receiving end of one ring. Unique per ring; `Send`, so it can move to the core that uses it.
pub struct Receiver<'a, const SLOTS: usize = DEFAULT_SLOTS> {
    control: &'a ControlLine,
    ring: &'a Ring<SLOTS>,
    /// The generation this receiver accepts.
    generation: u32,
    /// Messages consumed in this generation (wrapping); the next is in slot `count % SLOTS`.
    count: u32,
    /// The count last published on the credit line.
    credited: u32,
}

impl<'a, const SLOTS: usize> Receiver<'a, SLOTS> {
    /// Credits are returned once this many slots were consumed.
    const CREDIT_BATCH: u32 = (SLOTS / 2) as u32;

    /// Takes the next message's raw payload, or fails with `Empty` or `PeerRestarted`.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Payload, RecvError> {
        self.try_recv_with(|payload| *payload)
    }

    /// Runs `read` on the next message's payload where it lies in the slot (no copy), then
    /// consumes the message; or fails with `Empty` or `PeerRestarted` without calling `read`.
    #[inline]
    pub fn try_recv_with<R>(&mut self, read: impl FnOnce(&Payload) -> R) -> Result<R, RecvError> {
        let slot = &self.ring.slots[self.count as usize & (SLOTS - 1)];
        // Acquire: pairs with the sender's Release store of the header in `try_send_with`,
        // making its payload writes visible before we read the payload below.
        let header = slot.header.load(Ordering::Acquire);
        if header != stamp(self.generation, self.count) {
            return Err(self.not_fresh());
        }
        // SAFETY: the header carries our generation and expected sequence, so the sender
        // published this slot for us and will not write it again until we return it on the
        // credit line (below, or later), which happens after `read` returned. The payload is
        // always initialised (zeroed at init, then written whole).
        let value = slot.payload.with(|payload| read(unsafe { &*payload }));
        self.count = self.count.wrapping_add(1);
        if self.count.wrapping_sub(self.credited) >= Self::CREDIT_BATCH {
            self.publish_credits();
        }
        Ok(value)
    }

    /// The error for a slot that is not fresh: the ring is empty, unless the peer restarted.
    #[inline(always)]
    fn not_fresh(&mut self) -> RecvError {
        // Acquire: pairs with the Release store in `ChannelRegion::restart`.
        let current = self.control.generation.load(Ordering::Acquire);
        if current == self.generation {
            return RecvError::Empty;
        }
        self.adopt_generation(current)
    }

    /// Runs `each` on up to `max` waiting messages in order, each read in its slot as in
    /// [`Self::try_recv_with`], consuming them; returns how many (at least 1).
    ///
    /// Fails with `Empty` or `PeerRestarted` as [`Self::try_recv`] does when no message waits
    /// (then `each` is not called). Stops early at the first slot that is not fresh; a restart
    /// behind the delivered messages is reported by the next call. Credits are returned as by
    /// single receives (every `SLOTS / 2` messages).
    #[inline]
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(&Payload),
    ) -> Result<usize, RecvError> {
        let mut count = self.count;
        let mut taken = 0;
        while taken < max {
            let slot = &self.ring.slots[count as usize & (SLOTS - 1)];
            // Acquire: pairs with the sender's Release store of the header, as in
            // `try_recv_with`.
            if slot.header.load(Ordering::Acquire) != stamp(self.generation, count) {
                break;
            }
            // SAFETY: fresh for us (as in `try_recv_with`): the sender does not write this slot
            // again until our credit store below (or later) returns it, after `each` returned.
            slot.payload.with(|payload| each(unsafe { &*payload }));
            count = count.wrapping_add(1);
            taken += 1;
            if count.wrapping_sub(self.credited) >= Self::CREDIT_BATCH {
                self.count = count;
                self.publish_credits();
            }
        }
        self.count = count;
        if taken == 0 && max > 0 {
            return Err(self.not_fresh());
        }
        Ok(taken)
    }

    /// Takes the next message and decodes it; a malformed one is consumed and reported as
    /// [`RecvError::Malformed`]. Buffer handles are checked against `regions`.
    #[inline]
    pub fn try_recv_message<M: Message>(
        &mut self,
        regions: &RegionTable<'_>,
    ) -> Result<M, RecvError> {
        let payload = self.try_recv()?;
        M::decode(&payload, regions).map_err(RecvError::Malformed)
    }

    /// Announces that the caller is about to halt; see [`SleepDecision`].
    ///
    /// In the kernel, call with interrupts disabled and halt with `sti; hlt` so that the IPI
    /// cannot arrive between this check and the halt.
    pub fn prepare_to_sleep(&mut self) -> SleepDecision {
        if self.count != self.credited {
            // Do not sit on credits while halted.
            self.publish_credits();
        }
        self.ring.sleep.sleeping.store(1, Ordering::Relaxed);
        // SeqCst fence: pairs with the SeqCst fence in `Sender::notify_if_sleeping`; orders the
        // flag store above before the header load below (store -> load).
        fence(Ordering::SeqCst);
        let slot = &self.ring.slots[self.count as usize & (SLOTS - 1)];
        // Acquire: pairs with the sender's Release store of the header (as in `try_recv`).
        let header = slot.header.load(Ordering::Acquire);
        // Acquire: pairs with the Release store of a restart.
        let generation = self.control.generation.load(Ordering::Acquire);
        if header == stamp(self.generation, self.count) || generation != self.generation {
            self.woke();
            return SleepDecision::MessagePending;
        }
        SleepDecision::MayHalt
    }

    /// Withdraws the sleep flag: call after waking from a halt that `prepare_to_sleep` allowed.
    pub fn woke(&mut self) {
        // Relaxed: a stale "sleeping" seen by the sender costs at most one spurious notification.
        self.ring.sleep.sleeping.store(0, Ordering::Relaxed);
    }

    /// The generation this receiver is in.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Moves the sequence to `count`, to test `u32` wrap-around (pairs with the sender's).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn skip_to_for_test(&mut self, count: u32) {
        self.count = count;
        self.credited = count;
    }

    /// Returns every consumed slot to the sender now (normally done every `SLOTS / 2`).
    pub fn publish_credits(&mut self) {
        // Release: pairs with the sender's Acquire load in `Sender::refresh_credits`: our payload
        // reads of the slots returned here happen-before the sender writes them again.
        self.ring
            .credit
            .consumed
            .store(stamp(self.generation, self.count), Ordering::Release);
        self.credited = self.count;
    }

    /// Switches to the peer's new `generation` after a restart.
    #[cold]
    #[inline(never)]
    fn adopt_generation(&mut self, generation: u32) -> RecvError {
        // We have read every message of the old generation we will read. Acknowledge the new
        // generation: this grants the restarted sender its first credits.
        self.generation = generation;
        self.count = 0;
        self.publish_credits();
        RecvError::PeerRestarted { generation }
    }
}
