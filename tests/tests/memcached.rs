//! memcached in QEMU, driven from outside by real clients on 4 cores.
//!
//! * `real_clients_on_every_core`: a tap device in a network namespace this test creates (root);
//!   the wall clock comes from `time=` (which `qemu-smp` passes). First the differential test:
//!   the command sequence of `netd::app::memcached::conformance` (every command, noreply,
//!   malformed input, values up to 3 KB, items memcached refuses as too large, closing) goes to
//!   Debian's memcached 1.6, started inside the namespace on a free loopback port, and to the
//!   guest, from a client thread inside the namespace; the answers must match after normalising
//!   CAS uniques, the version and `STAT` values. Then Debian's `python3-pymemcache` over 16
//!   connections (4 per NIC queue, so 4 per core) runs the whole command set on keys of every
//!   core with values of 1 B to 3 KB, 1 MB values on keys the connection's own core owns, and
//!   reads 1 MB values of other cores' keys (chunked over today's 4 KiB cross-core messages);
//!   then libmemcached's `memcstat`, `memccp`, `memccat`, `memcrm`, `memcexist`, `memctouch`,
//!   `memcflush` and `memcslap` against the same machine.
//! * `the_wall_clock_comes_from_the_rtc_without_time`: QEMU user networking (no root), booted
//!   without `time=`: the guest reads the CMOS RTC, `stats time` is the host's time, and an
//!   absolute exptime expires on time.
//! * `long_values_on_other_cores_keys`: 1 MB sets and gets on keys of every core with
//!   pymemcache, `memccp`/`memccat` of files up to 1 MB, and the long-value differential steps
//!   (remote values travel by reference through the kernel's mailbox, `docs/cpudriver.md`).
//!
//! Every loop is bounded in count and time; tap traffic stays inside the test's namespace; the
//! reference memcached listens on a loopback address only and is killed by its PID.

use flotilla_tests::clients::run_client;
use flotilla_tests::*;
use netd::app::memcached::conformance::{self, Step};
use netd::app::memcached::key_owner;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CORES: u16 = 4;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Debian's memcached on a free loopback port, killed by its PID when dropped.
struct Reference {
    child: Child,
    address: SocketAddr,
}

impl Reference {
    fn start() -> Self {
        require_program("memcached", "memcached");
        let port = free_port();
        let mut command = Command::new("memcached");
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached starts");
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // From here the guard kills the server (by its PID), whatever happens.
        let reference = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(address).is_ok() {
                return reference;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("memcached did not listen on {address}");
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// One conversation over TCP: each step is followed by `mn`, its answer read up to `MN`.
struct Conversation {
    address: SocketAddr,
    stream: Option<TcpStream>,
}

impl Conversation {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            stream: None,
        }
    }

    fn step(&mut self, bytes: &[u8], closes: bool) -> Result<Vec<u8>, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(10))
                .map_err(|e| format!("connect {}: {e}", self.address))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().unwrap();
        stream.write_all(bytes).map_err(|e| format!("send: {e}"))?;
        if !closes {
            stream
                .write_all(b"mn\r\n")
                .map_err(|e| format!("send: {e}"))?;
        }
        let mut reply = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => reply.extend_from_slice(&buffer[..count]),
                Err(error) => {
                    return Err(format!(
                        "no complete answer to {:?} ({error}); got {} bytes: {:?}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
                        reply.len(),
                        String::from_utf8_lossy(&reply[reply.len().saturating_sub(200)..])
                    ))
                }
            }
            if !closes && reply.ends_with(b"MN\r\n") {
                break;
            }
        }
        if closes {
            self.stream = None;
        }
        Ok(reply)
    }
}

/// Runs `steps` on one server; the normalised answers (or where it broke off).
fn run(address: SocketAddr, prefix: &str, steps: &[Step]) -> Result<Vec<Vec<u8>>, String> {
    let mut conversation = Conversation::new(address);
    let mut last_cas = 0;
    let mut order = Vec::new();
    let mut answers = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let bytes = step.render(prefix, last_cas, unix_now());
        let reply = conversation
            .step(&bytes, step.closes)
            .map_err(|e| format!("step {index}: {e}"))?;
        if let Some(unique) = conformance::last_cas(&reply) {
            last_cas = unique;
        }
        answers.push(conformance::normalise(&reply, &mut order));
    }
    Ok(answers)
}

