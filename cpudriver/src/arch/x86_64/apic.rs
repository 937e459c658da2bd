//! The local x2APIC: enabling it (with the `x2apic` crate), its timer (one-shot, armed for the
//! loop's earliest deadline: TSC-deadline mode when the CPU has it, a one-shot count otherwise),
//! end-of-interrupt and inter-processor interrupts (INIT, SIPI, fixed).

use x2apic::lapic::{LocalApic, LocalApicBuilder, TimerDivide, TimerMode};
use x86_64::registers::model_specific::Msr;

use super::interrupts::{ERROR_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR};
use super::tsc;

const X2APIC_ID: u32 = 0x802;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_ICR: u32 = 0x830;

/// Errors enabling the APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The CPU has no x2APIC (QEMU: use `-cpu qemu64,+x2apic` or `-cpu max`).
    NoX2Apic,
}

/// Whether this CPU supports x2APIC (CPUID.1:ECX bit 21).
pub fn has_x2apic() -> bool {
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.ecx & (1 << 21) != 0
}

/// Whether we run under a hypervisor (CPUID.1:ECX bit 31).
pub fn under_hypervisor() -> bool {
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.ecx & (1 << 31) != 0
}

/// Enables this core's x2APIC with its timer stopped (the crate's `enable` starts it).
pub fn enable() -> Result<LocalApic, ApicError> {
    if !has_x2apic() {
        return Err(ApicError::NoX2Apic);
    }
    let mut apic = LocalApicBuilder::new()
        .timer_vector(TIMER_VECTOR as usize)
        .error_vector(ERROR_VECTOR as usize)
        .spurious_vector(SPURIOUS_VECTOR as usize)
        .timer_mode(TimerMode::OneShot)
        .timer_divide(TimerDivide::Div16)
        .timer_initial(0)
        .build()
        .map_err(|_| ApicError::NoX2Apic)?;
    // SAFETY: enabling this core's own APIC in x2APIC mode; vectors above are handled by the IDT.
    unsafe {
        apic.enable();
        apic.disable_timer();
    }
    Ok(apic)
}

/// This core's x2APIC id.
pub fn id() -> u32 {
    // SAFETY: reading the x2APIC ID register; x2APIC mode is on (see `enable`).
    unsafe { Msr::new(X2APIC_ID).read() as u32 }
}

/// Measures APIC timer ticks (divide by 16) per millisecond against the TSC.
pub fn calibrate_timer(apic: &mut LocalApic, tsc_per_ms: u64) -> u32 {
    // SAFETY: programming this core's own timer; its interrupt stays masked during calibration.
    unsafe {
        apic.disable_timer();
        apic.set_timer_mode(TimerMode::OneShot);
        apic.set_timer_divide(TimerDivide::Div16);
        apic.set_timer_initial(u32::MAX);
        tsc::delay_us(5_000, tsc_per_ms);
        let remaining = apic.timer_current();
        apic.set_timer_initial(0);
        ((u32::MAX - remaining) / 5).max(1)
    }
}

/// IA32_TSC_DEADLINE: the TSC value at which the timer fires (0 disarms).
const IA32_TSC_DEADLINE: u32 = 0x6E0;

/// Whether the APIC timer has TSC-deadline mode (CPUID.1:ECX bit 24).
pub fn has_tsc_deadline() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 24) != 0
}

/// This core's timer, programmed for one deadline at a time: no periodic tick.
pub struct DeadlineTimer {
    apic: LocalApic,
    tsc_deadline: bool,
    /// APIC timer ticks (divide by 16) per millisecond, for the one-shot fallback.
    ticks_per_ms: u32,
    tsc_per_ms: u64,
}

impl DeadlineTimer {
    /// Takes over `apic`'s timer: TSC-deadline mode if the CPU has it, else one-shot counts of
    /// `ticks_per_ms` (from [`calibrate_timer`]). The timer starts disarmed.
    pub fn new(mut apic: LocalApic, ticks_per_ms: u32, tsc_per_ms: u64) -> Self {
        let tsc_deadline = has_tsc_deadline();
        // SAFETY: programming this core's own timer; its vector is handled by the IDT.
        unsafe {
            apic.disable_timer();
            apic.set_timer_divide(TimerDivide::Div16);
            if tsc_deadline {
                apic.set_timer_mode(TimerMode::TscDeadline);
                // SDM Vol. 3A §11.5.4.1: order the LVT write before the first deadline write.
                core::arch::x86_64::_mm_mfence();
            } else {
                apic.set_timer_mode(TimerMode::OneShot);
            }
            apic.set_timer_initial(0);
            apic.enable_timer();
        }
        Self {
            apic,
            tsc_deadline,
            ticks_per_ms,
            tsc_per_ms,
        }
    }

    /// Whether TSC-deadline mode is in use.
    pub fn uses_tsc_deadline(&self) -> bool {
        self.tsc_deadline
    }

    /// Fires the timer interrupt at TSC value `deadline`, or never (`None`). A deadline already
    /// passed fires at once. (Written before every halt: one MSR write.)
    pub fn arm(&mut self, deadline: Option<u64>) {
        if self.tsc_deadline {
            // SAFETY: writing this core's TSC-deadline MSR arms (or, with 0, disarms) its own
            // timer; the vector is handled by the IDT.
            unsafe { Msr::new(IA32_TSC_DEADLINE).write(deadline.map_or(0, |at| at.max(1))) };
            return;
        }
        let count = deadline.map_or(0, |at| {
            let cycles = at.saturating_sub(tsc::now());
            let ticks = u128::from(cycles) * u128::from(self.ticks_per_ms)
                / u128::from(self.tsc_per_ms.max(1));
            ticks.clamp(1, u128::from(u32::MAX)) as u32
        });
        // SAFETY: a one-shot count on this core's own timer (0 stops it).
        unsafe { self.apic.set_timer_initial(count) };
    }
}

/// Signals end of interrupt to this core's APIC.
pub fn end_of_interrupt() {
    // SAFETY: writing 0 to the x2APIC EOI register acknowledges the interrupt being serviced.
    unsafe { Msr::new(X2APIC_EOI).write(0) }
}

fn write_icr(destination: u32, low: u32) {
    // SAFETY: an ICR write sends one IPI; callers choose INIT/SIPI/fixed deliberately.
    unsafe { Msr::new(X2APIC_ICR).write(((destination as u64) << 32) | low as u64) }
}

/// Sends INIT (assert, level) to `destination`.
pub fn send_init(destination: u32) {
    write_icr(destination, 0x0000_4500);
}

/// Sends a start-up IPI with the trampoline at physical page `page` (below 1 MiB).
pub fn send_startup(destination: u32, page: u8) {
    write_icr(destination, 0x0000_4600 | page as u32);
}

/// Sends a fixed interrupt with `vector` to `destination`.
pub fn send_ipi(destination: u32, vector: u8) {
    write_icr(destination, 0x0000_4000 | vector as u32);
}
