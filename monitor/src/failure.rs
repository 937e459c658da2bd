//! Failure detection and membership. Every monitor sends a [`Message::Heartbeat`] to every other
//! expected core each heartbeat period; any message from a peer counts as a sign of life. A peer
//! silent for `missed_heartbeats` (K) periods — or never heard from by the boot timeout — is
//! declared failed. Verdicts are final and gossiped: every heartbeat carries the sender's set of
//! failed cores, a new verdict triggers an immediate round of heartbeats, and a monitor that finds
//! itself in a received set fences itself ([`crate::Event::Fenced`]). Monitors ignore messages
//! from failed cores (answering their heartbeats with the verdict), so a core declared failed
//! while still running is cut out rather than half-in.
//!
//! [`reassign_flow_groups`] computes the new owner of every flow group of the failed cores, the
//! same on every core that has the same inputs.

use crate::event::Event;
use crate::message::Message;
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{CoreId, CoreSet, Instant, MAX_CORES};

impl<H: Hooks> Monitor<H> {
    pub(crate) fn send_heartbeats(&mut self, out: &mut impl Outbox) {
        let failed = self.failed;
        let to = self.config.expected.without(self.config.core);
        self.send_all(out, to, Message::Heartbeat { failed });
    }

    /// If this monitor did not run for more than a heartbeat period, its own core was paused
    /// (descheduled by a hypervisor, or busy): nothing from the peers could be heard meanwhile,
    /// so the pause beyond one period is added to every peer's last sign of life. Without this,
    /// a paused detector wakes up and declares every peer failed at once.
    pub(crate) fn forgive_own_pause(&mut self, now: Instant) {
        if let Some(last) = self.last_tick {
            let gap = now.as_nanos().saturating_sub(last.as_nanos());
            if gap > self.config.heartbeat_period_ns {
                let pause = gap - self.config.heartbeat_period_ns;
                for heard in self.last_heard.iter_mut().flatten() {
                    *heard = heard.after(pause);
                }
                self.started = self.started.after(pause);
                self.counters.pauses_forgiven += 1;
            }
        }
        self.last_tick = Some(now);
    }

    /// Declares failed every live peer silent for too long.
    pub(crate) fn detect_failures(&mut self, now: Instant, out: &mut impl Outbox) {
        let mut silent = CoreSet::EMPTY;
        for peer in self.live_peers().iter() {
            let deadline = match self.last_heard[peer.index()] {
                Some(heard) => heard.after(self.config.failure_timeout_ns()),
                None => self.started.after(self.config.boot_timeout_ns),
            };
            if now > deadline {
                silent.insert(peer);
            }
        }
        if !silent.is_empty() {
            self.declare_failed(now, silent, out);
        }
    }

    /// Adopts another monitor's verdicts.
    pub(crate) fn merge_failed(&mut self, now: Instant, verdicts: CoreSet, out: &mut impl Outbox) {
        let verdicts = verdicts.intersection(self.config.expected);
        if verdicts.contains(self.config.core) {
            if !self.fenced {
                self.fenced = true;
                self.events.push(Event::Fenced);
            }
            return;
        }
        let new = verdicts.difference(self.failed);
        if !new.is_empty() {
            self.declare_failed(now, new, out);
        }
    }

    /// Records new verdicts and lets every protocol react.
    pub(crate) fn declare_failed(&mut self, now: Instant, cores: CoreSet, out: &mut impl Outbox) {
        let cores = cores.without(self.config.core).difference(self.failed);
        if cores.is_empty() {
            return;
        }
        let old_leader = self.leader();
        for core in cores.iter() {
            self.failed.insert(core);
            self.events.push(Event::CoreFailed(core));
        }
        for core in cores.iter() {
            self.bindings_on_failure(core);
            self.names_on_failure(core);
        }
        if self.leader() != old_leader {
            self.names_on_new_leader(out);
        }
        self.agreement_on_failure(now, out);
        self.stats_on_failure();
        self.check_boot_complete(out);
        // Gossip the verdict now rather than at the next period.
        self.send_heartbeats(out);
    }
}