/// A key prefix under which the sequence's keys (and its long-value keys 10 to 16) land on every
/// core.
fn spreading_prefix() -> String {
    (0..)
        .map(|n| format!("q{n}:"))
        .find(|prefix| {
            let owners = |keys: std::ops::Range<u32>| {
                keys.map(|key| key_owner(format!("{prefix}{key}").as_bytes(), CORES))
                    .collect::<std::collections::BTreeSet<u16>>()
                    .len()
            };
            owners(conformance::KEYS) == usize::from(CORES) && owners(10..17) == usize::from(CORES)
        })
        .unwrap()
}

/// Sends `steps` to the reference (started here) and to the guest at `guest`; `Err` lists the
/// differences.
fn differential(guest: SocketAddr, steps: &[Step]) -> Result<(), String> {
    let prefix = spreading_prefix();
    let reference = Reference::start();
    let memcached =
        run(reference.address, &prefix, steps).map_err(|e| format!("memcached: {e}"))?;
    drop(reference);
    let flotilla = run(guest, &prefix, steps).map_err(|e| format!("flotilla: {e}"))?;
    let mut differences = Vec::new();
    for (index, (step, (theirs, ours))) in steps
        .iter()
        .zip(memcached.iter().zip(flotilla.iter()))
        .enumerate()
    {
        if let Err(why) = conformance::compare(theirs, ours) {
            let sent = step.render(&prefix, 0, 0);
            let show =
                |bytes: &[u8]| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            differences.push(format!(
                "step {index} ({:?}): {why}\n  memcached: {:?}\n  flotilla:  {:?}",
                String::from_utf8_lossy(&sent[..sent.len().min(100)]),
                show(theirs),
                show(ours)
            ));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} steps differ:\n{}",
            differences.len(),
            steps.len(),
            differences.join("\n")
        ))
    }
}

/// Runs `work` on a thread inside network namespace `name` (sockets it opens and processes it
/// starts live there).
fn in_namespace<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("joining {path}: {e}"));
        work()
    })
    .join()
    .expect("the namespace thread")
}

/// The guest's memcached on the tap network.
fn guest_on_tap() -> SocketAddr {
    format!("{GUEST_ADDRESS}:11211").parse().unwrap()
}

/// Asks `stats` at `address` until the guest answers (its link comes up shortly after the
/// stacks); returns the stats as (name, value) pairs.
fn stats_when_ready(address: SocketAddr) -> Result<Vec<(String, String)>, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut conversation = Conversation::new(address);
        match conversation.step(b"stats\r\n", false) {
            Ok(reply) => {
                return Ok(String::from_utf8_lossy(&reply)
                    .lines()
                    .filter_map(|line| line.strip_prefix("STAT "))
                    .filter_map(|line| line.split_once(' '))
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect());
            }
            Err(error) => last = error,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("memcached in the guest did not answer: {last}"))
}

