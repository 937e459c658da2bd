//! TCP/IP as a host, on the simulated NIC: resets and ICMP errors for closed ports, reassembly,
//! the connection table at scale and under churn, limits and the budget, SYN floods, timeouts,
//! a client that never reads, connections across a flow-group move, and window scaling.

use super::*;
use crate::app::{AppContext, StreamService};
use crate::classify::FlowTable;
use crate::config::{CoreId, NetOptions};
use smoltcp::time::Duration;
use std::cell::Cell;
use std::rc::Rc;

/// The segments the stack sent to the client, in order.
fn segments_to_client(cluster: &Cluster) -> Vec<SeenSegment> {
    frames_to_client(&cluster.wire)
        .into_iter()
        .filter_map(|frame| seen_segment(frame))
        .collect()
}

/// ICMP messages (type, code, the quoted datagram's destination port) the stack sent.
fn icmp_to_client(cluster: &Cluster) -> Vec<(u8, u8, u16)> {
    frames_to_client(&cluster.wire)
        .into_iter()
        .filter(|frame| frame[23] == 1)
        .map(|frame| {
            let icmp = &frame[34..];
            // The quoted IPv4 header (20 bytes) then the first 8 bytes of its datagram.
            (icmp[0], icmp[1], u16::from_be_bytes([icmp[30], icmp[31]]))
        })
        .collect()
}

fn with_options(cores: u16, adjust: impl Fn(&mut NetOptions)) -> Cluster {
    let mut setup = ClusterConfig::new(cores);
    adjust(&mut setup.options);
    Cluster::with(setup)
}

#[test]
fn closed_ports_answer_with_a_reset_or_a_port_unreachable() {
    let mut cluster = Cluster::new(2);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    // A SYN to a closed port: RST|ACK acknowledging the SYN (RFC 9293 3.10.7.1).
    cluster.inject(&tcp_syn(40001, 22));
    cluster.settle();
    let reset = segments_to_client(&cluster);
    assert_eq!(reset.len(), 1, "{reset:?}");
    assert!(reset[0].rst && reset[0].acknowledgement == Some(1001));
    assert_eq!(
        (reset[0].source_port, reset[0].destination_port),
        (22, 40001)
    );
    // An ACK to a closed port: RST with the ACK's number as its sequence number.
    cluster.wire.clear();
    cluster.inject(&tcp_segment(40002, 23, 5000, 777, 0x10, b""));
    cluster.settle();
    let reset = segments_to_client(&cluster);
    assert_eq!(reset.len(), 1);
    assert!(reset[0].rst && reset[0].sequence == 777);
    // A reset to a closed port is not answered.
    cluster.wire.clear();
    cluster.inject(&tcp_segment(40003, 23, 5000, 0, 0x04, b""));
    cluster.settle();
    assert!(segments_to_client(&cluster).is_empty());
    // UDP to a closed port: ICMP destination unreachable, port unreachable, quoting it.
    cluster.inject(&udp_frame(40004, 19, b"anyone there?"));
    cluster.settle();
    assert_eq!(icmp_to_client(&cluster), [(3, 3, 19)]);
    // ... but never for a broadcast.
    let mut broadcast = udp_frame(40005, 19, b"all");
    broadcast[30..34].copy_from_slice(&[10, 0, 2, 255]);
    broadcast[40..42].copy_from_slice(&[0, 0]); // no UDP checksum
    Ipv4Packet::new_unchecked(&mut broadcast[14..34]).fill_checksum();
    let before = cluster.drops(DropReason::NoSuchPort);
    cluster.wire.clear();
    cluster.inject(&broadcast);
    cluster.settle();
    assert!(icmp_to_client(&cluster).is_empty());
    assert_eq!(cluster.drops(DropReason::NoSuchPort), before + 1);
    let closed: u64 = (0..2)
        .map(|core| cluster.path_counters(core, PathKey::Closed).tx_packets)
        .sum();
    assert_eq!(closed, 3, "two resets and one port unreachable");
}

