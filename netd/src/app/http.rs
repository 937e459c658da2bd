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

/// Largest request head accepted; longer ones get 431 and the connection closes.
const MAX_REQUEST: usize = 8192;

#[derive(Default)]
struct Connection {
    request: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    close_after: bool,
}

impl Connection {
    /// Request bytes the connection takes now (up to the limit; none once it closes).
    fn room(&self) -> usize {
        if self.close_after {
            0
        } else {
            MAX_REQUEST.saturating_sub(self.request.len())
        }
    }

    /// Takes what [`Self::room`] allows of `bytes`; returns how many.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.request.extend_from_slice(&bytes[..n]);
        n
    }

    /// Answers every complete request head (pipelining keeps order); returns how many.
    fn answer_complete(&mut self, context: &mut AppContext<'_>, host: &NetConfig) -> u64 {
        let mut answered = 0;
        while !self.close_after {
            let Some(end) = find(&self.request, b"\r\n\r\n") else {
                if self.request.len() >= MAX_REQUEST {
                    respond(
                        &mut self.output,
                        "431 Request Header Fields Too Large",
                        "text/plain",
                        b"too large\n",
                        true,
                    );
                    self.close_after = true;
                }
                break;
            };
            let head: Vec<u8> = self.request.drain(..end + 4).collect();
            self.close_after = answer(context, host, &head[..end], &mut self.output);
            answered += 1;
        }
        answered
    }
}

/// The fuzz target's entry (`docs/fuzzing.md`): `chunks` arriving on one connection, each taken
/// and answered as [`Http`] does with what its socket holds; returns everything answered.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub fn fuzz_connection(
    context: &mut AppContext<'_>,
    host: &NetConfig,
    chunks: &[&[u8]],
) -> Vec<u8> {
    let mut connection = Connection::default();
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() && connection.room() > 0 {
            let n = connection.take(rest);
            rest = &rest[n..];
            connection.answer_complete(context, host);
        }
    }
    connection.output
}

/// The HTTP server.
pub struct Http {
    /// The machine's addresses, shown in `/stats`.
    host: NetConfig,
    connections: Vec<Connection>,
    /// Requests answered.
    pub requests: u64,
}

impl Http {
    /// A server for the machine `host` describes (its addresses appear in `/stats`); register it
    /// with [`super::Service::stream`].
    pub fn new(host: &NetConfig) -> Self {
        Self {
            host: *host,
            connections: Vec::new(),
            requests: 0,
        }
    }

    fn connection(&mut self, slot: usize) -> &mut Connection {
        if self.connections.len() <= slot {
            self.connections.resize_with(slot + 1, Connection::default);
        }
        &mut self.connections[slot]
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
        *self.connection(slot) = Connection::default();
    }

    fn on_close(&mut self, _context: &mut AppContext<'_>, slot: usize) {
        *self.connection(slot) = Connection::default();
    }

    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        slot: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        let host = self.host;
        let connection = self.connection(slot);
        // Read what the client sent, up to the limit.
        while socket.can_recv() && connection.room() > 0 {
            let taken = socket.recv(|bytes| {
                let n = connection.take(bytes);
                (n, n)
            });
            if !matches!(taken, Ok(n) if n > 0) {
                break;
            }
        }
        let answered = connection.answer_complete(context, &host);
        // Write as much as the socket takes.
        if connection.sent < connection.output.len() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&connection.output[connection.sent..]) {
                connection.sent += n;
            }
        }
        if connection.sent == connection.output.len() {
            connection.output.clear();
            connection.sent = 0;
            if connection.close_after || (!socket.may_recv() && connection.request.is_empty()) {
                socket.close();
            }
        }
        // Otherwise the send buffer is full: the client's acknowledgements wake the path again.
        self.requests += answered;
    }
}
