//! The time-stamp counter: calibration against the PIT, and TSC-based delays.

use super::port::{inb, outb};

/// Reads the TSC.
pub fn now() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures TSC ticks per millisecond with PIT channel 2 over `ms` milliseconds (1..=50).
pub fn calibrate_with_pit(ms: u32) -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    let count = (PIT_HZ * ms as u64 / 1000) as u16;
    // SAFETY: ports 0x61 (gate/speaker), 0x43 (PIT mode) and 0x42 (channel 2 data) drive only
    // the PIT's channel 2, which nothing else in Flotilla uses; the speaker stays off.
    unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        let start = now();
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 && spins < 100_000_000 {
            spins += 1;
        }
        let end = now();
        outb(0x61, gate);
        (end - start) / ms as u64
    }
}

/// Spins for `microseconds` given the calibrated `ticks_per_ms`.
pub fn delay_us(microseconds: u64, ticks_per_ms: u64) {
    let end = now() + microseconds * ticks_per_ms / 1000;
    while now() < end {
        core::hint::spin_loop();
    }
}
