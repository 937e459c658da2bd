//! `fault=CORE:KIND` and `hang=CORE@MS`: one core raises an exception 50 ms after it comes
//! online, or stops answering (interrupts off, halted) MS ms after; meanwhile every core prints
//! `flotilla: core K alive after T ms` each second, so tests can see the others carry on.

use crate::cmdline::{FaultInjection, HangInjection};
use crate::node::hook::{Access, Hook};
use crate::node::{Next, Stop};

/// Interval between alive reports.
const ALIVE_PERIOD_NS: u64 = 1_000_000_000;
/// The first alive report comes this long after the core came online.
const FIRST_ALIVE_NS: u64 = 500_000_000;
/// A fault is injected this long after the core came online.
const FAULT_AFTER_NS: u64 = 50_000_000;

/// One core's part of the injection.
pub struct Injection {
    fault: Option<FaultInjection>,
    hang: Option<HangInjection>,
    next_alive_ns: u64,
}

impl Injection {
    /// The injections the command line asks for (on whichever core they name).
    pub fn new(fault: Option<FaultInjection>, hang: Option<HangInjection>) -> Self {
        Self {
            fault,
            hang,
            next_alive_ns: FIRST_ALIVE_NS,
        }
    }
}

impl Hook for Injection {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        let online = access.online_at;
        let elapsed = access.now.as_nanos().saturating_sub(online.as_nanos());
        let mut next = Next::IDLE;
        if let Some(fault) = self
            .fault
            .filter(|fault| fault.core as usize == access.core)
        {
            if elapsed >= FAULT_AFTER_NS {
                access.platform.print(format_args!(
                    "flotilla: core {} injects {:?} as the fault= option asks",
                    access.core, fault.kind
                ));
                return Next::Stop(Stop::Fault(fault.kind));
            }
            next = next.and(Next::until(online.after(FAULT_AFTER_NS)));
        }
        if let Some(hang) = self.hang.filter(|hang| hang.core as usize == access.core) {
            let after = u64::from(hang.after_ms) * 1_000_000;
            if elapsed >= after {
                access.platform.print(format_args!(
                    "flotilla: core {} hangs now at {} ms (hang= option)",
                    access.core,
                    access.now.as_nanos() / 1_000_000
                ));
                return Next::Stop(Stop::Hang);
            }
            next = next.and(Next::until(online.after(after)));
        }
        if elapsed >= self.next_alive_ns {
            self.next_alive_ns += ALIVE_PERIOD_NS;
            let counters = access.counters;
            access.platform.print(format_args!(
                "flotilla: core {} alive after {} ms, turns={} halts={}",
                access.core,
                elapsed / 1_000_000,
                counters.turns,
                counters.halts
            ));
        }
        next.and(Next::until(online.after(self.next_alive_ns)))
    }
}
