//! Physical memory: the machine's memory map, its split into one slice per core (NUMA-local when
//! the firmware says where memory lives), and the per-core frame allocator.
//!
//! The split is done once, on the bootstrap core, before the other cores start; afterwards each
//! core allocates only from its own slice, so no allocator is ever shared.
#![forbid(unsafe_code)]

/// Size of a frame (a 4 KiB page).
pub const FRAME_SIZE: u64 = 4096;
/// Most physical ranges one core's slice may consist of.
pub const MAX_CORE_RANGES: usize = 8;
/// Most free blocks a frame allocator remembers for reuse.
pub const MAX_FREE_BLOCKS: usize = 64;

/// What a range of physical memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Ordinary RAM, free for the kernel.
    Usable,
    /// Reserved by firmware or devices.
    Reserved,
    /// ACPI tables; reclaimable once they are parsed (Flotilla keeps them).
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Memory reported bad.
    Bad,
}

/// A range `[start, end)` of physical memory of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

/// A range `[start, end)` of physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PhysicalRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysicalRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn intersect(&self, other: &PhysicalRange) -> PhysicalRange {
        PhysicalRange {
            start: self.start.max(other.start),
            end: self.end.min(other.end),
        }
    }
}

/// One core's slice of physical memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreMemory {
    /// The ranges, in address order.
    pub ranges: heapless::Vec<PhysicalRange, MAX_CORE_RANGES>,
    /// The NUMA node the memory belongs to, when known.
    pub node: Option<u32>,
}

impl CoreMemory {
    /// Total bytes in the slice.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(PhysicalRange::len).sum()
    }
}

/// Errors of the memory split and the frame allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// Too little usable memory for every core to get a slice.
    NotEnoughMemory {
        /// Usable bytes found.
        usable: u64,
        /// Cores to serve.
        cores: usize,
    },
    /// More cores than the kernel supports.
    TooManyCores(usize),
    /// The allocator has no block large enough.
    OutOfFrames {
        /// Bytes requested.
        requested: u64,
    },
}

/// Most usable pieces the map is cut into while splitting.
const MAX_PIECES: usize = 128;

fn usable_pieces(
    map: &[MemoryRegion],
    reserved: &[PhysicalRange],
) -> heapless::Vec<PhysicalRange, MAX_PIECES> {
    let mut pieces: heapless::Vec<PhysicalRange, MAX_PIECES> = heapless::Vec::new();
    for region in map.iter().filter(|r| r.kind == MemoryKind::Usable) {
        let start = region.start.div_ceil(FRAME_SIZE) * FRAME_SIZE;
        let end = region.end / FRAME_SIZE * FRAME_SIZE;
        if end > start {
            let _ = pieces.push(PhysicalRange { start, end });
        }
    }
    // Cut every reserved range out of every piece.
    for hole in reserved {
        let hole = PhysicalRange {
            start: hole.start / FRAME_SIZE * FRAME_SIZE,
            end: hole.end.div_ceil(FRAME_SIZE) * FRAME_SIZE,
        };
        let mut next: heapless::Vec<PhysicalRange, MAX_PIECES> = heapless::Vec::new();
        for piece in &pieces {
            if hole.end <= piece.start || hole.start >= piece.end {
                let _ = next.push(*piece);
                continue;
            }
            if hole.start > piece.start {
                let _ = next.push(PhysicalRange {
                    start: piece.start,
                    end: hole.start,
                });
            }
            if hole.end < piece.end {
                let _ = next.push(PhysicalRange {
                    start: hole.end,
                    end: piece.end,
                });
            }
        }
        pieces = next;
    }
    pieces.sort_unstable();
    pieces
}

