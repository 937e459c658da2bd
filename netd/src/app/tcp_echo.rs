//! TCP echo (RFC 862): every byte goes back on the same connection.

use super::{AppContext, StreamService};
use smoltcp::socket::tcp;

/// The TCP echo server.
#[derive(Default)]
pub struct TcpEcho;

impl TcpEcho {
    /// An echo server (register it with [`super::Service::stream`]).
    pub fn new() -> Self {
        Self
    }
}

impl StreamService for TcpEcho {
    fn name(&self) -> &'static str {
        "tcp-echo"
    }

    fn on_data(
        &mut self,
        _context: &mut AppContext<'_>,
        _slot: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        let mut buffer = [0u8; 2048];
        // Bounded by the socket buffers: each round moves at least one byte or stops.
        while socket.can_recv() && socket.can_send() {
            let room = (socket.send_capacity() - socket.send_queue()).min(buffer.len());
            match socket.recv_slice(&mut buffer[..room]) {
                Ok(0) | Err(_) => break,
                Ok(length) => {
                    let _ = socket.send_slice(&buffer[..length]);
                }
            }
        }
        // The client finished sending and everything was echoed: finish our side.
        if !socket.may_recv() && socket.recv_queue() == 0 && socket.may_send() {
            socket.close();
        }
    }
}
