//! Channel binding, brokered by the monitors of the client's and the server's cores. The client's
//! monitor coordinates a small two-phase exchange, so that a binding completes on both ends or on
//! neither:
//!
//! 1. `bind(name)` on the client's core allocates the channel region from that core's memory
//!    ([`crate::Hooks::allocate_region`]) and asks the directory where `name` lives
//!    ([`Message::Lookup`]).
//! 2. It sends [`Message::BindRequest`] (binding id, name, region) to the server's monitor, which
//!    records the binding *prepared* and answers [`Message::BindReply`] `Accepted` (or refuses).
//! 3. On `Accepted` the client decides: the binding holds. It announces
//!    [`crate::Event::BindingReady`] locally and sends [`Message::BindConfirm`] until acknowledged;
//!    the server announces its `BindingReady` on the confirmation.
//! 4. If the binding timeout passes first, the client decides against it: it frees the region,
//!    announces [`crate::Event::BindingFailed`], and sends [`Message::BindCancel`] until
//!    acknowledged; the server drops the prepared record.
//!
//! Only the client decides. The server never times out a prepared binding on its own (the client
//! may have decided to keep it); it re-sends `Accepted` until the client answers with a
//! confirmation or a cancellation, and drops it if the client's core fails. A client forgets
//! nothing it confirmed, so a client that does not know a binding id never confirmed it and
//! answers a stray `Accepted` with a cancellation. Every step is idempotent, so lost, duplicated
//! and reordered messages are harmless. Once ready, the channel belongs to the endpoints; the
//! monitors only report [`crate::Event::BindingBroken`] if the other end's core fails.

use crate::event::{BindFailure, Event, Role};
use crate::message::{BindAnswer, Message};
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{BindingId, CoreId, Instant, Name, Region};

/// Bindings (of either role, pending or ready) one monitor can track.
pub const MAX_BINDINGS: usize = 64;

/// Why [`crate::Monitor::bind`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindError {
    /// This core was declared failed.
    Fenced,
    /// This monitor tracks [`MAX_BINDINGS`] bindings already.
    TooManyBindings,
    /// [`crate::Hooks::allocate_region`] had no memory.
    OutOfMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Client: waiting for the directory.
    LookingUp,
    /// Client: waiting for the server's answer.
    Requested,
    /// Client: decided against; waiting for the server to acknowledge the cancellation.
    Cancelling,
    /// Client: decided for; `acked` once the server acknowledged the confirmation.
    ClientReady { acked: bool },
    /// Server: accepted, waiting for the client's decision.
    ServerPrepared,
    /// Server: confirmed.
    ServerReady,
}

#[derive(Clone, Copy, Debug)]
struct Binding {
    id: BindingId,
    name: Name,
    /// The other end's core (unknown while looking up).
    peer: Option<CoreId>,
    region: Region,
    state: State,
    deadline: Instant,
}

impl Binding {
    fn role(&self) -> Role {
        match self.state {
            State::ServerPrepared | State::ServerReady => Role::Server,
            _ => Role::Client,
        }
    }
}

/// Binding state of one monitor.
pub(crate) struct BindingTable {
    slots: [Option<Binding>; MAX_BINDINGS],
    next_seq: u32,
}

impl BindingTable {
    pub(crate) const fn new() -> BindingTable {
        BindingTable {
            slots: [None; MAX_BINDINGS],
            next_seq: 0,
        }
    }

    fn find(&self, id: BindingId, role: Role) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| matches!(slot, Some(b) if b.id == id && b.role() == role))
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }
}

impl<H: Hooks> Monitor<H> {
    /// Asks for a channel to the service registered as `name` (on any core, this one included).
    /// The outcome arrives as [`Event::BindingReady`] or [`Event::BindingFailed`].
    pub fn bind(
        &mut self,
        now: Instant,
        name: Name,
        out: &mut impl Outbox,
    ) -> Result<BindingId, BindError> {
        if self.fenced {
            return Err(BindError::Fenced);
        }
        let index = self
            .bindings
            .free_slot()
            .ok_or(BindError::TooManyBindings)?;
        let region = self
            .hooks
            .allocate_region(self.config.binding_region_bytes)
            .ok_or(BindError::OutOfMemory)?;
        let id = BindingId {
            client: self.config.core,
            seq: self.bindings.next_seq,
        };
        self.bindings.next_seq = self.bindings.next_seq.wrapping_add(1);
        self.bindings.slots[index] = Some(Binding {
            id,
            name,
            peer: None,
            region,
            state: State::LookingUp,
            deadline: now.after(self.config.bind_timeout_ns),
        });
        let leader = self.leader();
        self.send(
            out,
            leader,
            Message::Lookup {
                request: id.seq,
                name,
            },
        );
        self.drain_loopback(now, out);
        Ok(id)
    }

