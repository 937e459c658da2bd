//! Intel 82599 register offsets and bits (byte offsets into BAR0).
//!
//! Section numbers name the 82599 datasheet (Intel 82599 10 GbE Controller Datasheet, rev 3.x),
//! chapter 8.2.3 "Register descriptions". Offsets were compared by hand with the constants of the
//! `ixgbe-driver` 0.1.1 crate and agree. For RSS the 82598-compatible addresses (MRQC 0x5818,
//! RETA 0x5C00, RSSRK 0x5C80) are used, as Linux's ixgbe does on the 82599.
#![forbid(unsafe_code)]

/// Device Control (§8.2.3.1.1).
pub const CTRL: usize = 0x0000;
/// Device Status (§8.2.3.1.2).
pub const STATUS: usize = 0x0008;
/// Extended Device Control (§8.2.3.1.3).
pub const CTRL_EXT: usize = 0x0018;
/// EEPROM/Flash Control (§8.2.3.2.1): bit 9 = auto-read done.
pub const EEC: usize = 0x10010;
/// Receive DMA control (§8.2.3.8.8): bit 3 = DMA init done, bit 1 = CRC strip.
pub const RDRXCTL: usize = 0x2F00;
/// Auto-negotiation control (§8.2.3.22.9).
pub const AUTOC: usize = 0x42A0;
/// Link status (§8.2.3.22.19): bit 30 = link up, bits 29:28 = speed.
pub const LINKS: usize = 0x42A4;
/// MAC core control 0 (§8.2.3.22.8).
pub const HLREG0: usize = 0x4240;

/// CTRL: link reset.
pub const CTRL_LRST: u32 = 1 << 3;
/// CTRL: device reset.
pub const CTRL_RST: u32 = 1 << 26;
/// Both reset bits (§4.6.3.2 global reset).
pub const CTRL_RST_MASK: u32 = CTRL_LRST | CTRL_RST;
/// EEC: auto-read done.
pub const EEC_ARD: u32 = 1 << 9;
/// RDRXCTL: DMA initialisation done.
pub const RDRXCTL_DMAIDONE: u32 = 1 << 3;
/// RDRXCTL: strip CRC.
pub const RDRXCTL_CRCSTRIP: u32 = 1 << 1;
/// CTRL_EXT: driver loaded.
pub const CTRL_EXT_DRV_LOAD: u32 = 1 << 28;
/// AUTOC: restart auto-negotiation.
pub const AUTOC_AN_RESTART: u32 = 1 << 12;
/// AUTOC: link mode select field (bits 15:13).
pub const AUTOC_LMS_MASK: u32 = 0x7 << 13;
/// AUTOC: LMS = KX4/KX/KR auto-negotiation (10 GbE backplane/SFP+ through the PHY).
pub const AUTOC_LMS_KX4_KX_KR: u32 = 0x4 << 13;
/// LINKS: link up.
pub const LINKS_UP: u32 = 1 << 30;
/// LINKS: speed field shift (bits 29:28: 01 = 100 Mb/s, 10 = 1 Gb/s, 11 = 10 Gb/s).
pub const LINKS_SPEED_SHIFT: u32 = 28;
/// HLREG0: TX CRC enable.
pub const HLREG0_TXCRCEN: u32 = 1 << 0;
/// HLREG0: RX CRC strip.
pub const HLREG0_RXCRCSTRP: u32 = 1 << 1;
/// HLREG0: TX pad short frames.
pub const HLREG0_TXPADEN: u32 = 1 << 10;

