//! Choosing flows: source ports whose Toeplitz hash puts the same number of flows on every
//! receive queue of the guest, so that every core gets load. Uses `drivers::rss`, the one
//! implementation of the hash the NIC computes (consecutive ports can all land on one queue).

use drivers::nic::QueueId;
use drivers::rss::{default_table, queue_of, FlowTuple, DEFAULT_KEY};
use std::net::Ipv4Addr;

/// Source ports for `flows` flows from `source` to `destination:port`, spread evenly over
/// `queues` queues (1..=16) under Flotilla's default redirection table and key, taken from
/// `range` in order. Returns fewer ports only if the range runs out.
pub fn spread_ports(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    port: u16,
    flows: usize,
    queues: u16,
    range: std::ops::Range<u16>,
) -> Vec<u16> {
    let queues = queues.clamp(1, 16);
    let table = default_table(queues);
    let flow = FlowTuple::V4 {
        source: source.octets(),
        destination: destination.octets(),
        ports: Some((0, port)),
    };
    let share = flows.div_ceil(usize::from(queues));
    let mut per_queue = vec![0usize; usize::from(queues)];
    let mut chosen = Vec::with_capacity(flows);
    for candidate in range {
        if chosen.len() == flows {
            break;
        }
        let queue =
            usize::from(queue_of(&table, flow.with_source_port(candidate).hash(&DEFAULT_KEY)).0);
        if per_queue[queue % usize::from(queues)] < share {
            per_queue[queue % usize::from(queues)] += 1;
            chosen.push(candidate);
        }
    }
    chosen
}

/// The queue (and so the guest core) the flow from `source:source_port` to
/// `destination:port` lands on among `queues` queues.
pub fn queue_of_flow(
    source: Ipv4Addr,
    source_port: u16,
    destination: Ipv4Addr,
    port: u16,
    queues: u16,
) -> QueueId {
    let flow = FlowTuple::V4 {
        source: source.octets(),
        destination: destination.octets(),
        ports: Some((source_port, port)),
    };
    queue_of(&default_table(queues), flow.hash(&DEFAULT_KEY))
}

/// The queue a packet with no ports (ICMP) from `source` to `destination` lands on among
/// `queues` queues: the NIC hashes such packets on the addresses alone.
pub fn queue_of_addresses(source: Ipv4Addr, destination: Ipv4Addr, queues: u16) -> QueueId {
    let flow = FlowTuple::V4 {
        source: source.octets(),
        destination: destination.octets(),
        ports: None,
    };
    queue_of(&default_table(queues), flow.hash(&DEFAULT_KEY))
}

/// The first source port in `range` whose flow to `destination:port` lands on `queue`.
pub fn port_on_queue(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    port: u16,
    queue: QueueId,
    queues: u16,
    range: std::ops::Range<u16>,
) -> Option<u16> {
    range
        .into_iter()
        .find(|&candidate| queue_of_flow(source, candidate, destination, port, queues) == queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_gets_the_same_number_of_flows() {
        let host = Ipv4Addr::new(10, 0, 2, 2);
        let guest = Ipv4Addr::new(10, 0, 2, 15);
        for queues in [1u16, 2, 4, 8] {
            let ports = spread_ports(host, guest, 7, 32, queues, 20_000..30_000);
            assert_eq!(ports.len(), 32);
            let mut counts = vec![0; usize::from(queues)];
            for port in &ports {
                counts[usize::from(queue_of_flow(host, *port, guest, 7, queues).0)] += 1;
            }
            assert!(
                counts.iter().all(|c| *c == 32 / usize::from(queues)),
                "{queues}: {counts:?}"
            );
        }
        let port = port_on_queue(host, guest, 9, QueueId(3), 4, 40_000..50_000).unwrap();
        assert_eq!(queue_of_flow(host, port, guest, 9, 4), QueueId(3));
    }

    #[test]
    fn a_packet_without_ports_is_steered_by_its_addresses() {
        let host = Ipv4Addr::new(10, 0, 2, 2);
        let guest = Ipv4Addr::new(10, 0, 2, 15);
        let table = default_table(16);
        let mut queues = std::collections::BTreeSet::new();
        for last in 1..=40u8 {
            let source = Ipv4Addr::new(10, 0, 2, last);
            let hash = FlowTuple::V4 {
                source: source.octets(),
                destination: guest.octets(),
                ports: None,
            }
            .hash(&DEFAULT_KEY);
            let queue = queue_of_addresses(source, guest, 16);
            assert_eq!(queue, queue_of(&table, hash));
            queues.insert(queue.0);
        }
        // Different source addresses reach different queues; one pair always the same one.
        assert!(queues.len() > 4, "{queues:?}");
        assert_eq!(
            queue_of_addresses(host, guest, 2),
            queue_of_addresses(host, guest, 2)
        );
    }
}
