//! What the survivors take over when a core fails, core 0 included.
//!
//! Flow groups of the failed core are re-steered by every core's flow map (`flows.rs`). What RSS
//! cannot re-steer is queue 0: the NIC puts there every frame it does not hash (ARP, every non-IP
//! frame), whatever the redirection table says (QEMU's igb: `igb_rss_parse_packet` gives queue 0
//! to a frame of no hash type; the 82576's filters that could steer such frames elsewhere are not
//! emulated). So the NIC's *home* — the lowest live core with a queue, the monitor leader — holds
//! both the NIC's shared side (RSS key, redirection table, MSI-X routing: [`super::flows::NicHome`])
//! and queue 0. When the home fails, the next lowest live core, on its `CoreFailed`:
//!
//! 1. builds its own control handle over the NIC's register window ([`super::flows::NicSource`]:
//!    the BAR's address is in the boot record) and marks the whole redirection table to be
//!    rewritten from its flow map (whatever the old home applied or not, the table is then the
//!    survivors' map);
//! 2. adopts queue 0 (`NetService::adopt_queue`: its rings re-initialised in this core's memory,
//!    buffers from this core's pool, polled in this core's turn with its own stack);
//! 3. routes every MSI-X vector to the lowest live holder of its queues (queue 0's vector to
//!    itself) and each core updates the cores it wakes on a shared vector (`node::wake`).
//!
//! Every core computes the same holders from the same live set ([`QueueHolders`]), so nobody
//! needs to be told. The console says who took what.
//!
//! **Two holders never act at once.** Verdicts are final and the failed core is fenced: the
//! monitor that declares a core failed first sends it the verdict (its immediate round of
//! heartbeats) and only then raises `CoreFailed`, on which the new home acts; the mailbox keeps
//! carrying monitor letters to a fenced core when its ring has room, so a core wrongly declared
//! failed (slow, not dead) learns the verdict and stops (`Event::Fenced`). A core drains its
//! mailbox before it touches the NIC in every turn, and a home that did not run for more than a
//! heartbeat period (the only way it can have been declared failed while it thought itself
//! alive) first drains every letter published before it resumed and then suspends its NIC duties
//! — no poll of its queues, no redirection-table write — until a letter from every live peer has
//! arrived after that: a peer that declared it failed sends only heartbeats carrying the verdict,
//! so the first letter from each peer either fences it or proves that peer had not condemned it.
//! What remains is a verdict reached while the old home is inside one turn after such a
//! confirmation: on hardware one bounded turn (about 100 µs of path work); under a hypervisor
//! that deschedules it mid-turn, as long as the descheduling. The damage is bounded too: the
//! new home's rings hold its own posted buffers (all but one descriptor), and its next refill
//! rewrites the tail the old home may have written.

use alloc::boxed::Box;

use monitor::{CoreId, CoreSet};

use super::flows::{NicSource, Vector};
use super::net::NetService;
use super::wake::{forward_targets, vector_routes, QueueHolders};
use super::{mailbox::LinkId, Instant, Node, Platform};

/// Why a queue could not be adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdoptError {
    /// This core's network cannot adopt queues (no NIC access, or not this kind of NIC).
    Unsupported,
    /// No memory for the queue's rings.
    OutOfMemory,
    /// The queue does not exist on this NIC.
    NoSuchQueue(u16),
    /// The device did not disable or re-enable the queue in time.
    DeviceTimeout,
    /// This core already polls that queue.
    AlreadyHeld(u16),
    /// This core already polls an adopted queue (this one): only queue 0 is ever adopted.
    AlreadyAdopting(u16),
}

/// What a core keeps about the NIC's shared side and queue holding.
pub struct Takeover {
    /// How this core takes the NIC over if it becomes the home.
    pub(crate) nic: Option<Box<dyn NicSource>>,
    /// Who polls each queue, as of the latest verdict.
    pub(crate) holders: QueueHolders,
    /// Rewrite the whole redirection table at the next sync (the control was just taken).
    pub(crate) rewrite_all: bool,
    /// Live peers the home waits to hear from after a pause (its NIC duties suspended).
    awaiting: Option<CoreSet>,
    /// When the previous turn started.
    last_turn: Option<Instant>,
    /// Redirection-table registers written by this core.
    pub(crate) table_writes: u64,
    /// Pauses of the home longer than a heartbeat period.
    pub(crate) pauses: u64,
    /// Turns in which the home's NIC duties were suspended.
    pub(crate) suspended_turns: u64,
}

