//! Typed messages: the [`Message`] trait that encodes a value into one slot's payload and decodes
//! it back, buffer handles for payloads too large for a slot, and [`CoreMessage`], the messages
//! urpc itself defines (ping/pong for latency tests, inline bytes, a buffer by reference).
//!
//! Decoding never trusts the bytes: an unknown tag, a length out of range, non-zero padding, or a
//! buffer handle outside its shared region is a [`DecodeError`], never undefined behaviour.
//!
//! # Wire format of [`CoreMessage`] (little-endian)
//!
//! ```text
//! byte 0       tag: 1 Ping, 2 Pong, 3 Inline, 4 Buffer (0 and others: UnknownTag)
//! Ping, Pong   bytes 8..16 sequence, 16..24 timestamp; all other bytes zero
//! Inline       byte 1 length (≤ 54), bytes 2..2+length data; all other bytes zero
//! Buffer       bytes 8..22 buffer handle (region u16, offset u64, length u32),
//!              bytes 24..28 cookie; all other bytes zero
//! ```

use core::ops::Range;

use crate::channel::{Payload, PAYLOAD_SIZE};

/// A value that travels in one slot.
///
/// `encode` receives a zeroed payload; `decode` must accept exactly what `encode` produces and
/// reject everything else it cannot represent with a [`DecodeError`].
pub trait Message: Sized {
    /// Writes `self` into `payload` (which is zeroed on entry).
    fn encode(&self, payload: &mut Payload);

    /// Reads a value back; buffer handles must lie inside a region of `regions`.
    fn decode(payload: &Payload, regions: &RegionTable<'_>) -> Result<Self, DecodeError>;
}

/// Why a payload is not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The tag byte names no message of this type.
    UnknownTag(u8),
    /// An inline message claims more bytes than a slot holds.
    InlineTooLong {
        /// The length byte found.
        length: u8,
    },
    /// A byte the format requires to be zero is not.
    NonZeroPadding {
        /// Its offset in the payload.
        offset: u8,
    },
    /// A buffer handle names a region the receiver does not know.
    UnknownRegion(RegionId),
    /// A buffer handle reaches outside its region.
    BufferOutOfBounds {
        /// The region named.
        region: RegionId,
        /// The offset given.
        offset: u64,
        /// The length given.
        length: u32,
    },
}

/// Identifies a memory region shared between cores (assigned by whoever maps the regions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u16);

/// A shared region a receiver accepts buffer handles into: its identity and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRegion {
    /// The region's identity.
    pub id: RegionId,
    /// Its size in bytes; valid offsets are `0 .. length`.
    pub length: u64,
}

/// The shared regions a receiver knows, against which decoded buffer handles are validated.
#[derive(Clone, Copy, Debug)]
pub struct RegionTable<'a> {
    regions: &'a [SharedRegion],
}

impl<'a> RegionTable<'a> {
    /// No regions: every buffer handle is rejected.
    pub const EMPTY: RegionTable<'static> = RegionTable { regions: &[] };

    /// A table over `regions` (searched linearly: a core knows a handful).
    pub const fn new(regions: &'a [SharedRegion]) -> Self {
        Self { regions }
    }

    /// Checks that `handle` lies entirely inside a known region.
    pub fn check(&self, handle: BufferHandle) -> Result<BufferHandle, DecodeError> {
        let region = self
            .regions
            .iter()
            .find(|region| region.id == handle.region)
            .ok_or(DecodeError::UnknownRegion(handle.region))?;
        match handle.offset.checked_add(u64::from(handle.length)) {
            Some(end) if end <= region.length => Ok(handle),
            _ => Err(DecodeError::BufferOutOfBounds {
                region: handle.region,
                offset: handle.offset,
                length: handle.length,
            }),
        }
    }
}

/// A reference to `length` bytes at `offset` in a shared region: how a message carries a payload
/// larger than a slot without copying it through the ring.
///
/// A handle that came out of [`Message::decode`] was checked against the receiver's
/// [`RegionTable`]; a handle built with [`BufferHandle::new`] was not (the sender's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferHandle {
    region: RegionId,
    offset: u64,
    length: u32,
}

impl BufferHandle {
    /// Bytes a handle takes in a payload.
    pub const ENCODED_SIZE: usize = 14;

