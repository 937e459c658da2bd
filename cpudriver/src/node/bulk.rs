//! Bulk data by reference: each core's bounded pool of buffers in its own memory, lent to a peer
//! with a letter that carries only a handle, and read by the peer in place.
//!
//! # Ownership and lifetime of a buffer
//!
//! 1. **Allocated** by its core ([`BulkPool::alloc`]) and filled by that core alone through
//!    [`BulkPool::bytes_mut`] (the one copy a sender makes). The [`BulkBuffer`] token is not
//!    `Clone`: whoever holds it may write the buffer.
//! 2. **Lent** when the letter naming it is published in the peer's ring (URPC's `Release` store
//!    of the slot header orders the sender's writes before it). The mailbox keeps the token in the
//!    link's lent list, so nothing on the sender writes the buffer any more.
//! 3. **Read in place** by the receiver after its `Acquire` load of the slot, for as long as its
//!    handler runs ([`BulkRegions::with_view`]); the receiver never writes it.
//! 4. **Returned** when the receiver publishes `BulkReturned { count }` on the way back (its reads
//!    happen before that `Release`). Buffers are consumed in the order they were lent, so a count
//!    names them; the sender frees the first `count` of the link's lent list.
//! 5. **Reclaimed** without a return when the monitors declare the receiver failed (the fencing
//!    verdict, `Event::CoreFailed`): the failed core may be halted in the middle of a read, so the
//!    sender waits for the verdict, never for a timeout of its own. A core wrongly declared failed
//!    fences itself when it hears the verdict; until then it may read bytes that are being
//!    reused, which only affects what it computes before it stops (every read is bounds-checked).
//!
//! The pool is a bitmap of [`BLOCK`]-byte blocks; a buffer is a run of blocks (first fit).
//! Exhaustion is an error returned to the caller ([`BulkError::Exhausted`]), never a wait.
//!
//! The receiver finds a buffer through the [`BulkRegions`] table: every core's pool region
//! (identity-mapped memory in the kernel), checked by the letter's decoder against the table
//! (`urpc::RegionTable`) and against the sending core (a core may only name its own region).

use alloc::vec;
use alloc::vec::Vec;

use urpc::{BufferHandle, RegionId, RegionTable, SharedRegion};

/// Size of a pool block: a forwarded frame (up to 1,522 bytes with its header) takes one.
pub const BLOCK: usize = 2048;

/// Why no buffer was allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkError {
    /// No run of free blocks is long enough now.
    Exhausted,
    /// Larger than the whole pool, or empty.
    TooLarge,
}

/// A buffer of the pool, owned by whoever holds this token.
#[derive(Debug, PartialEq, Eq)]
pub struct BulkBuffer {
    first: u32,
    blocks: u32,
    length: u32,
}

impl BulkBuffer {
    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.length as usize
    }

    /// Whether the buffer holds no bytes (never true for an allocated buffer).
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

/// One core's pool of bulk buffers, in memory the other cores can read.
pub struct BulkPool {
    /// Start of the pool's memory (an exposed-provenance address: identity-mapped in the kernel).
    base: usize,
    blocks: usize,
    region: RegionId,
    /// Bit `b` set: block `b` is allocated.
    used: Vec<u64>,
    used_blocks: usize,
}

impl BulkPool {
    /// A pool over `length` bytes at address `base` (rounded down to whole blocks), named
    /// `region` in handles (the core's index).
    ///
    /// # Safety
    /// 1. `base .. base + length` is valid for reads and writes for the rest of the program,
    ///    aligned to 8, and reached through an address with exposed provenance.
    /// 2. Only this pool writes that memory; other cores only read the buffers this pool lends,
    ///    while they are lent (the mailbox's protocol, see the module documentation).
    pub unsafe fn new(base: usize, length: usize, region: RegionId) -> Self {
        let blocks = length / BLOCK;
        Self {
            base,
            blocks,
            region,
            used: vec![0; blocks.div_ceil(64)],
            used_blocks: 0,
        }
    }

    /// Size of the pool in bytes.
    pub fn capacity(&self) -> usize {
        self.blocks * BLOCK
    }

