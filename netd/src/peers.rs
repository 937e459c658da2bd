//! Cross-core messages of the data plane and the [`Peers`] trait the kernel implements over URPC.
//!
//! netd does not depend on `urpc`: it hands the kernel a [`PeerMessage`] and the core to send it
//! to, and the kernel carries it. Every message has a byte encoding ([`PeerMessage::encode`] and
//! [`PeerMessage::decode`]) so that the transport can copy it into URPC slots:
//!
//! | message | header | then | fits one 56-byte slot payload when |
//! |---|---|---|---|
//! | `Neighbour` | 12 bytes: type, 0, IPv4 (4), MAC (6) | - | always |
//! | `Frame` | 4 bytes: type, 0, length (u16 LE) | the frame | frame ≤ 52 bytes (else several slots or a buffer) |
//! | `KvRequest` | 24 bytes: type, operation, noreply, key length, origin core (u16 LE), service (u16 LE), ticket (u32 LE), sequence (u32 LE), flags (u32 LE), value length (u32 LE) | key, value | get/delete with a key ≤ 32 bytes |
//! | `KvReply` | 32 bytes: type, status, key length, 0, ticket, sequence, flags, value length (u32 LE each), CAS unique (u64 LE), service (u16 LE), 0 (u16) | key, value | a miss, STORED, DELETED or NOT_FOUND with a key ≤ 24 bytes |
//!
//! `service` names the peer service the message is for: the TCP port it is registered on
//! (11211 for memcached), so several key-value services can coexist on one core.
//!
//! Type bytes: 1 `Neighbour`, 2 `Frame`, 3 `KvRequest`, 4 `KvReply`. Longer messages are the
//! transport's business: a run of consecutive slots, or a buffer handed over by reference.
//! Messages borrow their bytes, so nothing allocated on one core's heap is freed by another.

use crate::config::CoreId;

/// Payload bytes of one URPC slot (64-byte slot less its 8-byte header).
pub const SLOT_PAYLOAD: usize = 56;

/// A resolved neighbour: the core that received an ARP packet tells the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// The neighbour's IPv4 address.
    pub ip: [u8; 4],
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// A memcached operation sent to the core owning the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KvOperation {
    /// `get`: reply with the value or a miss.
    Get = 1,
    /// `gets`: like `get`, and the reply carries the CAS unique.
    Gets = 2,
    /// `set`: store the value.
    Set = 3,
    /// `delete`: remove the key.
    Delete = 4,
}

/// A key-value request travelling to the key's owner core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvRequest<'a> {
    /// The peer service it is for (its TCP port on every core).
    pub service: u16,
    /// What to do.
    pub operation: KvOperation,
    /// The client asked for no reply (`noreply`): the owner sends none.
    pub noreply: bool,
    /// The core holding the client connection, to which the reply goes.
    pub origin: CoreId,
    /// Opaque to the owner: names the connection on the origin core (slot and generation).
    pub ticket: u32,
    /// Position of this request in the connection's reply order.
    pub sequence: u32,
    /// Client flags stored with a `set`.
    pub flags: u32,
    /// The key (at most 250 bytes).
    pub key: &'a [u8],
    /// The value of a `set`; empty otherwise.
    pub value: &'a [u8],
}

/// Outcome of a key-value request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KvStatus {
    /// A hit: the reply carries flags, CAS unique and value.
    Value = 1,
    /// A miss on `get`/`gets`.
    Miss = 2,
    /// `set` succeeded.
    Stored = 3,
    /// `delete` removed the key.
    Deleted = 4,
    /// `delete` found no key.
    NotFound = 5,
    /// `set` failed: the owner's store is full.
    OutOfMemory = 6,
}

/// The owner's answer to a [`KvRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvReply<'a> {
    /// The peer service it is for (the request's `service`, returned unchanged).
    pub service: u16,
    /// Outcome.
    pub status: KvStatus,
    /// The request's ticket, returned unchanged.
    pub ticket: u32,
    /// The request's sequence number, returned unchanged.
    pub sequence: u32,
    /// Client flags of the stored item (hits).
    pub flags: u32,
    /// CAS unique of the stored item (hits).
    pub cas: u64,
    /// The key (hits; the origin formats the `VALUE` line with it).
    pub key: &'a [u8],
    /// The value (hits).
    pub value: &'a [u8],
}

/// A message between two cores' stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMessage<'a> {
    /// Install this neighbour in the receiver's neighbour cache.
    Neighbour(NeighbourEntry),
    /// A frame that reached the wrong core; the receiver classifies it and never forwards it again.
    Frame(&'a [u8]),
    /// A memcached request for a key the receiver owns.
    KvRequest(KvRequest<'a>),
    /// The answer to a [`PeerMessage::KvRequest`].
    KvReply(KvReply<'a>),
}

/// Why a message could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The output buffer is too small, or the input ends early.
    TooShort,
    /// Unknown type byte, operation or status.
    BadTag(u8),
    /// A key longer than 250 bytes or a field out of range.
    BadField,
}

/// Why [`Peers::send`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The channel to that core is full; the caller drops or reports busy.
    Full,
    /// No such core, or it is not running.
    NoSuchCore(CoreId),
    /// The message is larger than the transport can carry.
    TooLarge,
}

