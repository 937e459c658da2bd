//! Boot information from the two boot protocols Flotilla supports: Xen PVH (QEMU `-kernel`) and
//! Multiboot2 (GRUB, on BIOS and UEFI machines).
//!
//! Both are parsed into one [`BootInfo`]: the physical memory map, the ACPI RSDP address and the
//! kernel command line, copied out of the loader's memory so that memory can be reused later.
//! Physical memory is read through [`PhysicalMemory`], so the parsers are tested on the host.
#![forbid(unsafe_code)]

use crate::memory::{MemoryKind, MemoryRegion};

/// Magic value in `eax` at a Multiboot2 entry.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// Magic value at the start of the PVH `hvm_start_info` structure.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Most memory map entries kept.
pub const MAX_REGIONS: usize = 64;
/// Longest kernel command line kept, in bytes.
pub const MAX_CMDLINE: usize = 512;

/// Read access to physical memory during boot.
pub trait PhysicalMemory {
    /// The `len` bytes at physical address `address`, or `None` if they cannot be read.
    fn read(&self, address: u64, len: usize) -> Option<&[u8]>;
}

/// Which loader started the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH direct boot (QEMU `-kernel`).
    Pvh,
    /// Multiboot2 (GRUB).
    Multiboot2,
}

/// Everything the kernel needs from its loader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The loader that started us.
    pub protocol: BootProtocol,
    /// The physical memory map, as the loader gave it.
    pub memory: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    /// Physical address of the ACPI RSDP, when the loader passed one.
    pub rsdp: Option<u64>,
    /// The kernel command line (truncated to [`MAX_CMDLINE`] bytes).
    pub cmdline: heapless::String<MAX_CMDLINE>,
    /// The physical range `[start, end)` of the loader's information structure.
    pub info_range: (u64, u64),
}

/// Errors while parsing boot information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The structure's magic number is wrong.
    BadMagic(u32),
    /// A structure or a pointer in it lies outside readable memory.
    Unreadable(u64),
    /// A tag or entry has an impossible size.
    Malformed(u64),
    /// The loader gave no memory map.
    NoMemoryMap,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap_or([0; 8]))
}

fn kind_from_e820(kind: u32) -> MemoryKind {
    match kind {
        1 => MemoryKind::Usable,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        5 => MemoryKind::Bad,
        _ => MemoryKind::Reserved,
    }
}

