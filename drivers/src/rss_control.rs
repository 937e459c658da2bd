//! The RSS part of a NIC's control side that the 82576 and the 82599 share: the Toeplitz key,
//! the hashed fields and the 128-entry redirection table (the flow groups). The table is not
//! kept here: the device's RETA registers hold it, written from the kernel's one flow map
//! ([`crate::nic::FlowMap`]) by difference, and read back when asked. Both devices place MRQC, RETA and RSSRK at the same offsets
//! (82576 datasheet §8.10; 82599 datasheet §8.2.3.7, 82598-compatible addresses); only the MRQC
//! encoding differs, so it is passed in.
#![forbid(unsafe_code)]

use crate::nic::{FlowGroup, FlowMap, GroupSet, HashTypes, NicError, QueueId, FLOW_GROUPS};
use crate::registers::RegisterAccess;
use crate::rss::{self, RedirectionTable, KEY_LEN};

/// Where the RSS registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssLayout {
    /// Multiple receive queues command (MRQC).
    pub mrqc: usize,
    /// First redirection table register (RETA[0]).
    pub reta: usize,
    /// First RSS random key register (RSSRK[0]).
    pub rssrk: usize,
}

/// How to drive the device's RSS registers. It keeps no copy of the redirection table: the
/// device's RETA registers are the table, written from the kernel's one [`FlowMap`] (only the
/// registers holding changed groups) and read back when asked.
#[derive(Clone, Debug)]
pub struct RssControl {
    queues: u16,
    hash_types: HashTypes,
    mrqc_value: fn(HashTypes) -> u32,
    layout: RssLayout,
}

impl RssControl {
    /// RSS over `queues` queues.
    pub fn new(
        queues: u16,
        hash_types: HashTypes,
        mrqc_value: fn(HashTypes) -> u32,
        layout: RssLayout,
    ) -> Self {
        Self {
            queues,
            hash_types,
            mrqc_value,
            layout,
        }
    }

    /// Writes the key, Flotilla's default table (flow group `g` on queue `g % queues`) and MRQC
    /// (RSS on), in that order.
    pub fn program<R: RegisterAccess>(&self, registers: &R, key: &[u8; KEY_LEN]) {
        self.write_key(registers, key);
        let table = rss::default_table(self.queues);
        for index in 0..table.len() / 4 {
            write_table_dword(registers, self.layout.reta, index, &table);
        }
        registers.write32(self.layout.mrqc, (self.mrqc_value)(self.hash_types));
    }

    /// Queues in use.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The redirection table as the device holds it (read from the RETA registers).
    pub fn table<R: RegisterAccess>(&self, registers: &R) -> RedirectionTable {
        let mut table = [0u8; FLOW_GROUPS];
        for (index, entries) in table.chunks_exact_mut(4).enumerate() {
            entries.copy_from_slice(&registers.read32(self.layout.reta + 4 * index).to_le_bytes());
        }
        table
    }

    /// The hashed fields in force.
    pub fn hash_types(&self) -> HashTypes {
        self.hash_types
    }

    /// Writes a new Toeplitz key (as little-endian dwords).
    pub fn write_key<R: RegisterAccess>(&self, registers: &R, key: &[u8; KEY_LEN]) {
        for (index, chunk) in key.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            registers.write32(self.layout.rssrk + 4 * index, value);
        }
    }

    /// Changes the hashed fields.
    pub fn set_hash_types<R: RegisterAccess>(&mut self, registers: &R, types: HashTypes) {
        self.hash_types = types;
        registers.write32(self.layout.mrqc, (self.mrqc_value)(types));
    }

    /// Points `group` at `queue`: one read-modify-write of the dword holding four entries.
    pub fn set_flow_group<R: RegisterAccess>(
        &mut self,
        registers: &R,
        group: FlowGroup,
        queue: QueueId,
    ) -> Result<(), NicError> {
        if usize::from(group.0) >= FLOW_GROUPS {
            return Err(NicError::NoSuchFlowGroup(group));
        }
        if queue.0 >= self.queues {
            return Err(NicError::NoSuchQueue(queue));
        }
        let register = self.layout.reta + 4 * (usize::from(group.0) / 4);
        let mut entries = registers.read32(register).to_le_bytes();
        entries[usize::from(group.0) % 4] = queue.0 as u8;
        registers.write32(register, u32::from_le_bytes(entries));
        Ok(())
    }

    /// The queue `group` points at (read from the device).
    pub fn flow_group<R: RegisterAccess>(
        &self,
        registers: &R,
        group: FlowGroup,
    ) -> Result<QueueId, NicError> {
        if usize::from(group.0) >= FLOW_GROUPS {
            return Err(NicError::NoSuchFlowGroup(group));
        }
        let entries = registers
            .read32(self.layout.reta + 4 * (usize::from(group.0) / 4))
            .to_le_bytes();
        Ok(QueueId(u16::from(entries[usize::from(group.0) % 4])))
    }

    /// Replaces the whole table (every entry must name a queue in use).
    pub fn set_table<R: RegisterAccess>(
        &mut self,
        registers: &R,
        table: &RedirectionTable,
    ) -> Result<(), NicError> {
        if let Some(&bad) = table.iter().find(|&&q| u16::from(q) >= self.queues) {
            return Err(NicError::NoSuchQueue(QueueId(u16::from(bad))));
        }
        for index in 0..table.len() / 4 {
            write_table_dword(registers, self.layout.reta, index, table);
        }
        Ok(())
    }

    /// Writes the groups in `changed` from `map` (core `c` = queue `c`): one register write per
    /// dword that holds a changed group, its four entries taken from the map. Nothing is written
    /// if an owner in a dword to write has no queue; returns the registers written.
    pub fn write_flow_map<R: RegisterAccess>(
        &mut self,
        registers: &R,
        map: &FlowMap,
        changed: GroupSet,
    ) -> Result<usize, NicError> {
        let owners = map.owners();
        let dwords: heapless::Vec<usize, { FLOW_GROUPS / 4 }> = (0..FLOW_GROUPS / 4)
            .filter(|dword| (0..4).any(|entry| changed.contains((dword * 4 + entry) as u8)))
            .collect();
        for &dword in &dwords {
            if let Some(&bad) = owners[dword * 4..dword * 4 + 4]
                .iter()
                .find(|&&owner| owner >= self.queues)
            {
                return Err(NicError::NoSuchQueue(QueueId(bad)));
            }
        }
        let mut table = [0u8; FLOW_GROUPS];
        for (entry, owner) in table.iter_mut().zip(owners) {
            *entry = *owner as u8;
        }
        for &dword in &dwords {
            write_table_dword(registers, self.layout.reta, dword, &table);
        }
        Ok(dwords.len())
    }
}

