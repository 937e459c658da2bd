//! The per-core budget TCP connections are sized from: every connection's socket buffers and
//! state are charged to it, a connection below the core's limit always gets the smallest
//! buffers, and what the budget holds beyond those minimums (for every connection up to the
//! limit) lets early connections have large windows.
//!
//! A new connection's receive and send buffers are each the largest power of two from
//! [`MIN_BUFFER`] to the configured maximum whose excess over the minimum is at most
//! [`SURPLUS_SHARE`]⁻¹ of the surplus left: the first connections on an idle core get the
//! maximum (256 KiB by default, a window scaled by 3), later ones less, and once the surplus is
//! used up (or while a SYN flood fills the backlog) the minimum. Buffers are fixed for a
//! connection's life (smoltcp sizes its window scale from its receive buffer at the SYN).

/// The smallest receive (and send) buffer of a connection.
pub const MIN_BUFFER: usize = 4096;

/// A new connection's buffers may take at most this fraction (its inverse) of the surplus each.
pub const SURPLUS_SHARE: usize = 64;

/// Why the budget refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// The core holds its configured number of connections.
    ConnectionLimit,
    /// The budget cannot hold another connection's smallest buffers.
    Memory,
}

/// What one connection was given (and is charged for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Receive buffer bytes.
    pub receive: usize,
    /// Send buffer bytes.
    pub send: usize,
}

/// The core's TCP budget: bytes and connections.
#[derive(Clone, Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    high_water: usize,
    max_connections: usize,
    connections: usize,
    most_connections: usize,
    max_buffer: usize,
    overhead: usize,
}

impl Budget {
    /// A budget of `limit` bytes for at most `max_connections` connections, buffers up to
    /// `max_buffer` bytes each way, and `overhead` bytes of state charged per connection. When
    /// the bytes cannot hold the smallest buffers of `max_connections` connections, the
    /// connection limit is lowered to what they hold ([`Self::max_connections`]).
    pub fn new(limit: usize, max_connections: usize, max_buffer: usize, overhead: usize) -> Self {
        let max_buffer = max_buffer.max(MIN_BUFFER);
        let floor = 2 * MIN_BUFFER + overhead;
        Self {
            limit,
            used: 0,
            high_water: 0,
            max_connections: max_connections.min(limit / floor),
            connections: 0,
            most_connections: 0,
            max_buffer,
            overhead,
        }
    }

    /// Bytes a connection with `grant` is charged.
    pub fn cost(&self, grant: Grant) -> usize {
        grant.receive + grant.send + self.overhead
    }

    /// Sizes and charges a new connection. `pressure` (a SYN flood fills the backlog) gives it
    /// the smallest buffers.
    pub fn grant(&mut self, pressure: bool) -> Result<Grant, BudgetError> {
        if self.connections >= self.max_connections {
            return Err(BudgetError::ConnectionLimit);
        }
        let floor = 2 * MIN_BUFFER + self.overhead;
        // The smallest buffers of every other connection the limit still allows stay reserved.
        let reserved = (self.max_connections - self.connections - 1) * floor;
        let available = self
            .limit
            .saturating_sub(self.used)
            .saturating_sub(reserved);
        if available < floor {
            return Err(BudgetError::Memory);
        }
        let share = if pressure {
            0
        } else {
            (available - floor) / SURPLUS_SHARE
        };
        let size = largest_buffer(MIN_BUFFER + share, self.max_buffer);
        let grant = Grant {
            receive: size,
            send: size,
        };
        self.charge(self.cost(grant));
        self.connections += 1;
        self.most_connections = self.most_connections.max(self.connections);
        Ok(grant)
    }

    /// A connection given `grant` ended (or its allocation failed).
    pub fn release(&mut self, grant: Grant) {
        self.used = self.used.saturating_sub(self.cost(grant));
        self.connections = self.connections.saturating_sub(1);
    }

    fn charge(&mut self, bytes: usize) {
        self.used += bytes;
        self.high_water = self.high_water.max(self.used);
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The most bytes ever charged at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Connections charged now.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The most connections ever charged at once.
    pub fn most_connections(&self) -> usize {
        self.most_connections
    }

    /// The connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Bytes charged per connection besides its buffers.
    pub fn overhead(&self) -> usize {
        self.overhead
    }
}

/// The largest power of two from [`MIN_BUFFER`] up to `most` that is at most `at_most`.
fn largest_buffer(at_most: usize, most: usize) -> usize {
    let mut size = MIN_BUFFER;
    while size * 2 <= at_most.min(most) {
        size *= 2;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_connections_get_large_windows_and_the_limit_is_always_served() {
        let mut budget = Budget::new(64 << 20, 4096, 256 << 10, 1024);
        assert_eq!(budget.max_connections(), 4096);
        let first = budget.grant(false).unwrap();
        assert_eq!(first.receive, 256 << 10);
        assert_eq!(budget.grant(true).unwrap().receive, MIN_BUFFER);
        let mut grants = alloc::vec![first];
        while let Ok(grant) = budget.grant(false) {
            grants.push(grant);
            assert!(budget.used() <= budget.limit());
        }
        // Every connection up to the limit was accepted, with buffers shrinking as they came.
        assert_eq!(grants.len() + 1, 4096);
        assert_eq!(budget.grant(false), Err(BudgetError::ConnectionLimit));
        assert!(grants
            .windows(2)
            .all(|pair| pair[1].receive <= pair[0].receive));
        assert_eq!(grants.last().unwrap().receive, MIN_BUFFER);
        let high = budget.high_water();
        for grant in grants {
            budget.release(grant);
        }
        assert_eq!(budget.connections(), 1);
        assert_eq!(budget.high_water(), high);
        assert_eq!(budget.most_connections(), 4096);
    }

    #[test]
    fn a_small_budget_lowers_the_limit_and_memory_is_an_error() {
        let mut budget = Budget::new(100 * (2 * MIN_BUFFER + 512), 4096, 1 << 20, 512);
        assert_eq!(budget.max_connections(), 100);
        let grants: alloc::vec::Vec<_> = (0..100).map(|_| budget.grant(false).unwrap()).collect();
        assert_eq!(budget.grant(false), Err(BudgetError::ConnectionLimit));
        assert!(grants.iter().all(|grant| grant.receive == MIN_BUFFER));
        let mut tight = Budget::new(4 * MIN_BUFFER, 10, 1 << 20, 0);
        assert_eq!(tight.max_connections(), 2);
        tight.used = 4 * MIN_BUFFER - 1;
        assert_eq!(tight.grant(false), Err(BudgetError::Memory));
    }
}
