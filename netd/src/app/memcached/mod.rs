//! memcached's text protocol (as memcached 1.6 speaks it) on every core, with the key space
//! partitioned over the living cores. This file is the thin glue between the pure protocol
//! engine and netd: socket reads and writes, peer messages, time. See `docs/netd.md`.
//!
//! * [`protocol`]: command lines, numbers and error lines, byte for byte as memcached 1.6.
//! * [`store`]: one core's items: LRU, CAS, expiry, `flush_all`, the memory limit, pins.
//! * [`session`]: one connection: reply order across local and remote answers, backpressure.
//! * [`engine`]: one core's store, key map, memory budget and counters; serves requests.
//! * [`partition`]: the key → core map over the living cores.
//! * [`stats`]: the counters and how `stats` prints them.
//! * [`conformance`]: the command sequence the differential tests send to memcached and here.

pub mod conformance;
pub mod engine;
pub mod partition;
pub mod protocol;
pub mod session;
pub mod stats;
pub mod store;

#[cfg(test)]
mod cluster_tests;

pub use engine::{Engine, MemoryLimits, Now, Settings};
pub use partition::{key_owner, Partition};

use super::{AppContext, PeerService, StreamService};
use crate::config::{NetConfig, WallClock};
use crate::peers::{KvOperation, KvReply, KvRequest, KvStatus, PeerError, PeerMessage, Peers};
use session::{Env, Session};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use stats::Stat;

extern crate alloc;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

/// Rounds of read → process → write per connection per path run.
const ROUNDS: usize = 8;

/// Bytes of replies to other cores kept for another try when the channel is full.
const UNSENT_LIMIT: usize = 512 * 1024;

/// How soon a refused reply is tried again (the path asks to run then).
const RETRY: Duration = Duration::from_millis(1);

struct Slot {
    generation: u16,
    session: Option<Session>,
}

/// The memcached server of one core.
pub struct Memcached {
    engine: Engine,
    slots: Vec<Slot>,
    clock: Option<WallClock>,
    live: u64,
    /// Replies to other cores the channel refused for now, encoded, oldest first.
    unsent: VecDeque<(crate::config::CoreId, Vec<u8>)>,
    unsent_bytes: usize,
}

impl Memcached {
    /// The server on `port` for `config.core`, its memory split from the application heap
    /// ([`NetConfig::application_heap_bytes`]: the heap less TCP's budget) (or
    /// `config.memcached_memory_mb` over all cores), its clock from `config.wall_clock`.
    pub fn new(port: u16, config: &NetConfig) -> Self {
        let limits = MemoryLimits::from_heap(
            config.application_heap_bytes(),
            config.memcached_memory_mb,
            config.core_count,
        );
        let settings = Settings {
            port,
            ..Settings::default()
        };
        Self::with_limits(port, config, limits, settings)
    }

    /// The server with explicit memory limits and settings.
    pub fn with_limits(
        port: u16,
        config: &NetConfig,
        limits: MemoryLimits,
        settings: Settings,
    ) -> Self {
        // The port is the service's address in peer messages and shows in `stats settings`.
        let settings = Settings { port, ..settings };
        let clock = config.wall_clock;
        let start = clock.map_or(Now { unix: 0, millis: 0 }, |clock| Now {
            unix: clock.unix_seconds,
            millis: clock.at.total_millis().max(0) as u64,
        });
        let engine = Engine::new(config.core, config.core_count, limits, settings, start);
        Self {
            live: engine.partition.live(),
            engine,
            slots: Vec::new(),
            clock,
            unsent: VecDeque::new(),
            unsent_bytes: 0,
        }
    }

