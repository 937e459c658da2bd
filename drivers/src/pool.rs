//! Per-core packet buffer pools.
//!
//! A pool is a region of DMA-able memory cut into fixed-size buffers, owned by exactly one core.
//! Buffers are named by [`BufferId`]; the NIC receives into them and transmits from them, and the
//! network path reads them in place, so a frame is never copied between the NIC and the path.
//!
//! The pool keeps its region as a raw pointer rather than a `&'static mut [u8]`: the NIC writes
//! into posted buffers by DMA behind the compiler's back, so no Rust reference may claim exclusive
//! access to the whole region while buffers are posted. References are made per buffer, only for
//! the duration of [`BufferPool::bytes`] / [`BufferPool::bytes_mut`].

use core::ptr::NonNull;

/// Size of one packet buffer in bytes: a full 1514-byte Ethernet frame fits, and it is a power of
/// two so that buffers never straddle a 4 KiB page (the NIC's DMA sees contiguous memory).
pub const BUFFER_SIZE: usize = 2048;

/// Index of a buffer in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

/// Errors of the buffer pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The region is too small to hold one buffer plus its free-list entry.
    RegionTooSmall,
    /// A buffer id does not belong to this pool.
    UnknownBuffer(BufferId),
    /// A buffer was freed twice.
    DoubleFree(BufferId),
}

/// A pool of [`BUFFER_SIZE`]-byte packet buffers over one core's memory.
pub struct BufferPool {
    /// Start of the region (taken from a `&'static mut [u8]`, so valid and unaliased for ever).
    memory: NonNull<u8>,
    /// Length of the region in bytes.
    memory_len: usize,
    physical_base: u64,
    free: &'static mut [u32],
    free_len: usize,
    in_use: &'static mut [bool],
}

// SAFETY: a `BufferPool` exclusively owns its region (taken as `&'static mut`) and its
// bookkeeping, exactly like the `&'static mut` fields it replaces; moving it to another core moves
// that ownership. It has no interior mutability, so `&BufferPool` across threads is read-only.
unsafe impl Send for BufferPool {}
// SAFETY: see `Send`: shared access only reads.
unsafe impl Sync for BufferPool {}

impl BufferPool {
    /// Builds a pool over `memory`, whose first byte the device sees at `physical_base`.
    /// `free_list` and `in_use` are the pool's bookkeeping; their length bounds the buffer count.
    pub fn new(
        memory: &'static mut [u8],
        physical_base: u64,
        free_list: &'static mut [u32],
        in_use: &'static mut [bool],
    ) -> Result<Self, PoolError> {
        let count = (memory.len() / BUFFER_SIZE)
            .min(free_list.len())
            .min(in_use.len());
        if count == 0 {
            return Err(PoolError::RegionTooSmall);
        }
        // Hand buffers out lowest index first: the stack pops from the end.
        for (slot, index) in free_list.iter_mut().zip((0..count as u32).rev()) {
            *slot = index;
        }
        in_use[..count].fill(false);
        let memory_len = memory.len();
        Ok(Self {
            memory: NonNull::from(memory).cast::<u8>(),
            memory_len,
            physical_base,
            free: free_list,
            free_len: count,
            in_use,
        })
    }

    /// Builds a pool on the host over leaked heap memory (tests and the simulated NIC).
    #[cfg(any(test, feature = "std"))]
    pub fn new_host(count: usize) -> Self {
        extern crate std;
        use std::{boxed::Box, vec};
        let memory = Box::leak(vec![0u8; count * BUFFER_SIZE].into_boxed_slice());
        let free = Box::leak(vec![0u32; count].into_boxed_slice());
        let in_use = Box::leak(vec![false; count].into_boxed_slice());
        let mut pool = Self::new(memory, 0, free, in_use).expect("count > 0");
        // On the host "physical" addresses are virtual ones: the register model "DMAs" through
        // them. The cast exposes the pool's own pointer, so the model's accesses have provenance.
        pool.physical_base = pool.memory.as_ptr() as u64;
        pool
    }

    /// Takes every buffer back as if each had been freed, for a host harness that reuses one
    /// pool (whose memory [`Self::new_host`] leaks) across many independent runs: buffers still
    /// held by a ring or queue that was dropped come home. Host only.
    #[cfg(any(test, feature = "std"))]
    pub fn reclaim_all(&mut self) {
        let count = self.capacity();
        for (slot, index) in self.free.iter_mut().zip((0..count as u32).rev()) {
            *slot = index;
        }
        self.in_use[..count].fill(false);
        self.free_len = count;
    }

