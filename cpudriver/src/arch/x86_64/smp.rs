//! Starting the application processors: the real-mode trampoline and INIT-SIPI-SIPI.
//!
//! The trampoline is copied to a free page below 1 MiB. An AP starts there in real mode, loads
//! the trampoline's own GDT, switches to protected mode, turns on paging with the bootstrap
//! core's page tables and long mode, then reads its stack, entry point and two arguments from the
//! trampoline's data block, sets the "started" word, and calls the entry point. The bootstrap
//! core starts one AP at a time (the data block is reused), but does not wait for an AP to finish
//! its own set-up: that runs in parallel with the next start.
//!
//! Data block layout (offsets from the page start; the assembly below uses the same numbers):
//! `0x800` GDTR (limit u16, base u32) · `0x808` far pointer to 32-bit code · `0x810` far pointer
//! to 64-bit code · `0x818` CR3 · `0x820` stack top · `0x828` entry · `0x830` first argument ·
//! `0x838` second argument · `0x840` started word (u32) · `0x848` the GDT (4 entries).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use super::{apic, tsc};

const GDTR: usize = 0x800;
const FAR32: usize = 0x808;
const FAR64: usize = 0x810;
const CR3: usize = 0x818;
const STACK: usize = 0x820;
const ENTRY: usize = 0x828;
const ARGUMENT0: usize = 0x830;
const ARGUMENT1: usize = 0x838;
const STARTED: usize = 0x840;
const GDT: usize = 0x848;

global_asm!(
    r#"
    .pushsection .rodata.ap_trampoline, "a"
    .p2align 12
    .global flotilla_ap_start
flotilla_ap_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movzwl %ax, %ebx
    shll $4, %ebx
    lgdtl 0x800
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *0x808

    .code32
    .global flotilla_ap_protected
flotilla_ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl 0x818(%ebx), %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl *0x810(%ebx)

    .code64
    .global flotilla_ap_long
flotilla_ap_long:
    movl %ebx, %ebx
    movq 0x820(%rbx), %rsp
    movq 0x828(%rbx), %rax
    movq 0x830(%rbx), %rdi
    movq 0x838(%rbx), %rsi
    movl $1, 0x840(%rbx)
    xorl %ebp, %ebp
    callq *%rax
2:
    cli
    hlt
    jmp 2b

    .org flotilla_ap_start + 0x848
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
    .global flotilla_ap_end
flotilla_ap_end:
    .popsection
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static flotilla_ap_start: u8;
    static flotilla_ap_protected: u8;
    static flotilla_ap_long: u8;
    static flotilla_ap_end: u8;
}

/// The entry point an AP calls: `(argument0, argument1)`.
pub type ApEntry = extern "C" fn(u64, u64) -> !;

/// Errors starting an AP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The AP did not reach the trampoline's "started" point after two SIPIs.
    NoResponse,
}

/// The trampoline, copied to its low-memory page.
pub struct Trampoline {
    page: u64,
}

impl Trampoline {
    /// Copies the trampoline to `page` (4 KiB aligned, below 1 MiB) and fills in its GDT and
    /// jump targets.
    ///
    /// # Safety
    /// 1. `page` is identity-mapped RAM below 1 MiB that nothing else uses while APs start.
    pub unsafe fn install(page: u64, cr3: u64) -> Self {
        assert!(page.is_multiple_of(4096) && page < 0x10_0000 && cr3 < 1 << 32);
        // The four symbols are labels in the trampoline section above, in this order.
        let (start, protected, long, end) = (
            core::ptr::addr_of!(flotilla_ap_start) as u64,
            core::ptr::addr_of!(flotilla_ap_protected) as u64,
            core::ptr::addr_of!(flotilla_ap_long) as u64,
            core::ptr::addr_of!(flotilla_ap_end) as u64,
        );
        let length = (end - start) as usize;
        assert!(length <= 4096);
        // SAFETY: the source is the trampoline in the kernel image; the destination is the page
        // reserved by condition 1; they do not overlap (the image is above 1 MiB).
        unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, length) };
        let trampoline = Self { page };
        // SAFETY: each offset is inside the page and its data block (the writes' condition 1).
        unsafe {
            trampoline.write_u16(GDTR, 4 * 8 - 1);
            trampoline.write_u32(GDTR + 2, (page + GDT as u64) as u32);
            trampoline.write_u32(FAR32, (page + protected - start) as u32);
            trampoline.write_u16(FAR32 + 4, 0x08);
            trampoline.write_u32(FAR64, (page + long - start) as u32);
            trampoline.write_u16(FAR64 + 4, 0x18);
            trampoline.write_u64(CR3, cr3);
        }
        trampoline
    }

    /// The SIPI vector: the page number.
    pub fn vector(&self) -> u8 {
        (self.page >> 12) as u8
    }

    /// # Safety
    /// 1. `offset + 2 <= 4096`.
    unsafe fn write_u16(&self, offset: usize, value: u16) {
        // SAFETY: inside the page (condition 1), which `install` owns.
        unsafe { ((self.page as usize + offset) as *mut u16).write_volatile(value) }
    }

    /// # Safety
    /// 1. `offset + 4 <= 4096`.
    unsafe fn write_u32(&self, offset: usize, value: u32) {
        // SAFETY: inside the page (condition 1), which `install` owns.
        unsafe { ((self.page as usize + offset) as *mut u32).write_volatile(value) }
    }

    /// # Safety
    /// 1. `offset + 8 <= 4096`, 8-aligned.
    unsafe fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: inside the page (condition 1), which `install` owns.
        unsafe { ((self.page as usize + offset) as *mut u64).write_volatile(value) }
    }

    fn started(&self) -> &AtomicU32 {
        // SAFETY: the started word is 4-aligned inside the page, which lives as long as `self`;
        // the AP writes it with a plain store, which is atomic for an aligned u32 on x86.
        unsafe { &*((self.page as usize + STARTED) as *const AtomicU32) }
    }

    /// Starts the AP with `apic_id` on `stack_top`, calling `entry(argument0, argument1)`.
    /// Returns once the AP has read the data block (so the block can be reused).
    pub fn start(
        &self,
        apic_id: u32,
        stack_top: u64,
        entry: ApEntry,
        argument0: u64,
        argument1: u64,
        tsc_per_ms: u64,
    ) -> Result<(), StartError> {
        // SAFETY: offsets inside the data block of the page this trampoline owns (condition 1).
        unsafe {
            self.write_u64(STACK, stack_top);
            self.write_u64(ENTRY, entry as usize as u64);
            self.write_u64(ARGUMENT0, argument0);
            self.write_u64(ARGUMENT1, argument1);
        }
        // Release: the data block writes above are visible to the AP before it can start.
        self.started().store(0, Ordering::Release);
        apic::send_init(apic_id);
        // Intel SDM Vol. 3A §9.4.4.1: wait 10 ms after INIT on real hardware; virtual machines
        // deliver INIT at once, so the wait is skipped under a hypervisor.
        if !apic::under_hypervisor() {
            tsc::delay_us(10_000, tsc_per_ms);
        }
        for wait_us in [1_000u64, 200_000] {
            apic::send_startup(apic_id, self.vector());
            let deadline = tsc::now() + wait_us * tsc_per_ms / 1000;
            while tsc::now() < deadline {
                // Acquire: pairs with the AP's store of 1 after it read the data block.
                if self.started().load(Ordering::Acquire) == 1 {
                    return Ok(());
                }
                core::hint::spin_loop();
            }
        }
        Err(StartError::NoResponse)
    }
}
