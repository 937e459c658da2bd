//! Whole-monitor tests: scripted scenarios on a perfect simulated network (exact message-delay
//! figures, each failure case of the protocols), seeded chaos runs checking the invariants over
//! hundreds of schedules, and monitors on real threads connected by std channels.

use std::collections::{BTreeMap, BTreeSet};

use crate::sim::{core, Network, Sim};
use crate::{
    AgreementError, BindFailure, BindingId, Change, Config, CoreSet, Event, Name, Protocol,
    RegisterOutcome, Role, TxId, COUNTERS,
};

const MS: u64 = 1_000_000;
/// One message delay on the perfect network.
const DELAY: u64 = 100_000;

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).unwrap()
}

fn open(port: u16) -> Change {
    Change::OpenPort {
        proto: Protocol::Udp,
        port,
    }
}

/// Booted machine of `count` cores on the perfect network.
fn booted(count: usize) -> Sim {
    let mut sim = Sim::new(count, 1, Network::perfect(DELAY), |_| {});
    sim.run_until(5 * MS);
    for i in 0..count {
        assert!(
            sim.nodes[i].monitor.is_machine_complete(),
            "core {i} booted"
        );
    }
    sim
}

fn decisions(sim: &Sim, index: usize, tx: TxId) -> Vec<bool> {
    sim.events(index)
        .filter_map(|event| match *event {
            Event::ChangeCommitted { tx: t, .. } if t == tx => Some(true),
            Event::ChangeAborted { tx: t, .. } if t == tx => Some(false),
            _ => None,
        })
        .collect()
}

fn time_of(sim: &Sim, index: usize, wanted: impl Fn(&Event) -> bool) -> Option<u64> {
    sim.nodes[index]
        .events
        .iter()
        .find(|(_, e)| wanted(e))
        .map(|(t, _)| *t)
}

// ---------------------------------------------------------------------------------------------
// Scripted scenarios on the perfect network.

#[test]
fn boot_handshake_learns_every_peer_and_completes_in_two_delays() {
    let mut sim = Sim::new(4, 1, Network::perfect(DELAY), |_| {});
    sim.run_until(5 * MS);
    for i in 0..4 {
        let complete: Vec<_> = sim
            .events(i)
            .filter(|e| matches!(e, Event::MachineComplete { .. }))
            .collect();
        assert_eq!(
            complete,
            vec![&Event::MachineComplete {
                members: CoreSet::first(4)
            }]
        );
        for j in 0..4 {
            let info = sim.nodes[i].monitor.peer(core(j)).expect("peer known");
            assert_eq!(info.memory, crate::sim::memory_of(core(j)));
            assert_eq!(info.apic_id, 2 * j as u32);
        }
    }
    // Hellos go out at the first tick (t = 0): the leader completes after one delay, the others
    // hear of it one delay later.
    let leader = time_of(&sim, 0, |e| matches!(e, Event::MachineComplete { .. })).unwrap();
    let other = time_of(&sim, 3, |e| matches!(e, Event::MachineComplete { .. })).unwrap();
    assert_eq!((leader, other), (DELAY, 2 * DELAY));
}

#[test]
fn agreement_commits_everywhere_in_three_delays() {
    let mut sim = booted(4);
    let start = sim.now;
    let tx = sim
        .call(1, |m, now, out| m.begin_agreement(now, open(80), out))
        .unwrap()
        .unwrap();
    assert_eq!(
        sim.call(1, |m, now, out| m.begin_agreement(now, open(81), out))
            .unwrap(),
        Err(AgreementError::Busy)
    );
    sim.run_until(start + 10 * MS);
    for i in 0..4 {
        assert_eq!(decisions(&sim, i, tx), vec![true], "core {i}");
        assert_eq!(sim.nodes[i].monitor.prepared().count(), 0);
    }
    let committed = |i| time_of(&sim, i, |e| matches!(e, Event::ChangeCommitted { .. })).unwrap();
    // Prepare, vote: the coordinator decides after two delays; commit: participants after three.
    assert_eq!(committed(1) - start, 2 * DELAY);
    assert_eq!(committed(0) - start, 3 * DELAY);
    assert_eq!(
        sim.nodes[1].monitor.coordinating(),
        None,
        "acks in after four delays"
    );
}

