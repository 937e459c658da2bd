//! Cross-core messages of the data plane and the [`Peers`] trait the kernel implements over URPC.
//!
//! netd does not depend on `urpc`: it hands the kernel a [`PeerMessage`] and the core to send it
//! to, and the kernel carries it. Every message has a byte encoding ([`PeerMessage::encode`] and
//! [`PeerMessage::decode`], little-endian) so that the transport can copy it into URPC slots or
//! into a buffer passed by reference:
//!
//! | message | header | then |
//! |---|---|---|
//! | `Neighbour` | 12 bytes: type, 0, IPv4 (4), MAC (6) | - |
//! | `Frame` | 4 bytes: type, 0, length (u16) | the frame |
//! | `KvRequest` | 20 bytes: type, operation, options (bit 0 noreply), key length, origin core (u16), service (u16), ticket (u32), sequence (u32), value length (u32); then the operation's arguments (0–16 bytes, see [`KvOperation`]) | key, value |
//! | `KvReply` | 20 bytes: type, status, key length, 0, owner core (u16), service (u16), ticket, sequence, value length (u32 each); then the status's fields (0–20 bytes, see [`KvStatus`]) | key, value |
//!
//! Type bytes: 1 `Neighbour`, 2 `Frame`, 3 `KvRequest`, 4 `KvReply`. A key-value message is at
//! most [`MAX_KV_MESSAGE`] bytes (a largest memcached item, 1 MiB, with its header and key), which
//! is the size the transport must carry; how (a run of slots, a buffer handed over by reference) is
//! the transport's business. A `get` request with a key of up to 24 bytes fits one 48-byte chunk.
//! Messages borrow their bytes, so nothing allocated on one core's heap is freed by another.
//! [`PeerMessage::decode`] is total: any byte string gives a message or a [`MessageError`], never
//! a panic.

use crate::config::CoreId;

/// Payload bytes of one URPC slot (64-byte slot less its 8-byte header).
pub const SLOT_PAYLOAD: usize = 56;

/// Longest key memcached allows.
pub const MAX_KEY: usize = 250;

/// Largest value a key-value message carries: memcached's default item limit (1 MiB).
pub const MAX_KV_VALUE: usize = 1 << 20;

/// Largest encoded key-value message: header, arguments, a 250-byte key and a 1 MiB value. The
/// transport must carry messages up to this size (it stays below 1 MiB + 1 KiB).
pub const MAX_KV_MESSAGE: usize = KV_HEADER + 20 + MAX_KEY + MAX_KV_VALUE;
const _: () = assert!(MAX_KV_MESSAGE <= (1 << 20) + 1024);

/// Bytes of the fixed part of a `KvRequest` or `KvReply` header.
const KV_HEADER: usize = 20;

/// A resolved neighbour: the core that received an ARP packet tells the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// The neighbour's IPv4 address.
    pub ip: [u8; 4],
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// How a storage command treats an existing item (memcached's six storage commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if the key holds no item.
    Add,
    /// `replace`: store only if the key holds an item.
    Replace,
    /// `append`: add the data after the existing item's data.
    Append,
    /// `prepend`: add the data before the existing item's data.
    Prepend,
    /// `cas`: store only if the item's CAS unique is still this one.
    Cas(u64),
}

