//! The serial console (COM1, 16550 UART at port 0x3F8) and the `log` backend.
//!
//! The console is the one device every core writes to, so it is guarded by a spin lock — a
//! documented exception to "cores share no mutable state" (docs/cpudriver.md): it is not on the
//! datapath, and a line is written whole under the lock so lines never interleave. Interrupts are
//! off while a core holds the lock, so an interrupt handler on the same core cannot deadlock on
//! it; a fault handler that finds the lock held for long takes the console anyway (a garbled line
//! is better than a lost fault report).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::port::{inb, outb};

const COM1: u16 = 0x3F8;

/// Set while a core writes a line. Acquire on taking pairs with the Release on giving back, so
/// one core's bytes reach the UART before the next core's.
static LOCK: AtomicBool = AtomicBool::new(false);
/// The `log` level filter as a number (see `set_level`): read by every core, written once at boot.
static LEVEL: AtomicU8 = AtomicU8::new(3);

/// Initialises COM1: 115200 baud, 8N1, FIFO on.
pub fn init() {
    // SAFETY: these are the 16550 UART's registers at COM1; programming them affects only the UART.
    unsafe {
        outb(COM1 + 1, 0x00); // interrupts off
        outb(COM1 + 3, 0x80); // DLAB on
        outb(COM1, 0x01); // divisor 1: 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
        outb(COM1 + 2, 0xC7); // FIFO on, cleared, 14-byte threshold
        outb(COM1 + 4, 0x03); // DTR, RTS
    }
}

fn write_byte(byte: u8) {
    // SAFETY: reading the line status and writing the data register of COM1 touch only the UART.
    unsafe {
        let mut spins = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        outb(COM1, byte);
    }
}

struct Raw;

impl Write for Raw {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                write_byte(b'\r');
            }
            write_byte(byte);
        }
        Ok(())
    }
}

/// Writes one formatted line (a newline is added) whole, under the console lock.
pub fn write_line(args: fmt::Arguments<'_>) {
    let interrupts = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::disable();
    let mut spins = 0u64;
    // Acquire: pairs with the Release store below on the previous holder's side.
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
        spins += 1;
        if spins > 200_000_000 {
            break; // the holder is dead (e.g. faulted mid-line): take the console anyway
        }
    }
    let _ = Raw.write_fmt(args);
    let _ = Raw.write_str("\n");
    // Release: pairs with the Acquire in the next holder's compare_exchange.
    LOCK.store(false, Ordering::Release);
    if interrupts {
        x86_64::instructions::interrupts::enable();
    }
}

/// Prints a machine-readable line (no prefix), e.g. `flotilla: core 1 online apic=1`.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => { $crate::arch::console::write_line(format_args!($($arg)*)) };
}

/// The `log` backend: `[core K LEVEL target] message`.
struct KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        (metadata.level() as u8) <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let core = super::percore::current_core_index();
            write_line(format_args!(
                "[core {} {:<5} {}] {}",
                core,
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

static LOGGER: KernelLogger = KernelLogger;

/// Installs the logger with `level` (1 = error … 5 = trace).
pub fn init_logging(level: log::LevelFilter) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
