//! memcached's text protocol as memcached 1.6 reads it: framing command lines, tokens, numbers
//! the way its `safe_strto*` functions read them, the commands and the exact error lines.
//!
//! Everything here is a pure function of bytes. What memcached 1.6.18 (Debian's) does was checked
//! command by command against the running server; the differential tests keep it so. Where that
//! differs from `doc/protocol.txt` this module follows the server, and says so:
//!
//! * Command lines end at `\n`; a `\r` before it is dropped (unless the line is that `\r` alone),
//!   and the line ends at its first NUL byte (memcached tokenises a C string).
//! * Tokens are separated by spaces only; a key may hold any other byte, control characters and
//!   tabs included (protocol.txt forbids them; memcached 1.6 stores them, and so does Flotilla).
//! * Numbers are C `strtoul`/`strtol` in base 10: leading white space, a sign, then digits, then
//!   the end or white space. Flags are read as 64-bit and truncated to 32 bits (`4294967296` is
//!   0); exptime and lengths are read as 64-bit and truncated to 32 bits (`4000000000` is
//!   negative, so expired).
//! * A line of more than 2048 bytes with no newline closes the connection unless it starts
//!   (after at most 100 spaces) with `get ` or `gets ` (a long multi-get); Flotilla bounds those
//!   at [`GET_LINE_LIMIT`] and closes beyond it.

use crate::peers::{StoreMode, MAX_KEY};

extern crate alloc;
use alloc::vec::Vec;
use core::fmt::Write;

/// Bytes of input without a newline after which memcached looks at what is coming.
pub const LINE_LIMIT: usize = 2048;

/// Longest `get`/`gets` line Flotilla buffers (memcached grows its buffer without bound).
pub const GET_LINE_LIMIT: usize = 64 * 1024;

/// memcached's default item size limit (`-I 1m`).
pub const ITEM_SIZE_MAX: usize = 1 << 20;

/// Bytes memcached 1.6 adds to key and value when it checks an item against
/// [`ITEM_SIZE_MAX`]: its 48-byte item header, the 8-byte CAS unique, the key's NUL and the
/// value's `\r\n` (measured: the largest value a 1-byte key takes is 1,048,516 bytes).
pub const ITEM_SIZE_OVERHEAD: usize = 59;

/// Most tokens memcached's tokeniser returns at once (the last one is the unsplit rest).
const MAX_TOKENS: usize = 24;

/// `ERROR`: an unknown command or a wrong number of tokens.
pub const ERROR: &[u8] = b"ERROR\r\n";
/// Malformed arguments.
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
/// A data block not followed by `\r\n`.
pub const BAD_DATA_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
/// A bad exptime on `touch`, `gat`, `gats` or `flush_all`.
pub const BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
/// A bad delta on `incr` or `decr`.
pub const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
/// `incr`/`decr` on an item that is not a number.
pub const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
/// `delete` with arguments other than `0` and `noreply`.
pub const DELETE_USAGE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
/// `stats detail` without a subcommand.
pub const STATS_DETAIL_USAGE: &[u8] = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n";
/// An item larger than [`ITEM_SIZE_MAX`].
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
/// A storage command the owner's memory cannot hold even after eviction.
pub const OUT_OF_MEMORY_STORING: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";
/// `incr`/`decr` that cannot allocate the longer number.
pub const OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory\r\n";
/// `shutdown` (memcached without `-A`).
pub const SHUTDOWN_DISABLED: &[u8] = b"ERROR: shutdown not enabled\r\n";

/// Where the next command line is in the unconsumed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A whole line: the command text is `input[..text_end]`, the next command starts at `next`.
    Line {
        /// End of the command text (before `\r\n`, or before the first NUL).
        text_end: usize,
        /// Start of what follows the line.
        next: usize,
    },
    /// No newline yet: read more.
    Incomplete,
    /// No newline in too many bytes: memcached closes the connection.
    Close,
}