/// What a key-value request asks of the core that receives it. The wire operation code and the
/// argument bytes that follow the header are given for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOperation {
    /// `get`/`gets`/`gat`/`gats` of one key (codes 1 `get`, 2 `gets`, 13 `gat`, 14 `gats`;
    /// arguments `reply_limit` u32, then for gat/gats `exptime` i32). A value of at most
    /// `reply_limit` bytes comes whole ([`KvStatus::Value`]); a longer one is pinned on the owner
    /// and comes in chunks ([`KvStatus::Streaming`], then [`KvOperation::Fetch`]).
    Get {
        /// The reply carries the CAS unique (`gets`, `gats`): only the origin's formatting differs.
        cas: bool,
        /// `gat`/`gats`: the new exptime, as the client sent it.
        touch: Option<i32>,
        /// Most value bytes the reply may carry.
        reply_limit: u32,
    },
    /// A storage command (codes 3 `set`, 5 `add`, 6 `replace`, 7 `append`, 8 `prepend`, 9 `cas`;
    /// arguments `flags` u32, `exptime` i32, and for `cas` the unique u64). The data is the value.
    Store {
        /// Which storage command.
        mode: StoreMode,
        /// Client flags.
        flags: u32,
        /// Expiration time as the client sent it (memcached's rules apply on the owner).
        exptime: i32,
    },
    /// `delete` (code 4, no arguments).
    Delete,
    /// `touch` (code 12, argument `exptime` i32).
    Touch {
        /// The new expiration time.
        exptime: i32,
    },
    /// `incr`/`decr` (codes 10 `incr`, 11 `decr`, argument `delta` u64).
    Arithmetic {
        /// `incr` (wraps at 2^64) rather than `decr` (stops at 0).
        increment: bool,
        /// The amount.
        delta: u64,
    },
    /// The next chunk of a value pinned by an earlier get (code 15, arguments `pin` u32,
    /// `offset` u32, `reply_limit` u32).
    Fetch {
        /// The pin the [`KvStatus::Streaming`] reply named.
        pin: u32,
        /// First byte wanted.
        offset: u32,
        /// Most bytes wanted.
        reply_limit: u32,
    },
    /// Drop a pin before its value was read to the end: the connection closed (code 16, argument
    /// `pin` u32). Never answered.
    Release {
        /// The pin.
        pin: u32,
    },
    /// `flush_all [delay]` on the receiving core (code 17, argument `delay` i32).
    FlushAll {
        /// The delay as the client sent it (0: now).
        delay: i32,
    },
    /// This core's memcached counters, for `stats` (code 18, no arguments).
    Stats,
    /// `stats reset` on the receiving core (code 19, no arguments).
    ResetStats,
}

/// A key-value request travelling to the key's owner core (or to every core for `flush_all` and
/// `stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvRequest<'a> {
    /// The peer service the request is for: the TCP port it is registered on (11211 for
    /// memcached), so several key-value services coexist on one core.
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
    /// The key (at most 250 bytes; empty for `flush_all`, `stats`, `fetch`).
    pub key: &'a [u8],
    /// The data block of a storage command; empty otherwise.
    pub value: &'a [u8],
}

/// Outcome of a key-value request, with the fields each outcome carries after the reply header
/// (status code in parentheses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvStatus {
    /// A hit (1; `flags` u32, `cas` u64): the reply carries key and whole value.
    Value {
        /// Client flags.
        flags: u32,
        /// CAS unique.
        cas: u64,
    },
    /// A hit on a value longer than the request's `reply_limit` (2; `flags` u32, `cas` u64,
    /// `pin` u32, `total` u32): the reply carries the key and the first chunk; the owner keeps the
    /// value as it was (a pin) until it has been fetched to the end, released, or left idle.
    Streaming {
        /// Client flags.
        flags: u32,
        /// CAS unique.
        cas: u64,
        /// Names the pinned value for [`KvOperation::Fetch`].
        pin: u32,
        /// Bytes of the whole value.
        total: u32,
    },
    /// A chunk of a pinned value (3): the reply's value.
    Chunk,
    /// The pin is gone (4): idle too long, or its owner dropped it.
    PinGone,
    /// A miss on a get (5).
    Miss,
    /// `STORED` (6).
    Stored,
    /// `NOT_STORED` (7).
    NotStored,
    /// `EXISTS` (8): a `cas` found a newer item.
    Exists,
    /// `NOT_FOUND` (9).
    NotFound,
    /// `DELETED` (10).
    Deleted,
    /// `TOUCHED` (11).
    Touched,
    /// The value after `incr`/`decr` (12; `value` u64).
    Number(u64),
    /// `incr`/`decr` on an item that is not a decimal number (13).
    NonNumeric,
    /// The owner's store cannot hold the item even after eviction (14).
    OutOfMemory,
    /// `flush_all` or `stats reset` done (15).
    Done,
    /// This core's counters (16): the reply's value is a [`crate::app::memcached::stats`] block.
    Stats,
}

