//! The messages monitors exchange, and their wire encoding (at most [`MESSAGE_BYTES`] bytes, so
//! one message fits the payload of one URPC slot).
//!
//! # Wire format
//! Byte 0 is the tag (1..=23, see [`Message`]'s variants in order); the fields follow in
//! declaration order, little-endian, packed without padding:
//! - a core is one byte (`< MAX_CORES`), a core set eight (bit `i` = core `i`);
//! - a name is a length byte (1..=16) followed by 16 bytes, the unused tail zero;
//! - a region is `base: u64, len: u64`; a transaction id `coordinator: u8, seq: u32`; a binding id
//!   `client: u8, seq: u32`;
//! - a change is a kind byte (1 open port, 2 close port, 3 move flow group) followed by
//!   `proto: u8 (1 TCP, 2 UDP), port: u16` or `group: u16, from: u8, to: u8`.
//!
//! [`Message::decode`] accepts a longer input whose extra bytes are all zero (a whole slot
//! payload) and rejects everything else it does not understand with a [`DecodeError`]; it never
//! panics.

use crate::types::{
    BindingId, Change, CoreId, CoreInfo, CoreSet, Name, Protocol, Region, TxId, NAME_BYTES,
};

/// Largest encoded message, in bytes: the payload of a URPC slot.
pub const MESSAGE_BYTES: usize = 56;

/// Number of counters each core reports in a statistics gathering.
pub const COUNTERS: usize = 24;

/// Number of counters carried by one [`Message::StatsReply`].
pub const COUNTERS_PER_MESSAGE: usize = 6;

/// Number of [`Message::StatsReply`] messages that carry one core's counters.
pub const COUNTER_CHUNKS: usize = COUNTERS.div_ceil(COUNTERS_PER_MESSAGE);

/// What the name directory answers to a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutcome {
    /// The name now belongs to the registering core (also the answer to a repeated registration).
    Registered,
    /// Another core already owns the name.
    Taken(CoreId),
    /// The directory has no room left.
    DirectoryFull,
}

/// What a server's monitor answers to a binding request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindAnswer {
    /// The server side is prepared; it becomes ready when the client confirms.
    Accepted,
    /// No service of that name is registered on the server's core.
    NoSuchName,
    /// The server's monitor has no room for another binding.
    NoCapacity,
}

/// A participant's vote on a prepared change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vote {
    /// The change can be applied here; the participant holds it prepared.
    Yes,
    /// The change cannot be applied here; the transaction must abort.
    No,
}

/// What a core knows of a transaction (the answer of the termination protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxState {
    /// The core never took part in it (or has forgotten it).
    Unknown,
    /// The core voted yes and does not know the outcome.
    Prepared,
    /// The core voted no.
    VotedNo,
    /// The core applied the change.
    Committed,
    /// The core knows the transaction aborted.
    Aborted,
}

