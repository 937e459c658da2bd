//! Name service. A service registers a name on its core ([`crate::Monitor::register_name`]); the
//! core's monitor keeps the name (the authoritative record: the service lives there) and registers
//! it with the directory, hosted by the leader (lowest live core). Registrations are re-sent until
//! the directory answers; the directory refuses a name another live core owns. When the leader
//! fails, the next lowest live core becomes the directory and every monitor re-registers its names
//! with it; entries of failed cores are dropped. Only the current leader answers
//! [`Message::Register`] and [`Message::Lookup`]; a monitor that does not yet know it leads stays
//! silent and the asker re-sends.

use crate::event::Event;
use crate::message::{Message, RegisterOutcome};
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{CoreId, Name};

/// Names a core's services may register.
pub const MAX_LOCAL_NAMES: usize = 16;

/// Entries the directory (on the leader) can hold.
pub const MAX_DIRECTORY_NAMES: usize = 128;

/// Why [`crate::Monitor::register_name`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// This core was declared failed.
    Fenced,
    /// A service on this core already registered the name.
    AlreadyRegistered,
    /// This core has [`MAX_LOCAL_NAMES`] names already.
    TableFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LocalState {
    /// Waiting for the directory; `announce` = emit [`Event::NameRegistered`] on the answer (false
    /// for a silent re-registration after the directory moved).
    Pending {
        announce: bool,
    },
    Registered,
}

#[derive(Clone, Copy, Debug)]
struct LocalName {
    name: Name,
    state: LocalState,
}

#[derive(Clone, Copy, Debug)]
struct DirectoryEntry {
    name: Name,
    owner: CoreId,
}

/// Name-service state of one monitor.
pub(crate) struct NameState {
    local: [Option<LocalName>; MAX_LOCAL_NAMES],
    directory: [Option<DirectoryEntry>; MAX_DIRECTORY_NAMES],
}

impl NameState {
    pub(crate) const fn new() -> NameState {
        NameState {
            local: [None; MAX_LOCAL_NAMES],
            directory: [None; MAX_DIRECTORY_NAMES],
        }
    }

    /// Whether a service on this core registered `name` (in any state).
    pub(crate) fn is_local(&self, name: &Name) -> bool {
        self.local.iter().flatten().any(|entry| entry.name == *name)
    }

    fn directory_owner(&self, name: &Name) -> Option<CoreId> {
        self.directory
            .iter()
            .flatten()
            .find(|entry| entry.name == *name)
            .map(|entry| entry.owner)
    }
}

impl<H: Hooks> Monitor<H> {
    /// Registers `name` for a service on this core. The answer arrives as
    /// [`Event::NameRegistered`]; until then (and after a refusal) clients cannot find it.
    pub fn register_name(
        &mut self,
        now: crate::types::Instant,
        name: Name,
        out: &mut impl Outbox,
    ) -> Result<(), RegisterError> {
        if self.fenced {
            return Err(RegisterError::Fenced);
        }
        if self.names.is_local(&name) {
            return Err(RegisterError::AlreadyRegistered);
        }
        let slot = self
            .names
            .local
            .iter_mut()
            .find(|slot| slot.is_none())
            .ok_or(RegisterError::TableFull)?;
        *slot = Some(LocalName {
            name,
            state: LocalState::Pending { announce: true },
        });
        let leader = self.leader();
        self.send(out, leader, Message::Register { name });
        self.drain_loopback(now, out);
        Ok(())
    }

    /// Whether `name` is registered by a service on this core and confirmed by the directory.
    pub fn is_registered(&self, name: &Name) -> bool {
        self.names
            .local
            .iter()
            .flatten()
            .any(|entry| entry.name == *name && entry.state == LocalState::Registered)
    }

    pub(crate) fn names_sweep(&mut self, out: &mut impl Outbox) {
        let leader = self.leader();
        for index in 0..MAX_LOCAL_NAMES {
            if let Some(entry) = self.names.local[index] {
                if matches!(entry.state, LocalState::Pending { .. }) {
                    self.send(out, leader, Message::Register { name: entry.name });
                }
            }
        }
    }

    /// Drops the directory entries of a failed core.
    pub(crate) fn names_on_failure(&mut self, core: CoreId) {
        for slot in self.names.directory.iter_mut() {
            if matches!(slot, Some(entry) if entry.owner == core) {
                *slot = None;
            }
        }
    }

    /// The directory moved: register every local name again with the new leader.
    pub(crate) fn names_on_new_leader(&mut self, out: &mut impl Outbox) {
        for slot in self.names.local.iter_mut().flatten() {
            if slot.state == LocalState::Registered {
                slot.state = LocalState::Pending { announce: false };
            }
        }
        self.names_sweep(out);
    }

    pub(crate) fn on_register(&mut self, from: CoreId, name: Name, out: &mut impl Outbox) {
        if self.leader() != self.config.core {
            return;
        }
        let failed = self.failed;
        let outcome = match self
            .names
            .directory
            .iter_mut()
            .flatten()
            .find(|e| e.name == name)
        {
            Some(entry) if entry.owner == from => RegisterOutcome::Registered,
            Some(entry) if failed.contains(entry.owner) => {
                entry.owner = from;
                RegisterOutcome::Registered
            }
            Some(entry) => RegisterOutcome::Taken(entry.owner),
            None => match self.names.directory.iter_mut().find(|slot| slot.is_none()) {
                Some(slot) => {
                    *slot = Some(DirectoryEntry { name, owner: from });
                    RegisterOutcome::Registered
                }
                None => RegisterOutcome::DirectoryFull,
            },
        };
        self.send(out, from, Message::RegisterReply { name, outcome });
    }

    pub(crate) fn on_register_reply(&mut self, from: CoreId, name: Name, outcome: RegisterOutcome) {
        if from != self.leader() {
            // A stale answer from a directory this core no longer uses.
            return;
        }
        let Some(slot) = self
            .names
            .local
            .iter_mut()
            .find(|slot| matches!(slot, Some(entry) if entry.name == name))
        else {
            return;
        };
        let Some(LocalName {
            state: LocalState::Pending { announce },
            ..
        }) = *slot
        else {
            return;
        };
        if outcome == RegisterOutcome::Registered {
            *slot = Some(LocalName {
                name,
                state: LocalState::Registered,
            });
            if announce {
                self.events.push(Event::NameRegistered { name, outcome });
            }
        } else {
            *slot = None;
            self.events.push(if announce {
                Event::NameRegistered { name, outcome }
            } else {
                Event::NameLost { name }
            });
        }
    }

    pub(crate) fn on_lookup(
        &mut self,
        from: CoreId,
        request: u32,
        name: Name,
        out: &mut impl Outbox,
    ) {
        if self.leader() != self.config.core {
            return;
        }
        let owner = self
            .names
            .directory_owner(&name)
            .filter(|owner| !self.failed.contains(*owner));
        self.send(out, from, Message::LookupReply { request, owner });
    }
}