#[test]
fn a_segment_that_fits_no_connection_is_reset() {
    let mut cluster = Cluster::new(1);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    // Data on the echo port without a handshake: reset, counted as stray.
    cluster.inject(&tcp_segment(40010, 7, 9000, 4242, 0x18, b"hello?"));
    cluster.settle();
    let reset = segments_to_client(&cluster);
    assert_eq!(reset.len(), 1);
    assert!(reset[0].rst && reset[0].sequence == 4242);
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!((tcp.stray_segments, tcp.connections), (1, 0));
    // A reset for no connection: nothing back, not counted as stray.
    cluster.wire.clear();
    cluster.inject(&tcp_segment(40010, 7, 9000, 0, 0x04, b""));
    cluster.settle();
    assert!(segments_to_client(&cluster).is_empty());
}

#[test]
fn icmp_errors_are_rate_limited_by_a_token_bucket() {
    // 20 a second: bursts of one.
    let mut cluster = with_options(1, |options| options.icmp_rate = 20);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    for port in 0..10 {
        cluster.inject(&udp_frame(41000 + port, 19, b"x"));
    }
    cluster.settle();
    let sent = icmp_to_client(&cluster).len();
    let limited = cluster.cores[0].net.counters().icmp_limited;
    assert_eq!(sent + limited as usize, 10);
    // settle() moved the clock by a few ms only: the bucket refilled at most once.
    assert!((1..=2).contains(&sent), "{sent} sent");
    // A second later the bucket has a token again.
    cluster.now += Duration::from_secs(1);
    cluster.wire.clear();
    cluster.inject(&udp_frame(41100, 19, b"x"));
    cluster.settle();
    assert_eq!(icmp_to_client(&cluster).len(), 1);
    // netd.icmp_rate=0 sends none.
    let mut silent = with_options(1, |options| options.icmp_rate = 0);
    silent.inject(&udp_frame(41200, 19, b"x"));
    silent.settle();
    assert!(icmp_to_client(&silent).is_empty());
    assert_eq!(silent.cores[0].net.counters().icmp_limited, 1);
}

/// A service on port 9 of every core that counts the datagrams and bytes it gets.
#[derive(Clone, Default)]
struct Sink {
    datagrams: Rc<Cell<u64>>,
    bytes: Rc<Cell<u64>>,
}

impl crate::app::DatagramService for Sink {
    fn name(&self) -> &'static str {
        "sink"
    }

    fn on_datagram(
        &mut self,
        _context: &mut AppContext<'_>,
        datagram: crate::app::Datagram<'_>,
    ) -> Option<usize> {
        self.datagrams.set(self.datagrams.get() + 1);
        self.bytes.set(self.bytes.get() + datagram.length as u64);
        None
    }
}

fn at(cluster: &Cluster, core: CoreId) -> crate::stats::CoreCounters {
    *cluster.cores[usize::from(core)].net.counters()
}

fn sink_cluster(cores: u16) -> (Cluster, Sink) {
    let sink = Sink::default();
    let mut setup = ClusterConfig::new(cores);
    let shared = sink.clone();
    setup.services = Box::new(move |_| vec![Service::datagram(9, shared.clone())]);
    (Cluster::with(setup), sink)
}

