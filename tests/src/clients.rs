//! Real clients the tap tests run inside their namespace (Python on std sockets, pymemcache),
//! run and their reports counted.

use crate::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

/// Parses `key=value` words of a line into a map.
pub fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn number(map: &BTreeMap<String, String>, key: &str) -> u64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{key}` in {map:?}"))
}

// ---------------------------------------------------------------------------------------------
// The tap test: unmodified clients in a namespace
// ---------------------------------------------------------------------------------------------

/// UDP echo over many flows: argv = guest, comma-separated source ports, datagrams per flow.
/// Prints `udp PORT ECHOED/SENT` per flow. Each datagram is tried up to 3 times (1 s each).
pub const UDP_ECHO_CLIENT: &str = r#"
import socket, sys, time
guest, ports, per_flow = sys.argv[1], [int(p) for p in sys.argv[2].split(',')], int(sys.argv[3])
deadline = time.monotonic() + 60
sizes = [18, 64, 512, 1400]
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('10.0.2.2', port))
    s.settimeout(1.0)
    echoed = 0
    for i in range(per_flow):
        head = ('flow %d datagram %d ' % (port, i)).encode()
        message = head + bytes((port + i + k) % 256 for k in range(max(0, sizes[i % 4] - len(head))))
        ok = False
        for attempt in range(3):
            if time.monotonic() > deadline:
                break
            s.sendto(message, (guest, 7))
            try:
                while not ok:
                    data, source = s.recvfrom(4096)
                    ok = data == message and source == (guest, 7)
            except socket.timeout:
                pass
            if ok:
                break
        echoed += ok
    s.close()
    print('udp %d %d/%d' % (port, echoed, per_flow), flush=True)
"#;

/// TCP echo over many concurrent connections: argv = guest, comma-separated source ports.
/// Opens them all, then on each sends 1, 200 and 5000 bytes and reads them back, then closes
/// its side and expects the server to close too. Prints `tcp PORT ok` or `tcp PORT FAIL why`.
pub const TCP_ECHO_CLIENT: &str = r#"
import socket, sys, time
guest, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(',')]
deadline = time.monotonic() + 90
connections = {}
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(('10.0.2.2', port))
    s.settimeout(10)
    try:
        s.connect((guest, 7))
        connections[port] = s
    except Exception as e:
        print('tcp %d FAIL connect: %r' % (port, e), flush=True)
        s.close()
def read_exactly(s, n):
    data = b''
    while len(data) < n:
        if time.monotonic() > deadline:
            raise TimeoutError('test deadline')
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError('closed after %d of %d bytes' % (len(data), n))
        data += chunk
    return data
for port, s in connections.items():
    try:
        for size in (1, 200, 5000):
            message = bytes((port * 7 + size + k) % 251 for k in range(size))
            s.sendall(message)
            back = read_exactly(s, size)
            if back != message:
                raise ValueError('%d bytes sent, different %d bytes back' % (size, len(back)))
        s.shutdown(socket.SHUT_WR)
        rest = s.recv(16)
        if rest != b'':
            raise ValueError('extra bytes after the echo: %r' % rest)
        print('tcp %d ok' % port, flush=True)
    except Exception as e:
        print('tcp %d FAIL %r' % (port, e), flush=True)
    finally:
        s.close()
"#;

/// The start of both pymemcache clients' scripts (this one's [`MEMCACHED_CLIENT`] and the
/// memcached test's own): the imports, and `BoundSockets`, pymemcache's socket module with
/// every socket bound to one source port (so that RSS puts the connection on a known core).
#[macro_export]
macro_rules! pymemcache_bound_sockets {
    () => {
        r#"
import socket as std_socket, sys, time
from pymemcache.client.base import Client

class BoundSockets:
    """pymemcache's socket module, with every socket bound to one source port."""
    def __init__(self, port):
        self.port = port
    def __getattr__(self, name):
        return getattr(std_socket, name)
    def socket(self, *args, **kwargs):
        s = std_socket.socket(*args, **kwargs)
        s.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_REUSEADDR, 1)
        s.bind(('10.0.2.2', self.port))
        return s
"#
    };
}

/// memcached over many connections with pymemcache: argv = guest, then one `PORT:KEY,KEY,...`
/// per connection. Connection `PORT` is bound to that source port. Prints `mc PORT ok` or
/// `mc PORT FAIL why`, then `mc cross ok` once every connection read every other's keys.
pub const MEMCACHED_CLIENT: &str = concat!(
    pymemcache_bound_sockets!(),
    r#"
guest = sys.argv[1]
plan = []
for item in sys.argv[2:]:
    port, keys = item.split(':')
    plan.append((int(port), keys.split(',')))
clients = {}
for port, keys in plan:
    clients[port] = Client((guest, 11211), connect_timeout=10, timeout=10,
                           socket_module=BoundSockets(port), default_noreply=False)
    version = clients[port].version()
    if not version:
        print('mc %d FAIL no version' % port, flush=True)
def value(port, key):
    return ('value of %s from %d ' % (key, port)).encode() * 3
everything = {}
for port, keys in plan:
    c = clients[port]
    try:
        for key in keys:
            if not c.set(key, value(port, key)):
                raise ValueError('set %s not stored' % key)
        for key in keys:
            got = c.get(key)
            if got != value(port, key):
                raise ValueError('get %s: %r' % (key, got))
        many = c.get_many(keys + ['never-set-%d' % port])
        expected = {key: value(port, key) for key in keys}
        if many != expected:
            raise ValueError('get_many: %r' % many)
        victim = keys[0]
        if c.delete(victim) is not True:
            raise ValueError('delete %s did not delete' % victim)
        if c.get(victim) is not None:
            raise ValueError('%s still there after delete' % victim)
        if c.delete(victim) is not False:
            raise ValueError('second delete %s was not NOT_FOUND' % victim)
        if not c.set(victim, value(port, victim)):
            raise ValueError('set %s again not stored' % victim)
        c.set(victim + '-noreply', b'quiet', noreply=True)
        if c.get(victim + '-noreply') != b'quiet':
            raise ValueError('noreply set not visible')
        everything.update(expected)
        print('mc %d ok' % port, flush=True)
    except Exception as e:
        print('mc %d FAIL %r' % (port, e), flush=True)
wrong = 0
keys = sorted(everything)
for port, c in clients.items():
    got = {}
    for start in range(0, len(keys), 24):
        got.update(c.get_many(keys[start:start + 24]))
    if got != everything:
        wrong += 1
        missing = [k for k in everything if got.get(k) != everything[k]]
        print('mc cross FAIL on %d: %d keys wrong, e.g. %r' % (port, len(missing), missing[:3]), flush=True)
for c in clients.values():
    c.close()
if wrong == 0:
    print('mc cross ok', flush=True)
"#
);

/// One run of a client script: its output, that output as text, and how many of its lines
/// reported success.
pub struct ClientRun {
    /// The client's exit status, stdout and stderr.
    pub output: Output,
    /// stdout and stderr as text ([`text`]).
    pub report: String,
    /// Lines that start with the client's prefix and end with its success suffix.
    pub ok: usize,
}

/// Runs `python -c script arguments...` in `namespace` (killed after `limit`) and counts the
/// lines of its report that start with `prefix` and end with `suffix`.
pub fn run_client(
    namespace: &TapNamespace,
    python: &str,
    script: &str,
    arguments: &[String],
    limit: Duration,
    (prefix, suffix): (&str, &str),
) -> ClientRun {
    let output = run_bounded(
        namespace
            .command(python)
            .args(["-c", script])
            .args(arguments),
        limit,
    );
    let report = text(&output);
    let ok = report
        .lines()
        .filter(|l| l.starts_with(prefix) && l.ends_with(suffix))
        .count();
    ClientRun { output, report, ok }
}

/// The source ports of `flows` (port, queue), comma-separated.
fn port_list(flows: &[(u16, u16)]) -> String {
    flows
        .iter()
        .map(|(port, _)| port.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// [`UDP_ECHO_CLIENT`] over `flows` (port, queue), `per_flow` datagrams each; `ok` counts the
/// flows echoed in full.
pub fn udp_echo(
    namespace: &TapNamespace,
    python: &str,
    flows: &[(u16, u16)],
    per_flow: u32,
    limit: Duration,
) -> ClientRun {
    let arguments = [
        GUEST_ADDRESS.to_string(),
        port_list(flows),
        per_flow.to_string(),
    ];
    let suffix = format!(" {per_flow}/{per_flow}");
    run_client(
        namespace,
        python,
        UDP_ECHO_CLIENT,
        &arguments,
        limit,
        ("udp ", &suffix),
    )
}

/// [`TCP_ECHO_CLIENT`] over `flows` (port, queue); `ok` counts the connections echoed and
/// closed.
pub fn tcp_echo(
    namespace: &TapNamespace,
    python: &str,
    flows: &[(u16, u16)],
    limit: Duration,
) -> ClientRun {
    let arguments = [GUEST_ADDRESS.to_string(), port_list(flows)];
    run_client(
        namespace,
        python,
        TCP_ECHO_CLIENT,
        &arguments,
        limit,
        ("tcp ", " ok"),
    )
}

/// [`MEMCACHED_CLIENT`] with `plan` (one `PORT:KEY,KEY,...` per connection, see
/// [`memcached_plan`]); `ok` counts the `mc ... ok` lines (one per connection, and `mc cross
/// ok`).
pub fn memcached(
    namespace: &TapNamespace,
    python: &str,
    plan: &[String],
    limit: Duration,
) -> ClientRun {
    let mut arguments = vec![GUEST_ADDRESS.to_string()];
    arguments.extend(plan.iter().cloned());
    run_client(
        namespace,
        python,
        MEMCACHED_CLIENT,
        &arguments,
        limit,
        ("mc ", " ok"),
    )
}

/// A [`MEMCACHED_CLIENT`] plan: for connection `index` of `flows` (port, queue), `per_owner`
/// keys owned by each of `cores` cores (the server's own partition function), the keys named
/// `key(index, owner, candidate)` for the first candidates that land on that owner.
pub fn memcached_plan(
    flows: &[(u16, u16)],
    cores: u16,
    per_owner: usize,
    key: impl Fn(usize, u16, u32) -> String,
) -> Vec<String> {
    flows
        .iter()
        .enumerate()
        .map(|(index, (port, _))| {
            let mut keys = Vec::new();
            for owner in 0..cores {
                let mut candidate = 0u32;
                let mut taken = 0;
                while taken < per_owner {
                    let name = key(index, owner, candidate);
                    if netd::app::memcached::key_owner(name.as_bytes(), cores) == owner {
                        keys.push(name);
                        taken += 1;
                    }
                    candidate += 1;
                    assert!(candidate < 10_000, "no key for owner {owner}");
                }
            }
            format!("{port}:{}", keys.join(","))
        })
        .collect()
}
