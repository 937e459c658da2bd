//! The ICMP path: smoltcp answers echo requests itself (`auto-icmp-echo-reply`) during ingress;
//! other ICMP messages are read and ignored.

use super::{smoltcp_ingress, PathRunner, Reply, RunContext};
use crate::path::QueuedFrame;
use smoltcp::iface::SocketSet;

extern crate alloc;
use alloc::vec;

/// The ICMP path's runner (no sockets).
pub(crate) struct IcmpRunner {
    sockets: SocketSet<'static>,
}

impl IcmpRunner {
    pub(crate) fn new() -> Self {
        Self {
            sockets: SocketSet::new(vec![]),
        }
    }
}

impl PathRunner for IcmpRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        smoltcp_ingress(cx, &mut self.sockets, frame)
    }
}
