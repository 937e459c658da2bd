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
        let mut answered = 0;
        let host = self.host;
        let connection = self.connection(slot);
        // Read what the client sent, up to the limit.
        while socket.can_recv() && connection.request.len() < MAX_REQUEST && !connection.close_after
        {
            let room = MAX_REQUEST - connection.request.len();
            let request = &mut connection.request;
            let taken = socket.recv(|bytes| {
                let n = bytes.len().min(room);
                request.extend_from_slice(&bytes[..n]);
                (n, n)
            });
            if !matches!(taken, Ok(n) if n > 0) {
                break;
            }
        }
        // Answer every complete request head (pipelining keeps order).
        while !connection.close_after {
            let Some(end) = find(&connection.request, b"\r\n\r\n") else {
                if connection.request.len() >= MAX_REQUEST {
                    respond(
                        &mut connection.output,
                        "431 Request Header Fields Too Large",
                        "text/plain",
                        b"too large\n",
                        true,
                    );
                    connection.close_after = true;
                }
                break;
            };
            let head: Vec<u8> = connection.request.drain(..end + 4).collect();
            connection.close_after = answer(context, &host, &head[..end], &mut connection.output);
            answered += 1;
        }
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
