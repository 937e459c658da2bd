//! A memcached text-protocol server (`get`, `gets`, `set`, `delete`, `version`, `quit`) whose
//! key space is partitioned across cores by a hash of the key.
//!
//! A request for a key this core owns is served from the local store. A request for a key another
//! core owns travels there as a [`KvRequest`] through [`crate::peers::Peers`]; the owner answers
//! with a [`KvReply`]. Each connection keeps a queue of reply parts in request order: a part is
//! either ready bytes or a wait for reply `sequence`, and bytes go to the socket only from the
//! front of the queue, so replies keep request order however the cores answer.
//! Expiry times are accepted and ignored (items live until deleted or replaced).

use super::{AppContext, PeerService, StreamService};
use crate::config::CoreId;
use crate::peers::{KvOperation, KvReply, KvRequest, KvStatus, PeerMessage, MAX_KEY};
use core::fmt::Write;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

extern crate alloc;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

/// Longest command line accepted.
const MAX_LINE: usize = 2048;
/// Most reply parts a connection may have outstanding before it stops reading (back-pressure).
const MAX_PARTS: usize = 256;
/// How long a connection waits for another core's reply before answering an error.
const REMOTE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The core owning `key`: FNV-1a of the key modulo the core count (the same on every core).
pub fn key_owner(key: &[u8], core_count: u16) -> CoreId {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(core_count.max(1))) as CoreId
}

/// Bounds of one core's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most items.
    pub max_items: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
    /// Largest value.
    pub max_value: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_items: 65_536,
            max_bytes: 16 << 20,
            max_value: 64 << 10,
        }
    }
}

struct Item {
    flags: u32,
    cas: u64,
    value: Vec<u8>,
}

/// One core's share of the key space.
pub struct Store {
    items: BTreeMap<Vec<u8>, Item>,
    bytes: usize,
    limits: StoreLimits,
    next_cas: u64,
    core: CoreId,
    core_count: u16,
}

impl Store {
    fn new(limits: StoreLimits) -> Self {
        Self {
            items: BTreeMap::new(),
            bytes: 0,
            limits,
            next_cas: 1,
            core: 0,
            core_count: 1,
        }
    }

    /// Items stored on this core.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is stored on this core.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Performs one operation; the reply borrows the stored value. `ticket` and `sequence` are 0.
    fn execute<'s>(
        &'s mut self,
        operation: KvOperation,
        key: &'s [u8],
        flags: u32,
        value: &[u8],
    ) -> KvReply<'s> {
        let mut reply = KvReply {
            service: 0,
            status: KvStatus::Miss,
            ticket: 0,
            sequence: 0,
            flags: 0,
            cas: 0,
            key,
            value: &[],
        };
        match operation {
            KvOperation::Get | KvOperation::Gets => {
                if let Some(item) = self.items.get(key) {
                    reply.status = KvStatus::Value;
                    reply.flags = item.flags;
                    reply.cas = item.cas;
                    reply.value = &item.value;
                }
            }
            KvOperation::Set => {
                let old = self
                    .items
                    .get(key)
                    .map_or(0, |item| key.len() + item.value.len());
                let new_bytes = self.bytes - old + key.len() + value.len();
                let new_items =
                    self.items.len() + usize::from(old == 0 && !self.items.contains_key(key));
                if value.len() > self.limits.max_value
                    || new_bytes > self.limits.max_bytes
                    || new_items > self.limits.max_items
                {
                    reply.status = KvStatus::OutOfMemory;
                    return reply;
                }
                // Unique across cores: this core's counter, interleaved by core id.
                let cas = self.next_cas * u64::from(self.core_count.max(1)) + u64::from(self.core);
                self.next_cas += 1;
                self.items.insert(
                    key.to_vec(),
                    Item {
                        flags,
                        cas,
                        value: value.to_vec(),
                    },
                );
                self.bytes = new_bytes;
                reply.status = KvStatus::Stored;
            }
            KvOperation::Delete => {
                if let Some(item) = self.items.remove(key) {
                    self.bytes -= key.len() + item.value.len();
                    reply.status = KvStatus::Deleted;
                } else {
                    reply.status = KvStatus::NotFound;
                }
            }
        }
        reply
    }
}

