//! The one framing of every letter cores exchange: monitor messages, network-stack messages and
//! the kernel's own messages all travel as a [`Letter`] in one URPC slot, either with their bytes
//! inline or with a handle to a bulk buffer in the sender's memory.
//!
//! # Wire format (one 56-byte slot payload, little-endian)
//!
//! ```text
//! byte 0        family << 4 | body      family: 1 monitor, 2 netd, 3 kernel; body: 0 inline, 1 bulk
//! inline        byte 1 length (1..=54), bytes 2..2+length the family's own encoding
//! bulk          byte 1 tag (what the buffer holds, family-defined), bytes 2..16 the buffer handle
//!               (region u16 = the sender's core, offset u64, length u32)
//! ```
//!
//! Every other byte is zero and a decoder rejects anything else. A bulk handle must name the
//! sending core's own region and lie inside it (checked against the receiver's region table).
//! The families' own encodings: `monitor::Message::encode`, `netd::PeerMessage::encode`, and
//! [`KernelMessage`] below.
#![forbid(unsafe_code)]

use urpc::{BufferHandle, DecodeError, Message, Payload, RegionTable};

/// Most bytes an inline body carries (a slot payload less the two header bytes). The largest
/// monitor message (54 bytes) fits.
pub const INLINE_CAPACITY: usize = urpc::PAYLOAD_SIZE - 2;

/// Which subsystem a letter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Family {
    /// The monitors (control plane): `monitor::Message` bytes, always inline.
    Monitor = 1,
    /// The network stacks: `netd::PeerMessage` bytes, inline when they fit, else bulk.
    Net = 2,
    /// The kernels themselves: [`KernelMessage`] inline, statistics snapshots in bulk.
    Kernel = 3,
}

impl Family {
    fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            1 => Family::Monitor,
            2 => Family::Net,
            3 => Family::Kernel,
            _ => return None,
        })
    }
}

/// Up to [`INLINE_CAPACITY`] bytes carried in the slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Inline {
    length: u8,
    bytes: [u8; INLINE_CAPACITY],
}

impl core::fmt::Debug for Inline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Inline({:02x?})", self.as_slice())
    }
}

impl Inline {
    /// Copies `data` (1 to [`INLINE_CAPACITY`] bytes), or `None` if it does not fit.
    pub fn new(data: &[u8]) -> Option<Self> {
        if data.is_empty() || data.len() > INLINE_CAPACITY {
            return None;
        }
        let mut bytes = [0u8; INLINE_CAPACITY];
        bytes[..data.len()].copy_from_slice(data);
        Some(Self {
            length: data.len() as u8,
            bytes,
        })
    }

    /// Builds the body by letting `write` fill a zeroed buffer and return the length used.
    pub fn with(write: impl FnOnce(&mut [u8; INLINE_CAPACITY]) -> usize) -> Option<Self> {
        let mut bytes = [0u8; INLINE_CAPACITY];
        let length = write(&mut bytes);
        (1..=INLINE_CAPACITY).contains(&length).then(|| {
            bytes[length..].fill(0);
            Self {
                length: length as u8,
                bytes,
            }
        })
    }

    /// The bytes carried.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }
}

/// What a letter carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// The bytes themselves.
    Inline(Inline),
    /// A buffer in the sender's bulk region, lent until the receiver returns it
    /// ([`KernelMessage::BulkReturned`]).
    Bulk {
        /// What the buffer holds (family-defined; netd: 0, kernel: [`KernelBulk`]).
        tag: u8,
        /// Where the bytes are.
        handle: BufferHandle,
    },
}

/// One message between two cores, in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Letter {
    /// The subsystem it is for.
    pub family: Family,
    /// Its bytes, inline or by reference.
    pub body: Body,
}

impl Letter {
    /// A letter whose bytes fit the slot.
    pub fn inline(family: Family, body: Inline) -> Self {
        Self {
            family,
            body: Body::Inline(body),
        }
    }

    /// A kernel message.
    pub fn kernel(message: KernelMessage) -> Self {
        Self::inline(Family::Kernel, message.encode())
    }

