//! TCP echo (RFC 862): every byte goes back on the same connection.

use super::{AppContext, Application};
use crate::classify::PathKey;
use smoltcp::socket::tcp;

/// The TCP echo server.
pub struct TcpEcho {
    port: u16,
}

impl TcpEcho {
    /// An echo server on `port`.
    pub fn new(port: u16) -> Self {
        Self { port }
    }
}

impl Application for TcpEcho {
    fn name(&self) -> &'static str {
        "tcp-echo"
    }

    fn endpoint(&self) -> PathKey {
        PathKey::Tcp(self.port)
    }

    fn on_tcp(
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