/// Finds the first command line in `input` (memcached's `try_read_command_ascii`).
pub fn frame_line(input: &[u8]) -> Framed {
    let Some(newline) = input.iter().position(|byte| *byte == b'\n') else {
        if input.len() <= LINE_LIMIT {
            return Framed::Incomplete;
        }
        let spaces = input.iter().take_while(|byte| **byte == b' ').count();
        let rest = &input[spaces..];
        let multi_get = rest.starts_with(b"get ") || rest.starts_with(b"gets ");
        if spaces > 100 || !multi_get || input.len() > GET_LINE_LIMIT {
            return Framed::Close;
        }
        return Framed::Incomplete;
    };
    let mut end = newline;
    if newline > 1 && input[newline - 1] == b'\r' {
        end -= 1;
    }
    let text_end = input[..end]
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(end);
    Framed::Line {
        text_end,
        next: newline + 1,
    }
}

/// A command line split at spaces, as memcached's `tokenize_command` does with 24 tokens: up to
/// 23 tokens, and the unsplit rest when there are more.
struct Tokens<'a> {
    tokens: [&'a [u8]; MAX_TOKENS - 1],
    count: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut tokens = Tokens {
            tokens: [&[][..]; MAX_TOKENS - 1],
            count: 0,
        };
        for token in line.split(|byte| *byte == b' ').filter(|t| !t.is_empty()) {
            if tokens.count == MAX_TOKENS - 1 {
                break;
            }
            tokens.tokens[tokens.count] = token;
            tokens.count += 1;
        }
        tokens
    }

    /// memcached's `ntokens`: the tokens and the terminal one.
    fn ntokens(&self) -> usize {
        self.count + 1
    }

    fn get(&self, index: usize) -> &'a [u8] {
        if index < self.count {
            self.tokens[index]
        } else {
            &[]
        }
    }

    /// memcached's `set_noreply_maybe`: the last token is `noreply`.
    fn noreply(&self) -> bool {
        self.count > 0 && self.tokens[self.count - 1] == b"noreply"
    }
}

/// C's `isspace` in the C locale.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The part C's `strtoull` and `strtol` share: leading white space, an optional sign, decimal
/// digits. `Some((negative, magnitude, end))`, or `None` when no digit was read or the magnitude
/// does not fit 64 bits.
fn scan_decimal(text: &[u8]) -> Option<(bool, u64, usize)> {
    let mut at = text.iter().take_while(|byte| is_c_space(**byte)).count();
    let mut negative = false;
    if let Some(sign @ (b'+' | b'-')) = text.get(at) {
        negative = *sign == b'-';
        at += 1;
    }
    let digits = text[at..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let mut magnitude: u64 = 0;
    for byte in &text[at..at + digits] {
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(byte - b'0'))?;
    }
    Some((negative, magnitude, at + digits))
}

/// C's `strtoull(text, &end, 10)`: `Some((value, end))`, or `None` when no digit was read or the
/// magnitude overflows (`ERANGE`). A minus sign negates modulo 2^64, as C does.
fn strtoull(text: &[u8]) -> Option<(u64, usize)> {
    let (negative, magnitude, end) = scan_decimal(text)?;
    let value = if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    };
    Some((value, end))
}