/// A message between two monitors. The sender is not carried: the channel a message arrives on
/// names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// Boot: "I am up, and this is what I have" (sent to every expected peer until acknowledged).
    Hello(CoreInfo),
    /// Boot: acknowledges a [`Message::Hello`].
    HelloAck,
    /// Boot: the leader has heard from every expected core; `members` is the machine.
    BootComplete {
        /// The cores that came up and are not failed.
        members: CoreSet,
    },
    /// Boot: acknowledges a [`Message::BootComplete`].
    BootCompleteAck,
    /// Failure detection: "I am alive"; carries the sender's failure verdicts (gossip).
    Heartbeat {
        /// Every core the sender has declared failed.
        failed: CoreSet,
    },
    /// Names: register `name` for the sender's core with the directory.
    Register {
        /// The service name.
        name: Name,
    },
    /// Names: the directory's answer to [`Message::Register`].
    RegisterReply {
        /// The name asked about.
        name: Name,
        /// The outcome.
        outcome: RegisterOutcome,
    },
    /// Names: which core owns `name`?
    Lookup {
        /// Chosen by the asker to match the reply.
        request: u32,
        /// The service name.
        name: Name,
    },
    /// Names: the directory's answer to [`Message::Lookup`].
    LookupReply {
        /// The request being answered.
        request: u32,
        /// The owning core, if the name is registered.
        owner: Option<CoreId>,
    },
    /// Binding: the client's monitor asks the server's monitor to set up a channel in `region`
    /// (memory of the client's core).
    BindRequest {
        /// The binding.
        binding: BindingId,
        /// The service asked for.
        name: Name,
        /// The shared region for the channel.
        region: Region,
    },
    /// Binding: the server's answer (re-sent while the server side waits for a decision).
    BindReply {
        /// The binding.
        binding: BindingId,
        /// The answer.
        answer: BindAnswer,
    },
    /// Binding: the client decided the binding holds; the server side becomes ready.
    BindConfirm {
        /// The binding.
        binding: BindingId,
    },
    /// Binding: the client gave up; the server side forgets it.
    BindCancel {
        /// The binding.
        binding: BindingId,
    },
    /// Binding: acknowledges a [`Message::BindConfirm`] (`confirmed`) or a
    /// [`Message::BindCancel`].
    BindAck {
        /// The binding.
        binding: BindingId,
        /// Whether the acknowledged message was a confirmation.
        confirmed: bool,
    },
    /// Agreement: phase one, the coordinator asks for a vote on `change`.
    Prepare {
        /// The transaction.
        tx: TxId,
        /// The change.
        change: Change,
    },
    /// Agreement: a participant's vote.
    VoteReply {
        /// The transaction.
        tx: TxId,
        /// The vote.
        vote: Vote,
    },
    /// Agreement: phase two, the change holds.
    Commit {
        /// The transaction.
        tx: TxId,
    },
    /// Agreement: phase two, the change is dropped.
    Abort {
        /// The transaction.
        tx: TxId,
    },
    /// Agreement: acknowledges a [`Message::Commit`] or [`Message::Abort`].
    DecisionAck {
        /// The transaction.
        tx: TxId,
    },
    /// Agreement, termination protocol: the coordinator failed; what do you know of `tx`?
    ResolveQuery {
        /// The transaction.
        tx: TxId,
        /// The asker's failure verdicts (which include the coordinator).
        failed: CoreSet,
    },
    /// Agreement, termination protocol: the answer.
    ResolveReply {
        /// The transaction.
        tx: TxId,
        /// What the answering core knows.
        state: TxState,
        /// The answerer's failure verdicts.
        failed: CoreSet,
    },
    /// Statistics: send me your counters.
    StatsRequest {
        /// The gathering.
        request: u32,
    },
    /// Statistics: counters `chunk * COUNTERS_PER_MESSAGE ..` of the sender.
    StatsReply {
        /// The gathering.
        request: u32,
        /// Which slice of the counters, `0..COUNTER_CHUNKS`.
        chunk: u8,
        /// The counters (unused tail zero).
        values: [u64; COUNTERS_PER_MESSAGE],
    },
}

