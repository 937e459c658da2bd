//! A core stops in QEMU and the machine keeps serving, core 0 included.
//!
//! * `core_0_hangs_and_the_survivors_serve_every_protocol`: 4 cores, igb on a tap device in a
//!   network namespace this test creates. Core 0 — the NIC's home: its control (RSS key,
//!   redirection table, MSI-X routing) and queue 0, where the NIC puts ARP and every frame it
//!   does not hash — hangs (`hang=0@MS`). The monitors declare it failed; core 1 must take the
//!   NIC's control and queue 0 over and say so on the console. Then the host's neighbour entry
//!   for the guest is flushed, so the next packet needs a fresh ARP exchange through queue 0; and
//!   `ping`, UDP echo over 32 flows (8 on each queue of the boot table, those of core 0's queue
//!   included), TCP echo over 16 connections, memcached (pymemcache, keys of every core, core 0's
//!   re-homed) and `/stats` (listing cores 1–3 only) must all be served. Prints the takeover's
//!   timing: the hang, the verdict and the takeover on the guest's clock, and the fresh ARP and
//!   ping from the host.
//! * `a_core_hang_during_memcached_and_http_load_leaves_no_request_hanging`: 4 cores, tap; while
//!   clients on connections served by cores 1–3 run memcached sets and gets on keys of every core
//!   and HTTP requests for `/` and `/stats`, core 0 hangs. Every request must be answered (a
//!   value, a miss, `STORED`, `SERVER_ERROR owner core failed`, an HTTP 200), none later than the
//!   failure detector's bound plus a TCG allowance: without the verdict, a request waiting on
//!   the failed core would wait memcached's 2 s reply timeout, which the bound is below.
//!   Connections the failed core itself served are lost with it (TCP state does not migrate:
//!   `docs/netd.md`), so the clients' source ports are chosen by the Toeplitz hash to land on the
//!   other cores.
//!
//! Needs root, `ip`, `ping`, `curl` and Debian's `python3-pymemcache`
//! (`bash qemu-smp/install-deps.sh`). Every loop is bounded in count and time; all traffic stays
//! inside the test's namespace. `FLOTILLA_TEST_KERNEL=/path/to/image` boots that image instead.

use drivers::rss;
use flotilla_tests::clients::*;
use flotilla_tests::stats::fetch_stats;
use flotilla_tests::*;
use qemu_smp::tap::GUEST_ADDRESS;
use std::time::{Duration, Instant};

const CORES: u16 = 4;
/// The failure detector under test: heartbeats every 50 ms, 4 missed.
const HEARTBEAT_MS: u64 = 50;
const MISSED: u64 = 4;

