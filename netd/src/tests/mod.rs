//! Host tests of the whole stack on `drivers::sim`: functional tests here, overload, isolation
//! and accounting in `overload.rs`; the harness (simulated NIC and clock, mailbox, frames, a
//! smoltcp client) in `harness.rs`.

mod harness;
mod host;
mod overload;

use crate::app::Service;
use crate::classify::{rss_input, Classifier, FlowTable};
use crate::stack::CoreNet;
use crate::{DropReason, PathKey, Verdict};
use drivers::nic::ChecksumStatus;
pub(crate) use harness::*;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};
use std::vec::Vec;

// ---------------------------------------------------------------------------------------------
// Tests.

fn deliver_verdict(classifier: &Classifier, frame: &[u8]) -> Verdict {
    classifier.classify(frame, ChecksumStatus::default(), 0, false)
}

#[test]
fn classifier_maps_each_protocol_to_its_path_or_a_reason() {
    let cluster = Cluster::new(1);
    let classifier = cluster.cores[0].net.classifier().clone();
    let index_of = |key| {
        cluster.cores[0]
            .net
            .paths()
            .iter()
            .position(|path| path.key() == key)
            .unwrap() as u8
    };
    let deliver = |key| Verdict::Deliver(crate::classify::PathIndex(index_of(key)));
    assert_eq!(
        deliver_verdict(&classifier, &arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP)),
        deliver(PathKey::Arp)
    );
    assert_eq!(
        deliver_verdict(
            &classifier,
            &arp_request(CLIENT_MAC, CLIENT_IP, [10, 0, 2, 99])
        ),
        Verdict::Drop(DropReason::NotForUs)
    );
    assert_eq!(
        deliver_verdict(&classifier, &icmp_echo(1, 1, b"ping")),
        deliver(PathKey::Icmp)
    );
    assert_eq!(
        deliver_verdict(&classifier, &udp_frame(5000, 7, b"hi")),
        deliver(PathKey::Udp(7))
    );
    assert_eq!(
        deliver_verdict(&classifier, &tcp_syn(5000, 80)),
        deliver(PathKey::Tcp(80))
    );
    assert_eq!(
        deliver_verdict(&classifier, &tcp_syn(5000, 11211)),
        deliver(PathKey::Tcp(11211))
    );
    // Closed ports go to the path that answers them (reset, ICMP port unreachable).
    assert_eq!(
        deliver_verdict(&classifier, &udp_frame(5000, 19, b"hi")),
        deliver(PathKey::Closed)
    );
    assert_eq!(
        deliver_verdict(&classifier, &tcp_syn(5000, 22)),
        deliver(PathKey::Closed)
    );

    // Truncations and bad headers.
    let udp = udp_frame(5000, 7, b"hello");
    assert_eq!(
        deliver_verdict(&classifier, &udp[..10]),
        Verdict::Drop(DropReason::Truncated)
    );
    assert_eq!(
        deliver_verdict(&classifier, &udp[..30]),
        Verdict::Drop(DropReason::Truncated)
    );
    assert_eq!(
        deliver_verdict(&classifier, &udp[..40]),
        Verdict::Drop(DropReason::BadLength)
    );
    let mut bad = udp.clone();
    bad[14] = 0x65; // version 6
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadIpHeader)
    );
    let mut bad = udp.clone();
    bad[14] = 0x44; // header length 16
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadIpHeader)
    );
    let mut bad = udp.clone();
    bad[24] ^= 0xff; // IP header checksum
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadChecksum)
    );
    let mut bad = udp.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55; // UDP payload: UDP checksum
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadChecksum)
    );
    // ... unless the NIC checked the checksum and found it right,
    let nic_ok = ChecksumStatus {
        ipv4_ok: true,
        l4_ok: true,
        error: false,
    };
    assert!(matches!(
        classifier.classify(&bad, nic_ok, 0, false),
        Verdict::Deliver(_)
    ));
    // and the NIC's word that a checksum is wrong is final.
    let nic_error = ChecksumStatus {
        ipv4_ok: false,
        l4_ok: false,
        error: true,
    };
    assert_eq!(
        classifier.classify(&udp, nic_error, 0, false),
        Verdict::Drop(DropReason::BadChecksum)
    );
    // A frame for a path whose queue is full is dropped as that path's before any checksum is
    // looked at: a corrupt one too (LRP spends nothing on it).
    let udp_path = crate::classify::PathIndex(index_of(PathKey::Udp(7)));
    let mut full = crate::classify::PathSet::EMPTY;
    full.insert(udp_path);
    assert_eq!(
        classifier.classify_admitting(&bad, ChecksumStatus::default(), 0, false, full),
        Verdict::PathFull(udp_path)
    );
    assert_eq!(
        classifier.classify_admitting(
            &tcp_syn(5000, 80),
            ChecksumStatus::default(),
            0,
            false,
            full
        ),
        deliver(PathKey::Tcp(80))
    );
    let mut bad = tcp_syn(5000, 80);
    bad[50] ^= 1; // TCP checksum
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadChecksum)
    );
    let mut bad = icmp_echo(1, 1, b"x");
    bad[40] ^= 1;
    assert_eq!(
        deliver_verdict(&classifier, &bad),
        Verdict::Drop(DropReason::BadChecksum)
    );

    // Fragments, other addresses, other protocols.
    let mut fragment = ipv4(CLIENT_IP, STACK_IP, 17, &[0u8; 16]);
    fragment[6] = 0x20; // more fragments
    Ipv4Packet::new_unchecked(&mut fragment[..]).fill_checksum();
    assert_eq!(
        deliver_verdict(
            &classifier,
            &ethernet(STACK_MAC, CLIENT_MAC, 0x0800, &fragment)
        ),
        deliver(PathKey::Reassembly)
    );
    // A fragment with a bad header checksum is not kept; one for a broadcast is not ours.
    let mut corrupt = fragment.clone();
    corrupt[10] ^= 1;
    assert_eq!(
        deliver_verdict(
            &classifier,
            &ethernet(STACK_MAC, CLIENT_MAC, 0x0800, &corrupt)
        ),
        Verdict::Drop(DropReason::BadChecksum)
    );
    let mut broadcast = ipv4(CLIENT_IP, [255; 4], 17, &[0u8; 16]);
    broadcast[6] = 0x20;
    Ipv4Packet::new_unchecked(&mut broadcast[..]).fill_checksum();
    assert_eq!(
        deliver_verdict(
            &classifier,
            &ethernet(STACK_MAC, CLIENT_MAC, 0x0800, &broadcast)
        ),
        Verdict::Drop(DropReason::Fragment)
    );
    let other_ip = ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, [10, 0, 2, 16], 17, &[0u8; 8]),
    );
    assert_eq!(
        deliver_verdict(&classifier, &other_ip),
        Verdict::Drop(DropReason::NotForUs)
    );
    let mut other_mac = udp.clone();
    other_mac[5] ^= 1;
    assert_eq!(
        deliver_verdict(&classifier, &other_mac),
        Verdict::Drop(DropReason::NotForUs)
    );
    let gre = ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT_IP, STACK_IP, 47, &[0u8; 8]),
    );
    assert_eq!(
        deliver_verdict(&classifier, &gre),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    let ipv6 = ethernet(STACK_MAC, CLIENT_MAC, 0x86dd, &[0u8; 40]);
    assert_eq!(
        deliver_verdict(&classifier, &ipv6),
        Verdict::Drop(DropReason::UnsupportedEtherType)
    );
    let zero_source = ethernet(
        STACK_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4([0; 4], STACK_IP, 17, &[0u8; 8]),
    );
    assert_eq!(
        deliver_verdict(&classifier, &zero_source),
        Verdict::Drop(DropReason::BadSource)
    );
}