/// Formats the client-visible reply for `reply` to `operation`.
fn format_reply(operation: KvOperation, reply: &KvReply<'_>, out: &mut Vec<u8>) {
    match reply.status {
        KvStatus::Value => {
            let mut line = String::new();
            let _ = match operation {
                KvOperation::Gets => write!(
                    line,
                    " {} {} {}\r\n",
                    reply.flags,
                    reply.value.len(),
                    reply.cas
                ),
                _ => write!(line, " {} {}\r\n", reply.flags, reply.value.len()),
            };
            out.extend_from_slice(b"VALUE ");
            out.extend_from_slice(reply.key);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(reply.value);
            out.extend_from_slice(b"\r\n");
        }
        KvStatus::Miss => {}
        KvStatus::Stored => out.extend_from_slice(b"STORED\r\n"),
        KvStatus::Deleted => out.extend_from_slice(b"DELETED\r\n"),
        KvStatus::NotFound => out.extend_from_slice(b"NOT_FOUND\r\n"),
        KvStatus::OutOfMemory => {
            out.extend_from_slice(b"SERVER_ERROR out of memory storing object\r\n")
        }
    }
}

enum Part {
    Ready(Vec<u8>),
    Waiting {
        sequence: u32,
        operation: KvOperation,
        deadline: Instant,
    },
}

#[derive(Default)]
struct Connection {
    generation: u16,
    input: Vec<u8>,
    parts: VecDeque<Part>,
    output: Vec<u8>,
    sent: usize,
    next_sequence: u32,
    /// Bytes of an oversized value still to discard.
    discard: usize,
    quit: bool,
}

impl Connection {
    fn push_ready(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.parts.is_empty() {
            self.output.extend_from_slice(bytes);
        } else if let Some(Part::Ready(tail)) = self.parts.back_mut() {
            tail.extend_from_slice(bytes);
        } else {
            self.parts.push_back(Part::Ready(bytes.to_vec()));
        }
    }
}

/// What one parsed command line asks.
enum Command<'a> {
    Get {
        gets: bool,
        keys: &'a [u8],
    },
    Set {
        key: &'a [u8],
        flags: u32,
        bytes: usize,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Version,
    Quit,
}

/// Why a command line is rejected.
enum ParseError {
    /// Unknown command: `ERROR`.
    Unknown,
    /// Malformed arguments: `CLIENT_ERROR bad command line format`.
    BadFormat,
}

fn parse_number<T: core::str::FromStr>(token: &[u8]) -> Result<T, ParseError> {
    core::str::from_utf8(token)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ParseError::BadFormat)
}

fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && key.iter().all(|byte| *byte > b' ' && *byte != 0x7f)
}

fn parse_line(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let mut tokens = line
        .split(|byte| *byte == b' ')
        .filter(|token| !token.is_empty());
    let command = tokens.next().ok_or(ParseError::Unknown)?;
    match command {
        b"get" | b"gets" => {
            let start = line
                .iter()
                .position(|b| *b == b' ')
                .ok_or(ParseError::Unknown)?;
            let keys = &line[start..];
            let mut count = 0;
            for key in keys
                .split(|byte| *byte == b' ')
                .filter(|token| !token.is_empty())
            {
                if !valid_key(key) {
                    return Err(ParseError::BadFormat);
                }
                count += 1;
            }
            if count == 0 {
                return Err(ParseError::Unknown);
            }
            Ok(Command::Get {
                gets: command == b"gets",
                keys,
            })
        }
        b"set" => {
            let key = tokens.next().ok_or(ParseError::Unknown)?;
            let flags = parse_number(tokens.next().ok_or(ParseError::BadFormat)?)?;
            let _expiry: i64 = parse_number(tokens.next().ok_or(ParseError::BadFormat)?)?;
            let bytes: usize = parse_number(tokens.next().ok_or(ParseError::BadFormat)?)?;
            let noreply = match tokens.next() {
                None => false,
                Some(b"noreply") => true,
                Some(_) => return Err(ParseError::BadFormat),
            };
            if !valid_key(key) || tokens.next().is_some() {
                return Err(ParseError::BadFormat);
            }
            Ok(Command::Set {
                key,
                flags,
                bytes,
                noreply,
            })
        }
        b"delete" => {
            let key = tokens.next().ok_or(ParseError::Unknown)?;
            let noreply = match tokens.next() {
                None => false,
                Some(b"noreply") => true,
                Some(_) => return Err(ParseError::BadFormat),
            };
            if !valid_key(key) || tokens.next().is_some() {
                return Err(ParseError::BadFormat);
            }
            Ok(Command::Delete { key, noreply })
        }
        b"version" => Ok(Command::Version),
        b"quit" => Ok(Command::Quit),
        _ => Err(ParseError::Unknown),
    }
}

