//! Intel 82576 register offsets and bits (byte offsets into BAR0).
//!
//! Section numbers name the 82576 datasheet (Intel 82576EB GbE Controller Datasheet, rev 2.x):
//! chapter 8 "Programming Interface" holds the register descriptions (§8.2 general, §8.8
//! interrupts, §8.9 receive, §8.10 transmit, §8.19 statistics); chapter 7 the descriptor formats
//! and RSS. Offsets were cross-checked with QEMU's `igb_regs.h`/`e1000_regs.h` model headers.
#![forbid(unsafe_code)]

// ---- General (§8.2) ----
/// Device Control (§8.2.1).
pub const CTRL: usize = 0x0000;
/// Device Status (§8.2.2).
pub const STATUS: usize = 0x0008;
/// EEPROM/Flash Control (§8.2.3): bit 9 = auto-read done.
pub const EECD: usize = 0x0010;
/// Extended Device Control (§8.2.4).
pub const CTRL_EXT: usize = 0x0018;

/// CTRL: full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// CTRL: set link up (§8.2.1, needed on copper for the MAC to see the PHY's link).
pub const CTRL_SLU: u32 = 1 << 6;
/// CTRL: auto-speed detection enable (§8.2.1); with PHY auto-negotiation it lets the MAC take
/// the PHY's resolved speed.
pub const CTRL_ASDE: u32 = 1 << 5;
/// MDI control: PHY register access (§8.2.4).
pub const MDIC: usize = 0x0020;
/// MDIC: operation "write" (bits 27:26 = 01).
pub const MDIC_OP_WRITE: u32 = 1 << 26;
/// MDIC: PHY address field shift (bits 25:21); the internal PHY is at address 1.
pub const MDIC_PHY_SHIFT: u32 = 21;
/// MDIC: PHY register field shift (bits 20:16).
pub const MDIC_REG_SHIFT: u32 = 16;
/// MDIC: the access completed.
pub const MDIC_READY: u32 = 1 << 28;
/// MDIC: the access failed.
pub const MDIC_ERROR: u32 = 1 << 30;
/// PHY register 0, the IEEE 802.3 control register (BMCR).
pub const PHY_CONTROL: u32 = 0;
/// BMCR: auto-negotiation enable.
pub const PHY_CONTROL_AUTONEG_ENABLE: u32 = 1 << 12;
/// BMCR: restart auto-negotiation (self-clearing).
pub const PHY_CONTROL_AUTONEG_RESTART: u32 = 1 << 9;
/// BMCR: full duplex, 1000 Mb/s (speed select MSB, bit 6) when auto-negotiation is off.
pub const PHY_CONTROL_DEFAULTS: u32 = 1 << 8 | 1 << 6;
/// CTRL: device reset, self-clearing (§8.2.1, §4.2 "Reset Operation").
pub const CTRL_RST: u32 = 1 << 26;
/// STATUS: link up.
pub const STATUS_LU: u32 = 1 << 1;
/// STATUS: speed field shift (bits 7:6: 00 = 10, 01 = 100, 1x = 1000 Mb/s).
pub const STATUS_SPEED_SHIFT: u32 = 6;
/// EECD: EEPROM auto-read done (§8.2.3).
pub const EECD_AUTO_RD: u32 = 1 << 9;
/// CTRL_EXT: driver loaded (tells firmware a driver owns the device, §8.2.4).
pub const CTRL_EXT_DRV_LOAD: u32 = 1 << 28;

