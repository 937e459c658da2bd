//! The messages CPU drivers exchange over their boot-time URPC channels, and the statistics the
//! latency self-test reports.
//!
//! Wire format (one URPC payload, little-endian): byte 0 is the tag. Tags 1–4 are
//! [`urpc::CoreMessage`] (ping, pong, inline, buffer) in urpc's own format; `0x10` RttStart
//! (bytes 4..8 peer, 8..12 rounds), `0x11` RttDone (4..8 peer, 8..16 p50, 16..24 p99), `0x20`
//! NetChunk (byte 1 length ≤ 48, 2..4 total, 4..6 offset, 8..56 data: a piece of a netd peer
//! message, which may span many slots), `0x30` Monitor (byte 1 length ≤ 54, 2..56 the monitor
//! message's own encoding). Every other byte is zero, and a decoder rejects anything else.
#![forbid(unsafe_code)]

use urpc::{CoreMessage, DecodeError, Message, Payload, RegionTable};

const RTT_START: u8 = 0x10;
const RTT_DONE: u8 = 0x11;
const NET_CHUNK: u8 = 0x20;
const MONITOR: u8 = 0x30;

/// Bytes of a monitor message a slot carries.
pub const MONITOR_MESSAGE_BYTES: usize = 54;

/// Bytes of a network message one chunk carries.
pub const NET_CHUNK_BYTES: usize = 48;

/// A message between CPU drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMessage {
    /// One of urpc's own messages (ping and pong for latency probes).
    Core(CoreMessage),
    /// From core 0: measure round trips to `peer`, `rounds` times, then answer `RttDone`.
    RttStart {
        /// The core to ping.
        peer: u32,
        /// How many round trips.
        rounds: u32,
    },
    /// To core 0: round trips to `peer` took `p50` and `p99` TSC cycles.
    RttDone {
        /// The core that was pinged.
        peer: u32,
        /// Median round trip, in cycles.
        p50: u64,
        /// 99th percentile, in cycles.
        p99: u64,
    },
    /// A piece of a network-stack message (`netd::PeerMessage` bytes), sent in order.
    NetChunk {
        /// Length of the whole message.
        total: u16,
        /// Where this piece starts in it.
        offset: u16,
        /// Bytes used in `data`.
        length: u8,
        /// The piece (zero past `length`).
        data: [u8; NET_CHUNK_BYTES],
    },
    /// A control-plane message (`monitor::Message`'s encoding).
    Monitor {
        /// Bytes used in `bytes`.
        length: u8,
        /// The encoded message (zero past `length`).
        bytes: [u8; MONITOR_MESSAGE_BYTES],
    },
}

fn expect_zero(payload: &Payload, range: core::ops::Range<usize>) -> Result<(), DecodeError> {
    match payload[range.clone()].iter().position(|&b| b != 0) {
        Some(at) => Err(DecodeError::NonZeroPadding {
            offset: (range.start + at) as u8,
        }),
        None => Ok(()),
    }
}

fn u32_at(payload: &Payload, at: usize) -> u32 {
    u32::from_le_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

fn u64_at(payload: &Payload, at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&payload[at..at + 8]);
    u64::from_le_bytes(bytes)
}

impl Message for KernelMessage {
    fn encode(&self, payload: &mut Payload) {
        match self {
            KernelMessage::Core(message) => message.encode(payload),
            KernelMessage::RttStart { peer, rounds } => {
                payload[0] = RTT_START;
                payload[4..8].copy_from_slice(&peer.to_le_bytes());
                payload[8..12].copy_from_slice(&rounds.to_le_bytes());
            }
            KernelMessage::RttDone { peer, p50, p99 } => {
                payload[0] = RTT_DONE;
                payload[4..8].copy_from_slice(&peer.to_le_bytes());
                payload[8..16].copy_from_slice(&p50.to_le_bytes());
                payload[16..24].copy_from_slice(&p99.to_le_bytes());
            }
            KernelMessage::NetChunk {
                total,
                offset,
                length,
                data,
            } => {
                payload[0] = NET_CHUNK;
                payload[1] = *length;
                payload[2..4].copy_from_slice(&total.to_le_bytes());
                payload[4..6].copy_from_slice(&offset.to_le_bytes());
                let used = usize::from(*length).min(NET_CHUNK_BYTES);
                payload[8..8 + used].copy_from_slice(&data[..used]);
            }
            KernelMessage::Monitor { length, bytes } => {
                payload[0] = MONITOR;
                payload[1] = *length;
                let used = usize::from(*length).min(MONITOR_MESSAGE_BYTES);
                payload[2..2 + used].copy_from_slice(&bytes[..used]);
            }
        }
    }