    /// Bytes allocated now.
    pub fn in_use(&self) -> usize {
        self.used_blocks * BLOCK
    }

    /// The region this pool is in handles.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The table entry other cores use to check handles into this pool.
    pub fn shared_region(&self) -> SharedRegion {
        SharedRegion {
            id: self.region,
            length: self.capacity() as u64,
        }
    }

    fn is_used(&self, block: usize) -> bool {
        self.used[block / 64] & (1 << (block % 64)) != 0
    }

    fn mark(&mut self, first: usize, count: usize, used: bool) {
        for block in first..first + count {
            let bit = 1u64 << (block % 64);
            if used {
                self.used[block / 64] |= bit;
            } else {
                self.used[block / 64] &= !bit;
            }
        }
    }

    /// Allocates a buffer of `length` bytes (first fit over runs of blocks).
    pub fn alloc(&mut self, length: usize) -> Result<BulkBuffer, BulkError> {
        let count = length.div_ceil(BLOCK);
        if length == 0 || count > self.blocks {
            return Err(BulkError::TooLarge);
        }
        if self.blocks - self.used_blocks < count {
            return Err(BulkError::Exhausted);
        }
        let mut run_start = 0;
        let mut run = 0;
        let mut block = 0;
        while block < self.blocks {
            if block % 64 == 0 && self.used[block / 64] == u64::MAX {
                run = 0;
                block += 64;
                run_start = block;
                continue;
            }
            if self.is_used(block) {
                run = 0;
                run_start = block + 1;
            } else {
                run += 1;
                if run == count {
                    self.mark(run_start, count, true);
                    self.used_blocks += count;
                    return Ok(BulkBuffer {
                        first: run_start as u32,
                        blocks: count as u32,
                        length: length as u32,
                    });
                }
            }
            block += 1;
        }
        Err(BulkError::Exhausted)
    }

    /// The buffer's bytes, to fill before lending it.
    pub fn bytes_mut(&mut self, buffer: &mut BulkBuffer) -> &mut [u8] {
        let start = self.base + buffer.first as usize * BLOCK;
        let pointer = core::ptr::with_exposed_provenance_mut::<u8>(start);
        // SAFETY: the buffer lies inside the pool (alloc checked its blocks), which is valid for
        // writes (condition 1 of `new`); holding the token `&mut` means it is not lent, so no
        // other core reads it and no other token covers those blocks (condition 2).
        unsafe { core::slice::from_raw_parts_mut(pointer, buffer.length as usize) }
    }

    /// The handle a letter carries for `buffer`.
    pub fn handle(&self, buffer: &BulkBuffer) -> BufferHandle {
        BufferHandle::new(
            self.region,
            u64::from(buffer.first) * BLOCK as u64,
            buffer.length,
        )
    }

    /// Gives `buffer` back to the pool.
    pub fn free(&mut self, buffer: BulkBuffer) {
        let (first, count) = (buffer.first as usize, buffer.blocks as usize);
        debug_assert!((first..first + count).all(|block| self.is_used(block)));
        self.mark(first, count, false);
        self.used_blocks -= count;
    }
}

/// Where every core's pool lies, for reading lent buffers in place.
#[derive(Clone, Debug)]
pub struct BulkRegions {
    bases: Vec<usize>,
    table: Vec<SharedRegion>,
}

impl BulkRegions {
    /// The pools of every core: `(base address, length)` indexed by core; region `c` is core
    /// `c`'s pool.
    ///
    /// # Safety
    /// 1. Each range is the memory of core `c`'s [`BulkPool`] (the same base and length), valid
    ///    for reads for the rest of the program and reached through an exposed-provenance address.
    pub unsafe fn new(pools: &[(usize, usize)]) -> Self {
        Self {
            bases: pools.iter().map(|&(base, _)| base).collect(),
            table: pools
                .iter()
                .enumerate()
                .map(|(core, &(_, length))| SharedRegion {
                    id: RegionId(core as u16),
                    length: ((length / BLOCK) * BLOCK) as u64,
                })
                .collect(),
        }
    }