// ---- Interrupts (§8.2.3.5) ----
/// Extended Interrupt Cause Read.
pub const EICR: usize = 0x0800;
/// Extended Interrupt Auto Clear.
pub const EIAC: usize = 0x0810;
/// Extended Interrupt Mask Set.
pub const EIMS: usize = 0x0880;
/// Extended Interrupt Mask Clear.
pub const EIMC: usize = 0x0888;
/// Extended Interrupt Auto Mask.
pub const EIAM: usize = 0x0890;
/// General Purpose Interrupt Enable.
pub const GPIE: usize = 0x0898;
/// Interrupt Vector Allocation `n` (0..64): RX queue 2n in byte 0, TX 2n in byte 1, RX 2n+1 in
/// byte 2, TX 2n+1 in byte 3 (§8.2.3.5.16).
pub const fn ivar(n: usize) -> usize {
    0x0900 + 4 * n
}
/// Interrupt Vector Allocation for other causes.
pub const IVAR_MISC: usize = 0x0A00;
/// Extended Interrupt Throttle `n` (0..24): interval in bits 11:3, 2 µs units.
pub const fn eitr(n: usize) -> usize {
    0x0820 + 4 * n
}
/// GPIE: MSI-X mode.
pub const GPIE_MSIX_MODE: u32 = 1 << 4;
/// GPIE: auto-mask enable.
pub const GPIE_EIAME: u32 = 1 << 30;
/// GPIE: PBA support.
pub const GPIE_PBA_SUPPORT: u32 = 1 << 31;
/// IVAR entry valid.
pub const IVAR_VALID: u32 = 0x80;
/// EITR: counter write disable.
pub const EITR_CNT_WDIS: u32 = 1 << 31;

// ---- Receive (§8.2.3.7, §8.2.3.8) ----
/// Receive control (§8.2.3.8.10): bit 0 = enable.
pub const RXCTRL: usize = 0x3000;
/// RXCTRL: receive enable.
pub const RXCTRL_RXEN: u32 = 1 << 0;
/// Filter control (§8.2.3.7.1).
pub const FCTRL: usize = 0x5080;
/// FCTRL: broadcast accept.
pub const FCTRL_BAM: u32 = 1 << 10;
/// Receive checksum control (§8.2.3.7.5).
pub const RXCSUM: usize = 0x5000;
/// RXCSUM: IP payload checksum enable.
pub const RXCSUM_IPPCSE: u32 = 1 << 12;
/// RXCSUM: packet checksum disable (hash in the descriptor).
pub const RXCSUM_PCSD: u32 = 1 << 13;
/// Multicast table array, 128 dwords.
pub const MTA: usize = 0x5200;
/// Receive address low, entry 0.
pub const RAL0: usize = 0xA200;
/// Receive address high, entry 0.
pub const RAH0: usize = 0xA204;
/// Multiple receive queues command (82598-compatible address).
pub const MRQC: usize = 0x5818;
/// MRQC: MRQE = 0001b, RSS only (§8.2.3.7.12).
pub const MRQC_ENABLE_RSS: u32 = 0b0001;
/// Redirection table, 32 dwords (82598-compatible address).
pub const RETA: usize = 0x5C00;
/// RSS key, 10 dwords (82598-compatible address).
pub const RSSRK: usize = 0x5C80;

/// RX queue `n` (0..64) register block, stride 0x40.
pub const fn rdbal(n: usize) -> usize {
    0x1000 + 0x40 * n
}
/// RX descriptor base high.
pub const fn rdbah(n: usize) -> usize {
    0x1004 + 0x40 * n
}
/// RX ring length in bytes.
pub const fn rdlen(n: usize) -> usize {
    0x1008 + 0x40 * n
}
/// RX DCA control: bit 12 (descriptor write-back relaxed ordering) must be cleared (§4.6.7).
pub const fn dca_rxctrl(n: usize) -> usize {
    0x100C + 0x40 * n
}
/// RX head.
pub const fn rdh(n: usize) -> usize {
    0x1010 + 0x40 * n
}
/// Split and replication receive control.
pub const fn srrctl(n: usize) -> usize {
    0x1014 + 0x40 * n
}
/// RX tail.
pub const fn rdt(n: usize) -> usize {
    0x1018 + 0x40 * n
}
/// RX descriptor control.
pub const fn rxdctl(n: usize) -> usize {
    0x1028 + 0x40 * n
}
/// Missed Packets Count of packet buffer `n` (0..8; §8.2.3.23.4), clear on read.
pub const fn mpc(n: usize) -> usize {
    0x3FA0 + 4 * n
}
/// Queue packets received drop count (§8.2.3.23.x), clear on read.
pub const fn qprdc(n: usize) -> usize {
    0x1430 + 0x40 * n
}
/// DCA_RXCTRL: descriptor write-back relaxed ordering.
pub const DCA_RXCTRL_DESC_WRO: u32 = 1 << 12;
/// SRRCTL: advanced one-buffer descriptors.
pub const SRRCTL_DESCTYPE_ADVANCED_ONE_BUFFER: u32 = 1 << 25;
/// SRRCTL: drop when no descriptor.
pub const SRRCTL_DROP_EN: u32 = 1 << 28;
/// RXDCTL/TXDCTL: queue enable.
pub const QUEUE_ENABLE: u32 = 1 << 25;