#[test]
fn fragments_are_reassembled_where_they_land_and_the_datagram_goes_to_its_owner() {
    let (mut cluster, sink) = sink_cluster(4);
    let payload: Vec<u8> = (0..1800u32).map(|i| (i * 7) as u8).collect();
    // Pick a flow whose fragments (hashed on addresses only) land on another core than the one
    // owning the datagram's flow (hashed with ports).
    let landing = cluster.steer(&udp_fragments(42000, 9, 1, &payload, 1480)[0]);
    let port = (42000..43000u16)
        .find(|port| cluster.steer(&udp_frame(*port, 9, b"")) != landing)
        .unwrap();
    let owner = cluster.steer(&udp_frame(port, 9, b""));
    let fragments = udp_fragments(port, 9, 7, &payload, 1480);
    assert_eq!(fragments.len(), 2);
    // Out of order, as a network may deliver them.
    for frame in fragments.iter().rev() {
        assert_eq!(cluster.inject(frame), landing);
    }
    cluster.settle();
    assert_eq!(sink.datagrams.get(), 1);
    assert_eq!(sink.bytes.get(), 1800);
    assert_eq!(
        (
            at(&cluster, landing).fragments,
            at(&cluster, landing).reassembled
        ),
        (2, 1)
    );
    assert_eq!(
        at(&cluster, landing).forwarded_out,
        1,
        "to the flow's owner, once"
    );
    assert_eq!(at(&cluster, owner).forwarded_in, 1);
    assert_eq!(
        cluster
            .path_counters(usize::from(owner), PathKey::Udp(9))
            .packets,
        1
    );

    // Overlapping fragments drop their datagram.
    let mut overlapping = udp_fragments(port, 9, 8, &payload, 1480);
    let mut second = overlapping[1].clone();
    second[20] = 0; // offset 1480 - 8 * 1: overlaps the first fragment's last block
    second[21] = (1480 / 8 - 1) as u8;
    Ipv4Packet::new_unchecked(&mut second[14..34]).fill_checksum();
    overlapping[1] = second;
    for frame in &overlapping {
        cluster.inject(frame);
    }
    cluster.settle();
    assert_eq!(sink.datagrams.get(), 1);
    assert_eq!(at(&cluster, landing).reassembly_overlaps, 1);

    // A datagram longer than a reassembled frame may be is dropped and counted.
    let long: Vec<u8> = vec![1; 3000];
    for frame in udp_fragments(port, 9, 9, &long, 1480) {
        cluster.inject(&frame);
    }
    cluster.settle();
    assert_eq!(at(&cluster, landing).reassembly_too_large, 1);

    // A datagram missing a fragment times out and frees its slot.
    let lost = udp_fragments(port, 9, 10, &payload, 1480);
    cluster.inject(&lost[0]);
    cluster.settle();
    cluster.now += crate::runner::reassembly::REASSEMBLY_TIMEOUT;
    cluster.settle();
    assert_eq!(at(&cluster, landing).reassembly_timeouts, 1);
    assert_eq!(sink.datagrams.get(), 1);

    // More datagrams in progress than slots: the oldest are evicted, memory stays bounded.
    let slots = crate::runner::reassembly::SLOTS;
    for identification in 0..(slots as u16 + 5) {
        cluster.inject(&udp_fragments(port, 9, 100 + identification, &payload, 1480)[0]);
    }
    cluster.settle();
    assert_eq!(at(&cluster, landing).reassembly_evictions, 5);
    assert_all_buffers_home(&cluster);
}

/// TCP echo on port 7 that counts how often the path visits its connections.
#[derive(Clone, Default)]
struct CountingEcho {
    visits: Rc<Cell<u64>>,
}

impl StreamService for CountingEcho {
    fn name(&self) -> &'static str {
        "counting-echo"
    }

    fn on_data(
        &mut self,
        context: &mut AppContext<'_>,
        connection: usize,
        socket: &mut tcp::Socket<'static>,
    ) {
        self.visits.set(self.visits.get() + 1);
        crate::app::tcp_echo::TcpEcho::new().on_data(context, connection, socket);
    }
}

fn echo_cluster(cores: u16, adjust: impl Fn(&mut NetOptions)) -> (Cluster, CountingEcho) {
    let echo = CountingEcho::default();
    let mut setup = ClusterConfig::new(cores);
    adjust(&mut setup.options);
    let shared = echo.clone();
    setup.services = Box::new(move |_| vec![Service::stream(7, shared.clone())]);
    (Cluster::with(setup), echo)
}

