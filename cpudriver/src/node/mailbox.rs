//! One mailbox per core: every URPC endpoint the core has (the boot channel to each peer and the
//! channels the monitors bind later), a bounded outbox per link, the core's bulk pool, and the
//! wake-up of sleeping peers. Every letter of every family goes through [`Mailbox::send`] or
//! [`Mailbox::send_bulk`]; nothing in here waits.
//!
//! # Sending never spins
//! A letter goes straight into the peer's ring when there is room and nothing older waits.
//! Otherwise it joins the link's outbox (at most [`OUTBOX_CAPACITY`] letters, kept in order), which
//! [`Mailbox::flush`] retries every loop turn; the loop halts with a retry deadline while letters
//! wait ([`OUTBOX_RETRY_NS`]). A letter that finds the outbox full is refused: it is counted (per
//! peer and per reason, [`netd::TransportDrop`]) and the caller gets the reason. A peer the
//! monitors declared failed is fenced: its outbox is dropped at once, the buffers lent to it are
//! reclaimed, and every later send to it is refused at once.
//!
//! # Notification
//! Sends publish their slot at once; the peers written to are woken (URPC's
//! `notify_if_sleeping`, an IPI in the kernel) by the next [`Mailbox::flush`], which the node
//! calls after each phase of its turn, so one fence and at most one IPI per peer per phase.
//!
//! # Bulk buffers
//! [`Mailbox::send_bulk`] takes a buffer from the core's pool, lets the caller fill it (the one
//! copy) and sends its handle. The buffer is on the link's lent list from the moment its letter
//! enters the ring. Receiving a bulk letter counts it; the next flush tells the sender how many
//! it may take back (`BulkReturned`), in one letter however many there are (a count kept per link,
//! so returns never need an outbox and are never lost; a full ring only delays them).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use netd::{TransportCounters, TransportDrop, TRANSPORT_PEERS};
use urpc::{DecodeError, Endpoint, Message, Notifier, Payload, RecvError, RegionTable};

use super::bulk::{BulkBuffer, BulkError, BulkPool};
use super::framing::{Body, Family, KernelMessage, Letter};

/// Letters an outbox holds at most, per link.
pub const OUTBOX_CAPACITY: usize = 64;

/// Letters the node takes from one link per turn.
pub const RECEIVE_BATCH: usize = 16;

/// While letters wait in an outbox (or returns are owed), the loop retries at least this often
/// (nanoseconds) instead of spinning on the full ring.
pub const OUTBOX_RETRY_NS: u64 = 100_000;

/// Why a letter was refused: the reasons `/stats` counts (`netd::TransportDrop`).
pub type Refusal = TransportDrop;

/// One of the mailbox's links: `LinkId(c)` for `c < cores` is the boot channel to core `c`;
/// higher ids are channels the monitors bound later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub usize);

/// A letter waiting in an outbox: its encoded slot and the buffer it lends, if any.
struct Queued {
    payload: Payload,
    bulk: Option<BulkBuffer>,
}

struct Link {
    peer: usize,
    endpoint: Endpoint<'static>,
    outbox: VecDeque<Queued>,
    /// Buffers lent on this link, oldest first (the order the peer consumes them in).
    lent: VecDeque<BulkBuffer>,
    /// Bulk letters received on this link and not yet reported back.
    returns_owed: u32,
    /// Written to since the last notification.
    touched: bool,
}

/// A letter taken from a link.
#[derive(Debug)]
pub struct Received {
    /// The link it came on.
    pub link: LinkId,
    /// The core that sent it.
    pub peer: usize,
    /// The letter, or why its slot did not decode.
    pub letter: Result<Letter, DecodeError>,
}

/// Wakes the core at the other end of a link through the caller's waker.
struct Wake<'a> {
    wake: &'a mut dyn FnMut(usize),
    peer: usize,
}

impl Notifier for Wake<'_> {
    fn notify(&mut self) {
        (self.wake)(self.peer);
    }
}

/// One core's links, outboxes and bulk pool.
pub struct Mailbox {
    me: usize,
    links: Vec<Option<Link>>,
    fenced: Vec<bool>,
    pool: BulkPool,
    counters: TransportCounters,
    /// Letters that decoded badly or made no sense (bad returns).
    anomalies: u64,
    /// Monitor letters that went to fenced peers.
    verdicts_to_fenced: u64,
}