// ---- Five-tuple filters (§8.2.3.7.x, §7.1.2.5): 128 of each ----
/// Source address queue filter `n`.
pub const fn saqf(n: usize) -> usize {
    0xE000 + 4 * n
}
/// Destination address queue filter `n`.
pub const fn daqf(n: usize) -> usize {
    0xE200 + 4 * n
}
/// Source/destination port queue filter `n`.
pub const fn sdpqf(n: usize) -> usize {
    0xE400 + 4 * n
}
/// Five-tuple queue filter control `n`.
pub const fn ftqf(n: usize) -> usize {
    0xE600 + 4 * n
}
/// L3/L4 tuples immediate interrupt and queue `n` (queue in bits 27:21).
pub const fn l34t_imir(n: usize) -> usize {
    0xE800 + 4 * n
}
/// Five-tuple filters the 82599 has.
pub const FIVE_TUPLE_FILTERS: usize = 128;
/// FTQF: filter enable.
pub const FTQF_QUEUE_ENABLE: u32 = 1 << 31;
/// FTQF: pool field not compared.
pub const FTQF_POOL_MASK_EN: u32 = 1 << 30;
/// FTQF: shift of the 5-bit "do not compare" mask (source addr, dest addr, source port, dest
/// port, protocol).
pub const FTQF_MASK_SHIFT: u32 = 25;
/// FTQF: priority shift (bits 4:2).
pub const FTQF_PRIORITY_SHIFT: u32 = 2;
/// L34T_IMIR: packet size bypass.
pub const L34T_IMIR_SIZE_BP: u32 = 1 << 12;
/// L34T_IMIR: RX queue shift.
pub const L34T_IMIR_QUEUE_SHIFT: u32 = 21;

// ---- Transmit (§8.2.3.9) ----
/// DMA TX control (§8.2.3.9.1): bit 0 = transmit enable.
pub const DMATXCTL: usize = 0x4A80;
/// DMATXCTL: transmit enable.
pub const DMATXCTL_TE: u32 = 1 << 0;
/// DCB transmit descriptor plane control (§8.2.3.10.2): ARBDIS while configuring.
pub const RTTDCS: usize = 0x4900;
/// RTTDCS: arbiter disable.
pub const RTTDCS_ARBDIS: u32 = 1 << 6;
/// Multiple transmit queues command.
pub const MTQC: usize = 0x8120;
/// TX queue `n` (0..128) register block, stride 0x40.
pub const fn tdbal(n: usize) -> usize {
    0x6000 + 0x40 * n
}
/// TX descriptor base high.
pub const fn tdbah(n: usize) -> usize {
    0x6004 + 0x40 * n
}
/// TX ring length in bytes.
pub const fn tdlen(n: usize) -> usize {
    0x6008 + 0x40 * n
}
/// TX head.
pub const fn tdh(n: usize) -> usize {
    0x6010 + 0x40 * n
}
/// TX tail.
pub const fn tdt(n: usize) -> usize {
    0x6018 + 0x40 * n
}
/// TX descriptor control.
pub const fn txdctl(n: usize) -> usize {
    0x6028 + 0x40 * n
}

/// Size of BAR0 (128 KiB register space).
pub const BAR0_SIZE: usize = 0x2_0000;

const _: () = assert!(l34t_imir(127) == 0xE9FC && EEC < BAR0_SIZE);
