//! HTTP/1.1 on one port: a static page naming the machine, and `/stats` with every core's
//! counters as JSON (the latest snapshot the kernel gathered; serving it asks for a fresh one).

use super::{AppContext, StreamService};
use crate::config::NetConfig;
use crate::stats::write_json;
use core::fmt::Write;
use smoltcp::socket::tcp;

extern crate alloc;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest request head accepted (or the connection's receive buffer, if smaller); longer ones
/// get 431 and the connection closes.
const MAX_REQUEST: usize = 8192;

/// Responses one connection answers per visit at most (pipelining); the rest wait in its socket.
const PIPELINE_PER_VISIT: usize = 64;

/// Bytes of responses the server holds beyond what the sockets took, over every connection: a
/// connection whose next response would pass it waits (is not read) until others drain.
pub const OUTPUT_BUDGET: usize = 4 << 20;

/// Output kept beyond this capacity is given back to the heap once sent.
const KEEP_CAPACITY: usize = 4096;

/// One connection's state: the response the socket has not taken yet (at most one: a connection
/// with output pending is not read, so a client that never reads stops being read).
#[derive(Default)]
struct Connection {
    output: Vec<u8>,
    sent: usize,
    close_after: bool,
    /// Waiting for the server's output budget.
    waiting: bool,
}

impl Connection {
    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }
}

/// What the start of a connection's unread bytes holds, `limit` being the most a request head
/// may take: the one rule the server and the fuzz target share.
enum Head {
    /// A whole head: its length without the blank line that ends it (`len + 4` bytes consumed).
    Complete(usize),
    /// No end within `limit` bytes: answered 431, and the connection closes.
    TooLarge,
    /// Not all there yet.
    Partial,
}

fn next_head(unread: &[u8], limit: usize) -> Head {
    let window = &unread[..unread.len().min(limit)];
    match find(window, b"\r\n\r\n") {
        Some(end) => Head::Complete(end),
        None if window.len() >= limit => Head::TooLarge,
        None => Head::Partial,
    }
}

fn too_large(output: &mut Vec<u8>) {
    respond(
        output,
        "431 Request Header Fields Too Large",
        "text/plain",
        b"too large\n",
        true,
    );
}

/// The fuzz target's entry (`docs/fuzzing.md`): `chunks` arriving on one connection, each head
/// found and answered by the rules [`Http`] uses on its socket; returns everything answered.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub fn fuzz_connection(
    context: &mut AppContext<'_>,
    host: &NetConfig,
    chunks: &[&[u8]],
) -> Vec<u8> {
    let mut unread = Vec::new();
    let mut output = Vec::new();
    for chunk in chunks {
        unread.extend_from_slice(chunk);
        loop {
            match next_head(&unread, MAX_REQUEST) {
                Head::Complete(end) => {
                    let head: Vec<u8> = unread.drain(..end + 4).collect();
                    if answer(context, host, &head[..end], &mut output) {
                        return output;
                    }
                }
                Head::TooLarge => {
                    too_large(&mut output);
                    return output;
                }
                Head::Partial => break,
            }
        }
    }
    output
}

/// The HTTP server.
pub struct Http {
    /// The machine's addresses, shown in `/stats`.
    host: NetConfig,
    connections: Vec<Connection>,
    /// Bytes of responses held over every connection (bounded by [`OUTPUT_BUDGET`]).
    held: usize,
    /// Connections waiting for the output budget.
    waiting: usize,
    /// Requests answered.
    pub requests: u64,
    /// Times a connection had to wait for the output budget.
    pub budget_waits: u64,
}

impl Http {
    /// A server for the machine `host` describes (its addresses appear in `/stats`); register it
    /// with [`super::Service::stream`].
    pub fn new(host: &NetConfig) -> Self {
        Self {
            host: *host,
            connections: Vec::new(),
            held: 0,
            waiting: 0,
            requests: 0,
            budget_waits: 0,
        }
    }

    fn connection(&mut self, slot: usize) -> &mut Connection {
        if self.connections.len() <= slot {
            self.connections.resize_with(slot + 1, Connection::default);
        }
        &mut self.connections[slot]
    }

    /// Forgets connection `slot`, giving its output and waiting place back.
    fn reset(&mut self, slot: usize) {
        let connection = core::mem::take(self.connection(slot));
        self.held -= connection.pending();
        if connection.waiting {
            self.waiting -= 1;
        }
    }