    /// The table a letter's decoder checks handles against.
    pub fn table(&self) -> RegionTable<'_> {
        RegionTable::new(&self.table)
    }

    /// Runs `read` over the bytes `handle` names in `sender`'s pool, or returns `None` when the
    /// handle is not into `sender`'s own region or not inside it.
    ///
    /// The bytes are valid while `read` runs: the sender lent the buffer and does not write it
    /// until this core returns it, which it does only after the handler that called this is done.
    pub fn with_view<R>(
        &self,
        sender: usize,
        handle: BufferHandle,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        if handle.region() != RegionId(sender as u16) {
            return None;
        }
        let checked = self.table().check(handle).ok()?;
        let base = *self.bases.get(sender)?;
        let start = base + usize::try_from(checked.offset()).ok()?;
        let pointer = core::ptr::with_exposed_provenance::<u8>(start);
        // SAFETY: the range lies inside `sender`'s pool (checked against the table), which is
        // readable for the rest of the program (condition 1 of `new`); the buffer is lent to this
        // core and not written by its owner until returned (the protocol in the module
        // documentation), so the shared slice sees no concurrent write while `read` runs.
        let bytes = unsafe { core::slice::from_raw_parts(pointer, checked.length() as usize) };
        Some(read(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(blocks: usize) -> (BulkPool, BulkRegions) {
        let memory: &'static mut [u64] =
            Box::leak(vec![0u64; blocks * BLOCK / 8].into_boxed_slice());
        let base = memory.as_mut_ptr().expose_provenance();
        let length = blocks * BLOCK;
        // SAFETY: fresh leaked memory of that length, used only by this pool and its readers.
        let pool = unsafe { BulkPool::new(base, length, RegionId(0)) };
        // SAFETY: the same memory.
        let regions = unsafe { BulkRegions::new(&[(base, length)]) };
        (pool, regions)
    }

    #[test]
    fn first_fit_runs_free_and_exhaustion_is_an_error() {
        let (mut pool, regions) = pool(8);
        assert_eq!(pool.alloc(0), Err(BulkError::TooLarge));
        assert_eq!(pool.alloc(9 * BLOCK), Err(BulkError::TooLarge));
        let mut a = pool.alloc(100).unwrap();
        let b = pool.alloc(3 * BLOCK).unwrap();
        let c = pool.alloc(BLOCK + 1).unwrap();
        assert_eq!(pool.in_use(), 6 * BLOCK);
        assert_eq!(pool.alloc(3 * BLOCK), Err(BulkError::Exhausted));
        pool.bytes_mut(&mut a).copy_from_slice(&[7; 100]);
        let handle = pool.handle(&a);
        assert_eq!(
            regions.with_view(0, handle, |bytes| bytes.to_vec()),
            Some(vec![7; 100])
        );
        assert_eq!(
            regions.with_view(1, handle, |_| ()),
            None,
            "not core 1's region"
        );
        pool.free(b);
        let d = pool.alloc(2 * BLOCK).unwrap();
        assert_eq!(
            pool.handle(&d).offset(),
            BLOCK as u64,
            "first fit reuses the hole"
        );
        for buffer in [a, c, d] {
            pool.free(buffer);
        }
        assert_eq!(pool.in_use(), 0);
        let whole = pool.alloc(8 * BLOCK).unwrap();
        pool.free(whole);
    }

    #[test]
    fn full_words_are_skipped_and_runs_cross_words() {
        let (mut pool, _) = pool(200);
        let first = pool.alloc(64 * BLOCK).unwrap();
        let small = pool.alloc(1).unwrap();
        assert_eq!(pool.handle(&small).offset(), 64 * BLOCK as u64);
        let long = pool.alloc(100 * BLOCK).unwrap();
        assert_eq!(pool.handle(&long).offset(), 65 * BLOCK as u64);
        pool.free(first);
        let again = pool.alloc(64 * BLOCK).unwrap();
        assert_eq!(pool.handle(&again).offset(), 0);
        assert_eq!(pool.alloc(36 * BLOCK), Err(BulkError::Exhausted));
        assert!(pool.alloc(35 * BLOCK).is_ok());
    }
}
