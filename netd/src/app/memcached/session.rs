//! One client connection: input bytes in, output bytes and requests to other cores out, replies
//! in request order, bounded memory.
//!
//! The connection keeps a queue of reply *parts* in request order: bytes ready to send, a wait
//! for one other core's reply, a value being read in chunks, or a wait for every living core
//! (`stats`, `flush_all`). Only the front of the queue is written, so replies keep request order
//! however the cores answer. A key this core owns is served at once through the same
//! [`Engine::serve`] another core would use.
//!
//! Memory is bounded without waiting on anything that cannot move:
//! * a value longer than one chunk ([`Settings::chunk`]) is never copied whole: its owner pins it
//!   and the connection fetches one chunk at a time, only when its queued output is below
//!   [`HIGH_WATER`] (so a slow reader holds one chunk, not a megabyte);
//! * the connection stops taking commands (and the caller stops reading its socket, see
//!   [`Session::room`]) while its queued output is at [`HIGH_WATER`] or [`MAX_OUTSTANDING`] remote
//!   replies are awaited; a multi-get resumes at the key where it stopped;
//! * every connection's bytes (input buffer, queued output, one chunk reserved per outstanding
//!   get) are charged to the core's [`Budget`](super::engine::Budget); a get or a data block that
//!   would pass it waits until another connection gives bytes back.
//!
//! Errors and closing follow memcached 1.6: a data block not followed by `\r\n` is `CLIENT_ERROR
//! bad data chunk` and exactly `<bytes> + 2` bytes are consumed; a too-large item is refused and
//! its data swallowed (a `set` also drops the old item); a line over 2048 bytes without a newline
//! closes the connection; `quit` closes once earlier replies are sent.

use super::engine::{Engine, Now};
use super::protocol::{
    self, frame_line, max_value_length, parse, Command, Framed, Rejection, Retrieval, StatsRequest,
};
use super::stats::{self, Stat, StatsBlock};
use crate::config::CoreId;
use crate::peers::{
    KvOperation, KvReply, KvRequest, KvStatus, PeerError, PeerMessage, Peers, StoreMode,
};

extern crate alloc;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// A connection takes no new command while this many output bytes are queued.
pub const HIGH_WATER: usize = 64 * 1024;

/// A connection takes no new command while this many remote replies are awaited.
pub const MAX_OUTSTANDING: usize = 64;

/// Input read ahead while looking for command lines.
const LINE_WINDOW: usize = 16 * 1024;

/// How soon a fetch the channel refused (full) is tried again.
const RETRY_MS: u64 = 1;

/// What the session needs from its core while it runs.
pub struct Env<'a> {
    /// The core's memcached.
    pub engine: &'a mut Engine,
    /// The cross-core channels.
    pub peers: &'a mut dyn Peers,
    /// The time.
    pub now: Now,
    /// Names this connection in replies from other cores (slot and generation).
    pub ticket: u32,
}

/// How to answer a reply that is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A retrieval: `VALUE` lines (with the CAS unique when `cas`).
    Value { cas: bool },
    /// Any other keyed command: one status line.
    Status { arithmetic: bool },
}

/// What a wait for every core answers when complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gathered {
    Stats(StatsRequest),
    Flush,
    Reset,
}

enum Part {
    /// Bytes ready to send.
    Bytes(Vec<u8>),
    /// One remote reply.
    Await {
        sequence: u32,
        owner: CoreId,
        expect: Expect,
        deadline: u64,
    },
    /// A pinned value read in chunks; `offset` bytes were queued already.
    Stream {
        owner: CoreId,
        pin: u32,
        offset: u32,
        total: u32,
        /// The outstanding fetch: its sequence and deadline.
        fetch: Option<(u32, u64)>,
        /// The channel refused the fetch: since when, and when to try again (until the remote
        /// timeout).
        refused_since: Option<(u64, u64)>,
    },
    /// Replies from several cores.
    Gather {
        sequence: u32,
        /// Cores whose reply is awaited.
        pending: u64,
        /// Cores the request still has to be sent to (the channel refused it for now).
        unsent: u64,
        /// The request every core gets.
        operation: KvOperation,
        /// `noreply`: nothing is awaited or answered, but every core must still get it.
        quiet: bool,
        kind: Gathered,
        block: Box<StatsBlock>,
        deadline: u64,
    },
}

/// A multi-get that stopped for backpressure: where its next key is, relative to `start`.
#[derive(Clone, Copy, Debug)]
struct GetCursor {
    kind: Retrieval,
    next: usize,
    end: usize,
    after: usize,
}

/// Why a remote request got no proper answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Refused(PeerError),
    Timeout,
    CoreFailed,
}

/// Whether the channel refused for a moment (its ring, outbox or bulk pool is full): the
/// message is sent again later instead of failing.
pub fn is_transient(error: PeerError) -> bool {
    matches!(error, PeerError::Full | PeerError::BulkExhausted)
}

/// What became of a request [`Session::issue`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Issued {
    /// Served here, sent, or answered with its error: the command is done.
    Done,
    /// The channel is full for now: the command must be run again later, unchanged.
    Deferred,
}

/// Bytes a reply needs besides its value: header, status fields, a longest key.
const REPLY_OVERHEAD: usize = 64 + crate::peers::MAX_KEY;

/// The most value bytes one reply from another core may carry: the engine's setting, or less if
/// the cross-core channel carries less.
fn reply_limit(wanted: usize, peers: &dyn Peers) -> usize {
    wanted.min(peers.max_message().saturating_sub(REPLY_OVERHEAD).max(1))
}

fn failure_line(failure: Failure) -> &'static [u8] {
    match failure {
        Failure::Refused(PeerError::Full) => b"SERVER_ERROR owner core busy\r\n",
        Failure::Refused(PeerError::TooLarge) => {
            b"SERVER_ERROR value too large for the cross-core channel\r\n"
        }
        Failure::Refused(PeerError::NoSuchCore(_)) => b"SERVER_ERROR owner core unreachable\r\n",
        Failure::Refused(PeerError::PeerFenced(_)) => b"SERVER_ERROR owner core failed\r\n",
        Failure::Refused(PeerError::BulkExhausted) => {
            b"SERVER_ERROR out of memory for the cross-core channel\r\n"
        }
        Failure::Timeout => b"SERVER_ERROR owner core did not answer\r\n",
        Failure::CoreFailed => b"SERVER_ERROR owner core failed\r\n",
    }
}

/// One client connection.
#[derive(Default)]
pub struct Session {
    input: Vec<u8>,
    /// Bytes of `input` already consumed.
    start: usize,
    parts: VecDeque<Part>,
    /// Bytes of the front part already written.
    front_sent: usize,
    /// Output bytes queued (in `Bytes` parts, less `front_sent`).
    queued: usize,
    /// Remote replies awaited (`Await` parts and fetches).
    awaiting: usize,
    /// Input bytes of a refused data block still to drop.
    swallow: usize,
    /// A command waits for this many input bytes (from `start`): its data block.
    want: Option<usize>,
    get: Option<GetCursor>,
    next_sequence: u32,
    /// What this session holds in the budget.
    charged: usize,
    /// Waiting for the budget.
    stalled: bool,
    /// No more commands: close once the queue is sent.
    closing: bool,
    /// Close now (a value could not be completed).
    broken: bool,
    /// The cross-core channel refused a request for now: when to run the same command again
    /// (monotonic milliseconds). Until then no command is taken and the socket is not read.
    retry_at: Option<u64>,
    /// When the channel first refused the command now waiting (for how long to keep trying).
    refused_since: Option<u64>,
}

impl Session {
    /// A new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many input bytes the connection takes now; 0 means "do not read the socket" (output
    /// above the bound, waiting for the budget or for other cores, closing).
    pub fn room(&self) -> usize {
        if self.closing
            || self.broken
            || self.stalled
            || self.get.is_some()
            || self.retry_at.is_some()
        {
            return 0;
        }
        let unconsumed = self.input.len() - self.start;
        if self.swallow > 0 {
            return self.swallow.saturating_sub(unconsumed).min(LINE_WINDOW);
        }
        if let Some(want) = self.want {
            return want.saturating_sub(unconsumed);
        }
        if self.congested() {
            return 0;
        }
        let looks_like_get = {
            let rest = &self.input[self.start..];
            let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
            rest.starts_with(b"get") && !rest.contains(&b'\n')
        };
        let window = if looks_like_get {
            protocol::GET_LINE_LIMIT + 1
        } else {
            LINE_WINDOW
        };
        window.saturating_sub(unconsumed)
    }

