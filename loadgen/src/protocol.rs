//! What the generator sends and how it reads the answers: UDP echo payloads that carry their
//! own send timestamp, and memcached text-protocol requests (over UDP with memcached's 8-byte
//! frame header, or over TCP) in an ETC-like mix.

use crate::rate::SplitMix64;

/// The first bytes of every echo payload ("FLT1"): a reply without them is not ours.
pub const ECHO_MAGIC: [u8; 4] = *b"FLT1";
/// Bytes of the echo header: magic, flow (u32), sequence (u64), send time in ns (u64).
pub const ECHO_HEADER: usize = 24;

/// Fills `buffer` (at least [`ECHO_HEADER`] bytes; the rest is padding) with an echo request.
pub fn write_echo(buffer: &mut [u8], flow: u32, sequence: u64, sent_ns: u64) {
    buffer[..4].copy_from_slice(&ECHO_MAGIC);
    buffer[4..8].copy_from_slice(&flow.to_be_bytes());
    buffer[8..16].copy_from_slice(&sequence.to_be_bytes());
    buffer[16..24].copy_from_slice(&sent_ns.to_be_bytes());
    for byte in &mut buffer[ECHO_HEADER..] {
        *byte = 0x5A;
    }
}

/// An echo reply's (flow, sequence, send time in ns), or `None` if it is not one of ours.
pub fn read_echo(reply: &[u8]) -> Option<(u32, u64, u64)> {
    if reply.len() < ECHO_HEADER || reply[..4] != ECHO_MAGIC {
        return None;
    }
    let word = |range: std::ops::Range<usize>| -> u64 {
        reply[range]
            .iter()
            .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
    };
    Some((word(4..8) as u32, word(8..16), word(16..24)))
}

/// The memcached request mix: Facebook's ETC pool (Atikoglu et al., SIGMETRICS 2012) is read
/// mostly; here `get_percent` of requests are gets, the rest sets, over `keys` small keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcachedMix {
    /// Percent of requests that are `get` (the rest are `set`).
    pub get_percent: u8,
    /// Number of distinct keys (`key:0` .. `key:N-1`).
    pub keys: u32,
    /// Value bytes of a `set`.
    pub value_bytes: usize,
}

impl Default for MemcachedMix {
    /// 90% get / 10% set, 1,024 keys of 8-9 bytes, 32-byte values: keys on every core of any
    /// guest of up to 16 cores (Flotilla partitions keys by FNV-1a over the cores).
    fn default() -> Self {
        Self {
            get_percent: 90,
            keys: 1024,
            value_bytes: 32,
        }
    }
}

/// One memcached request's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `get key`.
    Get,
    /// `set key 0 0 N` with a value.
    Set,
}

impl MemcachedMix {
    /// Appends one request chosen by `random` to `out`; returns its kind.
    pub fn write_request(&self, random: &mut SplitMix64, out: &mut Vec<u8>) -> RequestKind {
        let key = random.below(u64::from(self.keys.max(1)));
        if random.below(100) < u64::from(self.get_percent) {
            out.extend_from_slice(format!("get key:{key}\r\n").as_bytes());
            RequestKind::Get
        } else {
            self.write_set(key, out);
            RequestKind::Set
        }
    }

    /// Appends `set key:K 0 0 N\r\n<value>\r\n` to `out`.
    pub fn write_set(&self, key: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("set key:{key} 0 0 {}\r\n", self.value_bytes).as_bytes());
        out.extend(std::iter::repeat_n(b'v', self.value_bytes));
        out.extend_from_slice(b"\r\n");
    }
}

/// memcached's UDP frame header (protocol.txt "UDP protocol"): request id, sequence number,
/// datagram count, reserved; all big-endian u16.
pub fn write_udp_frame_header(out: &mut Vec<u8>, request_id: u16) {
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// A UDP reply's request id and body, if it has a frame header.
pub fn read_udp_frame(reply: &[u8]) -> Option<(u16, &[u8])> {
    if reply.len() < 8 {
        return None;
    }
    Some((u16::from_be_bytes([reply[0], reply[1]]), &reply[8..]))
}

/// How one complete memcached reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// A `get` that found its key (`VALUE ... END`).
    Hit,
    /// A `get` that did not (`END` alone).
    Miss,
    /// `STORED`.
    Stored,
    /// Any error line (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`) or another status.
    Error,
}

