//! DMA ordering and DMA memory: the fences between descriptor memory and device registers, and
//! the caller-provided memory a queue's descriptor rings live in.
//!
//! # The ordering rules a NIC driver needs
//! 1. **Publish** (descriptor stores, then the tail doorbell): every store that fills a descriptor
//!    must reach memory before the device sees the tail register move, or the device may fetch a
//!    stale descriptor. [`DmaFence::publish`] sits between the two.
//! 2. **Consume** (status load, then the rest of the descriptor): after reading a descriptor's DD
//!    (descriptor done) bit as set, the later loads of length, hash and status must not be
//!    satisfied from before the device's write-back. [`DmaFence::consume`] sits between the two.
//!
//! On x86_64 with the BAR mapped uncached (UC) and descriptor memory write-back cacheable (WB):
//! stores are not reordered with other stores, loads not with other loads, and a UC store is not
//! passed by earlier WB stores, so the hardware needs no fence instruction; only the compiler must
//! keep the order. Descriptor and register accesses are all volatile (kept in program order by the
//! compiler); the fences below add `Release`/`Acquire` atomic fences so the intent is explicit and
//! the code stays right on weaker architectures. A write-combining (WC) BAR mapping would need an
//! `sfence` in `publish`: Flotilla maps NIC BARs UC, and this module is where that would change.

use core::sync::atomic::{fence, Ordering};

/// The DMA ordering points of a descriptor ring (see the module doc).
pub struct DmaFence;

impl DmaFence {
    /// Between filling descriptors and writing the tail doorbell (rule 1). Pairs with the device's
    /// descriptor fetch, which the doorbell starts.
    #[inline(always)]
    pub fn publish() {
        fence(Ordering::Release);
    }

    /// Between seeing DD set in a descriptor and reading its other fields (rule 2). Pairs with the
    /// device's write-back, which writes DD last (82576 datasheet §7.1.5, 82599 §7.1.6).
    #[inline(always)]
    pub fn consume() {
        fence(Ordering::Acquire);
    }
}

/// Alignment the 82576 and 82599 require of descriptor ring base addresses (RDBAL/TDBAL low 7
/// bits are zero: 82576 datasheet §8.10 RDBAL, 82599 datasheet §8.2.3.8.1).
pub const RING_ALIGN: u64 = 128;

/// Errors of DMA memory setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The ring size is not a multiple of 8 between 8 and [`MAX_RING_SIZE`] (RDLEN/TDLEN must be
    /// a multiple of 128 bytes).
    BadRingSize(u16),
    /// The region is smaller than [`QueueMemory::bytes_needed`].
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The region's physical or virtual address is not [`RING_ALIGN`]-aligned.
    Misaligned,
}

/// Largest ring Flotilla uses (descriptors per ring).
pub const MAX_RING_SIZE: u16 = 4096;

/// One queue pair's DMA memory: an RX and a TX descriptor ring of `ring_size` descriptors each,
/// plus the driver's per-descriptor bookkeeping (which pool buffer sits in which slot).
///
/// Layout of the region (all offsets multiples of 128 bytes when `ring_size` is a multiple of 8):
/// RX ring (`16 × n`), TX ring (`16 × n`), RX slots (`8 × n`), TX slots (`8 × n`).
pub struct QueueMemory {
    /// Virtual address of the region's first byte.
    pub(crate) virtual_base: core::ptr::NonNull<u8>,
    /// Device-visible address of the region's first byte.
    pub(crate) physical_base: u64,
    /// Descriptors per ring.
    pub(crate) ring_size: u16,
}

// SAFETY: a `QueueMemory` exclusively owns its region (taken as `&'static mut`); moving it moves
// that ownership to another core, and it has no shared state.
unsafe impl Send for QueueMemory {}

impl QueueMemory {
    /// Bytes of DMA memory one queue pair with `ring_size` descriptors per ring needs.
    pub const fn bytes_needed(ring_size: u16) -> usize {
        48 * ring_size as usize
    }