    /// A handle to `offset .. offset + length` in `region`.
    pub const fn new(region: RegionId, offset: u64, length: u32) -> Self {
        Self {
            region,
            offset,
            length,
        }
    }

    /// The region the buffer is in.
    pub const fn region(&self) -> RegionId {
        self.region
    }

    /// The buffer's first byte, from the start of the region.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// The buffer's size in bytes.
    pub const fn length(&self) -> u32 {
        self.length
    }

    /// The byte range in the region (cannot overflow once checked by a [`RegionTable`]).
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset.saturating_add(u64::from(self.length))
    }

    /// The buffer's bytes, given the whole region as a slice (`None` if out of bounds).
    pub fn slice<'b>(&self, region_bytes: &'b [u8]) -> Option<&'b [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.length).ok()?)?;
        region_bytes.get(start..end)
    }

    /// Writes the handle's wire form (region, offset, length; little-endian).
    pub fn write_to(&self, bytes: &mut [u8; Self::ENCODED_SIZE]) {
        bytes[0..2].copy_from_slice(&self.region.0.to_le_bytes());
        bytes[2..10].copy_from_slice(&self.offset.to_le_bytes());
        bytes[10..14].copy_from_slice(&self.length.to_le_bytes());
    }

    /// Reads a handle's wire form and checks it against `regions`.
    pub fn read_from(
        bytes: &[u8; Self::ENCODED_SIZE],
        regions: &RegionTable<'_>,
    ) -> Result<Self, DecodeError> {
        let handle = Self {
            region: RegionId(u16::from_le_bytes([bytes[0], bytes[1]])),
            offset: u64::from_le_bytes(array(&bytes[2..10])),
            length: u32::from_le_bytes(array(&bytes[10..14])),
        };
        regions.check(handle)
    }
}

/// Most bytes an [`InlineBytes`] holds.
pub const INLINE_CAPACITY: usize = PAYLOAD_SIZE - 2;

/// Up to [`INLINE_CAPACITY`] bytes carried in the slot itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineBytes {
    length: u8,
    bytes: [u8; INLINE_CAPACITY],
}

/// [`InlineBytes::new`] was given more than [`INLINE_CAPACITY`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineTooLong {
    /// The length given.
    pub length: usize,
}

impl InlineBytes {
    /// Copies `data`, or fails if it does not fit in a slot.
    pub fn new(data: &[u8]) -> Result<Self, InlineTooLong> {
        if data.len() > INLINE_CAPACITY {
            return Err(InlineTooLong { length: data.len() });
        }
        let mut bytes = [0; INLINE_CAPACITY];
        bytes[..data.len()].copy_from_slice(data);
        // The length fits in a u8: checked against INLINE_CAPACITY (54) above.
        Ok(Self {
            length: data.len() as u8,
            bytes,
        })
    }

    /// The bytes carried.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }
}

/// The messages urpc defines for its own use: latency probes and generic data transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreMessage {
    /// A latency probe; the peer answers with a `Pong` carrying the same fields.
    Ping {
        /// Probe number.
        sequence: u64,
        /// Sender's timestamp (TSC cycles), echoed back.
        timestamp: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The ping's probe number.
        sequence: u64,
        /// The ping's timestamp.
        timestamp: u64,
    },
    /// A small payload carried in the slot.
    Inline(InlineBytes),
    /// A large payload left in shared memory, passed by reference.
    Buffer {
        /// Where the bytes are.
        handle: BufferHandle,
        /// An opaque value for the receiver (e.g. what the buffer holds).
        cookie: u32,
    },
}

/// Wire tags of [`CoreMessage`].
mod tag {
    pub(super) const PING: u8 = 1;
    pub(super) const PONG: u8 = 2;
    pub(super) const INLINE: u8 = 3;
    pub(super) const BUFFER: u8 = 4;
}

/// Where a `Buffer` message's handle and cookie sit.
const HANDLE_AT: usize = 8;
const COOKIE_AT: usize = 24;