/// Opens `count` connections from `first..` to port 7 and waits until all are established.
fn open_many(
    cluster: &mut Cluster,
    client: &mut Client,
    first: u16,
    count: u16,
) -> Vec<smoltcp::iface::SocketHandle> {
    // In batches of 100: a burst larger than the NIC's ring would be dropped there.
    let mut handles = Vec::new();
    for n in 0..count {
        let handle = client.tcp_socket_with(1024, 1024);
        client.connect(handle, first + n, 7);
        handles.push(handle);
        if n % 100 == 99 {
            let _ = client.exchange(cluster, 5, |_| false);
        }
    }
    let established = client.exchange(cluster, 2000, |client| {
        handles.iter().all(|handle| {
            client.sockets.get::<tcp::Socket>(*handle).state() == tcp::State::Established
        })
    });
    let up = handles
        .iter()
        .filter(|handle| {
            client.sockets.get::<tcp::Socket>(**handle).state() == tcp::State::Established
        })
        .count();
    assert!(
        established,
        "{up} of {count} connections established; tcp {:?}, path {:?}, core {:?}, states {:?}",
        cluster.cores[0].net.path(PathKey::Tcp(7)).unwrap().tcp(),
        cluster.path_counters(0, PathKey::Tcp(7)),
        cluster.cores[0].net.counters(),
        handles
            .iter()
            .map(|handle| client.sockets.get::<tcp::Socket>(*handle).state())
            .filter(|state| *state != tcp::State::Established)
            .take(5)
            .collect::<Vec<_>>()
    );
    handles
}

#[test]
fn many_connections_are_served_and_a_run_visits_only_those_with_work() {
    let (mut cluster, echo) = echo_cluster(1, |_| {});
    let mut client = Client::new(cluster.now);
    let handles = open_many(&mut cluster, &mut client, 20000, 600);
    let _ = client.exchange(&mut cluster, 5, |_| false);
    let path = cluster.cores[0].net.path(PathKey::Tcp(7)).unwrap();
    assert_eq!(path.open_connections(), 600);
    // Every connection echoes.
    let mut echoed = vec![Vec::new(); handles.len()];
    let collect = |client: &mut Client, echoed: &mut Vec<Vec<u8>>| {
        for (index, handle) in handles.iter().enumerate() {
            let socket = client.sockets.get_mut::<tcp::Socket>(*handle);
            while let Ok(n) = socket.recv(|bytes| (bytes.len(), bytes.to_vec())) {
                if n.is_empty() {
                    break;
                }
                echoed[index].extend_from_slice(&n);
            }
        }
    };
    for (index, handle) in handles.iter().enumerate() {
        let socket = client.sockets.get_mut::<tcp::Socket>(*handle);
        socket
            .send_slice(format!("line {index}\n").as_bytes())
            .unwrap();
        if index % 100 == 99 {
            let _ = client.exchange(&mut cluster, 5, |client| {
                collect(client, &mut echoed);
                false
            });
        }
    }
    let done = client.exchange(&mut cluster, 500, |client| {
        collect(client, &mut echoed);
        echoed
            .iter()
            .enumerate()
            .all(|(index, bytes)| *bytes == format!("line {index}\n").as_bytes())
    });
    assert!(done, "every connection echoed its line");
    // With 600 idle connections, 20 round trips on one of them visit it about 20 times (data
    // and ACKs), not 600 connections per run.
    let _ = client.exchange(&mut cluster, 20, |_| false);
    let before = echo.visits.get();
    let one = handles[123];
    for round in 0..20 {
        let socket = client.sockets.get_mut::<tcp::Socket>(one);
        socket
            .send_slice(format!("again {round}\n").as_bytes())
            .unwrap();
        let _ = client.exchange(&mut cluster, 3, |_| false);
    }
    let visits = echo.visits.get() - before;
    assert!(
        (20..=80).contains(&visits),
        "{visits} visits for 20 round trips among 600 connections"
    );
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!((tcp.connections, tcp.most_connections), (600, 600));
    // Churn: close every other connection, open as many new ones; the table keeps count.
    for (n, handle) in handles.iter().step_by(2).enumerate() {
        client.sockets.get_mut::<tcp::Socket>(*handle).close();
        if n % 100 == 99 {
            let _ = client.exchange(&mut cluster, 5, |_| false);
        }
    }
    let _ = client.exchange(&mut cluster, 100, |_| false);
    let _ = open_many(&mut cluster, &mut client, 30000, 300);
    let _ = client.exchange(&mut cluster, 5, |_| false);
    let path = cluster.cores[0].net.path(PathKey::Tcp(7)).unwrap();
    assert_eq!(path.open_connections(), 600);
    let memory = cluster.cores[0].net.memory();
    assert_eq!(memory.tcp_connections, 600);
    assert!(memory.tcp_used <= memory.tcp_budget);
}