/// Longest key memcached allows.
pub const MAX_KEY: usize = 250;

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}
fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl KvOperation {
    fn from_byte(byte: u8) -> Result<Self, MessageError> {
        Ok(match byte {
            1 => KvOperation::Get,
            2 => KvOperation::Gets,
            3 => KvOperation::Set,
            4 => KvOperation::Delete,
            other => return Err(MessageError::BadTag(other)),
        })
    }
}

impl KvStatus {
    fn from_byte(byte: u8) -> Result<Self, MessageError> {
        Ok(match byte {
            1 => KvStatus::Value,
            2 => KvStatus::Miss,
            3 => KvStatus::Stored,
            4 => KvStatus::Deleted,
            5 => KvStatus::NotFound,
            6 => KvStatus::OutOfMemory,
            other => return Err(MessageError::BadTag(other)),
        })
    }
}

impl<'a> PeerMessage<'a> {
    /// Bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            PeerMessage::Neighbour(_) => 12,
            PeerMessage::Frame(frame) => 4 + frame.len(),
            PeerMessage::KvRequest(request) => 24 + request.key.len() + request.value.len(),
            PeerMessage::KvReply(reply) => 32 + reply.key.len() + reply.value.len(),
        }
    }

    /// Whether the message fits one URPC slot payload.
    pub fn fits_one_slot(&self) -> bool {
        self.encoded_len() <= SLOT_PAYLOAD
    }

    /// Writes the message into `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, MessageError> {
        let length = self.encoded_len();
        if out.len() < length {
            return Err(MessageError::TooShort);
        }
        match self {
            PeerMessage::Neighbour(entry) => {
                out[0] = 1;
                out[1] = 0;
                out[2..6].copy_from_slice(&entry.ip);
                out[6..12].copy_from_slice(&entry.mac);
            }
            PeerMessage::Frame(frame) => {
                let frame_length =
                    u16::try_from(frame.len()).map_err(|_| MessageError::BadField)?;
                out[0] = 2;
                out[1] = 0;
                put_u16(out, 2, frame_length);
                out[4..length].copy_from_slice(frame);
            }
            PeerMessage::KvRequest(request) => {
                if request.key.len() > MAX_KEY {
                    return Err(MessageError::BadField);
                }
                let value_length =
                    u32::try_from(request.value.len()).map_err(|_| MessageError::BadField)?;
                out[0] = 3;
                out[1] = request.operation as u8;
                out[2] = u8::from(request.noreply);
                out[3] = request.key.len() as u8;
                put_u16(out, 4, request.origin);
                put_u16(out, 6, request.service);
                put_u32(out, 8, request.ticket);
                put_u32(out, 12, request.sequence);
                put_u32(out, 16, request.flags);
                put_u32(out, 20, value_length);
                let key_end = 24 + request.key.len();
                out[24..key_end].copy_from_slice(request.key);
                out[key_end..length].copy_from_slice(request.value);
            }
            PeerMessage::KvReply(reply) => {
                if reply.key.len() > MAX_KEY {
                    return Err(MessageError::BadField);
                }
                let value_length =
                    u32::try_from(reply.value.len()).map_err(|_| MessageError::BadField)?;
                out[0] = 4;
                out[1] = reply.status as u8;
                out[2] = reply.key.len() as u8;
                out[3] = 0;
                put_u32(out, 4, reply.ticket);
                put_u32(out, 8, reply.sequence);
                put_u32(out, 12, reply.flags);
                put_u32(out, 16, value_length);
                out[20..28].copy_from_slice(&reply.cas.to_le_bytes());
                put_u16(out, 28, reply.service);
                put_u16(out, 30, 0);
                let key_end = 32 + reply.key.len();
                out[32..key_end].copy_from_slice(reply.key);
                out[key_end..length].copy_from_slice(reply.value);
            }
        }
        Ok(length)
    }

    /// Reads a message written by [`Self::encode`]; it borrows from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let tag = *bytes.first().ok_or(MessageError::TooShort)?;
        match tag {
            1 => {
                if bytes.len() < 12 {
                    return Err(MessageError::TooShort);
                }
                let mut entry = NeighbourEntry {
                    ip: [0; 4],
                    mac: [0; 6],
                };
                entry.ip.copy_from_slice(&bytes[2..6]);
                entry.mac.copy_from_slice(&bytes[6..12]);
                Ok(PeerMessage::Neighbour(entry))
            }
            2 => {
                if bytes.len() < 4 {
                    return Err(MessageError::TooShort);
                }
                let length = usize::from(get_u16(bytes, 2));
                let frame = bytes.get(4..4 + length).ok_or(MessageError::TooShort)?;
                Ok(PeerMessage::Frame(frame))
            }
            3 => {
                if bytes.len() < 24 {
                    return Err(MessageError::TooShort);
                }
                let key_end = 24 + usize::from(bytes[3]);
                let value_end = key_end
                    .checked_add(get_u32(bytes, 20) as usize)
                    .ok_or(MessageError::BadField)?;
                Ok(PeerMessage::KvRequest(KvRequest {
                    service: get_u16(bytes, 6),
                    operation: KvOperation::from_byte(bytes[1])?,
                    noreply: bytes[2] != 0,
                    origin: get_u16(bytes, 4),
                    ticket: get_u32(bytes, 8),
                    sequence: get_u32(bytes, 12),
                    flags: get_u32(bytes, 16),
                    key: bytes.get(24..key_end).ok_or(MessageError::TooShort)?,
                    value: bytes
                        .get(key_end..value_end)
                        .ok_or(MessageError::TooShort)?,
                }))
            }
            4 => {
                if bytes.len() < 32 {
                    return Err(MessageError::TooShort);
                }
                let key_end = 32 + usize::from(bytes[2]);
                let value_end = key_end
                    .checked_add(get_u32(bytes, 16) as usize)
                    .ok_or(MessageError::BadField)?;
                let mut cas = [0u8; 8];
                cas.copy_from_slice(&bytes[20..28]);
                Ok(PeerMessage::KvReply(KvReply {
                    service: get_u16(bytes, 28),
                    status: KvStatus::from_byte(bytes[1])?,
                    ticket: get_u32(bytes, 4),
                    sequence: get_u32(bytes, 8),
                    flags: get_u32(bytes, 12),
                    cas: u64::from_le_bytes(cas),
                    key: bytes.get(32..key_end).ok_or(MessageError::TooShort)?,
                    value: bytes
                        .get(key_end..value_end)
                        .ok_or(MessageError::TooShort)?,
                }))
            }
            other => Err(MessageError::BadTag(other)),
        }
    }
}