/// C's `strtol(text, &end, 10)` with a 64-bit `long`: `None` for no digits or out of range.
fn strtol(text: &[u8]) -> Option<(i64, usize)> {
    let (negative, magnitude, end) = scan_decimal(text)?;
    let value = if negative {
        if magnitude > 1 << 63 {
            return None;
        }
        (magnitude as i64).wrapping_neg()
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some((value, end))
}

/// The end of a number must be the end of the text or white space.
fn ends_cleanly(text: &[u8], end: usize) -> bool {
    end == text.len() || is_c_space(text[end])
}

/// memcached's `safe_strtoull`: a 64-bit unsigned number; a minus sign is refused when the value
/// would be negative as a signed number (so `-1` is refused and `-0` is 0).
pub fn safe_strtoull(text: &[u8]) -> Option<u64> {
    let (value, end) = strtoull(text)?;
    if !ends_cleanly(text, end) {
        return None;
    }
    if (value as i64) < 0 && text.contains(&b'-') {
        return None;
    }
    Some(value)
}

/// memcached's `safe_strtoul` into a 32-bit variable: read as 64-bit, then truncated.
pub fn safe_strtoul(text: &[u8]) -> Option<u32> {
    safe_strtoull(text).map(|value| value as u32)
}

/// memcached's `safe_strtol` into a 32-bit variable: read as 64-bit, then truncated.
pub fn safe_strtol(text: &[u8]) -> Option<i32> {
    let (value, end) = strtol(text)?;
    ends_cleanly(text, end).then_some(value as i32)
}

/// The number stored in an item's data, as `incr`/`decr` read it: the data ends at its first NUL
/// and is followed (in memcached's memory) by `\r\n`, so trailing white space is allowed.
pub fn item_number(data: &[u8]) -> Option<u64> {
    let data = &data[..data.iter().position(|b| *b == 0).unwrap_or(data.len())];
    if data.is_empty() {
        return None;
    }
    safe_strtoull(data)
}

/// The largest value an item with a `key_length`-byte key and these client flags may hold
/// (memcached stores flags in 4 more bytes when they are not 0).
pub fn max_value_length(key_length: usize, flags: u32) -> usize {
    let flags_bytes = if flags == 0 { 0 } else { 4 };
    ITEM_SIZE_MAX.saturating_sub(ITEM_SIZE_OVERHEAD + key_length + flags_bytes)
}

/// Which retrieval command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retrieval {
    /// `gets`/`gats`: `VALUE` lines carry the CAS unique.
    pub cas: bool,
    /// `gat`/`gats`: the new exptime.
    pub touch: Option<i32>,
}

/// The keys of a retrieval command: every space-separated token of `text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys<'a> {
    /// The part of the line that holds the keys.
    pub text: &'a [u8],
}

impl<'a> Keys<'a> {
    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.text
            .split(|byte| *byte == b' ')
            .filter(|key| !key.is_empty())
    }
}

/// What `stats` was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsRequest {
    /// `stats`: the general block, summed over the living cores.
    General,
    /// `stats reset`.
    Reset,
    /// `stats settings`.
    Settings,
    /// `stats flotilla`: Flotilla's own counters (remote requests, memory budget), summed.
    Flotilla,
}