#[test]
fn classifier_forwards_misdelivered_flows_once() {
    let cluster = Cluster::new(4);
    let classifier = cluster.cores[1].net.classifier().clone();
    let frame = udp_frame(5555, 7, b"x");
    let hash = flow_hash(5555, 7);
    let owner = classifier.flows().owner(FlowTable::group_of_hash(hash));
    let verdict = classifier.classify(&frame, ChecksumStatus::default(), hash, false);
    if owner == 1 {
        assert!(matches!(verdict, Verdict::Deliver(_)));
    } else {
        assert_eq!(verdict, Verdict::Forward(owner));
    }
    // A forwarded frame is never forwarded again, whatever the table says.
    assert!(matches!(
        classifier.classify(&frame, ChecksumStatus::default(), hash, true),
        Verdict::Deliver(_)
    ));
    // Without a NIC hash, the stack computes it.
    assert_eq!(
        classifier.classify(&frame, ChecksumStatus::default(), 0, false),
        verdict
    );
}

/// A tiny deterministic generator for the fuzz-style tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
}

#[test]
fn random_and_mutated_frames_never_panic_and_are_all_counted() {
    let mut cluster = Cluster::new(2);
    let classifier = cluster.cores[0].net.classifier().clone();
    let seeds = [
        arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP),
        icmp_echo(3, 4, b"abcdefgh"),
        udp_frame(4000, 7, b"payload"),
        tcp_syn(4001, 80),
        tcp_syn(4002, 11211),
    ];
    let mut random = Lcg(42);
    let mut injected = 0u64;
    for round in 0..4000 {
        let mut frame = if round % 5 == 0 {
            let length = (random.next() % 120) as usize;
            (0..length)
                .map(|_| random.next() as u8)
                .collect::<Vec<u8>>()
        } else {
            let mut frame = seeds[round % seeds.len()].clone();
            for _ in 0..=(random.next() % 4) {
                let at = random.next() as usize % frame.len();
                frame[at] = random.next() as u8;
            }
            if random.next().is_multiple_of(4) {
                frame.truncate(random.next() as usize % (frame.len() + 1));
            }
            frame
        };
        if frame.len() > 2048 {
            frame.truncate(2048);
        }
        // The classifier alone, with any NIC hash and checksum status.
        let status = ChecksumStatus {
            ipv4_ok: random.next().is_multiple_of(2),
            l4_ok: random.next().is_multiple_of(2),
            error: false,
        };
        let _ = classifier.classify(
            &frame,
            status,
            random.next(),
            random.next().is_multiple_of(2),
        );
        // The whole stack.
        cluster.inject(&frame);
        injected += 1;
        if round % 50 == 0 {
            cluster.round();
        }
    }
    cluster.settle();
    let counted: u64 = cluster
        .cores
        .iter()
        .map(|core| {
            let dropped: u64 = core.net.counters().drops.iter().sum();
            let delivered: u64 = core
                .net
                .paths()
                .iter()
                .map(|path| path.counters().packets + path.counters().queue_drops)
                .sum();
            let forwarded_in = core.net.counters().forwarded_in;
            let forwarded_out = core.net.counters().forwarded_out;
            dropped + delivered + forwarded_out - forwarded_in.min(delivered)
        })
        .sum();
    let received: u64 = cluster
        .cores
        .iter()
        .map(|core| core.net.counters().rx_frames)
        .sum();
    assert_eq!(received, injected);
    assert!(
        counted >= injected,
        "every frame is dropped with a reason, delivered or forwarded"
    );
    assert!(cluster.drops(DropReason::Truncated) > 0);
    assert!(cluster.drops(DropReason::BadChecksum) > 0);
    assert_all_buffers_home(&cluster);
}

