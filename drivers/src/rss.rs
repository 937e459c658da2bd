//! Receive-side scaling: the one Toeplitz hash implementation in Flotilla, and the rules that turn
//! a hash into a flow group and a queue.
//!
//! The NIC, the simulated NIC, the tests and the network stack (choosing source ports for outgoing
//! connections) all use this module, so a disagreement between "where we expect a flow" and "where
//! the NIC puts it" can only come from the key or the redirection table, never from two hash
//! implementations drifting apart.
//!
//! Hash input (Microsoft RSS specification, the order both the 82576 and the 82599 use, 82576
//! datasheet §7.1.2.8.1 / 82599 datasheet §7.1.2.8.1): source address, destination address, then
//! (for the TCP/UDP hash types) source port and destination port, all in network byte order.
#![forbid(unsafe_code)]

use crate::nic::{FlowGroup, QueueId, FLOW_GROUPS};

/// Length of the Toeplitz key in bytes (the RSSRK registers hold 10 dwords).
pub const KEY_LEN: usize = 40;

/// The key Flotilla programs by default: the key of Microsoft's published RSS verification
/// suite ("Verifying the RSS Hash Calculation"), so every hash Flotilla computes can be checked by
/// hand against published numbers. It spreads real flows well; it is not secret (RSS keys are not
/// a security boundary here: a flood that targets one queue is handled by early drop).
pub const DEFAULT_KEY: [u8; KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Longest hash input: two IPv6 addresses and two ports.
pub const MAX_INPUT_LEN: usize = 36;

/// The Toeplitz hash of `input` under `key`.
///
/// For every set bit `i` of the input (most significant bit of byte 0 first), the result is XORed
/// with the 32 key bits starting at key bit `i`. Inputs longer than [`MAX_INPUT_LEN`] bytes are
/// hashed only over their first [`MAX_INPUT_LEN`] bytes (the key has 320 bits, enough for 288
/// input bits).
pub fn toeplitz(key: &[u8; KEY_LEN], input: &[u8]) -> u32 {
    let input = &input[..input.len().min(MAX_INPUT_LEN)];
    let mut result = 0u32;
    // `window` holds key bits [i, i + 64) left-aligned; refilled a byte at a time.
    let mut window = u64::from_be_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    for (byte_index, &byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= (window >> 32) as u32;
            }
            window <<= 1;
        }
        // After 8 shifts the low byte of the window is empty: bring in the next key byte.
        let next = key.get(byte_index + 8).copied().unwrap_or(0);
        window |= u64::from(next);
    }
    result
}

/// The addresses (and optionally ports) of a flow, as the NIC hashes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowTuple {
    /// IPv4 source and destination; ports `(source, destination)` for TCP/UDP hash types.
    V4 {
        /// Source address.
        source: [u8; 4],
        /// Destination address.
        destination: [u8; 4],
        /// Source and destination port, or `None` for the address-only hash.
        ports: Option<(u16, u16)>,
    },
    /// IPv6 source and destination; ports `(source, destination)` for TCP/UDP hash types.
    V6 {
        /// Source address.
        source: [u8; 16],
        /// Destination address.
        destination: [u8; 16],
        /// Source and destination port, or `None` for the address-only hash.
        ports: Option<(u16, u16)>,
    },
}

impl FlowTuple {
    /// The same flow with another source port (no-op for address-only tuples).
    pub fn with_source_port(self, port: u16) -> Self {
        match self {
            Self::V4 {
                source,
                destination,
                ports,
            } => Self::V4 {
                source,
                destination,
                ports: ports.map(|(_, d)| (port, d)),
            },
            Self::V6 {
                source,
                destination,
                ports,
            } => Self::V6 {
                source,
                destination,
                ports: ports.map(|(_, d)| (port, d)),
            },
        }
    }

    /// Writes the hash input into `buffer`; returns its length.
    pub fn hash_input(&self, buffer: &mut [u8; MAX_INPUT_LEN]) -> usize {
        let (addresses, ports): (usize, Option<(u16, u16)>) = match self {
            Self::V4 {
                source,
                destination,
                ports,
            } => {
                buffer[..4].copy_from_slice(source);
                buffer[4..8].copy_from_slice(destination);
                (8, *ports)
            }
            Self::V6 {
                source,
                destination,
                ports,
            } => {
                buffer[..16].copy_from_slice(source);
                buffer[16..32].copy_from_slice(destination);
                (32, *ports)
            }
        };
        match ports {
            Some((s, d)) => {
                buffer[addresses..addresses + 2].copy_from_slice(&s.to_be_bytes());
                buffer[addresses + 2..addresses + 4].copy_from_slice(&d.to_be_bytes());
                addresses + 4
            }
            None => addresses,
        }
    }

