//! The UDP fast path: each datagram goes to the datagram service inside its own pool buffer,
//! and the reply leaves from that buffer (`crate::fastpath`): no smoltcp socket, no copy.

use super::{PathRunner, Reply, RunContext};
use crate::app::{Datagram, DatagramService, Peer};
use crate::fastpath;
use crate::path::QueuedFrame;

extern crate alloc;
use alloc::boxed::Box;

/// The fast path's runner.
pub(crate) struct UdpFastRunner {
    app: Box<dyn DatagramService>,
}

impl UdpFastRunner {
    pub(crate) fn new(app: Box<dyn DatagramService>) -> Self {
        Self { app }
    }
}

impl PathRunner for UdpFastRunner {
    fn ingress(&mut self, cx: &mut RunContext<'_>, frame: QueuedFrame) -> Reply {
        let RunContext {
            pool,
            config,
            offload,
            app: context,
            ..
        } = cx;
        let app = &mut self.app;
        let reply = match pool.bytes_mut(frame.buffer) {
            Ok(bytes) => fastpath::answer_in_place(
                bytes,
                usize::from(frame.length),
                config.mac,
                config.addresses.ip.address,
                *offload,
                |payload, length, (address, port)| {
                    app.on_datagram(
                        context,
                        Datagram {
                            from: Peer { address, port },
                            payload,
                            length,
                        },
                    )
                },
            ),
            Err(_) => None,
        };
        match reply {
            Some(reply) => Reply::InPlace {
                length: reply.length as u16,
                checksum: reply.checksum,
            },
            None => Reply::Nothing,
        }
    }

    fn application(&self) -> Option<&'static str> {
        Some(self.app.name())
    }
}