#[test]
fn udp_echo_over_four_cores_runs_on_the_flow_owner() {
    let mut cluster = Cluster::new(4);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    for core in 0..4u16 {
        for port in ports_for_core(&cluster, core, 7, 3) {
            let payload = format!("echo from {port}");
            assert_eq!(
                cluster.inject(&udp_frame(port, 7, payload.as_bytes())),
                core
            );
        }
    }
    cluster.settle();
    let replies = frames_to_client(&cluster.wire);
    assert_eq!(replies.len(), 12);
    for reply in &replies {
        let port = u16::from_be_bytes([reply[36], reply[37]]);
        assert_eq!(&reply[42..], format!("echo from {port}").as_bytes());
        assert_eq!(u16::from_be_bytes([reply[34], reply[35]]), 7);
    }
    for core in 0..4 {
        let counters = cluster.path_counters(core, PathKey::Udp(7));
        assert_eq!(counters.packets, 3, "core {core}");
        assert_eq!(counters.tx_packets, 3);
        assert_eq!(cluster.cores[core].net.counters().forwarded_out, 0);
    }
}

#[test]
fn arp_is_answered_on_queue_zero_and_neighbours_reach_every_core() {
    let mut cluster = Cluster::new(4);
    assert_eq!(
        cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP)),
        0
    );
    cluster.settle();
    let replies = frames_to_client(&cluster.wire);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][12..14], [0x08, 0x06]);
    assert_eq!(replies[0][21], 2, "ARP reply");
    assert_eq!(replies[0][22..28], STACK_MAC);
    assert_eq!(cluster.cores[0].net.counters().neighbours_sent, 3);
    for core in 1..4 {
        assert_eq!(cluster.cores[core].net.counters().neighbours_installed, 1);
    }
    // Core 3 answers a UDP flow at once: no ARP request of its own.
    cluster.wire.clear();
    let port = ports_for_core(&cluster, 3, 7, 1)[0];
    cluster.inject(&udp_frame(port, 7, b"x"));
    cluster.settle();
    assert_eq!(cluster.wire.len(), 1);
    assert_eq!(cluster.wire[0][12..14], [0x08, 0x00]);
}

