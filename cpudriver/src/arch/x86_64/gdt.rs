//! Per-core GDT and TSS. Each core builds its own in its own memory; the TSS gives the double
//! fault, NMI and machine check handlers a known-good stack (IST 1) even if the core's stack is
//! what broke.

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// The IST slot used by the fatal-exception handlers (1-based in the hardware, 0 here).
pub const FAULT_IST_INDEX: u16 = 0;

/// A core's descriptor tables.
pub struct CoreTables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
}

impl CoreTables {
    /// Tables whose fault stack ends at `fault_stack_top`.
    pub fn new(fault_stack_top: u64) -> Self {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[FAULT_IST_INDEX as usize] = VirtAddr::new(fault_stack_top);
        Self {
            gdt: GlobalDescriptorTable::new(),
            tss,
        }
    }

    /// Fills the GDT and loads it, the segment registers and the TSS on this core; returns the
    /// kernel code selector (for the IDT's gates).
    ///
    /// # Safety
    /// 1. `self` lives forever at this address and belongs to this core.
    pub unsafe fn load(&'static mut self) -> SegmentSelector {
        let code = self.gdt.append(Descriptor::kernel_code_segment());
        let data = self.gdt.append(Descriptor::kernel_data_segment());
        let tss = self.gdt.append(Descriptor::tss_segment(&self.tss));
        self.gdt.load();
        // SAFETY: the selectors index the GDT just loaded (condition 1 keeps it alive).
        unsafe {
            CS::set_reg(code);
            SS::set_reg(data);
            DS::set_reg(SegmentSelector(0));
            ES::set_reg(SegmentSelector(0));
            load_tss(tss);
        }
        code
    }
}