/// A command line that parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets`/`gat`/`gats` (and memcached's old `bget`).
    Retrieve {
        /// Which one.
        kind: Retrieval,
        /// The keys (each at most 250 bytes; possibly none for `gat`).
        keys: Keys<'a>,
    },
    /// A storage command; a data block of `bytes` bytes and `\r\n` follows the line.
    Store {
        /// Which one (with the CAS unique for `cas`).
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Expiration time as sent.
        exptime: i32,
        /// Length of the data block.
        bytes: usize,
        /// No reply wanted.
        noreply: bool,
    },
    /// `delete <key> [0] [noreply]`.
    Delete {
        /// The key.
        key: &'a [u8],
        /// No reply wanted.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        /// The key.
        key: &'a [u8],
        /// The new expiration time.
        exptime: i32,
        /// No reply wanted.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Arithmetic {
        /// The key.
        key: &'a [u8],
        /// `incr` rather than `decr`.
        increment: bool,
        /// The amount.
        delta: u64,
        /// No reply wanted.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll {
        /// Delay as sent (0 when absent).
        delay: i32,
        /// No reply wanted.
        noreply: bool,
    },
    /// `stats [...]`.
    Stats(StatsRequest),
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]` (accepted; Flotilla has no log levels to change).
    Verbosity {
        /// No reply wanted.
        noreply: bool,
    },
    /// `quit`: close once the replies before it are sent.
    Quit,
    /// `mn`: the meta no-op, answered `MN`.
    MetaNoop,
}

/// Why a command line is not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Answer this line (unless `noreply` was given and memcached honours it for this error).
    Reply {
        /// The whole reply line.
        line: &'static [u8],
        /// The client asked for no reply.
        noreply: bool,
    },
    /// Close the connection without an answer (an HTTP request line).
    Close,
}

fn error(line: &'static [u8]) -> Rejection {
    Rejection::Reply {
        line,
        noreply: false,
    }
}

/// Parses one command line (the text [`frame_line`] found) as memcached 1.6's
/// `process_command_ascii` does.
pub fn parse(line: &[u8]) -> Result<Command<'_>, Rejection> {
    let tokens = Tokens::new(line);
    let ntokens = tokens.ntokens();
    let name = tokens.get(0);
    if ntokens < 2 || name.len() < 2 {
        return Err(error(ERROR));
    }
    let want = |valid: bool| if valid { Ok(()) } else { Err(error(ERROR)) };
    match name {
        b"mn" => Ok(Command::MetaNoop),
        b"get" | b"gets" | b"gat" | b"gats" | b"bget" => {
            want(ntokens >= 3)?;
            retrieval(line, &tokens, name)
        }
        b"set" | b"add" | b"append" | b"replace" | b"prepend" => {
            want(ntokens == 6 || ntokens == 7)?;
            let mode = match name {
                b"set" => StoreMode::Set,
                b"add" => StoreMode::Add,
                b"append" => StoreMode::Append,
                b"replace" => StoreMode::Replace,
                _ => StoreMode::Prepend,
            };
            storage(&tokens, mode)
        }
        b"cas" => {
            want(ntokens == 7 || ntokens == 8)?;
            storage(&tokens, StoreMode::Cas(0))
        }
        b"incr" | b"decr" => {
            want(ntokens == 4 || ntokens == 5)?;
            let noreply = tokens.noreply();
            let key = tokens.get(1);
            if key.len() > MAX_KEY {
                return Err(Rejection::Reply {
                    line: BAD_FORMAT,
                    noreply,
                });
            }
            let delta = safe_strtoull(tokens.get(2)).ok_or(Rejection::Reply {
                line: BAD_DELTA,
                noreply,
            })?;
            Ok(Command::Arithmetic {
                key,
                increment: name == b"incr",
                delta,
                noreply,
            })
        }
        b"delete" => {
            want((3..=5).contains(&ntokens))?;
            let mut noreply = false;
            if ntokens > 3 {
                let hold_is_zero = tokens.get(2) == b"0";
                noreply = tokens.noreply();
                let valid = (ntokens == 4 && (hold_is_zero || noreply))
                    || (ntokens == 5 && hold_is_zero && noreply);
                if !valid {
                    return Err(Rejection::Reply {
                        line: DELETE_USAGE,
                        noreply,
                    });
                }
            }
            let key = tokens.get(1);
            if key.len() > MAX_KEY {
                return Err(Rejection::Reply {
                    line: BAD_FORMAT,
                    noreply,
                });
            }
            Ok(Command::Delete { key, noreply })
        }
        b"touch" => {
            want(ntokens == 4 || ntokens == 5)?;
            let noreply = tokens.noreply();
            let key = tokens.get(1);
            if key.len() > MAX_KEY {
                return Err(Rejection::Reply {
                    line: BAD_FORMAT,
                    noreply,
                });
            }
            let exptime = safe_strtol(tokens.get(2)).ok_or(Rejection::Reply {
                line: BAD_EXPTIME,
                noreply,
            })?;
            Ok(Command::Touch {
                key,
                exptime,
                noreply,
            })
        }
        b"stats" => stats(&tokens),
        b"shutdown" => Err(error(SHUTDOWN_DISABLED)),
        b"flush_all" => {
            want((2..=4).contains(&ntokens))?;
            let noreply = tokens.noreply();
            let mut delay = 0;
            if ntokens != if noreply { 3 } else { 2 } {
                delay = safe_strtol(tokens.get(1)).ok_or(Rejection::Reply {
                    line: BAD_EXPTIME,
                    noreply,
                })?;
            }
            Ok(Command::FlushAll { delay, noreply })
        }
        b"version" => Ok(Command::Version),
        b"quit" => Ok(Command::Quit),
        b"verbosity" => {
            want(ntokens == 3 || ntokens == 4)?;
            let noreply = tokens.noreply();
            safe_strtoul(tokens.get(1)).ok_or(Rejection::Reply {
                line: BAD_FORMAT,
                noreply,
            })?;
            Ok(Command::Verbosity { noreply })
        }
        _ => {
            // memcached closes a connection that sends it an HTTP request line.
            if tokens.get(tokens.count - 1).starts_with(b"HTTP/") {
                Err(Rejection::Close)
            } else {
                Err(error(ERROR))
            }
        }
    }
}

fn retrieval<'a>(
    line: &'a [u8],
    tokens: &Tokens<'a>,
    name: &[u8],
) -> Result<Command<'a>, Rejection> {
    let touch_command = name == b"gat" || name == b"gats";
    let mut first_key = 1;
    let mut touch = None;
    if touch_command {
        touch = Some(safe_strtol(tokens.get(1)).ok_or(error(BAD_EXPTIME))?);
        first_key = 2;
    }
    // The keys are the rest of the line from the first key token (there may be more than the
    // tokeniser's 23 tokens).
    let start = if first_key < tokens.count {
        let token = tokens.get(first_key);
        token.as_ptr() as usize - line.as_ptr() as usize
    } else {
        line.len()
    };
    let keys = Keys {
        text: &line[start..],
    };
    if keys.iter().any(|key| key.len() > MAX_KEY) {
        return Err(error(BAD_FORMAT));
    }
    Ok(Command::Retrieve {
        kind: Retrieval {
            cas: name == b"gets" || name == b"gats",
            touch,
        },
        keys,
    })
}

fn storage<'a>(tokens: &Tokens<'a>, mode: StoreMode) -> Result<Command<'a>, Rejection> {
    let noreply = tokens.noreply();
    let bad = Rejection::Reply {
        line: BAD_FORMAT,
        noreply,
    };
    let key = tokens.get(1);
    if key.len() > MAX_KEY {
        return Err(bad);
    }
    let flags = safe_strtoul(tokens.get(2)).ok_or(bad)?;
    let exptime = safe_strtol(tokens.get(3)).ok_or(bad)?;
    let bytes = safe_strtol(tokens.get(4)).ok_or(bad)?;
    let mode = match mode {
        StoreMode::Cas(_) => StoreMode::Cas(safe_strtoull(tokens.get(5)).ok_or(bad)?),
        other => other,
    };
    if !(0..=i32::MAX - 2).contains(&bytes) {
        return Err(bad);
    }
    Ok(Command::Store {
        mode,
        key,
        flags,
        exptime,
        bytes: bytes as usize,
        noreply,
    })
}

fn stats<'a>(tokens: &Tokens<'a>) -> Result<Command<'a>, Rejection> {
    if tokens.ntokens() == 2 {
        return Ok(Command::Stats(StatsRequest::General));
    }
    match tokens.get(1) {
        b"reset" => Ok(Command::Stats(StatsRequest::Reset)),
        b"settings" => Ok(Command::Stats(StatsRequest::Settings)),
        b"flotilla" => Ok(Command::Stats(StatsRequest::Flotilla)),
        b"detail" if tokens.ntokens() < 4 => Err(error(STATS_DETAIL_USAGE)),
        // items, slabs, sizes, conns, detail on|off|dump, cachedump: not kept by Flotilla.
        _ => Err(error(ERROR)),
    }
}

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n`.
pub fn value_line(out: &mut Vec<u8>, key: &[u8], flags: u32, length: usize, cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    let mut numbers = heapless::String::<64>::new();
    let _ = match cas {
        Some(cas) => write!(numbers, " {flags} {length} {cas}\r\n"),
        None => write!(numbers, " {flags} {length}\r\n"),
    };
    out.extend_from_slice(numbers.as_bytes());
}

