//! A TCP path's connection table: one smoltcp `SocketSet` per connection, found by the remote
//! end in a hash map (the local end is the path's: our address and its port), so a segment costs
//! one lookup and smoltcp looks at exactly one socket — never a scan over every connection.
//!
//! Beside the map: a ready list (connections with work for the next service: a segment arrived,
//! a timer fired, output is pending), a timer heap (each connection's next smoltcp or idle
//! deadline) and the half-open connections oldest first (the backlog). Every structure is bounded
//! by the connection count and reserved when a connection is added (`try_reserve`), so adding
//! a connection is the only place that can fail for memory, and it fails as an error.

use super::budget::Grant;
use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::hash::{BuildHasher, Hash, Hasher};
use hashbrown::HashMap;
use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

/// A connection's index in its table (the connection number its application sees).
pub(crate) type ConnectionId = u32;

/// The remote end of a connection (its local end is the path's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The peer's IPv4 address.
    pub(crate) address: [u8; 4],
    /// The peer's port.
    pub(crate) port: u16,
}

impl Hash for Remote {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(u32::from_be_bytes(self.address)) << 16 | u64::from(self.port));
    }
}

/// Keyed hashing of remote ends: a multiply-xorshift finaliser over the 48-bit key and a
/// per-core secret, so a peer cannot cheaply pick ports that collide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RemoteHash {
    secret: u64,
}

impl RemoteHash {
    pub(crate) fn new(secret: u64) -> Self {
        Self { secret }
    }
}

/// The hasher [`RemoteHash`] builds.
pub(crate) struct RemoteHasher {
    state: u64,
}

impl Hasher for RemoteHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.state = (self.state ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state ^= value;
    }

    fn finish(&self) -> u64 {
        let mut x = self.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

impl BuildHasher for RemoteHash {
    type Hasher = RemoteHasher;
    fn build_hasher(&self) -> RemoteHasher {
        RemoteHasher { state: self.secret }
    }
}

/// Where a connection is in its life, as the path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// SYN received, handshake not complete: the application does not know it yet.
    HalfOpen,
    /// The application was told (`on_open`) and serves it.
    Open,
    /// The application was told it closed (`on_close`); the socket finishes (TIME-WAIT, the
    /// last ACK) before the connection is freed.
    Closing,
}

/// One connection: its own socket set (one socket), what it was given, and its bookkeeping.
pub(crate) struct Connection {
    pub(crate) remote: Remote,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) handle: SocketHandle,
    pub(crate) grant: Grant,
    pub(crate) phase: Phase,
    /// When the SYN arrived.
    pub(crate) created: Instant,
    /// The last moment data arrived or data of ours was acknowledged.
    pub(crate) last_progress: Instant,
    /// The last data segment was full-sized: the peer streams (egress may be coalesced).
    pub(crate) bulk: bool,
    /// Egress held back until then (coalescing a streaming connection's output).
    pub(crate) egress_at: Option<Instant>,
    /// In the ready list.
    queued: bool,
    /// The deadline its timer-heap entry stands for.
    timer: Option<Instant>,
}

impl Connection {
    /// A connection for `remote` over `socket`; fails when its socket set cannot be allocated.
    pub(crate) fn new(
        remote: Remote,
        socket: tcp::Socket<'static>,
        grant: Grant,
        now: Instant,
    ) -> Result<Self, TableError> {
        let mut storage: Vec<SocketStorage<'static>> = Vec::new();
        storage
            .try_reserve_exact(1)
            .map_err(|_| TableError::OutOfMemory)?;
        let mut sockets = SocketSet::new(storage);
        let handle = sockets.add(socket);
        Ok(Self {
            remote,
            sockets,
            handle,
            grant,
            phase: Phase::HalfOpen,
            created: now,
            last_progress: now,
            bulk: false,
            egress_at: None,
            queued: false,
            timer: None,
        })
    }

    /// The connection's socket.
    pub(crate) fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }
}