    /// Whether the payload's header names a bulk body (checked before decoding, so that a
    /// receiver counts a lent buffer as consumed even when the rest of the letter is malformed).
    pub fn is_bulk(payload: &Payload) -> bool {
        payload[0] & 0x0F == BULK
    }
}

const INLINE: u8 = 0;
const BULK: u8 = 1;
const HANDLE_AT: usize = 2;

fn expect_zero(payload: &Payload, from: usize) -> Result<(), DecodeError> {
    match payload[from..].iter().position(|&byte| byte != 0) {
        Some(at) => Err(DecodeError::NonZeroPadding {
            offset: (from + at) as u8,
        }),
        None => Ok(()),
    }
}

impl Message for Letter {
    fn encode(&self, payload: &mut Payload) {
        let family = (self.family as u8) << 4;
        match &self.body {
            Body::Inline(inline) => {
                payload[0] = family | INLINE;
                payload[1] = inline.length;
                payload[2..2 + usize::from(inline.length)].copy_from_slice(inline.as_slice());
            }
            Body::Bulk { tag, handle } => {
                payload[0] = family | BULK;
                payload[1] = *tag;
                let mut wire = [0u8; BufferHandle::ENCODED_SIZE];
                handle.write_to(&mut wire);
                payload[HANDLE_AT..HANDLE_AT + BufferHandle::ENCODED_SIZE].copy_from_slice(&wire);
            }
        }
    }

    fn decode(payload: &Payload, regions: &RegionTable<'_>) -> Result<Self, DecodeError> {
        let family =
            Family::from_nibble(payload[0] >> 4).ok_or(DecodeError::UnknownTag(payload[0]))?;
        match payload[0] & 0x0F {
            INLINE => {
                let length = payload[1];
                if length == 0 || usize::from(length) > INLINE_CAPACITY {
                    return Err(DecodeError::InlineTooLong { length });
                }
                expect_zero(payload, 2 + usize::from(length))?;
                let mut bytes = [0u8; INLINE_CAPACITY];
                bytes.copy_from_slice(&payload[2..]);
                Ok(Letter::inline(family, Inline { length, bytes }))
            }
            BULK => {
                expect_zero(payload, HANDLE_AT + BufferHandle::ENCODED_SIZE)?;
                let mut wire = [0u8; BufferHandle::ENCODED_SIZE];
                wire.copy_from_slice(&payload[HANDLE_AT..HANDLE_AT + BufferHandle::ENCODED_SIZE]);
                let handle = BufferHandle::read_from(&wire, regions)?;
                Ok(Letter {
                    family,
                    body: Body::Bulk {
                        tag: payload[1],
                        handle,
                    },
                })
            }
            _ => Err(DecodeError::UnknownTag(payload[0])),
        }
    }
}

/// What a kernel-family bulk buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KernelBulk {
    /// A statistics snapshot (`netd::CoreNet::snapshot_bytes`) for the gathering core.
    StatsSnapshot = 1,
}

/// The kernels' own messages (family [`Family::Kernel`], inline).
///
/// Encoding: byte 0 the tag, then the fields little-endian: 1 `Ping` and 2 `Pong` (sequence u64,
/// timestamp u64), 3 `RttStart` (peer u32, rounds u32, wake u8), 4 `RttDone` (peer u32, p50 u64,
/// p99 u64, wake u8), 5 `BulkReturned` (count u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMessage {
    /// A latency probe: the receiving kernel answers `Pong` with the same fields on the same link.
    Ping {
        /// Probe number.
        sequence: u64,
        /// The sender's cycle counter, echoed back.
        timestamp: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The ping's probe number.
        sequence: u64,
        /// The ping's timestamp.
        timestamp: u64,
    },
    /// From core 0 (the URPC latency matrix): measure `rounds` round trips to `peer`, then answer
    /// `RttDone`. With `wake`, the peer halts between probes (the figure includes its wake-up).
    RttStart {
        /// The core to ping.
        peer: u32,
        /// How many round trips.
        rounds: u32,
        /// Whether the peer halts between probes.
        wake: bool,
    },
    /// To core 0: round trips to `peer` took `p50` and `p99` cycles.
    RttDone {
        /// The core that was pinged.
        peer: u32,
        /// Median round trip, in cycles (0: no answer).
        p50: u64,
        /// 99th percentile, in cycles.
        p99: u64,
        /// Whether the peer halted between probes.
        wake: bool,
    },
    /// The receiver is done with the next `count` bulk buffers the addressee lent it on this link
    /// (buffers are consumed in the order they were sent, so a count names them).
    BulkReturned {
        /// How many buffers.
        count: u32,
    },
}

