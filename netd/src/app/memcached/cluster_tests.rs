//! memcached through the whole netd stack on the host: a four-core cluster behind the simulated
//! NIC, smoltcp clients on the simulated wire, peer messages delivered in memory (any size: the
//! netd level, independent of today's kernel transport). The differential test also starts
//! Debian's memcached on a loopback port and sends it the same [`conformance`] sequence.

use super::conformance::{self, Step};
use super::partition::key_owner;
use crate::config::WallClock;
use crate::tests::{ports_for_core, Client, Cluster};
use crate::PathKey;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use std::format;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::string::String;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::vec::Vec;

extern crate std;

const CORES: u16 = 4;
const PORT: u16 = 11211;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Four cores whose clocks read the host's Unix time.
fn cluster() -> Cluster {
    let unix = unix_now();
    Cluster::with_config(CORES, move |config| {
        config.wall_clock = Some(WallClock {
            unix_seconds: unix,
            at: Instant::from_millis(1_000),
        });
        config.heap_bytes = 32 << 20;
    })
}

/// One client connection into the cluster.
struct Connection {
    client: Client,
    handle: SocketHandle,
}

impl Connection {
    /// Connects from a source port whose flow the NIC steers to `core`.
    fn open(cluster: &mut Cluster, core: u16, nth: usize) -> Self {
        let port = ports_for_core(cluster, core, PORT, nth + 1)[nth];
        let mut client = Client::new(cluster.now);
        let handle = client.tcp_socket();
        client.connect(handle, port, PORT);
        let established = client.exchange(cluster, 200, |client| {
            client.sockets.get::<tcp::Socket>(handle).may_send()
        });
        assert!(established, "connection from port {port} not established");
        Self { client, handle }
    }

    /// Sends `bytes` and reads until `done` holds for the answer or the server closes; returns
    /// the answer and whether the server closed.
    fn exchange(
        &mut self,
        cluster: &mut Cluster,
        bytes: &[u8],
        done: impl Fn(&[u8]) -> bool,
    ) -> (Vec<u8>, bool) {
        let (reply, closed, finished) = self.exchange_for(cluster, bytes, done, 100_000);
        assert!(
            finished,
            "no complete answer to {:?}...: got {} bytes ending {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
            reply.len(),
            String::from_utf8_lossy(&reply[reply.len().saturating_sub(80)..])
        );
        (reply, closed)
    }

    /// As [`Self::exchange`], for at most `rounds` rounds; also says whether it finished.
    fn exchange_for(
        &mut self,
        cluster: &mut Cluster,
        bytes: &[u8],
        done: impl Fn(&[u8]) -> bool,
        rounds: usize,
    ) -> (Vec<u8>, bool, bool) {
        let handle = self.handle;
        let mut sent = 0;
        let mut reply = Vec::new();
        let mut closed = false;
        let finished = self.client.exchange(cluster, rounds, |client| {
            let socket = client.sockets.get_mut::<tcp::Socket>(handle);
            while socket.can_send() && sent < bytes.len() {
                match socket.send_slice(&bytes[sent..]) {
                    Ok(count) if count > 0 => sent += count,
                    _ => break,
                }
            }
            while socket.can_recv() {
                let _ = socket.recv(|data| {
                    reply.extend_from_slice(data);
                    (data.len(), ())
                });
            }
            closed = !socket.may_recv();
            (sent == bytes.len() && done(&reply)) || closed
        });
        (reply, closed, finished)
    }

    fn ask(&mut self, cluster: &mut Cluster, request: &[u8]) -> Vec<u8> {
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(b"mn\r\n");
        let (mut reply, _) = self.exchange(cluster, &bytes, |reply| reply.ends_with(b"MN\r\n"));
        reply.truncate(reply.len() - 4);
        reply
    }
}

/// A key owned by `core` when all four cores live.
fn key_of(core: u16, n: usize) -> String {
    (0..)
        .map(|i| format!("k{n}-{i}"))
        .find(|key| key_owner(key.as_bytes(), CORES) == core)
        .unwrap()
}

fn pattern(length: usize, seed: usize) -> Vec<u8> {
    (0..length).map(|n| ((n * 7 + seed) % 251) as u8).collect()
}