    /// Bytes of responses held now (for tests).
    pub fn held(&self) -> usize {
        self.held
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn respond(output: &mut Vec<u8>, status: &str, content_type: &str, body: &[u8], close: bool) {
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 {status}\r\nServer: flotilla\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    output.extend_from_slice(head.as_bytes());
    output.extend_from_slice(body);
}

/// Answers one complete request head; returns whether the connection closes afterwards.
fn answer(
    context: &mut AppContext<'_>,
    host: &NetConfig,
    head: &[u8],
    output: &mut Vec<u8>,
) -> bool {
    let text = core::str::from_utf8(head).unwrap_or("");
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut close = version != "HTTP/1.1";
    for header in lines {
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    if !version.starts_with("HTTP/1.") || target.is_empty() || parts.next().is_some() {
        respond(
            output,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            true,
        );
        return true;
    }
    if method != "GET" && method != "HEAD" {
        respond(
            output,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            close,
        );
        return close;
    }
    let path = target.split('?').next().unwrap_or("");
    let mut body = String::new();
    let (status, content_type) = match path {
        "/" | "/index.html" => {
            let _ = write!(
                body,
                "<!DOCTYPE html>\n<html><head><title>{0}</title></head><body>\n<h1>{0}</h1>\n\
                 <p>Flotilla multikernel network OS: {1} cores, this answer from core {2}, up {3}.{4:03} s.</p>\n\
                 <p><a href=\"/stats\">/stats</a>: every core's counters as JSON.</p>\n</body></html>\n",
                context.hostname,
                context.core_count,
                context.core,
                context.uptime_ms / 1000,
                context.uptime_ms % 1000,
            );
            ("200 OK", "text/html; charset=utf-8")
        }
        "/stats" => {
            write_json(host, &context.stats, &mut body);
            body.push('\n');
            *context.stats_wanted = true;
            ("200 OK", "application/json")
        }
        _ => {
            body.push_str("not found\n");
            ("404 Not Found", "text/plain")
        }
    };
    if method == "HEAD" {
        let length = body.len();
        let mut head_only = Vec::new();
        respond(&mut head_only, status, content_type, body.as_bytes(), close);
        head_only.truncate(head_only.len() - length);
        output.extend_from_slice(&head_only);
    } else {
        respond(output, status, content_type, body.as_bytes(), close);
    }
    close
}

impl StreamService for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn on_open(&mut self, _context: &mut AppContext<'_>, slot: usize) {
        self.reset(slot);
    }

    fn on_close(&mut self, context: &mut AppContext<'_>, slot: usize) {
        let had = self.connection(slot).pending();
        self.reset(slot);
        if had > 0 && self.waiting > 0 {
            // Budget came back: the connections waiting for it are visited again.
            *context.run_again = true;
        }
    }

    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        slot: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        let host = self.host;
        let _ = self.connection(slot);
        let mut head = [0u8; MAX_REQUEST];
        let limit = MAX_REQUEST.min(socket.recv_capacity());
        let mut answered = 0u64;
        let mut released = false;
        loop {
            let Self {
                connections,
                held,
                waiting,
                budget_waits,
                ..
            } = &mut *self;
            let connection = &mut connections[slot];
            // Write what is pending; a connection with output left is not read further.
            if connection.pending() > 0 {
                if let Ok(n) = socket.send_slice(&connection.output[connection.sent..]) {
                    connection.sent += n;
                    *held -= n;
                    released |= n > 0;
                }
                if connection.pending() > 0 {
                    break;
                }
                connection.sent = 0;
                if connection.output.capacity() > KEEP_CAPACITY {
                    connection.output = Vec::new();
                } else {
                    connection.output.clear();
                }
            }
            if connection.close_after || answered >= PIPELINE_PER_VISIT as u64 {
                break;
            }
            // The next request head, read in place from the socket (nothing is copied out of it
            // until a whole head is there).
            let queued = socket.recv_queue().min(limit);
            let seen = socket.peek_slice(&mut head[..queued]).unwrap_or(0);
            let end = match next_head(&head[..seen], limit) {
                Head::Complete(end) => end,
                Head::TooLarge => {
                    too_large(&mut connection.output);
                    *held += connection.output.len();
                    connection.close_after = true;
                    continue;
                }
                Head::Partial => break,
            };
            if *held >= OUTPUT_BUDGET {
                // Every connection's output together is at its bound: wait (unread) until some
                // drains.
                if !connection.waiting {
                    connection.waiting = true;
                    *waiting += 1;
                    *budget_waits += 1;
                }
                break;
            }
            if connection.waiting {
                connection.waiting = false;
                *waiting -= 1;
            }
            let mut consumed = 0;
            while consumed < end + 4 {
                match socket.recv(|bytes| {
                    let n = bytes.len().min(end + 4 - consumed);
                    (n, n)
                }) {
                    Ok(n) if n > 0 => consumed += n,
                    _ => break,
                }
            }
            let before = connection.output.len();
            connection.close_after = answer(context, &host, &head[..end], &mut connection.output);
            *held += connection.output.len() - before;
            answered += 1;
        }
        let connection = &mut self.connections[slot];
        if connection.pending() == 0
            && (connection.close_after || (!socket.may_recv() && socket.recv_queue() == 0))
        {
            socket.close();
        }
        // Otherwise the send buffer is full: the client's acknowledgements make the connection
        // ready again.
        self.requests += answered;
        if released && self.waiting > 0 {
            *context.run_again = true;
        }
    }
}