/// Appends a number and `\r\n` (the reply to `incr`/`decr`).
pub fn number_line(out: &mut Vec<u8>, value: u64) {
    let mut text = heapless::String::<24>::new();
    let _ = write!(text, "{value}\r\n");
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    fn reply(line: &'static [u8]) -> Rejection {
        Rejection::Reply {
            line,
            noreply: false,
        }
    }

    fn quiet(line: &'static [u8]) -> Rejection {
        Rejection::Reply {
            line,
            noreply: true,
        }
    }

    #[test]
    fn lines_are_framed_as_memcached_frames_them() {
        assert_eq!(
            frame_line(b"get a\r\nrest"),
            Framed::Line {
                text_end: 5,
                next: 7
            }
        );
        assert_eq!(
            frame_line(b"get a\nrest"),
            Framed::Line {
                text_end: 5,
                next: 6
            }
        );
        // A lone "\r\n" keeps its "\r" (memcached answers ERROR either way).
        assert_eq!(
            frame_line(b"\r\n"),
            Framed::Line {
                text_end: 1,
                next: 2
            }
        );
        // The text ends at a NUL.
        assert_eq!(
            frame_line(b"set a 0 0 1\0 junk\r\n"),
            Framed::Line {
                text_end: 11,
                next: 19
            }
        );
        assert_eq!(frame_line(b"get a"), Framed::Incomplete);
        assert_eq!(frame_line(&[b'x'; 2048]), Framed::Incomplete);
        assert_eq!(frame_line(&[b'x'; 2049]), Framed::Close);
        let mut long_get = b"get ".to_vec();
        long_get.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(frame_line(&long_get), Framed::Incomplete);
        let mut spaced = vec![b' '; 101];
        spaced.extend_from_slice(&long_get);
        assert_eq!(frame_line(&spaced), Framed::Close);
        long_get.extend(std::iter::repeat_n(b'a', GET_LINE_LIMIT));
        assert_eq!(frame_line(&long_get), Framed::Close);
    }

    #[test]
    fn numbers_read_as_c_reads_them() {
        assert_eq!(safe_strtoull(b"0"), Some(0));
        assert_eq!(safe_strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(safe_strtoull(b"18446744073709551616"), None);
        assert_eq!(safe_strtoull(b"-1"), None);
        assert_eq!(safe_strtoull(b"-0"), Some(0));
        assert_eq!(safe_strtoull(b"+5"), Some(5));
        assert_eq!(safe_strtoull(b"\t7"), Some(7));
        assert_eq!(safe_strtoull(b"7\tx"), Some(7));
        assert_eq!(safe_strtoull(b"7x"), None);
        assert_eq!(safe_strtoull(b""), None);
        assert_eq!(safe_strtoull(b"-"), None);
        assert_eq!(safe_strtoul(b"4294967295"), Some(u32::MAX));
        assert_eq!(safe_strtoul(b"4294967296"), Some(0));
        assert_eq!(safe_strtoul(b"18446744073709551615"), Some(u32::MAX));
        assert_eq!(safe_strtoul(b"-1"), None);
        assert_eq!(safe_strtol(b"-1"), Some(-1));
        assert_eq!(safe_strtol(b"2147483647"), Some(i32::MAX));
        assert_eq!(safe_strtol(b"4000000000"), Some(-294_967_296));
        assert_eq!(safe_strtol(b"-3000000000"), Some(1_294_967_296));
        assert_eq!(safe_strtol(b"9223372036854775808"), None);
        assert_eq!(safe_strtol(b"-9223372036854775808"), Some(0));
        assert_eq!(safe_strtol(b"1x"), None);
        assert_eq!(item_number(b"12 "), Some(12));
        assert_eq!(item_number(b" 12"), Some(12));
        assert_eq!(item_number(b"12a"), None);
        assert_eq!(item_number(b""), None);
        assert_eq!(item_number(b"  "), None);
        assert_eq!(item_number(b"1\0junk"), Some(1));
    }

    #[test]
    fn the_item_size_limit_matches_memcached() {
        assert_eq!(max_value_length(1, 0), 1_048_516);
        assert_eq!(max_value_length(250, 0), 1_048_267);
        assert_eq!(max_value_length(1, 1), 1_048_512);
    }

    #[test]
    fn storage_commands_parse_and_reject_like_memcached() {
        assert_eq!(
            parse(b"set k 1 0 5 noreply"),
            Ok(Command::Store {
                mode: StoreMode::Set,
                key: b"k",
                flags: 1,
                exptime: 0,
                bytes: 5,
                noreply: true
            })
        );
        // An extra token that is not noreply is ignored.
        assert!(matches!(
            parse(b"set k 0 0 1 foo"),
            Ok(Command::Store { noreply: false, .. })
        ));
        assert_eq!(parse(b"set k 0 0"), Err(reply(ERROR)));
        assert_eq!(parse(b"set k 0 0 1 2 3"), Err(reply(ERROR)));
        assert_eq!(parse(b"set k abc 0 1"), Err(reply(BAD_FORMAT)));
        assert_eq!(parse(b"set k -1 0 1"), Err(reply(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 abc 1"), Err(reply(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 0 -1"), Err(reply(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 0 1x"), Err(reply(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 0 -1 noreply"), Err(quiet(BAD_FORMAT)));
        let long_key = [b'k'; 251];
        let mut line = b"set ".to_vec();
        line.extend_from_slice(&long_key);
        line.extend_from_slice(b" 0 0 1");
        assert_eq!(parse(&line), Err(reply(BAD_FORMAT)));
        assert_eq!(
            parse(b"cas k 0 0 1 77"),
            Ok(Command::Store {
                mode: StoreMode::Cas(77),
                key: b"k",
                flags: 0,
                exptime: 0,
                bytes: 1,
                noreply: false
            })
        );
        assert_eq!(parse(b"cas k 0 0 1"), Err(reply(ERROR)));
        assert_eq!(parse(b"cas k 0 0 1 abc"), Err(reply(BAD_FORMAT)));
        for name in ["add", "replace", "append", "prepend"] {
            let line = std::format!("{name} k 0 0 1");
            assert!(matches!(parse(line.as_bytes()), Ok(Command::Store { .. })));
        }
        assert_eq!(parse(b"Set a 0 0 1"), Err(reply(ERROR)));
    }

    #[test]
    fn retrieval_and_other_commands_parse_like_memcached() {
        let Ok(Command::Retrieve { kind, keys }) = parse(b"gets a  b c") else {
            panic!()
        };
        assert_eq!(
            kind,
            Retrieval {
                cas: true,
                touch: None
            }
        );
        assert_eq!(
            keys.iter().collect::<std::vec::Vec<_>>(),
            [b"a", b"b", b"c"]
        );
        let Ok(Command::Retrieve { kind, keys }) = parse(b"gat 10") else {
            panic!()
        };
        assert_eq!(kind.touch, Some(10));
        assert_eq!(keys.iter().count(), 0);
        assert_eq!(parse(b"gat abc k"), Err(reply(BAD_EXPTIME)));
        assert_eq!(parse(b"get"), Err(reply(ERROR)));
        assert_eq!(parse(b"gat"), Err(reply(ERROR)));
        let mut line = b"get a ".to_vec();
        line.extend_from_slice(&[b'k'; 251]);
        assert_eq!(parse(&line), Err(reply(BAD_FORMAT)));
        // More keys than the tokeniser's 23 tokens.
        let many: std::string::String = (0..40).map(|n| std::format!(" k{n}")).collect();
        let line = std::format!("get{many}");
        let Ok(Command::Retrieve { keys, .. }) = parse(line.as_bytes()) else {
            panic!()
        };
        assert_eq!(keys.iter().count(), 40);
        assert!(matches!(parse(b"bget a"), Ok(Command::Retrieve { .. })));

        assert_eq!(
            parse(b"delete a 0"),
            Ok(Command::Delete {
                key: b"a",
                noreply: false
            })
        );
        assert_eq!(
            parse(b"delete a 0 noreply"),
            Ok(Command::Delete {
                key: b"a",
                noreply: true
            })
        );
        assert_eq!(parse(b"delete a 5"), Err(reply(DELETE_USAGE)));
        assert_eq!(parse(b"delete a 0 0"), Err(reply(DELETE_USAGE)));
        assert_eq!(parse(b"delete a 0 0 0"), Err(reply(ERROR)));
        assert_eq!(parse(b"delete"), Err(reply(ERROR)));
        assert_eq!(parse(b"incr a"), Err(reply(ERROR)));
        assert_eq!(parse(b"incr a -1"), Err(reply(BAD_DELTA)));
        assert_eq!(parse(b"incr a 18446744073709551616"), Err(reply(BAD_DELTA)));
        assert_eq!(
            parse(b"decr a 5 noreply"),
            Ok(Command::Arithmetic {
                key: b"a",
                increment: false,
                delta: 5,
                noreply: true
            })
        );
        assert_eq!(parse(b"touch a abc"), Err(reply(BAD_EXPTIME)));
        assert_eq!(parse(b"touch a"), Err(reply(ERROR)));
        assert_eq!(
            parse(b"flush_all"),
            Ok(Command::FlushAll {
                delay: 0,
                noreply: false
            })
        );
        assert_eq!(
            parse(b"flush_all noreply"),
            Ok(Command::FlushAll {
                delay: 0,
                noreply: true
            })
        );
        assert_eq!(
            parse(b"flush_all 10 noreply"),
            Ok(Command::FlushAll {
                delay: 10,
                noreply: true
            })
        );
        assert_eq!(
            parse(b"flush_all 0 0"),
            Ok(Command::FlushAll {
                delay: 0,
                noreply: false
            })
        );
        assert_eq!(parse(b"flush_all abc"), Err(reply(BAD_EXPTIME)));
        assert_eq!(parse(b"flush_all 1 2 3"), Err(reply(ERROR)));
        assert_eq!(parse(b"verbosity"), Err(reply(ERROR)));
        assert_eq!(parse(b"verbosity x"), Err(reply(BAD_FORMAT)));
        assert_eq!(
            parse(b"verbosity 1 2"),
            Ok(Command::Verbosity { noreply: false })
        );
        assert_eq!(parse(b"stats"), Ok(Command::Stats(StatsRequest::General)));
        assert_eq!(
            parse(b"stats reset"),
            Ok(Command::Stats(StatsRequest::Reset))
        );
        assert_eq!(parse(b"stats detail"), Err(reply(STATS_DETAIL_USAGE)));
        assert_eq!(parse(b"stats foo"), Err(reply(ERROR)));
        assert_eq!(parse(b"version extra"), Ok(Command::Version));
        assert_eq!(parse(b"quit extra"), Ok(Command::Quit));
        assert_eq!(parse(b"mn"), Ok(Command::MetaNoop));
        assert_eq!(parse(b"shutdown"), Err(reply(SHUTDOWN_DISABLED)));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(Rejection::Close));
        assert_eq!(parse(b"x"), Err(reply(ERROR)));
        assert_eq!(parse(b"ab"), Err(reply(ERROR)));
        assert_eq!(parse(b""), Err(reply(ERROR)));
        assert_eq!(parse(b"\r"), Err(reply(ERROR)));
    }

    #[test]
    fn replies_are_formatted_like_memcached() {
        let mut out = vec![];
        value_line(&mut out, b"key", 7, 3, None);
        value_line(&mut out, b"k", 0, 0, Some(u64::MAX));
        number_line(&mut out, 42);
        assert_eq!(
            out,
            b"VALUE key 7 3\r\nVALUE k 0 0 18446744073709551615\r\n42\r\n"
        );
    }
}
