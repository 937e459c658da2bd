//! `bind=SERVER:CLIENT`: core SERVER registers the name `echo` with the monitors, core CLIENT
//! binds to it 100 ms after the machine is complete and pings over the channel the monitors set
//! up; the server's kernel answers the ping like any other, on the bound link.

use crate::node::framing::KernelMessage;
use crate::node::hook::{Access, Hook};
use crate::node::mailbox::LinkId;
use crate::node::{Instant, Next};

/// Give the server's registration this long to reach the directory before binding.
const BIND_DELAY_NS: u64 = 100_000_000;

/// One core's part of the binding demonstration.
pub struct Bind {
    server: usize,
    client: usize,
    bind_at: Option<Instant>,
    /// The client's bound link, once ready.
    link: Option<LinkId>,
}

impl Bind {
    /// The demonstration between `server` and `client`.
    pub fn new(server: usize, client: usize) -> Self {
        Self {
            server,
            client,
            bind_at: None,
            link: None,
        }
    }
}

fn echo() -> monitor::Name {
    monitor::Name::new(b"echo").expect("a valid name")
}

impl Hook for Bind {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        let Some(at) = self.bind_at else {
            return Next::IDLE;
        };
        if access.now < at {
            return Next::until(at);
        }
        self.bind_at = None;
        if let Err(error) = access.bind(echo()) {
            access
                .platform
                .print(format_args!("monitor: bind 'echo': {error:?}"));
        }
        Next::IDLE
    }

    fn event(&mut self, event: &monitor::Event, access: &mut Access<'_>) {
        if let monitor::Event::MachineComplete { .. } = event {
            if access.core == self.server {
                if let Err(error) = access.register_name(echo()) {
                    access
                        .platform
                        .print(format_args!("monitor: register 'echo': {error:?}"));
                }
            }
            if access.core == self.client {
                self.bind_at = Some(access.now.after(BIND_DELAY_NS));
            }
        }
    }

    fn bound(&mut self, link: LinkId, _peer: usize, role: monitor::Role, access: &mut Access<'_>) {
        if role == monitor::Role::Client {
            self.link = Some(link);
            let ping = KernelMessage::Ping {
                sequence: 1,
                timestamp: access.cycles(),
            };
            if let Err(refusal) = access.send(link, ping) {
                access.platform.print(format_args!(
                    "monitor: ping over the bound channel: {refusal:?}"
                ));
            }
        }
    }

    fn kernel_letter(
        &mut self,
        link: LinkId,
        peer: usize,
        message: KernelMessage,
        access: &mut Access<'_>,
    ) {
        if let (KernelMessage::Pong { timestamp, .. }, Some(ours)) = (message, self.link) {
            if link == ours {
                let cycles = access.cycles().wrapping_sub(timestamp);
                access.platform.print(format_args!(
                    "monitor: bound channel core {} -> core {}: ping answered in {} cycles",
                    access.core, peer, cycles
                ));
            }
        }
    }
}