/// Why bytes are not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// There are no bytes at all.
    Empty,
    /// The tag byte names no message.
    UnknownTag(u8),
    /// The message is cut short: `needed` bytes, only `available`.
    Truncated {
        /// The tag byte.
        tag: u8,
        /// Bytes the message needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The field at byte `offset` holds a value outside its range (a core id, a length, an
    /// enumeration code).
    InvalidValue {
        /// The tag byte.
        tag: u8,
        /// Offset of the bad field.
        offset: usize,
    },
    /// Bytes after the message are not zero.
    TrailingBytes {
        /// The tag byte.
        tag: u8,
        /// Length of the message proper.
        length: usize,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const BOOT_COMPLETE: u8 = 3;
    pub const BOOT_COMPLETE_ACK: u8 = 4;
    pub const HEARTBEAT: u8 = 5;
    pub const REGISTER: u8 = 6;
    pub const REGISTER_REPLY: u8 = 7;
    pub const LOOKUP: u8 = 8;
    pub const LOOKUP_REPLY: u8 = 9;
    pub const BIND_REQUEST: u8 = 10;
    pub const BIND_REPLY: u8 = 11;
    pub const BIND_CONFIRM: u8 = 12;
    pub const BIND_CANCEL: u8 = 13;
    pub const BIND_ACK: u8 = 14;
    pub const PREPARE: u8 = 15;
    pub const VOTE: u8 = 16;
    pub const COMMIT: u8 = 17;
    pub const ABORT: u8 = 18;
    pub const DECISION_ACK: u8 = 19;
    pub const RESOLVE_QUERY: u8 = 20;
    pub const RESOLVE_REPLY: u8 = 21;
    pub const STATS_REQUEST: u8 = 22;
    pub const STATS_REPLY: u8 = 23;
}

/// Sequential little-endian writer into a slot payload. Every message fits by construction (the
/// largest is 54 bytes, checked by a test), so writes never run out of room.
struct Writer<'a> {
    out: &'a mut [u8; MESSAGE_BYTES],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
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
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
    fn core(&mut self, core: CoreId) {
        self.u8(core.as_u8());
    }
    fn set(&mut self, set: CoreSet) {
        self.u64(set.bits());
    }
    fn name(&mut self, name: &Name) {
        let mut padded = [0u8; NAME_BYTES];
        padded[..name.as_bytes().len()].copy_from_slice(name.as_bytes());
        self.u8(name.as_bytes().len() as u8);
        self.bytes(&padded);
    }
    fn region(&mut self, region: Region) {
        self.u64(region.base);
        self.u64(region.len);
    }
    fn tx(&mut self, tx: TxId) {
        self.core(tx.coordinator);
        self.u32(tx.seq);
    }
    fn binding(&mut self, binding: BindingId) {
        self.core(binding.client);
        self.u32(binding.seq);
    }
    fn change(&mut self, change: &Change) {
        let proto_code = |proto| match proto {
            Protocol::Tcp => 1,
            Protocol::Udp => 2,
        };
        match *change {
            Change::OpenPort { proto, port } => {
                self.u8(1);
                self.u8(proto_code(proto));
                self.u16(port);
            }
            Change::ClosePort { proto, port } => {
                self.u8(2);
                self.u8(proto_code(proto));
                self.u16(port);
            }
            Change::MoveFlowGroup { group, from, to } => {
                self.u8(3);
                self.u16(group);
                self.core(from);
                self.core(to);
            }
        }
    }
}

/// Sequential little-endian reader with typed errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos + count;
        if end > self.bytes.len() {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                needed: end,
                available: self.bytes.len(),
            });
        }
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn invalid(&self, width: usize) -> DecodeError {
        DecodeError::InvalidValue {
            tag: self.tag,
            offset: self.pos - width,
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(b);
        Ok(u64::from_le_bytes(array))
    }
    fn core(&mut self) -> Result<CoreId, DecodeError> {
        let raw = self.u8()?;
        CoreId::new(raw).ok_or(self.invalid(1))
    }
    fn set(&mut self) -> Result<CoreSet, DecodeError> {
        Ok(CoreSet::from_bits(self.u64()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid(1)),
        }
    }
    fn name(&mut self) -> Result<Name, DecodeError> {
        let len = self.u8()? as usize;
        let len_offset = self.pos - 1;
        let padded = self.take(NAME_BYTES)?;
        if len == 0 || len > NAME_BYTES || padded[len..].iter().any(|&b| b != 0) {
            return Err(DecodeError::InvalidValue {
                tag: self.tag,
                offset: len_offset,
            });
        }
        Name::new(&padded[..len]).map_err(|_| DecodeError::InvalidValue {
            tag: self.tag,
            offset: len_offset,
        })
    }
    fn region(&mut self) -> Result<Region, DecodeError> {
        Ok(Region {
            base: self.u64()?,
            len: self.u64()?,
        })
    }
    fn tx(&mut self) -> Result<TxId, DecodeError> {
        Ok(TxId {
            coordinator: self.core()?,
            seq: self.u32()?,
        })
    }
    fn binding(&mut self) -> Result<BindingId, DecodeError> {
        Ok(BindingId {
            client: self.core()?,
            seq: self.u32()?,
        })
    }
    fn proto(&mut self) -> Result<Protocol, DecodeError> {
        match self.u8()? {
            1 => Ok(Protocol::Tcp),
            2 => Ok(Protocol::Udp),
            _ => Err(self.invalid(1)),
        }
    }
    fn change(&mut self) -> Result<Change, DecodeError> {
        match self.u8()? {
            1 => Ok(Change::OpenPort {
                proto: self.proto()?,
                port: self.u16()?,
            }),
            2 => Ok(Change::ClosePort {
                proto: self.proto()?,
                port: self.u16()?,
            }),
            3 => Ok(Change::MoveFlowGroup {
                group: self.u16()?,
                from: self.core()?,
                to: self.core()?,
            }),
            _ => Err(self.invalid(1)),
        }
    }
}

