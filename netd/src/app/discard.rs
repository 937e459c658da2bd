//! UDP discard (RFC 863): every datagram is read and dropped, nothing is sent back. A sink for
//! load (the overload tests flood it while a victim flow uses echo).

use super::{AppContext, Datagram, DatagramService};

/// The discard server.
#[derive(Default)]
pub struct Discard {
    /// Datagrams discarded.
    pub discarded: u64,
    /// Payload bytes discarded.
    pub bytes: u64,
}

impl Discard {
    /// A discard server (register it with [`super::Service::datagram`]).
    pub fn new() -> Self {
        Self::default()
    }
}

impl DatagramService for Discard {
    fn name(&self) -> &'static str {
        "discard"
    }

    fn on_datagram(
        &mut self,
        _context: &mut AppContext<'_>,
        datagram: Datagram<'_>,
    ) -> Option<usize> {
        self.discarded += 1;
        self.bytes += datagram.length as u64;
        None
    }
}
