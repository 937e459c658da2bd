//! Plain data shared by every part of the monitor: core identities and sets, time, memory
//! regions, service names, transaction and binding identities, and the changes agreed on.

/// Largest number of cores a Flotilla machine may have; core ids are `0..MAX_CORES`.
pub const MAX_CORES: usize = 64;

/// Longest service name, in bytes.
pub const NAME_BYTES: usize = 16;

/// Identity of a core (and of the monitor running on it): an index below [`MAX_CORES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(u8);

impl CoreId {
    /// The core with this index, or `None` when `index >= MAX_CORES`.
    pub const fn new(index: u8) -> Option<CoreId> {
        if (index as usize) < MAX_CORES {
            Some(CoreId(index))
        } else {
            None
        }
    }

    /// The core's index, `0..MAX_CORES`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The core's index as a byte (the wire form).
    pub const fn as_u8(self) -> u8 {
        self.0
    }
}

/// A set of cores, one bit per core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CoreSet(u64);

impl CoreSet {
    /// The empty set.
    pub const EMPTY: CoreSet = CoreSet(0);

    /// The set whose bit `i` stands for core `i`.
    pub const fn from_bits(bits: u64) -> CoreSet {
        CoreSet(bits)
    }

    /// Cores `0..count` (all of them when `count >= MAX_CORES`).
    pub const fn first(count: usize) -> CoreSet {
        if count >= MAX_CORES {
            CoreSet(u64::MAX)
        } else {
            CoreSet((1u64 << count) - 1)
        }
    }

    /// The bit mask (the wire form).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether `core` is in the set.
    pub const fn contains(self, core: CoreId) -> bool {
        self.0 & (1u64 << core.0) != 0
    }

    /// Adds `core`; returns whether it was absent.
    pub fn insert(&mut self, core: CoreId) -> bool {
        let absent = !self.contains(core);
        self.0 |= 1u64 << core.0;
        absent
    }

    /// Removes `core`; returns whether it was present.
    pub fn remove(&mut self, core: CoreId) -> bool {
        let present = self.contains(core);
        self.0 &= !(1u64 << core.0);
        present
    }

    /// The set without `core`.
    pub const fn without(self, core: CoreId) -> CoreSet {
        CoreSet(self.0 & !(1u64 << core.0))
    }

    /// Cores in either set.
    pub const fn union(self, other: CoreSet) -> CoreSet {
        CoreSet(self.0 | other.0)
    }

    /// Cores in `self` but not in `other`.
    pub const fn difference(self, other: CoreSet) -> CoreSet {
        CoreSet(self.0 & !other.0)
    }

    /// Cores in both sets.
    pub const fn intersection(self, other: CoreSet) -> CoreSet {
        CoreSet(self.0 & other.0)
    }

    /// Whether every core of `other` is in `self`.
    pub const fn is_superset(self, other: CoreSet) -> bool {
        other.0 & !self.0 == 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of cores in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The lowest-numbered core in the set.
    pub const fn lowest(self) -> Option<CoreId> {
        if self.0 == 0 {
            None
        } else {
            Some(CoreId(self.0.trailing_zeros() as u8))
        }
    }

    /// The cores in increasing order.
    pub fn iter(self) -> impl Iterator<Item = CoreId> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let index = rest.trailing_zeros() as u8;
            rest &= rest - 1;
            Some(CoreId(index))
        })
    }
}

/// A point in time: nanoseconds since an arbitrary origin shared by nobody (each core may use its
/// own clock; the monitor only compares instants taken on its own core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The instant `nanos` later, saturating at the end of time.
    pub const fn after(self, nanos: u64) -> Instant {
        Instant(self.0.saturating_add(nanos))
    }
}

/// A range of physical memory `[base, base + len)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Region {
    /// Physical address of the first byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What a core brings to the machine, announced in its boot greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreInfo {
    /// The core.
    pub core: CoreId,
    /// Its local APIC id.
    pub apic_id: u32,
    /// Its NUMA node (proximity domain).
    pub numa_node: u16,
    /// The slice of physical memory the core owns.
    pub memory: Region,
}

/// Why a byte string is not a valid service name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Names have at least one byte.
    Empty,
    /// Names have at most [`NAME_BYTES`] bytes.
    TooLong,
}

/// A service name: 1 to [`NAME_BYTES`] bytes, compared byte for byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    bytes: [u8; NAME_BYTES],
    len: u8,
}