impl Takeover {
    /// The boot layout for `queues` queues.
    pub fn new(queues: usize) -> Self {
        Self {
            nic: None,
            holders: QueueHolders::boot(queues),
            rewrite_all: false,
            awaiting: None,
            last_turn: None,
            table_writes: 0,
            pauses: 0,
            suspended_turns: 0,
        }
    }

    /// Whether the home's NIC duties wait for the peers after a pause.
    pub fn suspended(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Who polls each queue.
    pub fn holders(&self) -> &QueueHolders {
        &self.holders
    }

    /// A letter from `peer` arrived (or `peer` was declared failed): it no longer needs hearing.
    pub(crate) fn heard(&mut self, peer: usize) {
        if let (Some(awaiting), Some(core)) = (self.awaiting.as_mut(), CoreId::new(peer as u8)) {
            awaiting.remove(core);
            if awaiting.is_empty() {
                self.awaiting = None;
            }
        }
    }
}

/// Counters of the takeover machinery, for tests and the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakeoverCounters {
    /// Redirection-table registers this core wrote.
    pub table_writes: u64,
    /// Pauses of this core, as the NIC's home, longer than a heartbeat period.
    pub pauses: u64,
    /// Turns in which its NIC duties were suspended after such a pause.
    pub suspended_turns: u64,
}

impl<N: NetService> Node<N> {
    /// Gives this core a way to take the NIC over should it become the home (every core with a
    /// NIC gets one; the boot home also gets the control itself through [`Node::new`]).
    pub fn with_nic(mut self, source: Box<dyn NicSource>) -> Self {
        self.takeover.nic = Some(source);
        self
    }

    /// The takeover counters.
    pub fn takeover_counters(&self) -> TakeoverCounters {
        TakeoverCounters {
            table_writes: self.takeover.table_writes,
            pauses: self.takeover.pauses,
            suspended_turns: self.takeover.suspended_turns,
        }
    }

    /// Whether this core holds the NIC's control.
    pub fn holds_nic_control(&self) -> bool {
        self.steering.is_some()
    }

    /// Who polls each queue, as this core sees it.
    pub fn queue_holders(&self) -> &QueueHolders {
        &self.takeover.holders
    }

    /// Whether this core has duties on the NIC's shared side (its control, or queue 0).
    fn is_home(&self) -> bool {
        self.net.is_some()
            && (self.steering.is_some() || self.takeover.holders.home() == Some(self.config.core))
    }

    /// At the start of a turn: a home that did not run for more than a heartbeat period drains
    /// every letter published before now (a verdict among them stops it here) and then waits for
    /// a letter from every live peer before it touches the NIC again (module documentation).
    pub(crate) fn check_pause(&mut self, now: Instant, platform: &mut dyn Platform) {
        let period = self.control.monitor.config().heartbeat_period_ns;
        let gap = self
            .takeover
            .last_turn
            .map(|at| now.as_nanos().saturating_sub(at.as_nanos()));
        self.takeover.last_turn = Some(now);
        if gap.is_none_or(|gap| gap <= period) || !self.is_home() {
            return;
        }
        self.takeover.pauses += 1;
        self.drain_published(now, platform);
        if self.stopped.is_some() {
            return;
        }
        let awaiting = self
            .control
            .monitor
            .live()
            .without(CoreId::new(self.config.core as u8).expect("at most 64 cores"));
        if !awaiting.is_empty() {
            platform.print(format_args!(
                "monitor: core {} (the NIC's home) did not run for {} ms: its NIC duties wait until every live core is heard",
                self.config.core,
                gap.unwrap_or(0) / 1_000_000
            ));
            self.takeover.awaiting = Some(awaiting);
        }
    }

    /// Every letter already in the rings (each link's ring at most twice over: what arrives
    /// meanwhile counts as old, which is the safe side).
    fn drain_published(&mut self, now: Instant, platform: &mut dyn Platform) {
        for link in 0..self.mailbox.link_count() {
            for _ in 0..2 * urpc::DEFAULT_SLOTS {
                let table = self.regions.table();
                let Some(received) = self.mailbox.receive(LinkId(link), &table) else {
                    break;
                };
                self.dispatch(now, received, platform);
                if self.stopped.is_some() {
                    return;
                }
            }
        }
    }

