//! Flotilla device drivers: PCI, the NIC API (per-queue datapath and control traits), packet
//! buffer pools, Toeplitz RSS, the Intel 82576 (`igb`) and 82599 (`ixgbe`) drivers, and a
//! simulated multi-queue NIC for host tests.
//!
//! Dependency rule: `drivers` depends on nothing else in the workspace.
//!
//! Layout (see `docs/drivers.md`):
//! - [`nic`], [`pool`]: the API every NIC implements and the per-core buffer pool.
//! - [`rss`]: the one Toeplitz implementation and the flow group / queue rules.
//! - [`flow_map`]: the one flow group → core map each core keeps (`nic::FlowMap`).
//! - [`frame`]: minimal Ethernet/IP/TCP/UDP header parsing (hash tuples, checksum checks).
//! - [`registers`]: the `RegisterAccess` trait and the kernel's volatile [`registers::Mmio`].
//! - [`dma`]: DMA ordering fences and caller-provided DMA memory for descriptor rings.
//! - [`ring`]: advanced descriptor formats and the device-independent ring/queue logic.
//! - [`pci`]: configuration space access, enumeration, BARs, capabilities, MSI-X.
//! - [`igb`], [`ixgbe`]: the two Intel drivers on that ring logic.
//! - [`model`] (host only): a register-level device model the driver tests run against.
//! - [`sim`] (host only): a simulated multi-queue NIC with fault injection and pcap capture.
#![cfg_attr(not(test), no_std)]

pub mod dma;
pub mod flow_map;
pub mod frame;
pub mod igb;
pub mod ixgbe;
#[cfg(any(test, feature = "std"))]
pub mod model;
pub mod nic;
pub mod pci;
pub mod pool;
pub mod registers;
pub mod ring;
pub mod rss;
pub mod rss_control;
#[cfg(any(test, feature = "std"))]
pub mod sim;