/// Splits `pieces` into `shares` equal slices (whole frames), in address order.
fn split_equally(pieces: &[PhysicalRange], shares: usize, out: &mut [CoreMemory]) {
    let total: u64 = pieces.iter().map(PhysicalRange::len).sum();
    let share = total / shares as u64 / FRAME_SIZE * FRAME_SIZE;
    let mut core = 0;
    let mut remaining = share;
    for piece in pieces {
        let mut start = piece.start;
        while start < piece.end && core < shares {
            let take = remaining.min(piece.end - start);
            let _ = out[core].ranges.push(PhysicalRange {
                start,
                end: start + take,
            });
            start += take;
            remaining -= take;
            if remaining == 0 {
                core += 1;
                remaining = share;
            }
        }
    }
}

/// Splits usable memory into one slice per core.
///
/// `reserved` ranges (the first MiB, the kernel image, the loader's structures) are cut out first.
/// `core_nodes[i]` is core `i`'s NUMA node, and `node_ranges` the memory affinity ranges from the
/// SRAT; when every node with cores has memory, each node's memory is split among its own cores,
/// otherwise all memory is split equally. Cores get equal shares within a node.
pub fn split_per_core(
    map: &[MemoryRegion],
    reserved: &[PhysicalRange],
    core_nodes: &[Option<u32>],
    node_ranges: &[(PhysicalRange, u32)],
    out: &mut [CoreMemory],
) -> Result<(), MemoryError> {
    let cores = core_nodes.len();
    if cores > out.len() {
        return Err(MemoryError::TooManyCores(cores));
    }
    let pieces = usable_pieces(map, reserved);
    let usable: u64 = pieces.iter().map(PhysicalRange::len).sum();
    for slot in out.iter_mut() {
        *slot = CoreMemory::default();
    }
    // Minimum slice: 4 MiB a core (stack, tables, heap, channel memory).
    if cores == 0 || usable / (cores as u64) < 4 << 20 {
        return Err(MemoryError::NotEnoughMemory { usable, cores });
    }
    let numa_usable = !node_ranges.is_empty()
        && core_nodes.iter().all(|node| {
            node.is_some_and(|n| {
                node_ranges.iter().any(|(range, rn)| {
                    *rn == n && pieces.iter().any(|p| !p.intersect(range).is_empty())
                })
            })
        });
    if !numa_usable {
        split_equally(&pieces, cores, &mut out[..cores]);
        return Ok(());
    }
    // NUMA: per node, the usable pieces inside its ranges, split among its cores.
    let mut done = [false; 256];
    for (first, node) in core_nodes.iter().enumerate() {
        let node = node.unwrap_or(0);
        if done[first] {
            continue;
        }
        let mut members: heapless::Vec<usize, 256> = heapless::Vec::new();
        for (index, other) in core_nodes.iter().enumerate() {
            if *other == Some(node) {
                let _ = members.push(index);
                done[index] = true;
            }
        }
        let mut node_pieces: heapless::Vec<PhysicalRange, MAX_PIECES> = heapless::Vec::new();
        for piece in &pieces {
            for (range, _) in node_ranges.iter().filter(|(_, n)| *n == node) {
                let part = piece.intersect(range);
                if !part.is_empty() {
                    let _ = node_pieces.push(part);
                }
            }
        }
        node_pieces.sort_unstable();
        let mut slices: heapless::Vec<CoreMemory, 256> = heapless::Vec::new();
        for _ in 0..members.len() {
            let _ = slices.push(CoreMemory::default());
        }
        split_equally(&node_pieces, members.len(), &mut slices);
        for (slice, &core) in slices.into_iter().zip(members.iter()) {
            out[core] = CoreMemory {
                node: Some(node),
                ..slice
            };
        }
    }
    Ok(())
}

/// A core's frame allocator over its own slice: a bump pointer plus a list of freed blocks.
#[derive(Clone, Debug)]
pub struct FrameAllocator {
    memory: CoreMemory,
    range: usize,
    next: u64,
    free: heapless::Vec<PhysicalRange, MAX_FREE_BLOCKS>,
}

impl FrameAllocator {
    /// An allocator over `memory`.
    pub fn new(memory: CoreMemory) -> Self {
        let next = memory.ranges.first().map_or(0, |r| r.start);
        Self {
            memory,
            range: 0,
            next,
            free: heapless::Vec::new(),
        }
    }

