//! The local x2APIC: enabling it (with the `x2apic` crate), its timer, end-of-interrupt and
//! inter-processor interrupts (INIT, SIPI, fixed).

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

/// Starts the periodic timer at `hz` given `ticks_per_ms` from [`calibrate_timer`].
pub fn start_periodic_timer(apic: &mut LocalApic, ticks_per_ms: u32, hz: u32) {
    let initial = ((ticks_per_ms as u64 * 1000) / hz.max(1) as u64).clamp(1, u32::MAX as u64);
    // SAFETY: programming this core's own timer; its vector is handled by the IDT.
    unsafe {
        apic.set_timer_divide(TimerDivide::Div16);
        apic.set_timer_mode(TimerMode::Periodic);
        apic.set_timer_initial(initial as u32);
        apic.enable_timer();
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