/// What a core's stack needs from the cross-core channels (the kernel implements it over URPC).
///
/// The receiving kernel hands each message to [`crate::CoreNet::handle_peer_message`] on the
/// destination core. Sending never blocks: a full channel is [`PeerError::Full`].
pub trait Peers {
    /// Sends `message` to `core`'s stack.
    fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: PeerMessage<'_>) {
        let mut buffer = [0u8; 512];
        let length = message.encode(&mut buffer).unwrap();
        assert_eq!(length, message.encoded_len());
        assert_eq!(PeerMessage::decode(&buffer[..length]).unwrap(), message);
        assert_eq!(
            message.encode(&mut buffer[..length - 1]),
            Err(MessageError::TooShort)
        );
    }

    #[test]
    fn messages_round_trip_and_small_ones_fit_a_slot() {
        let neighbour = PeerMessage::Neighbour(NeighbourEntry {
            ip: [10, 0, 2, 2],
            mac: [2, 0, 0, 0, 0, 1],
        });
        assert!(neighbour.fits_one_slot());
        round_trip(neighbour);
        round_trip(PeerMessage::Frame(&[1, 2, 3, 4, 5]));
        let get = PeerMessage::KvRequest(KvRequest {
            service: 11211,
            operation: KvOperation::Get,
            noreply: false,
            origin: 3,
            ticket: 0x0001_0002,
            sequence: 77,
            flags: 0,
            key: b"user:0123456789abcdef0123456789ab",
            value: b"",
        });
        assert_eq!(get.encoded_len(), 24 + 33);
        round_trip(get);
        let short_get = PeerMessage::KvRequest(KvRequest {
            key: b"k",
            ..match get {
                PeerMessage::KvRequest(r) => r,
                _ => unreachable!(),
            }
        });
        assert!(short_get.fits_one_slot());
        round_trip(PeerMessage::KvReply(KvReply {
            service: 11211,
            status: KvStatus::Value,
            ticket: 9,
            sequence: 10,
            flags: 42,
            cas: u64::MAX - 1,
            key: b"key",
            value: b"value bytes",
        }));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert_eq!(PeerMessage::decode(&[]), Err(MessageError::TooShort));
        assert_eq!(PeerMessage::decode(&[9]), Err(MessageError::BadTag(9)));
        assert_eq!(
            PeerMessage::decode(&[2, 0, 200, 0, 1]),
            Err(MessageError::TooShort)
        );
        let mut seed = 0x1234_5678u32;
        for length in 0..80 {
            for _ in 0..50 {
                let mut bytes = [0u8; 80];
                for byte in bytes.iter_mut() {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    *byte = (seed >> 24) as u8;
                }
                bytes[0] %= 5;
                let _ = PeerMessage::decode(&bytes[..length]);
            }
        }
    }
}
