//! Device register access: the narrow trait every driver uses, and the kernel's volatile MMIO
//! implementation of it.
//!
//! Drivers never touch a raw pointer to a register: they call [`RegisterAccess::read32`] and
//! [`RegisterAccess::write32`] with a byte offset into the device's register BAR. The kernel passes
//! an [`Mmio`] (volatile loads and stores at `base + offset`); host tests pass a register-level
//! model of the device that checks what the driver does.
//!
//! Both methods take `&self`: device registers are shared by nature, and the drivers give each
//! core a handle that it uses only for its own queue's registers (tail, head, the write-1-to-set
//! and write-1-to-clear interrupt mask registers), so no read-modify-write of a shared register
//! ever happens from two cores.

use core::ptr::NonNull;

/// 32-bit register access at byte offsets into one device's register space.
pub trait RegisterAccess {
    /// Reads the 32-bit register at byte `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at byte `offset`.
    fn write32(&self, offset: usize, value: u32);

    /// Read-modify-write: sets the bits of `mask` (for control-plane registers only).
    fn set_bits(&self, offset: usize, mask: u32) {
        self.write32(offset, self.read32(offset) | mask);
    }

    /// Read-modify-write: clears the bits of `mask` (for control-plane registers only).
    fn clear_bits(&self, offset: usize, mask: u32) {
        self.write32(offset, self.read32(offset) & !mask);
    }
}

impl<T: RegisterAccess + ?Sized> RegisterAccess for &T {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
}

/// A busy-wait delay, for the few fixed waits of device initialisation (reset settling). The
/// kernel passes one built on its timer; host tests pass a closure that does nothing.
pub trait Delay {
    /// Waits at least `microseconds`.
    fn delay_us(&mut self, microseconds: u32);
}

impl<F: FnMut(u32)> Delay for F {
    fn delay_us(&mut self, microseconds: u32) {
        self(microseconds)
    }
}

/// Errors of register window construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The base address is null or not 4-byte aligned.
    BadBase,
}

/// Volatile memory-mapped registers at `base .. base + len` (a device BAR the kernel has mapped
/// uncached; in Flotilla's identity map the BAR's physical address is also its virtual address).
///
/// `Copy`: each core's queue holds its own copy and touches only its own queue's registers.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: NonNull<u32>,
    len: usize,
}

// SAFETY: an `Mmio` is an address range of device registers, valid for the whole run (condition
// 1 of `Mmio::new`); volatile accesses from any core are what the hardware expects, and drivers
// keep shared read-modify-write sequences on the control core only (module doc).
unsafe impl Send for Mmio {}
// SAFETY: see `Send`; `&Mmio` only performs single volatile accesses.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Makes a register window of `len` bytes at virtual address `base`.
    ///
    /// # Safety
    /// 1. `base .. base + len` is mapped (uncached) to the registers of one device for as long as
    ///    any copy of the returned value is used, and nothing else in the program treats that range
    ///    as ordinary memory.
    /// 2. Volatile 32-bit reads and writes at 4-aligned offsets below `len` have no effect other
    ///    than the device's documented register semantics (true of an Intel NIC's BAR0).
    pub unsafe fn new(base: usize, len: usize) -> Result<Self, RegisterError> {
        if !base.is_multiple_of(4) {
            return Err(RegisterError::BadBase);
        }
        let base = NonNull::new(base as *mut u32).ok_or(RegisterError::BadBase)?;
        Ok(Self { base, len })
    }

    /// Size of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn register(&self, offset: usize) -> *mut u32 {
        // A wrong offset is a driver bug: stop rather than poke outside the BAR.
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "register offset {offset:#x} outside BAR"
        );
        self.base.as_ptr().wrapping_byte_add(offset)
    }
}

impl RegisterAccess for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        let register = self.register(offset);
        // SAFETY: `register` is 4-aligned and inside the window (checked above), which condition 1
        // of `new` makes a live device register; condition 2 makes the read side-effect safe.
        unsafe { register.read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        let register = self.register(offset);
        // SAFETY: as in `read32`.
        unsafe { register.write_volatile(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_reads_and_writes_its_window() {
        let memory = std::boxed::Box::leak(std::vec![0u32; 4].into_boxed_slice());
        let base = memory.as_mut_ptr() as usize;
        // SAFETY: the leaked slice is 16 bytes of ordinary memory used only through `mmio`
        // from here on (conditions 1 and 2 hold for plain memory).
        let mmio = unsafe { Mmio::new(base, 16) }.unwrap();
        mmio.write32(8, 0xDEAD_BEEF);
        mmio.set_bits(4, 0x11);
        mmio.clear_bits(4, 0x01);
        assert_eq!(mmio.read32(8), 0xDEAD_BEEF);
        assert_eq!(mmio.read32(4), 0x10);
        // SAFETY: null is rejected before any access.
        let null = unsafe { Mmio::new(0, 16) };
        assert_eq!(null.unwrap_err(), RegisterError::BadBase);
    }

    #[test]
    #[should_panic(expected = "outside BAR")]
    fn mmio_rejects_offsets_outside_the_window() {
        let memory = std::boxed::Box::leak(std::vec![0u32; 1].into_boxed_slice());
        // SAFETY: 4 bytes of ordinary leaked memory.
        let mmio = unsafe { Mmio::new(memory.as_mut_ptr() as usize, 4) }.unwrap();
        mmio.read32(4);
    }
}