/// Why a connection could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableError {
    /// An allocation failed (the heap, not the budget, ran short).
    OutOfMemory,
    /// The remote end already has a connection.
    Duplicate,
}

/// Timer-heap entries beyond twice the connections plus this are compacted away.
const TIMER_SLACK: usize = 64;

/// A TCP path's connections.
pub(crate) struct Table {
    slots: Vec<Option<Connection>>,
    free: Vec<ConnectionId>,
    index: HashMap<Remote, ConnectionId, RemoteHash>,
    ready: VecDeque<ConnectionId>,
    timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    half_open: VecDeque<(ConnectionId, Instant)>,
    live: usize,
    half_open_count: usize,
    open_count: usize,
    most: usize,
}

impl Table {
    pub(crate) fn new(secret: u64) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(RemoteHash::new(secret)),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            half_open: VecDeque::new(),
            live: 0,
            half_open_count: 0,
            open_count: 0,
            most: 0,
        }
    }

    /// The connection of `remote`.
    pub(crate) fn lookup(&self, remote: Remote) -> Option<ConnectionId> {
        self.index.get(&remote).copied()
    }

    /// The connection `id`.
    pub(crate) fn get_mut(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    /// Adds a half-open connection; every structure it may later be queued in is reserved now.
    pub(crate) fn insert(&mut self, connection: Connection) -> Result<ConnectionId, TableError> {
        if self.index.contains_key(&connection.remote) {
            return Err(TableError::Duplicate);
        }
        let live = self.live + 1;
        let reserve = |have: usize, want: usize| want.saturating_sub(have);
        self.index
            .try_reserve(1)
            .map_err(|_| TableError::OutOfMemory)?;
        self.ready
            .try_reserve(reserve(self.ready.len(), live))
            .map_err(|_| TableError::OutOfMemory)?;
        self.timers
            .try_reserve(reserve(self.timers.len(), 2 * live + TIMER_SLACK + 1))
            .map_err(|_| TableError::OutOfMemory)?;
        self.half_open
            .try_reserve(reserve(self.half_open.len(), 2 * live + 1))
            .map_err(|_| TableError::OutOfMemory)?;
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots
                    .try_reserve(1)
                    .map_err(|_| TableError::OutOfMemory)?;
                // The free list must take every slot back without allocating.
                if self.free.try_reserve(self.slots.len() + 1).is_err() {
                    return Err(TableError::OutOfMemory);
                }
                self.slots.push(None);
                (self.slots.len() - 1) as ConnectionId
            }
        };
        let (remote, created) = (connection.remote, connection.created);
        self.slots[id as usize] = Some(connection);
        self.index.insert(remote, id);
        if self.half_open.len() >= 2 * live {
            self.compact_half_open();
        }
        self.half_open.push_back((id, created));
        self.live = live;
        self.half_open_count += 1;
        self.most = self.most.max(live);
        Ok(id)
    }

    /// Removes connection `id` and gives it back.
    pub(crate) fn remove(&mut self, id: ConnectionId) -> Option<Connection> {
        let connection = self.slots.get_mut(id as usize)?.take()?;
        self.index.remove(&connection.remote);
        match connection.phase {
            Phase::HalfOpen => self.half_open_count -= 1,
            Phase::Open => self.open_count -= 1,
            Phase::Closing => {}
        }
        self.live -= 1;
        // Reserved when the slot was made: never allocates.
        self.free.push(id);
        Some(connection)
    }

    /// Moves connection `id` to `phase` (the counts follow).
    pub(crate) fn set_phase(&mut self, id: ConnectionId, phase: Phase) {
        let Some(connection) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        match connection.phase {
            Phase::HalfOpen => self.half_open_count -= 1,
            Phase::Open => self.open_count -= 1,
            Phase::Closing => {}
        }
        match phase {
            Phase::HalfOpen => self.half_open_count += 1,
            Phase::Open => self.open_count += 1,
            Phase::Closing => {}
        }
        connection.phase = phase;
    }

    /// Puts `id` on the ready list (once).
    pub(crate) fn mark_ready(&mut self, id: ConnectionId) {
        if let Some(connection) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
            if !connection.queued {
                connection.queued = true;
                // Reserved for every live connection: never allocates.
                self.ready.push_back(id);
            }
        }
    }

    /// Puts every connection the application knows on the ready list.
    pub(crate) fn mark_all_open_ready(&mut self) {
        for id in 0..self.slots.len() as ConnectionId {
            if matches!(&self.slots[id as usize], Some(c) if c.phase == Phase::Open) {
                self.mark_ready(id);
            }
        }
    }

    /// Takes the next ready connection.
    pub(crate) fn pop_ready(&mut self) -> Option<ConnectionId> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(connection) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
                if connection.queued {
                    connection.queued = false;
                    return Some(id);
                }
            }
        }
        None
    }

    /// Connections on the ready list.
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Sets `id`'s timer to `at` (none: no timer).
    pub(crate) fn schedule(&mut self, id: ConnectionId, at: Option<Instant>) {
        let Some(connection) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let keep = match (connection.timer, at) {
            // An entry at or before the new deadline exists: it fires and is re-evaluated then.
            (Some(old), Some(new)) => old <= new,
            (_, None) => {
                connection.timer = None;
                true
            }
            (None, Some(_)) => false,
        };
        if keep {
            return;
        }
        let Some(at) = at else { return };
        connection.timer = Some(at);
        if self.timers.len() >= 2 * self.live + TIMER_SLACK {
            self.compact_timers();
        }
        // Reserved to 2 × live + slack at insert, compacted below that: never allocates.
        self.timers.push(Reverse((at, id)));
    }

    /// Takes the connections whose timers are due at `now` onto the ready list.
    pub(crate) fn fire_due(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let due = self
                .slots
                .get_mut(id as usize)
                .and_then(Option::as_mut)
                .is_some_and(|connection| {
                    if connection.timer == Some(at) {
                        connection.timer = None;
                        true
                    } else {
                        false
                    }
                });
            if due {
                self.mark_ready(id);
            }
        }
    }

    /// The earliest timer (possibly one that no longer counts: it only makes the path look
    /// early).
    pub(crate) fn next_timer(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            let current = self
                .slots
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|connection| connection.timer == Some(at));
            if current {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn compact_timers(&mut self) {
        let slots = &self.slots;
        self.timers.retain(|Reverse((at, id))| {
            slots
                .get(*id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|connection| connection.timer == Some(*at))
        });
    }

    /// The oldest half-open connection, and when it was made.
    pub(crate) fn oldest_half_open(&mut self) -> Option<(ConnectionId, Instant)> {
        while let Some((id, created)) = self.half_open.front().copied() {
            let still = self
                .slots
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.phase == Phase::HalfOpen && c.created == created);
            if still {
                return Some((id, created));
            }
            self.half_open.pop_front();
        }
        None
    }

    fn compact_half_open(&mut self) {
        let slots = &self.slots;
        self.half_open.retain(|(id, created)| {
            slots
                .get(*id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.phase == Phase::HalfOpen && c.created == *created)
        });
    }

    /// Connections in the table.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Half-open connections.
    pub(crate) fn half_open(&self) -> usize {
        self.half_open_count
    }

    /// Connections the application serves.
    pub(crate) fn open(&self) -> usize {
        self.open_count
    }

    /// The most connections the table held at once.
    pub(crate) fn most(&self) -> usize {
        self.most
    }
}