/// The owner's answer to a [`KvRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvReply<'a> {
    /// The peer service the reply is for (the request's, returned unchanged).
    pub service: u16,
    /// Outcome.
    pub status: KvStatus,
    /// The core that answers.
    pub owner: CoreId,
    /// The request's ticket, returned unchanged.
    pub ticket: u32,
    /// The request's sequence number, returned unchanged.
    pub sequence: u32,
    /// The key (hits; the origin formats the `VALUE` line with it).
    pub key: &'a [u8],
    /// The value, a chunk of it, or a stats block.
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
    /// A key longer than 250 bytes, a value longer than 1 MiB, or a field out of range.
    BadField,
}

/// Why [`Peers::send`] failed. Nothing was sent; the transport counted the refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The channel to that core and its bounded outbox are both full; the caller drops or
    /// reports busy.
    Full,
    /// No such core, or no channel to it.
    NoSuchCore(CoreId),
    /// The message is larger than the transport can carry.
    TooLarge,
    /// The monitors declared that core failed: nothing more is sent to it.
    PeerFenced(CoreId),
    /// No bulk buffer large enough is free on this core (large messages travel by reference in
    /// buffers of the sender's bounded pool, returned by the receiver when done).
    BulkExhausted,
}

/// Writes little-endian fields one after another into a buffer known to be large enough.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn u8(&mut self, value: u8) {
        self.bytes(&[value]);
    }
    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_le_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }
    fn i32(&mut self, value: i32) {
        self.bytes(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
}

/// Reads little-endian fields one after another; running out is [`MessageError::TooShort`].
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], MessageError> {
        let end = self.at.checked_add(length).ok_or(MessageError::BadField)?;
        let taken = self.bytes.get(self.at..end).ok_or(MessageError::TooShort)?;
        self.at = end;
        Ok(taken)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, MessageError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

impl KvOperation {
    /// The wire operation code.
    fn code(&self) -> u8 {
        match *self {
            KvOperation::Get {
                cas: false,
                touch: None,
                ..
            } => 1,
            KvOperation::Get {
                cas: true,
                touch: None,
                ..
            } => 2,
            KvOperation::Store { mode, .. } => match mode {
                StoreMode::Set => 3,
                StoreMode::Add => 5,
                StoreMode::Replace => 6,
                StoreMode::Append => 7,
                StoreMode::Prepend => 8,
                StoreMode::Cas(_) => 9,
            },
            KvOperation::Delete => 4,
            KvOperation::Arithmetic {
                increment: true, ..
            } => 10,
            KvOperation::Arithmetic {
                increment: false, ..
            } => 11,
            KvOperation::Touch { .. } => 12,
            KvOperation::Get {
                cas: false,
                touch: Some(_),
                ..
            } => 13,
            KvOperation::Get {
                cas: true,
                touch: Some(_),
                ..
            } => 14,
            KvOperation::Fetch { .. } => 15,
            KvOperation::Release { .. } => 16,
            KvOperation::FlushAll { .. } => 17,
            KvOperation::Stats => 18,
            KvOperation::ResetStats => 19,
        }
    }

    /// Bytes of the arguments after the header.
    fn arguments_len(&self) -> usize {
        match *self {
            KvOperation::Get { touch: None, .. } => 4,
            KvOperation::Get { touch: Some(_), .. } => 8,
            KvOperation::Store {
                mode: StoreMode::Cas(_),
                ..
            } => 16,
            KvOperation::Store { .. } => 8,
            KvOperation::Delete | KvOperation::Stats | KvOperation::ResetStats => 0,
            KvOperation::Touch { .. }
            | KvOperation::Release { .. }
            | KvOperation::FlushAll { .. } => 4,
            KvOperation::Arithmetic { .. } => 8,
            KvOperation::Fetch { .. } => 12,
        }
    }

    fn write_arguments(&self, writer: &mut Writer<'_>) {
        match *self {
            KvOperation::Get {
                touch, reply_limit, ..
            } => {
                writer.u32(reply_limit);
                if let Some(exptime) = touch {
                    writer.i32(exptime);
                }
            }
            KvOperation::Store {
                mode,
                flags,
                exptime,
            } => {
                writer.u32(flags);
                writer.i32(exptime);
                if let StoreMode::Cas(unique) = mode {
                    writer.u64(unique);
                }
            }
            KvOperation::Delete | KvOperation::Stats | KvOperation::ResetStats => {}
            KvOperation::Touch { exptime } => writer.i32(exptime),
            KvOperation::Arithmetic { delta, .. } => writer.u64(delta),
            KvOperation::Fetch {
                pin,
                offset,
                reply_limit,
            } => {
                writer.u32(pin);
                writer.u32(offset);
                writer.u32(reply_limit);
            }
            KvOperation::Release { pin } => writer.u32(pin),
            KvOperation::FlushAll { delay } => writer.i32(delay),
        }
    }

    fn read(code: u8, reader: &mut Reader<'_>) -> Result<Self, MessageError> {
        let get = |cas, touch: bool, reader: &mut Reader<'_>| {
            let reply_limit = reader.u32()?;
            let touch = if touch { Some(reader.i32()?) } else { None };
            Ok(KvOperation::Get {
                cas,
                touch,
                reply_limit,
            })
        };
        let store = |mode: fn(u64) -> StoreMode, has_cas: bool, reader: &mut Reader<'_>| {
            let flags = reader.u32()?;
            let exptime = reader.i32()?;
            let unique = if has_cas { reader.u64()? } else { 0 };
            Ok(KvOperation::Store {
                mode: mode(unique),
                flags,
                exptime,
            })
        };
        match code {
            1 => get(false, false, reader),
            2 => get(true, false, reader),
            13 => get(false, true, reader),
            14 => get(true, true, reader),
            3 => store(|_| StoreMode::Set, false, reader),
            5 => store(|_| StoreMode::Add, false, reader),
            6 => store(|_| StoreMode::Replace, false, reader),
            7 => store(|_| StoreMode::Append, false, reader),
            8 => store(|_| StoreMode::Prepend, false, reader),
            9 => store(StoreMode::Cas, true, reader),
            4 => Ok(KvOperation::Delete),
            10 | 11 => Ok(KvOperation::Arithmetic {
                increment: code == 10,
                delta: reader.u64()?,
            }),
            12 => Ok(KvOperation::Touch {
                exptime: reader.i32()?,
            }),
            15 => Ok(KvOperation::Fetch {
                pin: reader.u32()?,
                offset: reader.u32()?,
                reply_limit: reader.u32()?,
            }),
            16 => Ok(KvOperation::Release { pin: reader.u32()? }),
            17 => Ok(KvOperation::FlushAll {
                delay: reader.i32()?,
            }),
            18 => Ok(KvOperation::Stats),
            19 => Ok(KvOperation::ResetStats),
            other => Err(MessageError::BadTag(other)),
        }
    }
}