    fn decode(payload: &Payload, regions: &RegionTable<'_>) -> Result<Self, DecodeError> {
        match payload[0] {
            RTT_START => {
                expect_zero(payload, 1..4)?;
                expect_zero(payload, 12..payload.len())?;
                Ok(KernelMessage::RttStart {
                    peer: u32_at(payload, 4),
                    rounds: u32_at(payload, 8),
                })
            }
            RTT_DONE => {
                expect_zero(payload, 1..4)?;
                expect_zero(payload, 24..payload.len())?;
                Ok(KernelMessage::RttDone {
                    peer: u32_at(payload, 4),
                    p50: u64_at(payload, 8),
                    p99: u64_at(payload, 16),
                })
            }
            NET_CHUNK => {
                let length = payload[1];
                if usize::from(length) > NET_CHUNK_BYTES || length == 0 {
                    return Err(DecodeError::InlineTooLong { length });
                }
                expect_zero(payload, 6..8)?;
                expect_zero(payload, 8 + usize::from(length)..payload.len())?;
                let total = u16::from_le_bytes([payload[2], payload[3]]);
                let offset = u16::from_le_bytes([payload[4], payload[5]]);
                if u32::from(offset) + u32::from(length) > u32::from(total) {
                    return Err(DecodeError::NonZeroPadding { offset: 2 });
                }
                let mut data = [0u8; NET_CHUNK_BYTES];
                data.copy_from_slice(&payload[8..8 + NET_CHUNK_BYTES]);
                Ok(KernelMessage::NetChunk {
                    total,
                    offset,
                    length,
                    data,
                })
            }
            MONITOR => {
                let length = payload[1];
                if usize::from(length) > MONITOR_MESSAGE_BYTES || length == 0 {
                    return Err(DecodeError::InlineTooLong { length });
                }
                expect_zero(payload, 2 + usize::from(length)..payload.len())?;
                let mut bytes = [0u8; MONITOR_MESSAGE_BYTES];
                bytes.copy_from_slice(&payload[2..2 + MONITOR_MESSAGE_BYTES]);
                Ok(KernelMessage::Monitor { length, bytes })
            }
            _ => CoreMessage::decode(payload, regions).map(KernelMessage::Core),
        }
    }
}

/// The 50th and 99th percentiles (nearest rank) of `samples`, which it sorts; `(0, 0)` if empty.
pub fn percentiles(samples: &mut [u64]) -> (u64, u64) {
    if samples.is_empty() {
        return (0, 0);
    }
    samples.sort_unstable();
    let rank = |p: usize| {
        samples[((samples.len() * p).div_ceil(100))
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    (rank(50), rank(99))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: KernelMessage) {
        let mut payload = [0; urpc::PAYLOAD_SIZE];
        message.encode(&mut payload);
        assert_eq!(
            KernelMessage::decode(&payload, &RegionTable::EMPTY),
            Ok(message)
        );
    }

    #[test]
    fn every_kernel_message_round_trips() {
        round_trip(KernelMessage::Core(CoreMessage::Ping {
            sequence: 7,
            timestamp: u64::MAX,
        }));
        round_trip(KernelMessage::Core(CoreMessage::Pong {
            sequence: 0,
            timestamp: 3,
        }));
        round_trip(KernelMessage::RttStart {
            peer: 15,
            rounds: 1000,
        });
        round_trip(KernelMessage::RttDone {
            peer: 3,
            p50: 343,
            p99: 1 << 40,
        });
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let mut payload = [0; urpc::PAYLOAD_SIZE];
        KernelMessage::RttStart { peer: 1, rounds: 2 }.encode(&mut payload);
        payload[40] = 1;
        assert_eq!(
            KernelMessage::decode(&payload, &RegionTable::EMPTY),
            Err(DecodeError::NonZeroPadding { offset: 40 })
        );
        payload = [0; urpc::PAYLOAD_SIZE];
        payload[0] = 0x7F;
        assert!(KernelMessage::decode(&payload, &RegionTable::EMPTY).is_err());
        for tag in 0..=255u8 {
            payload = [0xA5; urpc::PAYLOAD_SIZE];
            payload[0] = tag;
            let _ = KernelMessage::decode(&payload, &RegionTable::EMPTY);
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: std::vec::Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut samples), (50, 99));
        assert_eq!(percentiles(&mut [5]), (5, 5));
        assert_eq!(percentiles(&mut []), (0, 0));
    }
}