    /// The slice this allocator serves.
    pub fn memory(&self) -> &CoreMemory {
        &self.memory
    }

    /// Bytes not yet handed out by the bump pointer, plus freed blocks.
    pub fn available(&self) -> u64 {
        let bump: u64 = self
            .memory
            .ranges
            .iter()
            .enumerate()
            .skip(self.range)
            .map(|(i, r)| {
                if i == self.range {
                    r.end - self.next
                } else {
                    r.len()
                }
            })
            .sum();
        bump + self.free.iter().map(PhysicalRange::len).sum::<u64>()
    }

    /// Allocates `bytes` (rounded up to whole frames) of physically contiguous memory aligned to
    /// `align` (a power of two, at least a frame). Returns the physical start address.
    pub fn allocate(&mut self, bytes: u64, align: u64) -> Result<u64, MemoryError> {
        let bytes = bytes.max(1).div_ceil(FRAME_SIZE) * FRAME_SIZE;
        let align = align.max(FRAME_SIZE);
        // First fit among freed blocks.
        for index in 0..self.free.len() {
            let block = self.free[index];
            let start = block.start.div_ceil(align) * align;
            if start + bytes <= block.end {
                self.free.swap_remove(index);
                self.give_back(PhysicalRange {
                    start: block.start,
                    end: start,
                });
                self.give_back(PhysicalRange {
                    start: start + bytes,
                    end: block.end,
                });
                return Ok(start);
            }
        }
        while self.range < self.memory.ranges.len() {
            let range = self.memory.ranges[self.range];
            let start = self.next.div_ceil(align) * align;
            if start + bytes <= range.end {
                self.give_back(PhysicalRange {
                    start: self.next,
                    end: start,
                });
                self.next = start + bytes;
                return Ok(start);
            }
            self.give_back(PhysicalRange {
                start: self.next,
                end: range.end,
            });
            self.range += 1;
            self.next = self.memory.ranges.get(self.range).map_or(0, |r| r.start);
        }
        Err(MemoryError::OutOfFrames { requested: bytes })
    }

    /// Returns a block from [`FrameAllocator::allocate`] of `bytes` at `start`.
    pub fn free(&mut self, start: u64, bytes: u64) {
        let bytes = bytes.max(1).div_ceil(FRAME_SIZE) * FRAME_SIZE;
        self.give_back(PhysicalRange {
            start,
            end: start + bytes,
        });
    }