// ---- Interrupts (§8.8) ----
/// Interrupt Cause Read (§8.8.1), clear on read.
pub const ICR: usize = 0x00C0;
/// Interrupt Mask Set (§8.8.4).
pub const IMS: usize = 0x00D0;
/// Interrupt Mask Clear (§8.8.5).
pub const IMC: usize = 0x00D8;
/// Extended Interrupt Cause Set.
pub const EICS: usize = 0x1520;
/// Extended Interrupt Mask Set (write 1 to set, per MSI-X vector in MSI-X mode).
pub const EIMS: usize = 0x1524;
/// Extended Interrupt Mask Clear (write 1 to clear).
pub const EIMC: usize = 0x1528;
/// Extended Interrupt Auto Clear.
pub const EIAC: usize = 0x152C;
/// Extended Interrupt Auto Mask.
pub const EIAM: usize = 0x1530;
/// Extended Interrupt Cause Read.
pub const EICR: usize = 0x1580;
/// General Purpose Interrupt Enable.
pub const GPIE: usize = 0x1514;
/// Interrupt Vector Allocation, `n` in 0..8 (queue → MSI-X vector).
pub const fn ivar(n: usize) -> usize {
    0x1700 + 4 * n
}
/// Interrupt Vector Allocation for other causes (link status: byte 1).
pub const IVAR_MISC: usize = 0x1740;
/// Extended Interrupt Throttle, one per MSI-X vector `n` (interval in bits 14:2, µs units).
pub const fn eitr(n: usize) -> usize {
    0x1680 + 4 * n
}

/// GPIE: non-selective interrupt clear on read.
pub const GPIE_NSICR: u32 = 1 << 0;
/// GPIE: MSI-X mode (EICR bits are per vector; IVAR used).
pub const GPIE_MSIX_MODE: u32 = 1 << 4;
/// GPIE: extended interrupt auto-mask enable (EIAM applies on MSI-X message).
pub const GPIE_EIAME: u32 = 1 << 30;
/// GPIE: PBA support (MSI-X pending bits).
pub const GPIE_PBA: u32 = 1 << 31;
/// IVAR entry: valid.
pub const IVAR_VALID: u32 = 0x80;
/// ICR/IMS: link status change.
pub const ICR_LSC: u32 = 1 << 2;
/// EITR: do not reset counters on write (82576 and later).
pub const EITR_CNT_IGNR: u32 = 1 << 31;

// ---- Receive (§8.9) ----
/// Receive Control (§8.9.1).
pub const RCTL: usize = 0x0100;
/// Receive Checksum Control.
pub const RXCSUM: usize = 0x5000;
/// Receive Filter Control.
pub const RFCTL: usize = 0x5008;
/// Multicast Table Array, 128 dwords.
pub const MTA: usize = 0x5200;
/// Receive Address Low, entry 0 (MAC address bytes 0–3).
pub const RAL0: usize = 0x5400;
/// Receive Address High, entry 0 (bytes 4–5, AV bit 31).
pub const RAH0: usize = 0x5404;
/// Multiple Receive Queues Command.
pub const MRQC: usize = 0x5818;
/// Redirection Table: 32 dwords, 4 one-byte entries each.
pub const RETA: usize = 0x5C00;
/// RSS Random Key: 10 dwords, little-endian key bytes.
pub const RSSRK: usize = 0x5C80;

/// Receive queue `n` (0..16) register block, stride 0x40 (§8.9: RDBAL[n] at 0xC000 + 0x40·n).
pub const fn rdbal(n: usize) -> usize {
    0xC000 + 0x40 * n
}
/// RX descriptor base high.
pub const fn rdbah(n: usize) -> usize {
    0xC004 + 0x40 * n
}
/// RX descriptor ring length in bytes (multiple of 128).
pub const fn rdlen(n: usize) -> usize {
    0xC008 + 0x40 * n
}
/// Split and Replication Receive Control.
pub const fn srrctl(n: usize) -> usize {
    0xC00C + 0x40 * n
}
/// RX descriptor head.
pub const fn rdh(n: usize) -> usize {
    0xC010 + 0x40 * n
}
/// RX descriptor tail.
pub const fn rdt(n: usize) -> usize {
    0xC018 + 0x40 * n
}
/// Receive Descriptor Control.
pub const fn rxdctl(n: usize) -> usize {
    0xC028 + 0x40 * n
}
/// Missed Packets Count (§8.19): packets dropped because the receive packet buffer was full;
/// global to the device, clear on read.
pub const MPC: usize = 0x4010;

/// Receive Queue Drop Packet Count (§8.19), clear on read.
pub const fn rqdpc(n: usize) -> usize {
    0xC030 + 0x40 * n
}

