//! Finding the ACPI tables (with the `acpi` crate): cores and IOAPICs from the MADT, PCIe ECAM
//! from the MCFG, NUMA affinity from the SRAT when present.

use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};

use crate::topology::{parse_srat, NumaInfo, MAX_CORES};

/// Physical memory is identity-mapped, so mapping a table is taking its address.
#[derive(Clone, Copy, Debug)]
struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // SAFETY: physical memory below 64 GiB is identity-mapped by the boot page tables, and
        // the crate passes addresses of ACPI tables found through the RSDP (its safety contract).
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(physical_address as *mut T).expect("ACPI table at address 0"),
                size,
                size,
                *self,
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// A raw SRAT, so `find_table` can locate it; its entries are parsed by `topology::parse_srat`.
#[repr(C, packed)]
struct RawSrat {
    header: SdtHeader,
}

// SAFETY: the signature is the SRAT's, and the header is the table's first field.
unsafe impl AcpiTable for RawSrat {
    const SIGNATURE: Signature = Signature::SRAT;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// An I/O APIC.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    /// Its id.
    pub id: u8,
    /// Its MMIO base.
    pub address: u32,
    /// First global system interrupt it handles.
    pub gsi_base: u32,
}

/// A PCIe ECAM window.
#[derive(Clone, Copy, Debug)]
pub struct EcamWindow {
    /// Physical base of bus `bus_start`.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// First bus.
    pub bus_start: u8,
    /// Last bus.
    pub bus_end: u8,
}

/// What Flotilla takes from ACPI.
#[derive(Clone, Debug, Default)]
pub struct Platform {
    /// Enabled processors' APIC ids, in MADT order.
    pub apic_ids: heapless::Vec<u32, MAX_CORES>,
    /// Processors listed but disabled or beyond MAX_CORES.
    pub skipped_processors: u32,
    /// I/O APICs.
    pub io_apics: heapless::Vec<IoApic, 8>,
    /// PCIe ECAM windows (empty without an MCFG: use port I/O).
    pub ecam: heapless::Vec<EcamWindow, 8>,
    /// NUMA affinity, when the SRAT exists.
    pub numa: Option<NumaInfo>,
}

/// Errors reading ACPI.
#[derive(Debug)]
pub enum AcpiReadError {
    /// The loader gave no RSDP.
    NoRsdp,
    /// The `acpi` crate rejected the tables.
    Tables(acpi::AcpiError),
}

/// Reads MADT, MCFG and SRAT starting from the RSDP at `rsdp`.
///
/// # Safety
/// 1. `rsdp` is the physical address of the firmware's RSDP, and ACPI tables are identity-mapped.
pub unsafe fn read_platform(rsdp: u64) -> Result<Platform, AcpiReadError> {
    // SAFETY: condition 1.
    let tables = unsafe { AcpiTables::from_rsdp(IdentityMapped, rsdp as usize) }
        .map_err(AcpiReadError::Tables)?;
    let mut platform = Platform::default();
    let madt = tables.find_table::<Madt>().map_err(AcpiReadError::Tables)?;
    for entry in madt.get().entries() {
        let (apic_id, flags) = match entry {
            MadtEntry::LocalApic(local) => (local.apic_id as u32, local.flags),
            MadtEntry::LocalX2Apic(local) => (local.x2apic_id, local.flags),
            MadtEntry::IoApic(io) => {
                let _ = platform.io_apics.push(IoApic {
                    id: io.io_apic_id,
                    address: io.io_apic_address,
                    gsi_base: io.global_system_interrupt_base,
                });
                continue;
            }
            _ => continue,
        };
        // Flags bit 0: enabled; bit 1: online capable (may be hot-added; not started here).
        if flags & 1 == 0
            || platform.apic_ids.contains(&apic_id)
            || platform.apic_ids.push(apic_id).is_err()
        {
            platform.skipped_processors += 1;
        }
    }
    if let Ok(mcfg) = tables.find_table::<Mcfg>() {
        for entry in mcfg.entries() {
            let _ = platform.ecam.push(EcamWindow {
                base: entry.base_address,
                segment: entry.pci_segment_group,
                bus_start: entry.bus_number_start,
                bus_end: entry.bus_number_end,
            });
        }
    }
    if let Ok(srat) = tables.find_table::<RawSrat>() {
        let length = { srat.header.length } as usize;
        // SAFETY: the table is identity-mapped and its header says it is `length` bytes long.
        let bytes =
            unsafe { core::slice::from_raw_parts(srat.physical_start() as *const u8, length) };
        platform.numa = parse_srat(bytes).ok();
    }
    Ok(platform)
}