/// The number after `at ` and before ` ms` in a console line.
fn at_ms(line: &str) -> u64 {
    line.split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

#[test]
fn core_0_hangs_and_the_survivors_serve_every_protocol() {
    require_root();
    require_program("ip", "iproute2");
    require_program("ping", "iputils-ping");
    require_program("curl", "curl");
    let python = python_with("pymemcache");
    let cmdline =
        format!("urpc=off monitor.heartbeat_ms={HEARTBEAT_MS} monitor.miss={MISSED} hang=0@6000");
    let (namespace, mut machine) = boot_on_tap("core0-hang", CORES, &cmdline);
    // Served before the hang (the host learns the guest's MAC through queue 0 on core 0).
    assert!(
        ping_until_answered(&namespace, 1, 1, 60).0,
        "no ping before the hang:\n{}",
        console_tail(&machine, 40)
    );

    let hang = line_containing(&mut machine, "core 0's hang", "core 0 hangs now at");
    let verdict = line_containing(&mut machine, "the verdict", "saw core 0 fail at");
    let control = line_containing(
        &mut machine,
        "the NIC's control taken over",
        "core 1 took over the NIC's control from core 0",
    );
    let adopted = line_containing(
        &mut machine,
        "queue 0 adopted",
        "core 1 adopted queue 0 of core 0",
    );
    let moved = line_containing(
        &mut machine,
        "core 0's flow groups moved",
        "flow groups of core 0 moved to the live cores",
    );
    line_containing(
        &mut machine,
        "vector 0 routed",
        "MSI-X vector 0 now wakes core 1",
    );

    // A fresh ARP exchange: the host forgets the guest's MAC, so its next packet starts with a
    // broadcast ARP request that only queue 0 receives.
    let flushed = run_bounded(
        namespace
            .command("ip")
            .args(["neigh", "flush", "dev", &namespace.tap]),
        Duration::from_secs(10),
    );
    assert!(
        flushed.status.success(),
        "ip neigh flush: {}",
        text(&flushed)
    );
    let shown = run_bounded(
        namespace
            .command("ip")
            .args(["neigh", "show", GUEST_ADDRESS]),
        Duration::from_secs(10),
    );
    assert!(
        !text(&shown).contains("REACHABLE") && !text(&shown).contains("STALE"),
        "the neighbour entry survived the flush: {}",
        text(&shown)
    );
    let flushed_at = Instant::now();
    assert!(
        ping_until_answered(&namespace, 1, 1, 5).0,
        "no ping after core 0 hung (a fresh ARP through queue 0):\n{}",
        console_tail(&machine, 40)
    );
    let first_ping = flushed_at.elapsed();
    let shown = run_bounded(
        namespace
            .command("ip")
            .args(["neigh", "show", GUEST_ADDRESS]),
        Duration::from_secs(10),
    );
    assert!(
        text(&shown).contains("52:54:00:12:34:56"),
        "the host did not learn the guest's MAC again: {}",
        text(&shown)
    );
    assert!(
        ping_until_answered(&namespace, 3, 1, 3).0,
        "ping -c 3 after the takeover"
    );

    // UDP echo: 32 flows, 8 on each queue of the boot table (core 0's flows now elsewhere).
    let table = rss::default_table(CORES);
    let udp_flows = ports_by_queue(&table, 7, 8, 20000..=24999);
    let udp = udp_echo(&namespace, &python, &udp_flows, 4, Duration::from_secs(120));
    assert!(
        udp.output.status.success() && udp.ok == udp_flows.len(),
        "UDP echo after the takeover: {} of {} flows fully echoed:\n{}\nconsole:\n{}",
        udp.ok,
        udp_flows.len(),
        udp.report,
        console_tail(&machine, 40)
    );

    // TCP echo: 16 new connections, 4 on each queue of the boot table.
    let tcp_flows = ports_by_queue(&table, 7, 4, 25000..=29999);
    let tcp = tcp_echo(&namespace, &python, &tcp_flows, Duration::from_secs(150));
    assert!(
        tcp.output.status.success() && tcp.ok == tcp_flows.len(),
        "TCP echo after the takeover: {} of {} connections:\n{}\nconsole:\n{}",
        tcp.ok,
        tcp_flows.len(),
        tcp.report,
        console_tail(&machine, 40)
    );

    // memcached: 8 connections, keys of every core of the boot layout (two per core, found by
    // the server's partition function over every core: a failed core's keys are re-homed by the
    // guest).
    let memcached_flows = ports_by_queue(&table, 11211, 2, 30000..=32767);
    let plan = memcached_plan(&memcached_flows, CORES, 2, |index, owner, candidate| {
        format!("failover{index}-owner{owner}-k{candidate}")
    });
    let mc = memcached(&namespace, &python, &plan, Duration::from_secs(180));
    assert!(
        mc.output.status.success() && mc.ok == memcached_flows.len() + 1,
        "memcached after the takeover: {} ok lines, want {}:\n{}\nconsole:\n{}",
        mc.ok,
        memcached_flows.len() + 1,
        mc.report,
        console_tail(&machine, 40)
    );

    // /stats: the live cores only (bounded wait for a gathering without core 0).
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let ids: Vec<u64> = fetch_stats(&namespace)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|core| number(core, "core"))
            .collect();
        if ids == [1, 2, 3] || Instant::now() >= deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(listed, [1, 2, 3], "/stats after core 0 failed");
    let console = machine.console();
    assert_no_fault(&console, "");
    let failures: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("saw core") && !line.contains("saw core 0 fail"))
        .collect();
    assert!(
        failures.is_empty(),
        "another core was declared failed: {failures:?}"
    );
    println!(
        "core 0 hung at {} ms; declared failed at {} ms (bound {} ms); core 1 took the NIC's control at {} ms and queue 0 at {} ms; {}",
        at_ms(&hang),
        at_ms(&verdict),
        (MISSED + 1) * HEARTBEAT_MS,
        at_ms(&control),
        at_ms(&adopted),
        moved.trim_start_matches("monitor: "),
    );
    println!(
        "after the host's neighbour entry was flushed: first ping answered {} ms later (fresh ARP through queue 0 on core 1)",
        first_ping.as_millis()
    );
    drop(machine);
    drop(namespace);
}