/// The memcached server.
pub struct Memcached {
    port: u16,
    store: Store,
    connections: Vec<Connection>,
    /// Requests sent to other cores.
    pub remote_requests: u64,
    /// Requests served for other cores.
    pub served_for_peers: u64,
    /// Requests or replies the peer channel refused.
    pub peer_send_failures: u64,
}

impl Memcached {
    /// A server on `port` with a store bounded by `limits`.
    pub fn new(port: u16, limits: StoreLimits) -> Self {
        Self {
            port,
            store: Store::new(limits),
            connections: Vec::new(),
            remote_requests: 0,
            served_for_peers: 0,
            peer_send_failures: 0,
        }
    }

    /// This core's share of the key space.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&mut self, slot: usize) -> &mut Connection {
        if self.connections.len() <= slot {
            self.connections.resize_with(slot + 1, Connection::default);
        }
        &mut self.connections[slot]
    }

    /// Runs one operation on `key`, here or on its owner; adds its reply part to `slot`.
    #[allow(clippy::too_many_arguments)]
    fn operate(
        &mut self,
        context: &mut AppContext<'_>,
        slot: usize,
        operation: KvOperation,
        key: &[u8],
        flags: u32,
        value: &[u8],
        noreply: bool,
    ) {
        self.store.core = context.core;
        self.store.core_count = context.core_count;
        let owner = key_owner(key, context.core_count);
        if owner == context.core {
            let reply = self.store.execute(operation, key, flags, value);
            if !noreply {
                let mut bytes = Vec::new();
                format_reply(operation, &reply, &mut bytes);
                self.connections[slot].push_ready(&bytes);
            }
            return;
        }
        let connection = &mut self.connections[slot];
        let sequence = connection.next_sequence;
        connection.next_sequence = connection.next_sequence.wrapping_add(1);
        let request = KvRequest {
            service: self.port,
            operation,
            noreply,
            origin: context.core,
            ticket: (slot as u32) << 16 | u32::from(connection.generation),
            sequence,
            flags,
            key,
            value,
        };
        match context.peers.send(owner, &PeerMessage::KvRequest(request)) {
            Ok(()) => {
                self.remote_requests += 1;
                if !noreply {
                    connection.parts.push_back(Part::Waiting {
                        sequence,
                        operation,
                        deadline: context.now + REMOTE_TIMEOUT,
                    });
                }
            }
            Err(_) => {
                self.peer_send_failures += 1;
                // A get may miss (it is a cache); a change must say it failed.
                if !noreply && !matches!(operation, KvOperation::Get | KvOperation::Gets) {
                    connection.push_ready(b"SERVER_ERROR owner core busy\r\n");
                }
            }
        }
    }

    /// Parses and serves every complete command in the connection's input.
    fn serve_input(&mut self, context: &mut AppContext<'_>, slot: usize) {
        let max_value = self.store.limits.max_value;
        loop {
            let connection = &mut self.connections[slot];
            if connection.quit || connection.parts.len() >= MAX_PARTS {
                return;
            }
            if connection.discard > 0 {
                let n = connection.discard.min(connection.input.len());
                connection.input.drain(..n);
                connection.discard -= n;
                if connection.discard > 0 {
                    return;
                }
            }
            let Some(newline) = connection.input.iter().position(|byte| *byte == b'\n') else {
                if connection.input.len() > MAX_LINE {
                    connection.input.clear();
                    connection.push_ready(b"CLIENT_ERROR line too long\r\n");
                    connection.quit = true;
                }
                return;
            };
            let line_end = if newline > 0 && connection.input[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            let input = core::mem::take(&mut connection.input);
            let line = &input[..line_end];
            let mut consumed = newline + 1;
            match parse_line(line) {
                Err(ParseError::Unknown) => self.connections[slot].push_ready(b"ERROR\r\n"),
                Err(ParseError::BadFormat) => {
                    self.connections[slot].push_ready(b"CLIENT_ERROR bad command line format\r\n")
                }
                Ok(Command::Version) => {
                    self.connections[slot].push_ready(b"VERSION 1.6.0-flotilla\r\n")
                }
                Ok(Command::Quit) => self.connections[slot].quit = true,
                Ok(Command::Get { gets, keys }) => {
                    let operation = if gets {
                        KvOperation::Gets
                    } else {
                        KvOperation::Get
                    };
                    for key in keys
                        .split(|byte| *byte == b' ')
                        .filter(|token| !token.is_empty())
                    {
                        self.operate(context, slot, operation, key, 0, &[], false);
                    }
                    self.connections[slot].push_ready(b"END\r\n");
                }
                Ok(Command::Delete { key, noreply }) => {
                    self.operate(context, slot, KvOperation::Delete, key, 0, &[], noreply);
                }
                Ok(Command::Set {
                    key,
                    flags,
                    bytes,
                    noreply,
                }) => {
                    if bytes > max_value {
                        let connection = &mut self.connections[slot];
                        connection.push_ready(b"SERVER_ERROR object too large for cache\r\n");
                        connection.discard = bytes.saturating_add(2);
                    } else if input.len() < consumed + bytes + 2 {
                        // Wait for the whole data block.
                        self.connections[slot].input = input;
                        return;
                    } else {
                        let data = &input[consumed..consumed + bytes];
                        if &input[consumed + bytes..consumed + bytes + 2] != b"\r\n" {
                            self.connections[slot].push_ready(b"CLIENT_ERROR bad data chunk\r\n");
                        } else {
                            self.operate(
                                context,
                                slot,
                                KvOperation::Set,
                                key,
                                flags,
                                data,
                                noreply,
                            );
                        }
                        consumed += bytes + 2;
                    }
                }
            }
            let mut input = input;
            input.drain(..consumed);
            let connection = &mut self.connections[slot];
            // Keep anything that arrived meanwhile after what is left.
            input.append(&mut connection.input);
            connection.input = input;
        }
    }
}