/// Gives every flow group owned by a core outside `live` to a live core, deterministically: groups
/// are visited in index order and each goes to the live core owning the fewest groups at that
/// moment (ties to the lowest core id). Every core that runs it on the same `owners` and `live`
/// computes the same assignment. Returns how many groups moved (none when `live` is empty).
pub fn reassign_flow_groups(owners: &mut [CoreId], live: CoreSet) -> usize {
    if live.is_empty() {
        return 0;
    }
    let mut load = [0usize; MAX_CORES];
    for owner in owners.iter() {
        if live.contains(*owner) {
            load[owner.index()] += 1;
        }
    }
    let mut moved = 0;
    for owner in owners.iter_mut() {
        if live.contains(*owner) {
            continue;
        }
        let mut best: Option<CoreId> = None;
        for core in live.iter() {
            match best {
                Some(current) if load[core.index()] >= load[current.index()] => {}
                _ => best = Some(core),
            }
        }
        if let Some(target) = best {
            *owner = target;
            load[target.index()] += 1;
            moved += 1;
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(i: u8) -> CoreId {
        CoreId::new(i).unwrap()
    }

    #[test]
    fn a_paused_detector_does_not_declare_its_peers_failed() {
        use crate::message::{Message, Vote};
        use crate::monitor::{Config, Hooks, Monitor, Outbox};
        use crate::types::{Change, Region};
        struct NullHooks;
        impl Hooks for NullHooks {
            fn vote(&mut self, _: &Change) -> Vote {
                Vote::Yes
            }
            fn allocate_region(&mut self, _: u64) -> Option<Region> {
                None
            }
            fn free_region(&mut self, _: Region) {}
            fn counters(&mut self) -> [u64; crate::message::COUNTERS] {
                [0; crate::message::COUNTERS]
            }
        }
        struct Sink;
        impl Outbox for Sink {
            fn send(&mut self, _: CoreId, _: Message) {}
        }
        let mut config = Config::new(c(0), CoreSet::first(2));
        config.heartbeat_period_ns = 10_000_000;
        config.missed_heartbeats = 3;
        let info = crate::types::CoreInfo {
            core: c(0),
            apic_id: 0,
            numa_node: 0,
            memory: Region { base: 0, len: 1 },
        };
        let mut monitor = Monitor::new(config, info, NullHooks, Instant::from_nanos(0)).unwrap();
        let mut out = Sink;
        monitor.handle(
            Instant::from_nanos(1_000_000),
            c(1),
            Message::Heartbeat {
                failed: CoreSet::EMPTY,
            },
            &mut out,
        );
        monitor.tick(Instant::from_nanos(2_000_000), &mut out);
        // This core is paused for a second; on waking it must not condemn core 1 ...
        monitor.tick(Instant::from_nanos(1_002_000_000), &mut out);
        assert!(monitor.live().contains(c(1)));
        assert_eq!(monitor.counters().pauses_forgiven, 1);
        // ... but a peer that stays silent while this core runs is still declared failed.
        let mut now = 1_002_000_000;
        while now < 1_100_000_000 {
            now += 2_000_000;
            monitor.tick(Instant::from_nanos(now), &mut out);
        }
        assert!(!monitor.live().contains(c(1)));
    }

    #[test]
    fn failed_cores_groups_go_to_the_least_loaded_survivors() {
        // 8 groups on 4 cores, two each; core 1 fails.
        let mut owners: Vec<CoreId> = (0..8).map(|g| c(g % 4)).collect();
        let live = CoreSet::first(4).without(c(1));
        assert_eq!(reassign_flow_groups(&mut owners, live), 2);
        assert!(owners.iter().all(|o| live.contains(*o)));
        // Group 1 -> core 0 (tie, lowest id), group 5 -> core 2 (now least loaded, lowest id).
        assert_eq!(owners[1], c(0));
        assert_eq!(owners[5], c(2));
        // Running it again moves nothing: the result is a fixed point.
        assert_eq!(reassign_flow_groups(&mut owners, live), 0);
    }

    #[test]
    fn reassignment_is_a_function_of_its_inputs_and_balances() {
        let mut state = 7u64;
        for _ in 0..200 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let cores = 2 + (state >> 60) as usize; // 2..=17
            let live = CoreSet::from_bits((state >> 8) & ((1u64 << cores) - 1));
            let owners: Vec<CoreId> = (0..128).map(|g| c(((g * 7 + 3) % cores) as u8)).collect();
            let mut first = owners.clone();
            let mut second = owners.clone();
            reassign_flow_groups(&mut first, live);
            reassign_flow_groups(&mut second, live);
            assert_eq!(first, second);
            if live.is_empty() {
                assert_eq!(first, owners);
                continue;
            }
            assert!(first.iter().all(|o| live.contains(*o)));
            // Groups of live cores never move.
            for (before, after) in owners.iter().zip(&first) {
                if live.contains(*before) {
                    assert_eq!(before, after);
                }
            }
        }
    }
}