fn read_c_string<M: PhysicalMemory>(
    memory: &M,
    address: u64,
    out: &mut heapless::String<MAX_CMDLINE>,
) -> Result<(), BootInfoError> {
    for i in 0..MAX_CMDLINE as u64 {
        let byte = memory
            .read(address + i, 1)
            .ok_or(BootInfoError::Unreadable(address + i))?[0];
        if byte == 0 {
            return Ok(());
        }
        if out
            .push(if byte.is_ascii() { byte as char } else { '?' })
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

fn push_region(
    regions: &mut heapless::Vec<MemoryRegion, MAX_REGIONS>,
    start: u64,
    length: u64,
    kind: MemoryKind,
) {
    if length == 0 {
        return;
    }
    // Past MAX_REGIONS entries the map is truncated; real firmware maps are far shorter.
    let _ = regions.push(MemoryRegion {
        start,
        end: start.saturating_add(length),
        kind,
    });
}

/// Parses the PVH `hvm_start_info` at physical address `address`.
pub fn parse_pvh<M: PhysicalMemory>(memory: &M, address: u64) -> Result<BootInfo, BootInfoError> {
    // hvm_start_info: magic, version, flags, nr_modules (u32 each), modlist_paddr,
    // cmdline_paddr, rsdp_paddr (u64 each), then in version 1: memmap_paddr (u64),
    // memmap_entries (u32), reserved (u32). 56 bytes.
    let header = memory
        .read(address, 56)
        .ok_or(BootInfoError::Unreadable(address))?;
    let magic = u32_at(header, 0);
    if magic != PVH_MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    let version = u32_at(header, 4);
    let cmdline_address = u64_at(header, 24);
    let rsdp = u64_at(header, 32);
    let mut info = BootInfo {
        protocol: BootProtocol::Pvh,
        memory: heapless::Vec::new(),
        rsdp: (rsdp != 0).then_some(rsdp),
        cmdline: heapless::String::new(),
        info_range: (address, address + 56),
    };
    if cmdline_address != 0 {
        read_c_string(memory, cmdline_address, &mut info.cmdline)?;
    }
    if version < 1 {
        return Err(BootInfoError::NoMemoryMap);
    }
    let map_address = u64_at(header, 40);
    let entries = u32_at(header, 48) as usize;
    if map_address == 0 || entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    if entries > 4096 {
        return Err(BootInfoError::Malformed(map_address));
    }
    // Each entry: addr u64, size u64, type u32, reserved u32.
    let map = memory
        .read(map_address, entries * 24)
        .ok_or(BootInfoError::Unreadable(map_address))?;
    for entry in map.chunks_exact(24) {
        push_region(
            &mut info.memory,
            u64_at(entry, 0),
            u64_at(entry, 8),
            kind_from_e820(u32_at(entry, 16)),
        );
    }
    Ok(info)
}

/// Parses the Multiboot2 information structure at physical address `address`.
pub fn parse_multiboot2<M: PhysicalMemory>(
    memory: &M,
    address: u64,
) -> Result<BootInfo, BootInfoError> {
    let fixed = memory
        .read(address, 8)
        .ok_or(BootInfoError::Unreadable(address))?;
    let total = u32_at(fixed, 0) as usize;
    if !(16..=1 << 20).contains(&total) {
        return Err(BootInfoError::Malformed(address));
    }
    let all = memory
        .read(address, total)
        .ok_or(BootInfoError::Unreadable(address))?;
    let mut info = BootInfo {
        protocol: BootProtocol::Multiboot2,
        memory: heapless::Vec::new(),
        rsdp: None,
        cmdline: heapless::String::new(),
        info_range: (address, address + total as u64),
    };
    let mut have_map = false;
    let mut offset = 8;
    while offset + 8 <= total {
        let tag_type = u32_at(all, offset);
        let size = u32_at(all, offset + 4) as usize;
        if size < 8 || offset + size > total {
            return Err(BootInfoError::Malformed(address + offset as u64));
        }
        let body = &all[offset + 8..offset + size];
        match tag_type {
            0 => break,
            1 => {
                for &byte in body.iter().take_while(|&&b| b != 0) {
                    if info
                        .cmdline
                        .push(if byte.is_ascii() { byte as char } else { '?' })
                        .is_err()
                    {
                        break;
                    }
                }
            }
            6 => {
                // entry_size u32, entry_version u32, then entries of entry_size bytes:
                // base u64, length u64, type u32, reserved u32.
                if body.len() < 8 {
                    return Err(BootInfoError::Malformed(address + offset as u64));
                }
                let entry_size = u32_at(body, 0) as usize;
                if entry_size < 24 {
                    return Err(BootInfoError::Malformed(address + offset as u64));
                }
                for entry in body[8..].chunks_exact(entry_size) {
                    push_region(
                        &mut info.memory,
                        u64_at(entry, 0),
                        u64_at(entry, 8),
                        kind_from_e820(u32_at(entry, 16)),
                    );
                }
                have_map = true;
            }
            // ACPI old (14) and new (15): a copy of the RSDP inside this tag. The new one wins.
            14 | 15 if info.rsdp.is_none() || tag_type == 15 => {
                info.rsdp = Some(address + offset as u64 + 8);
            }
            _ => {}
        }
        offset += (size + 7) & !7;
    }
    if !have_map {
        return Err(BootInfoError::NoMemoryMap);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake physical memory: one buffer at a base address.
    struct Fake {
        base: u64,
        bytes: std::vec::Vec<u8>,
    }

    impl PhysicalMemory for Fake {
        fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
            let start = address.checked_sub(self.base)? as usize;
            self.bytes.get(start..start.checked_add(len)?)
        }
    }

    fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
        bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    #[test]
    fn pvh_start_info_is_parsed() {
        let base: u64 = 0x1000;
        let mut bytes = std::vec![0u8; 0x400];
        put(&mut bytes, 0, &PVH_MAGIC.to_le_bytes());
        put(&mut bytes, 4, &1u32.to_le_bytes());
        put(&mut bytes, 24, &(base + 0x100u64).to_le_bytes());
        put(&mut bytes, 32, &0xF_5A40u64.to_le_bytes());
        put(&mut bytes, 40, &(base + 0x200u64).to_le_bytes());
        put(&mut bytes, 48, &2u32.to_le_bytes());
        put(&mut bytes, 0x100, b"log=debug cores=2\0");
        put(&mut bytes, 0x200, &0u64.to_le_bytes());
        put(&mut bytes, 0x208, &0x9_fc00u64.to_le_bytes());
        put(&mut bytes, 0x210, &1u32.to_le_bytes());
        put(&mut bytes, 0x218, &0x10_0000u64.to_le_bytes());
        put(&mut bytes, 0x220, &0x100u64.to_le_bytes());
        put(&mut bytes, 0x228, &2u32.to_le_bytes());
        let info = parse_pvh(&Fake { base, bytes }, base).unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.cmdline.as_str(), "log=debug cores=2");
        assert_eq!(info.rsdp, Some(0xF_5A40));
        assert_eq!(info.memory.len(), 2);
        assert_eq!(
            info.memory[0],
            MemoryRegion {
                start: 0,
                end: 0x9_fc00,
                kind: MemoryKind::Usable
            }
        );
        assert_eq!(info.memory[1].kind, MemoryKind::Reserved);
    }

    #[test]
    fn pvh_bad_magic_and_unreadable_are_errors() {
        let fake = Fake {
            base: 0,
            bytes: std::vec![0u8; 64],
        };
        assert_eq!(parse_pvh(&fake, 0), Err(BootInfoError::BadMagic(0)));
        assert_eq!(
            parse_pvh(&fake, 0x1000),
            Err(BootInfoError::Unreadable(0x1000))
        );
    }

    fn multiboot2_image() -> std::vec::Vec<u8> {
        let mut tags = std::vec::Vec::new();
        let mut tag = |kind: u32, body: &[u8]| {
            tags.extend_from_slice(&kind.to_le_bytes());
            tags.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            tags.extend_from_slice(body);
            while tags.len() % 8 != 0 {
                tags.push(0);
            }
        };
        tag(1, b"log=info\0");
        let mut map = std::vec::Vec::new();
        map.extend_from_slice(&24u32.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
        for (start, len, kind) in [
            (0u64, 0x9fc00u64, 1u32),
            (0x100000, 0x3ff0_0000, 1),
            (0xfec0_0000, 0x1000, 2),
        ] {
            map.extend_from_slice(&start.to_le_bytes());
            map.extend_from_slice(&len.to_le_bytes());
            map.extend_from_slice(&kind.to_le_bytes());
            map.extend_from_slice(&0u32.to_le_bytes());
        }
        tag(6, &map);
        tag(14, b"RSD PTR rsdp-v1-body.");
        tag(0, &[]);
        let mut image = std::vec::Vec::new();
        image.extend_from_slice(&(8 + tags.len() as u32).to_le_bytes());
        image.extend_from_slice(&0u32.to_le_bytes());
        image.extend_from_slice(&tags);
        image
    }

    #[test]
    fn multiboot2_tags_are_parsed() {
        let base = 0x2000;
        let fake = Fake {
            base,
            bytes: multiboot2_image(),
        };
        let info = parse_multiboot2(&fake, base).unwrap();
        assert_eq!(info.protocol, BootProtocol::Multiboot2);
        assert_eq!(info.cmdline.as_str(), "log=info");
        assert_eq!(info.memory.len(), 3);
        assert_eq!(info.memory[1].end, 0x4000_0000);
        assert_eq!(info.memory[2].kind, MemoryKind::Reserved);
        let rsdp = info.rsdp.unwrap();
        assert_eq!(fake.read(rsdp, 8).unwrap(), b"RSD PTR ");
    }

    #[test]
    fn multiboot2_malformed_tag_is_an_error_not_a_panic() {
        let mut image = multiboot2_image();
        image[12] = 200; // first tag claims to run past the end
        let fake = Fake {
            base: 0,
            bytes: image.clone(),
        };
        assert!(matches!(
            parse_multiboot2(&fake, 0),
            Err(BootInfoError::Malformed(_))
        ));
        for cut in 0..image.len() {
            let mut bytes = image.clone();
            bytes.truncate(cut);
            let _ = parse_multiboot2(&Fake { base: 0, bytes }, 0);
        }
    }
}
