//! The Flotilla kernel image: the PVH and Multiboot2 entry points, the 32→64-bit switch with the
//! boot page tables, and the hand-over to the CPU driver on the bootstrap core.
//!
//! QEMU `-kernel` enters at `flotilla_pvh_entry` (named by the Xen PVH ELF note); GRUB's
//! `multiboot2` enters at the ELF entry `flotilla_multiboot2_entry`. Both arrive in 32-bit
//! protected mode with paging off and `ebx` pointing at the loader's information. The entry code
//! records the TSC (the boot clock starts here), clears `.bss`, identity-maps the first 64 GiB
//! with 2 MiB pages, enables long mode and calls `flotilla_boot_main`.
#![no_std]
#![no_main]

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .multiboot2, "a"
    .p2align 3
flotilla_multiboot2_header:
    .long 0xE85250D6
    .long 0
    .long flotilla_multiboot2_header_end - flotilla_multiboot2_header
    .long 0x100000000 - (0xE85250D6 + (flotilla_multiboot2_header_end - flotilla_multiboot2_header))
    .short 0
    .short 0
    .long 8
flotilla_multiboot2_header_end:
    .popsection

    .pushsection .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long flotilla_pvh_entry
    .popsection

    .pushsection .data.boot, "aw"
    .p2align 3
    .global flotilla_entry_tsc
flotilla_entry_tsc:
    .quad 0
flotilla_boot_protocol:
    .long 0
flotilla_boot_information:
    .long 0
    .p2align 3
flotilla_gdt64:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
flotilla_gdt64_pointer:
    .short 3 * 8 - 1
    .long flotilla_gdt64
    .popsection

    .pushsection .bss.boot, "aw", @nobits
    .p2align 12
    .global flotilla_pml4
flotilla_pml4:
    .space 4096
flotilla_pdpt:
    .space 4096
flotilla_page_directories:
    .space 4096 * 64
    .p2align 4
flotilla_boot_stack:
    .space 256 * 1024
flotilla_boot_stack_top:
    .popsection

    .pushsection .text.boot32, "ax"
    .code32
    .global flotilla_pvh_entry
flotilla_pvh_entry:
    movl $1, %esi
    jmp 1f
    .global flotilla_multiboot2_entry
flotilla_multiboot2_entry:
    movl $2, %esi
1:
    cli
    cld
    movl %esi, flotilla_boot_protocol
    movl %ebx, flotilla_boot_information
    rdtsc
    movl %eax, flotilla_entry_tsc
    movl %edx, flotilla_entry_tsc + 4

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    movl $flotilla_boot_stack_top, %esp

    movl $flotilla_pdpt, %eax
    orl $3, %eax
    movl %eax, flotilla_pml4

    movl $flotilla_pdpt, %edi
    movl $flotilla_page_directories, %eax
    orl $3, %eax
    movl $64, %ecx
2:
    movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $4096, %eax
    addl $8, %edi
    decl %ecx
    jnz 2b

    movl $flotilla_page_directories, %edi
    xorl %ecx, %ecx
3:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (%edi)
    movl %ecx, %edx
    shrl $11, %edx
    movl %edx, 4(%edi)
    addl $8, %edi
    incl %ecx
    cmpl $32768, %ecx
    jne 3b

    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $flotilla_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdtl flotilla_gdt64_pointer
    ljmpl $0x08, $4f

    .code64
4:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl flotilla_boot_protocol(%rip), %edi
    movl flotilla_boot_information(%rip), %esi
    xorl %ebp, %ebp
    call flotilla_boot_main
5:
    cli
    hlt
    jmp 5b
    .popsection
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static flotilla_entry_tsc: u64;
    static flotilla_pml4: u8;
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Called by the entry code in long mode: `protocol` 1 = PVH, 2 = Multiboot2; `information` is
/// the loader's structure.
#[unsafe(no_mangle)]
extern "C" fn flotilla_boot_main(protocol: u32, information: u32) -> ! {
    // SAFETY: the entry code wrote flotilla_entry_tsc before calling us, and nothing writes it
    // again; the other symbols are only used for their addresses.
    let image = unsafe {
        cpudriver::arch::BootImage {
            entry_tsc: core::ptr::addr_of!(flotilla_entry_tsc).read_volatile(),
            start: core::ptr::addr_of!(__kernel_start) as u64,
            end: core::ptr::addr_of!(__kernel_end) as u64,
            page_table_root: core::ptr::addr_of!(flotilla_pml4) as u64,
        }
    };
    let info = cpudriver::arch::read_boot_info(protocol, information as u64);
    cpudriver::arch::start_bootstrap_core(info, image)
}