impl KvStatus {
    fn code(&self) -> u8 {
        match self {
            KvStatus::Value { .. } => 1,
            KvStatus::Streaming { .. } => 2,
            KvStatus::Chunk => 3,
            KvStatus::PinGone => 4,
            KvStatus::Miss => 5,
            KvStatus::Stored => 6,
            KvStatus::NotStored => 7,
            KvStatus::Exists => 8,
            KvStatus::NotFound => 9,
            KvStatus::Deleted => 10,
            KvStatus::Touched => 11,
            KvStatus::Number(_) => 12,
            KvStatus::NonNumeric => 13,
            KvStatus::OutOfMemory => 14,
            KvStatus::Done => 15,
            KvStatus::Stats => 16,
        }
    }

    fn fields_len(&self) -> usize {
        match self {
            KvStatus::Value { .. } => 12,
            KvStatus::Streaming { .. } => 20,
            KvStatus::Number(_) => 8,
            _ => 0,
        }
    }

    fn write_fields(&self, writer: &mut Writer<'_>) {
        match *self {
            KvStatus::Value { flags, cas } => {
                writer.u32(flags);
                writer.u64(cas);
            }
            KvStatus::Streaming {
                flags,
                cas,
                pin,
                total,
            } => {
                writer.u32(flags);
                writer.u64(cas);
                writer.u32(pin);
                writer.u32(total);
            }
            KvStatus::Number(value) => writer.u64(value),
            _ => {}
        }
    }

