//! UDP echo (RFC 862): every datagram goes back to its sender.

use super::{AppContext, Datagram, DatagramService};

/// The UDP echo server.
#[derive(Default)]
pub struct UdpEcho {
    /// Datagrams echoed.
    pub echoed: u64,
}

impl UdpEcho {
    /// An echo server (register it on a port with [`super::Service::datagram`]).
    pub fn new() -> Self {
        Self::default()
    }
}

impl DatagramService for UdpEcho {
    fn name(&self) -> &'static str {
        "udp-echo"
    }

    fn on_datagram(
        &mut self,
        _context: &mut AppContext<'_>,
        datagram: Datagram<'_>,
    ) -> Option<usize> {
        // The reply is the request: its bytes are already where the reply goes.
        self.echoed += 1;
        Some(datagram.length)
    }
}