    /// This core's memcached.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn now(&self, instant: Instant) -> Now {
        let millis = instant.total_millis().max(0) as u64;
        let unix = match self.clock {
            Some(clock) => clock.unix_seconds_at(instant),
            None => millis / 1000,
        };
        Now { unix, millis }
    }

    fn ticket(slot: usize, generation: u16) -> u32 {
        (slot as u32) << 16 | u32::from(generation)
    }

    /// Sends the replies kept from earlier refusals, oldest first, until the channel refuses
    /// again.
    fn flush_unsent(&mut self, peers: &mut dyn Peers) {
        while let Some((origin, bytes)) = self.unsent.front() {
            let sent = match PeerMessage::decode(bytes) {
                Ok(message) => peers.send(*origin, &message),
                Err(_) => Ok(()),
            };
            if sent.is_err_and(session::is_transient) {
                break;
            }
            if sent.is_err() {
                self.engine.counters.count(Stat::ReplySendFailures);
            }
            if let Some((_, bytes)) = self.unsent.pop_front() {
                self.unsent_bytes -= bytes.len();
            }
        }
        self.engine
            .counters
            .set(Stat::RepliesQueued, self.unsent.len() as u64);
    }

    /// Sends a reply to the core that asked, or keeps it for another try if the channel is full
    /// for now (its ring and outbox, or its bulk pool; replies keep their order behind the ones
    /// already kept).
    fn send_reply(
        unsent: &mut VecDeque<(crate::config::CoreId, Vec<u8>)>,
        unsent_bytes: &mut usize,
        engine_counters: &mut stats::StatsBlock,
        peers: &mut dyn Peers,
        origin: crate::config::CoreId,
        reply: KvReply<'_>,
    ) {
        let message = PeerMessage::KvReply(reply);
        let refused = if unsent.is_empty() {
            match peers.send(origin, &message) {
                Ok(()) => return,
                Err(error) => error,
            }
        } else {
            PeerError::Full
        };
        let length = message.encoded_len();
        if !session::is_transient(refused) || *unsent_bytes + length > UNSENT_LIMIT {
            engine_counters.count(Stat::ReplySendFailures);
            return;
        }
        let mut bytes = vec![0u8; length];
        if message.encode(&mut bytes).is_ok() {
            *unsent_bytes += length;
            unsent.push_back((origin, bytes));
        }
        engine_counters.set(Stat::RepliesQueued, unsent.len() as u64);
    }
}

impl StreamService for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn on_open(&mut self, _context: &mut AppContext<'_>, slot: usize) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || Slot {
                generation: 0,
                session: None,
            });
        }
        let entry = &mut self.slots[slot];
        entry.generation = entry.generation.wrapping_add(1);
        entry.session = Some(Session::new());
        self.engine.counters.count(Stat::CurrConnections);
        self.engine.counters.count(Stat::TotalConnections);
    }

    fn on_close(&mut self, context: &mut AppContext<'_>, slot: usize) {
        let now = self.now(context.now);
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let ticket = Self::ticket(slot, entry.generation);
        if let Some(mut session) = entry.session.take() {
            let mut env = Env {
                engine: &mut self.engine,
                peers: context.peers,
                now,
                ticket,
            };
            session.close(&mut env);
            let open = self.engine.counters.get(Stat::CurrConnections);
            self.engine
                .counters
                .set(Stat::CurrConnections, open.saturating_sub(1));
        }
    }

    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        slot: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        let now = self.now(context.now);
        self.engine.tick(now);
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let ticket = Self::ticket(slot, entry.generation);
        let Some(session) = entry.session.as_mut() else {
            return;
        };
        let mut env = Env {
            engine: &mut self.engine,
            peers: context.peers,
            now,
            ticket,
        };
        session.expire(&mut env);
        for _ in 0..ROUNDS {
            let mut read = 0;
            while socket.can_recv() {
                let room = session.room();
                if room == 0 {
                    break;
                }
                let taken = socket.recv(|bytes| {
                    let taken = session.receive(&bytes[..bytes.len().min(room)]);
                    (taken, taken)
                });
                match taken {
                    Ok(taken) if taken > 0 => read += taken,
                    _ => break,
                }
            }
            env.engine.counters.add(Stat::BytesRead, read as u64);
            session.process(&mut env);
            let mut written = 0;
            while socket.can_send() {
                let output = session.output();
                if output.is_empty() {
                    break;
                }
                match socket.send_slice(output) {
                    Ok(count) if count > 0 => {
                        session.sent(count);
                        written += count;
                    }
                    _ => break,
                }
            }
            env.engine.counters.add(Stat::BytesWritten, written as u64);
            let readable = socket.can_recv() && session.room() > 0;
            if read == 0 && written == 0 && !readable {
                break;
            }
        }
        session.process(&mut env);
        if session.wants_close() || (!socket.may_recv() && session.is_idle()) {
            socket.close();
        }
        if let Some(deadline) = session.next_deadline() {
            let deadline = Instant::from_millis(deadline as i64);
            *context.wake_at = Some(context.wake_at.map_or(deadline, |at| at.min(deadline)));
        }
        if session.is_stalled() && env.engine.budget.take_released() {
            // Another connection gave budget back during this run: try again without waiting
            // for a frame.
            *context.run_again = true;
        }
    }
}