    fn read(code: u8, reader: &mut Reader<'_>) -> Result<Self, MessageError> {
        Ok(match code {
            1 => KvStatus::Value {
                flags: reader.u32()?,
                cas: reader.u64()?,
            },
            2 => KvStatus::Streaming {
                flags: reader.u32()?,
                cas: reader.u64()?,
                pin: reader.u32()?,
                total: reader.u32()?,
            },
            3 => KvStatus::Chunk,
            4 => KvStatus::PinGone,
            5 => KvStatus::Miss,
            6 => KvStatus::Stored,
            7 => KvStatus::NotStored,
            8 => KvStatus::Exists,
            9 => KvStatus::NotFound,
            10 => KvStatus::Deleted,
            11 => KvStatus::Touched,
            12 => KvStatus::Number(reader.u64()?),
            13 => KvStatus::NonNumeric,
            14 => KvStatus::OutOfMemory,
            15 => KvStatus::Done,
            16 => KvStatus::Stats,
            other => return Err(MessageError::BadTag(other)),
        })
    }
}

/// The key and value lengths of a key-value message, checked against memcached's limits.
fn kv_lengths(key: &[u8], value: &[u8]) -> Result<(u8, u32), MessageError> {
    if key.len() > MAX_KEY || value.len() > MAX_KV_VALUE {
        return Err(MessageError::BadField);
    }
    Ok((key.len() as u8, value.len() as u32))
}

impl<'a> PeerMessage<'a> {
    /// Bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            PeerMessage::Neighbour(_) => 12,
            PeerMessage::Frame(frame) => 4 + frame.len(),
            PeerMessage::KvRequest(request) => {
                KV_HEADER
                    + request.operation.arguments_len()
                    + request.key.len()
                    + request.value.len()
            }
            PeerMessage::KvReply(reply) => {
                KV_HEADER + reply.status.fields_len() + reply.key.len() + reply.value.len()
            }
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
        let mut writer = Writer { out, at: 0 };
        match self {
            PeerMessage::Neighbour(entry) => {
                writer.u8(1);
                writer.u8(0);
                writer.bytes(&entry.ip);
                writer.bytes(&entry.mac);
            }
            PeerMessage::Frame(frame) => {
                let frame_length =
                    u16::try_from(frame.len()).map_err(|_| MessageError::BadField)?;
                writer.u8(2);
                writer.u8(0);
                writer.u16(frame_length);
                writer.bytes(frame);
            }
            PeerMessage::KvRequest(request) => {
                let (key_length, value_length) = kv_lengths(request.key, request.value)?;
                writer.u8(3);
                writer.u8(request.operation.code());
                writer.u8(u8::from(request.noreply));
                writer.u8(key_length);
                writer.u16(request.origin);
                writer.u16(request.service);
                writer.u32(request.ticket);
                writer.u32(request.sequence);
                writer.u32(value_length);
                request.operation.write_arguments(&mut writer);
                writer.bytes(request.key);
                writer.bytes(request.value);
            }
            PeerMessage::KvReply(reply) => {
                let (key_length, value_length) = kv_lengths(reply.key, reply.value)?;
                writer.u8(4);
                writer.u8(reply.status.code());
                writer.u8(key_length);
                writer.u8(0);
                writer.u16(reply.owner);
                writer.u16(reply.service);
                writer.u32(reply.ticket);
                writer.u32(reply.sequence);
                writer.u32(value_length);
                reply.status.write_fields(&mut writer);
                writer.bytes(reply.key);
                writer.bytes(reply.value);
            }
        }
        debug_assert_eq!(writer.at, length);
        Ok(length)
    }

    /// Reads a message written by [`Self::encode`]; it borrows from `bytes`. Bytes after the
    /// message are ignored.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let mut reader = Reader { bytes, at: 0 };
        let tag = reader.u8().map_err(|_| MessageError::TooShort)?;
        match tag {
            1 => {
                let _ = reader.u8()?;
                Ok(PeerMessage::Neighbour(NeighbourEntry {
                    ip: reader.array()?,
                    mac: reader.array()?,
                }))
            }
            2 => {
                let _ = reader.u8()?;
                let length = usize::from(reader.u16()?);
                Ok(PeerMessage::Frame(reader.take(length)?))
            }
            3 => {
                let code = reader.u8()?;
                let options = reader.u8()?;
                let key_length = usize::from(reader.u8()?);
                let origin = reader.u16()?;
                let service = reader.u16()?;
                let ticket = reader.u32()?;
                let sequence = reader.u32()?;
                let value_length = reader.u32()? as usize;
                if key_length > MAX_KEY || value_length > MAX_KV_VALUE {
                    return Err(MessageError::BadField);
                }
                let operation = KvOperation::read(code, &mut reader)?;
                Ok(PeerMessage::KvRequest(KvRequest {
                    service,
                    operation,
                    noreply: options & 1 != 0,
                    origin,
                    ticket,
                    sequence,
                    key: reader.take(key_length)?,
                    value: reader.take(value_length)?,
                }))
            }
            4 => {
                let code = reader.u8()?;
                let key_length = usize::from(reader.u8()?);
                let _ = reader.u8()?;
                let owner = reader.u16()?;
                let service = reader.u16()?;
                let ticket = reader.u32()?;
                let sequence = reader.u32()?;
                let value_length = reader.u32()? as usize;
                if key_length > MAX_KEY || value_length > MAX_KV_VALUE {
                    return Err(MessageError::BadField);
                }
                let status = KvStatus::read(code, &mut reader)?;
                Ok(PeerMessage::KvReply(KvReply {
                    service,
                    status,
                    owner,
                    ticket,
                    sequence,
                    key: reader.take(key_length)?,
                    value: reader.take(value_length)?,
                }))
            }
            other => Err(MessageError::BadTag(other)),
        }
    }
}