    /// Takes input bytes, at most [`Self::room`]; returns how many were taken.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.room());
        self.input.extend_from_slice(&bytes[..taken]);
        taken
    }

    /// Bytes to write to the socket now (empty when the front of the queue is not ready).
    pub fn output(&self) -> &[u8] {
        match self.parts.front() {
            Some(Part::Bytes(bytes)) => &bytes[self.front_sent..],
            _ => &[],
        }
    }

    /// `count` bytes of [`Self::output`] were written.
    pub fn sent(&mut self, count: usize) {
        self.front_sent += count;
        self.queued -= count.min(self.queued);
        while let Some(Part::Bytes(bytes)) = self.parts.front() {
            if self.front_sent < bytes.len() {
                break;
            }
            self.front_sent -= bytes.len();
            self.parts.pop_front();
        }
    }

    /// Whether the socket should be closed now.
    pub fn wants_close(&self) -> bool {
        self.broken || (self.closing && self.parts.is_empty())
    }

    /// Whether no reply is queued or awaited and no command is half done: once the client has
    /// closed its side, the connection can close (a partial command left in the input can never
    /// complete; memcached closes on end of input too).
    pub fn is_idle(&self) -> bool {
        self.parts.is_empty() && self.get.is_none()
    }

    /// Whether the connection waits for budget another connection holds.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// The earliest moment (monotonic milliseconds) a remote reply is overdue.
    pub fn next_deadline(&self) -> Option<u64> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Await { deadline, .. } | Part::Gather { deadline, .. } => Some(*deadline),
                Part::Stream {
                    fetch: Some((_, deadline)),
                    ..
                } => Some(*deadline),
                Part::Stream {
                    refused_since: Some((_, retry_at)),
                    ..
                } => Some(*retry_at),
                _ => None,
            })
            .chain(self.retry_at)
            .min()
    }

    fn congested(&self) -> bool {
        self.queued >= HIGH_WATER || self.awaiting >= MAX_OUTSTANDING || self.retry_at.is_some()
    }

    fn next_sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    /// Updates what the session holds in the budget.
    fn recharge(&mut self, engine: &mut Engine) {
        let (inline, chunk) = (engine.settings.inline, engine.settings.chunk);
        let mut first_stream = true;
        let held = self.input.capacity()
            + self
                .parts
                .iter()
                .map(|part| match part {
                    Part::Bytes(bytes) => bytes.capacity(),
                    Part::Await {
                        expect: Expect::Value { .. },
                        ..
                    } => inline,
                    // Only the first stream fetches; the others hold their first chunk only.
                    Part::Stream { .. } => {
                        if core::mem::take(&mut first_stream) {
                            chunk
                        } else {
                            0
                        }
                    }
                    Part::Gather { .. } => core::mem::size_of::<StatsBlock>(),
                    Part::Await { .. } => 0,
                })
                .sum::<usize>();
        engine.budget.recharge(self.charged, held);
        self.charged = held;
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        if let Some(Part::Bytes(tail)) = self.parts.back_mut() {
            tail.extend_from_slice(bytes);
        } else {
            self.parts.push_back(Part::Bytes(bytes.to_vec()));
        }
    }

    /// Parts that replace the one at `index` (or go at the back when `index` is `None`).
    fn place(&mut self, index: Option<usize>, bytes: Vec<u8>, stream: Option<Part>) {
        let Some(index) = index else {
            self.push_bytes(&bytes);
            if let Some(stream) = stream {
                self.parts.push_back(stream);
            }
            return;
        };
        self.parts.remove(index);
        let mut at = index;
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.parts.insert(at, Part::Bytes(bytes));
            at += 1;
        }
        if let Some(stream) = stream {
            self.parts.insert(at, stream);
        }
    }

    /// Runs what the input and the queue allow: streams at the front fetch their next chunk,
    /// then commands are taken until input runs out or backpressure stops them.
    pub fn process(&mut self, env: &mut Env<'_>) {
        self.stalled = false;
        if self.retry_at.is_some_and(|at| at <= env.now.millis) {
            // Run the refused command (or the gather's refused sends) again.
            self.retry_at = None;
            self.send_gathers(env);
            self.complete_gathers(env);
        }
        self.advance_stream(env);
        let input = core::mem::take(&mut self.input);
        self.run_commands(&input, env);
        self.input = input;
        self.prepare_input(env);
        self.advance_stream(env);
        self.recharge(env.engine);
    }

    /// Drops consumed input and makes room for a data block the session waits for.
    fn prepare_input(&mut self, env: &mut Env<'_>) {
        if self.start > 0 && (self.start == self.input.len() || self.start >= LINE_WINDOW) {
            self.input.drain(..self.start);
            self.start = 0;
        }
        if self.input.capacity() > 2 * LINE_WINDOW && self.want.is_none() {
            self.input.shrink_to(LINE_WINDOW.max(self.input.len()));
        }
        let Some(want) = self.want else {
            return;
        };
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        if self.input.capacity() >= want {
            return;
        }
        let grow = want - self.input.capacity();
        if grow > env.engine.budget.available() {
            self.stalled = true;
            env.engine.budget.stalled();
            return;
        }
        if self
            .input
            .try_reserve_exact(want - self.input.len())
            .is_err()
        {
            // The heap cannot hold the block: refuse it as memcached does when it cannot
            // allocate the item, and drop its bytes.
            self.want = None;
            let line_end = self
                .input
                .iter()
                .position(|b| *b == b'\n')
                .map_or(0, |n| n + 1);
            self.input.drain(..line_end);
            self.swallow = want - line_end;
            env.engine.store.counters_mut().count(Stat::StoreNoMemory);
            self.push_bytes(protocol::OUT_OF_MEMORY_STORING);
        }
    }

    fn run_commands(&mut self, input: &[u8], env: &mut Env<'_>) {
        while !self.closing && !self.broken {
            if self.swallow > 0 {
                let available = (input.len() - self.start).min(self.swallow);
                self.start += available;
                self.swallow -= available;
                if self.swallow > 0 {
                    return;
                }
                continue;
            }
            if let Some(cursor) = self.get {
                if !self.continue_get(input, cursor, env) {
                    return;
                }
                continue;
            }
            if self.congested() {
                return;
            }
            let unconsumed = &input[self.start..];
            let (text_end, next) = match frame_line(unconsumed) {
                Framed::Incomplete => return,
                Framed::Close => {
                    self.closing = true;
                    return;
                }
                Framed::Line { text_end, next } => (text_end, next),
            };
            let line = &unconsumed[..text_end];
            match parse(line) {
                Err(Rejection::Reply { line, noreply }) => {
                    if !noreply {
                        self.push_bytes(line);
                    }
                    self.start += next;
                }
                Err(Rejection::Close) => {
                    self.start += next;
                    self.closing = true;
                }
                Ok(command) => {
                    if !self.execute(command, input, text_end, next, env) {
                        return;
                    }
                }
            }
        }
    }

    /// Runs one parsed command; false when it must wait (data block, backpressure).
    fn execute(
        &mut self,
        command: Command<'_>,
        input: &[u8],
        text_end: usize,
        next: usize,
        env: &mut Env<'_>,
    ) -> bool {
        let line_start = self.start;
        match command {
            Command::Retrieve { kind, keys } => {
                let key_offset =
                    keys.text.as_ptr() as usize - input[line_start..].as_ptr() as usize;
                let cursor = GetCursor {
                    kind,
                    next: key_offset,
                    end: text_end,
                    after: next,
                };
                self.get = Some(cursor);
                return self.continue_get(input, cursor, env);
            }
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                bytes,
                noreply,
            } => {
                let total = next + bytes + 2;
                if bytes > max_value_length(key.len(), flags) {
                    // memcached drops the old item rather than leave it readable.
                    if mode == StoreMode::Set
                        && self.issue(env, key, KvOperation::Delete, &[], true, None)
                            == Issued::Deferred
                    {
                        return false;
                    }
                    env.engine.counters.count(Stat::StoreTooLarge);
                    if !noreply {
                        self.push_bytes(protocol::TOO_LARGE);
                    }
                    self.start += next;
                    self.swallow = bytes + 2;
                    return true;
                }
                let unconsumed = &input[line_start..];
                if unconsumed.len() < total {
                    self.want = Some(total);
                    return false;
                }
                self.want = None;
                let data = &unconsumed[next..next + bytes];
                if &unconsumed[next + bytes..total] != b"\r\n" {
                    env.engine.store.counters_mut().count(Stat::CmdSet);
                    if !noreply {
                        self.push_bytes(protocol::BAD_DATA_CHUNK);
                    }
                } else {
                    let operation = KvOperation::Store {
                        mode,
                        flags,
                        exptime,
                    };
                    let expect = Some(Expect::Status { arithmetic: false });
                    if self.issue(env, key, operation, data, noreply, expect) == Issued::Deferred {
                        return false;
                    }
                }
                self.start += total;
            }
            Command::Delete { key, noreply } => {
                let expect = Some(Expect::Status { arithmetic: false });
                if self.issue(env, key, KvOperation::Delete, &[], noreply, expect)
                    == Issued::Deferred
                {
                    return false;
                }
                self.start += next;
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                let expect = Some(Expect::Status { arithmetic: false });
                let operation = KvOperation::Touch { exptime };
                if self.issue(env, key, operation, &[], noreply, expect) == Issued::Deferred {
                    return false;
                }
                self.start += next;
            }
            Command::Arithmetic {
                key,
                increment,
                delta,
                noreply,
            } => {
                let expect = Some(Expect::Status { arithmetic: true });
                let operation = KvOperation::Arithmetic { increment, delta };
                if self.issue(env, key, operation, &[], noreply, expect) == Issued::Deferred {
                    return false;
                }
                self.start += next;
            }
            Command::FlushAll { delay, noreply } => {
                self.gather(
                    env,
                    Gathered::Flush,
                    KvOperation::FlushAll { delay },
                    noreply,
                );
                self.start += next;
            }
            Command::Stats(StatsRequest::Settings) => {
                let engine = &env.engine;
                let settings = stats::Settings {
                    maxbytes: engine.store.limit() as u64
                        * u64::from(engine.partition.live_count()),
                    port: engine.settings.port,
                    threads: engine.partition.live_count(),
                    item_size_max: protocol::ITEM_SIZE_MAX,
                };
                let mut out = Vec::new();
                stats::format_settings(&mut out, &settings);
                self.push_bytes(&out);
                self.start += next;
            }
            Command::Stats(StatsRequest::Reset) => {
                self.gather(env, Gathered::Reset, KvOperation::ResetStats, false);
                self.start += next;
            }
            Command::Stats(request) => {
                self.gather(env, Gathered::Stats(request), KvOperation::Stats, false);
                self.start += next;
            }
            Command::Version => {
                let mut out = Vec::new();
                out.extend_from_slice(b"VERSION ");
                out.extend_from_slice(env.engine.settings.version.as_bytes());
                out.extend_from_slice(b"\r\n");
                self.push_bytes(&out);
                self.start += next;
            }
            Command::Verbosity { noreply } => {
                if !noreply {
                    self.push_bytes(b"OK\r\n");
                }
                self.start += next;
            }
            Command::Quit => {
                self.start += next;
                self.closing = true;
            }
            Command::MetaNoop => {
                env.engine.counters.count(Stat::CmdMeta);
                self.push_bytes(b"MN\r\n");
                self.start += next;
            }
        }
        true
    }

    /// Serves keys of a retrieval from `cursor` on; false if it stopped before the end.
    fn continue_get(&mut self, input: &[u8], mut cursor: GetCursor, env: &mut Env<'_>) -> bool {
        let line = &input[self.start..];
        loop {
            let keys = &line[cursor.next..cursor.end];
            let skip = keys.iter().take_while(|b| **b == b' ').count();
            let keys = &keys[skip..];
            cursor.next += skip;
            if keys.is_empty() {
                break;
            }
            if self.congested() || self.broken {
                self.get = Some(cursor);
                return false;
            }
            if env.engine.budget.available() < env.engine.settings.inline {
                self.stalled = true;
                env.engine.budget.stalled();
                self.get = Some(cursor);
                return false;
            }
            let length = keys.iter().position(|b| *b == b' ').unwrap_or(keys.len());
            let key = &keys[..length];
            let operation = KvOperation::Get {
                cas: cursor.kind.cas,
                touch: cursor.kind.touch,
                reply_limit: reply_limit(env.engine.settings.inline, env.peers) as u32,
            };
            let expect = Some(Expect::Value {
                cas: cursor.kind.cas,
            });
            if self.issue(env, key, operation, &[], false, expect) == Issued::Deferred {
                // The same key again once the channel has room.
                self.get = Some(cursor);
                return false;
            }
            cursor.next += length;
            // Charge what the key took before the next one is admitted.
            self.recharge(env.engine);
        }
        self.push_bytes(b"END\r\n");
        self.start += cursor.after;
        self.get = None;
        true
    }

    /// Sends `operation` on `key` to its owner, or serves it here; `expect` says how to answer
    /// (`None`: no answer).
    fn issue(
        &mut self,
        env: &mut Env<'_>,
        key: &[u8],
        operation: KvOperation,
        value: &[u8],
        noreply: bool,
        expect: Option<Expect>,
    ) -> Issued {
        let expect = if noreply { None } else { expect };
        let owner = env.engine.partition.owner(key);
        let me = env.engine.core;
        let request = KvRequest {
            service: env.engine.settings.port,
            operation,
            noreply: expect.is_none(),
            origin: me,
            ticket: env.ticket,
            sequence: 0,
            key,
            value,
        };
        if owner == me {
            let reply = env.engine.serve(&request, env.now);
            if let Some(expect) = expect {
                let (bytes, stream) = answer(expect, &reply);
                self.place(None, bytes, stream);
            }
            return Issued::Done;
        }
        let sequence = self.next_sequence();
        let request = KvRequest {
            sequence,
            ..request
        };
        match env.peers.send(owner, &PeerMessage::KvRequest(request)) {
            Ok(()) => {
                self.refused_since = None;
                env.engine.counters.count(Stat::RemoteRequests);
                if let Some(expect) = expect {
                    self.awaiting += 1;
                    self.parts.push_back(Part::Await {
                        sequence,
                        owner,
                        expect,
                        deadline: env.now.millis + env.engine.settings.remote_timeout_ms,
                    });
                }
                Issued::Done
            }
            Err(error) if is_transient(error) && self.patient(env) => {
                // Backpressure, not an error: the command stays in the input, the socket is
                // not read, and the connection runs again in RETRY_MS.
                env.engine.counters.count(Stat::PeerSendRetries);
                self.retry_at = Some(env.now.millis + RETRY_MS);
                Issued::Deferred
            }
            Err(error) => {
                self.refused_since = None;
                env.engine.counters.count(Stat::PeerSendFailures);
                if let Some(expect) = expect {
                    let (bytes, _) = failed(expect, Failure::Refused(error));
                    self.place(None, bytes, None);
                }
                Issued::Done
            }
        }
    }

    /// Whether a command the channel keeps refusing is still worth trying again: for as long
    /// as a remote reply may take ([`Settings::remote_timeout_ms`](super::Settings)), counted
    /// from its first refusal (recorded here).
    fn patient(&mut self, env: &Env<'_>) -> bool {
        let since = *self.refused_since.get_or_insert(env.now.millis);
        env.now.millis - since < env.engine.settings.remote_timeout_ms
    }

    /// `flush_all`, `stats`, `stats reset`: this core at once, every other living core by
    /// message; the answer comes when all have answered.
    fn gather(&mut self, env: &mut Env<'_>, kind: Gathered, operation: KvOperation, noreply: bool) {
        let me = env.engine.core;
        let mut block = Box::new(StatsBlock::default());
        let local = KvRequest {
            service: env.engine.settings.port,
            operation,
            noreply,
            origin: me,
            ticket: env.ticket,
            sequence: 0,
            key: &[],
            value: &[],
        };
        if kind == Gathered::Stats(StatsRequest::General)
            || kind == Gathered::Stats(StatsRequest::Flotilla)
        {
            // Before `serve` counts this request; the local block includes this connection.
            block.merge(&env.engine.snapshot());
        } else {
            env.engine.serve(&local, env.now);
        }
        let part = Part::Gather {
            sequence: self.next_sequence(),
            pending: 0,
            unsent: env.engine.partition.live() & !(1u64 << me),
            operation,
            quiet: noreply,
            kind,
            block,
            deadline: env.now.millis + env.engine.settings.remote_timeout_ms,
        };
        self.awaiting += 1;
        self.parts.push_back(part);
        self.send_gathers(env);
        self.complete_gathers(env);
    }

    /// Sends every gather's request to the cores it has not reached yet. A core whose channel
    /// is full for now is tried again in [`RETRY_MS`] (no new command is taken meanwhile, so
    /// that nothing this connection sends later overtakes it), for as long as a remote reply
    /// may take.
    fn send_gathers(&mut self, env: &mut Env<'_>) {
        let (me, port, ticket) = (env.engine.core, env.engine.settings.port, env.ticket);
        let (mut deferred, mut sent_any) = (false, false);
        for index in 0..self.parts.len() {
            let Some(Part::Gather {
                sequence,
                unsent,
                operation,
                quiet,
                ..
            }) = self.parts.get(index)
            else {
                continue;
            };
            let (sequence, operation, quiet) = (*sequence, *operation, *quiet);
            let mut cores = *unsent;
            while cores != 0 {
                let core = cores.trailing_zeros() as CoreId;
                cores &= cores - 1;
                let request = KvRequest {
                    service: port,
                    operation,
                    noreply: quiet,
                    origin: me,
                    ticket,
                    sequence,
                    key: &[],
                    value: &[],
                };
                let sent = env.peers.send(core, &PeerMessage::KvRequest(request));
                let keep = match sent {
                    Ok(()) => {
                        env.engine.counters.count(Stat::RemoteRequests);
                        false
                    }
                    Err(error) if is_transient(error) && self.patient(env) => {
                        env.engine.counters.count(Stat::PeerSendRetries);
                        true
                    }
                    Err(_) => {
                        env.engine.counters.count(Stat::PeerSendFailures);
                        false
                    }
                };
                deferred |= keep;
                sent_any |= !keep;
                if let Some(Part::Gather {
                    pending, unsent, ..
                }) = self.parts.get_mut(index)
                {
                    if !keep {
                        *unsent &= !(1u64 << core);
                    }
                    if sent.is_ok() && !quiet {
                        *pending |= 1u64 << core;
                    }
                }
            }
        }
        if deferred {
            self.retry_at = Some(env.now.millis + RETRY_MS);
        } else if sent_any {
            self.refused_since = None;
        }
    }

    /// Replaces every finished gather with its answer.
    fn complete_gathers(&mut self, env: &mut Env<'_>) {
        let mut index = 0;
        while index < self.parts.len() {
            let done = match &self.parts[index] {
                Part::Gather {
                    pending, unsent, ..
                } => *pending == 0 && *unsent == 0,
                _ => false,
            };
            if !done {
                index += 1;
                continue;
            }
            let Some(Part::Gather {
                kind, block, quiet, ..
            }) = self.parts.get(index)
            else {
                unreachable!()
            };
            let mut out = Vec::new();
            match kind {
                _ if *quiet => {}
                Gathered::Stats(StatsRequest::Flotilla) => stats::format_flotilla(&mut out, block),
                Gathered::Stats(_) => {
                    stats::format_general(&mut out, block, &env.engine.facts(env.now))
                }
                Gathered::Flush => out.extend_from_slice(b"OK\r\n"),
                Gathered::Reset => out.extend_from_slice(b"RESET\r\n"),
            }
            self.awaiting -= 1;
            self.place(Some(index), out, None);
            index += 1;
        }
    }

    /// The first stream in the queue fetches its next chunk when the output allows: a local one
    /// copies chunks until the output is full, a remote one keeps one fetch in flight.
    fn advance_stream(&mut self, env: &mut Env<'_>) {
        let me = env.engine.core;
        let remote_chunk = reply_limit(env.engine.settings.chunk, env.peers);
        loop {
            if self.broken || self.queued >= HIGH_WATER {
                return;
            }
            let Some(index) = self
                .parts
                .iter()
                .position(|part| matches!(part, Part::Stream { .. }))
            else {
                return;
            };
            // Only a stream whose earlier parts are all ready bytes moves.
            if self
                .parts
                .iter()
                .take(index)
                .any(|part| !matches!(part, Part::Bytes(_)))
            {
                return;
            }
            let Some(Part::Stream {
                owner,
                pin,
                offset,
                total,
                fetch,
                refused_since,
            }) = self.parts.get(index)
            else {
                return;
            };
            let (owner, pin, offset, total) = (*owner, *pin, *offset, *total);
            let refused_since = *refused_since;
            if fetch.is_some() || refused_since.is_some_and(|(_, at)| env.now.millis < at) {
                return;
            }
            let chunk = if owner == me {
                env.engine.settings.chunk
            } else {
                remote_chunk
            };
            let request = KvRequest {
                service: env.engine.settings.port,
                operation: KvOperation::Fetch {
                    pin,
                    offset,
                    reply_limit: chunk as u32,
                },
                noreply: false,
                origin: me,
                ticket: env.ticket,
                sequence: 0,
                key: &[],
                value: &[],
            };
            if owner == me {
                let reply = env.engine.serve(&request, env.now);
                self.take_chunk(index, &reply, total);
                continue;
            }
            let sequence = self.next_sequence();
            let request = KvRequest {
                sequence,
                ..request
            };
            match env.peers.send(owner, &PeerMessage::KvRequest(request)) {
                Ok(()) => {
                    env.engine.counters.count(Stat::RemoteRequests);
                    self.awaiting += 1;
                    let deadline = env.now.millis + env.engine.settings.remote_timeout_ms;
                    if let Some(Part::Stream {
                        fetch,
                        refused_since,
                        ..
                    }) = self.parts.get_mut(index)
                    {
                        *fetch = Some((sequence, deadline));
                        *refused_since = None;
                    }
                }
                Err(error) => {
                    let since = refused_since.map_or(env.now.millis, |(since, _)| since);
                    let patient = env.now.millis - since < env.engine.settings.remote_timeout_ms;
                    let retry = is_transient(error) && patient;
                    env.engine.counters.count(if retry {
                        Stat::PeerSendRetries
                    } else {
                        Stat::PeerSendFailures
                    });
                    if retry {
                        // Tried again a little later (the caller wakes at `next_deadline`).
                        if let Some(Part::Stream { refused_since, .. }) = self.parts.get_mut(index)
                        {
                            *refused_since = Some((since, env.now.millis + RETRY_MS));
                        }
                    } else {
                        self.break_stream(env.engine);
                    }
                }
            }
            return;
        }
    }

    /// A chunk for the stream at `index` arrived (or its pin is gone).
    fn take_chunk(&mut self, index: usize, reply: &KvReply<'_>, total: u32) {
        let Some(Part::Stream { offset, fetch, .. }) = self.parts.get_mut(index) else {
            return;
        };
        if reply.status != KvStatus::Chunk || reply.value.is_empty() {
            self.broken = true;
            return;
        }
        *fetch = None;
        *offset += reply.value.len() as u32;
        let finished = *offset >= total;
        let mut bytes = Vec::with_capacity(reply.value.len() + 2);
        bytes.extend_from_slice(reply.value);
        if finished {
            bytes.extend_from_slice(b"\r\n");
            self.place(Some(index), bytes, None);
        } else {
            self.queued += bytes.len();
            self.parts.insert(index, Part::Bytes(bytes));
        }
    }

    fn break_stream(&mut self, engine: &mut Engine) {
        engine.counters.count(Stat::StreamsBroken);
        self.broken = true;
    }

    /// A reply from another core arrived for this connection.
    pub fn on_reply(&mut self, reply: &KvReply<'_>, env: &mut Env<'_>) {
        let Some(index) = self.parts.iter().position(|part| match part {
            Part::Await { sequence, .. } | Part::Gather { sequence, .. } => {
                *sequence == reply.sequence
            }
            Part::Stream {
                fetch: Some((sequence, _)),
                ..
            } => *sequence == reply.sequence,
            _ => false,
        }) else {
            // Late (after a timeout or a failure verdict): a pin it names must not linger.
            if let KvStatus::Streaming { pin, .. } = reply.status {
                self.release_remote(env, reply.owner, pin);
            }
            return;
        };
        match &mut self.parts[index] {
            Part::Await { expect, .. } => {
                let expect = *expect;
                self.awaiting -= 1;
                let (bytes, stream) = answer(expect, reply);
                if matches!(stream, Some(Part::Stream { .. })) {
                    env.engine.counters.count(Stat::StreamedValues);
                }
                self.place(Some(index), bytes, stream);
            }
            Part::Stream { total, .. } => {
                let total = *total;
                self.awaiting -= 1;
                if reply.status != KvStatus::Chunk {
                    self.break_stream(env.engine);
                    return;
                }
                self.take_chunk(index, reply, total);
            }
            Part::Gather { pending, block, .. } => {
                *pending &= !(1u64 << reply.owner.min(63));
                if reply.status == KvStatus::Stats {
                    if let Some(remote) = StatsBlock::decode(reply.value) {
                        block.merge(&remote);
                    }
                }
                self.complete_gathers(env);
            }
            Part::Bytes(_) => {}
        }
        self.advance_stream(env);
        self.recharge(env.engine);
    }

    /// Answers every remote wait that is overdue at `env.now`.
    pub fn expire(&mut self, env: &mut Env<'_>) {
        let now = env.now.millis;
        self.resolve_where(env, Failure::Timeout, |owner, deadline| {
            let _ = owner;
            deadline <= now
        });
    }

    /// The cores in `dead` failed: what this connection waits from them is answered at once (a
    /// miss, `SERVER_ERROR owner core failed`, or closing if a value was half sent).
    pub fn lost_cores(&mut self, dead: u64, env: &mut Env<'_>) {
        self.resolve_where(env, Failure::CoreFailed, |owner, _| {
            owner < 64 && dead & (1 << owner) != 0
        });
        let mut changed = false;
        for part in self.parts.iter_mut() {
            if let Part::Gather {
                pending, unsent, ..
            } = part
            {
                if (*pending | *unsent) & dead != 0 {
                    *pending &= !dead;
                    *unsent &= !dead;
                    changed = true;
                }
            }
        }
        if changed {
            self.complete_gathers(env);
        }
    }

    fn resolve_where(
        &mut self,
        env: &mut Env<'_>,
        failure: Failure,
        hit: impl Fn(CoreId, u64) -> bool,
    ) {
        let mut index = 0;
        while index < self.parts.len() {
            match &mut self.parts[index] {
                Part::Await {
                    owner,
                    expect,
                    deadline,
                    ..
                } if hit(*owner, *deadline) => {
                    let expect = *expect;
                    self.awaiting -= 1;
                    let counter = match failure {
                        Failure::Timeout => Stat::RemoteTimeouts,
                        _ => Stat::LostToFailedCores,
                    };
                    env.engine.counters.count(counter);
                    let (bytes, _) = failed(expect, failure);
                    self.place(Some(index), bytes, None);
                    continue;
                }
                Part::Stream {
                    owner,
                    fetch: Some((_, deadline)),
                    ..
                } if hit(*owner, *deadline) => {
                    self.awaiting -= 1;
                    self.break_stream(env.engine);
                    return;
                }
                Part::Stream {
                    owner, fetch: None, ..
                } if failure == Failure::CoreFailed && hit(*owner, u64::MAX) => {
                    self.break_stream(env.engine);
                    return;
                }
                Part::Gather {
                    pending,
                    unsent,
                    deadline,
                    ..
                } if failure == Failure::Timeout && *deadline <= env.now.millis => {
                    *pending = 0;
                    *unsent = 0;
                }
                _ => {}
            }
            index += 1;
        }
        self.complete_gathers(env);
        self.advance_stream(env);
        self.recharge(env.engine);
    }

    fn release_remote(&mut self, env: &mut Env<'_>, owner: CoreId, pin: u32) {
        let request = KvRequest {
            service: env.engine.settings.port,
            operation: KvOperation::Release { pin },
            noreply: true,
            origin: env.engine.core,
            ticket: env.ticket,
            sequence: 0,
            key: &[],
            value: &[],
        };
        if owner == env.engine.core {
            env.engine.serve(&request, env.now);
        } else if env
            .peers
            .send(owner, &PeerMessage::KvRequest(request))
            .is_err()
        {
            // The pin goes when idle.
            env.engine.counters.count(Stat::PeerSendFailures);
        }
    }

    /// The connection closed: pins it holds are released and its budget given back.
    pub fn close(&mut self, env: &mut Env<'_>) {
        let streams: Vec<(CoreId, u32)> = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Stream { owner, pin, .. } => Some((*owner, *pin)),
                _ => None,
            })
            .collect();
        for (owner, pin) in streams {
            self.release_remote(env, owner, pin);
        }
        self.parts.clear();
        self.input = Vec::new();
        self.start = 0;
        self.queued = 0;
        self.awaiting = 0;
        self.recharge(env.engine);
    }
}

