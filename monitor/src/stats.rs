//! Statistics gathering. [`crate::Monitor::request_stats`] (meant for core 0, allowed anywhere)
//! sends [`Message::StatsRequest`] to every live peer; each answers with its counters
//! ([`crate::Hooks::counters`]) in [`COUNTER_CHUNKS`] [`Message::StatsReply`] messages. The
//! gatherer re-asks peers whose counters are incomplete, and reports
//! [`crate::Event::StatsReady`] when every live peer has answered, or at the timeout with what
//! arrived. Answering is stateless; replies to an older gathering are ignored.

use crate::event::Event;
use crate::message::{Message, COUNTERS, COUNTERS_PER_MESSAGE, COUNTER_CHUNKS};
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{CoreId, CoreSet, Instant, MAX_CORES};

/// Why [`crate::Monitor::request_stats`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsError {
    /// This core was declared failed.
    Fenced,
    /// A gathering is in progress.
    Busy,
}

#[derive(Clone, Copy, Debug)]
struct Gathering {
    request: u32,
    asked: CoreSet,
    responded: CoreSet,
    deadline: Instant,
}

/// Statistics state of one monitor.
pub(crate) struct StatsState {
    active: Option<Gathering>,
    next_request: u32,
    table: [[u64; COUNTERS]; MAX_CORES],
    chunks: [u8; MAX_CORES],
    /// Cores whose counters in `table` are complete for the last finished gathering.
    complete: CoreSet,
}

const ALL_CHUNKS: u8 = ((1u16 << COUNTER_CHUNKS) - 1) as u8;

impl StatsState {
    pub(crate) const fn new() -> StatsState {
        StatsState {
            active: None,
            next_request: 0,
            table: [[0; COUNTERS]; MAX_CORES],
            chunks: [0; MAX_CORES],
            complete: CoreSet::EMPTY,
        }
    }
}

impl<H: Hooks> Monitor<H> {
    /// Starts gathering every live core's counters; returns the gathering's number, reported again
    /// in [`Event::StatsReady`].
    pub fn request_stats(
        &mut self,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Result<u32, StatsError> {
        if self.fenced {
            return Err(StatsError::Fenced);
        }
        if self.stats.active.is_some() {
            return Err(StatsError::Busy);
        }
        let request = self.stats.next_request;
        self.stats.next_request = self.stats.next_request.wrapping_add(1);
        self.stats.chunks = [0; MAX_CORES];
        self.stats.complete = CoreSet::EMPTY;
        let me = self.config.core;
        self.stats.table[me.index()] = self.hooks.counters();
        self.stats.chunks[me.index()] = ALL_CHUNKS;
        let asked = self.live_peers();
        let mut responded = CoreSet::EMPTY;
        responded.insert(me);
        self.stats.active = Some(Gathering {
            request,
            asked,
            responded,
            deadline: now.after(self.config.stats_timeout_ns),
        });
        self.send_all(out, asked, Message::StatsRequest { request });
        self.check_stats_complete();
        self.drain_loopback(now, out);
        Ok(request)
    }

    /// Counters of `core` from the last finished gathering, if they arrived complete.
    pub fn gathered(&self, core: CoreId) -> Option<&[u64; COUNTERS]> {
        if self.stats.active.is_none() && self.stats.complete.contains(core) {
            Some(&self.stats.table[core.index()])
        } else {
            None
        }
    }

    fn finish_stats(&mut self, timed_out: bool) {
        if let Some(g) = self.stats.active.take() {
            self.stats.complete = g.responded;
            self.events.push(Event::StatsReady {
                request: g.request,
                responded: g.responded,
                missing: g.asked.difference(g.responded),
                timed_out,
            });
        }
    }

    fn check_stats_complete(&mut self) {
        if let Some(g) = self.stats.active {
            if g.responded.is_superset(g.asked.difference(self.failed)) {
                self.finish_stats(false);
            }
        }
    }

    pub(crate) fn stats_sweep(&mut self, now: Instant, out: &mut impl Outbox) {
        let Some(g) = self.stats.active else { return };
        if now >= g.deadline {
            self.finish_stats(true);
        } else {
            let to = g.asked.difference(g.responded).difference(self.failed);
            self.send_all(out, to, Message::StatsRequest { request: g.request });
        }
    }

    pub(crate) fn stats_on_failure(&mut self) {
        self.check_stats_complete();
    }

    pub(crate) fn on_stats_request(&mut self, from: CoreId, request: u32, out: &mut impl Outbox) {
        let counters = self.hooks.counters();
        for chunk in 0..COUNTER_CHUNKS {
            let mut values = [0u64; COUNTERS_PER_MESSAGE];
            let start = chunk * COUNTERS_PER_MESSAGE;
            let end = (start + COUNTERS_PER_MESSAGE).min(COUNTERS);
            values[..end - start].copy_from_slice(&counters[start..end]);
            self.send(
                out,
                from,
                Message::StatsReply {
                    request,
                    chunk: chunk as u8,
                    values,
                },
            );
        }
    }

    pub(crate) fn on_stats_reply(
        &mut self,
        from: CoreId,
        request: u32,
        chunk: u8,
        values: [u64; COUNTERS_PER_MESSAGE],
    ) {
        let Some(g) = self.stats.active.as_mut() else {
            return;
        };
        if g.request != request || !g.asked.contains(from) {
            return;
        }
        let start = chunk as usize * COUNTERS_PER_MESSAGE;
        if start >= COUNTERS {
            return;
        }
        let end = (start + COUNTERS_PER_MESSAGE).min(COUNTERS);
        self.stats.table[from.index()][start..end].copy_from_slice(&values[..end - start]);
        self.stats.chunks[from.index()] |= 1 << chunk;
        if self.stats.chunks[from.index()] == ALL_CHUNKS {
            g.responded.insert(from);
            self.check_stats_complete();
        }
    }
}