fn stat(stats: &[(String, String)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no numeric STAT {name} in {stats:?}"))
}

/// Boots 4 cores on QEMU user networking with the guest's port 11211 forwarded to a free port.
fn boot_forwarded(pass_time: bool) -> (Machine, SocketAddr) {
    let port = free_port();
    let mut config = MachineConfig::kernel(image(), u32::from(CORES), "urpc=off");
    config.network = Network::User(vec![("tcp", port, 11211)]);
    config.pass_time = pass_time;
    let machine = boot_with_network(&config, CORES);
    (machine, format!("127.0.0.1:{port}").parse().unwrap())
}

#[test]
fn the_wall_clock_comes_from_the_rtc_without_time() {
    let (mut machine, guest) = boot_forwarded(false);
    let clock = line_containing(&mut machine, "the wall clock", "flotilla: wall clock");
    assert!(clock.ends_with("from the CMOS RTC"), "{clock}");
    let stats = stats_when_ready(guest)
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", console_tail(&machine, 30)));
    let time = stat(&stats, "time");
    assert!(
        time.abs_diff(unix_now()) <= 5,
        "guest time {time}, host {}",
        unix_now()
    );
    // An absolute exptime 3 s from now: there now, gone after it (keys on every core).
    let keys: Vec<String> = (0..CORES)
        .map(|core| {
            (0..)
                .map(|n| format!("clock{n}"))
                .find(|key| key_owner(key.as_bytes(), CORES) == core)
                .unwrap()
        })
        .collect();
    let mut conversation = Conversation::new(guest);
    let expires = unix_now() + 3;
    let mut request = String::new();
    for key in &keys {
        request += &format!("set {key} 0 {expires} 1\r\nx\r\n");
    }
    request += &format!("get {}\r\n", keys.join(" "));
    let reply = String::from_utf8(conversation.step(request.as_bytes(), false).unwrap()).unwrap();
    assert_eq!(reply.matches("VALUE ").count(), keys.len(), "{reply}");
    std::thread::sleep(Duration::from_secs(5));
    let reply = conversation
        .step(format!("get {}\r\n", keys.join(" ")).as_bytes(), false)
        .unwrap();
    assert_eq!(
        reply,
        b"END\r\nMN\r\n",
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

/// pymemcache over many connections, each bound to a source port so that RSS puts it on a known
/// core. argv: guest, then per connection `PORT:QUEUE:SMALL_KEYS:LOCAL_BIG_KEY:REMOTE_BIG_KEY`
/// (keys comma-separated). Prints `mc PORT ok` or `mc PORT FAIL why` per connection and phase.
const PYMEMCACHE_CLIENT: &str = concat!(
    flotilla_tests::pymemcache_bound_sockets!(),
    r#"
PATTERN = bytes(range(256)) * 4200
def value(length, seed):
    start = seed % 256
    return PATTERN[start:start + length]

guest = sys.argv[1]
plan = []
for item in sys.argv[2:]:
    port, queue, small, local_big, remote_big = item.split(':')
    plan.append((int(port), int(queue), small.split(','), local_big, remote_big))
clients = {}
for port, queue, small, local_big, remote_big in plan:
    clients[port] = Client((guest, 11211), connect_timeout=20, timeout=60,
                           socket_module=BoundSockets(port), default_noreply=False)

def check(condition, why):
    if not condition:
        raise ValueError(why)

BIG = 1000000
for port, queue, small, local_big, remote_big in plan:
    c = clients[port]
    try:
        check(c.version().startswith(b'1.6'), 'version')
        lengths = [1, 10, 100, 1000, 3000]
        for n, key in enumerate(small):
            v = value(lengths[n % len(lengths)], port + n)
            check(c.set(key, v, expire=0), 'set %s' % key)
            check(c.get(key) == v, 'get %s' % key)
        expected = {key: value(lengths[n % len(lengths)], port + n) for n, key in enumerate(small)}
        check(c.get_many(small + ['missing-%d' % port]) == expected, 'get_many')
        got = c.gets_many(small)
        check({k: v for k, (v, cas) in got.items()} == expected, 'gets_many')
        k0, k1, k2, k3 = small[0], small[1], small[2], small[3]
        # cas: the unique from gets works once, then is stale.
        v, unique = c.gets(k0)
        check(c.cas(k0, b'swapped', unique) is True, 'cas stored')
        check(c.cas(k0, b'again', unique) is False, 'cas exists')
        check(c.cas('never-%d' % port, b'x', 1) is None, 'cas not found')
        check(c.add(k0, b'no') is False and c.add('added-%d' % port, b'yes') is True, 'add')
        check(c.replace('never-%d' % port, b'no') is False and c.replace(k1, b'middle') is True, 'replace')
        check(c.append(k1, b'>>') and c.prepend(k1, b'<<') and c.get(k1) == b'<<middle>>', 'append/prepend')
        check(c.set(k2, b'10') and c.decr(k2, 1) == 9 and c.get(k2) == b'9 ', 'decr pads')
        check(c.incr(k2, 18446744073709551615) == 8, 'incr wraps')
        check(c.decr(k2, 100) == 0, 'decr stops at 0')
        check(c.incr('never-%d' % port, 1) is None, 'incr missing')
        check(c.touch(k3, 100) is True and c.touch('never-%d' % port, 1) is False, 'touch')
        got = c._fetch_cmd(b'gat 100', [k3], False)
        check(list(got.values()) == [expected[k3]], 'gat')
        got = c._fetch_cmd(b'gats 100', [k3], True)
        check([v for v, cas in got.values()] == [expected[k3]], 'gats')
        check(c.set('expired-%d' % port, b'x', expire=-1) and c.get('expired-%d' % port) is None, 'negative exptime')
        check(c.delete(k3) is True and c.delete(k3) is False and c.get(k3) is None, 'delete')
        c.set_many({k3: b'a', 'many-%d' % port: b'b'})
        check(c.get_many([k3, 'many-%d' % port]) == {k3: b'a', 'many-%d' % port: b'b'}, 'set_many')
        check(c.delete_many([k3, 'many-%d' % port]) is True and c.get(k3) is None, 'delete_many')
        c.set(k3, b'quiet', noreply=True)
        check(c.get(k3) == b'quiet', 'noreply set')
        check(c._misc_cmd([b'verbosity 1\r\n'], b'verbosity', False)[0] == b'OK', 'verbosity')
        # A value of 1 MB on a key this connection's core owns.
        big = value(BIG, port)
        check(c.set(local_big, big) is True, 'set 1 MB local')
        check(c.get(local_big) == big, 'get 1 MB local')
        print('mc %d ok' % port, flush=True)
    except Exception as e:
        print('mc %d FAIL %r' % (port, e), flush=True)

# Every connection reads another core's 1 MB value (it crosses cores in chunks).
for port, queue, small, local_big, remote_big in plan:
    c = clients[port]
    owner = [p for p, q, s, l, r in plan if l == remote_big][0]
    try:
        got = c.get(remote_big)
        check(got == value(BIG, owner), 'remote 1 MB: %r bytes' % (None if got is None else len(got)))
        print('mc %d remote-big ok' % port, flush=True)
    except Exception as e:
        print('mc %d remote-big FAIL %r' % (port, e), flush=True)

raw = std_socket.create_connection((guest, 11211))
raw.sendall(b'stats flotilla\r\n')
time.sleep(1)
print('flotilla stats:', raw.recv(100000).decode().replace('\r\n', ' '), flush=True)
raw.close()
c = clients[plan[0][0]]
try:
    stats = c.stats()
    check(int(stats[b'threads']) == 4, 'threads %r' % stats[b'threads'])
    check(int(stats[b'curr_connections']) >= len(plan), 'curr_connections %r' % stats[b'curr_connections'])
    check(int(stats[b'curr_items']) >= 5 * len(plan), 'curr_items %r' % stats[b'curr_items'])
    check(c.flush_all() is True, 'flush_all')
    for port, queue, small, local_big, remote_big in plan:
        check(clients[port].get_many(small + [local_big]) == {}, 'empty after flush_all')
    print('mc stats ok', flush=True)
except Exception as e:
    print('mc stats FAIL %r' % e, flush=True)
for c in clients.values():
    c.quit()
"#
);

/// Keys owned by each core, for connection `index`.
fn keys_for(index: usize, per_owner: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for owner in 0..CORES {
        let mut taken = 0;
        for candidate in 0u32.. {
            let key = format!("c{index}-o{owner}-{candidate}");
            if key_owner(key.as_bytes(), CORES) == owner {
                keys.push(key);
                taken += 1;
                if taken == per_owner {
                    break;
                }
            }
        }
    }
    keys
}

/// A key starting with `prefix` that core `owner` owns.
fn owned_key(prefix: &str, owner: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| key_owner(key.as_bytes(), CORES) == owner)
        .unwrap()
}

/// Boots 4 cores on a tap device in a new namespace.
fn boot_on_tap(what: &str) -> (TapNamespace, Machine) {
    require_root();
    require_program("ip", "iproute2");
    let (namespace, machine) =
        flotilla_tests::boot_on_tap(&format!("memcached-{what}"), CORES, "urpc=off");
    // The link comes up shortly after the stacks.
    ping_until_answered(&namespace, 1, 2, 20);
    (namespace, machine)
}

/// Runs a libmemcached tool in the namespace; returns (success, output).
fn tool(namespace: &TapNamespace, program: &str, args: &[&str]) -> (bool, String) {
    let servers = format!("--servers={GUEST_ADDRESS}");
    let output = run_bounded(
        namespace.command(program).arg(&servers).args(args),
        Duration::from_secs(120),
    );
    (output.status.success(), text(&output))
}

#[test]
fn real_clients_on_every_core() {
    let python = python_with("pymemcache");
    for (program, package) in [
        ("memcstat", "libmemcached-tools"),
        ("memccp", "libmemcached-tools"),
        ("memccat", "libmemcached-tools"),
        ("memcflush", "libmemcached-tools"),
        ("memcslap", "libmemcached-tools"),
        ("memcrm", "libmemcached-tools"),
        ("memcexist", "libmemcached-tools"),
        ("memctouch", "libmemcached-tools"),
    ] {
        require_program(program, package);
    }
    let (namespace, mut machine) = boot_on_tap("clients");
    let clock = line_containing(&mut machine, "the wall clock", "flotilla: wall clock");
    assert!(clock.ends_with("from time= on the command line"), "{clock}");
    let outcome = in_namespace(&namespace.name, || {
        let stats = stats_when_ready(guest_on_tap())?;
        let time = stat(&stats, "time");
        if time.abs_diff(unix_now()) > 5 {
            return Err(format!("guest time {time}, host {}", unix_now()));
        }
        if stat(&stats, "threads") != u64::from(CORES) {
            return Err(format!("stats: {stats:?}"));
        }
        differential(guest_on_tap(), &conformance::steps())
    });
    if let Err(error) = outcome {
        panic!("{error}\nconsole:\n{}", console_tail(&machine, 30));
    }

    // 16 connections, 4 per queue (= core).
    let table = drivers::rss::default_table(CORES);
    let flows = ports_by_queue(&table, 11211, 4, 33000..=36000);
    let mut plan = Vec::new();
    let big_keys: Vec<String> = flows
        .iter()
        .enumerate()
        .map(|(index, (_, queue))| owned_key(&format!("big{index}"), *queue))
        .collect();
    for (index, (port, queue)) in flows.iter().enumerate() {
        let small = keys_for(index, 2);
        // Another connection's big key, on another core.
        let other = (0..flows.len())
            .map(|n| (index + 1 + n) % flows.len())
            .find(|n| flows[*n].1 != *queue)
            .unwrap();
        plan.push(format!(
            "{port}:{queue}:{}:{}:{}",
            small.join(","),
            big_keys[index],
            big_keys[other]
        ));
    }
    let mut arguments = vec![GUEST_ADDRESS.to_string()];
    arguments.extend(plan);
    let mc = run_client(
        &namespace,
        &python,
        PYMEMCACHE_CLIENT,
        &arguments,
        Duration::from_secs(600),
        ("mc ", " ok"),
    );
    assert!(
        mc.output.status.success() && mc.ok == 2 * flows.len() + 1,
        "pymemcache over {} connections: {} ok lines, want {}:\n{}\nconsole:\n{}",
        flows.len(),
        mc.ok,
        2 * flows.len() + 1,
        mc.report,
        console_tail(&machine, 30)
    );

    // libmemcached's tools.
    let (ok, out) = tool(&namespace, "memcstat", &[]);
    assert!(
        ok && out.contains("threads: 4") && out.contains("curr_items:"),
        "memcstat:\n{out}"
    );
    let directory = std::env::temp_dir().join(format!("flotilla-memccp-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let mut files = Vec::new();
    for (n, length) in [1usize, 100, 1000, 3000].into_iter().enumerate() {
        for owner in 0..CORES {
            let name = owned_key(&format!("file{n}"), owner);
            let path = directory.join(&name);
            let content: Vec<u8> = (0..length).map(|i| b'a' + ((i + n) % 26) as u8).collect();
            std::fs::write(&path, &content).unwrap();
            files.push((name, path, content));
        }
    }
    let paths: Vec<String> = files
        .iter()
        .map(|(_, p, _)| p.to_string_lossy().into_owned())
        .collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (ok, out) = tool(&namespace, "memccp", &path_refs);
    assert!(ok, "memccp:\n{out}");
    for (name, _, content) in &files {
        let output = run_bounded(
            namespace
                .command("memccat")
                .arg(format!("--servers={GUEST_ADDRESS}"))
                .arg(name),
            Duration::from_secs(30),
        );
        // memccat prints the value and a newline.
        let mut expected = content.clone();
        expected.push(b'\n');
        assert!(
            output.status.success() && output.stdout == expected,
            "memccat {name}: {} bytes back of {}: {}",
            output.stdout.len(),
            content.len(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (name, _, _) = &files[0];
    let (ok, out) = tool(&namespace, "memcexist", &[name]);
    assert!(ok, "memcexist {name}:\n{out}");
    let (ok, out) = tool(&namespace, "memctouch", &["--expire=100", name]);
    assert!(ok, "memctouch {name}:\n{out}");
    let (ok, out) = tool(&namespace, "memcrm", &[name]);
    assert!(ok, "memcrm {name}:\n{out}");
    let (ok, _) = tool(&namespace, "memcexist", &[name]);
    assert!(!ok, "memcexist found {name} after memcrm");
    let (ok, out) = tool(&namespace, "memcflush", &[]);
    assert!(ok, "memcflush:\n{out}");
    let (ok, out) = tool(&namespace, "memccat", &[&files[1].0]);
    assert!(!ok, "memccat found {} after memcflush:\n{out}", files[1].0);
    for test in ["set", "get", "mget"] {
        let (ok, out) = tool(
            &namespace,
            "memcslap",
            &[
                "--concurrency=4",
                "--execute-number=500",
                &format!("--test={test}"),
            ],
        );
        assert!(
            ok,
            "memcslap --test={test}:\n{out}\nconsole:\n{}",
            console_tail(&machine, 20)
        );
    }
    let (ok, out) = tool(&namespace, "memcstat", &[]);
    assert!(ok && out.contains("cmd_get:"), "memcstat:\n{out}");
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn long_values_on_other_cores_keys() {
    let python = python_with("pymemcache");
    let (namespace, machine) = boot_on_tap("long");
    // pymemcache: sizes up to 1 MB on keys of every core, over one connection per core.
    const SCRIPT: &str = r#"
import sys
from pymemcache.client.base import Client
guest, keys = sys.argv[1], sys.argv[2].split(',')
c = Client((guest, 11211), connect_timeout=20, timeout=120)
PATTERN = bytes(range(256)) * 4200
bad = 0
for n, key in enumerate(keys):
    for length in (4000, 40000, 100000, 1000000):
        v = PATTERN[n % 256:n % 256 + length]
        if not c.set(key, v) or c.get(key) != v:
            print('long FAIL %s %d' % (key, length), flush=True)
            bad += 1
print('long ok' if bad == 0 else 'long %d failures' % bad, flush=True)
"#;
    let keys: Vec<String> = (0..CORES).map(|owner| owned_key("long", owner)).collect();
    for _ in 0..CORES {
        let output = run_bounded(
            namespace
                .command(&python)
                .args(["-c", SCRIPT, GUEST_ADDRESS, &keys.join(",")]),
            Duration::from_secs(600),
        );
        let report = text(&output);
        assert!(
            report.contains("long ok"),
            "{report}\nconsole:\n{}",
            console_tail(&machine, 20)
        );
    }
    // memccp/memccat of files up to 1 MB.
    let directory =
        std::env::temp_dir().join(format!("flotilla-memccp-long-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    for owner in 0..CORES {
        let name = owned_key("longfile", owner);
        let path = directory.join(&name);
        let content: Vec<u8> = (0..1_000_000).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let (ok, out) = tool(&namespace, "memccp", &[&path.to_string_lossy()]);
        assert!(ok, "memccp {name}:\n{out}");
        let output = run_bounded(
            namespace
                .command("memccat")
                .arg(format!("--servers={GUEST_ADDRESS}"))
                .arg(&name),
            Duration::from_secs(60),
        );
        let mut expected = content.clone();
        expected.push(b'\n');
        assert!(
            output.stdout == expected,
            "memccat {name}: {} bytes",
            output.stdout.len()
        );
    }
    let _ = std::fs::remove_dir_all(&directory);
    // The long-value steps of the differential sequence.
    let outcome = in_namespace(&namespace.name, || {
        differential(guest_on_tap(), &conformance::large_steps())
    });
    if let Err(error) = outcome {
        panic!("{error}\nconsole:\n{}", console_tail(&machine, 30));
    }
}
