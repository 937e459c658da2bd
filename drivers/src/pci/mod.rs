//! PCI configuration space: the access trait, enumeration (multi-function aware, skipping absent
//! functions), BAR decoding and sizing, the capability list, and MSI-X ([`msix`]).
//!
//! Hardware access lives in two small parts: [`ecam`] (memory-mapped, PCIe ECAM from ACPI MCFG,
//! the normal path on q35 and real machines) and [`port`] (legacy ports 0xCF8/0xCFC, the
//! fallback). Everything else works on any [`ConfigAccess`], so the host tests use a fake
//! configuration space. Register offsets follow the PCI Local Bus Specification 3.0 §6.1–§6.8
//! and the PCI Express Base Specification §7.2 (ECAM).

pub mod ecam;
pub mod msix;
pub mod port;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

/// 32-bit configuration space access. Offsets are byte offsets, 4-aligned, below 4096 (ECAM) or
/// 256 (port I/O). `&mut self`: the legacy port mechanism is a two-step protocol, so access is
/// exclusive (the kernel enumerates on one core at boot).
pub trait ConfigAccess {
    /// Reads the dword at `offset` of `address`'s configuration space.
    fn read(&mut self, address: PciAddress, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write(&mut self, address: PciAddress, offset: u16, value: u32);
}

/// Configuration header offsets (PCI 3.0 §6.1).
pub mod header {
    /// Vendor id (bits 15:0) and device id (31:16).
    pub const ID: u16 = 0x00;
    /// Command (15:0) and status (31:16).
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision, class code (class in bits 31:24, subclass 23:16).
    pub const CLASS: u16 = 0x08;
    /// Cache line, latency, header type (bits 23:16, bit 23 = multi-function), BIST.
    pub const HEADER_TYPE: u16 = 0x0C;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Capabilities pointer (type 0 header).
    pub const CAPABILITIES: u16 = 0x34;
    /// Command: memory space enable.
    pub const COMMAND_MEMORY: u32 = 1 << 1;
    /// Command: I/O space enable.
    pub const COMMAND_IO: u32 = 1 << 0;
    /// Command: bus master enable (the device may DMA).
    pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
    /// Command: legacy INTx disable.
    pub const COMMAND_INTX_DISABLE: u32 = 1 << 10;
    /// Status: capability list present (bit 4 of status = bit 20 of the dword).
    pub const STATUS_CAPABILITIES: u32 = 1 << 20;
}

/// One present function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
}

/// Calls `visit` for every present function on buses `buses` (inclusive), skipping functions
/// whose vendor id reads 0xFFFF (absent, including q35's VF placeholders), and functions 1..8 of
/// devices whose function 0 is absent or not multi-function (PCI 3.0 §6.2.1). Bounded:
/// at most 256 × 32 × 8 probes.
pub fn enumerate<C: ConfigAccess>(
    access: &mut C,
    buses: core::ops::RangeInclusive<u8>,
    mut visit: impl FnMut(PciFunction),
) {
    for bus in buses {
        for device in 0..32 {
            let first = PciAddress {
                bus,
                device,
                function: 0,
            };
            if access.read(first, header::ID) & 0xFFFF == 0xFFFF {
                continue;
            }
            let multi_function = access.read(first, header::HEADER_TYPE) & (1 << 23) != 0;
            let functions = if multi_function { 8 } else { 1 };
            for function in 0..functions {
                let address = PciAddress {
                    bus,
                    device,
                    function,
                };
                let id = access.read(address, header::ID);
                if id & 0xFFFF == 0xFFFF {
                    continue;
                }
                let class = access.read(address, header::CLASS);
                visit(PciFunction {
                    address,
                    vendor: id as u16,
                    device: (id >> 16) as u16,
                    class: (class >> 24) as u8,
                    subclass: (class >> 16) as u8,
                });
            }
        }
    }
}

