//! The per-core block: one per core, in that core's own memory, reached through the GS base.
//!
//! Only its own core touches a block (interrupt handlers included), so fields that an interrupt
//! handler and the loop both use are atomics with Relaxed ordering: they order nothing but
//! themselves on one core.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use x86_64::registers::model_specific::Msr;

const IA32_GS_BASE: u32 = 0xC000_0101;

/// Cores one core can wake on a shared NIC vector (16 queues on QEMU's 10 vectors share at most
/// two per vector, so a home holding two vectors wakes at most a few).
pub const MAX_FORWARDS: usize = 16;
/// An empty entry of [`PerCore::nic_forward`].
pub const NO_CORE: u32 = u32::MAX;

/// A core's own state that interrupt handlers and the allocator need.
#[repr(C)]
pub struct PerCore {
    /// Points at this block itself: `gs:[0]` gives the block's address.
    self_pointer: *const PerCore,
    /// Flotilla's core number.
    pub index: u32,
    /// The core's x2APIC id.
    pub apic_id: u32,
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
    /// Other interrupts taken (IPIs, devices).
    pub interrupts: AtomicU64,
    /// Cores (APIC ids) this core wakes by IPI when a NIC queue interrupt reaches it: the
    /// holders of the queues that share its MSI-X vectors (`node::wake`). Set before interrupts
    /// are enabled, and again by the loop (interrupts off) when a core failed; [`NO_CORE`] marks
    /// an empty entry.
    pub nic_forward: [AtomicU32; MAX_FORWARDS],
    /// The core's heap (see `heap`).
    pub heap: UnsafeCell<linked_list_allocator::Heap>,
    /// The most heap bytes allocated at once (the allocator raises it, Relaxed: one core).
    pub heap_high_water: AtomicUsize,
}

impl PerCore {
    /// A block for core `index`; its heap is empty until `heap::init`. `nic_forward` lists the
    /// APIC ids to wake when this core takes a NIC queue interrupt.
    pub fn new(index: u32, apic_id: u32, nic_forward: &[u32]) -> Self {
        let block = Self {
            self_pointer: core::ptr::null(),
            index,
            apic_id,
            ticks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            nic_forward: core::array::from_fn(|_| AtomicU32::new(NO_CORE)),
            heap: UnsafeCell::new(linked_list_allocator::Heap::empty()),
            heap_high_water: AtomicUsize::new(0),
        };
        block.set_nic_forward(nic_forward);
        block
    }

    /// Replaces the APIC ids this core wakes on a NIC queue interrupt (at most
    /// [`MAX_FORWARDS`]). Call with interrupts off: the handler on this core reads them.
    pub fn set_nic_forward(&self, apic_ids: &[u32]) {
        for (index, slot) in self.nic_forward.iter().enumerate() {
            // Relaxed: only this core reads and writes its block (module documentation).
            slot.store(
                apic_ids.get(index).copied().unwrap_or(NO_CORE),
                Ordering::Relaxed,
            );
        }
    }

    /// The APIC ids to wake on a NIC queue interrupt.
    pub fn nic_forwards(&self) -> impl Iterator<Item = u32> + '_ {
        self.nic_forward
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&apic_id| apic_id != NO_CORE)
    }

    /// Makes `block` this core's block.
    ///
    /// # Safety
    /// 1. `block` lives for the rest of the core's life and is used by no other core.
    /// 2. It is called once per core, before anything calls [`current`].
    pub unsafe fn install(block: &'static mut PerCore) {
        block.self_pointer = block as *const PerCore;
        // SAFETY: writing IA32_GS_BASE changes only how `gs:` addresses resolve on this core;
        // condition 1 keeps the block alive for every later `gs:[0]` read.
        unsafe { Msr::new(IA32_GS_BASE).write(block as *const PerCore as u64) };
    }
}

/// This core's block, or `None` before [`PerCore::install`].
pub fn current() -> Option<&'static PerCore> {
    // SAFETY: reading the GS base MSR has no side effects.
    let base = unsafe { Msr::new(IA32_GS_BASE).read() };
    if base == 0 {
        return None;
    }
    // SAFETY: a non-zero GS base was set by `install` to a block that lives forever (its
    // condition 1); the block is only read through shared references and atomics.
    Some(unsafe { &*(base as *const PerCore) })
}

/// This core's index (0 before the block is installed: only the bootstrap core runs then).
pub fn current_core_index() -> u32 {
    current().map_or(0, |block| block.index)
}

/// Timer ticks this core has taken.
pub fn ticks() -> u64 {
    current().map_or(0, |block| block.ticks.load(Ordering::Relaxed))
}