impl StreamService for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn on_open(&mut self, _context: &mut AppContext<'_>, slot: usize) {
        let connection = self.slot(slot);
        let generation = connection.generation.wrapping_add(1);
        *connection = Connection::default();
        connection.generation = generation;
    }

    fn on_close(&mut self, _context: &mut AppContext<'_>, slot: usize) {
        let connection = self.slot(slot);
        let generation = connection.generation;
        *connection = Connection::default();
        connection.generation = generation;
    }

    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        slot: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        self.slot(slot);
        let limit = MAX_LINE + self.store.limits.max_value + 2;
        let connection = &mut self.connections[slot];
        while socket.can_recv() && !connection.quit && connection.input.len() < limit {
            let room = limit - connection.input.len();
            let input = &mut connection.input;
            let taken = socket.recv(|bytes| {
                let n = bytes.len().min(room);
                input.extend_from_slice(&bytes[..n]);
                (n, n)
            });
            if !matches!(taken, Ok(n) if n > 0) {
                break;
            }
        }
        self.serve_input(context, slot);
        let connection = &mut self.connections[slot];
        // Move ready parts from the front into the output; give up on overdue remote replies.
        while let Some(front) = connection.parts.front_mut() {
            match front {
                Part::Ready(bytes) => {
                    connection.output.append(bytes);
                    connection.parts.pop_front();
                }
                Part::Waiting {
                    operation,
                    deadline,
                    ..
                } => {
                    if context.now < *deadline {
                        break;
                    }
                    if !matches!(operation, KvOperation::Get | KvOperation::Gets) {
                        connection
                            .output
                            .extend_from_slice(b"SERVER_ERROR owner core did not answer\r\n");
                    }
                    connection.parts.pop_front();
                }
            }
        }
        if connection.sent < connection.output.len() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&connection.output[connection.sent..]) {
                connection.sent += n;
            }
        }
        if connection.sent == connection.output.len() {
            connection.output.clear();
            connection.sent = 0;
            if connection.parts.is_empty() && (connection.quit || !socket.may_recv()) {
                socket.close();
            }
        }
        if !connection.parts.is_empty() {
            // A reply from another core is awaited: keep polling until it (or the timeout) comes.
            *context.run_again = true;
        }
    }
}

