//! Machine topology from ACPI: the cores (from the MADT) and, when the firmware has an SRAT, the
//! NUMA node of each core and of each memory range.
//!
//! The SRAT parser works on the table's bytes, so it is tested on the host; the kernel finds the
//! tables with the `acpi` crate (see `arch::acpi`).
#![forbid(unsafe_code)]

use crate::memory::PhysicalRange;

/// Most cores Flotilla runs on.
pub const MAX_CORES: usize = 64;
/// Most SRAT memory ranges kept.
pub const MAX_NUMA_RANGES: usize = 32;

/// One core as the firmware describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreDescription {
    /// Flotilla's core number: 0 is the bootstrap core, the rest in MADT order.
    pub index: u32,
    /// The core's (x2)APIC id.
    pub apic_id: u32,
    /// Its NUMA node, when the SRAT names one.
    pub node: Option<u32>,
}

/// The SRAT's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaInfo {
    /// `(apic id, node)` for each enabled processor entry.
    pub cores: heapless::Vec<(u32, u32), MAX_CORES>,
    /// `(range, node)` for each enabled memory entry.
    pub memory: heapless::Vec<(PhysicalRange, u32), MAX_NUMA_RANGES>,
}

impl NumaInfo {
    /// The node of the core with `apic_id`.
    pub fn node_of(&self, apic_id: u32) -> Option<u32> {
        self.cores
            .iter()
            .find(|(id, _)| *id == apic_id)
            .map(|(_, node)| *node)
    }
}

/// Errors of the SRAT parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SratError {
    /// The bytes do not start with an SRAT header.
    NotSrat,
    /// An entry's length runs past the table or is zero.
    Malformed(usize),
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    bytes
        .get(offset..offset + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    bytes
        .get(offset..offset + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Parses a whole SRAT (header included), as found in memory.
///
/// ACPI 6.5 §5.2.16: a 36-byte header, 12 reserved bytes, then entries. Type 0 (processor local
/// APIC affinity), 1 (memory affinity) and 2 (processor x2APIC affinity) are read; others skipped.
pub fn parse_srat(table: &[u8]) -> Result<NumaInfo, SratError> {
    if table.len() < 48 || &table[0..4] != b"SRAT" {
        return Err(SratError::NotSrat);
    }
    let length = (u32_at(table, 4) as usize).min(table.len());
    let mut info = NumaInfo::default();
    let mut offset = 48;
    while offset + 2 <= length {
        let kind = table[offset];
        let size = table[offset + 1] as usize;
        if size < 2 || offset + size > length {
            return Err(SratError::Malformed(offset));
        }
        let entry = &table[offset..offset + size];
        match kind {
            0 if size >= 16 => {
                let enabled = u32_at(entry, 4) & 1 != 0;
                let domain = entry[2] as u32
                    | (entry[9] as u32) << 8
                    | (entry[10] as u32) << 16
                    | (entry[11] as u32) << 24;
                if enabled {
                    let _ = info.cores.push((entry[3] as u32, domain));
                }
            }
            1 if size >= 40 => {
                let enabled = u32_at(entry, 28) & 1 != 0;
                let base = u64_at(entry, 8);
                let len = u64_at(entry, 16);
                if enabled && len > 0 {
                    let range = PhysicalRange {
                        start: base,
                        end: base.saturating_add(len),
                    };
                    let _ = info.memory.push((range, u32_at(entry, 2)));
                }
            }
            2 if size >= 24 && u32_at(entry, 12) & 1 != 0 => {
                let _ = info.cores.push((u32_at(entry, 8), u32_at(entry, 4)));
            }
            _ => {}
        }
        offset += size;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srat(entries: &[std::vec::Vec<u8>]) -> std::vec::Vec<u8> {
        let mut table = std::vec![0u8; 48];
        table[0..4].copy_from_slice(b"SRAT");
        for entry in entries {
            table.extend_from_slice(entry);
        }
        let len = table.len() as u32;
        table[4..8].copy_from_slice(&len.to_le_bytes());
        table
    }

    fn local_apic(apic: u8, domain: u8, enabled: bool) -> std::vec::Vec<u8> {
        let mut e = std::vec![0u8; 16];
        e[0] = 0;
        e[1] = 16;
        e[2] = domain;
        e[3] = apic;
        e[4] = enabled as u8;
        e
    }

    fn memory(base: u64, len: u64, domain: u32) -> std::vec::Vec<u8> {
        let mut e = std::vec![0u8; 40];
        e[0] = 1;
        e[1] = 40;
        e[2..6].copy_from_slice(&domain.to_le_bytes());
        e[8..16].copy_from_slice(&base.to_le_bytes());
        e[16..24].copy_from_slice(&len.to_le_bytes());
        e[28] = 1;
        e
    }

    fn x2apic(apic: u32, domain: u32) -> std::vec::Vec<u8> {
        let mut e = std::vec![0u8; 24];
        e[0] = 2;
        e[1] = 24;
        e[4..8].copy_from_slice(&domain.to_le_bytes());
        e[8..12].copy_from_slice(&apic.to_le_bytes());
        e[12] = 1;
        e
    }

    #[test]
    fn srat_entries_are_read() {
        let table = srat(&[
            local_apic(0, 0, true),
            local_apic(1, 1, true),
            local_apic(7, 1, false),
            x2apic(300, 2),
            memory(0, 0x4000_0000, 0),
            memory(0x4000_0000, 0x4000_0000, 1),
        ]);
        let info = parse_srat(&table).unwrap();
        assert_eq!(info.cores.as_slice(), &[(0, 0), (1, 1), (300, 2)]);
        assert_eq!(info.node_of(1), Some(1));
        assert_eq!(info.node_of(7), None);
        assert_eq!(info.memory.len(), 2);
        assert_eq!(
            info.memory[1],
            (
                PhysicalRange {
                    start: 0x4000_0000,
                    end: 0x8000_0000
                },
                1
            )
        );
    }

    #[test]
    fn malformed_srat_is_an_error() {
        assert_eq!(parse_srat(b"APIC"), Err(SratError::NotSrat));
        let mut table = srat(&[local_apic(0, 0, true)]);
        table[49] = 0;
        assert_eq!(parse_srat(&table), Err(SratError::Malformed(48)));
        let good = srat(&[local_apic(0, 0, true), memory(0, 1 << 30, 0)]);
        for cut in 0..good.len() {
            let _ = parse_srat(&good[..cut]);
        }
    }
}
