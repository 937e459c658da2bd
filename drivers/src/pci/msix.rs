//! MSI-X (PCI 3.0 §6.8.2): find the capability, locate the vector table, program an entry so a
//! queue's interrupt lands on the core that owns the queue, and enable the function's MSI-X.
//!
//! # Message format (Intel SDM vol. 3, §11.11 "Message Signalled Interrupts")
//! Address `0xFEE0_0000 | destination << 12` with redirection hint 0 and destination mode 0
//! (physical): the message goes to the local APIC whose id is `destination` (bits 19:12, so ids
//! 0–255). Upper address 0. Data = vector (bits 7:0), delivery mode fixed (000), edge triggered.
//! Flotilla uses this xAPIC-compatible format in x2APIC mode too: without interrupt remapping an
//! MSI can only name x2APIC ids below 256, which covers every machine Flotilla runs on (QEMU
//! numbers APIC ids 0..N). Larger ids are refused with [`PciError::DestinationTooLarge`] rather
//! than silently truncated.

use super::{find_capability, ConfigAccess, PciAddress, PciError};
use crate::registers::RegisterAccess;

/// Capability id of MSI-X.
pub const CAPABILITY_ID: u8 = 0x11;
/// Message control: MSI-X enable (bit 15 of the word at capability + 2).
pub const CONTROL_ENABLE: u32 = 1 << 31;
/// Message control: function mask (bit 14).
pub const CONTROL_FUNCTION_MASK: u32 = 1 << 30;
/// Bytes per table entry.
pub const ENTRY_SIZE: usize = 16;
/// Vector control: masked.
pub const VECTOR_MASKED: u32 = 1;

/// The MSI-X capability of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Function.
    pub address: PciAddress,
    /// Offset of the capability in configuration space.
    pub offset: u16,
    /// Entries in the table.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the pending bit array in that BAR.
    pub pba_offset: u32,
}

/// An MSI message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (low 32 bits).
    pub address: u32,
    /// Message address (high 32 bits).
    pub address_high: u32,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// Fixed delivery of `vector` to the local APIC with id `apic_id` (physical destination).
    pub fn to_apic(apic_id: u32, vector: u8) -> Result<Self, PciError> {
        if apic_id > 0xFF {
            return Err(PciError::DestinationTooLarge(apic_id));
        }
        Ok(Self {
            address: 0xFEE0_0000 | apic_id << 12,
            address_high: 0,
            data: u32::from(vector),
        })
    }
}

impl MsixCapability {
    /// Finds and decodes the MSI-X capability of `address`.
    pub fn find<C: ConfigAccess>(access: &mut C, address: PciAddress) -> Result<Self, PciError> {
        let offset = find_capability(access, address, CAPABILITY_ID)?.ok_or(PciError::NoMsix)?;
        let control = access.read(address, offset);
        let table = access.read(address, offset + 4);
        let pba = access.read(address, offset + 8);
        Ok(Self {
            address,
            offset,
            table_size: ((control >> 16) & 0x7FF) as u16 + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        })
    }

    /// Programs table entry `entry` with `message`, leaving it unmasked. `table` is the MSI-X
    /// table's BAR, mapped (e.g. [`crate::registers::Mmio`] over that BAR); offsets are relative
    /// to the BAR start.
    pub fn program<T: RegisterAccess>(
        &self,
        table: &T,
        entry: u16,
        message: MsiMessage,
    ) -> Result<(), PciError> {
        if entry >= self.table_size {
            return Err(PciError::NoSuchVector(entry));
        }
        let base = self.table_offset as usize + ENTRY_SIZE * usize::from(entry);
        // Mask while the entry changes, so no half-written message is ever sent (§6.8.2.9).
        table.write32(base + 12, VECTOR_MASKED);
        table.write32(base, message.address);
        table.write32(base + 4, message.address_high);
        table.write32(base + 8, message.data);
        table.write32(base + 12, 0);
        Ok(())
    }

    /// Masks table entry `entry`.
    pub fn mask<T: RegisterAccess>(&self, table: &T, entry: u16) -> Result<(), PciError> {
        if entry >= self.table_size {
            return Err(PciError::NoSuchVector(entry));
        }
        table.write32(
            self.table_offset as usize + ENTRY_SIZE * usize::from(entry) + 12,
            VECTOR_MASKED,
        );
        Ok(())
    }

    /// Enables MSI-X for the function (and clears the function mask).
    pub fn enable<C: ConfigAccess>(&self, access: &mut C) {
        let control = access.read(self.address, self.offset);
        access.write(
            self.address,
            self.offset,
            (control | CONTROL_ENABLE) & !CONTROL_FUNCTION_MASK,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeConfigSpace;
    use super::super::header;
    use super::*;
    use std::sync::Mutex;
    use std::vec::Vec;

    #[derive(Default)]
    struct Table(Mutex<Vec<(usize, u32)>>);
    impl RegisterAccess for Table {
        fn read32(&self, _: usize) -> u32 {
            0
        }
        fn write32(&self, offset: usize, value: u32) {
            self.0.lock().unwrap().push((offset, value));
        }
    }

    fn igb_like() -> (FakeConfigSpace, PciAddress) {
        let mut space = FakeConfigSpace::default();
        let address = PciAddress {
            bus: 0,
            device: 2,
            function: 0,
        };
        let f = space.add(address, 0x8086, 0x10C9, 0, 2);
        f.space[1] = header::STATUS_CAPABILITIES;
        f.space[0x34 / 4] = 0x70;
        // MSI-X at 0x70: 10 entries (N-1 = 9), table in BAR3 at 0, PBA in BAR3 at 0x2000.
        f.space[0x70 / 4] = 9 << 16 | 0x11;
        f.space[0x74 / 4] = 3;
        f.space[0x78 / 4] = 0x2000 | 3;
        (space, address)
    }

    #[test]
    fn finds_table_programs_entries_and_enables() {
        let (mut space, address) = igb_like();
        let cap = MsixCapability::find(&mut space, address).unwrap();
        assert_eq!(
            (
                cap.table_size,
                cap.table_bar,
                cap.table_offset,
                cap.pba_offset
            ),
            (10, 3, 0, 0x2000)
        );
        let table = Table::default();
        // Queue 2's vector → APIC id 3, CPU vector 0x41.
        cap.program(&table, 2, MsiMessage::to_apic(3, 0x41).unwrap())
            .unwrap();
        assert_eq!(
            *table.0.lock().unwrap(),
            [(44, 1), (32, 0xFEE0_3000), (36, 0), (40, 0x41), (44, 0)]
        );
        assert_eq!(
            cap.program(&table, 10, MsiMessage::to_apic(0, 0x40).unwrap()),
            Err(PciError::NoSuchVector(10))
        );
        assert_eq!(
            MsiMessage::to_apic(256, 0x40),
            Err(PciError::DestinationTooLarge(256))
        );
        cap.enable(&mut space);
        assert_ne!(
            space.functions[&address].space[0x70 / 4] & CONTROL_ENABLE,
            0
        );
        let mut plain = FakeConfigSpace::default();
        plain.add(address, 1, 2, 0, 0);
        assert_eq!(
            MsixCapability::find(&mut plain, address),
            Err(PciError::NoMsix)
        );
    }
}
