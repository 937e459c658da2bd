//! Flotilla's CPU driver: the kernel that runs on each core.
//!
//! The crate has two halves. The logic half is plain `no_std` code tested on the host: boot
//! information parsing, the kernel command line, ACPI topology tables, the split of physical
//! memory into per-core slices and the per-core frame allocator, the wall clock's decoding, and the [`node`]: everything a
//! core decides in its loop (the turn, the halting rule, the mailbox and its bulk pool, message
//! dispatch, the monitor's hosting, flow-table sync), with the injection and demonstration
//! [`scenarios`] beside it. The [`arch`] half (x86_64 only, built for `target_os = "none"`)
//! holds the mechanisms: serial port, GDT/TSS/IDT and exception entry, x2APIC, its one-shot
//! timer and IPIs, TSC calibration, the RTC, bringing up application processors, MMIO, and the shell of
//! the loop (`hlt`). `boot/` links both into the kernel image.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod boot_info;
pub mod cmdline;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod memory;
pub mod node;
pub mod scenarios;
pub mod stats;
pub mod topology;
pub mod wall_clock;

#[cfg(target_os = "none")]
pub mod arch;