#[test]
fn icmp_echo_is_answered_and_charged_to_the_icmp_path() {
    let mut cluster = Cluster::new(2);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    let core = usize::from(cluster.inject(&icmp_echo(0x77, 9, b"0123456789")));
    cluster.settle();
    let replies = frames_to_client(&cluster.wire);
    assert_eq!(replies.len(), 1);
    let reply = replies[0];
    assert_eq!(reply[34], 0, "echo reply");
    assert_eq!(&reply[38..42], &[0, 0x77, 0, 9]);
    assert_eq!(&reply[42..], b"0123456789");
    assert!(Icmpv4Packet::new_checked(&reply[34..])
        .unwrap()
        .verify_checksum());
    let counters = cluster.path_counters(core, PathKey::Icmp);
    assert_eq!((counters.packets, counters.tx_packets), (1, 1));
}

#[test]
fn lrp_queue_tail_drops_when_the_application_is_behind() {
    let mut cluster = Cluster::new(1);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.cores[0]
        .net
        .path_mut(PathKey::Udp(7))
        .unwrap()
        .set_queue_limit(4);
    // A burst of ten datagrams in one batch while the path admits four.
    for n in 0..10u16 {
        cluster.inject(&udp_frame(6000 + n, 7, b"burst"));
    }
    let now = cluster.now;
    let outcome = cluster.cores[0].poll(0, now);
    assert_eq!(outcome.received, 10);
    let counters = cluster.path_counters(0, PathKey::Udp(7));
    assert_eq!(counters.packets, 4);
    assert_eq!(counters.queue_drops, 6);
    assert_eq!(
        counters.tx_packets, 4,
        "dropped frames cost no protocol work"
    );
    // Other paths are unaffected: ICMP still gets through in the same kind of burst.
    let pings: Vec<Vec<u8>> = (0..3).map(|n| icmp_echo(1, n, b"p")).collect();
    for ping in &pings {
        cluster.inject(ping);
    }
    cluster.settle();
    assert_eq!(cluster.path_counters(0, PathKey::Icmp).packets, 3);
    assert_all_buffers_home(&cluster);
}

#[test]
fn misdelivered_frames_are_forwarded_exactly_once() {
    let mut cluster = Cluster::new(4);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    // A flow the NIC steers to core 1 whose group the monitor has just given to core 2.
    let port = ports_for_core(&cluster, 1, 7, 1)[0];
    let frame = udp_frame(port, 7, b"moved");
    let group = FlowTable::group_of_hash(flow_hash(port, 7));
    for core in cluster.cores.iter_mut() {
        core.net.set_flow_owner(group, 2);
    }
    // Core 2 has a stale table still naming core 3: it must not forward again.
    cluster.cores[2].net.set_flow_owner(group, 3);
    cluster.inject(&frame);
    cluster.settle();
    assert_eq!(cluster.cores[1].net.counters().forwarded_out, 1);
    assert_eq!(cluster.cores[2].net.counters().forwarded_in, 1);
    assert_eq!(cluster.cores[2].net.counters().forwarded_out, 0);
    assert_eq!(cluster.cores[3].net.counters().forwarded_in, 0);
    let counters = cluster.path_counters(2, PathKey::Udp(7));
    assert_eq!((counters.packets, counters.forwarded_in), (1, 1));
    assert_eq!(
        frames_to_client(&cluster.wire).len(),
        1,
        "the owner answered"
    );
    // When the channel is full the frame is dropped and counted.
    cluster.cores[1].mailbox.refuse = true;
    cluster.inject(&frame);
    cluster.settle();
    assert_eq!(
        cluster.cores[1].net.counters().drops[DropReason::ForwardFailed as usize],
        1
    );
    // A steady flow the tables agree on is never forwarded.
    let total_forwarded: u64 = cluster
        .cores
        .iter()
        .map(|core| core.net.counters().forwarded_out)
        .sum();
    let steady = ports_for_core(&cluster, 3, 7, 1)[0];
    if FlowTable::group_of_hash(flow_hash(steady, 7)) != group {
        for _ in 0..5 {
            cluster.inject(&udp_frame(steady, 7, b"steady"));
        }
        cluster.settle();
        let after: u64 = cluster
            .cores
            .iter()
            .map(|core| core.net.counters().forwarded_out)
            .sum();
        assert_eq!(after, total_forwarded);
    }
}

