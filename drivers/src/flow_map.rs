//! Flow-group ownership: the one map from flow group (RSS redirection table entry) to the core
//! that owns it.
//!
//! Each core keeps exactly one [`FlowMap`]. Its network stack's classifier reads it to find the
//! owner of a misdelivered frame, the kernel writes it when the monitors commit a move or declare
//! a core failed, and on the NIC's home core the redirection table is written from it: the map
//! remembers which groups changed since the last [`FlowMap::take_changes`], so only the RETA
//! registers holding those groups are rewritten (see `rss_control::RssControl::write_flow_map`).
//! Core `c` receives through queue `c`, so an owner is also the queue the NIC steers the group to.
#![forbid(unsafe_code)]

use crate::nic::FLOW_GROUPS;

/// A set of flow groups (bit `g % 64` of word `g / 64` = group `g`). Two 64-bit words rather
/// than a `u128`: gdb 13 cannot read a structure holding a 128-bit integer, and the kernel's
/// per-core state holds a flow map (`qemu-smp gdb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupSet(pub [u64; 2]);

impl GroupSet {
    /// No group.
    pub const EMPTY: GroupSet = GroupSet([0; 2]);
    /// Every group.
    pub const ALL: GroupSet = GroupSet([u64::MAX; 2]);

    /// Whether `group` is in the set.
    pub fn contains(self, group: u8) -> bool {
        usize::from(group) < FLOW_GROUPS
            && self.0[usize::from(group / 64)] & (1 << (group % 64)) != 0
    }

    /// Adds `group`.
    pub fn insert(&mut self, group: u8) {
        if usize::from(group) < FLOW_GROUPS {
            self.0[usize::from(group / 64)] |= 1 << (group % 64);
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == [0; 2]
    }

    /// Number of groups in the set.
    pub fn len(self) -> usize {
        (self.0[0].count_ones() + self.0[1].count_ones()) as usize
    }

    /// The groups, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..FLOW_GROUPS as u8).filter(move |&group| self.contains(group))
    }
}

/// Which core owns each of the [`FLOW_GROUPS`] flow groups, and which entries changed since the
/// NIC was last written from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowMap {
    owners: [u16; FLOW_GROUPS],
    changed: GroupSet,
}

impl FlowMap {
    /// Flow group `g` on core `g % core_count`: the layout the NIC is programmed with at boot
    /// (`rss::default_table`). Nothing is marked changed.
    pub fn round_robin(core_count: u16) -> Self {
        let count = core_count.max(1);
        Self {
            owners: core::array::from_fn(|group| group as u16 % count),
            changed: GroupSet::EMPTY,
        }
    }

    /// The core owning `group` (taken modulo [`FLOW_GROUPS`]).
    pub fn owner(&self, group: u8) -> u16 {
        self.owners[usize::from(group) % FLOW_GROUPS]
    }

    /// The flow group an RSS hash selects (its low 7 bits index the redirection table).
    pub fn group_of_hash(hash: u32) -> u8 {
        (hash as usize % FLOW_GROUPS) as u8
    }

    /// Records that `group` belongs to `core`; a real change is remembered for the NIC.
    pub fn set_owner(&mut self, group: u8, core: u16) {
        let slot = &mut self.owners[usize::from(group) % FLOW_GROUPS];
        if *slot != core {
            *slot = core;
            self.changed.insert(group % FLOW_GROUPS as u8);
        }
    }

    /// Every owner, indexed by flow group.
    pub fn owners(&self) -> &[u16; FLOW_GROUPS] {
        &self.owners
    }

    /// Replaces every owner with `owners` (changes are remembered as by [`Self::set_owner`]).
    pub fn set_owners(&mut self, owners: &[u16; FLOW_GROUPS]) {
        for (group, owner) in owners.iter().enumerate() {
            self.set_owner(group as u8, *owner);
        }
    }

    /// The groups `core` owns.
    pub fn groups_of(&self, core: u16) -> GroupSet {
        let mut set = GroupSet::EMPTY;
        for (group, owner) in self.owners.iter().enumerate() {
            if *owner == core {
                set.insert(group as u8);
            }
        }
        set
    }

    /// The groups changed since the last call, which forgets them.
    pub fn take_changes(&mut self) -> GroupSet {
        core::mem::take(&mut self.changed)
    }

    /// The groups changed since the last [`Self::take_changes`].
    pub fn changes(&self) -> GroupSet {
        self.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_matches_the_default_table_and_changes_are_remembered_once() {
        let mut map = FlowMap::round_robin(4);
        let table = crate::rss::default_table(4);
        for group in 0..FLOW_GROUPS as u8 {
            assert_eq!(map.owner(group), u16::from(table[usize::from(group)]));
        }
        assert!(map.changes().is_empty());
        map.set_owner(9, 1); // already core 1: no change
        assert!(map.take_changes().is_empty());
        map.set_owner(9, 3);
        map.set_owner(200, 2); // 200 % 128 = 72, owned by 0 before
        let changed = map.take_changes();
        assert_eq!(changed.iter().collect::<std::vec::Vec<_>>(), [9, 72]);
        assert_eq!((map.owner(9), map.owner(72)), (3, 2));
        assert!(map.take_changes().is_empty(), "taken once");
        assert_eq!(map.groups_of(3).len(), 33);
        assert_eq!(FlowMap::group_of_hash(0x1234_5689), 0x09);
    }
}
