//! `netd.move=GROUP:CORE@MS`: MS milliseconds after the machine is complete, core 0 proposes
//! moving flow group GROUP to CORE; the agreement's commit moves it on every core and rewrites
//! the NIC's redirection table (node::flows).

use crate::cmdline::FlowGroupMove;
use crate::node::hook::{Access, Hook};
use crate::node::Next;

/// The one move the command line asks for.
pub struct FlowMove {
    request: FlowGroupMove,
    done: bool,
}

impl FlowMove {
    /// The move `request` describes.
    pub fn new(request: FlowGroupMove) -> Self {
        Self {
            request,
            done: false,
        }
    }
}

impl Hook for FlowMove {
    fn turn(&mut self, access: &mut Access<'_>) -> Next {
        let Some(complete) = access.machine_complete_at() else {
            return Next::IDLE;
        };
        if self.done {
            return Next::IDLE;
        }
        let at = complete.after(u64::from(self.request.after_ms) * 1_000_000);
        if access.now < at {
            return Next::until(at);
        }
        self.done = true;
        let group = self.request.group;
        let from = access.flows.owner(group as u8);
        let to = monitor::CoreId::new(self.request.to as u8).filter(|to| to.index() < access.cores);
        match (monitor::CoreId::new(from as u8), to) {
            (Some(from), Some(to)) => {
                access.begin_agreement(monitor::Change::MoveFlowGroup { group, from, to })
            }
            _ => access.platform.print(format_args!(
                "monitor: netd.move: no core {}",
                self.request.to
            )),
        }
        Next::IDLE
    }
}