    /// Number of buffers in the pool.
    #[inline]
    pub fn capacity(&self) -> usize {
        (self.memory_len / BUFFER_SIZE)
            .min(self.free.len())
            .min(self.in_use.len())
    }

    /// Number of buffers free now.
    #[inline]
    pub fn available(&self) -> usize {
        self.free_len
    }

    /// Takes a free buffer, or `None` when the pool is empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<BufferId> {
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        let index = self.free[self.free_len];
        self.in_use[index as usize] = true;
        Some(BufferId(index))
    }

    /// Returns a buffer to the pool.
    #[inline]
    pub fn free(&mut self, id: BufferId) -> Result<(), PoolError> {
        let index = self.check(id)?;
        if !self.in_use[index] {
            return Err(PoolError::DoubleFree(id));
        }
        self.in_use[index] = false;
        self.free[self.free_len] = id.0;
        self.free_len += 1;
        Ok(())
    }

    /// The device-visible (physical) address of a buffer.
    #[inline]
    pub fn physical_address(&self, id: BufferId) -> Result<u64, PoolError> {
        let index = self.check(id)?;
        Ok(self.physical_base + (index * BUFFER_SIZE) as u64)
    }

    /// The bytes of a buffer.
    #[inline]
    pub fn bytes(&self, id: BufferId) -> Result<&[u8], PoolError> {
        let index = self.check(id)?;
        // SAFETY: `check` bounds `index` below `capacity()`, so the buffer lies inside the region
        // `new` took as `&'static mut [u8]` (valid, initialised, owned by this pool for ever). The
        // shared borrow of `self` prevents a `bytes_mut` of the same buffer while this lives.
        Ok(unsafe {
            core::slice::from_raw_parts(self.memory.as_ptr().add(index * BUFFER_SIZE), BUFFER_SIZE)
        })
    }

    /// The bytes of a buffer, writable.
    #[inline]
    pub fn bytes_mut(&mut self, id: BufferId) -> Result<&mut [u8], PoolError> {
        let index = self.check(id)?;
        // SAFETY: as in `bytes`, the buffer lies inside the pool's own region; the exclusive
        // borrow of `self` makes this the only reference into the region while it lives.
        Ok(unsafe {
            core::slice::from_raw_parts_mut(
                self.memory.as_ptr().add(index * BUFFER_SIZE),
                BUFFER_SIZE,
            )
        })
    }

    /// Device-visible address of the region's first byte.
    pub fn physical_base(&self) -> u64 {
        self.physical_base
    }

    #[inline]
    fn check(&self, id: BufferId) -> Result<usize, PoolError> {
        let index = id.0 as usize;
        if index < self.capacity() {
            Ok(index)
        } else {
            Err(PoolError::UnknownBuffer(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_round_trip_and_exhaustion() {
        let mut pool = BufferPool::new_host(3);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert_eq!((a, b, c), (BufferId(0), BufferId(1), BufferId(2)));
        assert_eq!(pool.alloc(), None);
        pool.free(b).unwrap();
        assert_eq!(pool.free(b), Err(PoolError::DoubleFree(b)));
        assert_eq!(pool.alloc(), Some(b));
        assert_eq!(
            pool.free(BufferId(9)),
            Err(PoolError::UnknownBuffer(BufferId(9)))
        );
    }

    #[test]
    fn reclaim_all_brings_every_buffer_home_in_first_use_order() {
        let mut pool = BufferPool::new_host(3);
        let _ = (pool.alloc(), pool.alloc());
        pool.reclaim_all();
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.alloc(), Some(BufferId(0)));
        assert_eq!(
            pool.free(BufferId(1)),
            Err(PoolError::DoubleFree(BufferId(1)))
        );
    }

    #[test]
    fn buffers_are_disjoint_and_addressed() {
        let mut pool = BufferPool::new_host(2);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.bytes_mut(a).unwrap()[0] = 1;
        pool.bytes_mut(b).unwrap()[0] = 2;
        assert_eq!(pool.bytes(a).unwrap()[0], 1);
        assert_eq!(
            pool.physical_address(b).unwrap() - pool.physical_address(a).unwrap(),
            BUFFER_SIZE as u64
        );
    }
}
