//! PCIe enhanced configuration access (ECAM, PCI Express Base Specification §7.2.2): each
//! function's 4 KiB configuration space is memory-mapped at
//! `base + (bus << 20 | device << 15 | function << 12)`; the base comes from the ACPI MCFG table.

use super::{ConfigAccess, PciAddress};

/// ECAM configuration access over an identity-mapped MCFG region.
pub struct Ecam {
    base: usize,
    buses: core::ops::RangeInclusive<u8>,
}

impl Ecam {
    /// ECAM access for buses `buses` of the MCFG entry whose region starts at virtual address
    /// `base` (the address of bus 0 of the segment, even when `buses` starts above 0).
    ///
    /// # Safety
    /// 1. `base + (bus << 20) .. base + ((bus + 1) << 20)` is mapped (uncached) to the PCIe
    ///    configuration space for every bus in `buses`, for as long as the value is used.
    /// 2. Nothing else accesses configuration space concurrently in a way that conflicts (the
    ///    kernel enumerates on one core at boot).
    pub unsafe fn new(base: usize, buses: core::ops::RangeInclusive<u8>) -> Self {
        Self { base, buses }
    }

    /// The virtual address of `offset` in `address`'s space, or `None` outside the mapped buses.
    pub fn address_of(&self, address: PciAddress, offset: u16) -> Option<usize> {
        if !self.buses.contains(&address.bus)
            || address.device >= 32
            || address.function >= 8
            || offset >= 4096
        {
            return None;
        }
        Some(
            self.base
                + ((address.bus as usize) << 20
                    | (address.device as usize) << 15
                    | (address.function as usize) << 12
                    | usize::from(offset & !3)),
        )
    }
}

impl ConfigAccess for Ecam {
    fn read(&mut self, address: PciAddress, offset: u16) -> u32 {
        match self.address_of(address, offset) {
            // SAFETY: `address_of` keeps the access inside the mapped buses (condition 1 of
            // `new`), 4-aligned; configuration reads have no side effects beyond the device's.
            Some(pointer) => unsafe { (pointer as *const u32).read_volatile() },
            None => u32::MAX, // like an absent function
        }
    }

    fn write(&mut self, address: PciAddress, offset: u16, value: u32) {
        if let Some(pointer) = self.address_of(address, offset) {
            // SAFETY: as in `read`; exclusive by `&mut self` and condition 2 of `new`.
            unsafe { (pointer as *mut u32).write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_addresses_and_bounds() {
        // SAFETY: only `address_of` is used, no access happens.
        let ecam = unsafe { Ecam::new(0xB000_0000, 0..=255) };
        let address = PciAddress {
            bus: 1,
            device: 2,
            function: 3,
        };
        assert_eq!(
            ecam.address_of(address, 0x10),
            Some(0xB000_0000 + 0x10_0000 + 0x1_0000 + 0x3000 + 0x10)
        );
        assert_eq!(
            ecam.address_of(
                PciAddress {
                    device: 32,
                    ..address
                },
                0
            ),
            None
        );
        assert_eq!(ecam.address_of(address, 4096), None);
        // SAFETY: as above.
        let narrow = unsafe { Ecam::new(0xB000_0000, 0..=0) };
        assert_eq!(narrow.address_of(address, 0), None);
    }

    #[test]
    fn ecam_reads_and_writes_memory() {
        // One function's 4 KiB page of fake ECAM memory on bus 0, device 0, function 0.
        let page = std::boxed::Box::leak(std::vec![0u32; 1024].into_boxed_slice());
        page[0] = 0x10C9_8086;
        // SAFETY: bus 0 device 0 function 0 maps to the leaked page, the only one accessed here.
        let mut ecam = unsafe { Ecam::new(page.as_mut_ptr() as usize, 0..=0) };
        let zero = PciAddress {
            bus: 0,
            device: 0,
            function: 0,
        };
        assert_eq!(ecam.read(zero, 0), 0x10C9_8086);
        ecam.write(zero, 8, 0xAB);
        assert_eq!(ecam.read(zero, 8), 0xAB);
    }
}