    /// Takes `memory` (whose first byte the device sees at `physical_base`) as one queue pair's
    /// rings. The region must be [`RING_ALIGN`]-aligned (virtual and physical) and at least
    /// [`Self::bytes_needed`] bytes; it must be memory the device can reach by DMA (in Flotilla's
    /// identity map, ordinary RAM with `physical_base == memory.as_ptr() as u64`).
    pub fn new(
        memory: &'static mut [u8],
        physical_base: u64,
        ring_size: u16,
    ) -> Result<Self, DmaError> {
        if ring_size < 8 || !ring_size.is_multiple_of(8) || ring_size > MAX_RING_SIZE {
            return Err(DmaError::BadRingSize(ring_size));
        }
        let needed = Self::bytes_needed(ring_size);
        if memory.len() < needed {
            return Err(DmaError::RegionTooSmall {
                needed,
                given: memory.len(),
            });
        }
        if !physical_base.is_multiple_of(RING_ALIGN)
            || !(memory.as_ptr() as u64).is_multiple_of(RING_ALIGN)
        {
            return Err(DmaError::Misaligned);
        }
        memory[..needed].fill(0);
        Ok(Self {
            virtual_base: core::ptr::NonNull::from(memory).cast::<u8>(),
            physical_base,
            ring_size,
        })
    }

    /// Leaks host memory for one queue pair (tests, the register models, benchmarks). The
    /// "physical" address is the virtual one, as in the kernel's identity map.
    #[cfg(any(test, feature = "std"))]
    pub fn new_host(ring_size: u16) -> Result<Self, DmaError> {
        extern crate std;
        let bytes = Self::bytes_needed(ring_size).max(1);
        let layout = std::alloc::Layout::from_size_align(bytes, RING_ALIGN as usize)
            .map_err(|_| DmaError::BadRingSize(ring_size))?;
        // SAFETY: `layout` has a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `pointer` is a fresh, zeroed, never-freed allocation of `bytes` bytes, so a
        // `&'static mut` to it is the only reference for ever.
        let memory: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(pointer, bytes) };
        let mut queue_memory = Self::new(memory, 0, ring_size)?;
        // Identity "physical" address; the cast exposes the region's own pointer so the register
        // models' DMA through it has provenance.
        queue_memory.physical_base = queue_memory.virtual_base.as_ptr() as u64;
        Ok(queue_memory)
    }

    /// Descriptors per ring.
    pub fn ring_size(&self) -> u16 {
        self.ring_size
    }

    /// Device-visible address of the RX ring.
    pub fn rx_ring_physical(&self) -> u64 {
        self.physical_base
    }

    /// Device-visible address of the TX ring.
    pub fn tx_ring_physical(&self) -> u64 {
        self.physical_base + 16 * u64::from(self.ring_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_memory_checks_size_and_alignment() {
        assert_eq!(
            QueueMemory::new_host(12).err(),
            Some(DmaError::BadRingSize(12))
        );
        assert_eq!(
            QueueMemory::new_host(0).err(),
            Some(DmaError::BadRingSize(0))
        );
        let memory = QueueMemory::new_host(64).unwrap();
        assert_eq!(memory.tx_ring_physical() - memory.rx_ring_physical(), 1024);
        let small = std::boxed::Box::leak(std::vec![0u8; 100].into_boxed_slice());
        let physical = small.as_ptr() as u64;
        assert!(matches!(
            QueueMemory::new(small, physical, 8),
            Err(DmaError::RegionTooSmall {
                needed: 384,
                given: 100
            })
        ));
    }
}

/// Why the queue memory given to a driver's `init` does not match its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMemoryMismatch {
    /// One region per queue is needed.
    Count {
        /// Regions needed.
        expected: u16,
        /// Regions given.
        given: u16,
    },
    /// A region was laid out for another ring size.
    RingSize(crate::nic::QueueId),
}

/// Collects exactly one [`QueueMemory`] per queue (at most 16), each for `ring_size` descriptors.
pub fn collect_queue_memory<I: IntoIterator<Item = QueueMemory>>(
    memory: I,
    queues: u16,
    ring_size: u16,
) -> Result<heapless::Vec<QueueMemory, 16>, QueueMemoryMismatch> {
    let mut regions: heapless::Vec<QueueMemory, 16> = heapless::Vec::new();
    let mut given = 0u16;
    for region in memory {
        given += 1;
        if regions.push(region).is_err() {
            break;
        }
    }
    if given != queues {
        return Err(QueueMemoryMismatch::Count {
            expected: queues,
            given,
        });
    }
    match regions
        .iter()
        .position(|region| region.ring_size() != ring_size)
    {
        Some(index) => Err(QueueMemoryMismatch::RingSize(crate::nic::QueueId(
            index as u16,
        ))),
        None => Ok(regions),
    }
}