#[test]
fn tcp_echo_handshake_and_data_with_a_smoltcp_client() {
    let mut cluster = Cluster::new(2);
    let mut client = Client::new(cluster.now);
    for core in 0..2u16 {
        let port = ports_for_core(&cluster, core, 7, 1)[0];
        let message = format!("hello core {core}, this is a longer line to echo\n").repeat(40);
        let reply = client.request(&mut cluster, port, 7, message.as_bytes(), |reply| {
            reply.len() >= message.len()
        });
        assert_eq!(reply, message.as_bytes());
        let counters = cluster.path_counters(usize::from(core), PathKey::Tcp(7));
        assert_eq!(counters.connections, 1);
        assert!(counters.packets >= 3 && counters.tx_packets >= 2);
    }
    // The client learnt our MAC by ARP through core 0, which told core 1.
    assert!(cluster.cores[0].net.counters().neighbours_sent >= 1);
    assert_eq!(cluster.drops(DropReason::BadChecksum), 0);
    // Connections closed: sockets return to listening.
    let _ = client.exchange(&mut cluster, 50, |_| false);
    for core in &cluster.cores {
        assert_eq!(
            core.net.path(PathKey::Tcp(7)).unwrap().open_connections(),
            0
        );
    }
}

#[test]
fn a_burst_of_connections_is_not_refused() {
    let mut cluster = Cluster::new(1);
    let mut client = Client::new(cluster.now);
    let handles: Vec<_> = (0..20u16)
        .map(|n| {
            let handle = client.tcp_socket();
            client.connect(handle, 30000 + n, 80);
            handle
        })
        .collect();
    let all_up = client.exchange(&mut cluster, 200, |client| {
        handles.iter().all(|handle| {
            client.sockets.get::<tcp::Socket>(*handle).state() == tcp::State::Established
        })
    });
    assert!(all_up, "every connection of the burst was accepted");
    let _ = client.exchange(&mut cluster, 5, |_| false);
    let path = cluster.cores[0].net.path(PathKey::Tcp(80)).unwrap();
    assert_eq!(path.open_connections(), 20);
    let tcp = path.tcp().unwrap();
    assert_eq!((tcp.connections, tcp.half_open), (20, 0));
}

#[test]
fn http_serves_the_page_and_stats() {
    let mut cluster = Cluster::new(2);
    let mut client = Client::new(cluster.now);
    let complete = |reply: &[u8]| {
        let text = String::from_utf8_lossy(reply);
        match (text.find("\r\n\r\n"), text.find("Content-Length: ")) {
            (Some(end), Some(at)) => {
                let length: usize = text[at + 16..]
                    .split("\r\n")
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                reply.len() >= end + 4 + length
            }
            _ => false,
        }
    };
    let port = ports_for_core(&cluster, 1, 80, 1)[0];
    let page = client.request(
        &mut cluster,
        port,
        80,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        complete,
    );
    let page = String::from_utf8(page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("<h1>flotilla</h1>"));
    assert!(page.contains("2 cores, this answer from core 1"));

    // The kernel hands over a gathered snapshot; /stats serves it with this core's entry fresh.
    let snapshot = [
        cluster.cores[0].net.stats(cluster.now),
        cluster.cores[1].net.stats(cluster.now),
    ];
    for core in cluster.cores.iter_mut() {
        core.net.update_stats(&snapshot);
    }
    let port = ports_for_core(&cluster, 0, 80, 1)[0];
    let stats = client.request(
        &mut cluster,
        port,
        80,
        b"GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n",
        complete,
    );
    let stats = String::from_utf8(stats).unwrap();
    assert!(stats.contains("Content-Type: application/json"));
    let body = &stats[stats.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        body.starts_with(
            "{\"host\":{\"ip\":\"10.0.2.15/24\",\"gateway\":\"10.0.2.2\",\"mac\":\"52:54:00:12:34:56\"},\"cores\":[{\"core\":0,"
        ),
        "{body}"
    );
    assert!(body.contains("{\"core\":1,"));
    assert!(body.contains("\"path\":\"tcp:80\""));
    assert!(body.contains("\"bad_checksum\":0"));
    assert_eq!(body.matches('{').count(), body.matches('}').count());

    let missing = client.request(
        &mut cluster,
        port + 1,
        80,
        b"GET /nope HTTP/1.1\r\n\r\n",
        complete,
    );
    let missing = String::from_utf8(missing).unwrap();
    assert!(
        missing.starts_with("HTTP/1.1 404")
            || missing.is_empty()
            || missing.starts_with("HTTP/1.1 404")
    );
}