#[test]
fn connections_beyond_the_limit_are_refused_with_a_reset() {
    let (mut cluster, _) = echo_cluster(1, |options| options.tcp.max_connections = 5);
    let mut client = Client::new(cluster.now);
    let _ = open_many(&mut cluster, &mut client, 20000, 5);
    let sixth = client.tcp_socket_with(1024, 1024);
    client.connect(sixth, 20100, 7);
    let _ = client.exchange(&mut cluster, 20, |_| false);
    assert_eq!(
        client.sockets.get::<tcp::Socket>(sixth).state(),
        tcp::State::Closed,
        "refused at once by a reset"
    );
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!((tcp.refused_limit, tcp.connections), (1, 5));
}

#[test]
fn a_small_budget_refuses_with_resets_and_never_panics() {
    // One megabyte holds about a hundred connections of the smallest buffers.
    let (mut cluster, _) = echo_cluster(1, |options| options.tcp.memory_mb = Some(1));
    let memory = cluster.cores[0].net.memory();
    let most = memory.tcp_max_connections;
    assert!((50..200).contains(&most), "{most}");
    for port in 0..(most as u16 + 50) {
        cluster.inject(&tcp_syn(20000 + port, 7));
    }
    cluster.settle();
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!(tcp.refused_limit + tcp.backlog_evictions, 50);
    let memory = cluster.cores[0].net.memory();
    assert!(memory.tcp_high_water <= memory.tcp_budget);
}

#[test]
fn a_syn_flood_is_bounded_by_the_backlog_and_real_clients_still_connect() {
    let (mut cluster, _) = echo_cluster(1, |options| options.tcp.backlog = 16);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    for port in 0..400u16 {
        cluster.inject(&tcp_syn(10000 + port, 7));
        if port % 50 == 0 {
            let _ = cluster.round();
        }
    }
    cluster.settle();
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!(tcp.half_open, 16);
    // Within a second of the first, every SYN past the backlog is dropped, none evicted.
    assert_eq!((tcp.backlog_evictions, tcp.syn_drops), (0, 400 - 16));
    // The first half of the backlog may have large buffers; past half full, new connections
    // get the smallest (a flood's pressure).
    let memory = cluster.cores[0].net.memory();
    let state = memory.tcp_state_per_connection;
    assert!(
        memory.tcp_used <= 8 * (2 * (256 << 10) + state) + 8 * (2 * 4096 + state),
        "{memory:?}"
    );
    // A real client connects and echoes in the middle of it: once the flood's handshakes have
    // waited SYN_EVICTION_AGE, its SYN evicts the oldest.
    cluster.now += crate::runner::tcp::SYN_EVICTION_AGE;
    let mut client = Client::new(cluster.now);
    let reply = client.request(&mut cluster, 30000, 7, b"through the flood\n", |reply| {
        reply.len() >= 18
    });
    assert_eq!(reply, b"through the flood\n");
    // (The client's stack reset the flood's half-open connections when their SYN-ACKs reached
    // it.) Half-open connections nobody answers go after their timeout.
    for port in 0..8u16 {
        cluster.inject(&tcp_syn(11000 + port, 7));
    }
    cluster.settle();
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!(tcp.half_open, 8);
    cluster.now += crate::runner::tcp::HALF_OPEN_TIMEOUT;
    cluster.settle();
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!((tcp.half_open, tcp.half_open_timeouts), (0, 8));
}

