//! x86_64 support: everything in the CPU driver that touches the hardware.
//!
//! Shared mutable state across cores is limited to what `docs/cpudriver.md` lists: the serial
//! console lock, the boot-time "online" flags, and the page tables (written only before the
//! other cores start). Everything else a core uses lives in its own memory slice.

pub mod acpi;
pub mod apic;
pub mod channels;
pub mod console;
pub mod core_loop;
pub mod gdt;
pub mod heap;
pub mod interrupts;
pub mod kernel;
pub mod net;
pub mod percore;
pub mod port;
pub mod rtc;
pub mod smp;
pub mod tsc;

pub use kernel::{read_boot_info, start_bootstrap_core, BootImage};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel::report_panic(info)
}
