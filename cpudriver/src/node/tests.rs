//! Host tests of the node with 2–8 simulated cores: the deterministic simulation (`sim`) and real
//! threads over real URPC channels.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::sim::{CoreState, Sent, Sim, SimConfig, Work};
use super::Next;

/// Runs `sim` until every core's monitor saw the machine complete (bounded).
fn boot(sim: &mut Sim) {
    for _ in 0..2000 {
        sim.run_for(100_000);
        if sim
            .nodes
            .iter()
            .all(|node| node.monitor().is_machine_complete())
        {
            return;
        }
    }
    panic!("the monitors never completed the boot handshake");
}

/// Runs until no core can run for `quiet_ns` of simulated time, at most `max_ns`.
fn settle(sim: &mut Sim, max_ns: u64) {
    let end = sim.now.after(max_ns);
    while sim.now < end {
        sim.run_for(200_000);
        if sim.quiet() && sim.nodes.iter().all(|node| node.mailbox().backlog() == 0) {
            let lent: usize = sim.nodes.iter().map(|node| node.mailbox().lent()).sum();
            if lent == 0 {
                return;
            }
        }
    }
}

/// Every accepted message received exactly once, nothing refused received, nothing corrupted.
fn check_conservation(sim: &Sim) -> (usize, usize) {
    let mut accepted: Vec<Sent> = Vec::new();
    let mut refused: Vec<Sent> = Vec::new();
    let mut received: BTreeMap<Sent, u32> = BTreeMap::new();
    for log in &sim.logs {
        let log = log.borrow();
        assert_eq!(log.corrupt, 0, "a payload arrived corrupted");
        accepted.extend(log.accepted.iter().copied());
        refused.extend(log.refused.iter().map(|(sent, _)| *sent));
        for sent in &log.received {
            *received.entry(*sent).or_default() += 1;
        }
    }
    for sent in &accepted {
        assert_eq!(
            received.get(sent).copied().unwrap_or(0),
            1,
            "{sent:?} was accepted and must arrive exactly once"
        );
    }
    for sent in &refused {
        assert!(
            !received.contains_key(sent),
            "{sent:?} was refused but arrived"
        );
    }
    assert_eq!(
        received.len(),
        accepted.len(),
        "something arrived that nobody sent"
    );
    (accepted.len(), refused.len())
}

#[test]
fn a_remote_request_completes_with_no_timer_event() {
    for (cores, owner, size) in [
        (2, 1u16, 16usize),
        (4, 3, 200_000),
        (8, 5, netd::peers::MAX_KV_VALUE),
    ] {
        let mut config = SimConfig::new(cores);
        config.heartbeat_ns = 10_000_000_000; // no monitor deadline in the way
        config.pool_bytes = 4 << 20;
        let mut sim = Sim::new(config);
        boot(&mut sim);
        settle(&mut sim, 5_000_000);
        assert!(
            sim.quiet(),
            "every core halts once the boot traffic is done"
        );
        let (timers, ipis, start) = (sim.timer_events, *sim.ipis.borrow(), sim.now);
        sim.inject(0, Work::Request { to: owner, size });
        sim.run_for(1_000_000);
        let completed = sim.logs[0].borrow().completed.clone();
        assert_eq!(completed.len(), 1, "{cores} cores: the request completed");
        assert_eq!(completed[0].1, size, "the whole value came back");
        assert_eq!(sim.logs[usize::from(owner)].borrow().served, 1);
        assert_eq!(sim.timer_events, timers, "no core waited for a timer");
        assert!(
            *sim.ipis.borrow() >= ipis + 2,
            "the owner and the origin were woken by IPI"
        );
        let took = completed[0].2.as_nanos() - start.as_nanos();
        assert!(
            took < 100_000,
            "{cores} cores: completed after {took} ns of simulated time"
        );
        settle(&mut sim, 5_000_000);
        for node in &sim.nodes {
            assert_eq!(
                node.mailbox().bulk_in_use(),
                0,
                "every bulk buffer came back"
            );
        }
    }
}