impl PeerService for Memcached {
    fn on_peer_message(&mut self, context: &mut AppContext<'_>, message: &PeerMessage<'_>) {
        let now = self.now(context.now);
        self.engine.tick(now);
        match message {
            PeerMessage::KvRequest(request) => {
                self.flush_unsent(context.peers);
                let quiet =
                    request.noreply || matches!(request.operation, KvOperation::Release { .. });
                let Self {
                    engine,
                    unsent,
                    unsent_bytes,
                    ..
                } = self;
                let (reply, counters) = engine.serve_with_counters(request, now);
                if !quiet {
                    Self::send_reply(
                        unsent,
                        unsent_bytes,
                        counters,
                        context.peers,
                        request.origin,
                        reply,
                    );
                }
                if !self.unsent.is_empty() {
                    let at = context.now + RETRY;
                    *context.wake_at = Some(context.wake_at.map_or(at, |other| other.min(at)));
                }
            }
            PeerMessage::KvReply(reply) => {
                let slot = (reply.ticket >> 16) as usize;
                let generation = reply.ticket as u16;
                let session = self
                    .slots
                    .get_mut(slot)
                    .filter(|entry| entry.generation == generation)
                    .and_then(|entry| entry.session.as_mut());
                let mut env = Env {
                    engine: &mut self.engine,
                    peers: context.peers,
                    now,
                    ticket: reply.ticket,
                };
                match session {
                    Some(session) => session.on_reply(reply, &mut env),
                    None => {
                        // The connection closed meanwhile: a value pinned for it must not wait
                        // a minute to be dropped.
                        if let KvStatus::Streaming { pin, .. } = reply.status {
                            let release = KvRequest {
                                service: reply.service,
                                operation: KvOperation::Release { pin },
                                noreply: true,
                                origin: env.engine.core,
                                ticket: reply.ticket,
                                sequence: 0,
                                key: &[],
                                value: &[],
                            };
                            let _ = env
                                .peers
                                .send(reply.owner, &PeerMessage::KvRequest(release));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_run(&mut self, context: &mut AppContext<'_>) {
        let now = self.now(context.now);
        self.engine.tick(now);
        self.flush_unsent(context.peers);
        if !self.unsent.is_empty() {
            let at = context.now + RETRY;
            *context.wake_at = Some(context.wake_at.map_or(at, |other| other.min(at)));
        }
    }

    fn on_live_cores(&mut self, context: &mut AppContext<'_>, live: u64) {
        let now = self.now(context.now);
        let dead = self.live & !live;
        self.live = live;
        self.engine.set_live(live);
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let ticket = Self::ticket(slot, entry.generation);
            if let Some(session) = entry.session.as_mut() {
                let mut env = Env {
                    engine: &mut self.engine,
                    peers: context.peers,
                    now,
                    ticket,
                };
                session.lost_cores(dead, &mut env);
            }
        }
    }
}