/// The bytes (and a stream, for a long value) that answer `reply`.
fn answer(expect: Expect, reply: &KvReply<'_>) -> (Vec<u8>, Option<Part>) {
    let mut out = Vec::new();
    match (expect, reply.status) {
        (Expect::Value { cas }, KvStatus::Value { flags, cas: unique }) => {
            out.reserve(reply.key.len() + reply.value.len() + 48);
            protocol::value_line(
                &mut out,
                reply.key,
                flags,
                reply.value.len(),
                cas.then_some(unique),
            );
            out.extend_from_slice(reply.value);
            out.extend_from_slice(b"\r\n");
        }
        (
            Expect::Value { cas },
            KvStatus::Streaming {
                flags,
                cas: unique,
                pin,
                total,
            },
        ) => {
            protocol::value_line(
                &mut out,
                reply.key,
                flags,
                total as usize,
                cas.then_some(unique),
            );
            out.extend_from_slice(reply.value);
            let stream = Part::Stream {
                owner: reply.owner,
                pin,
                offset: reply.value.len() as u32,
                total,
                fetch: None,
                refused_since: None,
            };
            return (out, Some(stream));
        }
        (Expect::Value { .. }, _) => {}
        (Expect::Status { arithmetic }, status) => {
            let line: &[u8] = match status {
                KvStatus::Stored => b"STORED\r\n",
                KvStatus::NotStored => b"NOT_STORED\r\n",
                KvStatus::Exists => b"EXISTS\r\n",
                KvStatus::NotFound => b"NOT_FOUND\r\n",
                KvStatus::Deleted => b"DELETED\r\n",
                KvStatus::Touched => b"TOUCHED\r\n",
                KvStatus::NonNumeric => protocol::NON_NUMERIC,
                KvStatus::OutOfMemory if arithmetic => protocol::OUT_OF_MEMORY,
                KvStatus::OutOfMemory => protocol::OUT_OF_MEMORY_STORING,
                KvStatus::Number(value) => {
                    protocol::number_line(&mut out, value);
                    &[]
                }
                _ => b"SERVER_ERROR unexpected reply from owner core\r\n",
            };
            out.extend_from_slice(line);
        }
    }
    (out, None)
}

