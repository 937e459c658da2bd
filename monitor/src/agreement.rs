//! Agreement: two-phase commit of [`Change`]s that must hold on every live core at once.
//!
//! The core that calls [`crate::Monitor::begin_agreement`] coordinates; it runs one transaction at
//! a time (ids are `(coordinator, seq)` with `seq` increasing), so each participant needs to
//! remember only the latest transaction of each coordinator.
//!
//! - **Phase 1.** The coordinator votes itself (conflict check, then [`crate::Hooks::vote`]), then
//!   sends [`Message::Prepare`] to every live peer, re-sending to those that have not voted.
//!   A participant votes no if the change conflicts with one it holds prepared or its hook vetoes
//!   it; a yes vote holds the change prepared until the outcome is known.
//! - **Decision.** Commit when every participant still live has voted yes; abort on any no vote
//!   or when the prepare timeout passes. Participants declared failed before voting are dropped
//!   from the transaction (they are out of the machine for good).
//! - **Phase 2.** The coordinator applies the decision locally and sends [`Message::Commit`] or
//!   [`Message::Abort`] to every live participant until each acknowledges
//!   ([`Message::DecisionAck`]); only then can it begin its next transaction.
//!
//! **Coordinator failure (the blocking case of 2PC).** A participant that voted yes cannot decide
//! alone: the coordinator may have committed. Classic 2PC blocks until the coordinator recovers.
//! Flotilla's cores never come back once declared failed, and a verdict cuts the failed core off
//! (every monitor ignores its messages from the moment it adopts the verdict), which allows a
//! cooperative termination protocol instead: a prepared participant that learns its coordinator
//! failed sends [`Message::ResolveQuery`] (carrying its verdicts, so the answerer adopts them
//! first and stops listening to the coordinator) to every live peer. An answer `Committed` means
//! the coordinator decided commit: commit. An answer `Aborted` means it (or an earlier resolution)
//! decided abort: abort. When every live peer has answered and none knows of a commit, nobody live
//! applied the change and nobody can any more (all of them have cut the coordinator off): abort.
//! A coordinator that committed locally and died before telling anyone loses its commit with
//! itself. See `docs/monitor.md` for the argument and its assumption (a core declared failed
//! while alive learns it and fences itself).

use crate::event::Event;
use crate::message::{Message, TxState, Vote};
use crate::monitor::{Hooks, Monitor, Outbox};
use crate::types::{Change, CoreId, CoreSet, Instant, TxId, MAX_CORES};

/// Why [`crate::Monitor::begin_agreement`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgreementError {
    /// This core was declared failed.
    Fenced,
    /// This core is still coordinating a transaction (until every participant acknowledged the
    /// decision).
    Busy,
    /// A conflicting change (same port, same flow group) is prepared on this core.
    Conflict,
    /// This core's own hook voted no.
    Vetoed,
}

/// What a core knows of the latest transaction of one coordinator.
#[derive(Clone, Copy, Debug)]
struct Known {
    seq: u32,
    /// `None` when the core learned only the abort of a transaction it never saw prepared.
    change: Option<Change>,
    state: TxState,
    /// Peers that answered this core's termination query (present while resolving).
    resolving: Option<CoreSet>,
}

#[derive(Clone, Copy, Debug)]
struct Coordinating {
    tx: TxId,
    change: Change,
    participants: CoreSet,
    yes: CoreSet,
    decision: Option<bool>,
    deadline: Instant,
    acked: CoreSet,
}

/// Agreement state of one monitor.
pub(crate) struct AgreementState {
    coordinating: Option<Coordinating>,
    next_seq: u32,
    /// Indexed by coordinator.
    known: [Option<Known>; MAX_CORES],
}

impl AgreementState {
    pub(crate) const fn new() -> AgreementState {
        AgreementState {
            coordinating: None,
            next_seq: 0,
            known: [None; MAX_CORES],
        }
    }