    fn give_back(&mut self, block: PhysicalRange) {
        if block.is_empty() {
            return;
        }
        // Merge with a neighbour when possible; when the list is full the block is leaked
        // (counted in nothing: the list holds 64 blocks, far more than boot-time use needs).
        for existing in self.free.iter_mut() {
            if existing.end == block.start {
                existing.end = block.end;
                return;
            }
            if block.end == existing.start {
                existing.start = block.start;
                return;
            }
        }
        let _ = self.free.push(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn map() -> [MemoryRegion; 3] {
        [
            MemoryRegion {
                start: 0,
                end: 0x9_fc00,
                kind: MemoryKind::Usable,
            },
            MemoryRegion {
                start: MIB,
                end: 512 * MIB,
                kind: MemoryKind::Usable,
            },
            MemoryRegion {
                start: 512 * MIB,
                end: 513 * MIB,
                kind: MemoryKind::Reserved,
            },
        ]
    }

    fn reserved() -> [PhysicalRange; 2] {
        [
            PhysicalRange { start: 0, end: MIB },
            PhysicalRange {
                start: MIB,
                end: 3 * MIB,
            },
        ]
    }

    #[test]
    fn equal_split_is_disjoint_and_covers_usable_memory() {
        let mut out: [CoreMemory; 4] = Default::default();
        split_per_core(&map(), &reserved(), &[None; 4], &[], &mut out).unwrap();
        let total: u64 = out.iter().map(CoreMemory::total).sum();
        assert!(
            509 * MIB - total < 4 * FRAME_SIZE,
            "lost more than rounding: {total}"
        );
        for core in &out {
            assert!(core.total() >= 127 * MIB);
            for range in &core.ranges {
                assert!(range.start >= 3 * MIB && range.end <= 512 * MIB);
            }
        }
        let mut all: std::vec::Vec<PhysicalRange> =
            out.iter().flat_map(|c| c.ranges.clone()).collect();
        all.sort();
        for pair in all.windows(2) {
            assert!(pair[0].end <= pair[1].start, "overlap {:?}", pair);
        }
    }

    #[test]
    fn numa_split_keeps_each_core_on_its_node() {
        let nodes = [
            (
                PhysicalRange {
                    start: 0,
                    end: 256 * MIB,
                },
                0,
            ),
            (
                PhysicalRange {
                    start: 256 * MIB,
                    end: 512 * MIB,
                },
                1,
            ),
        ];
        let mut out: [CoreMemory; 4] = Default::default();
        let core_nodes = [Some(0), Some(1), Some(0), Some(1)];
        split_per_core(&map(), &reserved(), &core_nodes, &nodes, &mut out).unwrap();
        for (core, node) in core_nodes.iter().enumerate() {
            let (range, _) = nodes[node.unwrap() as usize];
            assert_eq!(out[core].node, *node);
            for part in &out[core].ranges {
                assert!(
                    part.start >= range.start && part.end <= range.end,
                    "core {core}: {part:?}"
                );
            }
            assert!(out[core].total() > 100 * MIB);
        }
    }

    #[test]
    fn numa_without_memory_on_a_node_falls_back_to_equal_split() {
        let nodes = [(
            PhysicalRange {
                start: 0,
                end: 512 * MIB,
            },
            0,
        )];
        let mut out: [CoreMemory; 2] = Default::default();
        split_per_core(&map(), &reserved(), &[Some(0), Some(1)], &nodes, &mut out).unwrap();
        assert_eq!(out[1].node, None);
        assert!(out[1].total() > 200 * MIB);
    }

    #[test]
    fn too_little_memory_or_too_many_cores_is_an_error() {
        let tiny = [MemoryRegion {
            start: MIB,
            end: 5 * MIB,
            kind: MemoryKind::Usable,
        }];
        let mut out: [CoreMemory; 2] = Default::default();
        assert!(matches!(
            split_per_core(&tiny, &[], &[None, None], &[], &mut out),
            Err(MemoryError::NotEnoughMemory { .. })
        ));
        assert_eq!(
            split_per_core(&map(), &[], &[None; 3], &[], &mut out),
            Err(MemoryError::TooManyCores(3))
        );
    }

    #[test]
    fn frame_allocator_aligns_reuses_and_runs_out() {
        let mut memory = CoreMemory::default();
        memory
            .ranges
            .push(PhysicalRange {
                start: 0x10_0000,
                end: 0x10_4000,
            })
            .unwrap();
        memory
            .ranges
            .push(PhysicalRange {
                start: 0x20_0000,
                end: 0x20_8000,
            })
            .unwrap();
        let mut frames = FrameAllocator::new(memory);
        assert_eq!(frames.available(), 0xC000);
        let a = frames.allocate(100, FRAME_SIZE).unwrap();
        assert_eq!(a, 0x10_0000);
        let b = frames.allocate(0x4000, 0x4000).unwrap();
        assert_eq!(b, 0x20_0000, "did not fit in the first range, moved on");
        frames.free(a, 100);
        assert_eq!(
            frames.allocate(FRAME_SIZE, FRAME_SIZE).unwrap(),
            a,
            "freed frame reused"
        );
        assert!(frames.allocate(0x1_0000, FRAME_SIZE).is_err());
        let before = frames.available();
        frames.allocate(0x3000, FRAME_SIZE).unwrap();
        assert_eq!(frames.available(), before - 0x3000);
    }
}
