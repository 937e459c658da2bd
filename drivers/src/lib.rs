//! Flotilla device drivers: PCI, the NIC API (per-queue datapath and control traits), packet
//! buffer pools, Toeplitz RSS, the Intel 82576 (`igb`) and 82599 (`ixgbe`) drivers, and a
//! simulated multi-queue NIC for host tests.
//!
//! Dependency rule: `drivers` depends on nothing else in the workspace.
#![cfg_attr(not(test), no_std)]

pub mod nic;
pub mod pool;