    /// The RSS hash of this flow under `key`.
    pub fn hash(&self, key: &[u8; KEY_LEN]) -> u32 {
        let mut buffer = [0u8; MAX_INPUT_LEN];
        let len = self.hash_input(&mut buffer);
        toeplitz(key, &buffer[..len])
    }
}

/// The flow group (redirection table entry) a hash selects: its low 7 bits (82576 datasheet
/// §7.1.2.8, 82599 datasheet §7.1.2.8: "the 7 LSBs of the hash index the RETA").
pub fn flow_group_of(hash: u32) -> FlowGroup {
    FlowGroup((hash as usize & (FLOW_GROUPS - 1)) as u8)
}

/// The 128-entry redirection table as bytes, entry `g` naming the queue of flow group `g`.
pub type RedirectionTable = [u8; FLOW_GROUPS];

/// The queue the 82576 (and QEMU's igb) picks: `RETA[hash & 0x7F] & 0xF` (82576 datasheet
/// §7.1.2.8; QEMU `E1000_RSS_QUEUE`). The 82599 also uses the low 4 bits of the entry (82599
/// datasheet §7.1.2.8.3) when only RSS is enabled.
pub fn queue_of(table: &RedirectionTable, hash: u32) -> QueueId {
    QueueId(u16::from(table[flow_group_of(hash).0 as usize] & 0x0F))
}

/// The table Flotilla starts with: flow group `g` on queue `g % queues` (`queues` from 1 to 16).
pub fn default_table(queues: u16) -> RedirectionTable {
    let queues = queues.clamp(1, 16) as usize;
    let mut table = [0u8; FLOW_GROUPS];
    for (group, entry) in table.iter_mut().enumerate() {
        *entry = (group % queues) as u8;
    }
    table
}

/// Finds a source port in `ports` for which `flow` (with that source port) hashes into flow
/// group `group`. Walks the range in order and returns the first match, or `None`.
///
/// With 128 flow groups, about one port in 128 matches, so a range of a few thousand ports almost
/// surely holds one. Used by tests to pick frames for a queue and by the stack to choose outgoing
/// source ports whose replies come back to the connecting core.
pub fn source_port_for_group(
    key: &[u8; KEY_LEN],
    flow: FlowTuple,
    group: FlowGroup,
    ports: core::ops::RangeInclusive<u16>,
) -> Option<u16> {
    ports
        .into_iter()
        .find(|&port| flow_group_of(flow.with_source_port(port).hash(key)) == group)
}

