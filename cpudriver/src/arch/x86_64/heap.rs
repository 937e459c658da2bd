//! The per-core heap: the global allocator hands each request to the heap of the core it runs on.
//!
//! Each core's heap lives in its own memory slice and is used only by that core, so it needs no
//! lock; interrupts are off during an allocation so a handler can never re-enter it. A block
//! freed on a core other than the one that allocated it would corrupt that core's heap: Flotilla
//! never moves heap objects between cores (messages travel by value through URPC).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::percore;

/// The global allocator: dispatches to the current core's heap.
pub struct PerCoreAllocator;

// SAFETY: each call works on the current core's heap only, with interrupts off, so no two
// executions ever touch one heap at once; `Heap` upholds the GlobalAlloc contract itself.
unsafe impl GlobalAlloc for PerCoreAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(block) = percore::current() else {
            return core::ptr::null_mut();
        };
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: only this core uses its heap, and interrupts are off (see the impl's note).
            let heap = unsafe { &mut *block.heap.get() };
            let pointer = heap
                .allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), |p| p.as_ptr());
            // Relaxed: only this core reads or writes its high-water mark.
            block
                .heap_high_water
                .fetch_max(heap.used(), Ordering::Relaxed);
            pointer
        })
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let Some(block) = percore::current() else {
            return;
        };
        let Some(pointer) = NonNull::new(pointer) else {
            return;
        };
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: as in `alloc`; the caller guarantees `pointer` came from this allocator with
            // `layout`, and Flotilla frees on the allocating core (module doc).
            unsafe { (*block.heap.get()).deallocate(pointer, layout) }
        })
    }
}

#[global_allocator]
static ALLOCATOR: PerCoreAllocator = PerCoreAllocator;

/// Gives the current core's heap the memory `[start, start + size)`.
///
/// # Safety
/// 1. The memory is identity-mapped, unused, owned by this core and lives forever.
/// 2. Called once per core, after `PerCore::install`.
pub unsafe fn init(start: u64, size: usize) {
    let block = percore::current().expect("per-core block installed before the heap");
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: conditions 1 and 2; only this core touches its heap.
        unsafe { (*block.heap.get()).init(start as *mut u8, size) }
    });
}

/// Bytes used and free in this core's heap.
pub fn usage() -> (usize, usize) {
    percore::current().map_or((0, 0), |block| {
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: read-only use of this core's own heap with interrupts off.
            let heap = unsafe { &*block.heap.get() };
            (heap.used(), heap.free())
        })
    })
}

/// This core's heap figures for netd's snapshot (`/stats`: `memory`): size, bytes allocated now,
/// and the most allocated at once since boot.
pub fn figures() -> netd::HeapUsage {
    let (used, free) = usage();
    let high_water =
        percore::current().map_or(0, |block| block.heap_high_water.load(Ordering::Relaxed));
    netd::HeapUsage {
        size: (used + free) as u64,
        used: used as u64,
        high_water: high_water.max(used) as u64,
    }
}
