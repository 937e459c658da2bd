//! Injection and demonstration scenarios, apart from the real loop: each is its own module, and
//! the node calls them all through one hook ([`crate::node::hook::Hook`]), in the timers phase of
//! its turn and when a monitor event or a kernel message concerns them.
//!
//! | option | module | what it does |
//! |---|---|---|
//! | `bind=SERVER:CLIENT` | [`bind`] | SERVER registers `echo`, CLIENT binds to it and pings over the channel |
//! | `netd.move=GROUP:CORE@MS` | [`flow_move`] | core 0 proposes moving a flow group MS ms after the machine is complete |
//! | `hang=CORE@MS`, `fault=CORE:KIND` | [`injection`] | a core stops answering, or raises an exception; every core then reports itself alive each second |
//! | `urpc=matrix[:ROUNDS]`, `urpc=wake[:ROUNDS]` | [`matrix`] | the URPC round-trip matrix, with the peer polling or halted between probes |
//! | `netd.report=MS` | [`report`] | every core prints its network counters every MS ms |

pub mod bind;
pub mod flow_move;
pub mod injection;
pub mod matrix;
pub mod report;

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::cmdline::KernelOptions;
use crate::node::framing::KernelMessage;
use crate::node::hook::{Access, Hook};
use crate::node::mailbox::LinkId;
use crate::node::Next;

/// The scenarios one core runs, from the kernel options.
pub struct Scenarios {
    parts: Vec<Box<dyn Hook>>,
}

impl Scenarios {
    /// The scenarios `options` ask for on core `core` of `cores`; `None` when there are none.
    pub fn from_options(options: &KernelOptions, core: usize, cores: usize) -> Option<Self> {
        let mut parts: Vec<Box<dyn Hook>> = Vec::new();
        if let Some((server, client)) = options.bind_demo {
            if server as usize == core || client as usize == core {
                parts.push(Box::new(bind::Bind::new(server as usize, client as usize)));
            }
        }
        if let Some(request) = options.move_flow_group {
            if core == 0 {
                parts.push(Box::new(flow_move::FlowMove::new(request)));
            }
        }
        if options.fault.is_some() || options.hang.is_some() {
            parts.push(Box::new(injection::Injection::new(
                options.fault,
                options.hang,
            )));
        }
        if options.urpc_matrix_rounds > 0 && cores > 1 {
            parts.push(Box::new(matrix::Matrix::new(
                options.urpc_matrix_rounds,
                options.urpc_matrix_wake,
            )));
        }
        if options.netd_report_ms > 0 {
            parts.push(Box::new(report::Report::new(options.netd_report_ms)));
        }
        (!parts.is_empty()).then_some(Self { parts })
    }
}

impl Hook for Scenarios {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        let mut next = Next::IDLE;
        for part in self.parts.iter_mut() {
            next = next.and(part.turn(access));
        }
        next
    }

    fn event(&mut self, event: &monitor::Event, access: &mut Access<'_>) {
        for part in self.parts.iter_mut() {
            part.event(event, access);
        }
    }

    fn kernel_letter(
        &mut self,
        link: LinkId,
        peer: usize,
        message: KernelMessage,
        access: &mut Access<'_>,
    ) {
        for part in self.parts.iter_mut() {
            part.kernel_letter(link, peer, message, access);
        }
    }

    fn bound(&mut self, link: LinkId, peer: usize, role: monitor::Role, access: &mut Access<'_>) {
        for part in self.parts.iter_mut() {
            part.bound(link, peer, role, access);
        }
    }
}
