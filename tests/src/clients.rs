//! Real clients the tap tests run inside their namespace (Python on std sockets, pymemcache),
//! and `/stats` fetched with curl and summarised per core.

use crate::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
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

/// memcached over many connections with pymemcache: argv = guest, then one `PORT:KEY,KEY,...`
/// per connection. Connection `PORT` is bound to that source port. Prints `mc PORT ok` or
/// `mc PORT FAIL why`, then `mc cross ok` once every connection read every other's keys.
pub const MEMCACHED_CLIENT: &str = r#"
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
"#;

/// Reads `/stats` JSON from stdin; prints one `core=K key=value...` line per core (exit 1 if the
/// JSON does not parse or has no cores).
pub const STATS_SUMMARY: &str = r#"
import json, sys
doc = json.load(sys.stdin)
cores = doc['cores']
if not cores:
    sys.exit('no cores in /stats')
for c in cores:
    paths = {p['path']: p for p in c['paths']}
    def path(name, field):
        return paths.get(name, {}).get(field, 0)
    print('core=%d paths=%d rx_frames=%d tx_frames=%d forwarded_out=%d forwarded_in=%d drops=%d '
          'icmp_packets=%d udp7_packets=%d tcp7_connections=%d tcp80_connections=%d '
          'tcp11211_connections=%d tcp11211_peer_messages=%d' % (
        c['core'], len(c['paths']), c['rx_frames'], c['tx_frames'], c['forwarded_out'], c['forwarded_in'],
        sum(c['drops'].values()), path('icmp', 'packets'), path('udp:7', 'packets'),
        path('tcp:7', 'connections'), path('tcp:80', 'connections'),
        path('tcp:11211', 'connections'), path('tcp:11211', 'peer_messages')))
"#;

/// Fetches `/stats` with curl inside the namespace and summarises it (one map per core).
pub fn fetch_stats(
    namespace: &TapNamespace,
    python: &str,
) -> Result<Vec<BTreeMap<String, String>>, String> {
    let url = format!("http://{GUEST_ADDRESS}/stats");
    let body = run_bounded(
        namespace
            .command("curl")
            .args(["-sS", "--max-time", "10", &url]),
        Duration::from_secs(20),
    );
    if !body.status.success() {
        return Err(format!("curl {url} failed: {}", text(&body)));
    }
    let mut parse = Command::new(python);
    parse.args(["-c", STATS_SUMMARY]).stdin(Stdio::piped());
    let mut child = parse
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&body.stdout).map_err(|e| e.to_string())?;
    }
    let summary = child.wait_with_output().map_err(|e| e.to_string())?;
    if !summary.status.success() {
        return Err(format!(
            "/stats is not the expected JSON ({}):\n{}",
            text(&summary),
            String::from_utf8_lossy(&body.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&summary.stdout)
        .lines()
        .map(fields)
        .collect())
}
