//! Flow-table sync: the monitors' verdicts applied to the core's one flow map, and the NIC's
//! redirection table written from it by the NIC's home (only the groups that changed, or all of
//! them when the home has just taken the NIC over).

use alloc::boxed::Box;

use drivers::nic::{FlowMap, GroupSet, NicError};

use super::net::NetService;
use super::{Node, Platform};

/// An MSI-X vector of the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vector {
    /// The vector that carries queue interrupts (`node::wake` says which queues).
    Queue(usize),
    /// The vector of link and other causes.
    Link,
}

/// The NIC's shared side, held by its home core (the monitor leader): the redirection table,
/// written from the flow map, and the routing of its MSI-X vectors to cores. Only one core holds
/// it at a time; `docs/cpudriver.md` ("When a core fails") says why two holders never act at once.
pub trait NicHome {
    /// Writes the groups in `changed` from `map`; returns the registers written.
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError>;

    /// Points `vector`'s MSI-X entry at core `core`.
    fn route_vector(&mut self, vector: Vector, core: usize) -> Result<(), NicError>;

    /// MSI-X vectors the NIC offers.
    fn vectors(&self) -> usize;
}

/// How a core takes the NIC's shared side over when it becomes the home (every core with a NIC
/// has one: the kernel's builds a control handle over the register window named in the boot
/// record, without resetting the device).
pub trait NicSource {
    /// This core's own handle on the NIC's shared side.
    fn take_control(&mut self) -> Result<Box<dyn NicHome>, NicError>;

    /// MSI-X vectors the NIC offers (every core needs it to know whom it wakes on a shared
    /// vector, `node::wake`).
    fn vectors(&self) -> usize;
}

impl<N: NetService> Node<N> {
    /// A committed move: `group` now belongs to `to`.
    pub(crate) fn move_flow_group(
        &mut self,
        group: u16,
        to: monitor::CoreId,
        platform: &mut dyn Platform,
    ) {
        if let Ok(group) = u8::try_from(group) {
            self.flows_mut().set_owner(group, to.index() as u16);
        }
        self.sync_flows(platform);
    }

    /// A core failed: its flow groups go to the live cores that have a queue, by the monitor's
    /// deterministic rule (every core computes the same table). Returns how many moved and to
    /// whom (`moved_to[c]` groups to core `c`). The NIC is written by [`Self::sync_flows`].
    pub(crate) fn reassign_flow_groups(
        &mut self,
        live: monitor::CoreSet,
        moved_to: &mut [usize; monitor::MAX_CORES],
    ) -> usize {
        let queues = usize::from(self.config.queues.max(1));
        let with_queue = monitor::CoreSet::first(queues.min(monitor::MAX_CORES));
        let flows = self.flows_mut();
        let mut owners: [monitor::CoreId; drivers::nic::FLOW_GROUPS] = core::array::from_fn(|g| {
            monitor::CoreId::new(flows.owner(g as u8) as u8)
                .unwrap_or(monitor::CoreId::new(0).expect("core 0"))
        });
        let before = owners;
        let moved = monitor::reassign_flow_groups(&mut owners, live.intersection(with_queue));
        for (group, owner) in owners.iter().enumerate() {
            flows.set_owner(group as u8, owner.index() as u16);
            if before[group] != *owner {
                moved_to[owner.index()] += 1;
            }
        }
        moved
    }

    /// Writes the map's changes to the NIC (on the NIC's home, and not while its duties are
    /// suspended after a pause: the changes wait in the map), and forgets them.
    pub(crate) fn sync_flows(&mut self, platform: &mut dyn Platform) {
        if self.steering.is_none() || self.takeover.suspended() {
            return;
        }
        let mut changed = self.flows_mut().take_changes();
        if core::mem::take(&mut self.takeover.rewrite_all) {
            changed = GroupSet::ALL;
        }
        if changed.is_empty() {
            return;
        }
        let Some(mut steering) = self.steering.take() else {
            return;
        };
        match steering.write_flow_map(self.flows_mut(), changed) {
            Ok(registers) => self.takeover.table_writes += registers as u64,
            Err(error) => platform.print(format_args!(
                "flotilla: redirection table not written ({error:?}): the NIC keeps its old steering for groups {:?}",
                changed.iter().collect::<alloc::vec::Vec<_>>()
            )),
        }
        self.steering = Some(steering);
    }
}