    /// Client side gives up before deciding for: region back, failure announced.
    fn fail_binding(&mut self, index: usize, reason: BindFailure) {
        if let Some(binding) = self.bindings.slots[index].take() {
            self.hooks.free_region(binding.region);
            self.events.push(Event::BindingFailed {
                binding: binding.id,
                name: binding.name,
                reason,
            });
        }
    }

    pub(crate) fn bindings_sweep(&mut self, now: Instant, out: &mut impl Outbox) {
        let leader = self.leader();
        for index in 0..MAX_BINDINGS {
            let Some(binding) = self.bindings.slots[index] else {
                continue;
            };
            let id = binding.id;
            match (binding.state, binding.peer) {
                (State::LookingUp, _) if now >= binding.deadline => {
                    self.fail_binding(index, BindFailure::Timeout)
                }
                (State::LookingUp, _) => self.send(
                    out,
                    leader,
                    Message::Lookup {
                        request: id.seq,
                        name: binding.name,
                    },
                ),
                (State::Requested, Some(server)) if now >= binding.deadline => {
                    self.fail_binding(index, BindFailure::Timeout);
                    self.bindings.slots[index] = Some(Binding {
                        state: State::Cancelling,
                        ..binding
                    });
                    self.send(out, server, Message::BindCancel { binding: id });
                }
                (State::Requested, Some(server)) => {
                    let message = Message::BindRequest {
                        binding: id,
                        name: binding.name,
                        region: binding.region,
                    };
                    self.send(out, server, message);
                }
                (State::Cancelling, Some(server)) => {
                    self.send(out, server, Message::BindCancel { binding: id })
                }
                (State::ClientReady { acked: false }, Some(server)) => {
                    self.send(out, server, Message::BindConfirm { binding: id })
                }
                (State::ServerPrepared, Some(client)) => {
                    let message = Message::BindReply {
                        binding: id,
                        answer: BindAnswer::Accepted,
                    };
                    self.send(out, client, message);
                }
                _ => {}
            }
        }
    }

    /// The other end's core failed: undecided bindings fail, ready ones break.
    pub(crate) fn bindings_on_failure(&mut self, core: CoreId) {
        for index in 0..MAX_BINDINGS {
            let Some(binding) = self.bindings.slots[index] else {
                continue;
            };
            if binding.peer != Some(core) {
                continue;
            }
            match binding.state {
                State::LookingUp => {}
                State::Requested => self.fail_binding(index, BindFailure::PeerFailed),
                State::Cancelling | State::ServerPrepared => self.bindings.slots[index] = None,
                State::ClientReady { .. } | State::ServerReady => {
                    self.bindings.slots[index] = None;
                    self.events.push(Event::BindingBroken {
                        binding: binding.id,
                        role: binding.role(),
                        peer: core,
                    });
                }
            }
        }
    }

    pub(crate) fn on_lookup_reply(
        &mut self,
        from: CoreId,
        request: u32,
        owner: Option<CoreId>,
        out: &mut impl Outbox,
    ) {
        if from != self.leader() {
            return;
        }
        let id = BindingId {
            client: self.config.core,
            seq: request,
        };
        let Some(index) = self.bindings.find(id, Role::Client) else {
            return;
        };
        let Some(binding) = self.bindings.slots[index] else {
            return;
        };
        if binding.state != State::LookingUp {
            return;
        }
        // The owner comes from the directory's message: a core outside the machine (or failed)
        // cannot serve the binding.
        match owner {
            Some(server) if self.live().contains(server) => {
                self.bindings.slots[index] = Some(Binding {
                    peer: Some(server),
                    state: State::Requested,
                    ..binding
                });
                let message = Message::BindRequest {
                    binding: id,
                    name: binding.name,
                    region: binding.region,
                };
                self.send(out, server, message);
            }
            _ => self.fail_binding(index, BindFailure::NoSuchName),
        }
    }