/// The first function with `vendor`/`device` on buses `buses`.
pub fn find<C: ConfigAccess>(
    access: &mut C,
    buses: core::ops::RangeInclusive<u8>,
    vendor: u16,
    device: u16,
) -> Option<PciFunction> {
    let mut found = None;
    enumerate(access, buses, |function| {
        if found.is_none() && function.vendor == vendor && function.device == device {
            found = Some(function);
        }
    });
    found
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Memory space BAR.
    Memory {
        /// Base address.
        address: u64,
        /// Size in bytes.
        size: u64,
        /// Whether it is a 64-bit BAR (it then uses the next BAR slot too).
        is_64bit: bool,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O space BAR.
    Io {
        /// Port base.
        port: u32,
        /// Size in ports.
        size: u32,
    },
    /// Unimplemented BAR (reads zero and sizes to zero).
    None,
}

/// Errors of BAR and capability access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// BAR index above 5, or the upper half of a 64-bit BAR.
    BadBarIndex(u8),
    /// The capability list loops or points into the header.
    MalformedCapabilityList,
    /// The function has no MSI-X capability.
    NoMsix,
    /// An MSI-X table entry beyond the table.
    NoSuchVector(u16),
    /// The MSI-X BAR is not a memory BAR.
    BadMsixBar,
    /// A destination APIC id the chosen message format cannot express.
    DestinationTooLarge(u32),
}

/// Decodes and sizes BAR `index` (PCI 3.0 §6.2.5.1): memory and I/O decode are switched off in
/// the command register while all-ones is written, so the device never decodes a bogus address,
/// then the BAR and the command register are restored.
pub fn read_bar<C: ConfigAccess>(
    access: &mut C,
    address: PciAddress,
    index: u8,
) -> Result<Bar, PciError> {
    if index > 5 {
        return Err(PciError::BadBarIndex(index));
    }
    let offset = header::BAR0 + 4 * u16::from(index);
    let original = access.read(address, offset);
    let command = access.read(address, header::COMMAND_STATUS);
    access.write(
        address,
        header::COMMAND_STATUS,
        command & 0xFFFF & !(header::COMMAND_MEMORY | header::COMMAND_IO),
    );
    let bar = if original & 1 == 1 {
        access.write(address, offset, u32::MAX);
        let mask = access.read(address, offset) & !0x3;
        access.write(address, offset, original);
        let size = (!mask).wrapping_add(1) & 0xFFFF;
        if mask == 0 {
            Bar::None
        } else {
            Bar::Io {
                port: original & !0x3,
                size,
            }
        }
    } else {
        let is_64bit = (original >> 1) & 0x3 == 0x2;
        let prefetchable = original & 0x8 != 0;
        if is_64bit && index == 5 {
            return Err(PciError::BadBarIndex(index));
        }
        access.write(address, offset, u32::MAX);
        let low_mask = access.read(address, offset) & !0xF;
        access.write(address, offset, original);
        let (high, high_mask) = if is_64bit {
            let high = access.read(address, offset + 4);
            access.write(address, offset + 4, u32::MAX);
            let high_mask = access.read(address, offset + 4);
            access.write(address, offset + 4, high);
            (high, high_mask)
        } else {
            (0, u32::MAX)
        };
        let mask = u64::from(high_mask) << 32 | u64::from(low_mask);
        if low_mask == 0 && (!is_64bit || high_mask == 0) {
            Bar::None
        } else {
            Bar::Memory {
                address: u64::from(high) << 32 | u64::from(original & !0xF),
                size: (!mask).wrapping_add(1),
                is_64bit,
                prefetchable,
            }
        }
    };
    access.write(address, header::COMMAND_STATUS, command & 0xFFFF);
    Ok(bar)
}

/// Switches on memory decode and bus mastering (the NIC must DMA) and masks legacy INTx
/// (Flotilla uses MSI-X only).
pub fn enable_device<C: ConfigAccess>(access: &mut C, address: PciAddress) {
    let command = access.read(address, header::COMMAND_STATUS) & 0xFFFF;
    access.write(
        address,
        header::COMMAND_STATUS,
        command
            | header::COMMAND_MEMORY
            | header::COMMAND_BUS_MASTER
            | header::COMMAND_INTX_DISABLE,
    );
}

