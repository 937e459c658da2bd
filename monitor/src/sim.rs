//! Host simulation harness (tests only): N monitors on a seeded, repeatable network that drops,
//! delays, duplicates and reorders messages, with cores that crash at chosen instants. Simulated
//! time jumps from one event (a delivery or a monitor's deadline) to the next, so a run is a pure
//! function of its seed. Every message crosses the network as encoded bytes, so the wire format is
//! exercised too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{
    Change, Config, CoreId, CoreInfo, CoreSet, Event, Hooks, Instant, Message, Monitor, Outbox,
    Region, Vote, COUNTERS, MESSAGE_BYTES,
};

/// Splitmix64: small, seeded, good enough for schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x853c_49e6_748f_ea9b)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How the network misbehaves.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub min_delay_ns: u64,
    pub max_delay_ns: u64,
}

impl Network {
    pub const MS: u64 = 1_000_000;

    /// Loses nothing; a fixed delay.
    pub fn perfect(delay_ns: u64) -> Network {
        Network {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            min_delay_ns: delay_ns,
            max_delay_ns: delay_ns,
        }
    }

    /// Drops, duplicates, and reorders (delays vary over a range wider than the re-send interval).
    pub fn chaotic(drop_per_mille: u64) -> Network {
        Network {
            drop_per_mille,
            duplicate_per_mille: 30,
            min_delay_ns: 20_000,
            max_delay_ns: 3 * Network::MS,
        }
    }
}

/// Hooks of a simulated core: a bump allocator over its memory, vetoes on request, counters.
pub struct SimHooks {
    pub core: CoreId,
    pub next_region: u64,
    pub end: u64,
    pub allocated: Vec<Region>,
    pub freed: Vec<Region>,
    /// Ports (of either protocol) this core votes against.
    pub veto_ports: Vec<u16>,
    /// Flow groups this core votes against moving.
    pub veto_groups: Vec<u16>,
}

impl Hooks for SimHooks {
    fn vote(&mut self, change: &Change) -> Vote {
        let vetoed = match *change {
            Change::OpenPort { port, .. } | Change::ClosePort { port, .. } => {
                self.veto_ports.contains(&port)
            }
            Change::MoveFlowGroup { group, .. } => self.veto_groups.contains(&group),
        };
        if vetoed {
            Vote::No
        } else {
            Vote::Yes
        }
    }
    fn allocate_region(&mut self, len: u64) -> Option<Region> {
        if self.next_region + len > self.end {
            return None;
        }
        let region = Region {
            base: self.next_region,
            len,
        };
        self.next_region += len;
        self.allocated.push(region);
        Some(region)
    }
    fn free_region(&mut self, region: Region) {
        self.freed.push(region);
    }
    fn counters(&mut self) -> [u64; COUNTERS] {
        core::array::from_fn(|i| self.core.index() as u64 * 1000 + i as u64)
    }
}

/// Memory slice of simulated core `i`.
pub fn memory_of(core: CoreId) -> Region {
    Region {
        base: (core.index() as u64 + 1) << 32,
        len: 1 << 30,
    }
}

/// One simulated core.
pub struct Node {
    pub monitor: Monitor<SimHooks>,
    /// Stopped cores neither tick nor receive.
    pub crashed_at: Option<u64>,
    /// Whether the core stopped because it was fenced (rather than crashed by the test).
    pub fenced: bool,
    /// Every event, with the simulated time it was drained.
    pub events: Vec<(u64, Event)>,
}

impl Node {
    pub fn is_up(&self) -> bool {
        self.crashed_at.is_none()
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    order: u64,
    sent_at: u64,
    from: u8,
    to: u8,
    len: u8,
    bytes: [u8; MESSAGE_BYTES],
}

/// The outbox of a simulated core: what one call sent.
pub struct Collect {
    sent: Vec<(CoreId, Message)>,
}

impl Outbox for Collect {
    fn send(&mut self, to: CoreId, message: Message) {
        self.sent.push((to, message));
    }
}

/// The simulated machine.
pub struct Sim {
    pub now: u64,
    pub nodes: Vec<Node>,
    pub network: Network,
    pub rng: Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// Cores that crash the moment they decide, as coordinator, to commit (the worst moment).
    pub crash_on_commit: Vec<usize>,
    /// Messages sent, by tag (byte 0 of the encoding).
    pub sent_by_tag: [u64; 256],
    /// Termination-protocol answers saying "committed".
    pub committed_answers: u64,
    /// Directed links (from, to) that currently lose everything.
    pub blocked: Vec<(usize, usize)>,
}

pub fn core(i: usize) -> CoreId {
    CoreId::new(i as u8).unwrap()
}

impl Sim {
    /// `count` cores, configured by `configure(default)`.
    pub fn new(count: usize, seed: u64, network: Network, configure: impl Fn(&mut Config)) -> Sim {
        let expected = CoreSet::first(count);
        let nodes = (0..count)
            .map(|i| {
                let mut config = Config::new(core(i), expected);
                configure(&mut config);
                let info = CoreInfo {
                    core: core(i),
                    apic_id: (i as u32) * 2,
                    numa_node: (i / 2) as u16,
                    memory: memory_of(core(i)),
                };
                let memory = memory_of(core(i));
                let hooks = SimHooks {
                    core: core(i),
                    next_region: memory.base,
                    end: memory.base + memory.len,
                    allocated: Vec::new(),
                    freed: Vec::new(),
                    veto_ports: Vec::new(),
                    veto_groups: Vec::new(),
                };
                Node {
                    monitor: Monitor::new(config, info, hooks, Instant::from_nanos(0)).unwrap(),
                    crashed_at: None,
                    fenced: false,
                    events: Vec::new(),
                }
            })
            .collect();
        Sim {
            now: 0,
            nodes,
            network,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            order: 0,
            delivered: 0,
            dropped: 0,
            blocked: Vec::new(),
            crash_on_commit: Vec::new(),
            sent_by_tag: [0; 256],
            committed_answers: 0,
        }
    }