impl Message {
    /// Writes the message into `out` and returns its length (at most [`MESSAGE_BYTES`]); bytes of
    /// `out` past the length are left as they were.
    pub fn encode(&self, out: &mut [u8; MESSAGE_BYTES]) -> usize {
        let mut w = Writer { out, len: 0 };
        match self {
            Message::Hello(info) => {
                w.u8(tag::HELLO);
                w.core(info.core);
                w.u32(info.apic_id);
                w.u16(info.numa_node);
                w.region(info.memory);
            }
            Message::HelloAck => w.u8(tag::HELLO_ACK),
            Message::BootComplete { members } => {
                w.u8(tag::BOOT_COMPLETE);
                w.set(*members);
            }
            Message::BootCompleteAck => w.u8(tag::BOOT_COMPLETE_ACK),
            Message::Heartbeat { failed } => {
                w.u8(tag::HEARTBEAT);
                w.set(*failed);
            }
            Message::Register { name } => {
                w.u8(tag::REGISTER);
                w.name(name);
            }
            Message::RegisterReply { name, outcome } => {
                w.u8(tag::REGISTER_REPLY);
                w.name(name);
                match outcome {
                    RegisterOutcome::Registered => {
                        w.u8(0);
                        w.u8(0);
                    }
                    RegisterOutcome::Taken(owner) => {
                        w.u8(1);
                        w.core(*owner);
                    }
                    RegisterOutcome::DirectoryFull => {
                        w.u8(2);
                        w.u8(0);
                    }
                }
            }
            Message::Lookup { request, name } => {
                w.u8(tag::LOOKUP);
                w.u32(*request);
                w.name(name);
            }
            Message::LookupReply { request, owner } => {
                w.u8(tag::LOOKUP_REPLY);
                w.u32(*request);
                match owner {
                    Some(core) => {
                        w.u8(1);
                        w.core(*core);
                    }
                    None => {
                        w.u8(0);
                        w.u8(0);
                    }
                }
            }
            Message::BindRequest {
                binding,
                name,
                region,
            } => {
                w.u8(tag::BIND_REQUEST);
                w.binding(*binding);
                w.name(name);
                w.region(*region);
            }
            Message::BindReply { binding, answer } => {
                w.u8(tag::BIND_REPLY);
                w.binding(*binding);
                w.u8(match answer {
                    BindAnswer::Accepted => 0,
                    BindAnswer::NoSuchName => 1,
                    BindAnswer::NoCapacity => 2,
                });
            }
            Message::BindConfirm { binding } => {
                w.u8(tag::BIND_CONFIRM);
                w.binding(*binding);
            }
            Message::BindCancel { binding } => {
                w.u8(tag::BIND_CANCEL);
                w.binding(*binding);
            }
            Message::BindAck { binding, confirmed } => {
                w.u8(tag::BIND_ACK);
                w.binding(*binding);
                w.u8(*confirmed as u8);
            }
            Message::Prepare { tx, change } => {
                w.u8(tag::PREPARE);
                w.tx(*tx);
                w.change(change);
            }
            Message::VoteReply { tx, vote } => {
                w.u8(tag::VOTE);
                w.tx(*tx);
                w.u8(matches!(vote, Vote::Yes) as u8);
            }
            Message::Commit { tx } => {
                w.u8(tag::COMMIT);
                w.tx(*tx);
            }
            Message::Abort { tx } => {
                w.u8(tag::ABORT);
                w.tx(*tx);
            }
            Message::DecisionAck { tx } => {
                w.u8(tag::DECISION_ACK);
                w.tx(*tx);
            }
            Message::ResolveQuery { tx, failed } => {
                w.u8(tag::RESOLVE_QUERY);
                w.tx(*tx);
                w.set(*failed);
            }
            Message::ResolveReply { tx, state, failed } => {
                w.u8(tag::RESOLVE_REPLY);
                w.tx(*tx);
                w.u8(match state {
                    TxState::Unknown => 0,
                    TxState::Prepared => 1,
                    TxState::VotedNo => 2,
                    TxState::Committed => 3,
                    TxState::Aborted => 4,
                });
                w.set(*failed);
            }
            Message::StatsRequest { request } => {
                w.u8(tag::STATS_REQUEST);
                w.u32(*request);
            }
            Message::StatsReply {
                request,
                chunk,
                values,
            } => {
                w.u8(tag::STATS_REPLY);
                w.u32(*request);
                w.u8(*chunk);
                for value in values {
                    w.u64(*value);
                }
            }
        }
        w.len
    }