/// Walks the capability list (PCI 3.0 §6.7) and returns the offset of the first capability
/// with id `id`. At most 48 entries are followed (a list cannot hold more in 256 bytes), so a
/// looping list ends with an error instead of hanging.
pub fn find_capability<C: ConfigAccess>(
    access: &mut C,
    address: PciAddress,
    id: u8,
) -> Result<Option<u16>, PciError> {
    if access.read(address, header::COMMAND_STATUS) & header::STATUS_CAPABILITIES == 0 {
        return Ok(None);
    }
    let mut pointer = (access.read(address, header::CAPABILITIES) & 0xFC) as u16;
    for _ in 0..48 {
        if pointer == 0 {
            return Ok(None);
        }
        if pointer < 0x40 {
            return Err(PciError::MalformedCapabilityList);
        }
        let entry = access.read(address, pointer);
        if entry as u8 == id {
            return Ok(Some(pointer));
        }
        pointer = ((entry >> 8) & 0xFC) as u16;
    }
    Err(PciError::MalformedCapabilityList)
}

/// A fake configuration space for host tests: functions with 256-byte spaces and BAR sizing
/// behaviour (writable bits given per BAR).
#[cfg(any(test, feature = "std"))]
pub mod fake {
    extern crate std;
    use super::{ConfigAccess, PciAddress};
    use std::collections::BTreeMap;

    /// One fake function.
    #[derive(Clone)]
    pub struct FakeFunction {
        /// Its 256 bytes of configuration space, as dwords.
        pub space: [u32; 64],
        /// Per BAR slot, the size mask (which bits are writable); 0 = unimplemented.
        pub bar_masks: [u32; 6],
    }

    /// A fake configuration space: absent functions read all ones.
    #[derive(Default)]
    pub struct FakeConfigSpace {
        /// Present functions.
        pub functions: BTreeMap<PciAddress, FakeFunction>,
        /// Number of reads done (to check enumeration is bounded and skips absent functions).
        pub reads: usize,
    }

    impl FakeConfigSpace {
        /// Adds a function with `vendor`, `device`, `header_type`, class.
        pub fn add(
            &mut self,
            address: PciAddress,
            vendor: u16,
            device: u16,
            header_type: u8,
            class: u8,
        ) -> &mut FakeFunction {
            let mut space = [0u32; 64];
            space[0] = u32::from(device) << 16 | u32::from(vendor);
            space[2] = u32::from(class) << 24;
            space[3] = u32::from(header_type) << 16;
            self.functions.entry(address).or_insert(FakeFunction {
                space,
                bar_masks: [0; 6],
            })
        }
    }

    impl ConfigAccess for FakeConfigSpace {
        fn read(&mut self, address: PciAddress, offset: u16) -> u32 {
            self.reads += 1;
            self.functions
                .get(&address)
                .map_or(u32::MAX, |f| f.space[usize::from(offset / 4)])
        }