#[test]
fn a_burst_of_real_clients_larger_than_the_backlog_is_served_a_backlog_at_a_time() {
    // 40 clients connect at once against a backlog of 16: the SYNs past it are dropped, not
    // answered, and no handshake is evicted while its ACK is on the way; the clients retransmit
    // (1 s, then 3 s) and every connection is established and echoes.
    let (mut cluster, _) = echo_cluster(1, |options| options.tcp.backlog = 16);
    let mut client = Client::new(cluster.now);
    let handles: Vec<_> = (0..40u16)
        .map(|n| {
            let handle = client.tcp_socket_with(1024, 1024);
            client.connect(handle, 21000 + n, 7);
            handle
        })
        .collect();
    let established = client.exchange(&mut cluster, 6000, |client| {
        handles.iter().all(|handle| {
            client.sockets.get::<tcp::Socket>(*handle).state() == tcp::State::Established
        })
    });
    let tcp = cluster.cores[0]
        .net
        .path(PathKey::Tcp(7))
        .unwrap()
        .tcp()
        .unwrap();
    assert!(established, "not every connection was established: {tcp:?}");
    assert_eq!(tcp.backlog_evictions, 0, "{tcp:?}");
    assert!(tcp.syn_drops >= 40 - 16, "{tcp:?}");
    assert_eq!(tcp.connections, 40, "{tcp:?}");
    for (n, handle) in handles.iter().enumerate() {
        client
            .sockets
            .get_mut::<tcp::Socket>(*handle)
            .send_slice(format!("client {n}\n").as_bytes())
            .unwrap();
    }
    let mut echoed = vec![Vec::new(); handles.len()];
    let all = client.exchange(&mut cluster, 400, |client| {
        for (n, handle) in handles.iter().enumerate() {
            let socket = client.sockets.get_mut::<tcp::Socket>(*handle);
            while let Ok(chunk) = socket.recv(|bytes| (bytes.len(), bytes.to_vec())) {
                if chunk.is_empty() {
                    break;
                }
                echoed[n].extend_from_slice(&chunk);
            }
        }
        echoed
            .iter()
            .enumerate()
            .all(|(n, bytes)| bytes == format!("client {n}\n").as_bytes())
    });
    assert!(all, "not every connection echoed");
}

#[test]
fn an_idle_connection_is_reset_after_the_idle_timeout() {
    let (mut cluster, _) = echo_cluster(1, |options| {
        options.tcp.idle_seconds = 5;
        options.tcp.keepalive_seconds = 0;
    });
    let mut client = Client::new(cluster.now);
    let handles = open_many(&mut cluster, &mut client, 20000, 2);
    // One connection keeps talking, the other says nothing.
    for _ in 0..8 {
        let socket = client.sockets.get_mut::<tcp::Socket>(handles[0]);
        socket.send_slice(b"tick\n").unwrap();
        let _ = client.exchange(&mut cluster, 3, |_| false);
        let socket = client.sockets.get_mut::<tcp::Socket>(handles[0]);
        let _ = socket.recv(|bytes| (bytes.len(), ()));
        cluster.now += Duration::from_secs(1);
    }
    let _ = client.exchange(&mut cluster, 5, |_| false);
    assert_eq!(
        client.sockets.get::<tcp::Socket>(handles[1]).state(),
        tcp::State::Closed,
        "the silent one was reset"
    );
    assert_eq!(
        client.sockets.get::<tcp::Socket>(handles[0]).state(),
        tcp::State::Established
    );
    let tcp = cluster.tcp_counters(0, 7);
    assert_eq!((tcp.idle_timeouts, tcp.connections), (1, 1));
}

#[test]
fn keep_alive_drops_a_peer_that_went_silent() {
    let (mut cluster, _) = echo_cluster(1, |options| {
        options.tcp.idle_seconds = 0;
        options.tcp.keepalive_seconds = 2;
    });
    let mut client = Client::new(cluster.now);
    let _ = open_many(&mut cluster, &mut client, 20000, 1);
    // The client vanishes (its frames no longer reach us): probes go unanswered.
    let mut probes = 0;
    for _ in 0..20 {
        cluster.now += Duration::from_secs(1);
        cluster.settle();
        probes += segments_to_client(&cluster).len();
        cluster.wire.clear();
    }
    assert!(probes >= 3, "{probes} keep-alive probes");
    assert_eq!(
        cluster.tcp_counters(0, 7).connections,
        0,
        "dropped after four intervals"
    );
}