    fn conflicts(&self, change: &Change) -> bool {
        self.known.iter().flatten().any(|known| {
            known.state == TxState::Prepared
                && known.change.is_some_and(|held| held.conflicts_with(change))
        })
    }

    fn state_of(&self, tx: TxId) -> TxState {
        match self.known[tx.coordinator.index()] {
            Some(known) if known.seq == tx.seq => known.state,
            _ => TxState::Unknown,
        }
    }
}

impl<H: Hooks> Monitor<H> {
    /// Begins agreeing on `change`, coordinated by this core. The outcome arrives on every live
    /// core as [`Event::ChangeCommitted`] or [`Event::ChangeAborted`].
    pub fn begin_agreement(
        &mut self,
        now: Instant,
        change: Change,
        out: &mut impl Outbox,
    ) -> Result<TxId, AgreementError> {
        if self.fenced {
            return Err(AgreementError::Fenced);
        }
        if self.agreement.coordinating.is_some() {
            return Err(AgreementError::Busy);
        }
        if self.agreement.conflicts(&change) {
            return Err(AgreementError::Conflict);
        }
        if self.hooks.vote(&change) == Vote::No {
            return Err(AgreementError::Vetoed);
        }
        let me = self.config.core;
        let tx = TxId {
            coordinator: me,
            seq: self.agreement.next_seq,
        };
        self.agreement.next_seq = self.agreement.next_seq.wrapping_add(1);
        self.agreement.known[me.index()] = Some(Known {
            seq: tx.seq,
            change: Some(change),
            state: TxState::Prepared,
            resolving: None,
        });
        let participants = self.live_peers();
        self.agreement.coordinating = Some(Coordinating {
            tx,
            change,
            participants,
            yes: CoreSet::EMPTY,
            decision: None,
            deadline: now.after(self.config.prepare_timeout_ns),
            acked: CoreSet::EMPTY,
        });
        self.send_all(out, participants, Message::Prepare { tx, change });
        self.try_commit(out);
        self.drain_loopback(now, out);
        Ok(tx)
    }

    /// The transaction this core is coordinating, if any.
    pub fn coordinating(&self) -> Option<TxId> {
        self.agreement.coordinating.map(|c| c.tx)
    }