    /// Reads a message from `bytes` (exactly one message, optionally followed by zero padding).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let Some(&first) = bytes.first() else {
            return Err(DecodeError::Empty);
        };
        let mut r = Reader {
            bytes,
            pos: 1,
            tag: first,
        };
        let message = match first {
            tag::HELLO => Message::Hello(CoreInfo {
                core: r.core()?,
                apic_id: r.u32()?,
                numa_node: r.u16()?,
                memory: r.region()?,
            }),
            tag::HELLO_ACK => Message::HelloAck,
            tag::BOOT_COMPLETE => Message::BootComplete { members: r.set()? },
            tag::BOOT_COMPLETE_ACK => Message::BootCompleteAck,
            tag::HEARTBEAT => Message::Heartbeat { failed: r.set()? },
            tag::REGISTER => Message::Register { name: r.name()? },
            tag::REGISTER_REPLY => {
                let name = r.name()?;
                let code = r.u8()?;
                let outcome = match code {
                    0 => RegisterOutcome::Registered,
                    1 => RegisterOutcome::Taken(r.core()?),
                    2 => RegisterOutcome::DirectoryFull,
                    _ => return Err(r.invalid(1)),
                };
                if code != 1 && r.u8()? != 0 {
                    return Err(r.invalid(1));
                }
                Message::RegisterReply { name, outcome }
            }
            tag::LOOKUP => Message::Lookup {
                request: r.u32()?,
                name: r.name()?,
            },
            tag::LOOKUP_REPLY => {
                let request = r.u32()?;
                let owner = if r.bool()? {
                    Some(r.core()?)
                } else if r.u8()? != 0 {
                    return Err(r.invalid(1));
                } else {
                    None
                };
                Message::LookupReply { request, owner }
            }
            tag::BIND_REQUEST => Message::BindRequest {
                binding: r.binding()?,
                name: r.name()?,
                region: r.region()?,
            },
            tag::BIND_REPLY => {
                let binding = r.binding()?;
                let answer = match r.u8()? {
                    0 => BindAnswer::Accepted,
                    1 => BindAnswer::NoSuchName,
                    2 => BindAnswer::NoCapacity,
                    _ => return Err(r.invalid(1)),
                };
                Message::BindReply { binding, answer }
            }
            tag::BIND_CONFIRM => Message::BindConfirm {
                binding: r.binding()?,
            },
            tag::BIND_CANCEL => Message::BindCancel {
                binding: r.binding()?,
            },
            tag::BIND_ACK => Message::BindAck {
                binding: r.binding()?,
                confirmed: r.bool()?,
            },
            tag::PREPARE => Message::Prepare {
                tx: r.tx()?,
                change: r.change()?,
            },
            tag::VOTE => Message::VoteReply {
                tx: r.tx()?,
                vote: if r.bool()? { Vote::Yes } else { Vote::No },
            },
            tag::COMMIT => Message::Commit { tx: r.tx()? },
            tag::ABORT => Message::Abort { tx: r.tx()? },
            tag::DECISION_ACK => Message::DecisionAck { tx: r.tx()? },
            tag::RESOLVE_QUERY => Message::ResolveQuery {
                tx: r.tx()?,
                failed: r.set()?,
            },
            tag::RESOLVE_REPLY => {
                let tx = r.tx()?;
                let state = match r.u8()? {
                    0 => TxState::Unknown,
                    1 => TxState::Prepared,
                    2 => TxState::VotedNo,
                    3 => TxState::Committed,
                    4 => TxState::Aborted,
                    _ => return Err(r.invalid(1)),
                };
                Message::ResolveReply {
                    tx,
                    state,
                    failed: r.set()?,
                }
            }
            tag::STATS_REQUEST => Message::StatsRequest { request: r.u32()? },
            tag::STATS_REPLY => {
                let request = r.u32()?;
                let chunk = r.u8()?;
                if chunk as usize >= COUNTER_CHUNKS {
                    return Err(r.invalid(1));
                }
                let mut values = [0u64; COUNTERS_PER_MESSAGE];
                for value in &mut values {
                    *value = r.u64()?;
                }
                Message::StatsReply {
                    request,
                    chunk,
                    values,
                }
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if bytes[r.pos..].iter().any(|&b| b != 0) {
            return Err(DecodeError::TrailingBytes {
                tag: first,
                length: r.pos,
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(i: u8) -> CoreId {
        CoreId::new(i).unwrap()
    }

    /// One instance of every variant (and of every sub-variant), with distinctive field values.
    pub(crate) fn samples() -> Vec<Message> {
        let name = Name::new(b"memcached-proto!").unwrap();
        let short = Name::new(b"e").unwrap();
        let tx = TxId {
            coordinator: core(63),
            seq: 0xdead_beef,
        };
        let binding = BindingId {
            client: core(7),
            seq: u32::MAX,
        };
        let failed = CoreSet::from_bits(0x8000_0000_0000_0005);
        let mut messages = vec![
            Message::Hello(CoreInfo {
                core: core(3),
                apic_id: 0x0102_0304,
                numa_node: 0xabcd,
                memory: Region {
                    base: 0x1_0000_0000,
                    len: 0x4000_0000,
                },
            }),
            Message::HelloAck,
            Message::BootComplete {
                members: CoreSet::first(64),
            },
            Message::BootCompleteAck,
            Message::Heartbeat { failed },
            Message::Register { name },
            Message::Lookup {
                request: 9,
                name: short,
            },
            Message::LookupReply {
                request: 9,
                owner: Some(core(2)),
            },
            Message::LookupReply {
                request: 10,
                owner: None,
            },
            Message::BindRequest {
                binding,
                name,
                region: Region {
                    base: u64::MAX,
                    len: 8192,
                },
            },
            Message::BindConfirm { binding },
            Message::BindCancel { binding },
            Message::BindAck {
                binding,
                confirmed: true,
            },
            Message::BindAck {
                binding,
                confirmed: false,
            },
            Message::VoteReply {
                tx,
                vote: Vote::Yes,
            },
            Message::VoteReply { tx, vote: Vote::No },
            Message::Commit { tx },
            Message::Abort { tx },
            Message::DecisionAck { tx },
            Message::ResolveQuery { tx, failed },
            Message::StatsRequest { request: 77 },
            Message::StatsReply {
                request: 77,
                chunk: 1,
                values: [1, 2, 3, u64::MAX, 0, 6],
            },
        ];
        for outcome in [
            RegisterOutcome::Registered,
            RegisterOutcome::Taken(core(4)),
            RegisterOutcome::DirectoryFull,
        ] {
            messages.push(Message::RegisterReply { name, outcome });
        }
        for answer in [
            BindAnswer::Accepted,
            BindAnswer::NoSuchName,
            BindAnswer::NoCapacity,
        ] {
            messages.push(Message::BindReply { binding, answer });
        }
        for change in [
            Change::OpenPort {
                proto: Protocol::Tcp,
                port: 80,
            },
            Change::ClosePort {
                proto: Protocol::Udp,
                port: 65535,
            },
            Change::MoveFlowGroup {
                group: 127,
                from: core(1),
                to: core(62),
            },
        ] {
            messages.push(Message::Prepare { tx, change });
        }
        for state in [
            TxState::Unknown,
            TxState::Prepared,
            TxState::VotedNo,
            TxState::Committed,
            TxState::Aborted,
        ] {
            messages.push(Message::ResolveReply { tx, state, failed });
        }
        messages
    }

    #[test]
    fn every_variant_round_trips_exactly_and_padded() {
        let samples = samples();
        let mut tags = std::collections::BTreeSet::new();
        for message in &samples {
            let mut slot = [0u8; MESSAGE_BYTES];
            let len = message.encode(&mut slot);
            assert!(len <= MESSAGE_BYTES);
            tags.insert(slot[0]);
            assert_eq!(
                Message::decode(&slot[..len]),
                Ok(*message),
                "exact {message:?}"
            );
            assert_eq!(Message::decode(&slot), Ok(*message), "padded {message:?}");
            // Every proper prefix is rejected as truncated, never misread.
            for cut in 1..len {
                assert!(
                    matches!(
                        Message::decode(&slot[..cut]),
                        Err(DecodeError::Truncated { .. })
                    ),
                    "prefix {cut} of {message:?}"
                );
            }
        }
        assert_eq!(tags.len(), 23, "a sample for every tag");
    }

    #[test]
    fn largest_message_fits_a_slot_payload() {
        let largest = samples()
            .iter()
            .map(|m| m.encode(&mut [0u8; MESSAGE_BYTES]))
            .max()
            .unwrap();
        assert_eq!(largest, 54);
    }

    #[test]
    fn malformed_inputs_get_typed_errors() {
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Message::decode(&[0]), Err(DecodeError::UnknownTag(0)));
        assert_eq!(
            Message::decode(&[200, 1, 2]),
            Err(DecodeError::UnknownTag(200))
        );
        // Core id 64 is out of range.
        assert_eq!(
            Message::decode(&[tag::COMMIT, 64, 0, 0, 0, 0]),
            Err(DecodeError::InvalidValue {
                tag: tag::COMMIT,
                offset: 1
            })
        );
        // Non-zero trailing byte.
        assert_eq!(
            Message::decode(&[tag::HELLO_ACK, 0, 1]),
            Err(DecodeError::TrailingBytes {
                tag: tag::HELLO_ACK,
                length: 1
            })
        );
        // Name length 0, and name with garbage after its length.
        let mut slot = [0u8; MESSAGE_BYTES];
        let len = Message::Register {
            name: Name::new(b"ab").unwrap(),
        }
        .encode(&mut slot);
        let mut bad = slot;
        bad[1] = 0;
        assert!(matches!(
            Message::decode(&bad[..len]),
            Err(DecodeError::InvalidValue { .. })
        ));
        let mut bad = slot;
        bad[5] = b'x';
        assert!(matches!(
            Message::decode(&bad[..len]),
            Err(DecodeError::InvalidValue { .. })
        ));
        // Stats chunk out of range.
        let len = Message::StatsReply {
            request: 1,
            chunk: 0,
            values: [0; 6],
        }
        .encode(&mut slot);
        slot[5] = COUNTER_CHUNKS as u8;
        assert!(matches!(
            Message::decode(&slot[..len]),
            Err(DecodeError::InvalidValue { .. })
        ));
    }

    /// Splitmix64: a tiny seeded generator for the fuzz-style tests.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn random_bytes_never_panic_and_what_decodes_reencodes_identically() {
        let mut state = 0x5eed;
        let mut decoded = 0;
        for round in 0..200_000 {
            let len = (next(&mut state) % 60) as usize;
            let mut bytes = [0u8; 60];
            for byte in &mut bytes[..len] {
                *byte = next(&mut state) as u8;
            }
            // Bias half the inputs towards valid tags so the field decoders get exercised.
            if round % 2 == 0 && len > 0 {
                bytes[0] = 1 + (bytes[0] % 23);
            }
            if let Ok(message) = Message::decode(&bytes[..len]) {
                decoded += 1;
                let mut slot = [0u8; MESSAGE_BYTES];
                let n = message.encode(&mut slot);
                assert_eq!(&slot[..n], &bytes[..n]);
                assert_eq!(Message::decode(&slot[..n]), Ok(message));
            }
        }
        assert!(
            decoded > 100,
            "the generator reaches valid messages ({decoded})"
        );
    }

    #[test]
    fn mutated_valid_messages_never_panic() {
        let mut state = 42;
        for message in samples() {
            let mut slot = [0u8; MESSAGE_BYTES];
            let len = message.encode(&mut slot);
            for _ in 0..2_000 {
                let mut bytes = slot;
                let flips = 1 + next(&mut state) % 3;
                for _ in 0..flips {
                    let at = (next(&mut state) % MESSAGE_BYTES as u64) as usize;
                    bytes[at] = next(&mut state) as u8;
                }
                let cut = len.max(1) + (next(&mut state) % 4) as usize;
                let _ = Message::decode(&bytes[..cut.min(MESSAGE_BYTES)]);
            }
        }
    }
}