/// What a core's stack needs from the cross-core channels (the kernel implements it over URPC).
///
/// The receiving kernel hands each message to [`crate::CoreNet::handle_peer_message`] on the
/// destination core. Sending never blocks: a message that finds the channel full waits in a
/// bounded outbox the kernel retries every loop turn; a full outbox is [`PeerError::Full`].
/// Messages from one core to another arrive in the order they were sent (memcached's reply
/// order and `flush_all` rely on it).
pub trait Peers {
    /// Sends `message` to `core`'s stack.
    fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError>;

    /// The longest encoded message [`Self::send`] carries (default: [`MAX_KV_MESSAGE`], a whole
    /// memcached item). memcached sizes the chunks of long values it reads from other cores by
    /// it; a storage command longer than this fails with `SERVER_ERROR`.
    fn max_message(&self) -> usize {
        MAX_KV_MESSAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    fn round_trip(message: PeerMessage<'_>) {
        let mut buffer = vec![0u8; message.encoded_len() + 8];
        let length = message.encode(&mut buffer).unwrap();
        assert_eq!(length, message.encoded_len());
        assert_eq!(PeerMessage::decode(&buffer[..length]).unwrap(), message);
        assert_eq!(
            message.encode(&mut buffer[..length - 1]),
            Err(MessageError::TooShort)
        );
        // Every truncation is an error, never a panic or a shorter message.
        for cut in 0..length {
            assert!(PeerMessage::decode(&buffer[..cut]).is_err(), "cut {cut}");
        }
    }

    fn request(
        operation: KvOperation,
        key: &'static [u8],
        value: &'static [u8],
    ) -> KvRequest<'static> {
        KvRequest {
            service: 11211,
            operation,
            noreply: false,
            origin: 3,
            ticket: 0x0001_0002,
            sequence: 77,
            key,
            value,
        }
    }

    /// One of every operation and every status.
    fn every_operation() -> Vec<KvOperation> {
        let mut operations = vec![
            KvOperation::Delete,
            KvOperation::Stats,
            KvOperation::ResetStats,
            KvOperation::Touch { exptime: -1 },
            KvOperation::Arithmetic {
                increment: true,
                delta: u64::MAX,
            },
            KvOperation::Arithmetic {
                increment: false,
                delta: 1,
            },
            KvOperation::Fetch {
                pin: 0xdead_beef,
                offset: 16384,
                reply_limit: 16384,
            },
            KvOperation::Release { pin: 7 },
            KvOperation::FlushAll { delay: 30 },
        ];
        for cas in [false, true] {
            for touch in [None, Some(100), Some(i32::MIN)] {
                operations.push(KvOperation::Get {
                    cas,
                    touch,
                    reply_limit: 4096,
                });
            }
        }
        for mode in [
            StoreMode::Set,
            StoreMode::Add,
            StoreMode::Replace,
            StoreMode::Append,
            StoreMode::Prepend,
            StoreMode::Cas(u64::MAX - 3),
        ] {
            operations.push(KvOperation::Store {
                mode,
                flags: u32::MAX,
                exptime: 2_592_001,
            });
        }
        operations
    }