    fn post(&mut self, from: CoreId, sent: Vec<(CoreId, Message)>) {
        for (to, message) in sent {
            let mut bytes = [0u8; MESSAGE_BYTES];
            let len = message.encode(&mut bytes) as u8;
            self.sent_by_tag[bytes[0] as usize] += 1;
            if matches!(
                message,
                Message::ResolveReply {
                    state: crate::TxState::Committed,
                    ..
                }
            ) {
                self.committed_answers += 1;
            }
            if self.rng.chance(self.network.drop_per_mille)
                || self.blocked.contains(&(from.index(), to.index()))
            {
                self.dropped += 1;
                continue;
            }
            let copies = if self.rng.chance(self.network.duplicate_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self
                    .rng
                    .between(self.network.min_delay_ns, self.network.max_delay_ns);
                self.order += 1;
                self.queue.push(Reverse(InFlight {
                    at: self.now + delay,
                    order: self.order,
                    sent_at: self.now,
                    from: from.as_u8(),
                    to: to.as_u8(),
                    len,
                    bytes,
                }));
            }
        }
    }

    fn collect_events(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        while let Some(event) = node.monitor.poll_event() {
            if event == Event::Fenced && node.crashed_at.is_none() {
                // A fenced core halts, as the kernel is told to.
                node.crashed_at = Some(now);
                node.fenced = true;
            }
            node.events.push((now, event));
        }
        let decided = self.nodes[index].events.iter().rev().take(4).any(|(t, e)| {
            *t == now
                && matches!(e, Event::ChangeCommitted { tx, .. } if tx.coordinator.index() == index)
        });
        if decided && self.crash_on_commit.contains(&index) {
            self.crash_on_commit.retain(|&i| i != index);
            self.crash(index);
        }
    }

    /// Runs `call` on core `index`'s monitor now (a request entry point), sending what it sends.
    pub fn call<R>(
        &mut self,
        index: usize,
        call: impl FnOnce(&mut Monitor<SimHooks>, Instant, &mut Collect) -> R,
    ) -> Option<R> {
        if !self.nodes[index].is_up() {
            return None;
        }
        let mut out = Collect { sent: Vec::new() };
        let now = Instant::from_nanos(self.now);
        let result = call(&mut self.nodes[index].monitor, now, &mut out);
        self.post(core(index), out.sent);
        self.collect_events(index);
        Some(result)
    }

    /// Stops core `index` now: it neither ticks nor receives any more. Each message it sent in the
    /// last millisecond that is still in flight is lost with probability one half (it crashed in
    /// the middle of a broadcast, before publishing every slot).
    pub fn crash(&mut self, index: usize) {
        if self.nodes[index].crashed_at.is_some() {
            return;
        }
        self.nodes[index].crashed_at = Some(self.now);
        let in_flight = std::mem::take(&mut self.queue).into_vec();
        for Reverse(message) in in_flight {
            let recent = message.sent_at + 1_000_000 > self.now;
            if message.from as usize == index && recent && self.rng.chance(500) {
                self.dropped += 1;
                continue;
            }
            self.queue.push(Reverse(message));
        }
    }

    /// Runs until simulated time `end` (nanoseconds).
    pub fn run_until(&mut self, end: u64) {
        loop {
            let next_message = self.queue.peek().map(|Reverse(m)| m.at).unwrap_or(u64::MAX);
            let mut next_tick = u64::MAX;
            let mut ticker = 0;
            for (index, node) in self.nodes.iter().enumerate() {
                if node.is_up() {
                    let deadline = node.monitor.next_deadline().as_nanos();
                    if deadline < next_tick {
                        next_tick = deadline;
                        ticker = index;
                    }
                }
            }
            let next = next_message.min(next_tick);
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            if next_message <= next_tick {
                let Some(Reverse(message)) = self.queue.pop() else {
                    continue;
                };
                let to = message.to as usize;
                if !self.nodes[to].is_up() {
                    continue;
                }
                self.delivered += 1;
                let mut out = Collect { sent: Vec::new() };
                let now = Instant::from_nanos(self.now);
                let from = CoreId::new(message.from).unwrap();
                self.nodes[to]
                    .monitor
                    .handle_bytes(now, from, &message.bytes[..message.len as usize], &mut out)
                    .expect("every message on the simulated network decodes");
                self.post(core(to), out.sent);
                self.collect_events(to);
            } else {
                let mut out = Collect { sent: Vec::new() };
                let now = Instant::from_nanos(self.now);
                self.nodes[ticker].monitor.tick(now, &mut out);
                self.post(core(ticker), out.sent);
                self.collect_events(ticker);
            }
        }
    }

    /// Indices of cores still up and never declared failed by any core still up: the members.
    pub fn members(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].is_up()
                    && self
                        .nodes
                        .iter()
                        .filter(|n| n.is_up())
                        .all(|n| !n.monitor.failed().contains(core(i)))
            })
            .collect()
    }

    /// Events of core `index`.
    pub fn events(&self, index: usize) -> impl Iterator<Item = &Event> {
        self.nodes[index].events.iter().map(|(_, event)| event)
    }
}