impl Mailbox {
    /// Core `me`'s mailbox over its boot endpoints (`endpoints[c]` talks to core `c`; `None` for
    /// `me` itself) and its bulk pool.
    pub fn new(me: usize, endpoints: Vec<Option<Endpoint<'static>>>, pool: BulkPool) -> Self {
        let cores = endpoints.len();
        let links = endpoints
            .into_iter()
            .enumerate()
            .map(|(peer, endpoint)| {
                endpoint.map(|endpoint| Link {
                    peer,
                    endpoint,
                    outbox: VecDeque::new(),
                    lent: VecDeque::new(),
                    returns_owed: 0,
                    touched: false,
                })
            })
            .collect();
        let counters = TransportCounters {
            bulk_pool_bytes: pool.capacity() as u64,
            ..TransportCounters::default()
        };
        Self {
            me,
            links,
            fenced: alloc::vec![false; cores],
            pool,
            counters,
            anomalies: 0,
            verdicts_to_fenced: 0,
        }
    }

    /// This core.
    pub fn core(&self) -> usize {
        self.me
    }

    /// Adds a channel the monitors bound to `peer`; returns its link.
    pub fn add_bound(&mut self, peer: usize, endpoint: Endpoint<'static>) -> LinkId {
        self.links.push(Some(Link {
            peer,
            endpoint,
            outbox: VecDeque::new(),
            lent: VecDeque::new(),
            returns_owed: 0,
            touched: false,
        }));
        LinkId(self.links.len() - 1)
    }

    /// Number of links (boot channels first, then bound ones).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The core at the other end of `link`.
    pub fn peer_of(&self, link: LinkId) -> Option<usize> {
        self.links.get(link.0)?.as_ref().map(|link| link.peer)
    }

    /// Whether the monitors' verdict fenced `peer`.
    pub fn is_fenced(&self, peer: usize) -> bool {
        self.fenced.get(peer).copied().unwrap_or(false)
    }

    /// The counters `/stats` shows (bulk use as of now).
    pub fn counters(&mut self) -> &TransportCounters {
        self.counters.bulk_in_use_bytes = self.pool.in_use() as u64;
        &self.counters
    }

