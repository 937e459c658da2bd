//! Flow-table sync: the monitors' verdicts applied to the core's one flow map, and the NIC's
//! redirection table written from it on the NIC's home core (only the groups that changed).

use drivers::nic::{FlowMap, GroupSet, NicError};
use drivers::registers::RegisterAccess;

use super::net::NetService;
use super::{Node, Platform};

/// The NIC's redirection table, written from the flow map (the NIC's home core holds it).
pub trait FlowSteering {
    /// Writes the groups in `changed` from `map`; returns the registers written.
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError>;
}

impl<R: RegisterAccess> FlowSteering for drivers::igb::IgbControl<R> {
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError> {
        drivers::igb::IgbControl::write_flow_map(self, map, changed)
    }
}

impl<R: RegisterAccess> FlowSteering for drivers::ixgbe::IxgbeControl<R> {
    fn write_flow_map(&mut self, map: &FlowMap, changed: GroupSet) -> Result<usize, NicError> {
        drivers::ixgbe::IxgbeControl::write_flow_map(self, map, changed)
    }
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
    /// deterministic rule (every core computes the same table). Returns how many moved.
    pub(crate) fn reassign_flow_groups(
        &mut self,
        live: monitor::CoreSet,
        platform: &mut dyn Platform,
    ) -> usize {
        let queues = usize::from(self.config.queues.max(1));
        let with_queue = monitor::CoreSet::first(queues.min(monitor::MAX_CORES));
        let flows = self.flows_mut();
        let mut owners: [monitor::CoreId; drivers::nic::FLOW_GROUPS] = core::array::from_fn(|g| {
            monitor::CoreId::new(flows.owner(g as u8) as u8)
                .unwrap_or(monitor::CoreId::new(0).expect("core 0"))
        });
        let moved = monitor::reassign_flow_groups(&mut owners, live.intersection(with_queue));
        for (group, owner) in owners.iter().enumerate() {
            flows.set_owner(group as u8, owner.index() as u16);
        }
        self.sync_flows(platform);
        moved
    }

    /// Writes the map's changes to the NIC (home core), and forgets them.
    fn sync_flows(&mut self, platform: &mut dyn Platform) {
        let changed = self.flows_mut().take_changes();
        if changed.is_empty() {
            return;
        }
        let Some(mut steering) = self.steering.take() else {
            return;
        };
        if let Err(error) = steering.write_flow_map(self.flows_mut(), changed) {
            platform.print(format_args!(
                "flotilla: redirection table not written ({error:?}): the NIC keeps its old steering for groups {:?}",
                changed.iter().collect::<alloc::vec::Vec<_>>()
            ));
        }
        self.steering = Some(steering);
    }
}
