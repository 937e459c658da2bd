//! Port I/O and MSR helpers, and ending QEMU through its `isa-debug-exit` device.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
///
/// # Safety
/// 1. `port` must be a device register for which writing `value` has no effect on memory safety.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: condition 1 is the caller's.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// 1. `port` must be a device register whose read has no effect on memory safety.
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: condition 1 is the caller's.
    unsafe { Port::<u8>::new(port).read() }
}

/// Ends QEMU with exit status `(code << 1) | 1` through `isa-debug-exit` at port 0xF4. On a
/// machine without that device the write does nothing and the core halts.
pub fn qemu_exit(code: u8) -> ! {
    // SAFETY: port 0xF4 is QEMU's isa-debug-exit when present and unused on PC hardware.
    unsafe { outb(0xF4, code) };
    halt_forever()
}

/// Stops this core: interrupts off, halt, forever.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Remaps the legacy 8259 PICs away from the exception vectors (to 0xE0–0xEF) and masks every
/// line: Flotilla takes interrupts through the x2APIC and MSI-X only. Without this the firmware's
/// PIT interrupt arrives on vector 8 and looks like a double fault.
pub fn disable_legacy_pic() {
    // SAFETY: the 8259 command/data ports (0x20/0x21, 0xA0/0xA1); the ICW sequence only
    // reprograms and masks the PICs.
    unsafe {
        outb(0x20, 0x11);
        outb(0xA0, 0x11);
        outb(0x21, 0xE0);
        outb(0xA1, 0xE8);
        outb(0x21, 0x04);
        outb(0xA1, 0x02);
        outb(0x21, 0x01);
        outb(0xA1, 0x01);
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
    }
}