fn write_table_dword<R: RegisterAccess>(
    registers: &R,
    reta: usize,
    index: usize,
    table: &RedirectionTable,
) {
    let entries = &table[4 * index..4 * index + 4];
    let value = u32::from_le_bytes([entries[0], entries[1], entries[2], entries[3]]);
    registers.write32(reta + 4 * index, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// Keeps register values (RETA reads return what was written) and records writes.
    #[derive(Default)]
    struct Recorder {
        values: RefCell<std::collections::BTreeMap<usize, u32>>,
        writes: RefCell<std::vec::Vec<(usize, u32)>>,
    }

    impl Recorder {
        fn take(&self) -> std::vec::Vec<(usize, u32)> {
            self.writes.take()
        }
    }

    impl RegisterAccess for Recorder {
        fn read32(&self, offset: usize) -> u32 {
            self.values.borrow().get(&offset).copied().unwrap_or(0)
        }
        fn write32(&self, offset: usize, value: u32) {
            self.values.borrow_mut().insert(offset, value);
            self.writes.borrow_mut().push((offset, value));
        }
    }

    const LAYOUT: RssLayout = RssLayout {
        mrqc: 0x5818,
        reta: 0x5C00,
        rssrk: 0x5C80,
    };

    #[test]
    fn program_writes_key_table_then_mrqc_and_moves_one_dword() {
        let registers = Recorder::default();
        let mut rss = RssControl::new(4, HashTypes::ALL, |_| 0xAB, LAYOUT);
        rss.program(&registers, &[1; KEY_LEN]);
        let writes = registers.take();
        assert_eq!(writes.len(), 10 + 32 + 1);
        assert_eq!(writes[0], (0x5C80, 0x0101_0101));
        assert_eq!(writes[10], (0x5C00, u32::from_le_bytes([0, 1, 2, 3])));
        assert_eq!(writes[42], (0x5818, 0xAB));
        assert_eq!(rss.table(&registers), rss::default_table(4));
        rss.set_flow_group(&registers, FlowGroup(6), QueueId(0))
            .unwrap();
        assert_eq!(
            registers.take(),
            [(0x5C04, u32::from_le_bytes([0, 1, 0, 3]))]
        );
        assert_eq!(rss.flow_group(&registers, FlowGroup(6)), Ok(QueueId(0)));
        assert_eq!(
            rss.set_flow_group(&registers, FlowGroup(6), QueueId(4)),
            Err(NicError::NoSuchQueue(QueueId(4)))
        );
        assert_eq!(
            rss.set_flow_group(&registers, FlowGroup(200), QueueId(1)),
            Err(NicError::NoSuchFlowGroup(FlowGroup(200)))
        );
        assert!(registers.take().is_empty(), "refused changes write nothing");
    }

    #[test]
    fn the_flow_map_is_written_by_difference_only() {
        let registers = Recorder::default();
        let mut rss = RssControl::new(4, HashTypes::ALL, |_| 0xAB, LAYOUT);
        rss.program(&registers, &[1; KEY_LEN]);
        registers.take();
        let mut map = FlowMap::round_robin(4);
        assert_eq!(
            {
                let changed = map.take_changes();
                rss.write_flow_map(&registers, &map, changed)
            },
            Ok(0)
        );
        map.set_owner(5, 3);
        map.set_owner(7, 0);
        map.set_owner(64, 2);
        assert_eq!(
            {
                let changed = map.take_changes();
                rss.write_flow_map(&registers, &map, changed)
            },
            Ok(2)
        );
        assert_eq!(
            registers.take(),
            [
                (0x5C04, u32::from_le_bytes([0, 3, 2, 0])),
                (0x5C40, u32::from_le_bytes([2, 1, 2, 3])),
            ]
        );
        let mut expected = rss::default_table(4);
        expected[5] = 3;
        expected[7] = 0;
        expected[64] = 2;
        assert_eq!(rss.table(&registers), expected);
        // An owner without a queue: refused, nothing written.
        map.set_owner(1, 9);
        assert_eq!(
            {
                let changed = map.take_changes();
                rss.write_flow_map(&registers, &map, changed)
            },
            Err(NicError::NoSuchQueue(QueueId(9)))
        );
        assert!(registers.take().is_empty());
    }
}
