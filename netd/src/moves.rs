//! Flow-group moves as one core's stack sees them: which core owned each flow group before it
//! went to its current owner. A TCP segment that fits no connection here is sent to the group's
//! owner when that is another core, or — when the group came here — to the core it came from,
//! which may still serve the connection (`docs/netd.md`, "Connections across a flow-group
//! move").
//!
//! The kernel writes the core's flow map in place (it is the classifier's [`FlowTable`]);
//! [`FlowMoves::observe`] compares the map with what it saw last (128 entries) at the start of
//! every turn and remembers the old owner of each group that changed.

use crate::classify::{rss_input, FlowTable, RssHashFn};
use crate::config::{CoreId, FLOW_GROUPS};

/// The previous owner of each flow group.
#[derive(Clone, Debug)]
pub struct FlowMoves {
    seen: [CoreId; FLOW_GROUPS],
    previous: [Option<CoreId>; FLOW_GROUPS],
}

impl FlowMoves {
    /// No move yet: the groups are as `flows` has them.
    pub fn new(flows: &FlowTable) -> Self {
        Self {
            seen: *flows.owners(),
            previous: [None; FLOW_GROUPS],
        }
    }

    /// Records the old owner of every group whose owner changed since the last call.
    pub fn observe(&mut self, flows: &FlowTable) {
        let owners = flows.owners();
        if *owners == self.seen {
            return;
        }
        for (group, (&now, seen)) in owners.iter().zip(self.seen.iter_mut()).enumerate() {
            if now != *seen {
                self.previous[group] = Some(*seen);
                *seen = now;
            }
        }
    }

    /// The core that owned `group` before its current owner, if it moved.
    pub fn previous(&self, group: u8) -> Option<CoreId> {
        self.previous[usize::from(group) % FLOW_GROUPS]
    }
}

/// What a path sees of flow ownership during a run.
#[derive(Clone, Copy)]
pub(crate) struct FlowView<'a> {
    /// This core.
    pub(crate) core: CoreId,
    /// The core's flow map.
    pub(crate) flows: &'a FlowTable,
    /// Where groups were before.
    pub(crate) moves: &'a FlowMoves,
    /// The NIC's hash function (none: every flow counts as this core's).
    pub(crate) hash: Option<RssHashFn>,
    /// The cores the monitors hold alive (bit `c` = core `c`).
    pub(crate) live: u64,
}

impl FlowView<'_> {
    /// Where a TCP segment from `remote:remote_port` to `local:local_port` that fits no
    /// connection of this core should go: the flow group's owner if it is another core; else,
    /// unless the segment opens a connection (`opens`: a SYN, which the owner takes), the core
    /// the group moved here from, if it still lives. `None`: handle it here.
    pub(crate) fn tcp_owner(
        &self,
        remote: [u8; 4],
        local: [u8; 4],
        remote_port: u16,
        local_port: u16,
        opens: bool,
    ) -> Option<CoreId> {
        let hash = self.hash?;
        let group =
            FlowTable::group_of_hash(hash(&rss_input(remote, local, remote_port, local_port)));
        let owner = self.flows.owner(group);
        if owner != self.core {
            return Some(owner);
        }
        if opens {
            return None;
        }
        self.moves
            .previous(group)
            .filter(|&core| core != self.core && core < 64 && self.live & (1 << core) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_are_seen_and_the_previous_owner_is_remembered() {
        let mut flows = FlowTable::round_robin(4);
        let mut moves = FlowMoves::new(&flows);
        assert_eq!(moves.previous(5), None);
        flows.set_owner(5, 3); // group 5 was core 1's
        moves.observe(&flows);
        assert_eq!(moves.previous(5), Some(1));
        flows.set_owner(5, 0);
        moves.observe(&flows);
        assert_eq!(moves.previous(5), Some(3));
        moves.observe(&flows);
        assert_eq!(moves.previous(5), Some(3), "no change: kept");
        assert_eq!(moves.previous(6), None);
    }
}