mod kernel_tag {
    pub(super) const PING: u8 = 1;
    pub(super) const PONG: u8 = 2;
    pub(super) const RTT_START: u8 = 3;
    pub(super) const RTT_DONE: u8 = 4;
    pub(super) const BULK_RETURNED: u8 = 5;
}

/// Why kernel-message bytes are not a [`KernelMessage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDecodeError {
    /// An unknown tag byte.
    UnknownTag(u8),
    /// Shorter than the message needs.
    Truncated,
    /// Bytes after the message, or a flag that is neither 0 nor 1.
    BadField,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn flag(byte: u8) -> Result<bool, KernelDecodeError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(KernelDecodeError::BadField),
    }
}

impl KernelMessage {
    /// The message's inline body.
    pub fn encode(&self) -> Inline {
        let mut bytes = [0u8; INLINE_CAPACITY];
        let length = match *self {
            KernelMessage::Ping {
                sequence,
                timestamp,
            }
            | KernelMessage::Pong {
                sequence,
                timestamp,
            } => {
                bytes[0] = if matches!(self, KernelMessage::Ping { .. }) {
                    kernel_tag::PING
                } else {
                    kernel_tag::PONG
                };
                bytes[1..9].copy_from_slice(&sequence.to_le_bytes());
                bytes[9..17].copy_from_slice(&timestamp.to_le_bytes());
                17
            }
            KernelMessage::RttStart { peer, rounds, wake } => {
                bytes[0] = kernel_tag::RTT_START;
                bytes[1..5].copy_from_slice(&peer.to_le_bytes());
                bytes[5..9].copy_from_slice(&rounds.to_le_bytes());
                bytes[9] = u8::from(wake);
                10
            }
            KernelMessage::RttDone {
                peer,
                p50,
                p99,
                wake,
            } => {
                bytes[0] = kernel_tag::RTT_DONE;
                bytes[1..5].copy_from_slice(&peer.to_le_bytes());
                bytes[5..13].copy_from_slice(&p50.to_le_bytes());
                bytes[13..21].copy_from_slice(&p99.to_le_bytes());
                bytes[21] = u8::from(wake);
                22
            }
            KernelMessage::BulkReturned { count } => {
                bytes[0] = kernel_tag::BULK_RETURNED;
                bytes[1..5].copy_from_slice(&count.to_le_bytes());
                5
            }
        };
        Inline {
            length: length as u8,
            bytes,
        }
    }