/// The bytes that answer a request that failed: a miss for a retrieval, an error line otherwise.
fn failed(expect: Expect, failure: Failure) -> (Vec<u8>, Option<Part>) {
    match expect {
        Expect::Value { .. } => (Vec::new(), None),
        Expect::Status { .. } => (failure_line(failure).to_vec(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::memcached::engine::{MemoryLimits, Settings};
    use crate::app::memcached::partition::key_owner;
    extern crate std;
    use std::collections::VecDeque;
    use std::format;
    use std::string::String;
    use std::vec;

    const CORES: u16 = 4;

    /// Messages between the engines of a simulated machine, delivered in order.
    struct Wire<'a> {
        from: CoreId,
        queue: &'a mut VecDeque<(CoreId, CoreId, Vec<u8>)>,
        refuse: bool,
        max_message: usize,
        largest: &'a mut usize,
        /// Fetches still to refuse as if the channel were full.
        refuse_fetches: &'a mut u32,
    }

    impl Peers for Wire<'_> {
        fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError> {
            if self.refuse {
                return Err(PeerError::Full);
            }
            if let PeerMessage::KvRequest(KvRequest {
                operation: KvOperation::Fetch { .. },
                ..
            }) = message
            {
                if *self.refuse_fetches > 0 {
                    *self.refuse_fetches -= 1;
                    return Err(PeerError::Full);
                }
            }
            if message.encoded_len() > self.max_message {
                return Err(PeerError::TooLarge);
            }
            *self.largest = (*self.largest).max(message.encoded_len());
            let mut bytes = vec![0u8; message.encoded_len()];
            message.encode(&mut bytes).unwrap();
            self.queue.push_back((self.from, core, bytes));
            Ok(())
        }

        fn max_message(&self) -> usize {
            self.max_message
        }
    }

    /// A connection on core 0 of a four-core machine; the other cores' engines answer by message.
    struct Mesh {
        engines: Vec<Engine>,
        session: Session,
        queue: VecDeque<(CoreId, CoreId, Vec<u8>)>,
        now: Now,
        /// Messages to these cores vanish (a core that stopped).
        silent: u64,
        refuse: bool,
        closed: bool,
        max_message: usize,
        largest_message: usize,
        refuse_fetches: u32,
    }

    impl Mesh {
        fn new() -> Self {
            Self::with(Settings::default(), 8 << 20)
        }

        fn with(settings: Settings, heap: usize) -> Self {
            let now = Now {
                unix: 1_800_000_000,
                millis: 10_000,
            };
            let limits = MemoryLimits::from_heap(heap, None, CORES);
            Self {
                engines: (0..CORES)
                    .map(|core| Engine::new(core, CORES, limits, settings, now))
                    .collect(),
                session: Session::new(),
                queue: VecDeque::new(),
                now,
                silent: 0,
                refuse: false,
                closed: false,
                max_message: crate::peers::MAX_KV_MESSAGE,
                largest_message: 0,
                refuse_fetches: 0,
            }
        }

        fn env_run(&mut self, run: impl FnOnce(&mut Session, &mut Env<'_>)) {
            let Mesh {
                engines,
                session,
                queue,
                now,
                refuse,
                max_message,
                largest_message,
                refuse_fetches,
                ..
            } = self;
            let mut wire = Wire {
                from: 0,
                queue,
                refuse: *refuse,
                max_message: *max_message,
                largest: largest_message,
                refuse_fetches,
            };
            let mut env = Env {
                engine: &mut engines[0],
                peers: &mut wire,
                now: *now,
                ticket: 0x0001_0001,
            };
            run(session, &mut env);
        }

        /// Delivers messages until none is left; true if any was delivered.
        fn deliver(&mut self) -> bool {
            let mut any = false;
            while let Some((from, to, bytes)) = self.queue.pop_front() {
                any = true;
                if self.silent & (1 << to) != 0 {
                    continue;
                }
                let message = PeerMessage::decode(&bytes).unwrap();
                match message {
                    PeerMessage::KvRequest(request) => {
                        let quiet = request.noreply
                            || matches!(request.operation, KvOperation::Release { .. });
                        let now = self.now;
                        let reply = self.engines[usize::from(to)].serve(&request, now);
                        if !quiet {
                            let length = PeerMessage::KvReply(reply).encoded_len();
                            assert!(length <= self.max_message, "a {length}-byte reply");
                            self.largest_message = self.largest_message.max(length);
                            let mut bytes = vec![0u8; length];
                            PeerMessage::KvReply(reply).encode(&mut bytes).unwrap();
                            self.queue.push_back((to, from, bytes));
                        }
                    }
                    PeerMessage::KvReply(reply) => {
                        assert_eq!(to, 0);
                        self.env_run(|session, env| session.on_reply(&reply, env));
                    }
                    _ => unreachable!(),
                }
            }
            any
        }

        /// Sends `input` (as fast as the session takes it), runs everything to quiet, and returns
        /// what the client reads.
        fn talk(&mut self, input: &[u8]) -> Vec<u8> {
            let mut fed = 0;
            let mut out = Vec::new();
            for _ in 0..100_000 {
                let room = self.session.room();
                let taken = self
                    .session
                    .receive(&input[fed..(fed + room).min(input.len())]);
                fed += taken;
                self.env_run(|session, env| session.process(env));
                let delivered = self.deliver();
                let output = self.session.output().to_vec();
                self.session.sent(output.len());
                out.extend_from_slice(&output);
                if self.session.wants_close() {
                    self.closed = true;
                    break;
                }
                let retry = self.session.is_stalled() && self.engines[0].budget.take_released();
                let more = fed < input.len() && self.session.room() > 0;
                if taken == 0 && !delivered && output.is_empty() && !retry && !more {
                    break;
                }
            }
            out
        }

        fn text(&mut self, input: &str) -> String {
            String::from_utf8(self.talk(input.as_bytes())).unwrap()
        }
    }

    /// A key owned by `core` (of four), distinct per `n`.
    fn key_of(core: CoreId, n: u32) -> String {
        (0..)
            .map(|i| format!("key-{n}-{i}"))
            .find(|key| key_owner(key.as_bytes(), CORES) == core)
            .unwrap()
    }

    #[test]
    fn replies_keep_request_order_across_local_and_remote_keys() {
        let mut mesh = Mesh::new();
        let keys: Vec<String> = (0..CORES).map(|core| key_of(core, 0)).collect();
        let mut request = String::new();
        for (n, key) in keys.iter().enumerate() {
            request += &format!("set {key} {n} 0 3\r\nv{n}!\r\n");
        }
        request += &format!(
            "get {} {} missing {} {}\r\n",
            keys[3], keys[0], keys[2], keys[1]
        );
        request += &format!(
            "delete {}\r\ndelete {}\r\nincr {} 1\r\n",
            keys[2], keys[2], keys[1]
        );
        let reply = mesh.text(&request);
        let expected = format!(
            "STORED\r\nSTORED\r\nSTORED\r\nSTORED\r\n\
             VALUE {k3} 3 3\r\nv3!\r\nVALUE {k0} 0 3\r\nv0!\r\nVALUE {k2} 2 3\r\nv2!\r\n\
             VALUE {k1} 1 3\r\nv1!\r\nEND\r\n\
             DELETED\r\nNOT_FOUND\r\n{non_numeric}",
            k3 = keys[3],
            k0 = keys[0],
            k1 = keys[1],
            k2 = keys[2],
            non_numeric = std::str::from_utf8(protocol::NON_NUMERIC).unwrap()
        );
        assert_eq!(reply, expected);
        // Remote keys went to their owners, and only there.
        for core in 1..CORES {
            assert!(
                mesh.engines[usize::from(core)]
                    .snapshot()
                    .get(Stat::ServedForPeers)
                    > 0
            );
        }
        assert_eq!(mesh.engines[0].store.len(), 1);
    }

    #[test]
    fn every_command_answers_as_memcached_does() {
        let mut mesh = Mesh::new();
        let k = key_of(2, 1);
        let script = [
            (format!("add {k} 5 0 1\r\na\r\n"), "STORED\r\n".to_string()),
            (format!("add {k} 5 0 1\r\nb\r\n"), "NOT_STORED\r\n".into()),
            (format!("append {k} 9 0 2\r\nzz\r\n"), "STORED\r\n".into()),
            (format!("prepend {k} 9 0 1\r\ny\r\n"), "STORED\r\n".into()),
            (format!("get {k}\r\n"), format!("VALUE {k} 5 4\r\nyazz\r\nEND\r\n")),
            (format!("replace {k} 1 0 2\r\n10\r\n"), "STORED\r\n".into()),
            (format!("decr {k} 1\r\n"), "9\r\n".into()),
            (format!("get {k}\r\n"), format!("VALUE {k} 1 2\r\n9 \r\nEND\r\n")),
            (format!("incr {k} 18446744073709551615\r\n"), "8\r\n".into()),
            (format!("decr {k} 100\r\n"), "0\r\n".into()),
            (format!("incr {k} abc\r\n"), "CLIENT_ERROR invalid numeric delta argument\r\n".into()),
            (format!("touch {k} 100\r\n"), "TOUCHED\r\n".into()),
            (format!("touch {k} x\r\n"), "CLIENT_ERROR invalid exptime argument\r\n".into()),
            ("touch missing 1\r\n".into(), "NOT_FOUND\r\n".into()),
            (format!("gat 0 {k} missing\r\n"), format!("VALUE {k} 1 2\r\n0 \r\nEND\r\n")),
            (format!("cas {k} 0 0 1 1\r\nc\r\n"), "EXISTS\r\n".into()),
            ("cas missing 0 0 1 1\r\nc\r\n".into(), "NOT_FOUND\r\n".into()),
            ("replace missing 0 0 1\r\nc\r\n".into(), "NOT_STORED\r\n".into()),
            (format!("delete {k} 0\r\n"), "DELETED\r\n".into()),
            (format!("delete {k} 5\r\n"), std::str::from_utf8(protocol::DELETE_USAGE).unwrap().into()),
            (format!("set {k} 0 0 1 noreply\r\nq\r\nget {k}\r\n"), format!("VALUE {k} 0 1\r\nq\r\nEND\r\n")),
            (format!("set {k} 0 -1 1\r\nq\r\nget {k}\r\n"), "STORED\r\nEND\r\n".into()),
            ("flush_all noreply\r\nflush_all 0\r\nflush_all abc\r\n".into(),
             "OK\r\nCLIENT_ERROR invalid exptime argument\r\n".into()),
            ("verbosity 1\r\nverbosity 1 noreply\r\nversion\r\nmn\r\n".into(),
             "OK\r\nVERSION 1.6.18-flotilla\r\nMN\r\n".into()),
            ("bogus\r\n\r\nset k 0 0\r\n".into(), "ERROR\r\nERROR\r\nERROR\r\n".into()),
            ("set k 0 0 1 2 3\r\nx\r\n".into(), "ERROR\r\nERROR\r\n".into()),
            ("set k abc 0 1\r\nx\r\n".into(), "CLIENT_ERROR bad command line format\r\nERROR\r\n".into()),
            ("set k 0 0 1\r\nabc\r\n".into(), "CLIENT_ERROR bad data chunk\r\nERROR\r\n".into()),
            ("set k 0 0 1 noreply\r\nabc\r\n".into(), "ERROR\r\n".into()),
            ("stats detail\r\nstats foo\r\nshutdown\r\n".into(),
             "CLIENT_ERROR usage: stats detail on|off|dump\r\nERROR\r\nERROR: shutdown not enabled\r\n".into()),
        ];
        for (input, expected) in script {
            assert_eq!(mesh.text(&input), expected, "after {input:?}");
        }
        let gets = mesh.text(&format!("set {k} 0 0 1\r\nx\r\ngets {k}\r\n"));
        let unique: u64 = gets
            .split("\r\n")
            .nth(1)
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            mesh.text(&format!("cas {k} 0 0 1 {unique}\r\ny\r\n")),
            "STORED\r\n"
        );
        assert_eq!(
            mesh.text(&format!("cas {k} 0 0 1 {unique}\r\nz\r\n")),
            "EXISTS\r\n"
        );
        // quit closes once the earlier replies are out, and nothing after it runs.
        assert_eq!(
            mesh.text("version\r\nquit\r\nversion\r\n"),
            "VERSION 1.6.18-flotilla\r\n"
        );
        assert!(mesh.closed);
    }

    #[test]
    fn stats_are_summed_over_every_core() {
        let mut mesh = Mesh::new();
        let mut request = String::new();
        for core in 0..CORES {
            request += &format!("set {} 0 0 1\r\nx\r\n", key_of(core, 7));
        }
        mesh.text(&request);
        let stats = mesh.text("stats\r\n");
        assert!(stats.contains("STAT curr_items 4\r\n"), "{stats}");
        assert!(stats.contains("STAT threads 4\r\n"));
        assert!(stats.contains("STAT cmd_set 4\r\n"));
        let limit = mesh.engines[0].store.limit() * 4;
        assert!(stats.contains(&format!("STAT limit_maxbytes {limit}\r\n")));
        assert!(stats.ends_with("END\r\n"));
        assert_eq!(mesh.text("stats reset\r\n"), "RESET\r\n");
        let stats = mesh.text("stats\r\n");
        assert!(stats.contains("STAT cmd_set 0\r\n") && stats.contains("STAT curr_items 4\r\n"));
        let flotilla = mesh.text("stats flotilla\r\n");
        assert!(flotilla.contains("STAT remote_requests "), "{flotilla}");
        // flush_all reaches every core.
        assert_eq!(mesh.text("flush_all\r\n"), "OK\r\n");
        assert!(mesh.engines.iter().all(|engine| engine.store.is_empty()));
    }

    #[test]
    fn large_values_stream_in_chunks_from_any_core() {
        let mut mesh = Mesh::new();
        for core in 0..CORES {
            for length in [1usize, 16 * 1024, 16 * 1024 + 1, 100_000, 1_000_000] {
                let key = key_of(core, length as u32);
                let value: Vec<u8> = (0..length).map(|n| (n % 251) as u8).collect();
                let mut request = format!("set {key} 0 0 {length}\r\n").into_bytes();
                request.extend_from_slice(&value);
                request.extend_from_slice(b"\r\n");
                assert_eq!(mesh.talk(&request), b"STORED\r\n");
                let mut expected = format!("VALUE {key} 0 {length}\r\n").into_bytes();
                expected.extend_from_slice(&value);
                expected.extend_from_slice(b"\r\nEND\r\n");
                let got = mesh.talk(format!("get {key}\r\n").as_bytes());
                assert!(
                    got == expected,
                    "core {core}, {length} bytes: {} bytes back",
                    got.len()
                );
            }
        }
        // No pin is left behind, and the budget is all given back.
        assert!(mesh.engines.iter().all(|engine| engine.store.pins() == 0));
        assert_eq!(mesh.engines[0].budget.used(), mesh.session.charged);
        // The largest item memcached takes, and one byte more (refused, data swallowed, and a set
        // drops the old value).
        let key = key_of(3, 99);
        let largest = max_value_length(key.len(), 0);
        let mut request = format!("set {key} 0 0 {largest}\r\n").into_bytes();
        request.resize(request.len() + largest, b'x');
        request.extend_from_slice(b"\r\n");
        assert_eq!(mesh.talk(&request), b"STORED\r\n");
        let mut request = format!("set {key} 0 0 {}\r\n", largest + 1).into_bytes();
        request.resize(request.len() + largest + 1, b'x');
        request.extend_from_slice(format!("\r\nget {key}\r\n").as_bytes());
        assert_eq!(
            mesh.talk(&request),
            b"SERVER_ERROR object too large for cache\r\nEND\r\n"
        );
    }

    #[test]
    fn a_narrow_channel_carries_long_values_in_smaller_chunks() {
        let mut mesh = Mesh::new();
        mesh.max_message = 4096;
        // Stored through a connection of the owner (a remote set this long cannot cross).
        let key = key_of(3, 11);
        let value: Vec<u8> = (0..200_000u32).map(|n| (n % 253) as u8).collect();
        mesh.engines[3].serve(
            &KvRequest {
                service: 11211,
                operation: KvOperation::Store {
                    mode: StoreMode::Set,
                    flags: 0,
                    exptime: 0,
                },
                noreply: true,
                origin: 3,
                ticket: 0,
                sequence: 0,
                key: key.as_bytes(),
                value: &value,
            },
            mesh.now,
        );
        let mut expected = format!("VALUE {key} 0 200000\r\n").into_bytes();
        expected.extend_from_slice(&value);
        expected.extend_from_slice(b"\r\nEND\r\n");
        assert!(mesh.talk(format!("get {key}\r\n").as_bytes()) == expected);
        assert!(mesh.largest_message <= 4096, "{}", mesh.largest_message);
        // A storage command longer than the channel carries is refused with an error.
        let mut request = format!("set {key} 0 0 5000\r\n").into_bytes();
        request.resize(request.len() + 5000, b'x');
        request.extend_from_slice(b"\r\n");
        assert_eq!(
            mesh.talk(&request),
            b"SERVER_ERROR value too large for the cross-core channel\r\n"
        );
    }

    #[test]
    fn a_full_channel_delays_a_long_value_without_spinning() {
        let mut mesh = Mesh::new();
        let key = key_of(2, 12);
        let mut request = format!("set {key} 0 0 100000\r\n").into_bytes();
        request.resize(request.len() + 100_000, b'v');
        request.extend_from_slice(b"\r\n");
        assert_eq!(mesh.talk(&request), b"STORED\r\n");
        mesh.refuse_fetches = 3;
        let partial = mesh.talk(format!("get {key}\r\n").as_bytes());
        assert!(partial.len() < 100_000, "the value waits for the channel");
        // The retry is scheduled a little later, not now.
        let retry = mesh.session.next_deadline().expect("a retry time");
        assert!(retry > mesh.now.millis);
        let mut out = partial;
        for _ in 0..10 {
            mesh.now.millis += 1;
            out.extend_from_slice(&mesh.talk(b""));
        }
        assert_eq!(
            out.len(),
            format!("VALUE {key} 0 100000\r\n").len() + 100_002 + 5
        );
        assert_eq!(mesh.refuse_fetches, 0);
        // A channel that stays full past the remote timeout breaks the stream (and closes).
        mesh.refuse_fetches = u32::MAX;
        mesh.talk(format!("get {key}\r\n").as_bytes());
        mesh.now.millis += Settings::default().remote_timeout_ms + 1;
        mesh.talk(b"");
        assert!(mesh.closed);
    }

    #[test]
    fn a_slow_reader_holds_one_chunk_not_the_value() {
        let mut mesh = Mesh::new();
        let key = key_of(1, 5);
        let mut request = format!("set {key} 0 0 1000000\r\n").into_bytes();
        request.resize(request.len() + 1_000_000, b'v');
        request.extend_from_slice(b"\r\n");
        assert_eq!(mesh.talk(&request), b"STORED\r\n");
        // Ask for it ten times in one line and read nothing: the connection holds little.
        let line = format!("get{}\r\n", format!(" {key}").repeat(10));
        let taken = mesh.session.receive(line.as_bytes());
        assert_eq!(taken, line.len());
        for _ in 0..50 {
            mesh.env_run(|session, env| session.process(env));
            mesh.deliver();
        }
        let held = mesh.engines[0].budget.used();
        assert!(held < 256 * 1024, "{held} bytes held");
        assert!(
            mesh.session.room() == 0,
            "a blocked reader is not read from"
        );
        // Reading all of it gives ten whole values.
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let output = mesh.session.output().to_vec();
            mesh.session.sent(output.len());
            out.extend_from_slice(&output);
            mesh.env_run(|session, env| session.process(env));
            if !mesh.deliver() && output.is_empty() {
                break;
            }
        }
        assert_eq!(
            out.len(),
            10 * (format!("VALUE {key} 0 1000000\r\n").len() + 1_000_002) + 5
        );
        assert!(out.ends_with(b"v\r\nEND\r\n"));
    }

    #[test]
    fn a_failed_core_answers_at_once_and_its_keys_move() {
        let mut mesh = Mesh::new();
        let lost = key_of(2, 3);
        assert_eq!(
            mesh.text(&format!("set {lost} 0 0 1\r\nx\r\n")),
            "STORED\r\n"
        );
        // Core 2 stops answering: requests to it wait...
        mesh.silent = 1 << 2;
        let waiting = mesh.text(&format!(
            "get {lost}\r\nset {lost} 0 0 1\r\ny\r\nversion\r\n"
        ));
        assert_eq!(waiting, "");
        // ...until the monitors' verdict: the get misses, the set fails, the rest follows.
        mesh.engines[0].set_live(0b1011);
        mesh.env_run(|session, env| session.lost_cores(1 << 2, env));
        let answered = mesh.text("");
        assert_eq!(
            answered,
            "END\r\nSERVER_ERROR owner core failed\r\nVERSION 1.6.18-flotilla\r\n"
        );
        // The key now lives on a survivor: it misses (the data was lost), then can be stored.
        for engine in mesh.engines.iter_mut() {
            engine.set_live(0b1011);
        }
        assert_eq!(mesh.text(&format!("get {lost}\r\n")), "END\r\n");
        assert_eq!(
            mesh.text(&format!("set {lost} 0 0 1\r\nz\r\nget {lost}\r\n")),
            format!("STORED\r\nVALUE {lost} 0 1\r\nz\r\nEND\r\n")
        );
        assert_eq!(mesh.engines[2].snapshot().get(Stat::ServedForPeers), 1);
    }

    #[test]
    fn a_lost_reply_times_out_and_a_refused_send_is_an_error() {
        let mut mesh = Mesh::new();
        let key = key_of(1, 4);
        mesh.silent = 1 << 1;
        assert_eq!(mesh.text(&format!("delete {key}\r\n")), "");
        let deadline = mesh.session.next_deadline().expect("a deadline");
        assert_eq!(
            deadline,
            mesh.now.millis + Settings::default().remote_timeout_ms
        );
        mesh.now.millis = deadline;
        mesh.env_run(|session, env| session.expire(env));
        assert_eq!(mesh.text(""), "SERVER_ERROR owner core did not answer\r\n");
        mesh.silent = 0;
        // A channel that stays full for as long as a reply may take: the command is answered
        // with the error then (and the get after it, tried afresh, too).
        mesh.refuse = true;
        assert_eq!(
            mesh.text(&format!("set {key} 0 0 1\r\nx\r\nget {key}\r\n")),
            ""
        );
        let timeout = Settings::default().remote_timeout_ms;
        let start = mesh.now.millis;
        while mesh.now.millis < start + 2 * timeout + 10 {
            mesh.now.millis = mesh
                .session
                .next_deadline()
                .expect("a retry")
                .max(mesh.now.millis);
            let out = mesh.text("");
            if !out.is_empty() {
                assert_eq!(out, "SERVER_ERROR owner core busy\r\n");
                assert_eq!(
                    mesh.now.millis,
                    start + timeout,
                    "given up after the timeout"
                );
                break;
            }
        }
        mesh.now.millis = mesh.session.next_deadline().expect("the get's retry");
        mesh.now.millis += timeout;
        assert_eq!(mesh.text(""), "END\r\n");
        assert_eq!(mesh.engines[0].snapshot().get(Stat::PeerSendFailures), 2);
        assert!(mesh.engines[0].snapshot().get(Stat::PeerSendRetries) >= timeout);
    }

    #[test]
    fn a_full_channel_holds_the_connection_back_and_every_command_is_retried() {
        let mut mesh = Mesh::new();
        let keys: Vec<String> = (0..CORES).map(|core| key_of(core, 9)).collect();
        assert_eq!(
            mesh.text(&format!("set {} 0 0 2\r\nv3\r\n", keys[3])),
            "STORED\r\n"
        );
        mesh.refuse = true;
        let mut request = String::new();
        for key in &keys {
            request += &format!("set {key} 1 0 2\r\nok\r\n");
        }
        request += &format!(
            "get {} {} {}\r\nincr {} 1\r\nflush_all noreply\r\nmn\r\n",
            keys[1], keys[0], keys[2], keys[3]
        );
        // Key 0 is this core's: stored at once; key 1 is refused, and everything after it waits
        // in order, without an error and without reading the socket further.
        let mut out = mesh.text(&request);
        assert_eq!(out, "STORED\r\n");
        assert_eq!(
            mesh.session.room(),
            0,
            "the connection is not read while it waits"
        );
        let retry = mesh.session.next_deadline().expect("a retry deadline");
        assert_eq!(retry, mesh.now.millis + RETRY_MS);
        // Still full at the retry: still waiting, a new deadline.
        mesh.now.millis = retry;
        assert_eq!(mesh.text(""), "");
        assert_eq!(mesh.session.next_deadline(), Some(retry + RETRY_MS));
        // Room again: everything is answered in request order, nothing failed.
        mesh.refuse = false;
        mesh.now.millis = retry + RETRY_MS;
        out += &mesh.text("");
        assert_eq!(
            out,
            format!(
                "STORED\r\nSTORED\r\nSTORED\r\nSTORED\r\n\
                 VALUE {} 1 2\r\nok\r\nVALUE {} 1 2\r\nok\r\nVALUE {} 1 2\r\nok\r\nEND\r\n\
                 CLIENT_ERROR cannot increment or decrement non-numeric value\r\nMN\r\n",
                keys[1], keys[0], keys[2]
            )
        );
        let counters = mesh.engines[0].snapshot();
        assert_eq!(counters.get(Stat::PeerSendFailures), 0);
        assert_eq!(counters.get(Stat::PeerSendRetries), 2);
        // The quiet flush_all reached every core although the channel refused it at first.
        for engine in &mesh.engines {
            assert_eq!(engine.snapshot().get(Stat::CurrItems), 0);
        }
    }

    #[test]
    fn a_gather_refused_by_the_channel_is_sent_again() {
        let mut mesh = Mesh::new();
        mesh.refuse = true;
        assert_eq!(mesh.text("flush_all\r\nversion\r\n"), "");
        mesh.refuse = false;
        mesh.now.millis = mesh.session.next_deadline().expect("a retry deadline");
        assert_eq!(mesh.text(""), "OK\r\nVERSION 1.6.18-flotilla\r\n");
        for engine in &mesh.engines[1..] {
            assert_eq!(
                engine.snapshot().get(Stat::CmdFlush),
                1,
                "every core flushed"
            );
        }
    }

    #[test]
    fn input_is_bounded_by_what_memcached_allows() {
        let mut mesh = Mesh::new();
        // A long line that is not a multi-get closes the connection.
        assert_eq!(mesh.talk(&[b'x'; 3000]), b"");
        assert!(mesh.closed);
        // A long multi-get line is fine.
        let mut mesh = Mesh::new();
        let line = format!("get{}\r\n", " k".repeat(3000));
        assert_eq!(mesh.text(&line), "END\r\n");
        // A data block waits for all of its bytes (and the next command's bytes are data).
        let mut mesh = Mesh::new();
        assert_eq!(mesh.text("set k 0 0 5\r\nab\r\n"), "");
        assert_eq!(
            mesh.text("mn\r\n"),
            "CLIENT_ERROR bad data chunk\r\nERROR\r\n"
        );
        // An HTTP request closes without an answer.
        let mut mesh = Mesh::new();
        assert_eq!(mesh.text("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "");
        assert!(mesh.closed);
    }

    #[test]
    fn the_budget_makes_connections_wait_instead_of_growing() {
        // A tiny heap: the budget holds about two 1 MB data blocks.
        let mut mesh = Mesh::with(Settings::default(), 9 << 20);
        let budget = mesh.engines[0].budget.limit();
        assert!(budget < 3 << 20);
        // Another connection holds most of the budget.
        mesh.engines[0].budget.recharge(0, budget - 100_000);
        let key = key_of(0, 8);
        let mut request = format!("set {key} 0 0 1000000\r\n").into_bytes();
        request.resize(request.len() + 1_000_000, b'v');
        request.extend_from_slice(b"\r\n");
        let reply = mesh.talk(&request);
        assert_eq!(reply, b"");
        assert!(mesh.session.is_stalled());
        assert!(mesh.engines[0].budget.used() <= budget);
        // It gives the budget back: the set goes through.
        mesh.engines[0].budget.recharge(budget - 100_000, 0);
        let reply = mesh.talk(&request[mesh_fed(&mesh)..]);
        assert_eq!(reply, b"STORED\r\n");
    }

    /// Bytes of the request the session has taken so far (its line is consumed when stalled).
    fn mesh_fed(mesh: &Mesh) -> usize {
        mesh.session.input.len()
    }
}