    /// Core `failed` left the machine (the monitors' verdict; `live` the cores left): the home
    /// takes the NIC's control if it has just become the home, adopts the queues it now holds,
    /// and routes the vectors; every core updates whom it wakes on a shared vector.
    pub(crate) fn take_over(
        &mut self,
        now: Instant,
        failed: usize,
        live: CoreSet,
        platform: &mut dyn Platform,
    ) {
        let ms = Self::uptime_ms(now);
        let me = self.config.core;
        let before = self.takeover.holders;
        let after = QueueHolders::for_live(live, usize::from(self.config.queues.max(1)));
        self.takeover.holders = after;
        self.takeover.heard(failed);
        let mut took_control = false;
        if after.home() == Some(me) && self.steering.is_none() {
            if let Some(source) = self.takeover.nic.as_mut() {
                match source.take_control() {
                    Ok(home) => {
                        self.steering = Some(home);
                        self.takeover.rewrite_all = true;
                        took_control = true;
                        platform.print(format_args!(
                            "monitor: core {me} took over the NIC's control from core {failed} at {ms} ms (RSS key, redirection table, MSI-X routing)"
                        ));
                    }
                    Err(error) => platform.print(format_args!(
                        "monitor: core {me} could not take the NIC's control over: {error:?}"
                    )),
                }
            }
        }
        for queue in after.held_by(me) {
            if before.holder(queue) == Some(me) {
                continue;
            }
            let Some(net) = self.net.as_mut() else {
                continue;
            };
            match net.adopt_queue(queue as u16) {
                Ok(()) => platform.print(format_args!(
                    "monitor: core {me} adopted queue {queue} of core {failed} at {ms} ms (ARP and every frame RSS does not steer): its ring re-initialised in core {me}'s memory with buffers of its pool"
                )),
                Err(error) => platform.print(format_args!(
                    "monitor: core {me} could not adopt queue {queue} of core {failed}: {error:?}"
                )),
            }
        }
        if let Some(home) = self.steering.as_mut() {
            let vectors = home.vectors();
            let old: heapless::Vec<(usize, Option<usize>), 32> =
                vector_routes(vectors, &before).collect();
            for (vector, target) in vector_routes(vectors, &after) {
                let Some(target) = target else {
                    continue;
                };
                let unchanged = old.get(vector) == Some(&(vector, Some(target)));
                if unchanged && !took_control {
                    continue;
                }
                match home.route_vector(Vector::Queue(vector), target) {
                    Ok(()) if !unchanged => platform.print(format_args!(
                        "monitor: MSI-X vector {vector} now wakes core {target}"
                    )),
                    Ok(()) => {}
                    Err(error) => platform.print(format_args!(
                        "monitor: MSI-X vector {vector} not routed to core {target}: {error:?}"
                    )),
                }
            }
            if took_control {
                let _ = home.route_vector(Vector::Link, me);
            }
        }
        if let Some(vectors) = self.takeover.nic.as_ref().map(|nic| nic.vectors()) {
            let targets: heapless::Vec<usize, 16> = forward_targets(me, vectors, &after).collect();
            platform.set_wake_forwards(&targets);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The takeover in the simulation: real nodes, monitors and URPC channels, the simulated NIC
    //! of `sim.rs` recording every act on its shared side.

    use alloc::string::String;
    use alloc::vec::Vec;

    use monitor::CoreId;

    use super::super::flows::Vector;
    use super::super::sim::{CoreState, NicAct, Sim, SimConfig, Work};
    use super::super::Instant;

    /// Heartbeats every 50 ms, 4 missed: a silent core is declared failed 200–250 ms later.
    const DETECTION_NS: u64 = 400_000_000;

    fn boot(sim: &mut Sim) {
        for _ in 0..4000 {
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

    /// The acts on the NIC's shared side by `core` at or after `since`.
    fn acts_of(sim: &Sim, core: usize, since: Instant) -> Vec<NicAct> {
        sim.nic
            .borrow()
            .acts
            .iter()
            .filter(|(at, by, _)| *by == core && *at >= since)
            .map(|(_, _, act)| *act)
            .collect()
    }

    fn console_has(sim: &Sim, needle: &str) -> bool {
        sim.console
            .borrow()
            .iter()
            .any(|line| line.contains(needle))
    }

    fn console(sim: &Sim) -> String {
        sim.console.borrow().join("\n")
    }

    fn live_everywhere(sim: &Sim, core: u8) -> bool {
        sim.nodes
            .iter()
            .enumerate()
            .filter(|(index, _)| sim.states[*index] != CoreState::Frozen)
            .any(|(_, node)| node.monitor().live().contains(CoreId::new(core).unwrap()))
    }

    /// Checks that after the failures, `home` holds the NIC alone: the table written names only
    /// live cores and equals every live core's map, queue 0 reaches `home`'s ring and its vector
    /// wakes `home`, and frames offered to queue 0 are served there.
    fn check_home(sim: &mut Sim, home: usize, dead: &[usize]) {
        let cores = sim.nodes.len();
        {
            let nic = sim.nic.borrow();
            assert_eq!(nic.ring_of[0], home, "queue 0's ring\n{}", console(sim));
            assert_eq!(nic.routes[0], Some(home), "vector 0's route");
            assert!(
                nic.table
                    .iter()
                    .all(|owner| !dead.contains(&usize::from(*owner))),
                "the redirection table still names a failed core: {:?}",
                nic.table
            );
            for core in (0..cores).filter(|core| !dead.contains(core)) {
                assert_eq!(
                    sim.nodes[core].net().unwrap().flows.owners(),
                    &nic.table,
                    "core {core}'s flow map differs from the NIC's table"
                );
            }
        }
        for core in (0..cores).filter(|core| !dead.contains(core)) {
            assert_eq!(
                sim.nodes[core].holds_nic_control(),
                core == home,
                "core {core}"
            );
        }
        let handled = sim.nodes[home].net().unwrap().handled;
        for _ in 0..5 {
            sim.inject_queue(0, Work::Local);
        }
        sim.run_for(2_000_000);
        assert_eq!(
            sim.nodes[home].net().unwrap().handled,
            handled + 5,
            "queue 0's frames are served by core {home}"
        );
    }

    #[test]
    fn when_core_0_fails_core_1_takes_the_nics_control_and_queue_0() {
        let mut sim = Sim::new(SimConfig::new(4));
        boot(&mut sim);
        let frozen_at = sim.now;
        sim.freeze(0);
        sim.run_for(DETECTION_NS);
        assert!(!live_everywhere(&sim, 0), "{}", console(&sim));
        let acts = acts_of(&sim, 1, frozen_at);
        for act in [
            NicAct::TookControl,
            NicAct::Adopted(0),
            NicAct::WroteTable(128),
            NicAct::Routed(Vector::Queue(0), 1),
            NicAct::Routed(Vector::Link, 1),
        ] {
            assert!(acts.contains(&act), "core 1 did not {act:?}: {acts:?}");
        }
        let took = acts.iter().position(|a| *a == NicAct::TookControl).unwrap();
        let adopted = acts.iter().position(|a| *a == NicAct::Adopted(0)).unwrap();
        let routed = acts
            .iter()
            .position(|a| *a == NicAct::Routed(Vector::Queue(0), 1))
            .unwrap();
        assert!(
            took < routed && adopted < routed,
            "queue 0 ready before its vector moves"
        );
        for core in [0, 2, 3] {
            assert_eq!(
                acts_of(&sim, core, frozen_at),
                [],
                "core {core} touched the NIC"
            );
        }
        check_home(&mut sim, 1, &[0]);
        for needle in [
            "core 1 took over the NIC's control from core 0",
            "core 1 adopted queue 0 of core 0",
            "MSI-X vector 0 now wakes core 1",
            "32 flow groups of core 0 moved to the live cores, 11 to core 1, 11 to core 2, 10 to core 3",
        ] {
            assert!(console_has(&sim, needle), "no '{needle}' in:\n{}", console(&sim));
        }
        // The other cores' queues still reach their own rings; nobody forwards (4 queues, 10
        // vectors: nothing shared).
        assert_eq!(sim.nic.borrow().ring_of[1..], [1, 2, 3]);
        assert!(sim.forwards.borrow().iter().all(Vec::is_empty));
    }

    #[test]
    fn a_second_failure_moves_the_nic_again() {
        let mut sim = Sim::new(SimConfig::new(4));
        boot(&mut sim);
        sim.freeze(0);
        sim.run_for(DETECTION_NS);
        let second = sim.now;
        sim.freeze(1);
        sim.run_for(DETECTION_NS);
        assert!(!live_everywhere(&sim, 1), "{}", console(&sim));
        let acts = acts_of(&sim, 2, second);
        assert!(acts.contains(&NicAct::TookControl), "{acts:?}");
        assert!(acts.contains(&NicAct::Adopted(0)), "{acts:?}");
        assert_eq!(acts_of(&sim, 3, second), []);
        check_home(&mut sim, 2, &[0, 1]);
        // Core 2 now serves queue 0 and queue 2; core 1's queue has no holder.
        assert_eq!(
            sim.nodes[2].queue_holders().held_by(2).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(sim.nodes[3].queue_holders().holder(1), None);
    }

    #[test]
    fn a_core_that_is_not_the_home_failing_leaves_the_nic_with_core_0() {
        let mut sim = Sim::new(SimConfig::new(4));
        boot(&mut sim);
        let frozen_at = sim.now;
        sim.freeze(2);
        sim.run_for(DETECTION_NS);
        let acts = acts_of(&sim, 0, frozen_at);
        assert!(!acts.contains(&NicAct::TookControl), "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, NicAct::Adopted(_))));
        assert!(acts.contains(&NicAct::WroteTable(32)), "{acts:?}");
        for core in [1, 3] {
            assert_eq!(acts_of(&sim, core, frozen_at), []);
        }
        check_home(&mut sim, 0, &[2]);
    }

    /// Core 0 is descheduled long enough to be declared failed, then runs again (a slow core,
    /// not a dead one). With `fill_ring`, the peers' rings to it are full when they decide, so
    /// the verdict cannot be in its ring when it resumes.
    fn paused_home(fill_ring: bool) {
        let mut sim = Sim::new(SimConfig::new(4));
        boot(&mut sim);
        let frozen_at = sim.now;
        sim.freeze(0);
        if fill_ring {
            for core in 1..4 {
                for _ in 0..300 {
                    sim.inject(core, Work::Send { to: 0, size: 8 });
                }
            }
        }
        sim.run_for(DETECTION_NS);
        assert!(!live_everywhere(&sim, 0));
        assert!(acts_of(&sim, 1, frozen_at).contains(&NicAct::TookControl));
        let polls = sim.nodes[0].net().unwrap().polls;
        let thawed_at = sim.now;
        sim.thaw(0);
        sim.run_for(300_000_000);
        assert_eq!(
            sim.states[0],
            CoreState::Frozen,
            "core 0 must stop\n{}",
            console(&sim)
        );
        assert!(console_has(&sim, "monitor: core 0 was declared failed"));
        assert_eq!(
            sim.nodes[0].net().unwrap().polls,
            polls,
            "core 0 polled its queue after it was declared failed"
        );
        assert_eq!(acts_of(&sim, 0, thawed_at), [], "core 0 touched the NIC");
        assert_eq!(sim.nodes[0].takeover_counters().pauses, 1);
        check_home(&mut sim, 1, &[0]);
    }

    #[test]
    fn a_paused_home_declared_failed_stops_before_it_touches_the_nic() {
        paused_home(false);
    }

    #[test]
    fn a_paused_home_stops_even_when_the_verdict_could_not_enter_its_ring() {
        paused_home(true);
    }

    #[test]
    fn a_short_pause_suspends_the_home_only_until_every_peer_is_heard() {
        let mut sim = Sim::new(SimConfig::new(4));
        boot(&mut sim);
        let frozen_at = sim.now;
        sim.freeze(0);
        sim.run_for(75_000_000); // 1.5 heartbeat periods: no verdict yet
        sim.inject_queue(0, Work::Local);
        sim.thaw(0);
        sim.run_for(150_000_000);
        let counters = sim.nodes[0].takeover_counters();
        assert_eq!(counters.pauses, 1);
        assert!(counters.suspended_turns > 0, "{counters:?}");
        assert!(!sim.nodes[0].takeover.suspended(), "still suspended");
        assert!(live_everywhere(&sim, 0), "{}", console(&sim));
        assert!(
            sim.nodes[0].net().unwrap().rx.is_empty(),
            "queue 0 served again"
        );
        for core in 1..4 {
            assert_eq!(acts_of(&sim, core, frozen_at), [], "core {core} took over");
        }
        check_home(&mut sim, 0, &[]);
    }

    #[test]
    fn with_16_cores_the_new_home_wakes_the_sharers_of_queue_0s_vector() {
        // 16 queues on QEMU's 10 vectors: vector 0 carries queues 0 and 9. After core 0 fails,
        // vector 0 goes to core 1, which must wake core 9 (and core 10, its own vector's sharer).
        let mut sim = Sim::new(SimConfig::new(16));
        boot(&mut sim);
        sim.freeze(0);
        sim.run_for(DETECTION_NS);
        assert_eq!(sim.nic.borrow().routes[0], Some(1));
        assert_eq!(sim.forwards.borrow()[1], [9, 10]);
        assert_eq!(sim.forwards.borrow()[2], [11]);
        check_home(&mut sim, 1, &[0]);
    }
}
