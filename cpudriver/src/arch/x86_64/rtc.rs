//! The CMOS real-time clock, read once at boot, and the wall clock netd gets from it (or from
//! `time=`; see `crate::wall_clock` for which wins and why).
//!
//! The RTC's index/data ports (0x70/0x71) are one device for the whole machine, so only one core
//! may use them: the first call (core 0, setting up its network before it starts the other
//! cores) reads the clock and records the result in [`BOOT_TIME`]; later calls (every other core)
//! use that record. This is the only state the module shares: written once before the other
//! cores run, read-only afterwards (the Release store of `STATE` publishes the two values; the
//! Acquire load pairs with it).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::{port, tsc};
use crate::cmdline::Cmdline;
use crate::wall_clock::{self, RtcRegisters, Source};

/// CMOS index port (bit 7 would mask NMIs; Flotilla leaves it clear).
const INDEX: u16 = 0x70;
/// CMOS data port.
const DATA: u16 = 0x71;
/// Status register A: bit 7 = an update is in progress (the time registers are changing).
const STATUS_A: u8 = 0x0a;
/// Status register B: encoding of the time registers.
const STATUS_B: u8 = 0x0b;

const UNREAD: u8 = 0;
const READING: u8 = 1;
const KNOWN: u8 = 2;
const UNKNOWN: u8 = 3;

/// The boot time, as recorded by the first caller of [`wall_clock`].
struct BootTimeRecord {
    state: AtomicU8,
    unix_seconds: AtomicU64,
    tsc: AtomicU64,
}

static BOOT_TIME: BootTimeRecord = BootTimeRecord {
    state: AtomicU8::new(UNREAD),
    unix_seconds: AtomicU64::new(0),
    tsc: AtomicU64::new(0),
};

fn register(index: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 are the CMOS RTC's index and data registers on PCs and QEMU;
    // selecting a register and reading it has no effect on memory, and only the first caller of
    // `wall_clock` (one core, before the others start) uses them.
    unsafe {
        port::outb(INDEX, index);
        port::inb(DATA)
    }
}

fn read_registers() -> RtcRegisters {
    RtcRegisters {
        seconds: register(0x00),
        minutes: register(0x02),
        hours: register(0x04),
        day: register(0x07),
        month: register(0x08),
        year: register(0x09),
        century: register(0x32),
        status_b: register(STATUS_B),
    }
}

/// Reads the RTC: waits (at most ~1 s, the RTC's update period) for no update in progress, then
/// reads until two readings agree. Returns the registers and the TSC at the reading.
fn read_rtc(tsc_per_ms: u64) -> Option<(RtcRegisters, u64)> {
    let deadline = tsc::now() + 1_100 * tsc_per_ms;
    let mut last = None;
    while tsc::now() < deadline {
        if register(STATUS_A) & 0x80 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let reading = read_registers();
        if last == Some(reading) {
            return Some((reading, tsc::now()));
        }
        last = Some(reading);
    }
    None
}

/// The machine's wall clock in netd's terms, from `time=` or the RTC (read on the first call
/// only); `None` when neither gives a time. The first call prints where the time came from.
pub fn wall_clock(cmdline: &str, tsc_per_ms: u64) -> Option<netd::WallClock> {
    let first = BOOT_TIME
        .state
        .compare_exchange(UNREAD, READING, Ordering::Acquire, Ordering::Acquire)
        .is_ok();
    if first {
        let option = Cmdline(cmdline).get("time");
        let (time, problem) = wall_clock::boot_time(option, || read_rtc(tsc_per_ms));
        if let (Some(problem), Some(value)) = (problem, option) {
            crate::kprintln!(
                "flotilla: command line: 'time={}': {}; RTC used",
                value,
                problem
            );
        }
        let state = match time {
            Some(time) => {
                BOOT_TIME
                    .unix_seconds
                    .store(time.unix_seconds, Ordering::Relaxed);
                BOOT_TIME.tsc.store(time.tsc, Ordering::Relaxed);
                let mut text = heapless::String::<32>::new();
                let _ = wall_clock::format_utc(time.unix_seconds, &mut text);
                let source = match time.source {
                    Source::CommandLine => "time= on the command line",
                    Source::Rtc => "the CMOS RTC",
                };
                crate::kprintln!(
                    "flotilla: wall clock {} UTC (unix {}) from {}",
                    text,
                    time.unix_seconds,
                    source
                );
                KNOWN
            }
            None => {
                crate::kprintln!("flotilla: wall clock unknown (no time= and no RTC date)");
                UNKNOWN
            }
        };
        // Release: publishes the two values stored above to the Acquire loads below.
        BOOT_TIME.state.store(state, Ordering::Release);
    }
    // Acquire: pairs with the Release store of the first caller. Other cores call this only
    // after core 0 has started them, so READING is not seen in practice; it waits briefly if so.
    let deadline = tsc::now() + 100 * tsc_per_ms;
    let state = loop {
        let state = BOOT_TIME.state.load(Ordering::Acquire);
        if state != READING || tsc::now() > deadline {
            break state;
        }
        core::hint::spin_loop();
    };
    if state != KNOWN {
        return None;
    }
    let tsc = BOOT_TIME.tsc.load(Ordering::Relaxed);
    Some(netd::WallClock {
        unix_seconds: BOOT_TIME.unix_seconds.load(Ordering::Relaxed),
        at: netd::Instant::from_micros((u128::from(tsc) * 1000 / u128::from(tsc_per_ms)) as i64),
    })
}
