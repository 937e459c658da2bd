//! Application targets: memcached's command parser and a whole memcached connection over three
//! cores' engines, the HTTP server's request handling, and netd's command-line options.

use super::Input;
use crate::app::http::fuzz_connection;
use crate::app::memcached::engine::{Engine, MemoryLimits, Now, Settings};
use crate::app::memcached::protocol::{self, frame_line, parse, Framed};
use crate::app::memcached::session::{Env, Session};
use crate::app::AppContext;
use crate::config::{parse_command_line, parse_memcached_memory, parse_options, CoreId, NetConfig};
use crate::peers::{KvOperation, PeerError, PeerMessage, Peers};
use crate::stats::{CoreCounters, MemoryCounters, OwnCore, StatsView};
use crate::transport::TransportCounters;
use smoltcp::time::Instant;

extern crate alloc;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

/// `memcached_protocol`: bytes framed into command lines and parsed as memcached 1.6 does, line
/// after line (a data block is parsed as lines too: the parser must take any bytes). The
/// framing must move forward and stay inside the input.
pub fn memcached_protocol(data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        match frame_line(rest) {
            Framed::Line { text_end, next } => {
                assert!(
                    text_end < next && next <= rest.len(),
                    "{text_end} {next} {}",
                    rest.len()
                );
                let line = &rest[..text_end];
                let _ = parse(line);
                for token in line.split(|byte| *byte == b' ') {
                    let _ = protocol::safe_strtoull(token);
                    let _ = protocol::safe_strtoul(token);
                    let _ = protocol::safe_strtol(token);
                    let _ = protocol::item_number(token);
                }
                rest = &rest[next..];
            }
            Framed::Incomplete | Framed::Close => break,
        }
    }
}

/// Cores in the memcached session target.
const CORES: u16 = 3;

/// The cross-core channels of the memcached target: a queue per destination core, in order.
struct Channels {
    queues: [VecDeque<Vec<u8>>; CORES as usize],
    refuse: Option<PeerError>,
    max_message: usize,
}

impl Peers for Channels {
    fn send(&mut self, core: CoreId, message: &PeerMessage<'_>) -> Result<(), PeerError> {
        if let Some(error) = self.refuse {
            return Err(error);
        }
        let queue = self
            .queues
            .get_mut(usize::from(core))
            .ok_or(PeerError::NoSuchCore(core))?;
        let length = message.encoded_len();
        if length > self.max_message {
            return Err(PeerError::TooLarge);
        }
        let mut bytes = vec![0u8; length];
        message
            .encode(&mut bytes)
            .expect("encoded_len bytes suffice");
        queue.push_back(bytes);
        Ok(())
    }

    fn max_message(&self) -> usize {
        self.max_message
    }
}