        fn write(&mut self, address: PciAddress, offset: u16, value: u32) {
            let Some(function) = self.functions.get_mut(&address) else {
                return;
            };
            let index = usize::from(offset / 4);
            if (4..10).contains(&index) {
                let mask = function.bar_masks[index - 4];
                let old = function.space[index];
                // Writable bits take the value; the low type bits are read-only.
                // (A mask of all ones marks the upper half of a 64-bit BAR: no type bits.)
                let read_only = if mask == u32::MAX {
                    0
                } else if old & 1 == 1 {
                    0x3
                } else {
                    0xF
                };
                function.space[index] = (old & read_only) | (value & mask & !read_only);
            } else if index == 1 {
                // Status bits are read-only / write-1-to-clear: writing 0 keeps them.
                function.space[1] = (function.space[1] & 0xFFFF_0000) | (value & 0xFFFF);
            } else {
                function.space[index] = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeConfigSpace;
    use super::*;

    fn at(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress {
            bus,
            device,
            function,
        }
    }

    #[test]
    fn enumeration_skips_absent_and_respects_multi_function() {
        let mut space = FakeConfigSpace::default();
        space.add(at(0, 0, 0), 0x8086, 0x29C0, 0x00, 0x06); // q35 host bridge
        space.add(at(0, 2, 0), 0x8086, 0x10C9, 0x80, 0x02); // igb, multi-function
        space.add(at(0, 2, 3), 0x8086, 0x10CA, 0x00, 0x02); // a present function 3
        space.add(at(0, 3, 0), 0x1234, 0x1111, 0x00, 0x03); // single-function device...
        space.add(at(0, 3, 1), 0xFFFF, 0xFFFF, 0x00, 0x00); // ... whose function 1 must not be probed
        let mut seen = std::vec::Vec::new();
        enumerate(&mut space, 0..=0, |f| {
            seen.push((f.address, f.vendor, f.device, f.class))
        });
        assert_eq!(
            seen,
            [
                (at(0, 0, 0), 0x8086, 0x29C0, 0x06),
                (at(0, 2, 0), 0x8086, 0x10C9, 0x02),
                (at(0, 2, 3), 0x8086, 0x10CA, 0x02),
                (at(0, 3, 0), 0x1234, 0x1111, 0x03),
            ]
        );
        assert_eq!(
            find(&mut space, 0..=255, 0x8086, 0x10C9).unwrap().address,
            at(0, 2, 0)
        );
        assert_eq!(find(&mut space, 0..=3, 0x8086, 0x10FB), None);
    }

    #[test]
    fn bars_decode_and_size_32_64_io() {
        let mut space = FakeConfigSpace::default();
        let f = space.add(at(0, 2, 0), 0x8086, 0x10C9, 0, 2);
        f.space[1] = 0x0000_0007; // IO, memory, bus master on
        f.space[4] = 0xFEB8_0000; // BAR0: 32-bit memory, 128 KiB
        f.bar_masks[0] = !(0x2_0000 - 1);
        f.space[5] = 0x0000_C001; // BAR1: IO, 32 ports
        f.bar_masks[1] = !(32 - 1) & 0xFFFF;
        f.space[6] = 0x0000_000C; // BAR2/3: 64-bit prefetchable at 0x8_0000_0000, 16 KiB
        f.space[7] = 0x8;
        f.bar_masks[2] = !(0x4000 - 1);
        f.bar_masks[3] = u32::MAX;
        let address = at(0, 2, 0);
        assert_eq!(
            read_bar(&mut space, address, 0),
            Ok(Bar::Memory {
                address: 0xFEB8_0000,
                size: 0x2_0000,
                is_64bit: false,
                prefetchable: false
            })
        );
        assert_eq!(
            read_bar(&mut space, address, 1),
            Ok(Bar::Io {
                port: 0xC000,
                size: 32
            })
        );
        assert_eq!(
            read_bar(&mut space, address, 2),
            Ok(Bar::Memory {
                address: 0x8_0000_0000,
                size: 0x4000,
                is_64bit: true,
                prefetchable: true
            })
        );
        assert_eq!(read_bar(&mut space, address, 4), Ok(Bar::None));
        assert_eq!(
            read_bar(&mut space, address, 6),
            Err(PciError::BadBarIndex(6))
        );
        // Sizing restored the BARs and the command register.
        let f = &space.functions[&address];
        assert_eq!(
            (f.space[4], f.space[5], f.space[7]),
            (0xFEB8_0000, 0xC001, 0x8)
        );
        assert_eq!(f.space[1] & 0xFFFF, 7);
    }

    #[test]
    fn capability_walk_finds_and_rejects_loops() {
        let mut space = FakeConfigSpace::default();
        let f = space.add(at(0, 2, 0), 0x8086, 0x10C9, 0, 2);
        f.space[1] = header::STATUS_CAPABILITIES;
        f.space[0x34 / 4] = 0x40;
        f.space[0x40 / 4] = 0x50 << 8 | 0x01; // power management → 0x50
        f.space[0x50 / 4] = 0x70 << 8 | 0x05; // MSI → 0x70
        f.space[0x70 / 4] = 0x11; // MSI-X, end
        let address = at(0, 2, 0);
        assert_eq!(find_capability(&mut space, address, 0x11), Ok(Some(0x70)));
        assert_eq!(find_capability(&mut space, address, 0x10), Ok(None));
        space.functions.get_mut(&address).unwrap().space[0x70 / 4] = 0x40 << 8 | 0x12; // loop back to 0x40
        assert_eq!(
            find_capability(&mut space, address, 0x10),
            Err(PciError::MalformedCapabilityList)
        );
        enable_device(&mut space, address);
        let command = space.functions[&address].space[1];
        assert_eq!(command & 0x406, 0x406);
    }
}