#[test]
fn values_up_to_the_item_limit_on_keys_of_every_core() {
    let mut cluster = cluster();
    // The connection lands on core 1; three keys in four are remote.
    let mut connection = Connection::open(&mut cluster, 1, 0);
    for (n, length) in [0usize, 1, 3_072, 3_073, 100_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        for owner in 0..CORES {
            let key = key_of(owner, n);
            let value = pattern(length, n + usize::from(owner));
            let mut request = format!("set {key} 9 0 {length}\r\n").into_bytes();
            request.extend_from_slice(&value);
            request.extend_from_slice(b"\r\n");
            assert_eq!(
                connection.ask(&mut cluster, &request),
                b"STORED\r\n",
                "{length} bytes on core {owner}"
            );
            let reply = connection.ask(&mut cluster, format!("get {key}\r\n").as_bytes());
            let mut expected = format!("VALUE {key} 9 {length}\r\n").into_bytes();
            expected.extend_from_slice(&value);
            expected.extend_from_slice(b"\r\nEND\r\n");
            assert!(
                reply == expected,
                "{length} bytes on core {owner}: {} bytes back",
                reply.len()
            );
        }
    }
    // Each key lives on its owner only, and big values crossed cores in chunks.
    let streamed: u64 = (0..CORES as usize)
        .map(|core| {
            cluster.cores[core]
                .net
                .application(PathKey::Tcp(PORT))
                .map_or(0, |_| 1)
        })
        .sum();
    assert_eq!(streamed, u64::from(CORES));
    let stats = String::from_utf8(connection.ask(&mut cluster, b"stats flotilla\r\n")).unwrap();
    let number = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("STAT {name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(number("streamed_values") >= 6, "{stats}");
    assert!(number("remote_requests") > 100, "{stats}");
    assert_eq!(number("streams_broken"), 0);
    let general = String::from_utf8(connection.ask(&mut cluster, b"stats\r\n")).unwrap();
    assert!(
        general.contains(&format!("STAT curr_items {}\r\n", 6 * CORES)),
        "{general}"
    );
}

#[test]
fn many_connections_on_every_core_keep_their_own_order() {
    let mut cluster = cluster();
    let mut connections: Vec<Connection> = (0..CORES)
        .flat_map(|core| (0..3).map(move |nth| (core, nth)))
        .map(|(core, nth)| Connection::open(&mut cluster, core, nth))
        .collect();
    for (index, connection) in connections.iter_mut().enumerate() {
        let mut request = String::new();
        for owner in 0..CORES {
            let key = key_of(owner, 100 + index);
            request += &format!("set {key} {index} 0 5\r\nc{index:03}x\r\n");
        }
        let keys: Vec<String> = (0..CORES).map(|o| key_of(o, 100 + index)).collect();
        request += &format!("get {}\r\n", keys.join(" "));
        let reply = String::from_utf8(connection.ask(&mut cluster, request.as_bytes())).unwrap();
        let mut expected = "STORED\r\n".repeat(usize::from(CORES));
        for key in &keys {
            expected += &format!("VALUE {key} {index} 5\r\nc{index:03}x\r\nEND\r\n");
        }
        // One END after all the values.
        let expected = expected.replace("\r\nEND\r\nVALUE", "\r\nVALUE");
        assert_eq!(reply, expected, "connection {index}");
    }
    let stats = String::from_utf8(connections[0].ask(&mut cluster, b"stats\r\n")).unwrap();
    assert!(stats.contains("STAT curr_connections 12\r\n"), "{stats}");
    assert!(stats.contains(&format!("STAT curr_items {}\r\n", 12 * CORES)));
}

#[test]
fn a_failed_core_is_answered_for_at_once_and_its_keys_rehome() {
    let mut cluster = cluster();
    let mut connection = Connection::open(&mut cluster, 0, 0);
    let lost = key_of(3, 1);
    let kept = key_of(1, 1);
    let request = format!("set {lost} 0 0 1\r\na\r\nset {kept} 0 0 1\r\nb\r\n");
    assert_eq!(
        connection.ask(&mut cluster, request.as_bytes()),
        b"STORED\r\nSTORED\r\n"
    );
    // Core 3 stops: it never polls again, and messages to it are lost.
    cluster.stopped = 1 << 3;
    let request = format!("get {lost} {kept}\r\nincr {lost} 1\r\n");
    let (partial, _, _) = connection.exchange_for(&mut cluster, request.as_bytes(), |_| false, 100);
    assert_eq!(partial, b"", "the answer waits for core 3");
    // The monitors' verdict reaches every survivor.
    for core in 0..3 {
        cluster.cores[core].net.set_live_cores(0b0111);
    }
    let (reply, _) = connection.exchange(&mut cluster, b"", |reply| {
        reply.ends_with(b"SERVER_ERROR owner core failed\r\n")
    });
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("VALUE {kept} 0 1\r\nb\r\nEND\r\nSERVER_ERROR owner core failed\r\n")
    );
    // The lost key is re-homed: it misses (its data died with core 3) and can be stored again.
    let reply = connection.ask(
        &mut cluster,
        format!("get {lost}\r\nset {lost} 0 0 1\r\nz\r\nget {lost}\r\n").as_bytes(),
    );
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("END\r\nSTORED\r\nVALUE {lost} 0 1\r\nz\r\nEND\r\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The differential test.

/// Debian's memcached on a free loopback port, killed (by its PID) when dropped.
struct Reference {
    child: Child,
    address: SocketAddr,
}

impl Reference {
    fn start() -> Self {
        let binary = "/usr/bin/memcached";
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: run `bash qemu-smp/install-deps.sh` (Debian package memcached)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        let mut command = Command::new(binary);
        command.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
        if is_root() {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached starts");
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // From here the guard kills the server (by its PID), whatever happens.
        let reference = Self { child, address };
        for _ in 0..200 {
            if TcpStream::connect(address).is_ok() {
                return reference;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("memcached did not listen on {address}");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A conversation with a server: sends a step, returns its answer.
trait Server {
    fn step(&mut self, bytes: &[u8], closes: bool) -> Vec<u8>;
}

struct Real {
    address: SocketAddr,
    stream: Option<TcpStream>,
}

impl Server for Real {
    fn step(&mut self, bytes: &[u8], closes: bool) -> Vec<u8> {
        let stream = self.stream.get_or_insert_with(|| {
            let stream = TcpStream::connect(self.address).expect("connect to memcached");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        });
        stream.write_all(bytes).unwrap();
        if !closes {
            stream.write_all(b"mn\r\n").unwrap();
        }
        let mut reply = Vec::new();
        let mut buffer = [0u8; 65536];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => reply.extend_from_slice(&buffer[..count]),
                Err(error) => panic!(
                    "memcached gave no complete answer to {:?} ({error}); got {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]),
                    String::from_utf8_lossy(&reply)
                ),
            }
            if !closes && reply.ends_with(b"MN\r\n") {
                break;
            }
        }
        if closes {
            self.stream = None;
        }
        reply
    }
}

struct Simulated {
    cluster: Cluster,
    connection: Option<Connection>,
    opened: usize,
}

impl Server for Simulated {
    fn step(&mut self, bytes: &[u8], closes: bool) -> Vec<u8> {
        if self.connection.is_none() {
            // Each new connection lands on another core.
            let core = (self.opened % usize::from(CORES)) as u16;
            let nth = self.opened / usize::from(CORES);
            self.connection = Some(Connection::open(&mut self.cluster, core, nth));
            self.opened += 1;
        }
        let connection = self.connection.as_mut().unwrap();
        let mut request = bytes.to_vec();
        if !closes {
            request.extend_from_slice(b"mn\r\n");
        }
        let (reply, closed) = connection.exchange(&mut self.cluster, &request, |reply| {
            !closes && reply.ends_with(b"MN\r\n")
        });
        if closes {
            assert!(closed, "Flotilla kept the connection open");
            self.connection = None;
        }
        reply
    }
}

/// Runs the conformance sequence on `server`; the answers, normalised, step by step.
fn run(server: &mut dyn Server, prefix: &str, steps: &[Step]) -> Vec<Vec<u8>> {
    let mut last_cas = 0;
    let mut order = Vec::new();
    steps
        .iter()
        .map(|step| {
            let bytes = step.render(prefix, last_cas, unix_now());
            let reply = server.step(&bytes, step.closes);
            if let Some(unique) = conformance::last_cas(&reply) {
                last_cas = unique;
            }
            conformance::normalise(&reply, &mut order)
        })
        .collect()
}

/// A key prefix under which the sequence's keys land on every core.
pub(crate) fn spreading_prefix(cores: u16) -> String {
    (0..)
        .map(|n| format!("d{n}:"))
        .find(|prefix| {
            let owners: std::collections::BTreeSet<u16> = conformance::KEYS
                .map(|key| key_owner(format!("{prefix}{key}").as_bytes(), cores))
                .collect();
            // The big values (keys 10..=17) on every core too.
            let big: std::collections::BTreeSet<u16> = (10..18)
                .map(|key| key_owner(format!("{prefix}{key}").as_bytes(), cores))
                .collect();
            owners.len() == usize::from(cores) && big.len() == usize::from(cores)
        })
        .unwrap()
}

#[test]
fn the_same_commands_get_the_same_answers_as_memcached() {
    let mut steps = conformance::steps();
    steps.extend(conformance::large_steps());
    let prefix = spreading_prefix(CORES);
    let reference = Reference::start();
    let mut real = Real {
        address: reference.address,
        stream: None,
    };
    let memcached = run(&mut real, &prefix, &steps);
    drop(reference);
    let mut simulated = Simulated {
        cluster: cluster(),
        connection: None,
        opened: 0,
    };
    let flotilla = run(&mut simulated, &prefix, &steps);
    let mut differences = Vec::new();
    for (index, (step, (theirs, ours))) in steps
        .iter()
        .zip(memcached.iter().zip(flotilla.iter()))
        .enumerate()
    {
        if let Err(why) = conformance::compare(theirs, ours) {
            let sent = step.render(&prefix, 0, 0);
            let show =
                |bytes: &[u8]| String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
            differences.push(format!(
                "step {index} ({:?}): {why}\n  memcached: {:?}\n  flotilla:  {:?}",
                String::from_utf8_lossy(&sent[..sent.len().min(100)]),
                show(theirs),
                show(ours),
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} steps differ:\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n")
    );
}