#[test]
fn a_client_that_never_reads_is_throttled_and_timed_out_while_others_are_served() {
    let mut setup = ClusterConfig::new(1);
    setup.options.tcp.idle_seconds = 10;
    setup.options.tcp.max_buffer_kb = 16;
    let mut cluster = Cluster::with(setup);
    let mut client = Client::new(cluster.now);
    // The greedy client pipelines requests for /stats and never reads.
    let greedy = client.tcp_socket_with(4096, 65536);
    client.connect(greedy, 20000, 80);
    let request = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..400 {
        let socket = client.sockets.get_mut::<tcp::Socket>(greedy);
        while socket.can_send() && socket.send_slice(request).unwrap_or(0) == request.len() {}
        let _ = client.exchange(&mut cluster, 1, |_| false);
    }
    // Its requests sit unread in our socket (the server holds at most one response for it):
    // the client's own send buffer stays full.
    let memory = cluster.cores[0].net.memory();
    assert!(memory.tcp_connections == 1, "{memory:?}");
    let socket = client.sockets.get::<tcp::Socket>(greedy);
    assert!(socket.send_queue() > 60_000, "{}", socket.send_queue());
    // Another client is served meanwhile.
    let page = client.request(
        &mut cluster,
        20001,
        80,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        |r| String::from_utf8_lossy(r).contains("</html>"),
    );
    assert!(String::from_utf8_lossy(&page).starts_with("HTTP/1.1 200"));
    // No progress for 10 s: the greedy connection is reset and freed.
    for _ in 0..12 {
        cluster.now += Duration::from_secs(1);
        let _ = client.exchange(&mut cluster, 2, |_| false);
    }
    let tcp = cluster.tcp_counters(0, 80);
    assert_eq!(tcp.idle_timeouts, 1);
    assert_eq!(
        client.sockets.get::<tcp::Socket>(greedy).state(),
        tcp::State::Closed
    );
}

#[test]
fn an_established_connection_keeps_echoing_across_a_flow_group_move() {
    let (mut cluster, _) = echo_cluster(4, |_| {});
    let mut client = Client::new(cluster.now);
    let port = ports_for_core(&cluster, 1, 7, 1)[0];
    let handle = client.tcp_socket();
    client.connect(handle, port, 7);
    assert!(client.exchange(&mut cluster, 50, |client| {
        client.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Established
    }));
    let mut echoed = Vec::new();
    let mut round_trip = |cluster: &mut Cluster, client: &mut Client, text: &str| {
        echoed.clear();
        let socket = client.sockets.get_mut::<tcp::Socket>(handle);
        let _ = socket.send_slice(text.as_bytes());
        client.exchange(cluster, 200, |client| {
            let socket = client.sockets.get_mut::<tcp::Socket>(handle);
            while let Ok(bytes) = socket.recv(|bytes| (bytes.len(), bytes.to_vec())) {
                if bytes.is_empty() {
                    break;
                }
                echoed.extend_from_slice(&bytes);
            }
            echoed == text.as_bytes()
        })
    };
    assert!(round_trip(&mut cluster, &mut client, "before the move\n"));
    let group = FlowTable::group_of_hash(flow_hash(port, 7));
    cluster.move_flow_group(group, 2);
    // The NIC now steers the flow to core 2, which has no such connection: it hands the
    // segments to core 1 (the group's previous owner), which still serves the connection.
    for round in 0..5 {
        let text = format!("after the move, round {round}\n");
        assert!(round_trip(&mut cluster, &mut client, &text), "{text}");
    }
    let tcp = |cluster: &Cluster, core: usize| cluster.tcp_counters(core, 7);
    assert!(tcp(&cluster, 2).handed_over >= 5);
    assert_eq!(tcp(&cluster, 1).connections, 1);
    assert_eq!(tcp(&cluster, 2).connections, 0);
    assert_eq!(
        tcp(&cluster, 1).stray_segments + tcp(&cluster, 2).stray_segments,
        0,
        "nothing reset"
    );
    // A new connection in the moved group is made on its new owner.
    let fresh = client.tcp_socket();
    let new_port = (port + 1..u16::MAX)
        .find(|p| FlowTable::group_of_hash(flow_hash(*p, 7)) == group)
        .unwrap();
    client.connect(fresh, new_port, 7);
    let _ = client.exchange(&mut cluster, 50, |client| {
        client.sockets.get::<tcp::Socket>(fresh).state() == tcp::State::Established
    });
    assert_eq!(tcp(&cluster, 2).connections, 1);
    // The old connection closes cleanly from its old core.
    client.sockets.get_mut::<tcp::Socket>(handle).close();
    let _ = client.exchange(&mut cluster, 50, |_| false);
    assert_eq!(tcp(&cluster, 1).connections, 0);
}