/// RCTL: receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// RCTL: broadcast accept.
pub const RCTL_BAM: u32 = 1 << 15;
/// RCTL: strip Ethernet CRC (QEMU otherwise appends 4 bytes to each frame).
pub const RCTL_SECRC: u32 = 1 << 26;
/// RXCSUM: IPv4 checksum offload.
pub const RXCSUM_IPOFLD: u32 = 1 << 8;
/// RXCSUM: TCP/UDP checksum offload.
pub const RXCSUM_TUOFLD: u32 = 1 << 9;
/// RXCSUM: packet checksum disable, so the descriptor carries the RSS hash (QEMU needs it for RSS).
pub const RXCSUM_PCSD: u32 = 1 << 13;
/// SRRCTL: packet buffer size field, 1 KiB units (bits 6:0).
pub const SRRCTL_BSIZEPACKET_SHIFT: u32 = 0;
/// SRRCTL: descriptor type "advanced, one buffer" (bits 27:25 = 001).
pub const SRRCTL_DESCTYPE_ADVANCED_ONE_BUFFER: u32 = 1 << 25;
/// SRRCTL: drop when the queue has no descriptor instead of stalling the shared packet buffer.
pub const SRRCTL_DROP_EN: u32 = 1 << 31;
/// RXDCTL/TXDCTL: queue enable (bit 25).
pub const QUEUE_ENABLE: u32 = 1 << 25;
/// MRQC: multiple receive queues = RSS only (bits 2:0 = 010; QEMU checks bits 1:0 == 2).
pub const MRQC_ENABLE_RSS: u32 = 0b010;
/// MRQC: hash TCP over IPv4.
pub const MRQC_TCP_IPV4: u32 = 1 << 16;
/// MRQC: hash IPv4 addresses.
pub const MRQC_IPV4: u32 = 1 << 17;
/// MRQC: hash TCP over IPv6 with extension headers (QEMU needs it with bit 21 for TCPv6).
pub const MRQC_TCP_IPV6_EX: u32 = 1 << 18;
/// MRQC: hash IPv6 addresses.
pub const MRQC_IPV6: u32 = 1 << 20;
/// MRQC: hash TCP over IPv6.
pub const MRQC_TCP_IPV6: u32 = 1 << 21;
/// MRQC: hash UDP over IPv4.
pub const MRQC_UDP_IPV4: u32 = 1 << 22;
/// MRQC: hash UDP over IPv6.
pub const MRQC_UDP_IPV6: u32 = 1 << 23;
/// MRQC: every hash-type bit.
pub const MRQC_HASH_MASK: u32 = 0xFFFF_0000;

// ---- Transmit (§8.10) ----
/// Transmit Control (§8.10.1).
pub const TCTL: usize = 0x0400;
/// TCTL: transmit enable.
pub const TCTL_EN: u32 = 1 << 1;
/// TCTL: pad short packets.
pub const TCTL_PSP: u32 = 1 << 3;
/// TCTL: collision threshold 15 (bits 11:4), the datasheet's recommended value.
pub const TCTL_CT_DEFAULT: u32 = 0x0F << 4;
/// TCTL: collision distance 64 (bits 21:12) for full duplex.
pub const TCTL_COLD_DEFAULT: u32 = 0x40 << 12;

/// Transmit queue `n` (0..16) register block, stride 0x40 (§8.10: TDBAL[n] at 0xE000 + 0x40·n).
pub const fn tdbal(n: usize) -> usize {
    0xE000 + 0x40 * n
}
/// TX descriptor base high.
pub const fn tdbah(n: usize) -> usize {
    0xE004 + 0x40 * n
}
/// TX descriptor ring length in bytes.
pub const fn tdlen(n: usize) -> usize {
    0xE008 + 0x40 * n
}
/// TX descriptor head.
pub const fn tdh(n: usize) -> usize {
    0xE010 + 0x40 * n
}
/// TX descriptor tail.
pub const fn tdt(n: usize) -> usize {
    0xE018 + 0x40 * n
}
/// Transmit Descriptor Control.
pub const fn txdctl(n: usize) -> usize {
    0xE028 + 0x40 * n
}

/// Size of BAR0 (128 KiB register space).
pub const BAR0_SIZE: usize = 0x2_0000;

const _: () = assert!(rdbal(15) == 0xC3C0 && tdt(15) == 0xE3D8);
const _: () = assert!(rqdpc(15) + 4 <= BAR0_SIZE && RSSRK + 40 <= 0x5CA8);
