//! The command sequence the differential tests send both to Debian's memcached 1.6 and to
//! Flotilla (the netd cluster on the host, and the machine in QEMU), and how the two answers are
//! compared.
//!
//! Each [`Step`] is sent on one connection, followed by `mn\r\n`; the answer is what the server
//! sends up to and including its `MN\r\n` (or up to the close, for the steps that close the
//! connection; the next step then opens a new one). Answers must be equal byte for byte after
//! [`normalise`]: CAS uniques become their order of first appearance (so the test compares CAS
//! semantics, not numbers), the version string and `STAT` values are blanked, and Flotilla's
//! `STAT` names must be memcached's, in memcached's order (memcached prints more of them).
//!
//! The keys are `<prefix><n>`; with the prefix the test picks, they land on every core. Values
//! range from empty to memcached's largest item, and the sequence covers every command Flotilla
//! implements, their `noreply` forms, and malformed input.

extern crate alloc;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// A piece of a step's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text; `{k<n>}` stands for key number `n` (see [`Step::render`]).
    Text(String),
    /// `length` bytes of a deterministic pattern.
    Data(usize),
    /// The CAS unique of the last `VALUE` line with one this server sent.
    LastCas,
    /// Unix time now plus this many seconds.
    Now(i64),
}

/// One exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What to send.
    pub pieces: Vec<Piece>,
    /// The server closes the connection after this step (no `mn` is sent).
    pub closes: bool,
}

/// The largest value memcached takes for a key of `key_length` bytes and flags 0.
pub fn largest_value(key_length: usize) -> usize {
    super::protocol::max_value_length(key_length, 0)
}

fn text(text: &str) -> Piece {
    Piece::Text(text.into())
}

fn step(pieces: Vec<Piece>) -> Step {
    Step {
        pieces,
        closes: false,
    }
}

fn line(text_line: &str) -> Step {
    step(vec![text(text_line)])
}

/// A storage command with `length` pattern bytes as its data.
fn store(command: &str, length: usize) -> Step {
    step(vec![
        text(&format!("{command} {length}\r\n")),
        Piece::Data(length),
        text("\r\n"),
    ])
}

impl Step {
    /// The bytes to send: `{k<n>}` becomes `<prefix><n>`, data is the pattern, `LastCas` and
    /// `Now` are filled in.
    pub fn render(&self, prefix: &str, last_cas: u64, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => {
                    let mut rest = text.as_str();
                    while let Some(start) = rest.find("{k") {
                        out.extend_from_slice(&rest.as_bytes()[..start]);
                        let after = &rest[start + 2..];
                        let end = after.find('}').unwrap_or(after.len());
                        out.extend_from_slice(prefix.as_bytes());
                        out.extend_from_slice(&after.as_bytes()[..end]);
                        rest = &after[(end + 1).min(after.len())..];
                    }
                    out.extend_from_slice(rest.as_bytes());
                }
                Piece::Data(length) => {
                    out.extend((0..*length).map(|n| b'a' + (n % 23) as u8));
                }
                Piece::LastCas => out.extend_from_slice(format!("{last_cas}").as_bytes()),
                Piece::Now(offset) => {
                    out.extend_from_slice(format!("{}", now as i64 + offset).as_bytes())
                }
            }
        }
        out
    }
}

/// Key numbers the sequence uses (for picking a prefix that spreads them over every core).
pub const KEYS: core::ops::Range<u32> = 0..24;