impl PeerService for Memcached {
    fn on_peer_message(&mut self, context: &mut AppContext<'_>, message: &PeerMessage<'_>) {
        match message {
            PeerMessage::KvRequest(request) => {
                self.store.core = context.core;
                self.store.core_count = context.core_count;
                self.served_for_peers += 1;
                let mut reply = self.store.execute(
                    request.operation,
                    request.key,
                    request.flags,
                    request.value,
                );
                if request.noreply {
                    return;
                }
                reply.service = request.service;
                reply.ticket = request.ticket;
                reply.sequence = request.sequence;
                if context
                    .peers
                    .send(request.origin, &PeerMessage::KvReply(reply))
                    .is_err()
                {
                    self.peer_send_failures += 1;
                }
            }
            PeerMessage::KvReply(reply) => {
                let slot = (reply.ticket >> 16) as usize;
                let generation = reply.ticket as u16;
                let Some(connection) = self.connections.get_mut(slot) else {
                    return;
                };
                if connection.generation != generation {
                    return; // The connection closed meanwhile.
                }
                for part in connection.parts.iter_mut() {
                    if let Part::Waiting {
                        sequence,
                        operation,
                        ..
                    } = *part
                    {
                        if sequence == reply.sequence {
                            let mut bytes = Vec::new();
                            format_reply(operation, reply, &mut bytes);
                            *part = Part::Ready(bytes);
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_owner_spreads_and_is_stable() {
        let mut seen = [0u32; 4];
        for n in 0..400u32 {
            let mut key = String::new();
            let _ = write!(key, "key{n}");
            let owner = key_owner(key.as_bytes(), 4);
            assert_eq!(owner, key_owner(key.as_bytes(), 4));
            seen[usize::from(owner)] += 1;
        }
        assert!(seen.iter().all(|count| *count > 50), "{seen:?}");
        assert_eq!(key_owner(b"anything", 1), 0);
    }

    #[test]
    fn store_enforces_limits_and_accounts_bytes() {
        let mut store = Store::new(StoreLimits {
            max_items: 2,
            max_bytes: 20,
            max_value: 8,
        });
        assert_eq!(
            store.execute(KvOperation::Set, b"a", 1, b"1234").status,
            KvStatus::Stored
        );
        assert_eq!(
            store.execute(KvOperation::Set, b"a", 1, b"123456").status,
            KvStatus::Stored
        );
        assert_eq!(
            store
                .execute(KvOperation::Set, b"b", 1, b"123456789")
                .status,
            KvStatus::OutOfMemory
        );
        assert_eq!(
            store.execute(KvOperation::Set, b"b", 1, b"12345678").status,
            KvStatus::Stored
        );
        assert_eq!(
            store.execute(KvOperation::Set, b"c", 1, b"1").status,
            KvStatus::OutOfMemory
        );
        assert_eq!(store.bytes, 1 + 6 + 1 + 8);
        assert_eq!(
            store.execute(KvOperation::Delete, b"a", 0, b"").status,
            KvStatus::Deleted
        );
        assert_eq!(
            store.execute(KvOperation::Delete, b"a", 0, b"").status,
            KvStatus::NotFound
        );
        assert_eq!(store.bytes, 9);
        let hit = store.execute(KvOperation::Get, b"b", 0, b"");
        assert_eq!(
            (hit.status, hit.flags, hit.value),
            (KvStatus::Value, 1, &b"12345678"[..])
        );
    }

    #[test]
    fn parser_accepts_and_rejects() {
        assert!(matches!(
            parse_line(b"get a b c"),
            Ok(Command::Get { gets: false, .. })
        ));
        assert!(matches!(
            parse_line(b"gets a"),
            Ok(Command::Get { gets: true, .. })
        ));
        assert!(matches!(parse_line(b"get"), Err(ParseError::Unknown)));
        assert!(matches!(
            parse_line(b"set k 1 0 5 noreply"),
            Ok(Command::Set {
                bytes: 5,
                noreply: true,
                flags: 1,
                ..
            })
        ));
        assert!(matches!(
            parse_line(b"set k x 0 5"),
            Err(ParseError::BadFormat)
        ));
        assert!(matches!(
            parse_line(b"set k 1 0 -5"),
            Err(ParseError::BadFormat)
        ));
        assert!(matches!(
            parse_line(b"delete k extra"),
            Err(ParseError::BadFormat)
        ));
        assert!(matches!(parse_line(b"bogus"), Err(ParseError::Unknown)));
        assert!(matches!(parse_line(b""), Err(ParseError::Unknown)));
        let long = [b'k'; 251];
        let mut line = b"get ".to_vec();
        line.extend_from_slice(&long);
        assert!(matches!(parse_line(&line), Err(ParseError::BadFormat)));
    }
}