/// `memcached_session`: one client connection on core 0 of three cores' memcached engines,
/// the other cores answering over in-order channels. Input: settings (reply and chunk sizes, the
/// channels' largest message), then operations: client bytes, the socket taking output, one
/// channel delivering its next message, time passing, cores failing, the channels refusing,
/// the connection closing (and a new one opening). Nothing may panic; once the connection closes
/// and the channels drain, it holds no budget, and no store is over its limit.
pub fn memcached_session(data: &[u8]) {
    let mut input = Input(data);
    let settings = Settings {
        inline: 16 + usize::from(input.u8()) * 16,
        chunk: 16 + usize::from(input.u8()) * 64,
        remote_timeout_ms: 50 + u64::from(input.u8()) * 10,
        ..Settings::default()
    };
    let max_message = 300 + usize::from(input.u16()) * 16;
    let limits = MemoryLimits {
        items: 64 * 1024,
        budget: 32 * 1024 + usize::from(input.u8()) * 1024,
    };
    let mut now = Now {
        unix: 1_000,
        millis: 1_000_000,
    };
    let mut engines: Vec<Engine> = (0..CORES)
        .map(|core| Engine::new(core, CORES, limits, settings, now))
        .collect();
    let mut channels = Channels {
        queues: Default::default(),
        refuse: None,
        max_message,
    };
    let mut session = Session::new();
    let mut ticket = 1u32;
    let mut live = (1u64 << CORES) - 1;
    let mut operations = 0;
    while !input.is_empty() && operations < 512 {
        operations += 1;
        let operation = input.u8();
        match operation % 8 {
            0..=2 => {
                let length = usize::from(input.u8()) * if operation & 8 != 0 { 16 } else { 1 };
                let bytes = input.bytes(length);
                let taken = session.receive(bytes);
                assert!(taken <= bytes.len());
                let mut env = on_core_0(&mut engines, &mut channels, now, ticket);
                session.process(&mut env);
            }
            3 => {
                let wanted = usize::from(input.u16());
                let available = session.output();
                let count = wanted.min(available.len());
                session.sent(count);
                let mut env = on_core_0(&mut engines, &mut channels, now, ticket);
                session.process(&mut env);
            }
            4 => {
                let core = usize::from(input.u8() % CORES as u8);
                deliver(
                    &mut engines,
                    &mut channels,
                    &mut session,
                    core,
                    now,
                    ticket,
                    live,
                );
            }
            5 => {
                now.millis += u64::from(input.u16());
                now.unix = 1_000 + (now.millis - 1_000_000) / 1000;
                for engine in &mut engines {
                    engine.tick(now);
                }
                let mut env = on_core_0(&mut engines, &mut channels, now, ticket);
                session.expire(&mut env);
                session.process(&mut env);
            }
            6 => {
                let dead = u64::from(input.u8()) & 0b110 & live;
                if dead != 0 {
                    live &= !dead;
                    for engine in &mut engines {
                        engine.set_live(live);
                    }
                    let mut env = on_core_0(&mut engines, &mut channels, now, ticket);
                    session.lost_cores(dead, &mut env);
                    session.process(&mut env);
                }
            }
            _ => match input.u8() % 4 {
                0 => channels.refuse = None,
                1 => channels.refuse = Some(PeerError::Full),
                2 => channels.refuse = Some(PeerError::BulkExhausted),
                _ => {
                    reopen(&mut session, &mut engines, &mut channels, now, &mut ticket);
                }
            },
        }
        if session.wants_close() {
            reopen(&mut session, &mut engines, &mut channels, now, &mut ticket);
        }
    }
    // The connection closes; every channel drains (their requests served, replies dropped or
    // answered); then no connection holds budget.
    channels.refuse = None;
    let mut env = on_core_0(&mut engines, &mut channels, now, ticket);
    session.close(&mut env);
    // Replies still on their way find no connection (the glue forgets a closed slot).
    let ticket = ticket + 1;
    for _ in 0..64 {
        let mut moved = false;
        for core in 0..usize::from(CORES) {
            moved |= deliver(
                &mut engines,
                &mut channels,
                &mut session,
                core,
                now,
                ticket,
                live,
            );
        }
        if !moved {
            break;
        }
    }
    assert_eq!(
        engines[0].budget.used(),
        0,
        "a closed connection still holds budget"
    );
    for engine in &engines {
        assert!(
            engine.store.used() <= engine.store.limit(),
            "store over its limit"
        );
    }
}

/// Core 0's environment (the connection's core): its engine, the channels, the time and the
/// connection's ticket.
fn on_core_0<'a>(
    engines: &'a mut [Engine],
    channels: &'a mut Channels,
    now: Now,
    ticket: u32,
) -> Env<'a> {
    Env {
        engine: &mut engines[0],
        peers: channels,
        now,
        ticket,
    }
}

/// Closes the connection and opens a new one in its place (with the next ticket).
fn reopen(
    session: &mut Session,
    engines: &mut [Engine],
    channels: &mut Channels,
    now: Now,
    ticket: &mut u32,
) {
    session.close(&mut on_core_0(engines, channels, now, *ticket));
    *session = Session::new();
    *ticket += 1;
}