    /// Reads what [`Self::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, KernelDecodeError> {
        let tag = *bytes.first().ok_or(KernelDecodeError::Truncated)?;
        let length = match tag {
            kernel_tag::PING | kernel_tag::PONG => 17,
            kernel_tag::RTT_START => 10,
            kernel_tag::RTT_DONE => 22,
            kernel_tag::BULK_RETURNED => 5,
            other => return Err(KernelDecodeError::UnknownTag(other)),
        };
        if bytes.len() < length {
            return Err(KernelDecodeError::Truncated);
        }
        if bytes.len() > length {
            return Err(KernelDecodeError::BadField);
        }
        Ok(match tag {
            kernel_tag::PING => KernelMessage::Ping {
                sequence: u64_at(bytes, 1),
                timestamp: u64_at(bytes, 9),
            },
            kernel_tag::PONG => KernelMessage::Pong {
                sequence: u64_at(bytes, 1),
                timestamp: u64_at(bytes, 9),
            },
            kernel_tag::RTT_START => KernelMessage::RttStart {
                peer: u32_at(bytes, 1),
                rounds: u32_at(bytes, 5),
                wake: flag(bytes[9])?,
            },
            kernel_tag::RTT_DONE => KernelMessage::RttDone {
                peer: u32_at(bytes, 1),
                p50: u64_at(bytes, 5),
                p99: u64_at(bytes, 13),
                wake: flag(bytes[21])?,
            },
            _ => KernelMessage::BulkReturned {
                count: u32_at(bytes, 1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use urpc::{RegionId, SharedRegion};

    const REGIONS: [SharedRegion; 2] = [
        SharedRegion {
            id: RegionId(0),
            length: 4096,
        },
        SharedRegion {
            id: RegionId(1),
            length: 1 << 20,
        },
    ];

    fn round_trip(letter: Letter) {
        let mut payload = [0u8; urpc::PAYLOAD_SIZE];
        letter.encode(&mut payload);
        assert_eq!(
            Letter::decode(&payload, &RegionTable::new(&REGIONS)),
            Ok(letter)
        );
    }

    #[test]
    fn every_family_and_body_round_trips() {
        let monitor_sized = [0xA5u8; INLINE_CAPACITY];
        round_trip(Letter::inline(
            Family::Monitor,
            Inline::new(&monitor_sized).unwrap(),
        ));
        round_trip(Letter::inline(
            Family::Net,
            Inline::new(&[1, 0, 10]).unwrap(),
        ));
        round_trip(Letter {
            family: Family::Net,
            body: Body::Bulk {
                tag: 0,
                handle: BufferHandle::new(RegionId(1), 2048, 1 << 19),
            },
        });
        for message in [
            KernelMessage::Ping {
                sequence: 1,
                timestamp: u64::MAX,
            },
            KernelMessage::Pong {
                sequence: 0,
                timestamp: 7,
            },
            KernelMessage::RttStart {
                peer: 15,
                rounds: 1000,
                wake: true,
            },
            KernelMessage::RttDone {
                peer: 3,
                p50: 343,
                p99: 1 << 40,
                wake: false,
            },
            KernelMessage::BulkReturned { count: 9 },
        ] {
            round_trip(Letter::kernel(message));
            assert_eq!(
                KernelMessage::decode(message.encode().as_slice()),
                Ok(message)
            );
        }
        assert!(Inline::new(&[0; INLINE_CAPACITY + 1]).is_none());
        assert!(Inline::new(&[]).is_none());
    }

    #[test]
    fn malformed_letters_are_errors() {
        let table = RegionTable::new(&REGIONS);
        let mut payload = [0u8; urpc::PAYLOAD_SIZE];
        Letter::inline(Family::Net, Inline::new(&[1, 2]).unwrap()).encode(&mut payload);
        payload[30] = 1;
        assert_eq!(
            Letter::decode(&payload, &table),
            Err(DecodeError::NonZeroPadding { offset: 30 })
        );
        // A handle beyond its region, or into a region the receiver does not know.
        for (region, offset) in [(0u16, 4000u64), (7, 0)] {
            let letter = Letter {
                family: Family::Net,
                body: Body::Bulk {
                    tag: 0,
                    handle: BufferHandle::new(RegionId(region), offset, 200),
                },
            };
            payload = [0; urpc::PAYLOAD_SIZE];
            letter.encode(&mut payload);
            assert!(Letter::is_bulk(&payload));
            assert!(Letter::decode(&payload, &table).is_err(), "{letter:?}");
        }
        for tag in 0..=255u8 {
            payload = [0x5A; urpc::PAYLOAD_SIZE];
            payload[0] = tag;
            let _ = Letter::decode(&payload, &table);
        }
        assert_eq!(
            KernelMessage::decode(&[kernel_tag::BULK_RETURNED, 1, 0, 0]),
            Err(KernelDecodeError::Truncated)
        );
        assert_eq!(
            KernelMessage::decode(&[kernel_tag::BULK_RETURNED, 1, 0, 0, 0, 0]),
            Err(KernelDecodeError::BadField)
        );
        assert_eq!(
            KernelMessage::decode(&[99]),
            Err(KernelDecodeError::UnknownTag(99))
        );
    }
}
