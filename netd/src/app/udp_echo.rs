//! UDP echo (RFC 862): every datagram goes back to its sender.

use super::{AppContext, Application};
use crate::classify::PathKey;
use smoltcp::socket::udp;

/// Most datagrams echoed per run, so one path cannot hold the core.
const PER_RUN: usize = 256;

/// The UDP echo server.
pub struct UdpEcho {
    port: u16,
    /// Datagrams echoed.
    pub echoed: u64,
}

impl UdpEcho {
    /// An echo server on `port`.
    pub fn new(port: u16) -> Self {
        Self { port, echoed: 0 }
    }
}

impl Application for UdpEcho {
    fn name(&self) -> &'static str {
        "udp-echo"
    }

    fn endpoint(&self) -> PathKey {
        PathKey::Udp(self.port)
    }

    fn answers_in_place(&self) -> bool {
        true
    }

    fn on_datagram(&mut self, _payload: &mut [u8], length: usize) -> Option<usize> {
        // The reply is the request: its bytes are already where the reply goes.
        self.echoed += 1;
        Some(length)
    }

    /// Used only if the fast path is off (it is on for echo): the socket-based echo.
    fn on_udp(&mut self, context: &mut AppContext<'_>, socket: &mut udp::Socket<'static>) {
        let mut buffer = [0u8; 1500];
        for _ in 0..PER_RUN {
            if !socket.can_send() {
                // Leave the rest queued in the socket; run again once TX has drained.
                *context.run_again = socket.can_recv();
                return;
            }
            let Ok((length, metadata)) = socket.recv_slice(&mut buffer) else {
                return;
            };
            if socket
                .send_slice(&buffer[..length], metadata.endpoint)
                .is_ok()
            {
                self.echoed += 1;
            }
        }
        *context.run_again = socket.can_recv();
    }
}