#[test]
fn source_ports_are_picked_so_replies_land_on_the_calling_core() {
    let flows = FlowTable::round_robin(4);
    let remote = [93, 184, 216, 34];
    for core in 0..4u16 {
        let port =
            crate::pick_source_port(STACK_IP, remote, 80, core, &flows, toeplitz, 50000).unwrap();
        assert!(port >= crate::classify::EPHEMERAL_FIRST);
        let reply_hash = toeplitz(&rss_input(remote, STACK_IP, 80, port));
        assert_eq!(flows.owner(FlowTable::group_of_hash(reply_hash)), core);
    }
    // No flow group owned: no port.
    assert_eq!(
        crate::pick_source_port(STACK_IP, remote, 80, 9, &flows, toeplitz, 50000),
        None
    );
}

#[test]
fn bad_configurations_are_refused() {
    let now = Instant::from_millis(0);
    let mut multicast = config(0, 1);
    multicast.mac[0] |= 1;
    assert_eq!(
        CoreNet::new(multicast, vec![], sim_cycles, now).err(),
        Some(crate::NetError::BadMac)
    );
    assert_eq!(
        CoreNet::new(config(2, 2), vec![], sim_cycles, now).err(),
        Some(crate::NetError::BadCore)
    );
    let echo = || Service::datagram(7, crate::app::udp_echo::UdpEcho::new());
    assert_eq!(
        CoreNet::new(config(0, 1), vec![echo(), echo()], sim_cycles, now).err(),
        Some(crate::NetError::DuplicateEndpoint(PathKey::Udp(7)))
    );
    assert_eq!(
        CoreNet::new(
            config(0, 1),
            vec![Service::stream(0, crate::app::tcp_echo::TcpEcho::new())],
            sim_cycles,
            now
        )
        .err(),
        Some(crate::NetError::BadEndpoint(PathKey::Tcp(0)))
    );
}

#[test]
fn transmit_ring_backpressure_keeps_frames_for_the_next_poll() {
    let mut setup = ClusterConfig::new(1);
    setup.nic.tx_ring_size = 2; // one frame in flight at a time
    let mut cluster = Cluster::with(setup);
    cluster.inject(&arp_request(CLIENT_MAC, CLIENT_IP, STACK_IP));
    cluster.settle();
    cluster.wire.clear();
    for n in 0..3u16 {
        cluster.inject(&udp_frame(7000 + n, 7, b"slow ring"));
    }
    let now = cluster.now;
    let outcome = cluster.cores[0].poll(0, now);
    assert_eq!(outcome.transmitted, 1);
    assert!(outcome.more_work, "frames wait for the ring");
    cluster.settle();
    assert_eq!(frames_to_client(&cluster.wire).len(), 3);
    assert_all_buffers_home(&cluster);
}

/// Checks a UDP reply to the client: addresses, ports, payload and both checksums.
fn assert_valid_udp_reply(frame: &[u8], payload: &[u8]) {
    use smoltcp::wire::{EthernetFrame, IpAddress, UdpPacket};
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(ethernet.dst_addr().0, CLIENT_MAC);
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_ne!(udp.checksum(), 0);
    assert!(
        udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ),
        "UDP checksum"
    );
    assert_eq!(udp.payload(), payload);
}

