//! Interrupt and exception entry: a per-core IDT of 256 gates, one assembly stub per vector, and
//! the Rust dispatcher.
//!
//! A CPU exception is fatal for the core that takes it, never for the machine: the dispatcher
//! prints `flotilla: fault core=K vector=V (...) error=E rip=R cr2=A` and halts that core with
//! interrupts off; the other cores run on (they share nothing with it but the console).

use core::arch::global_asm;
use core::sync::atomic::Ordering;

use x86_64::instructions::segmentation::{Segment, CS};
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::{apic, gdt, percore, port};

/// The LAPIC timer's vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// The wake-up IPI's vector (a URPC sender waking a halted receiver).
pub const WAKE_VECTOR: u8 = 0x21;
/// The LAPIC error vector.
pub const ERROR_VECTOR: u8 = 0x22;
/// First vector for device interrupts (MSI-X queues).
pub const DEVICE_VECTOR_BASE: u8 = 0x30;
/// The vector NIC queue interrupts arrive on (on every core: each has its own IDT).
pub const NIC_VECTOR: u8 = DEVICE_VECTOR_BASE;
/// The spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

// One 16-byte stub per vector at flotilla_isr_table + 16 * vector. Vectors where the CPU pushes
// an error code (8, 10-14, 17, 21, 29, 30) skip the dummy push, so every frame has the same shape.
global_asm!(
    r#"
    .section .text.isr, "ax"
    .global flotilla_isr_table
    .p2align 4
flotilla_isr_table:
    .set vector, 0
    .rept 256
    .p2align 4
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp flotilla_isr_common
    .set vector, vector + 1
    .endr

flotilla_isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call flotilla_interrupt_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static flotilla_isr_table: u8;
}

/// The registers an interrupt stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct InterruptFrame {
    /// General registers, in reverse push order.
    pub r15: u64,
    #[allow(missing_docs)]
    pub r14: u64,
    #[allow(missing_docs)]
    pub r13: u64,
    #[allow(missing_docs)]
    pub r12: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub rax: u64,
    /// The vector number the stub pushed.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    /// Where the core was.
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// One IDT gate (Intel SDM Vol. 3A §6.14.1, 64-bit interrupt gate).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

/// A core's interrupt descriptor table.
#[repr(C, align(16))]
pub struct InterruptTable([Gate; 256]);

impl InterruptTable {
    /// A table whose every vector enters its stub through code segment `selector` (the one in
    /// this core's GDT); fatal exceptions run on the IST fault stack.
    pub fn new(selector: u16) -> Self {
        let table = core::ptr::addr_of!(flotilla_isr_table) as u64;
        let mut gates = [Gate::default(); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let handler = table + 16 * vector as u64;
            let ist = match vector {
                2 | 8 | 18 => gdt::FAULT_IST_INDEX as u8 + 1,
                _ => 0,
            };
            *gate = Gate {
                offset_low: handler as u16,
                selector,
                ist,
                attributes: 0x8E, // present, DPL 0, 64-bit interrupt gate
                offset_middle: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        Self(gates)
    }

    /// Loads the table on this core.
    ///
    /// # Safety
    /// 1. `self` lives forever at this address.
    pub unsafe fn load(&'static self) {
        let pointer = DescriptorTablePointer {
            limit: (core::mem::size_of::<Self>() - 1) as u16,
            base: VirtAddr::new(self as *const Self as u64),
        };
        // SAFETY: the table is valid and lives forever (condition 1); its gates point at stubs.
        unsafe { lidt(&pointer) };
    }
}

impl Default for InterruptTable {
    /// A table for the code segment the core runs in now.
    fn default() -> Self {
        Self::new(CS::get_reg().0)
    }
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

/// Called by every stub with the saved frame.
#[unsafe(no_mangle)]
extern "C" fn flotilla_interrupt_dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector;
    if vector < 32 {
        let cr2 = x86_64::registers::control::Cr2::read_raw();
        crate::kprintln!(
            "flotilla: fault core={} vector={} ({}) error={:#x} rip={:#x} cr2={:#x} rsp={:#x}",
            percore::current_core_index(),
            vector,
            exception_name(vector),
            frame.error_code,
            frame.rip,
            cr2,
            frame.rsp
        );
        crate::kprintln!(
            "flotilla: core {} stopped; the other cores continue",
            percore::current_core_index()
        );
        port::halt_forever();
    }
    let block = percore::current();
    match vector as u8 {
        TIMER_VECTOR => {
            if let Some(block) = block {
                block.ticks.fetch_add(1, Ordering::Relaxed);
            }
            apic::end_of_interrupt();
        }
        SPURIOUS_VECTOR => {}
        NIC_VECTOR => {
            if let Some(block) = block {
                block.interrupts.fetch_add(1, Ordering::Relaxed);
                // A vector shared by several queues: wake their cores too (node::wake).
                for apic_id in block.nic_forwards() {
                    apic::send_ipi(apic_id, WAKE_VECTOR);
                }
            }
            apic::end_of_interrupt();
        }
        _ => {
            if let Some(block) = block {
                block.interrupts.fetch_add(1, Ordering::Relaxed);
            }
            apic::end_of_interrupt();
        }
    }
}
