//! The RSS part of a NIC's control side that the 82576 and the 82599 share: the Toeplitz key,
//! the hashed fields and the 128-entry redirection table (the flow groups), kept in memory and
//! written through to the device. Both devices place MRQC, RETA and RSSRK at the same offsets
//! (82576 datasheet §8.10; 82599 datasheet §8.2.3.7, 82598-compatible addresses); only the MRQC
//! encoding differs, so it is passed in.
#![forbid(unsafe_code)]

use crate::nic::{FlowGroup, HashTypes, NicError, QueueId};
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

/// The device's RSS state and how to write it.
#[derive(Clone, Debug)]
pub struct RssControl {
    queues: u16,
    table: RedirectionTable,
    hash_types: HashTypes,
    mrqc_value: fn(HashTypes) -> u32,
    layout: RssLayout,
}

impl RssControl {
    /// RSS over `queues` queues with Flotilla's default table (flow group `g` on `g % queues`).
    pub fn new(
        queues: u16,
        hash_types: HashTypes,
        mrqc_value: fn(HashTypes) -> u32,
        layout: RssLayout,
    ) -> Self {
        Self {
            queues,
            table: rss::default_table(queues),
            hash_types,
            mrqc_value,
            layout,
        }
    }

    /// Writes the key, the whole table and MRQC (RSS on), in that order.
    pub fn program<R: RegisterAccess>(&self, registers: &R, key: &[u8; KEY_LEN]) {
        self.write_key(registers, key);
        for index in 0..self.table.len() / 4 {
            self.write_table_dword(registers, index);
        }
        registers.write32(self.layout.mrqc, (self.mrqc_value)(self.hash_types));
    }

    /// Queues in use.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The redirection table as programmed.
    pub fn table(&self) -> &RedirectionTable {
        &self.table
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

    /// Points `group` at `queue` with one register write (the dword holding four entries).
    pub fn set_flow_group<R: RegisterAccess>(
        &mut self,
        registers: &R,
        group: FlowGroup,
        queue: QueueId,
    ) -> Result<(), NicError> {
        if usize::from(group.0) >= self.table.len() {
            return Err(NicError::NoSuchFlowGroup(group));
        }
        if queue.0 >= self.queues {
            return Err(NicError::NoSuchQueue(queue));
        }
        self.table[usize::from(group.0)] = queue.0 as u8;
        // The other three entries of the dword are rewritten with their own values.
        self.write_table_dword(registers, usize::from(group.0) / 4);
        Ok(())
    }

    /// The queue `group` points at.
    pub fn flow_group(&self, group: FlowGroup) -> Result<QueueId, NicError> {
        self.table
            .get(usize::from(group.0))
            .map(|&q| QueueId(u16::from(q)))
            .ok_or(NicError::NoSuchFlowGroup(group))
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
        self.table = *table;
        for index in 0..self.table.len() / 4 {
            self.write_table_dword(registers, index);
        }
        Ok(())
    }

    fn write_table_dword<R: RegisterAccess>(&self, registers: &R, index: usize) {
        let entries = &self.table[4 * index..4 * index + 4];
        let value = u32::from_le_bytes([entries[0], entries[1], entries[2], entries[3]]);
        registers.write32(self.layout.reta + 4 * index, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// Records register writes.
    #[derive(Default)]
    struct Recorder(RefCell<std::vec::Vec<(usize, u32)>>);

    impl RegisterAccess for Recorder {
        fn read32(&self, _offset: usize) -> u32 {
            0
        }
        fn write32(&self, offset: usize, value: u32) {
            self.0.borrow_mut().push((offset, value));
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
        let writes = registers.0.take();
        assert_eq!(writes.len(), 10 + 32 + 1);
        assert_eq!(writes[0], (0x5C80, 0x0101_0101));
        assert_eq!(writes[10], (0x5C00, u32::from_le_bytes([0, 1, 2, 3])));
        assert_eq!(writes[42], (0x5818, 0xAB));
        rss.set_flow_group(&registers, FlowGroup(6), QueueId(0))
            .unwrap();
        assert_eq!(
            registers.0.take(),
            [(0x5C04, u32::from_le_bytes([0, 1, 0, 3]))]
        );
        assert_eq!(rss.flow_group(FlowGroup(6)), Ok(QueueId(0)));
        assert_eq!(
            rss.set_flow_group(&registers, FlowGroup(6), QueueId(4)),
            Err(NicError::NoSuchQueue(QueueId(4)))
        );
        assert_eq!(
            rss.set_flow_group(&registers, FlowGroup(200), QueueId(1)),
            Err(NicError::NoSuchFlowGroup(FlowGroup(200)))
        );
        assert!(
            registers.0.take().is_empty(),
            "refused changes write nothing"
        );
    }
}
