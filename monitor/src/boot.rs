//! Boot handshake. Every monitor greets every expected peer with a [`Message::Hello`] carrying
//! its [`CoreInfo`] (re-sent each sweep until that peer answers [`Message::HelloAck`]), so each
//! monitor learns its peers directly. The leader (lowest live core, core 0 unless it failed)
//! declares the machine complete once every live expected core has greeted it — cores that never
//! greet are declared failed after the boot timeout, so boot completes without them — and then
//! sends [`Message::BootComplete`] to every member until acknowledged. A leader taking over after
//! a failure completes (or re-announces) the boot the same way.

use crate::event::Event;
use crate::message::Message;
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{CoreId, CoreInfo, CoreSet, Instant};

impl<H: Hooks> Monitor<H> {
    /// Re-sends greetings and (on the leader) the completion notice; checks completion.
    pub(crate) fn boot_sweep(&mut self, out: &mut impl Outbox) {
        if let Some(info) = self.peers[self.config.core.index()] {
            let to = self.live_peers().difference(self.hello_acked);
            self.send_all(out, to, Message::Hello(info));
        }
        if self.leader() != self.config.core {
            return;
        }
        if self.boot_complete {
            let members = self.live();
            let to = self.live_peers().difference(self.boot_acked);
            self.send_all(out, to, Message::BootComplete { members });
        } else {
            self.check_boot_complete(out);
        }
    }

    /// On the leader: completes the boot once every live core has greeted.
    pub(crate) fn check_boot_complete(&mut self, out: &mut impl Outbox) {
        if self.boot_complete || self.leader() != self.config.core {
            return;
        }
        if self
            .live()
            .iter()
            .any(|core| self.peers[core.index()].is_none())
        {
            return;
        }
        self.boot_complete = true;
        let members = self.live();
        self.events.push(Event::MachineComplete { members });
        let to = self.live_peers().difference(self.boot_acked);
        self.send_all(out, to, Message::BootComplete { members });
    }

    pub(crate) fn on_hello(
        &mut self,
        _now: Instant,
        from: CoreId,
        info: CoreInfo,
        out: &mut impl Outbox,
    ) {
        if info.core != from {
            self.counters.anomalies += 1;
            return;
        }
        let first = self.peers[from.index()].is_none();
        self.peers[from.index()] = Some(info);
        if first {
            self.events.push(Event::PeerUp(info));
        }
        self.send(out, from, Message::HelloAck);
        self.check_boot_complete(out);
    }

    pub(crate) fn on_boot_complete(
        &mut self,
        now: Instant,
        from: CoreId,
        members: CoreSet,
        out: &mut impl Outbox,
    ) {
        // Cores left out of the machine are failed: adopt the verdict.
        let left_out = self.config.expected.difference(members);
        self.merge_failed(now, left_out, out);
        if self.fenced {
            return;
        }
        if !self.boot_complete {
            self.boot_complete = true;
            let members = self.live();
            self.events.push(Event::MachineComplete { members });
        }
        self.send(out, from, Message::BootCompleteAck);
    }
}