    pub(crate) fn on_bind_request(
        &mut self,
        now: Instant,
        from: CoreId,
        id: BindingId,
        name: Name,
        region: Region,
        out: &mut impl Outbox,
    ) {
        if id.client != from {
            self.counters.anomalies += 1;
            return;
        }
        let answer = if self.bindings.find(id, Role::Server).is_some() {
            BindAnswer::Accepted
        } else if !self.names.is_local(&name) {
            BindAnswer::NoSuchName
        } else if let Some(index) = self.bindings.free_slot() {
            self.bindings.slots[index] = Some(Binding {
                id,
                name,
                peer: Some(from),
                region,
                state: State::ServerPrepared,
                deadline: now,
            });
            BindAnswer::Accepted
        } else {
            BindAnswer::NoCapacity
        };
        self.send(
            out,
            from,
            Message::BindReply {
                binding: id,
                answer,
            },
        );
    }

    pub(crate) fn on_bind_reply(
        &mut self,
        from: CoreId,
        id: BindingId,
        answer: BindAnswer,
        out: &mut impl Outbox,
    ) {
        if id.client != self.config.core {
            self.counters.anomalies += 1;
            return;
        }
        let Some(index) = self.bindings.find(id, Role::Client) else {
            // Unknown here means never confirmed: make sure the server side is dropped.
            if answer == BindAnswer::Accepted {
                self.send(out, from, Message::BindCancel { binding: id });
            }
            return;
        };
        let Some(binding) = self.bindings.slots[index] else {
            return;
        };
        if binding.peer != Some(from) {
            self.counters.anomalies += 1;
            return;
        }
        match (binding.state, answer) {
            (State::Requested, BindAnswer::Accepted) => {
                self.bindings.slots[index] = Some(Binding {
                    state: State::ClientReady { acked: false },
                    ..binding
                });
                self.events.push(Event::BindingReady {
                    binding: id,
                    role: Role::Client,
                    name: binding.name,
                    peer: from,
                    region: binding.region,
                });
                self.send(out, from, Message::BindConfirm { binding: id });
            }
            (State::Requested, refusal) => self.fail_binding(index, BindFailure::Refused(refusal)),
            (State::ClientReady { acked: false }, _) => {
                self.send(out, from, Message::BindConfirm { binding: id })
            }
            (State::Cancelling, _) => self.send(out, from, Message::BindCancel { binding: id }),
            _ => {}
        }
    }

    pub(crate) fn on_bind_confirm(&mut self, from: CoreId, id: BindingId, out: &mut impl Outbox) {
        if id.client != from {
            self.counters.anomalies += 1;
            return;
        }
        if let Some(index) = self.bindings.find(id, Role::Server) {
            if let Some(binding) = self.bindings.slots[index] {
                if binding.state == State::ServerPrepared {
                    self.bindings.slots[index] = Some(Binding {
                        state: State::ServerReady,
                        ..binding
                    });
                    self.events.push(Event::BindingReady {
                        binding: id,
                        role: Role::Server,
                        name: binding.name,
                        peer: from,
                        region: binding.region,
                    });
                }
            }
        } else {
            // A confirmation is only sent after this side accepted; the record is gone only if
            // the cancellation was processed, which the client never sends after confirming.
            self.counters.anomalies += 1;
        }
        self.send(
            out,
            from,
            Message::BindAck {
                binding: id,
                confirmed: true,
            },
        );
    }

    pub(crate) fn on_bind_cancel(&mut self, from: CoreId, id: BindingId, out: &mut impl Outbox) {
        if id.client != from {
            self.counters.anomalies += 1;
            return;
        }
        if let Some(index) = self.bindings.find(id, Role::Server) {
            match self.bindings.slots[index] {
                Some(binding) if binding.state == State::ServerPrepared => {
                    self.bindings.slots[index] = None
                }
                // Ready: the client decided for it and never cancels after that.
                _ => self.counters.anomalies += 1,
            }
        }
        self.send(
            out,
            from,
            Message::BindAck {
                binding: id,
                confirmed: false,
            },
        );
    }

    pub(crate) fn on_bind_ack(&mut self, from: CoreId, id: BindingId, confirmed: bool) {
        if id.client != self.config.core {
            return;
        }
        let Some(index) = self.bindings.find(id, Role::Client) else {
            return;
        };
        let Some(binding) = self.bindings.slots[index] else {
            return;
        };
        if binding.peer != Some(from) {
            return;
        }
        match (binding.state, confirmed) {
            (State::ClientReady { .. }, true) => {
                self.bindings.slots[index] = Some(Binding {
                    state: State::ClientReady { acked: true },
                    ..binding
                })
            }
            (State::Cancelling, false) => self.bindings.slots[index] = None,
            _ => {}
        }
    }
}