#[test]
fn no_message_is_lost_or_duplicated_when_rings_fill() {
    for (cores, seed) in [(2usize, 1u64), (3, 7), (5, 11), (8, 3)] {
        let mut config = SimConfig::new(cores);
        config.seed = seed;
        config.pool_bytes = 64 << 10; // 32 blocks: bulk exhaustion happens too
        config.heartbeat_ns = 10_000_000_000; // no monitor timer wakes a stuck sender
        let mut sim = Sim::new(config);
        boot(&mut sim);
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for core in 0..cores {
            sim.nodes[core].net_mut().expect("a network").batch = 64;
            for _ in 0..400 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut to = (rng % cores as u64) as u16;
                if usize::from(to) == core {
                    to = ((usize::from(to) + 1) % cores) as u16;
                }
                let size = if rng & 0x100 == 0 {
                    (rng >> 20) as usize % 40
                } else {
                    100 + (rng >> 20) as usize % 6000
                };
                sim.inject(core, Work::Send { to, size });
            }
        }
        settle(&mut sim, 20_000_000);
        let (accepted, refused) = check_conservation(&sim);
        let deferred: u64 = sim
            .nodes
            .iter_mut()
            .map(|node| node.mailbox.counters().deferred)
            .sum();
        assert!(
            accepted > 0 && refused > 0,
            "{cores} cores: {accepted} accepted, {refused} refused"
        );
        assert!(deferred > 0, "{cores} cores: the outboxes were used");
        for node in sim.nodes.iter_mut() {
            assert_eq!(node.mailbox().backlog(), 0);
            assert_eq!(node.mailbox().lent(), 0, "every lent buffer came back");
            assert_eq!(node.mailbox().bulk_in_use(), 0);
            let counters = node.mailbox.counters();
            assert_eq!(counters.bulk_sent, counters.bulk_returned);
        }
    }
}

#[test]
fn a_full_ring_is_retried_without_any_other_wake_up() {
    // One way only, inline only: nothing comes back that could wake the sender; the outbox's
    // retry deadline must.
    let mut config = SimConfig::new(2);
    config.heartbeat_ns = 10_000_000_000;
    let mut sim = Sim::new(config);
    boot(&mut sim);
    settle(&mut sim, 5_000_000);
    sim.nodes[0].net_mut().expect("net").batch = 200;
    for _ in 0..120 {
        sim.inject(0, Work::Send { to: 1, size: 8 });
    }
    sim.run_for(2_000_000);
    let (accepted, refused) = check_conservation(&sim);
    assert_eq!(
        (accepted, refused),
        (120, 0),
        "ring and outbox held the burst"
    );
    assert!(
        sim.nodes[0].mailbox.counters().deferred > 0,
        "the ring filled"
    );
    assert!(sim.timer_events > 0, "the retry deadline woke the sender");
}

#[test]
fn a_peer_that_stops_never_blocks_a_sender() {
    let mut config = SimConfig::new(3);
    config.pool_bytes = 256 << 10;
    let mut sim = Sim::new(config);
    boot(&mut sim);
    settle(&mut sim, 5_000_000);
    sim.freeze(1);
    sim.nodes[0].net_mut().expect("a network").batch = 64;
    for index in 0..600 {
        let size = if index % 3 == 0 { 2000 } else { 20 };
        sim.inject(0, Work::Send { to: 1, size });
        if index % 6 == 0 {
            sim.inject(0, Work::Send { to: 2, size });
        }
    }
    let steps_before = sim.steps;
    sim.run_for(2_000_000);
    // Core 0 did all its sends, and is not spinning on the full ring: it halts between retries.
    assert!(sim.nodes[0].net().expect("net").rx.is_empty());
    assert!(
        sim.steps - steps_before < 2_000,
        "{} steps in 2 ms: the sender spins",
        sim.steps - steps_before
    );
    let log = sim.logs[0].borrow();
    let to_one: Vec<_> = log.accepted.iter().filter(|s| s.to == 1).collect();
    let refused_full = log
        .refused
        .iter()
        .filter(|(s, e)| {
            s.to == 1 && matches!(e, netd::PeerError::Full | netd::PeerError::BulkExhausted)
        })
        .count();
    assert!(!to_one.is_empty() && to_one.len() <= 64 + super::mailbox::OUTBOX_CAPACITY);
    assert!(
        refused_full > 0,
        "the stopped peer's ring and outbox filled and refused"
    );
    let to_two = log.accepted.iter().filter(|s| s.to == 2).count();
    drop(log);
    let reached_two = sim.logs[2].borrow().received.len();
    assert_eq!(
        reached_two, to_two,
        "the live peer got everything, unhindered"
    );
    assert_eq!(to_two, 100);
    // The monitors declare core 1 failed; core 0 fences it and takes its buffers back.
    sim.run_for(1_000_000_000);
    let console = sim.console.borrow().clone();
    assert!(
        console
            .iter()
            .any(|l| l.starts_with("monitor: core 0 saw core 1 fail")),
        "{console:?}"
    );
    assert!(sim.nodes[0].mailbox().is_fenced(1));
    assert_eq!(
        sim.nodes[0].mailbox().backlog(),
        0,
        "the fenced peer's outbox was dropped"
    );
    assert_eq!(
        sim.nodes[0].mailbox().bulk_in_use(),
        0,
        "buffers lent to it were reclaimed"
    );
    sim.inject(0, Work::Send { to: 1, size: 10 });
    sim.inject(0, Work::Send { to: 1, size: 3000 });
    sim.run_for(1_000_000);
    let log = sim.logs[0].borrow();
    let fenced = log
        .refused
        .iter()
        .filter(|(_, e)| *e == netd::PeerError::PeerFenced(1))
        .count();
    assert_eq!(fenced, 2, "sends to a fenced peer fail at once");
    assert_eq!(sim.states[1], CoreState::Frozen);
}