#[test]
fn every_discipline_and_udp_path_serves_udp_icmp_and_tcp() {
    use crate::config::{Discipline, NetOptions, UdpPath};
    for discipline in [
        Discipline::Lrp,
        Discipline::SharedFifo,
        Discipline::Interrupt,
    ] {
        for udp in [UdpPath::Fast, UdpPath::Socket] {
            for nic_offload in [true, false] {
                let label = format!("{discipline:?} {udp:?} NIC offload {nic_offload}");
                let mut setup = ClusterConfig::new(2);
                setup.options = NetOptions {
                    discipline,
                    udp,
                    tx_offload: true,
                    ..NetOptions::default()
                };
                setup.nic.tx_checksum_offload = nic_offload;
                let mut cluster = Cluster::with(setup);
                let mut client = Client::new(cluster.now);
                // TCP echo (the client resolves us by ARP first).
                let port = ports_for_core(&cluster, 1, 7, 1)[0];
                let message = b"tcp through every discipline\n".repeat(20);
                let reply = client.request(&mut cluster, port, 7, &message, |reply| {
                    reply.len() >= message.len()
                });
                assert_eq!(reply, message, "{label}");
                cluster.wire.clear();
                // UDP echo on both cores, and a ping.
                for core in 0..2 {
                    for port in ports_for_core(&cluster, core, 7, 2) {
                        cluster.inject(&udp_frame(port, 7, format!("datagram {port}").as_bytes()));
                    }
                }
                cluster.inject(&icmp_echo(5, 6, b"ping"));
                cluster.settle();
                let replies = frames_to_client(&cluster.wire);
                let udp_replies: Vec<_> = replies.iter().filter(|frame| frame[23] == 17).collect();
                assert_eq!(udp_replies.len(), 4, "{label}");
                for frame in udp_replies {
                    let port = u16::from_be_bytes([frame[36], frame[37]]);
                    assert_valid_udp_reply(frame, format!("datagram {port}").as_bytes());
                }
                assert_eq!(
                    replies.iter().filter(|frame| frame[23] == 1).count(),
                    1,
                    "{label}: ping"
                );
                // TCP segments (and the fast path's datagrams) leave their checksums to the NIC
                // exactly when it offers it.
                let offloaded = cluster.nic.stats().offloaded;
                assert_eq!(offloaded > 0, nic_offload, "{label}: {offloaded}");
                assert_eq!(cluster.nic.stats().offload_refused, 0, "{label}");
                assert_all_buffers_home(&cluster);
                std::println!("{label}: served, {offloaded} frames offloaded");
            }
        }
    }
}

#[test]
fn two_key_value_services_coexist_each_getting_its_own_peer_messages() {
    use crate::app::memcached::{key_owner, Memcached};
    let mut setup = ClusterConfig::new(2);
    setup.services = Box::new(|config| {
        let mut services = crate::app::default_applications(config);
        services.push(Service::peer(11212, Memcached::new(11212, config)));
        services
    });
    let mut cluster = Cluster::with(setup);
    let mut client = Client::new(cluster.now);
    // A key core 1 owns, set through a connection core 0 serves: it travels by peer message,
    // to the service on the same port on core 1.
    let key = (0..)
        .map(|n| format!("other{n}"))
        .find(|key| key_owner(key.as_bytes(), 2) == 1)
        .unwrap();
    let port = ports_for_core(&cluster, 0, 11212, 2);
    let reply = client.request(
        &mut cluster,
        port[0],
        11212,
        format!("set {key} 5 0 3\r\nabc\r\nget {key}\r\n").as_bytes(),
        |reply| reply.ends_with(b"END\r\n"),
    );
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("STORED\r\nVALUE {key} 5 3\r\nabc\r\nEND\r\n")
    );
    // The other service does not have it: its store is its own.
    let other = ports_for_core(&cluster, 0, 11211, 1)[0];
    let reply = client.request(
        &mut cluster,
        other,
        11211,
        format!("get {key}\r\n").as_bytes(),
        |reply| reply.ends_with(b"END\r\n"),
    );
    assert_eq!(reply, b"END\r\n");
    // Core 1's 11212 path served the request and 11211's the miss: routed by port.
    let served = |port| cluster.path_counters(1, PathKey::Tcp(port)).peer_messages;
    assert!(served(11212) >= 2, "{}", served(11212));
    assert!(served(11211) >= 1);
    assert_eq!(
        cluster
            .cores
            .iter()
            .map(|c| c.net.counters().peer_unroutable)
            .sum::<u64>(),
        0
    );
}