#[test]
fn early_connections_get_scaled_windows_and_bulk_data_flows() {
    let (mut cluster, _) = echo_cluster(1, |_| {});
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    // A SYN offering window scaling (kind 3) gets a SYN-ACK scaling by 3 (256 KiB buffers).
    let mut syn = tcp_syn(20000, 7);
    let tcp_start = 14 + 20;
    syn[tcp_start + 12] = 0x60; // data offset 6 words: 4 option bytes
    let options = [3u8, 3, 7, 1]; // window scale 7, then a no-op
    let mut segment = syn[tcp_start..tcp_start + 20].to_vec();
    segment.extend_from_slice(&options);
    segment[16..18].copy_from_slice(&[0, 0]);
    let mut frame = ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 6, &segment),
    );
    let checksum = {
        use smoltcp::wire::{checksum, Ipv4Address};
        !checksum::combine(&[
            checksum::pseudo_header_v4(
                &Ipv4Address::from_octets(CLIENT_IP),
                &Ipv4Address::from_octets(STACK_IP),
                smoltcp::wire::IpProtocol::Tcp,
                segment.len() as u32,
            ),
            checksum::data(&segment),
        ])
    };
    frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&checksum.to_be_bytes());
    cluster.inject(&frame);
    cluster.settle();
    let answer = segments_to_client(&cluster);
    assert!(answer[0].syn, "{answer:?}");
    assert_eq!(answer[0].window_scale, Some(3));
    // Bulk: 2 MB through echo on one connection.
    let mut client = Client::new(cluster.now);
    let total = 2 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let handle = client.tcp_socket_with(256 << 10, 256 << 10);
    client.connect(handle, 20001, 7);
    let mut sent = 0;
    let mut back = Vec::with_capacity(total);
    let done = client.exchange(&mut cluster, 20_000, |client| {
        let socket = client.sockets.get_mut::<tcp::Socket>(handle);
        if sent < total && socket.can_send() {
            sent += socket.send_slice(&data[sent..]).unwrap_or(0);
        }
        while let Ok(bytes) = socket.recv(|bytes| (bytes.len(), bytes.to_vec())) {
            if bytes.is_empty() {
                break;
            }
            back.extend_from_slice(&bytes);
        }
        back.len() >= total
    });
    assert!(done, "{} of {total} bytes back", back.len());
    assert!(back == data);
}

#[test]
fn random_fragments_never_panic_and_every_buffer_comes_home() {
    let (mut cluster, _) = sink_cluster(2);
    let mut seed = 0x2545_f491u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..3000 {
        let length = (next() % 1480) as usize;
        let payload: Vec<u8> = (0..length).map(|i| i as u8).collect();
        let mut frame = udp_frame(42000 + (next() % 4) as u16, 9, &payload);
        let offset = (next() % 8192) as u16 & !7;
        let more = next() % 2 == 0;
        let identification = (next() % 8) as u16;
        frame[18..20].copy_from_slice(&identification.to_be_bytes());
        let flags = (u16::from(more) << 13) | (offset / 8);
        frame[20..22].copy_from_slice(&flags.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
        if next() % 4 == 0 {
            // Cut it short: the IPv4 total length no longer fits the frame.
            let cut = (next() as usize) % frame.len();
            frame.truncate(cut.max(14));
        }
        cluster.inject(&frame);
        if next() % 16 == 0 {
            cluster.now += Duration::from_secs(u64::from(next() % 20));
            let _ = cluster.round();
        }
    }
    cluster.settle();
    let counters = at(&cluster, 0);
    let other = at(&cluster, 1);
    assert!(counters.fragments + other.fragments > 1000);
    assert_all_buffers_home(&cluster);
}