#[test]
fn a_core_halts_until_its_earliest_deadline() {
    let mut config = SimConfig::new(2);
    config.heartbeat_ns = 10_000_000_000;
    let mut sim = Sim::new(config);
    boot(&mut sim);
    settle(&mut sim, 5_000_000);
    let at = sim.now.after(300_000);
    sim.nodes[0].net_mut().expect("net").deadline = Some(at);
    // Wake core 0 so it sees the new deadline (as a frame would).
    sim.inject(0, Work::Local);
    let timers = sim.timer_events;
    sim.run_until(at.after(50_000), 100_000);
    assert_eq!(
        sim.timer_events,
        timers + 1,
        "one timer event, at the deadline"
    );
    assert!(
        sim.nodes[0].net().expect("net").deadline.is_none(),
        "the deadline was served"
    );
    assert!(sim.now >= at);
    assert_eq!(
        Next::Halt { until: Some(at) }.and(Next::until(at.after(1))),
        Next::until(at)
    );
    assert_eq!(Next::IDLE.and(Next::Run), Next::Run);
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Action {
        Send { core: usize, to: usize, size: usize },
        Request { core: usize, to: usize, size: usize },
        Local { core: usize, count: usize },
        Deadline { core: usize, after_ns: u64 },
        Burst { core: usize },
        Run { ns: u64 },
    }

    fn action(cores: usize) -> impl Strategy<Value = Action> {
        prop_oneof![
            (0..cores, 0..cores, 0usize..4000).prop_map(|(core, to, size)| Action::Send {
                core,
                to,
                size
            }),
            (0..cores, 0..cores, 0usize..9000).prop_map(|(core, to, size)| Action::Request {
                core,
                to,
                size
            }),
            (0..cores, 1usize..20).prop_map(|(core, count)| Action::Local { core, count }),
            (0..cores, 1u64..2_000_000)
                .prop_map(|(core, after_ns)| Action::Deadline { core, after_ns }),
            (0..cores).prop_map(|core| Action::Burst { core }),
            (1u64..500_000).prop_map(|ns| Action::Run { ns }),
        ]
    }

    fn scenario() -> impl Strategy<Value = (usize, u64, Vec<Action>)> {
        (2usize..=4).prop_flat_map(|cores| {
            (
                Just(cores),
                any::<u64>(),
                proptest::collection::vec(action(cores), 1..60),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Whatever arrives in whatever order, a core that halts has nothing pending (the
        /// simulation checks every halt), and every accepted message arrives exactly once.
        #[test]
        fn the_core_never_halts_with_pending_work((cores, seed, actions) in scenario()) {
            let mut config = SimConfig::new(cores);
            config.seed = seed;
            config.pool_bytes = 32 << 10;
            let mut sim = Sim::new(config);
            boot(&mut sim);
            for action in actions {
                match action {
                    Action::Send { core, to, size } if core != to => {
                        sim.inject(core, Work::Send { to: to as u16, size })
                    }
                    Action::Request { core, to, size } if core != to => {
                        sim.inject(core, Work::Request { to: to as u16, size })
                    }
                    Action::Local { core, count } => {
                        for _ in 0..count {
                            sim.inject(core, Work::Local);
                        }
                    }
                    Action::Deadline { core, after_ns } => {
                        let at = sim.now.after(after_ns);
                        sim.nodes[core].net_mut().expect("net").deadline = Some(at);
                    }
                    Action::Burst { core } => {
                        for index in 0..100usize {
                            let to = ((core + 1 + index % (cores - 1)) % cores) as u16;
                            sim.inject(core, Work::Send { to, size: index * 37 % 3000 });
                        }
                    }
                    Action::Run { ns } => {
                        sim.run_for(ns);
                    }
                    _ => {}
                }
                sim.run_for(20_000);
            }
            settle(&mut sim, 20_000_000);
            prop_assert_eq!(sim.bad_halts, 0);
            check_conservation(&sim);
            for node in &sim.nodes {
                prop_assert_eq!(node.mailbox().bulk_in_use(), 0);
            }
        }
    }
}

mod threads {
    //! Real threads, one per core, halting by parking and woken by unparking: the URPC
    //! sleep/notify handshake under real races.

    use super::super::bulk::{BulkPool, BulkRegions};
    use super::super::control::KernelHooks;
    use super::super::mailbox::Mailbox;
    use super::super::sim::{FakeNet, Work};
    use super::super::{Instant, Next, Node, NodeConfig, Platform};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::thread::Thread;
    use std::time::Duration;
    use std::vec::Vec;

    struct ThreadPlatform {
        start: std::time::Instant,
        threads: Arc<OnceLock<Vec<Thread>>>,
        wakes: Arc<AtomicU64>,
    }

    impl Platform for ThreadPlatform {
        fn now(&self) -> Instant {
            Instant::from_nanos(self.start.elapsed().as_nanos() as u64 + 1_000_000)
        }
        fn cycles(&self) -> u64 {
            self.start.elapsed().as_nanos() as u64
        }
        fn cycles_per_ms(&self) -> u64 {
            1_000_000
        }
        fn wake(&mut self, core: usize) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            if let Some(thread) = self.threads.get().and_then(|threads| threads.get(core)) {
                thread.unpark();
            }
        }
        fn print(&mut self, _line: core::fmt::Arguments<'_>) {}
        fn set_wake_forwards(&mut self, _cores: &[usize]) {}
    }

    /// What the core threads share to agree they are done.
    struct Shared {
        sending: AtomicUsize,
        accepted: Vec<AtomicUsize>,
        received: Vec<AtomicUsize>,
        quiet: Vec<AtomicUsize>,
        results: Mutex<Vec<(Vec<super::Sent>, Vec<super::Sent>)>>,
    }

    impl Shared {
        /// Every core sent everything, every accepted message arrived, and no core has letters
        /// waiting, buffers lent or returns owed.
        fn finished(&self) -> bool {
            let sum = |counters: &[AtomicUsize]| -> usize {
                counters.iter().map(|c| c.load(Ordering::SeqCst)).sum()
            };
            self.sending.load(Ordering::SeqCst) == 0
                && sum(&self.received) == sum(&self.accepted)
                && self.quiet.iter().all(|q| q.load(Ordering::SeqCst) == 1)
        }
    }

    #[test]
    fn threads_exchange_bursts_without_loss_and_every_buffer_comes_back() {
        for cores in [2usize, 4, 8] {
            run(cores);
        }
    }

    fn run(cores: usize) {
        const SENDS: usize = 1500;
        let endpoints = super::super::sim::full_mesh(cores);
        let pool_bytes = 128 << 10;
        let pools: Vec<(usize, usize)> = (0..cores)
            .map(|_| {
                let memory: &'static mut [u64] =
                    Box::leak(vec![0u64; pool_bytes / 8].into_boxed_slice());
                (memory.as_mut_ptr().expose_provenance(), pool_bytes)
            })
            .collect();
        // SAFETY: fresh leaked memory per core, written only by its pool.
        let regions = unsafe { BulkRegions::new(&pools) };
        let threads: Arc<OnceLock<Vec<Thread>>> = Arc::new(OnceLock::new());
        let shared = Arc::new(Shared {
            sending: AtomicUsize::new(cores),
            accepted: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            received: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            quiet: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            results: Mutex::new(Vec::new()),
        });
        let wakes = Arc::new(AtomicU64::new(0));
        let start = std::time::Instant::now();
        let mut handles = Vec::new();
        for (core, ends) in endpoints.into_iter().enumerate() {
            let (regions, threads, shared, wakes) = (
                regions.clone(),
                threads.clone(),
                shared.clone(),
                wakes.clone(),
            );
            let (base, length) = pools[core];
            handles.push(std::thread::spawn(move || {
                // SAFETY: this core's leaked pool memory, used by this pool alone.
                let pool = unsafe { BulkPool::new(base, length, urpc::RegionId(core as u16)) };
                let mailbox = Mailbox::new(core, ends, pool);
                let me = monitor::CoreId::new(core as u8).unwrap();
                let mut monitor_config = monitor::Config::new(me, monitor::CoreSet::first(cores));
                monitor_config.heartbeat_period_ns = 1_000_000_000;
                monitor_config.missed_heartbeats = 30;
                monitor_config.retransmit_ns = 100_000_000;
                monitor_config.boot_timeout_ns = 60_000_000_000;
                let info = monitor::CoreInfo {
                    core: me,
                    apic_id: core as u32,
                    numa_node: 0,
                    memory: monitor::Region { base: 0, len: 0 },
                };
                let mut platform = ThreadPlatform {
                    start,
                    threads: threads.clone(),
                    wakes,
                };
                let now = platform.now();
                let monitor = monitor::Monitor::new(
                    monitor_config,
                    info,
                    KernelHooks {
                        counters: [0; monitor::COUNTERS],
                    },
                    now,
                )
                .unwrap();
                let mut net = FakeNet::new(core as u16, cores as u16);
                net.batch = 32;
                for index in 0..SENDS {
                    let to = ((core + 1 + index % (cores - 1)) % cores) as u16;
                    let size = if index % 4 == 0 {
                        500 + index % 3000
                    } else {
                        index % 40
                    };
                    net.rx.push_back(Work::Send { to, size });
                }
                let log = net.log.clone();
                let config = NodeConfig {
                    core,
                    cores,
                    queues: cores as u16,
                    poll_after_traffic_ns: 0,
                    tick_ns: None,
                    stats_period_ns: 1_000_000_000_000,
                };
                let mut node = Node::new(
                    config,
                    mailbox,
                    regions,
                    Some(net),
                    None,
                    monitor,
                    None,
                    now,
                );
                while threads.get().is_none() {
                    std::thread::yield_now();
                }
                let mut reported = false;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let now = platform.now();
                    let next = node.turn(now, &mut platform);
                    if !reported && node.net().unwrap().rx.is_empty() {
                        reported = true;
                        shared.accepted[core].store(log.borrow().accepted.len(), Ordering::SeqCst);
                        shared.sending.fetch_sub(1, Ordering::SeqCst);
                    }
                    shared.received[core].store(log.borrow().received.len(), Ordering::SeqCst);
                    let mailbox = node.mailbox();
                    let quiet =
                        mailbox.backlog() == 0 && mailbox.lent() == 0 && !mailbox.owes_returns();
                    shared.quiet[core].store(usize::from(quiet), Ordering::SeqCst);
                    if shared.finished() {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "core {core}: no quiescence in 60 s"
                    );
                    if let Next::Halt { until } = next {
                        let now = platform.now();
                        if node.may_halt(now, until) {
                            let wait = until.map_or(Duration::from_millis(2), |at| {
                                Duration::from_nanos(at.as_nanos().saturating_sub(now.as_nanos()))
                            });
                            std::thread::park_timeout(wait.min(Duration::from_millis(2)));
                        }
                        node.woke();
                    }
                }
                let mut results = shared.results.lock().unwrap();
                results.push((log.borrow().accepted.clone(), log.borrow().received.clone()));
            }));
        }
        let _ = threads.set(handles.iter().map(|h| h.thread().clone()).collect());
        for handle in handles {
            handle.join().expect("a core thread panicked");
        }
        let results = shared.results.lock().unwrap();
        let mut sent: Vec<_> = results
            .iter()
            .flat_map(|(accepted, _)| accepted.clone())
            .collect();
        let mut got: Vec<_> = results
            .iter()
            .flat_map(|(_, received)| received.clone())
            .collect();
        sent.sort();
        got.sort();
        assert_eq!(
            sent.len(),
            got.len(),
            "{cores} threads: accepted vs received"
        );
        assert_eq!(
            sent, got,
            "{cores} threads: every accepted message exactly once"
        );
        assert!(wakes.load(Ordering::Relaxed) > 0, "halted cores were woken");
    }
}