/// Finds a source port in `ports` for which `flow` lands on `queue` under `table`.
pub fn source_port_for_queue(
    key: &[u8; KEY_LEN],
    table: &RedirectionTable,
    flow: FlowTuple,
    queue: QueueId,
    ports: core::ops::RangeInclusive<u16>,
) -> Option<u16> {
    ports
        .into_iter()
        .find(|&port| queue_of(table, flow.with_source_port(port).hash(key)) == queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(source: [u8; 4], sport: u16, destination: [u8; 4], dport: u16) -> (FlowTuple, FlowTuple) {
        (
            FlowTuple::V4 {
                source,
                destination,
                ports: None,
            },
            FlowTuple::V4 {
                source,
                destination,
                ports: Some((sport, dport)),
            },
        )
    }

    /// Microsoft "Verifying the RSS Hash Calculation", IPv4 table: (destination, source,
    /// IPv4-only hash, IPv4-with-TCP hash).
    #[test]
    fn microsoft_ipv4_vectors() {
        type Case = ([u8; 4], u16, [u8; 4], u16, u32, u32);
        let cases: [Case; 5] = [
            (
                [161, 142, 100, 80],
                1766,
                [66, 9, 149, 187],
                2794,
                0x323e8fc2,
                0x51ccc178,
            ),
            (
                [65, 69, 140, 83],
                4739,
                [199, 92, 111, 2],
                14230,
                0xd718262a,
                0xc626b0ea,
            ),
            (
                [12, 22, 207, 184],
                38024,
                [24, 19, 198, 95],
                12898,
                0xd2d0a5de,
                0x5c2b394a,
            ),
            (
                [209, 142, 163, 6],
                2217,
                [38, 27, 205, 30],
                48228,
                0x82989176,
                0xafc7327f,
            ),
            (
                [202, 188, 127, 2],
                1303,
                [153, 39, 163, 191],
                44251,
                0x5d1809c5,
                0x10e828a2,
            ),
        ];
        for (dst, dport, src, sport, ip_only, with_ports) in cases {
            let (a, b) = v4(src, sport, dst, dport);
            assert_eq!(a.hash(&DEFAULT_KEY), ip_only, "{src:?} -> {dst:?}");
            assert_eq!(
                b.hash(&DEFAULT_KEY),
                with_ports,
                "{src:?}:{sport} -> {dst:?}:{dport}"
            );
        }
    }

    fn ip6(text: [u16; 8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, word) in text.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// Microsoft "Verifying the RSS Hash Calculation", IPv6 table.
    #[test]
    fn microsoft_ipv6_vectors() {
        let cases = [
            (
                ip6([0x3ffe, 0x2501, 0x200, 0x3, 0, 0, 0, 1]),
                1766,
                ip6([0x3ffe, 0x2501, 0x200, 0x1fff, 0, 0, 0, 7]),
                2794,
                0x2cc18cd5u32,
                0x40207d3du32,
            ),
            (
                ip6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
                4739,
                ip6([0x3ffe, 0x501, 8, 0, 0x260, 0x97ff, 0xfe40, 0xefab]),
                14230,
                0x0f0c461c,
                0xdde51bbf,
            ),
            (
                ip6([0xfe80, 0, 0, 0, 0x200, 0xf8ff, 0xfe21, 0x67cf]),
                38024,
                ip6([0x3ffe, 0x1900, 0x4545, 3, 0x200, 0xf8ff, 0xfe21, 0x67cf]),
                44251,
                0x4b61e985,
                0x02d1feef,
            ),
        ];
        for (destination, dport, source, sport, ip_only, with_ports) in cases {
            let a = FlowTuple::V6 {
                source,
                destination,
                ports: None,
            };
            let b = FlowTuple::V6 {
                source,
                destination,
                ports: Some((sport, dport)),
            };
            assert_eq!(a.hash(&DEFAULT_KEY), ip_only);
            assert_eq!(b.hash(&DEFAULT_KEY), with_ports);
        }
    }

    #[test]
    fn flow_group_and_queue_rules() {
        assert_eq!(flow_group_of(0x51ccc178), FlowGroup(0x78));
        assert_eq!(flow_group_of(0xffff_ff80), FlowGroup(0));
        let mut table = default_table(4);
        assert_eq!(queue_of(&table, 0x51ccc178), QueueId((0x78 % 4) as u16));
        // Only the low four bits of an entry name the queue.
        table[0x78] = 0xF3;
        assert_eq!(queue_of(&table, 0x51ccc178), QueueId(3));
        assert_eq!(default_table(3)[..6], [0, 1, 2, 0, 1, 2]);
        assert!(default_table(0).iter().all(|&q| q == 0));
    }

    #[test]
    fn source_port_search_finds_a_port_that_really_lands() {
        let flow = FlowTuple::V4 {
            source: [10, 0, 2, 2],
            destination: [10, 0, 2, 15],
            ports: Some((0, 7)),
        };
        let table = default_table(4);
        for queue in 0..4 {
            let port =
                source_port_for_queue(&DEFAULT_KEY, &table, flow, QueueId(queue), 1024..=65535)
                    .expect("a port lands on every queue");
            let hash = flow.with_source_port(port).hash(&DEFAULT_KEY);
            assert_eq!(queue_of(&table, hash), QueueId(queue));
        }
        let group = FlowGroup(77);
        let port = source_port_for_group(&DEFAULT_KEY, flow, group, 1024..=65535).unwrap();
        assert_eq!(
            flow_group_of(flow.with_source_port(port).hash(&DEFAULT_KEY)),
            group
        );
        // A one-port range that does not land gives None.
        let other = FlowGroup(flow_group_of(flow.with_source_port(port).hash(&DEFAULT_KEY)).0 ^ 1);
        assert_eq!(
            source_port_for_group(&DEFAULT_KEY, flow, other, port..=port),
            None
        );
    }

    #[test]
    fn overlong_input_is_clamped() {
        let long = [0xFFu8; 40];
        assert_eq!(
            toeplitz(&DEFAULT_KEY, &long),
            toeplitz(&DEFAULT_KEY, &long[..36])
        );
        assert_eq!(toeplitz(&DEFAULT_KEY, &[]), 0);
    }
}