/// Finds the first complete reply at the start of `bytes`; returns its kind and length, or
/// `None` if more bytes are needed. Understands the replies to `get` and `set`.
pub fn parse_reply(bytes: &[u8]) -> Option<(ReplyKind, usize)> {
    let line_end = |from: usize| -> Option<usize> {
        bytes[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|at| from + at)
    };
    let end = line_end(0)?;
    let line = &bytes[..end];
    if line == b"END" {
        return Some((ReplyKind::Miss, end + 2));
    }
    if line == b"STORED" {
        return Some((ReplyKind::Stored, end + 2));
    }
    if let Some(rest) = line.strip_prefix(b"VALUE ") {
        // VALUE <key> <flags> <bytes> [<cas>]
        let text = std::str::from_utf8(rest).ok()?;
        let length: usize = match text.split_whitespace().nth(2).and_then(|n| n.parse().ok()) {
            Some(length) => length,
            None => return Some((ReplyKind::Error, end + 2)),
        };
        let mut at = end + 2 + length + 2; // data and its CRLF
                                           // Further VALUE blocks (multi-get) are not sent by this generator; expect END.
        if bytes.len() < at + 5 {
            return None;
        }
        if &bytes[at..at + 5] != b"END\r\n" {
            return Some((ReplyKind::Error, at));
        }
        at += 5;
        return Some((ReplyKind::Hit, at));
    }
    Some((ReplyKind::Error, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_payloads_round_trip() {
        let mut buffer = [0u8; 64];
        write_echo(&mut buffer, 7, 123_456, 987_654_321);
        assert_eq!(read_echo(&buffer), Some((7, 123_456, 987_654_321)));
        assert_eq!(read_echo(&buffer[..10]), None);
        buffer[0] = b'X';
        assert_eq!(read_echo(&buffer), None);
    }

    #[test]
    fn the_mix_has_its_get_share_and_valid_requests() {
        let mix = MemcachedMix::default();
        let mut random = SplitMix64::new(3);
        let mut gets = 0;
        for _ in 0..10_000 {
            let mut out = Vec::new();
            match mix.write_request(&mut random, &mut out) {
                RequestKind::Get => {
                    gets += 1;
                    assert!(out.starts_with(b"get key:") && out.ends_with(b"\r\n"));
                }
                RequestKind::Set => {
                    let text = String::from_utf8(out).unwrap();
                    assert!(
                        text.starts_with("set key:") && text.contains(" 0 0 32\r\n"),
                        "{text}"
                    );
                    assert_eq!(text.len(), text.find("\r\n").unwrap() + 2 + 32 + 2);
                }
            }
        }
        assert!((8_800..9_200).contains(&gets), "{gets} gets of 10000");
    }

    #[test]
    fn replies_are_split_where_they_end() {
        let stream = b"VALUE key:1 0 3\r\nabc\r\nEND\r\nEND\r\nSTORED\r\nSERVER_ERROR out of memory\r\nVALUE k 0 5\r\nab";
        let (kind, used) = parse_reply(stream).unwrap();
        assert_eq!((kind, used), (ReplyKind::Hit, 27));
        let rest = &stream[used..];
        assert_eq!(parse_reply(rest), Some((ReplyKind::Miss, 5)));
        assert_eq!(parse_reply(&rest[5..]), Some((ReplyKind::Stored, 8)));
        let rest = &rest[13..];
        let (kind, used) = parse_reply(rest).unwrap();
        assert_eq!(kind, ReplyKind::Error);
        assert_eq!(
            parse_reply(&rest[used..]),
            None,
            "an incomplete VALUE waits for more"
        );
        let mut framed = Vec::new();
        write_udp_frame_header(&mut framed, 0xBEEF);
        framed.extend_from_slice(b"END\r\n");
        assert_eq!(read_udp_frame(&framed), Some((0xBEEF, &b"END\r\n"[..])));
    }
}