/// The load of the second test: argv = guest, most seconds, per-request timeout (s), a file whose
/// appearance stops the load, then one `KIND:PORT` per connection (`mc` memcached, `http` HTTP/1.1 keep-alive), then `--keys` and
/// the memcached keys. Each connection runs its requests back to back on its own thread and
/// notes each one's latency and answer. Prints `conn KIND PORT requests=N max_ms=M answers=...`
/// per connection and `FAIL ...` for a request that got no answer or a wrong one.
const LOAD_CLIENT: &str = r#"
import os, socket, sys, threading, time
guest, seconds, timeout, stop = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
split = sys.argv.index('--keys')
plan = [(a.split(':')[0], int(a.split(':')[1])) for a in sys.argv[5:split]]
keys = sys.argv[split + 1:]
deadline = time.monotonic() + seconds

def going():
    return time.monotonic() < deadline and not os.path.exists(stop)
lock = threading.Lock()

def report(line):
    with lock:
        print(line, flush=True)

def read_until(s, buffer, marker):
    while marker not in buffer:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('closed')
        buffer += chunk
    return buffer

def memcached(port, index):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(('10.0.2.2', port))
    s.settimeout(timeout)
    s.connect((guest, 11211))
    requests, worst, answers, n = 0, 0.0, {}, 0
    while going():
        key = keys[(index * 7 + n) % len(keys)]
        n += 1
        value = ('%s-%d' % (key, n)).encode()
        for request, done in ((b'set %s 0 0 %d\r\n%s\r\n' % (key.encode(), len(value), value), b'\r\n'),
                              (b'get %s\r\n' % key.encode(), b'END\r\n')):
            started = time.monotonic()
            try:
                s.sendall(request)
                reply = read_until(s, b'', done)
            except Exception as e:
                report('FAIL mc %d %r after %.0f ms: %r' % (port, request[:40], (time.monotonic() - started) * 1000, e))
                return
            took = time.monotonic() - started
            worst = max(worst, took)
            requests += 1
            first = reply.split(b'\r\n')[0].split(b' ')[0].decode(errors='replace')
            if reply.startswith(b'SERVER_ERROR'):
                first = reply.split(b'\r\n')[0].decode(errors='replace')
            answers[first] = answers.get(first, 0) + 1
            if first not in ('STORED', 'VALUE', 'END', 'SERVER_ERROR owner core failed'):
                report('FAIL mc %d unexpected answer %r' % (port, reply[:80]))
    s.close()
    report('conn mc %d requests=%d max_ms=%.0f answers=%r' % (port, requests, worst * 1000, answers))

def http(port, index):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('10.0.2.2', port))
    s.settimeout(timeout)
    s.connect((guest, 80))
    requests, worst, answers, buffer = 0, 0.0, {}, b''
    while going():
        path = '/stats' if requests % 2 else '/'
        started = time.monotonic()
        try:
            s.sendall(('GET %s HTTP/1.1\r\nHost: flotilla\r\n\r\n' % path).encode())
            buffer = read_until(s, buffer, b'\r\n\r\n')
            head, buffer = buffer.split(b'\r\n\r\n', 1)
            length = 0
            for line in head.split(b'\r\n')[1:]:
                name, _, field = line.partition(b':')
                if name.strip().lower() == b'content-length':
                    length = int(field.strip())
            while len(buffer) < length:
                chunk = s.recv(65536)
                if not chunk:
                    raise EOFError('closed in the body')
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
        except Exception as e:
            report('FAIL http %d %s after %.0f ms: %r' % (port, path, (time.monotonic() - started) * 1000, e))
            return
        took = time.monotonic() - started
        worst = max(worst, took)
        requests += 1
        status = head.split(b' ')[1].decode(errors='replace')
        answers[status] = answers.get(status, 0) + 1
        if status != '200':
            report('FAIL http %d %s status %s' % (port, path, status))
    s.close()
    report('conn http %d requests=%d max_ms=%.0f answers=%r' % (port, requests, worst * 1000, answers))

