//! Flotilla's CPU driver: the kernel that runs on each core.
//!
//! The crate has two halves. The logic half — boot information parsing, the kernel command line,
//! ACPI topology tables, the split of physical memory into per-core slices, the per-core frame
//! allocator, the wall clock's decoding — is plain `no_std` code tested on the host. The [`arch`]
//! half (x86_64 only, built for `target_os = "none"`) touches the hardware: serial port,
//! GDT/TSS/IDT and exception entry, x2APIC and its timer, TSC calibration, the RTC, bringing up
//! application processors, and the per-core loop. `boot/` links both into the kernel image.
#![cfg_attr(not(test), no_std)]

#[cfg(target_os = "none")]
extern crate alloc;

pub mod boot_info;
pub mod cmdline;
pub mod memory;
pub mod messages;
pub mod stats;
pub mod topology;
pub mod wall_clock;

#[cfg(target_os = "none")]
pub mod arch;