/// Bytes of state a connection costs besides its buffers (its socket, its socket set's
/// storage, the table entry, the map, ready list, timer heap and backlog slots), for the budget.
pub(crate) const CONNECTION_STATE_BYTES: usize = core::mem::size_of::<SocketStorage<'static>>()
    + core::mem::size_of::<Option<Connection>>()
    + 2 * core::mem::size_of::<(Remote, ConnectionId)>()
    + core::mem::size_of::<ConnectionId>() * 2
    + 2 * core::mem::size_of::<Reverse<(Instant, ConnectionId)>>()
    + 2 * core::mem::size_of::<(ConnectionId, Instant)>()
    + 64;

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::time::Duration;

    fn connection(port: u16, now: Instant) -> Connection {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(alloc::vec![0; 64]),
            tcp::SocketBuffer::new(alloc::vec![0; 64]),
        );
        let grant = Grant {
            receive: 64,
            send: 64,
        };
        let remote = Remote {
            address: [10, 0, (port >> 8) as u8, port as u8],
            port,
        };
        Connection::new(remote, socket, grant, now).unwrap()
    }

    /// Churn: connections come and go in a pseudo-random order; the map, slots, counts and
    /// queues stay consistent and bounded, ids are reused, and lookups find exactly the live.
    #[test]
    fn the_table_under_churn() {
        let mut table = Table::new(0x1234);
        let mut live: std::collections::BTreeMap<u16, ConnectionId> = Default::default();
        let mut seed = 99u32;
        let mut now = Instant::from_millis(0);
        for step in 0..20_000u32 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let port = (seed >> 16) as u16 % 3000;
            now += Duration::from_micros(100);
            match live.get(&port).copied() {
                Some(id) if !seed.is_multiple_of(3) => {
                    let removed = table.remove(id).unwrap();
                    assert_eq!(removed.remote.port, port);
                    live.remove(&port);
                }
                Some(id) => {
                    table.set_phase(id, Phase::Open);
                    table.mark_ready(id);
                    table.schedule(id, Some(now + Duration::from_millis(u64::from(seed % 50))));
                }
                None => {
                    let id = table.insert(connection(port, now)).unwrap();
                    live.insert(port, id);
                    table.schedule(id, Some(now + Duration::from_millis(5)));
                }
            }
            if step % 97 == 0 {
                table.fire_due(now);
                while table.pop_ready().is_some() {}
            }
            // Bounded by the most connections ever held (stale entries are compacted away when
            // a connection is added or scheduled), within what insert reserved.
            assert!(table.timers.len() <= 2 * table.most + TIMER_SLACK + 1);
            assert!(table.half_open.len() <= 2 * table.most + 1);
            assert!(table.ready.len() <= table.live);
        }
        assert_eq!(table.len(), live.len());
        assert!(table.slots.len() <= 3000, "ids are reused");
        for (port, id) in &live {
            let remote = Remote {
                address: [10, 0, (port >> 8) as u8, *port as u8],
                port: *port,
            };
            assert_eq!(table.lookup(remote), Some(*id));
        }
        let counted = table.slots.iter().filter(|slot| slot.is_some()).count();
        assert_eq!(counted, live.len());
        assert_eq!(
            table.half_open() + table.open(),
            live.len(),
            "every live connection is half-open or open here"
        );
        assert!(table
            .insert(connection(*live.keys().next().unwrap(), now))
            .is_err_and(|e| e == TableError::Duplicate));
    }

    #[test]
    fn timers_fire_once_in_order_and_stale_entries_do_not_count() {
        let mut table = Table::new(7);
        let t = Instant::from_millis;
        let a = table.insert(connection(1, t(0))).unwrap();
        let b = table.insert(connection(2, t(0))).unwrap();
        table.schedule(a, Some(t(50)));
        table.schedule(b, Some(t(20)));
        table.schedule(a, Some(t(10))); // earlier: a new entry; the old one goes stale
        assert_eq!(table.next_timer(), Some(t(10)));
        table.fire_due(t(15));
        assert_eq!(table.pop_ready(), Some(a));
        assert_eq!(table.pop_ready(), None);
        assert_eq!(table.next_timer(), Some(t(20)));
        table.fire_due(t(100));
        assert_eq!(table.pop_ready(), Some(b));
        assert_eq!(
            table.pop_ready(),
            None,
            "a's stale entry at 50 fired nothing"
        );
        table.remove(a);
        table.schedule(b, None);
        assert_eq!(table.next_timer(), None);
        assert_eq!(table.oldest_half_open().map(|(id, _)| id), Some(b));
    }
}