impl Message for CoreMessage {
    fn encode(&self, payload: &mut Payload) {
        match self {
            CoreMessage::Ping {
                sequence,
                timestamp,
            }
            | CoreMessage::Pong {
                sequence,
                timestamp,
            } => {
                payload[0] = if matches!(self, CoreMessage::Ping { .. }) {
                    tag::PING
                } else {
                    tag::PONG
                };
                payload[8..16].copy_from_slice(&sequence.to_le_bytes());
                payload[16..24].copy_from_slice(&timestamp.to_le_bytes());
            }
            CoreMessage::Inline(inline) => {
                payload[0] = tag::INLINE;
                payload[1] = inline.length;
                payload[2..].copy_from_slice(&inline.bytes);
            }
            CoreMessage::Buffer { handle, cookie } => {
                payload[0] = tag::BUFFER;
                let mut wire = [0; BufferHandle::ENCODED_SIZE];
                handle.write_to(&mut wire);
                payload[HANDLE_AT..HANDLE_AT + BufferHandle::ENCODED_SIZE].copy_from_slice(&wire);
                payload[COOKIE_AT..COOKIE_AT + 4].copy_from_slice(&cookie.to_le_bytes());
            }
        }
    }

    fn decode(payload: &Payload, regions: &RegionTable<'_>) -> Result<Self, DecodeError> {
        match payload[0] {
            tag::PING | tag::PONG => {
                expect_zero(payload, 1..8)?;
                expect_zero(payload, 24..PAYLOAD_SIZE)?;
                let sequence = u64::from_le_bytes(array(&payload[8..16]));
                let timestamp = u64::from_le_bytes(array(&payload[16..24]));
                Ok(if payload[0] == tag::PING {
                    CoreMessage::Ping {
                        sequence,
                        timestamp,
                    }
                } else {
                    CoreMessage::Pong {
                        sequence,
                        timestamp,
                    }
                })
            }
            tag::INLINE => {
                let length = payload[1];
                if usize::from(length) > INLINE_CAPACITY {
                    return Err(DecodeError::InlineTooLong { length });
                }
                expect_zero(payload, 2 + usize::from(length)..PAYLOAD_SIZE)?;
                Ok(CoreMessage::Inline(InlineBytes {
                    length,
                    bytes: array(&payload[2..]),
                }))
            }
            tag::BUFFER => {
                expect_zero(payload, 1..HANDLE_AT)?;
                expect_zero(payload, HANDLE_AT + BufferHandle::ENCODED_SIZE..COOKIE_AT)?;
                expect_zero(payload, COOKIE_AT + 4..PAYLOAD_SIZE)?;
                let handle = BufferHandle::read_from(
                    &array(&payload[HANDLE_AT..HANDLE_AT + BufferHandle::ENCODED_SIZE]),
                    regions,
                )?;
                let cookie = u32::from_le_bytes(array(&payload[COOKIE_AT..COOKIE_AT + 4]));
                Ok(CoreMessage::Buffer { handle, cookie })
            }
            unknown => Err(DecodeError::UnknownTag(unknown)),
        }
    }
}

/// Fails on the first non-zero byte of `payload[range]`.
#[inline(always)]
fn expect_zero(payload: &Payload, range: Range<usize>) -> Result<(), DecodeError> {
    // The common case, all zero, as a masked OR of the payload's seven words (the ranges are
    // constants, so the masks fold away); the byte search runs only for a malformed payload.
    let mut any = 0u64;
    for word in 0..PAYLOAD_SIZE / 8 {
        let (low, high) = (word * 8, word * 8 + 8);
        let (start, end) = (range.start.clamp(low, high), range.end.clamp(low, high));
        if start < end {
            let bits = (end - start) * 8;
            let mask = if bits == 64 {
                !0
            } else {
                ((1u64 << bits) - 1) << ((start - low) * 8)
            };
            any |= u64::from_le_bytes(array(&payload[low..high])) & mask;
        }
    }
    if any == 0 {
        return Ok(());
    }
    first_non_zero(payload, range)
}

/// The error naming the first non-zero byte of `payload[range]` (which has one).
#[cold]
fn first_non_zero(payload: &Payload, range: Range<usize>) -> Result<(), DecodeError> {
    let start = range.start;
    match payload[range].iter().position(|&byte| byte != 0) {
        // Offsets are below PAYLOAD_SIZE (56), so they fit in a u8.
        Some(index) => Err(DecodeError::NonZeroPadding {
            offset: (start + index) as u8,
        }),
        None => Ok(()),
    }
}

/// Copies a slice of statically known length into an array.
fn array<const LENGTH: usize>(bytes: &[u8]) -> [u8; LENGTH] {
    let mut out = [0; LENGTH];
    out.copy_from_slice(bytes);
    out
}