    /// Changes this core holds prepared (voted yes, outcome unknown), with their transactions.
    pub fn prepared(&self) -> impl Iterator<Item = (TxId, Change)> + '_ {
        self.agreement
            .known
            .iter()
            .enumerate()
            .filter_map(|(index, known)| {
                let known = (*known)?;
                let coordinator = CoreId::new(index as u8)?;
                match (known.state, known.change) {
                    (TxState::Prepared, Some(change)) => Some((
                        TxId {
                            coordinator,
                            seq: known.seq,
                        },
                        change,
                    )),
                    _ => None,
                }
            })
    }

    /// Sets this core's state for a transaction it holds prepared, announcing the outcome.
    fn settle(&mut self, coordinator: CoreId, commit: bool) {
        let Some(known) = self.agreement.known[coordinator.index()].as_mut() else {
            return;
        };
        if known.state != TxState::Prepared {
            return;
        }
        known.state = if commit {
            TxState::Committed
        } else {
            TxState::Aborted
        };
        known.resolving = None;
        let tx = TxId {
            coordinator,
            seq: known.seq,
        };
        if let Some(change) = known.change {
            self.events.push(if commit {
                Event::ChangeCommitted { tx, change }
            } else {
                Event::ChangeAborted { tx, change }
            });
        }
    }

    fn try_commit(&mut self, out: &mut impl Outbox) {
        let Some(c) = self.agreement.coordinating else {
            return;
        };
        if c.decision.is_none() && c.yes.is_superset(c.participants.difference(self.failed)) {
            self.decide(true, out);
        }
    }

    fn decide(&mut self, commit: bool, out: &mut impl Outbox) {
        let Some(c) = self.agreement.coordinating.as_mut() else {
            return;
        };
        if c.decision.is_some() {
            return;
        }
        c.decision = Some(commit);
        let c = *c;
        self.settle(self.config.core, commit);
        let to = c.participants.difference(self.failed);
        let message = if commit {
            Message::Commit { tx: c.tx }
        } else {
            Message::Abort { tx: c.tx }
        };
        self.send_all(out, to, message);
        self.check_finished();
    }

    fn check_finished(&mut self) {
        if let Some(c) = self.agreement.coordinating {
            if c.decision.is_some() && c.acked.is_superset(c.participants.difference(self.failed)) {
                self.agreement.coordinating = None;
            }
        }
    }

    pub(crate) fn on_prepare(
        &mut self,
        from: CoreId,
        tx: TxId,
        change: Change,
        out: &mut impl Outbox,
    ) {
        if tx.coordinator != from {
            self.counters.anomalies += 1;
            return;
        }
        let vote = match self.agreement.known[from.index()] {
            Some(known) if known.seq == tx.seq => match known.state {
                TxState::Prepared | TxState::Committed => Vote::Yes,
                _ => Vote::No,
            },
            Some(known) if known.seq > tx.seq => return, // a stale duplicate
            previous => {
                if matches!(previous, Some(known) if known.state == TxState::Prepared) {
                    // The coordinator moved on without this core's acknowledgement: only possible
                    // if it declared this core failed.
                    self.counters.anomalies += 1;
                }
                let vote = if self.agreement.conflicts(&change) {
                    Vote::No
                } else {
                    self.hooks.vote(&change)
                };
                let state = if vote == Vote::Yes {
                    TxState::Prepared
                } else {
                    TxState::VotedNo
                };
                self.agreement.known[from.index()] = Some(Known {
                    seq: tx.seq,
                    change: Some(change),
                    state,
                    resolving: None,
                });
                vote
            }
        };
        self.send(out, from, Message::VoteReply { tx, vote });
    }

    pub(crate) fn on_vote(&mut self, from: CoreId, tx: TxId, vote: Vote, out: &mut impl Outbox) {
        let Some(c) = self.agreement.coordinating.as_mut() else {
            return;
        };
        if c.tx != tx || c.decision.is_some() || !c.participants.contains(from) {
            return;
        }
        match vote {
            Vote::Yes => {
                c.yes.insert(from);
                self.try_commit(out);
            }
            Vote::No => self.decide(false, out),
        }
    }

    pub(crate) fn on_decision(
        &mut self,
        from: CoreId,
        tx: TxId,
        commit: bool,
        out: &mut impl Outbox,
    ) {
        if tx.coordinator != from {
            self.counters.anomalies += 1;
            return;
        }
        let slot = &mut self.agreement.known[from.index()];
        match *slot {
            Some(known) if known.seq == tx.seq => match (known.state, commit) {
                (TxState::Prepared, _) => self.settle(from, commit),
                (TxState::VotedNo, false) => {
                    *slot = Some(Known {
                        state: TxState::Aborted,
                        ..known
                    });
                }
                (TxState::Committed, true) | (TxState::Aborted, false) => {}
                _ => self.counters.anomalies += 1,
            },
            Some(known) if known.seq > tx.seq => {}
            previous => {
                if commit || matches!(previous, Some(known) if known.state == TxState::Prepared) {
                    self.counters.anomalies += 1;
                }
                if !commit {
                    // Remember the abort so that a late Prepare of this transaction is voted down.
                    *slot = Some(Known {
                        seq: tx.seq,
                        change: None,
                        state: TxState::Aborted,
                        resolving: None,
                    });
                }
            }
        }
        self.send(out, from, Message::DecisionAck { tx });
    }

    pub(crate) fn on_decision_ack(&mut self, from: CoreId, tx: TxId) {
        if let Some(c) = self.agreement.coordinating.as_mut() {
            if c.tx == tx && c.decision.is_some() {
                c.acked.insert(from);
                self.check_finished();
            }
        }
    }

    pub(crate) fn agreement_sweep(&mut self, now: Instant, out: &mut impl Outbox) {
        if let Some(c) = self.agreement.coordinating {
            match c.decision {
                None if now >= c.deadline => self.decide(false, out),
                None => {
                    let to = c.participants.difference(c.yes).difference(self.failed);
                    self.send_all(
                        out,
                        to,
                        Message::Prepare {
                            tx: c.tx,
                            change: c.change,
                        },
                    );
                }
                Some(commit) => {
                    let to = c.participants.difference(c.acked).difference(self.failed);
                    let message = if commit {
                        Message::Commit { tx: c.tx }
                    } else {
                        Message::Abort { tx: c.tx }
                    };
                    self.send_all(out, to, message);
                }
            }
        }
        for coordinator in self.failed.iter() {
            let Some(known) = self.agreement.known[coordinator.index()] else {
                continue;
            };
            if let Some(answered) = known.resolving {
                let tx = TxId {
                    coordinator,
                    seq: known.seq,
                };
                let failed = self.failed;
                let to = self.live_peers().difference(answered);
                self.send_all(out, to, Message::ResolveQuery { tx, failed });
            }
        }
    }

    /// Reacts to new verdicts: a coordinator may now commit without the failed participants, and
    /// participants of a failed coordinator start (or finish) resolving.
    pub(crate) fn agreement_on_failure(&mut self, _now: Instant, out: &mut impl Outbox) {
        self.try_commit(out);
        self.check_finished();
        for coordinator in self.failed.iter() {
            let Some(known) = self.agreement.known[coordinator.index()] else {
                continue;
            };
            if known.state != TxState::Prepared {
                continue;
            }
            if known.resolving.is_none() {
                if let Some(entry) = self.agreement.known[coordinator.index()].as_mut() {
                    entry.resolving = Some(CoreSet::EMPTY);
                }
                let tx = TxId {
                    coordinator,
                    seq: known.seq,
                };
                let failed = self.failed;
                let to = self.live_peers();
                self.send_all(out, to, Message::ResolveQuery { tx, failed });
            }
            self.check_resolution(coordinator);
        }
    }

    /// Aborts a resolution once every live peer answered without knowing of a commit.
    fn check_resolution(&mut self, coordinator: CoreId) {
        let Some(known) = self.agreement.known[coordinator.index()] else {
            return;
        };
        if let (TxState::Prepared, Some(answered)) = (known.state, known.resolving) {
            if answered.is_superset(self.live_peers()) {
                self.settle(coordinator, false);
            }
        }
    }

    pub(crate) fn on_resolve_query(
        &mut self,
        now: Instant,
        from: CoreId,
        tx: TxId,
        failed: CoreSet,
        out: &mut impl Outbox,
    ) {
        // Adopting the asker's verdicts cuts the coordinator off before answering, so the answer
        // stays true.
        let mut verdicts = failed;
        verdicts.insert(tx.coordinator);
        self.merge_failed(now, verdicts, out);
        if self.fenced {
            return;
        }
        let state = self.agreement.state_of(tx);
        let failed = self.failed;
        self.send(out, from, Message::ResolveReply { tx, state, failed });
    }

    pub(crate) fn on_resolve_reply(
        &mut self,
        now: Instant,
        from: CoreId,
        tx: TxId,
        state: TxState,
        failed: CoreSet,
        out: &mut impl Outbox,
    ) {
        self.merge_failed(now, failed, out);
        if self.fenced {
            return;
        }
        let Some(known) = self.agreement.known[tx.coordinator.index()].as_mut() else {
            return;
        };
        if known.seq != tx.seq || known.state != TxState::Prepared {
            return;
        }
        let Some(answered) = known.resolving.as_mut() else {
            return;
        };
        match state {
            TxState::Committed => self.settle(tx.coordinator, true),
            TxState::Aborted => self.settle(tx.coordinator, false),
            _ => {
                answered.insert(from);
                self.check_resolution(tx.coordinator);
            }
        }
    }
}