    /// Letters that did not decode, or returns of buffers never lent.
    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }

    /// Monitor letters that went to fenced peers (the verdict they must hear: `send_verdict`).
    pub fn verdicts_to_fenced(&self) -> u64 {
        self.verdicts_to_fenced
    }

    /// Letters waiting in outboxes.
    pub fn backlog(&self) -> usize {
        self.links
            .iter()
            .flatten()
            .map(|link| link.outbox.len())
            .sum()
    }

    /// Whether consumed bulk letters are still to be reported back to a sender.
    pub fn owes_returns(&self) -> bool {
        self.links
            .iter()
            .flatten()
            .any(|link| link.returns_owed > 0)
    }

    /// Buffers lent and not yet returned, on every link.
    pub fn lent(&self) -> usize {
        self.links
            .iter()
            .flatten()
            .map(|link| link.lent.len())
            .sum()
    }

    /// Bytes of the bulk pool in use.
    pub fn bulk_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Largest message [`Self::send_bulk`] can carry.
    pub fn bulk_capacity(&self) -> usize {
        self.pool.capacity()
    }

    fn refuse(&mut self, peer: usize, reason: Refusal) -> Refusal {
        self.counters.drops[reason as usize] += 1;
        if let Some(slot) = self.counters.peer_drops.get_mut(peer.min(TRANSPORT_PEERS)) {
            slot[reason as usize] = slot[reason as usize].saturating_add(1);
        }
        reason
    }

    /// Checks that a letter to `link` would be accepted now (a live peer, a channel, room).
    fn admit(&mut self, link: LinkId) -> Result<usize, Refusal> {
        let peer = match self.links.get(link.0) {
            Some(Some(link)) => link.peer,
            _ => return Err(self.refuse(link.0, Refusal::NoChannel)),
        };
        if self.is_fenced(peer) {
            return Err(self.refuse(peer, Refusal::PeerFenced));
        }
        let full = self.links[link.0]
            .as_ref()
            .is_some_and(|link| link.outbox.len() >= OUTBOX_CAPACITY);
        if full {
            return Err(self.refuse(peer, Refusal::OutboxFull));
        }
        Ok(peer)
    }

    /// Sends `letter` (an inline one; bulk letters go through [`Self::send_bulk`]) on `link`.
    /// `Ok` means it is in the peer's ring or, behind older letters or a full ring, in the
    /// outbox; it will be delivered unless the peer is fenced first.
    pub fn send(&mut self, link: LinkId, letter: &Letter) -> Result<(), Refusal> {
        if letter.family == Family::Monitor && self.peer_of(link).is_some_and(|p| self.is_fenced(p))
        {
            return self.send_verdict(link, letter);
        }
        let peer = self.admit(link)?;
        if matches!(letter.body, Body::Bulk { .. }) {
            return Err(self.refuse(peer, Refusal::TooLarge));
        }
        let mut payload = [0u8; urpc::PAYLOAD_SIZE];
        letter.encode(&mut payload);
        self.submit(
            link,
            Queued {
                payload,
                bulk: None,
            },
        );
        Ok(())
    }

    /// Sends `length` bytes by reference on `link`: takes a buffer from the pool, lets `fill`
    /// write it (returning `false` abandons the send, refused as [`Refusal::TooLarge`]), and
    /// sends a letter of `family` with `tag` and the buffer's handle.
    pub fn send_bulk(
        &mut self,
        link: LinkId,
        family: Family,
        tag: u8,
        length: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<(), Refusal> {
        let peer = self.admit(link)?;
        let mut buffer = match self.pool.alloc(length) {
            Ok(buffer) => buffer,
            Err(BulkError::Exhausted) => return Err(self.refuse(peer, Refusal::BulkExhausted)),
            Err(BulkError::TooLarge) => return Err(self.refuse(peer, Refusal::TooLarge)),
        };
        if !fill(self.pool.bytes_mut(&mut buffer)) {
            self.pool.free(buffer);
            return Err(self.refuse(peer, Refusal::TooLarge));
        }
        let letter = Letter {
            family,
            body: Body::Bulk {
                tag,
                handle: self.pool.handle(&buffer),
            },
        };
        let mut payload = [0u8; urpc::PAYLOAD_SIZE];
        letter.encode(&mut payload);
        self.submit(
            link,
            Queued {
                payload,
                bulk: Some(buffer),
            },
        );
        Ok(())
    }

    /// Puts an admitted letter into the ring, or into the outbox behind older ones.
    fn submit(&mut self, id: LinkId, queued: Queued) {
        let Some(Some(link)) = self.links.get_mut(id.0) else {
            return;
        };
        link.touched = true;
        if link.outbox.is_empty() && link.endpoint.sender.try_send(&queued.payload).is_ok() {
            Self::entered(&mut self.counters, link, queued);
            return;
        }
        link.outbox.push_back(queued);
        self.counters.deferred += 1;
        self.counters.outbox_high_water = self
            .counters
            .outbox_high_water
            .max(link.outbox.len() as u64);
    }

    /// Bookkeeping once a letter is in the ring.
    fn entered(counters: &mut TransportCounters, link: &mut Link, queued: Queued) {
        counters.sent += 1;
        if let Some(buffer) = queued.bulk {
            counters.bulk_sent += 1;
            counters.bulk_bytes += buffer.len() as u64;
            link.lent.push_back(buffer);
        }
    }

    /// Takes the next letter from `link`, if any. Returns of lent buffers are handled here and
    /// not passed on (at most [`RECEIVE_BATCH`] of them per call). A bulk letter is counted as
    /// consumed now and reported back at the next [`Self::flush`]: the caller must be done with
    /// its bytes before it flushes.
    pub fn receive(&mut self, id: LinkId, regions: &RegionTable<'_>) -> Option<Received> {
        let Some(Some(link)) = self.links.get_mut(id.0) else {
            return None;
        };
        if self.fenced.get(link.peer).copied().unwrap_or(false) {
            return None;
        }
        for _ in 0..RECEIVE_BATCH {
            let payload = match link.endpoint.receiver.try_recv() {
                Ok(payload) => payload,
                Err(RecvError::Empty) => return None,
                Err(_) => {
                    self.anomalies += 1;
                    continue;
                }
            };
            self.counters.received += 1;
            if Letter::is_bulk(&payload) {
                link.returns_owed += 1;
            }
            let letter = Letter::decode(&payload, regions);
            if let Ok(Letter {
                family: Family::Kernel,
                body: Body::Inline(inline),
            }) = &letter
            {
                if let Ok(KernelMessage::BulkReturned { count }) =
                    KernelMessage::decode(inline.as_slice())
                {
                    for _ in 0..count {
                        match link.lent.pop_front() {
                            Some(buffer) => {
                                self.pool.free(buffer);
                                self.counters.bulk_returned += 1;
                            }
                            None => {
                                self.anomalies += 1;
                                break;
                            }
                        }
                    }
                    continue;
                }
            }
            if letter.is_err() {
                self.anomalies += 1;
            }
            return Some(Received {
                link: id,
                peer: link.peer,
                letter,
            });
        }
        None
    }

    /// Retries every outbox, reports consumed bulk letters back, and wakes each peer written to
    /// since the last flush (through `wake(core)`). Returns whether letters or returns still wait
    /// (then the caller must come back within [`OUTBOX_RETRY_NS`]).
    pub fn flush(&mut self, wake: &mut dyn FnMut(usize)) -> bool {
        let mut waiting = false;
        for link in self.links.iter_mut().flatten() {
            if self.fenced.get(link.peer).copied().unwrap_or(false) {
                // Only a verdict letter may have gone in (`send_verdict`): wake the peer for it.
                if core::mem::take(&mut link.touched) {
                    let peer = link.peer;
                    link.endpoint.sender.notify_if_sleeping(&mut Wake {
                        wake: &mut *wake,
                        peer,
                    });
                }
                continue;
            }
            while let Some(front) = link.outbox.front() {
                link.touched = true;
                if link.endpoint.sender.try_send(&front.payload).is_err() {
                    break;
                }
                if let Some(queued) = link.outbox.pop_front() {
                    Self::entered(&mut self.counters, link, queued);
                }
            }
            if link.returns_owed > 0 {
                link.touched = true;
                let mut payload = [0u8; urpc::PAYLOAD_SIZE];
                Letter::kernel(KernelMessage::BulkReturned {
                    count: link.returns_owed,
                })
                .encode(&mut payload);
                if link.endpoint.sender.try_send(&payload).is_ok() {
                    link.returns_owed = 0;
                }
            }
            waiting |= !link.outbox.is_empty() || link.returns_owed > 0;
            if core::mem::take(&mut link.touched) {
                let peer = link.peer;
                link.endpoint.sender.notify_if_sleeping(&mut Wake {
                    wake: &mut *wake,
                    peer,
                });
            }
        }
        waiting
    }

    /// A monitor letter to a fenced peer: straight into its ring if there is room, never queued.
    /// A core the monitors declared failed while it still runs (slow, descheduled) must hear the
    /// verdict to stop (the heartbeats carry it); nothing else reaches a fenced peer.
    fn send_verdict(&mut self, link: LinkId, letter: &Letter) -> Result<(), Refusal> {
        let Some(Some(entry)) = self.links.get_mut(link.0) else {
            return Err(self.refuse(link.0, Refusal::NoChannel));
        };
        let peer = entry.peer;
        let mut payload = [0u8; urpc::PAYLOAD_SIZE];
        letter.encode(&mut payload);
        if entry.endpoint.sender.try_send(&payload).is_ok() {
            entry.touched = true;
            self.counters.sent += 1;
            self.verdicts_to_fenced += 1;
            Ok(())
        } else {
            Err(self.refuse(peer, Refusal::PeerFenced))
        }
    }

    /// The monitors declared `peer` failed: drops its outboxes, takes back every buffer lent to
    /// it (it will never return them) and refuses letters to it from now on. Returns the buffers
    /// reclaimed.
    pub fn fence(&mut self, peer: usize) -> usize {
        if let Some(flag) = self.fenced.get_mut(peer) {
            *flag = true;
        }
        let mut reclaimed = 0;
        for link in self
            .links
            .iter_mut()
            .flatten()
            .filter(|link| link.peer == peer)
        {
            for queued in link.outbox.drain(..) {
                self.counters.drops[Refusal::PeerFenced as usize] += 1;
                if let Some(slot) = self.counters.peer_drops.get_mut(peer) {
                    slot[Refusal::PeerFenced as usize] += 1;
                }
                if let Some(buffer) = queued.bulk {
                    self.pool.free(buffer);
                }
            }
            for buffer in link.lent.drain(..) {
                self.pool.free(buffer);
                reclaimed += 1;
            }
            link.returns_owed = 0;
        }
        self.counters.bulk_reclaimed += reclaimed as u64;
        reclaimed
    }

    /// Announces sleep on every link to a live peer (URPC's sleep/notify handshake). Returns
    /// `false` if a letter is waiting on one of them: the core must not halt. Call
    /// [`Self::woke`] afterwards in either case.
    pub fn prepare_to_sleep(&mut self) -> bool {
        for link in self.links.iter_mut().flatten() {
            if self.fenced.get(link.peer).copied().unwrap_or(false) {
                continue;
            }
            if link.endpoint.receiver.prepare_to_sleep() == urpc::SleepDecision::MessagePending {
                return false;
            }
        }
        true
    }

    /// Withdraws the sleep announcement on every link (after a halt, or a decision not to).
    pub fn woke(&mut self) {
        for link in self.links.iter_mut().flatten() {
            link.endpoint.receiver.woke();
        }
    }
}