#[test]
fn a_veto_aborts_everywhere_and_conflicts_are_voted_down() {
    let mut sim = booted(4);
    sim.nodes[2].monitor.hooks_mut().veto_ports.push(25);
    let tx = sim
        .call(0, |m, now, out| m.begin_agreement(now, open(25), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    for i in 0..4 {
        let expected: Vec<bool> = if i == 2 { vec![] } else { vec![false] };
        assert_eq!(decisions(&sim, i, tx), expected, "core {i}");
    }
    // The coordinator's own veto refuses at once.
    assert_eq!(
        sim.call(2, |m, now, out| m.begin_agreement(now, open(25), out))
            .unwrap(),
        Err(AgreementError::Vetoed)
    );
    // Two conflicting changes begun at once by two coordinators: not both commit.
    let a = sim
        .call(1, |m, now, out| m.begin_agreement(now, open(30), out))
        .unwrap()
        .unwrap();
    let b = sim
        .call(3, |m, now, out| {
            m.begin_agreement(
                now,
                Change::ClosePort {
                    proto: Protocol::Udp,
                    port: 30,
                },
                out,
            )
        })
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    let outcome = |tx| {
        let all: BTreeSet<Vec<bool>> = (0..4).map(|i| decisions(&sim, i, tx)).collect();
        assert!(
            !(all.contains(&vec![true]) && all.contains(&vec![false])),
            "{all:?}"
        );
        all.contains(&vec![true])
    };
    assert!(
        !(outcome(a) && outcome(b)),
        "conflicting changes both committed"
    );
}

#[test]
fn coordinator_crash_after_prepare_resolves_to_abort() {
    let mut sim = booted(4);
    let start = sim.now;
    let tx = sim
        .call(1, |m, now, out| m.begin_agreement(now, open(8), out))
        .unwrap()
        .unwrap();
    // Prepares delivered and votes sent; the coordinator dies before the votes arrive.
    sim.run_until(start + DELAY + DELAY / 2);
    sim.crash(1);
    sim.run_until(start + 200 * MS);
    for i in [0, 2, 3] {
        assert_eq!(decisions(&sim, i, tx), vec![false], "core {i}");
        assert_eq!(sim.nodes[i].monitor.prepared().count(), 0);
    }
}

#[test]
fn coordinator_crash_after_one_commit_resolves_to_commit() {
    let mut sim = booted(4);
    let start = sim.now;
    let tx = sim
        .call(1, |m, now, out| m.begin_agreement(now, open(9), out))
        .unwrap()
        .unwrap();
    sim.run_until(start + DELAY + DELAY / 2);
    // Only core 0 will hear the commit.
    sim.blocked = vec![(1, 2), (1, 3)];
    sim.run_until(start + 2 * DELAY + DELAY / 2);
    sim.crash(1);
    sim.blocked.clear();
    sim.run_until(start + 200 * MS);
    for i in [0, 2, 3] {
        assert_eq!(decisions(&sim, i, tx), vec![true], "core {i}");
    }
    // Cores 2 and 3 learned it by the termination protocol, after detecting the failure.
    let resolved = time_of(&sim, 2, |e| matches!(e, Event::ChangeCommitted { .. })).unwrap();
    let detected = time_of(&sim, 2, |e| *e == Event::CoreFailed(core(1))).unwrap();
    assert!(resolved >= detected);
    eprintln!(
        "commit learned by termination {} us after detection, {} us after begin",
        (resolved - detected) / 1000,
        (resolved - start) / 1000
    );
}

#[test]
fn participant_crash_before_voting_is_dropped_from_the_transaction() {
    let mut sim = Sim::new(4, 1, Network::perfect(DELAY), |c| {
        c.prepare_timeout_ns = 500 * MS
    });
    sim.run_until(5 * MS);
    sim.crash(3);
    let start = sim.now;
    let tx = sim
        .call(0, |m, now, out| m.begin_agreement(now, open(10), out))
        .unwrap()
        .unwrap();
    sim.run_until(start + 200 * MS);
    for i in 0..3 {
        assert_eq!(decisions(&sim, i, tx), vec![true], "core {i}");
    }
}

#[test]
fn crashed_core_is_detected_by_all_within_k_plus_one_periods() {
    let mut sim = booted(4);
    let config = *sim.nodes[0].monitor.config();
    let crash = sim.now + 3 * MS;
    sim.run_until(crash);
    sim.crash(2);
    sim.run_until(crash + 200 * MS);
    for i in [0, 1, 3] {
        let t = time_of(&sim, i, |e| *e == Event::CoreFailed(core(2))).expect("detected");
        assert!(t > crash && t - crash <= config.failure_timeout_ns() + config.heartbeat_period_ns);
        eprintln!(
            "core {i} detected the crash after {} us",
            (t - crash) / 1000
        );
    }
    assert!(sim.members() == vec![0, 1, 3]);
}

#[test]
fn a_core_declared_failed_while_alive_fences_itself() {
    let mut sim = booted(3);
    // Core 2 cannot be heard for a while, but hears everything.
    sim.blocked = vec![(2, 0), (2, 1)];
    sim.run_until(sim.now + 100 * MS);
    sim.blocked.clear();
    sim.run_until(sim.now + 50 * MS);
    assert!(sim.nodes[2].fenced);
    assert!(sim.events(2).any(|e| *e == Event::Fenced));
    assert!(sim.events(0).any(|e| *e == Event::CoreFailed(core(2))));
    assert_eq!(
        sim.call(0, |m, now, out| m.begin_agreement(now, open(1), out))
            .unwrap()
            .map(|_| ()),
        Ok(())
    );
}

#[test]
fn binding_completes_on_both_sides_and_regions_come_from_the_client() {
    let mut sim = booted(4);
    sim.call(2, |m, now, out| m.register_name(now, name("echo"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + MS);
    assert!(sim.events(2).any(|e| *e
        == Event::NameRegistered {
            name: name("echo"),
            outcome: RegisterOutcome::Registered
        }));
    let id = sim
        .call(3, |m, now, out| m.bind(now, name("echo"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    let ready = |i: usize, role| {
        sim.events(i).find_map(|e| match *e {
            Event::BindingReady {
                binding,
                role: r,
                peer,
                region,
                ..
            } if binding == id && r == role => Some((peer, region)),
            _ => None,
        })
    };
    let (client_peer, client_region) = ready(3, Role::Client).expect("client ready");
    let (server_peer, server_region) = ready(2, Role::Server).expect("server ready");
    assert_eq!((client_peer, server_peer), (core(2), core(3)));
    assert_eq!(client_region, server_region);
    let memory = crate::sim::memory_of(core(3));
    assert!(client_region.base >= memory.base && client_region.base < memory.base + memory.len);
    // A binding to a service on the same core works through the loopback.
    sim.call(1, |m, now, out| m.register_name(now, name("kv"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + MS);
    let local = sim
        .call(1, |m, now, out| m.bind(now, name("kv"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    let roles: Vec<Role> = sim
        .events(1)
        .filter_map(|e| match *e {
            Event::BindingReady { binding, role, .. } if binding == local => Some(role),
            _ => None,
        })
        .collect();
    assert_eq!(roles, vec![Role::Client, Role::Server]);
}

#[test]
fn binding_failures_free_the_region_and_leave_no_server_state() {
    let mut sim = Sim::new(3, 1, Network::perfect(DELAY), |c| {
        c.bind_timeout_ns = 20 * MS
    });
    sim.run_until(5 * MS);
    let id = sim
        .call(1, |m, now, out| m.bind(now, name("nobody"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    assert!(sim.events(1).any(|e| *e
        == Event::BindingFailed {
            binding: id,
            name: name("nobody"),
            reason: BindFailure::NoSuchName
        }));
    assert_eq!(sim.nodes[1].monitor.hooks().freed.len(), 1);
    // Server unreachable after the lookup: the client times out and cancels.
    sim.call(2, |m, now, out| m.register_name(now, name("svc"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + MS);
    sim.blocked = vec![(2, 1)];
    let id = sim
        .call(1, |m, now, out| m.bind(now, name("svc"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 25 * MS);
    sim.blocked.clear();
    sim.run_until(sim.now + 200 * MS);
    assert!(sim.events(1).any(|e| matches!(e,
        Event::BindingFailed { binding, reason: BindFailure::Timeout, .. } if *binding == id)));
    assert!(!sim
        .events(2)
        .any(|e| matches!(e, Event::BindingReady { .. })));
    assert_eq!(sim.nodes[1].monitor.hooks().freed.len(), 2);
}

#[test]
fn names_are_unique_and_survive_the_directory_core_failing() {
    let mut sim = booted(4);
    sim.call(2, |m, now, out| m.register_name(now, name("http"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + MS);
    sim.call(3, |m, now, out| m.register_name(now, name("http"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + MS);
    assert!(sim.events(3).any(|e| *e
        == Event::NameRegistered {
            name: name("http"),
            outcome: RegisterOutcome::Taken(core(2))
        }));
    sim.crash(0);
    sim.run_until(sim.now + 100 * MS);
    assert_eq!(sim.nodes[3].monitor.leader(), core(1));
    let id = sim
        .call(3, |m, now, out| m.bind(now, name("http"), out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    assert!(sim.events(3).any(|e| matches!(e,
        Event::BindingReady { binding, role: Role::Client, .. } if *binding == id)));
}

#[test]
fn stats_gathering_collects_every_core_in_chunks() {
    let mut sim = booted(5);
    let request = sim
        .call(0, |m, now, out| m.request_stats(now, out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 10 * MS);
    assert!(sim.events(0).any(|e| *e
        == Event::StatsReady {
            request,
            responded: CoreSet::first(5),
            missing: CoreSet::EMPTY,
            timed_out: false
        }));
    for i in 0..5 {
        let counters = sim.nodes[0].monitor.gathered(core(i)).expect("gathered");
        let expected: [u64; COUNTERS] = core::array::from_fn(|c| i as u64 * 1000 + c as u64);
        assert_eq!(*counters, expected);
    }
    // A silent core: the gathering reports what arrived at the timeout.
    let mut sim = Sim::new(5, 1, Network::perfect(DELAY), |c| {
        c.stats_timeout_ns = 10 * MS
    });
    sim.run_until(5 * MS);
    sim.blocked = vec![(4, 0)];
    let request = sim
        .call(0, |m, now, out| m.request_stats(now, out))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now + 15 * MS);
    let mut missing = CoreSet::EMPTY;
    missing.insert(core(4));
    assert!(sim.events(0).any(|e| matches!(e,
        Event::StatsReady { request: r, missing: m, timed_out: true, .. } if *r == request && *m == missing)));
}

// ---------------------------------------------------------------------------------------------
// Seeded chaos: every schedule is a pure function of its seed, so a failure names its seed.

const SEEDS: u64 = 500;

fn chaos_config(missed: u32) -> impl Fn(&mut Config) {
    move |c: &mut Config| c.missed_heartbeats = missed
}

#[test]
fn chaos_boot_completes_when_no_core_crashes() {
    for seed in 0..SEEDS {
        let mut rng = crate::sim::Rng::new(seed);
        let count = rng.between(2, 8) as usize;
        // K = 8 makes a false suspicion under 10% loss vanishingly rare.
        let mut sim = Sim::new(count, seed, Network::chaotic(100), chaos_config(8));
        sim.run_until(150 * MS);
        for i in 0..count {
            let complete: Vec<_> = sim
                .events(i)
                .filter(|e| matches!(e, Event::MachineComplete { .. }))
                .collect();
            assert_eq!(
                complete,
                vec![&Event::MachineComplete {
                    members: CoreSet::first(count)
                }],
                "seed {seed} core {i}"
            );
            for j in 0..count {
                assert!(
                    sim.nodes[i].monitor.peer(core(j)).is_some(),
                    "seed {seed}: {i} knows {j}"
                );
            }
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    committed: usize,
    aborted: usize,
    fenced: usize,
    crashed: usize,
    orphaned: usize,
    resolve_queries: usize,
    committed_answers: usize,
}

#[test]
fn chaos_agreement_never_diverges_and_always_terminates() {
    let mut tally = Tally::default();
    for seed in 0..SEEDS {
        let mut rng = crate::sim::Rng::new(seed ^ 0xa9ee);
        let count = rng.between(3, 6) as usize;
        let mut sim = Sim::new(count, seed, Network::chaotic(100), chaos_config(4));
        for i in 0..count {
            if rng.chance(300) {
                let port = rng.between(1, 4) as u16;
                sim.nodes[i].monitor.hooks_mut().veto_ports.push(port);
            }
        }
        let mut actions: Vec<(u64, usize, Option<Change>)> = Vec::new();
        for _ in 0..20 {
            let at = rng.between(5 * MS, 300 * MS);
            let who = rng.below(count as u64) as usize;
            let port = rng.between(1, 4) as u16;
            let proto = if rng.chance(500) {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let change = match rng.below(3) {
                0 => Change::OpenPort { proto, port },
                1 => Change::ClosePort { proto, port },
                _ => Change::MoveFlowGroup {
                    group: rng.below(3) as u16,
                    from: core(rng.below(count as u64) as usize),
                    to: core(rng.below(count as u64) as usize),
                },
            };
            actions.push((at, who, Some(change)));
        }
        let mut crashes_left = rng.below(3);
        if crashes_left > 0 && rng.chance(500) {
            // A crash at a random moment, unrelated to any transaction.
            actions.push((
                rng.between(5 * MS, 300 * MS),
                rng.below(count as u64) as usize,
                None,
            ));
            crashes_left -= 1;
        }
        if crashes_left > 0 && rng.chance(500) {
            crashes_left -= 1;
            sim.crash_on_commit.push(rng.below(count as u64) as usize);
        }
        let mut begun: BTreeMap<TxId, Change> = BTreeMap::new();
        while !actions.is_empty() {
            actions.sort_by_key(|a| std::cmp::Reverse(a.0));
            let (at, who, action) = actions.pop().unwrap();
            sim.run_until(at);
            match action {
                Some(change) => {
                    if let Some(Ok(tx)) =
                        sim.call(who, |m, now, out| m.begin_agreement(now, change, out))
                    {
                        begun.insert(tx, change);
                        // Crash a coordinator or a participant mid-protocol.
                        if crashes_left > 0 && rng.chance(250) {
                            crashes_left -= 1;
                            let victim = if rng.chance(600) {
                                who
                            } else {
                                rng.below(count as u64) as usize
                            };
                            actions.push((at + rng.between(DELAY, 4 * MS), victim, None));
                        }
                    }
                }
                None => sim.crash(who),
            }
        }
        sim.network = Network::perfect(DELAY);
        sim.run_until(1_300 * MS);

        let members = sim.members();
        assert!(!members.is_empty(), "seed {seed}");
        for &m in &members {
            assert_eq!(
                sim.nodes[m].monitor.prepared().count(),
                0,
                "seed {seed}: {m} blocked"
            );
            assert_eq!(
                sim.nodes[m].monitor.coordinating(),
                None,
                "seed {seed}: {m} still coordinating"
            );
        }
        for (&tx, &change) in &begun {
            let per_member: Vec<Vec<bool>> =
                members.iter().map(|&m| decisions(&sim, m, tx)).collect();
            for (d, &m) in per_member.iter().zip(&members) {
                assert!(d.len() <= 1, "seed {seed}: {m} decided {tx:?} twice");
            }
            let any_commit = per_member.iter().any(|d| d == &vec![true]);
            let any_abort = per_member.iter().any(|d| d == &vec![false]);
            assert!(
                !(any_commit && any_abort),
                "seed {seed}: {tx:?} diverged: {per_member:?}"
            );
            if any_commit {
                // Committed means it holds on every live core.
                assert!(
                    per_member.iter().all(|d| d == &vec![true]),
                    "seed {seed}: {tx:?} {per_member:?}"
                );
                tally.committed += 1;
            } else if any_abort {
                tally.aborted += 1;
            } else {
                tally.orphaned += 1; // its coordinator died before anyone prepared it
            }
            for &m in &members {
                for event in sim.events(m) {
                    if let Event::ChangeCommitted { tx: t, change: c } = event {
                        if *t == tx {
                            assert_eq!(*c, change, "seed {seed}");
                        }
                    }
                }
            }
        }
        tally.resolve_queries += sim.sent_by_tag[20] as usize;
        tally.committed_answers += sim.committed_answers as usize;
        tally.fenced += sim.nodes.iter().filter(|n| n.fenced).count();
        tally.crashed += sim
            .nodes
            .iter()
            .filter(|n| n.crashed_at.is_some() && !n.fenced)
            .count();
    }
    eprintln!("agreement chaos over {SEEDS} seeds: {tally:?}");
    assert!(
        tally.committed > 100 && tally.aborted > 100 && tally.crashed > 100,
        "{tally:?}"
    );
    assert!(
        tally.resolve_queries > 100,
        "the termination protocol ran: {tally:?}"
    );
}

#[test]
fn chaos_crashed_cores_are_detected_by_every_live_core_in_time() {
    let mut false_suspicions = 0;
    for seed in 0..SEEDS {
        let mut rng = crate::sim::Rng::new(seed ^ 0xdead);
        let count = rng.between(3, 6) as usize;
        let mut sim = Sim::new(count, seed, Network::chaotic(20), chaos_config(4));
        let config = *sim.nodes[0].monitor.config();
        let victims = rng.between(1, (count as u64 - 1).min(2));
        let mut crashes: Vec<(u64, usize)> = Vec::new();
        for _ in 0..victims {
            crashes.push((
                rng.between(20 * MS, 250 * MS),
                rng.below(count as u64) as usize,
            ));
        }
        crashes.sort();
        for &(at, who) in &crashes {
            sim.run_until(at);
            sim.crash(who);
        }
        sim.run_until(450 * MS);
        let bound = config.failure_timeout_ns() + config.heartbeat_period_ns;
        let members = sim.members();
        for (victim, node) in sim.nodes.iter().enumerate() {
            let Some(crashed) = node.crashed_at else {
                continue;
            };
            if node.fenced {
                continue;
            }
            for &m in &members {
                let detected = time_of(&sim, m, |e| *e == Event::CoreFailed(core(victim)))
                    .unwrap_or_else(|| panic!("seed {seed}: {m} never detected {victim}"));
                assert!(
                    detected <= crashed + bound,
                    "seed {seed}: {m} detected {victim} {} ms after its crash",
                    (detected - crashed) / MS
                );
            }
        }
        false_suspicions += sim.nodes.iter().filter(|n| n.fenced).count();
    }
    eprintln!("detection chaos over {SEEDS} seeds: {false_suspicions} false suspicions");
}

#[test]
fn chaos_bindings_complete_on_both_sides_or_neither() {
    let mut ready_pairs = 0;
    let mut failed = 0;
    for seed in 0..SEEDS {
        let mut rng = crate::sim::Rng::new(seed ^ 0xb1d);
        let count = rng.between(2, 6) as usize;
        let mut sim = Sim::new(count, seed, Network::chaotic(100), chaos_config(4));
        let names = [name("a"), name("b"), name("c"), name("missing")];
        sim.run_until(5 * MS);
        for service in &names[..3] {
            let owner = rng.below(count as u64) as usize;
            sim.call(owner, |m, now, out| m.register_name(now, *service, out));
        }
        let mut actions: Vec<(u64, usize, Option<Name>)> = (0..10)
            .map(|_| {
                let at = rng.between(10 * MS, 250 * MS);
                let who = rng.below(count as u64) as usize;
                (at, who, Some(names[rng.below(4) as usize]))
            })
            .collect();
        if rng.chance(500) {
            actions.push((
                rng.between(5 * MS, 250 * MS),
                rng.below(count as u64) as usize,
                None,
            ));
        }
        actions.sort_by_key(|a| a.0);
        let mut asked: Vec<(usize, BindingId)> = Vec::new();
        for (at, who, action) in actions {
            sim.run_until(at);
            match action {
                Some(service) => {
                    if let Some(Ok(id)) = sim.call(who, |m, now, out| m.bind(now, service, out)) {
                        asked.push((who, id));
                    }
                }
                None => sim.crash(who),
            }
        }
        sim.network = Network::perfect(DELAY);
        sim.run_until(1_300 * MS);

        let members: BTreeSet<usize> = sim.members().into_iter().collect();
        let ready_at = |i: usize, id: BindingId, role: Role| {
            sim.events(i)
                .filter(|e| matches!(e, Event::BindingReady { binding, role: r, .. } if *binding == id && *r == role))
                .count()
        };
        for &(client, id) in &asked {
            let client_ready = ready_at(client, id, Role::Client);
            let client_failed = sim
                .events(client)
                .filter(|e| matches!(e, Event::BindingFailed { binding, .. } if *binding == id))
                .count();
            let servers: Vec<(usize, usize)> = (0..count)
                .map(|s| (s, ready_at(s, id, Role::Server)))
                .filter(|&(_, n)| n > 0)
                .collect();
            assert!(
                client_ready <= 1 && servers.len() <= 1,
                "seed {seed}: {id:?} ready twice"
            );
            if members.contains(&client) {
                assert_eq!(
                    client_ready + client_failed,
                    1,
                    "seed {seed}: {id:?} one outcome"
                );
            }
            // A server end is only ever ready after its client decided for the binding.
            if let Some(&(server, n)) = servers.first() {
                assert_eq!(n, 1);
                assert_eq!(
                    client_ready, 1,
                    "seed {seed}: {id:?} server {server} ready alone"
                );
            }
            // With both ends alive: both or neither.
            if client_ready == 1 && members.contains(&client) {
                let server = sim.events(client).find_map(|e| match *e {
                    Event::BindingReady { binding, peer, .. } if binding == id => {
                        Some(peer.index())
                    }
                    _ => None,
                });
                let server = server.unwrap();
                if members.contains(&server) {
                    assert_eq!(
                        servers,
                        vec![(server, 1)],
                        "seed {seed}: {id:?} client ready alone"
                    );
                    ready_pairs += 1;
                }
            }
            if client_failed == 1 {
                failed += 1;
            }
        }
        // Every region handed out for a failed binding came back, and no other.
        for &m in &members {
            let node = &sim.nodes[m];
            let failed_here = node
                .events
                .iter()
                .filter(|(_, e)| matches!(e, Event::BindingFailed { .. }))
                .count();
            assert_eq!(
                node.monitor.hooks().freed.len(),
                failed_here,
                "seed {seed}: core {m}"
            );
        }
    }
    eprintln!("binding chaos over {SEEDS} seeds: {ready_pairs} ready pairs, {failed} failed");
    assert!(ready_pairs > 500 && failed > 200);
}

#[test]
fn chaos_stats_gather_every_live_core() {
    for seed in 0..SEEDS {
        let mut rng = crate::sim::Rng::new(seed ^ 0x57a7);
        let count = rng.between(2, 8) as usize;
        let mut sim = Sim::new(count, seed, Network::chaotic(100), |c| {
            c.missed_heartbeats = 6;
            c.stats_timeout_ns = 300 * MS;
        });
        sim.run_until(20 * MS);
        let victim = if count > 2 && rng.chance(500) {
            let v = rng.between(1, count as u64 - 1) as usize;
            sim.crash(v);
            Some(v)
        } else {
            None
        };
        let request = sim
            .call(0, |m, now, out| m.request_stats(now, out))
            .unwrap()
            .unwrap();
        sim.run_until(400 * MS);
        let ready: Vec<_> = sim
            .events(0)
            .filter_map(|e| match *e {
                Event::StatsReady {
                    request: r,
                    responded,
                    missing,
                    timed_out,
                } if r == request => Some((responded, missing, timed_out)),
                _ => None,
            })
            .collect();
        assert_eq!(ready.len(), 1, "seed {seed}");
        let (responded, missing, timed_out) = ready[0];
        assert!(!timed_out, "seed {seed}");
        let mut expected = CoreSet::first(count);
        if let Some(v) = victim {
            expected.remove(core(v));
        }
        assert_eq!(responded, expected, "seed {seed}");
        assert_eq!(
            missing,
            CoreSet::first(count).difference(expected),
            "seed {seed}"
        );
        for c in expected.iter() {
            assert_eq!(
                sim.nodes[0].monitor.gathered(c).unwrap()[COUNTERS - 1],
                c.index() as u64 * 1000 + (COUNTERS as u64 - 1)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real threads: one monitor per thread, connected all-to-all by URPC channels (the kernel's
// transport); a std channel per thread carries only the test's commands.

mod threads {
    use super::*;
    use crate::sim::{memory_of, SimHooks};
    use crate::{CoreId, CoreInfo, Instant, Message, Monitor, Outbox, MESSAGE_BYTES};
    use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
    use std::time::{Duration, Instant as Clock};

    enum Input {
        Begin(Change),
        Register(Name),
        Bind(Name),
        Stats,
        Stop,
    }

    /// This core's sending ends, by peer.
    struct Wires {
        senders: Vec<Option<urpc::Sender<'static>>>,
    }

    impl Outbox for Wires {
        fn send(&mut self, to: CoreId, message: Message) {
            let mut bytes = [0u8; MESSAGE_BYTES];
            message.encode(&mut bytes);
            if let Some(sender) = self.senders[to.index()].as_mut() {
                // A full ring drops the message; the monitor re-sends what is not acknowledged.
                let _ = sender.try_send(&bytes);
            }
        }
    }

    fn run_core(
        mut monitor: Monitor<SimHooks>,
        commands: Receiver<Input>,
        mut receivers: Vec<Option<urpc::Receiver<'static>>>,
        mut wires: Wires,
        events: Sender<(CoreId, Event)>,
        origin: Clock,
    ) {
        let me = monitor.core();
        let now = || Instant::from_nanos(origin.elapsed().as_nanos() as u64);
        loop {
            let mut idle = true;
            for (peer, receiver) in receivers.iter_mut().enumerate() {
                let Some(receiver) = receiver.as_mut() else {
                    continue;
                };
                // Bounded: at most 16 messages from one peer per round.
                for _ in 0..16 {
                    match receiver.try_recv() {
                        Ok(bytes) => {
                            idle = false;
                            monitor
                                .handle_bytes(now(), core(peer), &bytes, &mut wires)
                                .unwrap();
                        }
                        Err(urpc::RecvError::Empty) => break,
                        Err(error) => panic!("urpc from core {peer}: {error:?}"),
                    }
                }
            }
            match commands.try_recv() {
                Ok(Input::Begin(change)) => {
                    monitor.begin_agreement(now(), change, &mut wires).unwrap();
                }
                Ok(Input::Register(name)) => {
                    monitor.register_name(now(), name, &mut wires).unwrap()
                }
                Ok(Input::Bind(name)) => {
                    monitor.bind(now(), name, &mut wires).unwrap();
                }
                Ok(Input::Stats) => {
                    monitor.request_stats(now(), &mut wires).unwrap();
                }
                // A stopped core just stops: its channels stay, silent, like a hung core's.
                Ok(Input::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            if now() >= monitor.next_deadline() {
                monitor.tick(now(), &mut wires);
            }
            while let Some(event) = monitor.poll_event() {
                let _ = events.send((me, event));
            }
            if idle {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    type Seen = [(CoreId, Event)];

    #[test]
    fn four_monitors_on_threads_boot_agree_bind_gather_and_detect_a_stop() {
        const CORES: usize = 4;
        let origin = Clock::now();
        let (event_tx, event_rx) = channel();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..CORES).map(|_| channel()).unzip();
        // One URPC channel per pair of cores, as the kernel lays them out: the lower core takes
        // side A, the higher side B.
        let mut urpc_out: Vec<Vec<Option<urpc::Sender<'static>>>> = (0..CORES)
            .map(|_| (0..CORES).map(|_| None).collect())
            .collect();
        let mut urpc_in: Vec<Vec<Option<urpc::Receiver<'static>>>> = (0..CORES)
            .map(|_| (0..CORES).map(|_| None).collect())
            .collect();
        for a in 0..CORES {
            for b in a + 1..CORES {
                let region: &'static urpc::ChannelRegion =
                    Box::leak(urpc::ChannelRegion::new_boxed());
                let side_a = region.claim(urpc::Side::A).unwrap();
                let side_b = region.claim(urpc::Side::B).unwrap();
                urpc_out[a][b] = Some(side_a.sender);
                urpc_in[a][b] = Some(side_a.receiver);
                urpc_out[b][a] = Some(side_b.sender);
                urpc_in[b][a] = Some(side_b.receiver);
            }
        }
        let mut handles = Vec::new();
        for (i, ((inbox, outgoing), incoming)) in
            receivers.into_iter().zip(urpc_out).zip(urpc_in).enumerate()
        {
            let mut config = Config::new(core(i), CoreSet::first(CORES));
            // Generous for a loaded test machine: failed after 10 x 20 ms of silence.
            config.heartbeat_period_ns = 20 * MS;
            config.missed_heartbeats = 10;
            config.retransmit_ns = 5 * MS;
            config.prepare_timeout_ns = 2_000 * MS;
            config.bind_timeout_ns = 2_000 * MS;
            config.stats_timeout_ns = 2_000 * MS;
            let info = CoreInfo {
                core: core(i),
                apic_id: i as u32,
                numa_node: 0,
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
            let monitor = Monitor::new(config, info, hooks, Instant::from_nanos(0)).unwrap();
            let wires = Wires { senders: outgoing };
            let events = event_tx.clone();
            handles.push(std::thread::spawn(move || {
                run_core(monitor, inbox, incoming, wires, events, origin)
            }));
        }
        let mut seen: Vec<(CoreId, Event)> = Vec::new();
        let mut wait_for = |what: &dyn Fn(&Seen) -> bool, label: &str| {
            let deadline = Clock::now() + Duration::from_secs(20);
            while !what(&seen) {
                let left = deadline.saturating_duration_since(Clock::now());
                match event_rx.recv_timeout(left) {
                    Ok(event) => seen.push(event),
                    Err(_) => panic!("timed out waiting for {label}; saw {seen:?}"),
                }
            }
        };
        let count =
            |seen: &Seen, f: &dyn Fn(&Event) -> bool| seen.iter().filter(|(_, e)| f(e)).count();
        wait_for(
            &|s| count(s, &|e| matches!(e, Event::MachineComplete { .. })) == CORES,
            "boot",
        );

        senders[1].send(Input::Begin(open(7))).unwrap();
        wait_for(
            &|s| count(s, &|e| matches!(e, Event::ChangeCommitted { .. })) == CORES,
            "commit",
        );

        senders[2].send(Input::Register(name("echo"))).unwrap();
        wait_for(
            &|s| count(s, &|e| matches!(e, Event::NameRegistered { .. })) == 1,
            "register",
        );
        senders[3].send(Input::Bind(name("echo"))).unwrap();
        wait_for(
            &|s| count(s, &|e| matches!(e, Event::BindingReady { .. })) == 2,
            "binding",
        );

        senders[0].send(Input::Stats).unwrap();
        wait_for(
            &|s| {
                s.iter().any(|(c, e)| {
                    c.index() == 0
                        && matches!(e, Event::StatsReady { responded, .. } if *responded == CoreSet::first(CORES))
                })
            },
            "stats",
        );

        senders[3].send(Input::Stop).unwrap();
        wait_for(
            &|s| count(s, &|e| *e == Event::CoreFailed(core(3))) == CORES - 1,
            "failure detection",
        );
        for sender in &senders {
            let _ = sender.send(Input::Stop);
        }
        for handle in handles {
            handle.join().unwrap();
        }
    }
}

#[test]
fn a_monitor_fits_a_small_per_core_heap() {
    let size = core::mem::size_of::<crate::Monitor<crate::sim::SimHooks>>();
    eprintln!("Monitor is {size} bytes");
    assert!(size < 32 * 1024, "{size}");
}

/// Hooks for the single-monitor tests below: every vote yes, regions from a counter.
struct PlainHooks(u64);

impl crate::Hooks for PlainHooks {
    fn vote(&mut self, _change: &Change) -> crate::Vote {
        crate::Vote::Yes
    }
    fn allocate_region(&mut self, len: u64) -> Option<crate::Region> {
        self.0 += len;
        Some(crate::Region {
            base: self.0 - len,
            len,
        })
    }
    fn free_region(&mut self, _region: crate::Region) {}
    fn counters(&mut self) -> [u64; COUNTERS] {
        [0; COUNTERS]
    }
}

#[test]
fn a_lookup_answer_naming_a_core_outside_the_machine_fails_the_binding() {
    // Found by the fuzz target `monitor_handle` (fuzz/regressions/monitor_handle/): a directory
    // answer naming core 27 of a two-core machine made the monitor send its bind request there.
    let me = core(1);
    let expected = CoreSet::first(2);
    let info = crate::CoreInfo {
        core: me,
        apic_id: 1,
        numa_node: 0,
        memory: crate::sim::memory_of(me),
    };
    let now = crate::Instant::from_nanos(MS);
    let mut monitor =
        crate::Monitor::new(Config::new(me, expected), info, PlainHooks(1 << 20), now).unwrap();
    let mut sent: Vec<(crate::CoreId, crate::Message)> = Vec::new();
    struct Record<'a>(&'a mut Vec<(crate::CoreId, crate::Message)>);
    impl crate::Outbox for Record<'_> {
        fn send(&mut self, to: crate::CoreId, message: crate::Message) {
            self.0.push((to, message));
        }
    }
    let binding = monitor
        .bind(now, name("echo"), &mut Record(&mut sent))
        .unwrap();
    while monitor.poll_event().is_some() {}
    let outsider = crate::CoreId::new(27).unwrap();
    monitor.handle(
        now,
        core(0),
        crate::Message::LookupReply {
            request: binding.seq,
            owner: Some(outsider),
        },
        &mut Record(&mut sent),
    );
    monitor.tick(now.after(10 * MS), &mut Record(&mut sent));
    assert!(
        sent.iter().all(|(to, _)| *to != outsider),
        "sent to a core outside the machine: {sent:?}"
    );
    let failed = std::iter::from_fn(|| monitor.poll_event()).any(|event| {
        matches!(
            event,
            Event::BindingFailed {
                reason: BindFailure::NoSuchName,
                ..
            }
        )
    });
    assert!(failed, "the binding fails with no such name");
}