/// Delivers the next message queued for `core`, as the kernel and [`crate::app::memcached`]
/// would: a request is served by that core's engine and the reply queued back; a reply reaches
/// the connection (core 0). Returns whether a message moved.
fn deliver(
    engines: &mut [Engine],
    channels: &mut Channels,
    session: &mut Session,
    core: usize,
    now: Now,
    ticket: u32,
    live: u64,
) -> bool {
    let Some(bytes) = channels.queues[core].pop_front() else {
        return false;
    };
    if live & (1 << core) == 0 {
        return true;
    }
    let message = PeerMessage::decode(&bytes).expect("what a core encoded decodes");
    match message {
        PeerMessage::KvRequest(request) => {
            let quiet = request.noreply || matches!(request.operation, KvOperation::Release { .. });
            let reply = engines[core].serve(&request, now);
            if !quiet {
                let _ = channels.send(request.origin, &PeerMessage::KvReply(reply));
            }
        }
        PeerMessage::KvReply(reply) if core == 0 && reply.ticket == ticket => {
            let mut env = on_core_0(engines, channels, now, ticket);
            session.on_reply(&reply, &mut env);
            session.process(&mut env);
        }
        _ => {}
    }
    true
}

/// A [`Peers`] that refuses everything (the HTTP target has no other core).
struct NoPeers;

impl Peers for NoPeers {
    fn send(&mut self, core: CoreId, _message: &PeerMessage<'_>) -> Result<(), PeerError> {
        Err(PeerError::NoSuchCore(core))
    }
}

/// `http`: bytes arriving on one HTTP connection in chunks (sizes from the input), taken and
/// answered as the server does from its socket. Answers are whole HTTP responses.
pub fn http_requests(data: &[u8]) {
    let mut input = Input(data);
    let config = NetConfig::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 0, 1);
    let counters = CoreCounters::default();
    let transport = TransportCounters::default();
    let mut peers = NoPeers;
    let (mut stats_wanted, mut run_again, mut wake_at) = (false, false, None);
    let mut context = AppContext {
        now: Instant::from_millis(1_000),
        core: 0,
        core_count: 1,
        hostname: "flotilla",
        uptime_ms: 1_000,
        peers: &mut peers,
        stats: StatsView {
            gathered: &[],
            own: OwnCore {
                core: 0,
                uptime_ms: 1_000,
                counters: &counters,
                before: &[],
                current: None,
                after: &[],
                transport: &transport,
                memory: MemoryCounters::default(),
            },
        },
        stats_wanted: &mut stats_wanted,
        run_again: &mut run_again,
        wake_at: &mut wake_at,
    };
    let mut chunks = Vec::new();
    while !input.is_empty() {
        let length = usize::from(input.u16()) % 10_000;
        chunks.push(input.bytes(length));
    }
    let output = fuzz_connection(&mut context, &config, &chunks);
    if !output.is_empty() {
        assert!(
            output.starts_with(b"HTTP/1.1 "),
            "{:?}",
            &output[..output.len().min(40)]
        );
    }
}

/// The netd half of the `command_line` target (`cpudriver::fuzzing::command_line`): a kernel
/// command line through netd's three readers (addresses, memcached
/// memory, `netd.*` options), and the stack built from what they gave, as the kernel builds it
/// (for a line that changed the configuration).
pub fn command_line(data: &[u8]) {
    let Ok(line) = core::str::from_utf8(data) else {
        return;
    };
    let mut config = NetConfig::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 1, 2);
    config.heap_bytes = 1 << 20;
    let default = config;
    if let Ok(addresses) = parse_command_line(line) {
        assert!(addresses.ip.prefix <= 32);
        config.addresses = addresses;
    }
    config.memcached_memory_mb = parse_memcached_memory(line).ok().flatten();
    let mut errors = 0;
    config.options = parse_options(line, |error| {
        errors += 1;
        let _ = alloc::format!("{error}");
    });
    let limits = MemoryLimits::from_heap(config.heap_bytes, config.memcached_memory_mb, 2);
    assert!(limits.items + limits.budget <= config.heap_bytes);
    // Building a stack is the slow part: only for a line that changed something (the default
    // configuration's stack is the one every netd test builds).
    if config == default {
        return;
    }
    let applications = crate::app::default_applications(&config);
    let _ = crate::stack::CoreNet::new(config, applications, || 0, Instant::from_millis(0))
        .expect("any command line gives a stack");
}
