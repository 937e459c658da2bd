//! A pcap (libpcap classic format) writer: global header, then one record header and the bytes
//! per frame. Link type 1 (Ethernet), microsecond timestamps, little-endian magic `0xa1b2c3d4`.
//! The result opens in Wireshark/tcpdump.

extern crate std;
use std::vec::Vec;

/// Largest number of bytes kept per frame.
pub const SNAP_LEN: u32 = 65_535;

/// A pcap file being built in memory.
#[derive(Clone, Debug)]
pub struct PcapWriter {
    bytes: Vec<u8>,
    records: usize,
}

impl Default for PcapWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PcapWriter {
    /// An empty capture (global header only).
    pub fn new() -> Self {
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, µs timestamps
        bytes.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes()); // timezone
        bytes.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
        bytes.extend_from_slice(&SNAP_LEN.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        Self { bytes, records: 0 }
    }

    /// Appends `frame` seen at `time_us` microseconds.
    pub fn record(&mut self, time_us: u64, frame: &[u8]) {
        let kept = frame.len().min(SNAP_LEN as usize);
        self.bytes
            .extend_from_slice(&((time_us / 1_000_000) as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&((time_us % 1_000_000) as u32).to_le_bytes());
        self.bytes.extend_from_slice(&(kept as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&frame[..kept]);
        self.records += 1;
    }

    /// Frames recorded.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the file back: the header fields and every record's length and bytes.
    #[test]
    fn writes_a_parseable_file() {
        let mut pcap = PcapWriter::new();
        pcap.record(1_500_000, &[1, 2, 3]);
        pcap.record(2_000_001, &[9; 60]);
        let b = pcap.bytes();
        assert_eq!(&b[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1);
        let mut at = 24;
        let mut lengths = std::vec::Vec::new();
        while at < b.len() {
            let seconds = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            let micros = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap());
            let kept = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
            lengths.push((seconds, micros, kept));
            at += 16 + kept;
        }
        assert_eq!(at, b.len());
        assert_eq!(lengths, [(1, 500_000, 3), (2, 1, 60)]);
        assert_eq!(pcap.records(), 2);
    }
}