/// The sequence, with values up to 3 KB (and larger ones memcached refuses). Keys `{k0}` to
/// `{k23}`.
pub fn steps() -> Vec<Step> {
    let mut steps = vec![
        line("flush_all\r\n"),
        // Storage and retrieval, across keys of every core.
        store("set {k0} 0 0", 1),
        store("set {k1} 7 0", 10),
        store("set {k2} 4294967295 0", 0),
        store("set {k3} 1 0", 100),
        line("get {k0} {k1} {k2} {k3} missing {k0}\r\n"),
        line("gets {k0} {k1}\r\n"),
        step(vec![text("cas {k1} 3 0 2 "), Piece::LastCas, text("\r\nab\r\n")]),
        step(vec![text("cas {k1} 3 0 2 "), Piece::LastCas, text("\r\ncd\r\n")]),
        line("gets {k1}\r\n"),
        line("cas {k9} 0 0 0 1\r\n\r\n"),
        store("add {k0} 0 0", 1),
        store("add {k4} 2 0", 3),
        store("replace {k5} 0 0", 3),
        store("replace {k4} 3 0", 4),
        store("append {k4} 9 0", 2),
        store("prepend {k4} 9 0", 2),
        store("append {k5} 0 0", 2),
        line("get {k4} {k5}\r\n"),
        // Arithmetic.
        line("set {k6} 0 0 2\r\n10\r\ndecr {k6} 1\r\nget {k6}\r\n"),
        line("decr {k6} 100\r\nincr {k6} 18446744073709551615\r\nincr {k6} 2\r\n"),
        line("set {k6} 5 0 2\r\n99\r\nincr {k6} 1\r\ngets {k6}\r\n"),
        line("set {k7} 0 0 20\r\n18446744073709551615\r\nincr {k7} 2\r\nget {k7}\r\n"),
        line("set {k7} 0 0 3\r\n12a\r\nincr {k7} 1\r\ndecr {k7} 1\r\n"),
        line("set {k7} 0 0 2\r\n-0\r\nincr {k7} 2\r\nincr {k7} -1\r\nincr {k7} x\r\n"),
        line("incr {k8} 1\r\ndecr {k8} 1\r\nincr {k6} 1 noreply\r\nget {k6}\r\n"),
        // Touch, gat, expiry.
        line("touch {k0} 100\r\ntouch {k8} 100\r\ntouch {k0} abc\r\n"),
        line("gat 100 {k0} {k8}\r\ngats 0 {k0}\r\ngat abc {k0}\r\ngat 10\r\n"),
        line("set {k9} 0 -1 1\r\nx\r\nget {k9}\r\n"),
        line("set {k9} 0 1000000000 1\r\nx\r\nget {k9}\r\n"),
        line("set {k9} 0 4000000000 1\r\nx\r\nget {k9}\r\n"),
        step(vec![
            text("set {k9} 0 "),
            Piece::Now(100),
            text(" 1\r\nx\r\nget {k9}\r\n"),
        ]),
        line("set {k9} 0 2592000 1\r\nx\r\nget {k9}\r\ntouch {k9} -1\r\nget {k9}\r\n"),
        // Deletion.
        line("delete {k3}\r\ndelete {k3}\r\ndelete {k2} 0\r\ndelete {k1} 5\r\n"),
        line("delete {k1} 0 0\r\ndelete {k1} 0 noreply\r\ndelete {k0} noreply\r\nget {k0} {k1}\r\n"),
        // noreply everywhere.
        line("set {k0} 0 0 1 noreply\r\na\r\nadd {k0} 0 0 1 noreply\r\nb\r\nappend {k0} 0 0 1 noreply\r\nc\r\n"),
        line("prepend {k0} 0 0 1 noreply\r\nd\r\nreplace {k0} 0 0 3 noreply\r\nxyz\r\ncas {k0} 0 0 1 1 noreply\r\nq\r\n"),
        line("incr {k0} 1 noreply\r\ntouch {k0} 10 noreply\r\nget {k0}\r\n"),
        line("verbosity 1 noreply\r\nflush_all 0 noreply\r\nget {k0}\r\n"),
        // Errors, as memcached words them.
        line("bogus\r\n\r\nx\r\nab\r\nSet a 0 0 1\r\nget\r\ngets\r\n"),
        line("set {k0} 0 0\r\nset {k0} 0 0 1 2 3\r\nx\r\n"),
        line("set {k0} abc 0 1\r\nx\r\nset {k0} -1 0 1\r\nx\r\nset {k0} 0 abc 1\r\nx\r\n"),
        line("set {k0} 0 0 -1\r\nx\r\nset {k0} 0 0 1x\r\nx\r\nset {k0} 0 0 -1 noreply\r\nx\r\n"),
        line("set {k0} 4294967296 0 1\r\nx\r\nget {k0}\r\nset {k0} -0 0 +1\r\ny\r\nget {k0}\r\n"),
        line("set {k0} 0 0 1\r\nabc\r\nget {k0}\r\n"),
        line("set {k0} 0 0 1 noreply\r\nabc\r\nget {k0}\r\n"),
        // A data block longer than declared, then shorter (it eats the next command).
        line("set {k0} 0 0 5\r\nabcdefg\r\n"),
        line("set {k0} 0 0 5\r\nab\r\nmn\r\n"),
        line("cas {k0} 0 0 1\r\nx\r\ncas {k0} 0 0 1 abc\r\nx\r\n"),
        line("touch {k0}\r\nincr {k0}\r\ndelete\r\ndelete {k0} 0 0 0\r\nverbosity\r\nverbosity x\r\n"),
        line("flush_all abc\r\nflush_all 1 2 3\r\nflush_all 0 0\r\n"),
        line("stats detail\r\nstats foo\r\nshutdown\r\n"),
        line("version\r\nversion extra\r\nverbosity 1\r\nverbosity 1 2\r\n"),
        // Keys at and past 250 bytes, control characters and tabs in keys, NUL in a line.
        step(vec![text(&format!(
            "set {k}{}\r\nx\r\nget {k}\r\ndelete {k}\r\n",
            " 0 0 1",
            k = "k".repeat(250)
        ))]),
        step(vec![text(&format!("set {} 0 0 1\r\nx\r\n", "k".repeat(251)))]),
        // (A multi-get with a key over 250 bytes is first in its step: memcached 1.6.18 also drops
        // the replies of earlier commands it has not sent yet; Flotilla does not.)
        step(vec![text(&format!(
            "get {k}\r\ndelete {k}\r\nincr {k} 1\r\ntouch {k} 1\r\n",
            k = "k".repeat(251)
        ))]),
        step(vec![text(&format!(
            "get {{k0}} {}\r\nget {{k0}}\r\n",
            "k".repeat(251)
        ))]),
        line("set a\u{1}{k0} 0 0 1\r\nx\r\nget a\u{1}{k0}\r\nset a\t{k0} 0 0 1\r\ny\r\nget a\t{k0}\r\n"),
        step(vec![text("set {k0} 0 0 1\0 junk\r\nx\r\nget {k0}\0x\r\n")]),
        line("set {k0} 0 0 1\nx\r\nget {k0}\n"),
        line("  get {k0}\r\nget {k0}  {k1}   \r\nbget {k0}\r\n"),
        step(vec![text(&format!("get{}\r\n", " {k0}".repeat(40)))]),
        // Statistics (values are normalised away; names and order are compared).
        line("stats\r\n"),
        line("stats settings\r\n"),
        line("stats reset\r\n"),
    ];
    // Items too large for memcached: refused, their data swallowed, and a set drops the old
    // value.
    steps.extend([
        store("set {k17} 0 0", 1),
        Step {
            pieces: vec![
                text(&format!("set {{k17}} 0 0 {}\r\n", largest_value(3) + 1)),
                Piece::Data(largest_value(3) + 1),
                text("\r\nget {k17}\r\n"),
            ],
            closes: false,
        },
        step(vec![
            text("set {k17} 0 0 2000000 noreply\r\n"),
            Piece::Data(2_000_000),
            text("\r\nget {k17}\r\n"),
        ]),
        // Closing: quit, then on new connections an HTTP request and a line too long.
        Step {
            pieces: vec![text("version\r\nquit\r\nversion\r\n")],
            closes: true,
        },
        Step {
            pieces: vec![text("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
            closes: true,
        },
        Step {
            pieces: vec![Piece::Data(3000)],
            closes: true,
        },
        line("version\r\n"),
    ]);
    steps
}

/// Values from 1 byte to memcached's largest item, on keys of every core (keys 10 to 16).
/// Values over about 4 KiB on another core's key need a cross-core channel that carries whole
/// items (see [`crate::peers::Peers::max_message`]).
pub fn large_steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for (key, length) in [
        (10, 1usize),
        (11, 3_000),
        (12, 5_000),
        (13, 40_000),
        (14, 100_000),
        (15, 1_000_000),
    ] {
        steps.push(store(&format!("set {{k{key}}} 3 0"), length));
        steps.push(line(&format!("get {{k{key}}}\r\n")));
    }
    steps.extend([
        line("get {k10} {k11} {k12} {k13} {k14} {k15} {k10}\r\n"),
        store("append {k15} 0 0", 40_000),
        line("gets {k15}\r\n"),
        line("gat 100 {k14}\r\n"),
        // The largest item for a 3-byte key, and an append past the limit.
        Step {
            pieces: vec![
                text("set {k16} 0 0 "),
                text(&format!("{}\r\n", largest_value(3))),
                Piece::Data(largest_value(3)),
                text("\r\nget {k16}\r\n"),
            ],
            closes: false,
        },
        store("append {k16} 0 0", 1),
        line("flush_all\r\nget {k10} {k15} {k16}\r\n"),
    ]);
    steps
}

/// Replaces what must differ between two servers (see the module documentation). `cas_order`
/// maps the CAS uniques seen so far to their order of appearance; pass the same map for every
/// step of one conversation.
pub fn normalise(reply: &[u8], cas_order: &mut Vec<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .map_or(rest.len(), |n| n + 2);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if let Some(value) = line.strip_prefix(b"VALUE ") {
            // VALUE <key> <flags> <bytes> [<cas>]: the data block follows.
            let text = value.strip_suffix(b"\r\n").unwrap_or(value);
            let fields: Vec<&[u8]> = text.split(|b| *b == b' ').collect();
            let length = fields
                .get(2)
                .and_then(|field| core::str::from_utf8(field).ok())
                .and_then(|field| field.parse::<usize>().ok());
            if fields.len() == 4 {
                let unique = core::str::from_utf8(fields[3])
                    .ok()
                    .and_then(|field| field.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                let order = match cas_order.iter().position(|seen| *seen == unique) {
                    Some(order) => order,
                    None => {
                        cas_order.push(unique);
                        cas_order.len() - 1
                    }
                };
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(fields[0]);
                out.push(b' ');
                out.extend_from_slice(fields[1]);
                out.push(b' ');
                out.extend_from_slice(fields[2]);
                out.extend_from_slice(format!(" cas#{order}\r\n").as_bytes());
            } else {
                out.extend_from_slice(line);
            }
            if let Some(length) = length {
                let take = (length + 2).min(rest.len());
                out.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        } else if line.starts_with(b"VERSION ") {
            out.extend_from_slice(b"VERSION <version>\r\n");
        } else if let Some(stat) = line.strip_prefix(b"STAT ") {
            let name = stat.split(|b| *b == b' ').next().unwrap_or(stat);
            out.extend_from_slice(b"STAT ");
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// The CAS unique of the last `VALUE` line that has one in `reply`.
pub fn last_cas(reply: &[u8]) -> Option<u64> {
    let mut found = None;
    let mut rest = reply;
    while let Some(start) = rest.windows(6).position(|window| window == b"VALUE ") {
        let line_end = rest[start..]
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .map_or(rest.len(), |n| start + n);
        let fields: Vec<&[u8]> = rest[start + 6..line_end].split(|b| *b == b' ').collect();
        let length = fields
            .get(2)
            .and_then(|field| core::str::from_utf8(field).ok())
            .and_then(|field| field.parse::<usize>().ok())
            .unwrap_or(0);
        if fields.len() == 4 {
            found = core::str::from_utf8(fields[3])
                .ok()
                .and_then(|field| field.parse().ok());
        }
        let skip = (line_end + 2 + length + 2).min(rest.len());
        rest = &rest[skip..];
    }
    found
}

/// Compares two normalised answers to one step: equal, or (for `STAT` blocks) Flotilla's names
/// are memcached's in memcached's order. `Err` says how they differ.
pub fn compare(memcached: &[u8], flotilla: &[u8]) -> Result<(), String> {
    if memcached == flotilla {
        return Ok(());
    }
    let lines = |bytes: &[u8]| -> Vec<Vec<u8>> {
        bytes
            .split(|b| *b == b'\n')
            .map(|line| line.to_vec())
            .collect()
    };
    let reference = lines(memcached);
    let ours = lines(flotilla);
    let is_stat = |line: &Vec<u8>| line.starts_with(b"STAT ");
    if ours.iter().any(is_stat) && reference.iter().any(is_stat) {
        // Outside the STAT lines the answers must agree; inside, ours must be a subsequence.
        let outside = |all: &[Vec<u8>]| -> Vec<Vec<u8>> {
            all.iter().filter(|line| !is_stat(line)).cloned().collect()
        };
        if outside(&reference) != outside(&ours) {
            return Err(String::from("different lines around the statistics"));
        }
        let mut names = reference.iter().filter(|line| is_stat(line));
        for name in ours.iter().filter(|line| is_stat(line)) {
            if !names.any(|candidate| candidate == name) {
                return Err(format!(
                    "statistic {} is not memcached's, or out of memcached's order",
                    String::from_utf8_lossy(name).trim_end()
                ));
            }
        }
        return Ok(());
    }
    let first = reference
        .iter()
        .zip(ours.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(reference.len().min(ours.len()));
    Err(format!(
        "first difference at line {first}: memcached {:?}, flotilla {:?}",
        reference
            .get(first)
            .map(|line| String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned()),
        ours.get(first)
            .map(|line| String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_render_and_answers_normalise() {
        let step = &steps()[7];
        let bytes = step.render("p:", 77, 0);
        assert_eq!(bytes, b"cas p:1 3 0 2 77\r\nab\r\n");
        let reply = b"VALUE a 0 1 900\r\nx\r\nVALUE b 0 2 17\r\nyz\r\nVALUE a 0 1 900\r\nx\r\nEND\r\nVERSION 1.6.18\r\nSTAT pid 12\r\n";
        let mut order = Vec::new();
        assert_eq!(
            normalise(reply, &mut order),
            b"VALUE a 0 1 cas#0\r\nx\r\nVALUE b 0 2 cas#1\r\nyz\r\nVALUE a 0 1 cas#0\r\nx\r\nEND\r\nVERSION <version>\r\nSTAT pid\r\n"
        );
        assert_eq!(last_cas(reply), Some(900));
        assert_eq!(last_cas(b"VALUE a 0 3\r\n1 2\r\nEND\r\n"), None);
        assert!(compare(
            b"STAT a\r\nSTAT b\r\nSTAT c\r\nEND\r\n",
            b"STAT a\r\nSTAT c\r\nEND\r\n"
        )
        .is_ok());
        assert!(compare(
            b"STAT a\r\nSTAT b\r\nEND\r\n",
            b"STAT b\r\nSTAT a\r\nEND\r\n"
        )
        .is_err());
        assert!(compare(b"STORED\r\n", b"NOT_STORED\r\n").is_err());
    }
}