threads = [threading.Thread(target=memcached if kind == 'mc' else http, args=(port, i))
           for i, (kind, port) in enumerate(plan)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

#[test]
fn a_core_hang_during_memcached_and_http_load_leaves_no_request_hanging() {
    require_root();
    require_program("ip", "iproute2");
    let python = python_with("pymemcache");
    // Core 0 hangs 8 s after it came online: during the load, which starts once ping works.
    let cmdline =
        format!("urpc=off monitor.heartbeat_ms={HEARTBEAT_MS} monitor.miss={MISSED} hang=0@8000");
    let (namespace, mut machine) = boot_on_tap("hang-under-load", CORES, &cmdline);
    assert!(
        ping_until_answered(&namespace, 1, 1, 60).0,
        "no ping before the load:\n{}",
        console_tail(&machine, 40)
    );
    // Connections on cores 1–3 only: 2 memcached and 1 HTTP per core.
    let table = rss::default_table(CORES);
    let on_survivors = |port: u16, per_queue: usize, range| -> Vec<u16> {
        ports_by_queue(&table, port, per_queue, range)
            .into_iter()
            .filter(|(_, queue)| *queue != 0)
            .map(|(port, _)| port)
            .collect()
    };
    let mut plan: Vec<String> = on_survivors(11211, 2, 30000..=32767)
        .into_iter()
        .map(|port| format!("mc:{port}"))
        .collect();
    plan.extend(
        on_survivors(80, 1, 33000..=34999)
            .into_iter()
            .map(|port| format!("http:{port}")),
    );
    // Keys of every core, core 0's among them: their requests wait for core 0 when it hangs.
    let keys: Vec<String> = (0..CORES)
        .flat_map(|owner| {
            (0u32..)
                .map(move |n| format!("load-{owner}-{n}"))
                .filter(move |key| netd::app::memcached::key_owner(key.as_bytes(), CORES) == owner)
                .take(4)
        })
        .collect();
    let stop = std::env::temp_dir().join(format!("{}.stop", unique_namespace("load")));
    let _ = std::fs::remove_file(&stop);
    let mut arguments = vec![
        "-c".to_string(),
        LOAD_CLIENT.to_string(),
        GUEST_ADDRESS.to_string(),
        "40".to_string(),
        "5".to_string(),
        stop.to_string_lossy().into_owned(),
    ];
    arguments.extend(plan.iter().cloned());
    arguments.push("--keys".to_string());
    arguments.extend(keys);
    let started = Instant::now();
    let load = {
        let mut command = namespace.command(&python);
        command.args(&arguments);
        std::thread::spawn(move || run_bounded(&mut command, Duration::from_secs(90)))
    };
    // The load must be running when core 0 hangs.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !machine
            .console()
            .iter()
            .any(|l| l.contains("core 0 hangs now")),
        "core 0 hung before the load started (the boot took too long):\n{}",
        console_tail(&machine, 30)
    );
    let hang = line_containing(&mut machine, "core 0's hang", "core 0 hangs now at");
    let verdict = line_containing(&mut machine, "the verdict", "saw core 0 fail at");
    // Three more seconds of load on the survivors, then the clients stop.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&stop, b"stop").expect("the stop file");
    let output = load.join().expect("the load thread");
    let _ = std::fs::remove_file(&stop);
    let report = text(&output);
    let elapsed = started.elapsed();
    let console = machine.console();
    println!("{report}");
    println!(
        "load for {:.1} s; core 0 hung at {} ms, declared failed at {} ms",
        elapsed.as_secs_f64(),
        at_ms(&hang),
        at_ms(&verdict)
    );
    assert!(
        !report.contains("FAIL"),
        "requests failed or went unanswered:\n{report}\nconsole:\n{}",
        console_tail(&machine, 40)
    );
    let connections: Vec<&str> = report.lines().filter(|l| l.starts_with("conn ")).collect();
    assert_eq!(
        connections.len(),
        plan.len(),
        "every connection reports:\n{report}"
    );
    // The verdict answered what waited on core 0: the slowest request stayed below the
    // detector's bound ((K + 1) periods) plus an allowance for TCG's descheduling (750 ms), both
    // below memcached's own 2 s reply timeout, which answers a request when nothing else does.
    let bound_ms = (MISSED + 1) * HEARTBEAT_MS + 750;
    let mut saw_failed_owner = false;
    for line in &connections {
        let worst: u64 = line
            .split("max_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no max_ms in {line}"));
        let requests: u64 = line
            .split("requests=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(requests >= 5, "too few requests on {line}");
        assert!(
            worst <= bound_ms,
            "a request waited {worst} ms, more than the detection bound plus allowance ({bound_ms} ms): {line}\nconsole:\n{}",
            console_tail(&machine, 30)
        );
        saw_failed_owner |= line.contains("owner core failed");
    }
    assert!(
        saw_failed_owner || report.contains("'END'"),
        "no request met the failed core's keys:\n{report}"
    );
    assert_no_fault(&console, "");
    drop(machine);
    drop(namespace);
}