    fn every_status() -> Vec<KvStatus> {
        vec![
            KvStatus::Value {
                flags: 42,
                cas: u64::MAX - 1,
            },
            KvStatus::Streaming {
                flags: 1,
                cas: 2,
                pin: 3,
                total: 1 << 20,
            },
            KvStatus::Chunk,
            KvStatus::PinGone,
            KvStatus::Miss,
            KvStatus::Stored,
            KvStatus::NotStored,
            KvStatus::Exists,
            KvStatus::NotFound,
            KvStatus::Deleted,
            KvStatus::Touched,
            KvStatus::Number(u64::MAX),
            KvStatus::NonNumeric,
            KvStatus::OutOfMemory,
            KvStatus::Done,
            KvStatus::Stats,
        ]
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
        for operation in every_operation() {
            round_trip(PeerMessage::KvRequest(request(operation, b"user:42", b"")));
            round_trip(PeerMessage::KvRequest(request(
                operation,
                b"k",
                b"value bytes",
            )));
        }
        for status in every_status() {
            round_trip(PeerMessage::KvReply(KvReply {
                service: 11211,
                status,
                owner: 2,
                ticket: 9,
                sequence: 10,
                key: b"key",
                value: b"value bytes",
            }));
        }
        // A get of a short key fits one slot: the common request stays cheap on the wire.
        let get = PeerMessage::KvRequest(request(
            KvOperation::Get {
                cas: false,
                touch: None,
                reply_limit: 16384,
            },
            b"user:0123456789abcdef0123456789ab",
            b"",
        ));
        assert_eq!(get.encoded_len(), 20 + 4 + 33);
        let short = PeerMessage::KvRequest(request(
            KvOperation::Get {
                cas: false,
                touch: None,
                reply_limit: 16384,
            },
            b"user:1234",
            b"",
        ));
        assert!(short.fits_one_slot());
    }

    #[test]
    fn the_largest_item_fits_the_transport_bound() {
        let key = [b'k'; MAX_KEY];
        let value = vec![7u8; MAX_KV_VALUE];
        let message = PeerMessage::KvRequest(KvRequest {
            service: 11211,
            operation: KvOperation::Store {
                mode: StoreMode::Cas(1),
                flags: 1,
                exptime: 0,
            },
            noreply: true,
            origin: 0,
            ticket: 0,
            sequence: 0,
            key: &key,
            value: &value,
        });
        assert!(message.encoded_len() <= MAX_KV_MESSAGE);
        let mut buffer = vec![0u8; message.encoded_len()];
        message.encode(&mut buffer).unwrap();
        assert_eq!(PeerMessage::decode(&buffer).unwrap(), message);
        // One byte more than memcached's item limit is refused, not truncated.
        let too_long = vec![0u8; MAX_KV_VALUE + 1];
        let message = PeerMessage::KvRequest(KvRequest {
            value: &too_long,
            ..match message {
                PeerMessage::KvRequest(request) => request,
                _ => unreachable!(),
            }
        });
        let mut buffer = vec![0u8; message.encoded_len()];
        assert_eq!(message.encode(&mut buffer), Err(MessageError::BadField));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert_eq!(PeerMessage::decode(&[]), Err(MessageError::TooShort));
        assert_eq!(PeerMessage::decode(&[9]), Err(MessageError::BadTag(9)));
        assert_eq!(
            PeerMessage::decode(&[2, 0, 200, 0, 1]),
            Err(MessageError::TooShort)
        );
        // A header claiming a value longer than 1 MiB is refused before anything is read.
        let mut huge = vec![3, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(PeerMessage::decode(&huge), Err(MessageError::BadField));
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        for length in 0..120 {
            for _ in 0..200 {
                let mut bytes = [0u8; 120];
                for byte in bytes.iter_mut() {
                    *byte = next();
                }
                bytes[0] %= 5;
                bytes[1] %= 21;
                if bytes[0] >= 3 {
                    // Plausible lengths, so that decoding gets past the header now and then.
                    bytes[3] %= 8;
                    bytes[16..20].copy_from_slice(&u32::from(next() % 16).to_le_bytes());
                }
                let _ = PeerMessage::decode(&bytes[..length]);
            }
        }
    }
}
