//! Legacy PCI configuration mechanism #1 (PCI 3.0 §3.2.2.3.2): write the address to port 0xCF8,
//! then read or write the data at port 0xCFC. The fallback when there is no MCFG table; reaches
//! only the first 256 bytes of each function.

use super::{ConfigAccess, PciAddress};

/// Address port.
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// Data port.
pub const CONFIG_DATA: u16 = 0xCFC;

/// The value written to 0xCF8 for `offset` of `address` (enable bit 31).
pub fn config_address(address: PciAddress, offset: u16) -> u32 {
    1 << 31
        | u32::from(address.bus) << 16
        | u32::from(address.device & 0x1F) << 11
        | u32::from(address.function & 0x7) << 8
        | u32::from(offset & 0xFC)
}

/// Port I/O configuration access.
pub struct LegacyPorts {
    _private: (),
}

impl LegacyPorts {
    /// Port I/O configuration access.
    ///
    /// # Safety
    /// 1. The code runs at a privilege level allowed to use ports 0xCF8–0xCFF (ring 0).
    /// 2. No other code uses ports 0xCF8/0xCFC while this value exists (the two-step protocol
    ///    breaks if interleaved).
    pub unsafe fn new() -> Self {
        Self { _private: () }
    }
}

#[cfg(target_arch = "x86_64")]
impl ConfigAccess for LegacyPorts {
    fn read(&mut self, address: PciAddress, offset: u16) -> u32 {
        if offset >= 256 {
            return u32::MAX;
        }
        let value: u32;
        // SAFETY: conditions 1 and 2 of `new` make the port pair ours; `in`/`out` on these ports
        // touch only PCI configuration space.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") CONFIG_ADDRESS, in("eax") config_address(address, offset), options(nomem, nostack, preserves_flags));
            core::arch::asm!("in eax, dx", in("dx") CONFIG_DATA, out("eax") value, options(nomem, nostack, preserves_flags));
        }
        value
    }

    fn write(&mut self, address: PciAddress, offset: u16, value: u32) {
        if offset >= 256 {
            return;
        }
        // SAFETY: as in `read`.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") CONFIG_ADDRESS, in("eax") config_address(address, offset), options(nomem, nostack, preserves_flags));
            core::arch::asm!("out dx, eax", in("dx") CONFIG_DATA, in("eax") value, options(nomem, nostack, preserves_flags));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_encoding() {
        let address = PciAddress {
            bus: 0,
            device: 2,
            function: 1,
        };
        assert_eq!(config_address(address, 0x3D), 0x8000_1138 | 0x3C & 0xFC);
    }
}