impl Name {
    /// The name spelled by `bytes`.
    pub fn new(bytes: &[u8]) -> Result<Name, NameError> {
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > NAME_BYTES {
            return Err(NameError::TooLong);
        }
        let mut name = Name {
            bytes: [0; NAME_BYTES],
            len: bytes.len() as u8,
        };
        name.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(name)
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl core::fmt::Debug for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Name(")?;
        for &byte in self.as_bytes() {
            if byte.is_ascii_graphic() {
                write!(f, "{}", byte as char)?;
            } else {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        write!(f, ")")
    }
}

/// Identity of an agreement (two-phase commit) transaction: the coordinating core and its
/// per-coordinator sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId {
    /// The core that began the transaction and coordinates it.
    pub coordinator: CoreId,
    /// Sequence number, increasing per coordinator.
    pub seq: u32,
}

/// Identity of a channel binding: the client's core and its per-core sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingId {
    /// The core of the client that asked for the binding.
    pub client: CoreId,
    /// Sequence number, increasing per client core.
    pub seq: u32,
}

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A change that must hold on every core at once, decided by agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Start accepting `proto` traffic on `port` on every core.
    OpenPort {
        /// Transport protocol.
        proto: Protocol,
        /// Port number.
        port: u16,
    },
    /// Stop accepting `proto` traffic on `port` on every core.
    ClosePort {
        /// Transport protocol.
        proto: Protocol,
        /// Port number.
        port: u16,
    },
    /// Move flow group `group` (a redirection table entry) from core `from` to core `to`.
    MoveFlowGroup {
        /// The flow group (redirection table index).
        group: u16,
        /// Its owner before the change.
        from: CoreId,
        /// Its owner after the change.
        to: CoreId,
    },
}

impl Change {
    /// Whether two changes touch the same thing, so that they may not be prepared at once on a core
    /// (the later one is voted down).
    pub fn conflicts_with(&self, other: &Change) -> bool {
        match (self.port_key(), other.port_key()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.group() == other.group(),
            _ => false,
        }
    }

    fn port_key(&self) -> Option<(Protocol, u16)> {
        match *self {
            Change::OpenPort { proto, port } | Change::ClosePort { proto, port } => {
                Some((proto, port))
            }
            Change::MoveFlowGroup { .. } => None,
        }
    }

    fn group(&self) -> Option<u16> {
        match *self {
            Change::MoveFlowGroup { group, .. } => Some(group),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_set_iterates_in_order_and_knows_its_lowest() {
        let mut set = CoreSet::EMPTY;
        for index in [5u8, 0, 63, 17] {
            assert!(set.insert(CoreId::new(index).unwrap()));
        }
        let cores: Vec<usize> = set.iter().map(CoreId::index).collect();
        assert_eq!(cores, vec![0, 5, 17, 63]);
        assert_eq!(set.len(), 4);
        assert_eq!(set.lowest(), CoreId::new(0));
        assert!(set.remove(CoreId::new(0).unwrap()));
        assert_eq!(set.lowest(), CoreId::new(5));
        assert_eq!(CoreSet::first(64).len(), 64);
        assert!(CoreId::new(64).is_none());
    }

    #[test]
    fn names_are_one_to_sixteen_bytes() {
        assert_eq!(Name::new(b""), Err(NameError::Empty));
        assert_eq!(Name::new(&[b'a'; 17]), Err(NameError::TooLong));
        assert_eq!(Name::new(b"echo").unwrap().as_bytes(), b"echo");
    }

    #[test]
    fn changes_conflict_on_the_same_port_or_group() {
        let open = Change::OpenPort {
            proto: Protocol::Udp,
            port: 7,
        };
        let close = Change::ClosePort {
            proto: Protocol::Udp,
            port: 7,
        };
        let other = Change::OpenPort {
            proto: Protocol::Tcp,
            port: 7,
        };
        let c = |i| CoreId::new(i).unwrap();
        let move_a = Change::MoveFlowGroup {
            group: 3,
            from: c(0),
            to: c(1),
        };
        let move_b = Change::MoveFlowGroup {
            group: 3,
            from: c(2),
            to: c(1),
        };
        let move_c = Change::MoveFlowGroup {
            group: 4,
            from: c(0),
            to: c(1),
        };
        assert!(open.conflicts_with(&close));
        assert!(!open.conflicts_with(&other));
        assert!(move_a.conflicts_with(&move_b));
        assert!(!move_a.conflicts_with(&move_c));
        assert!(!move_a.conflicts_with(&open));
    }
}
