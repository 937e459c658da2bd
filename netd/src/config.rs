//! Per-core network configuration, and the kernel command-line parsers for `ip=`, `gw=`,
//! `memcached.mem=` and netd's own `netd.*` options (the data-plane discipline and its baselines,
//! TCP's limits, budget and timers, the ICMP error rate).

/// Number of flow groups (RSS redirection-table entries), as the NIC API defines them.
pub const FLOW_GROUPS: usize = drivers::nic::FLOW_GROUPS;

/// Index of a core (and of its NIC queue pair: queue `i` belongs to core `i`).
pub type CoreId = u16;

/// An IPv4 address with its prefix length, e.g. `10.0.2.15/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address, network byte order.
    pub address: [u8; 4],
    /// Prefix length in bits (0..=32).
    pub prefix: u8,
}

/// An IPv4 address as people write it (`10.0.2.15`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dotted(pub [u8; 4]);

impl core::fmt::Display for Dotted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A MAC address as people write it (`52:54:00:12:34:56`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl core::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl core::fmt::Display for Ipv4Cidr {
    /// `10.0.2.15/24`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", Dotted(self.address), self.prefix)
    }
}

impl core::fmt::Display for Addresses {
    /// `10.0.2.15/24 via 10.0.2.2`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} via {}", self.ip, Dotted(self.gateway))
    }
}

/// The addresses every core presents: one MAC, one IPv4 address, one gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// Our IPv4 address and prefix.
    pub ip: Ipv4Cidr,
    /// Default gateway.
    pub gateway: [u8; 4],
}

impl Default for Addresses {
    /// QEMU user networking's defaults: 10.0.2.15/24 via 10.0.2.2.
    fn default() -> Self {
        Self {
            ip: Ipv4Cidr {
                address: [10, 0, 2, 15],
                prefix: 24,
            },
            gateway: [10, 0, 2, 2],
        }
    }
}

/// The machine's wall clock: `unix_seconds` was the Unix time at the stack's instant `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Unix time (seconds) at `at`.
    pub unix_seconds: u64,
    /// The moment of the stack's clock (the `now` the kernel passes to netd) it was read at.
    pub at: smoltcp::time::Instant,
}

impl WallClock {
    /// The Unix time (seconds) at the stack's instant `now`.
    pub fn unix_seconds_at(&self, now: smoltcp::time::Instant) -> u64 {
        let elapsed = now.total_millis() - self.at.total_millis();
        if elapsed >= 0 {
            self.unix_seconds + (elapsed / 1000) as u64
        } else {
            self.unix_seconds
                .saturating_sub(elapsed.unsigned_abs().div_ceil(1000))
        }
    }
}

/// How a core's data plane takes frames from its RX ring and processes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Discipline {
    /// The default: polling (interrupts only start it) with Lazy Receiver Processing: the
    /// classifier puts each frame on its path's bounded queue (or drops it there when the queue
    /// is full, before any checksum or protocol work), and paths run by deficit of cycles charged,
    /// each within a per-turn budget; receive work per turn is bounded relative to path work.
    #[default]
    Lrp,
    /// Baseline `netd.lrp=off`: polling, but one shared FIFO per core in front of
    /// demultiplexing; a full FIFO drops whatever arrives, whatever its destination, and frames
    /// are processed to completion in arrival order.
    SharedFifo,
    /// Baseline `netd.mode=interrupt`: the interrupt-driven design the livelock papers start
    /// from, emulated inside the poll step: each turn drains the RX ring doing protocol
    /// processing up to the sockets (unbounded but for a safety cap), and applications run only
    /// in a turn that found the ring empty.
    Interrupt,
}

/// How datagram services are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UdpPath {
    /// In place in the received buffer (the UDP fast path), the default.
    #[default]
    Fast,
    /// Through a smoltcp UDP socket (`netd.udp=smoltcp`; always so under `netd.mode=interrupt`).
    Socket,
}

/// TCP's limits, memory and timers (`netd.tcp_*` on the command line), per core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// `netd.tcp_max_conn=N`: most TCP connections on one core, over all its ports (half-open
    /// ones and those in TIME-WAIT included). A SYN beyond it is refused with a reset; below it
    /// a SYN is never refused for want of memory (the budget keeps the smallest buffers of every
    /// connection up to the limit in reserve).
    pub max_connections: u32,
    /// `netd.tcp_mem=MB`: the core's budget for TCP socket buffers and connection state
    /// (`None`: sized from the heap, see [`NetConfig::tcp_budget_bytes`]).
    pub memory_mb: Option<u32>,
    /// `netd.tcp_buffer_kb=KB`: the largest receive (and send) buffer of one connection, which
    /// bounds its window (default 256 KiB: window scaling by 3).
    pub max_buffer_kb: u32,
    /// `netd.tcp_backlog=N`: most half-open connections (SYN received, handshake not done) per
    /// port per core; a SYN beyond it evicts the oldest if that one has waited
    /// [`crate::runner::tcp::SYN_EVICTION_AGE`], and is dropped unanswered otherwise (the
    /// client retransmits it).
    pub backlog: u32,
    /// `netd.tcp_idle_s=S`: a connection that makes no progress (no data received, none of ours
    /// acknowledged) for S seconds is reset and freed; 0 never.
    pub idle_seconds: u32,
    /// `netd.tcp_keepalive_s=S`: an idle connection sends a keep-alive probe every S seconds, and
    /// one whose peer stays silent for four intervals is dropped; 0 sends none.
    pub keepalive_seconds: u32,
    /// `netd.tcp_coalesce_us=N`: a connection whose peer streams full-sized segments holds its
    /// output (and ACKs) up to N µs, so it leaves in large segments; 0 never holds.
    pub coalesce_us: u32,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            memory_mb: None,
            max_buffer_kb: 256,
            backlog: 1024,
            idle_seconds: 300,
            keepalive_seconds: 60,
            coalesce_us: 500,
        }
    }
}

/// The default of `netd.rx_hold_us`.
pub const DEFAULT_RX_HOLD_US: u32 = 50;

/// netd's options from the kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// `netd.mode=poll|interrupt` and `netd.lrp=on|off`.
    pub discipline: Discipline,
    /// `netd.udp=fast|smoltcp`.
    pub udp: UdpPath,
    /// `netd.offload=on|off`: use the NIC's transmit checksum offload when it has one (default on).
    pub tx_offload: bool,
    /// `netd.icmp_rate=N`: ICMP errors (port unreachable) one core sends per second at most, in
    /// bursts of up to a twentieth of that (at least 1); 0 sends none. Default 1000.
    pub icmp_rate: u32,
    /// `netd.tcp_*`: TCP's limits, budget and timers.
    pub tcp: TcpOptions,
    /// `netd.rx_hold_us=N`: receive moderation for bulk TCP (see
    /// [`crate::PollOutcome::hold_until`]); 0 off.
    pub rx_hold_us: u32,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            discipline: Discipline::Lrp,
            udp: UdpPath::Fast,
            tx_offload: true,
            icmp_rate: 1000,
            tcp: TcpOptions::default(),
            rx_hold_us: DEFAULT_RX_HOLD_US,
        }
    }
}

/// The scheduler's budgets, in cycles of the core's cycle counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Credit a path with work gets each turn (deficit round robin over cycles charged); a run
    /// stops when the path's credit is spent. Credit does not bank beyond one quantum.
    pub quantum_cycles: u64,
    /// Paths stop being started in a turn once the turn has used this many cycles; the rest keep
    /// their credit and go first next turn.
    pub turn_cycles: u64,
    /// Most frames one path takes from its queue in one turn.
    pub path_frames_per_turn: usize,
    /// Most frames taken from the RX ring in one turn.
    pub rx_frames_per_turn: usize,
    /// While paths have backlog, receiving may use at most this share (percent) of a turn's
    /// cycles, measured over the previous turn (Mogul and Ramakrishnan's quota).
    pub rx_share_percent: u64,
}

impl SchedulerConfig {
    /// Budgets for a counter running at `cycles_per_microsecond`: a 10 µs quantum, turns of at
    /// most about 100 µs of path work, 128 frames per path and 128 received frames per turn (a
    /// path's queue holds a whole turn's receive, and one path can take all of it), and receive
    /// work capped at 20 % of a turn while paths are behind.
    pub fn for_cycles_per_microsecond(cycles_per_microsecond: u64) -> Self {
        let per_microsecond = cycles_per_microsecond.max(1);
        Self {
            quantum_cycles: 10 * per_microsecond,
            turn_cycles: 100 * per_microsecond,
            path_frames_per_turn: 128,
            rx_frames_per_turn: 128,
            rx_share_percent: 20,
        }
    }
}

/// The heap the applications size themselves by when the heap is large enough to give TCP its
/// own budget beside it ([`NetConfig::tcp_budget_bytes`]): memcached's item memory is half of it.
pub const APPLICATION_HEAP: usize = 32 << 20;

/// Configuration of one core's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address all cores present (the NIC's).
    pub mac: [u8; 6],
    /// IPv4 address, prefix and gateway (the same on all cores).
    pub addresses: Addresses,
    /// This core.
    pub core: CoreId,
    /// Number of cores running a stack.
    pub core_count: u16,
    /// Machine name shown by the HTTP page.
    pub hostname: &'static str,
    /// Seed for smoltcp's TCP initial sequence numbers and ephemeral ports; mixed with the core id.
    pub random_seed: u64,
    /// The wall clock, when the kernel knows it (RTC or `time=`); without it, applications count
    /// Unix time from 0 at boot.
    pub wall_clock: Option<WallClock>,
    /// Bytes of this core's heap, which applications size their memory by (0: unknown).
    pub heap_bytes: usize,
    /// `memcached.mem=MB`: memcached's item memory over all cores (None: half of each heap).
    pub memcached_memory_mb: Option<u32>,
    /// The data-plane discipline and its options (`netd.*` on the command line).
    pub options: NetOptions,
    /// The scheduler's budgets.
    pub scheduler: SchedulerConfig,
}

impl NetConfig {
    /// The core's budget for TCP (socket buffers and connection state), in bytes:
    /// `netd.tcp_mem=MB` if given; else, with a heap of 64 MiB or more, what it holds beyond
    /// [`APPLICATION_HEAP`]; with a smaller heap a quarter of it; 64 MiB when the heap's size is
    /// unknown (host tests).
    pub fn tcp_budget_bytes(&self) -> usize {
        if let Some(mb) = self.options.tcp.memory_mb {
            return (mb as usize) << 20;
        }
        match self.heap_bytes {
            0 => 64 << 20,
            heap if heap >= 2 * APPLICATION_HEAP => heap - APPLICATION_HEAP,
            heap => heap / 4,
        }
    }

    /// The heap the applications size themselves by (memcached's item memory and connection
    /// budget): the heap less TCP's budget when that leaves at least [`APPLICATION_HEAP`];
    /// otherwise the whole heap (TCP's budget is then only a bound on what TCP may take, and an
    /// allocation that fails is refused, never fatal). 0 when the heap's size is unknown.
    pub fn application_heap_bytes(&self) -> usize {
        let rest = self.heap_bytes.saturating_sub(self.tcp_budget_bytes());
        if rest >= APPLICATION_HEAP {
            rest
        } else {
            self.heap_bytes
        }
    }

    /// A configuration with QEMU user-networking addresses for `core` of `core_count`, the
    /// default discipline, and budgets for a 1 GHz cycle counter (the kernel sets its own).
    pub fn new(mac: [u8; 6], core: CoreId, core_count: u16) -> Self {
        Self {
            mac,
            addresses: Addresses::default(),
            core,
            core_count,
            hostname: "flotilla",
            random_seed: 0x5eed_f10f_117a,
            wall_clock: None,
            heap_bytes: 0,
            memcached_memory_mb: None,
            options: NetOptions::default(),
            scheduler: SchedulerConfig::for_cycles_per_microsecond(1000),
        }
    }
}

/// Why a command-line option could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandLineError {
    /// `ip=` had no `/PREFIX` or the prefix was not 0..=32.
    BadPrefix,
    /// An address was not four dot-separated numbers 0..=255.
    BadAddress,
    /// `memcached.mem=` was not a number of megabytes from 1 to 1048576.
    BadMemcachedMemory,
}

impl core::fmt::Display for CommandLineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CommandLineError::BadPrefix => "ip= needs ADDRESS/PREFIX with a prefix of 0 to 32",
            CommandLineError::BadAddress => {
                "an address is not four numbers 0-255 separated by dots"
            }
            CommandLineError::BadMemcachedMemory => {
                "memcached.mem= needs a number of megabytes from 1 to 1048576"
            }
        })
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(text: &str) -> Result<[u8; 4], CommandLineError> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or(CommandLineError::BadAddress)?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CommandLineError::BadAddress);
        }
        *byte = part.parse().map_err(|_| CommandLineError::BadAddress)?;
    }
    if parts.next().is_some() {
        return Err(CommandLineError::BadAddress);
    }
    Ok(out)
}

/// Reads `ip=ADDR/PREFIX` and `gw=ADDR` from a kernel command line (space-separated options;
/// other options are ignored). Missing options keep the defaults (10.0.2.15/24 via 10.0.2.2).
pub fn parse_command_line(line: &str) -> Result<Addresses, CommandLineError> {
    let mut addresses = Addresses::default();
    for option in line.split_ascii_whitespace() {
        if let Some(value) = option.strip_prefix("ip=") {
            let (address, prefix) = value.split_once('/').ok_or(CommandLineError::BadPrefix)?;
            let prefix: u8 = prefix.parse().map_err(|_| CommandLineError::BadPrefix)?;
            if prefix > 32 {
                return Err(CommandLineError::BadPrefix);
            }
            addresses.ip = Ipv4Cidr {
                address: parse_ipv4(address)?,
                prefix,
            };
        } else if let Some(value) = option.strip_prefix("gw=") {
            addresses.gateway = parse_ipv4(value)?;
        }
    }
    Ok(addresses)
}

/// Reads `memcached.mem=MB` (memcached's item memory over all cores, like memcached's `-m`) from
/// a kernel command line; `None` when absent.
pub fn parse_memcached_memory(line: &str) -> Result<Option<u32>, CommandLineError> {
    let mut memory = None;
    for option in line.split_ascii_whitespace() {
        if let Some(value) = option.strip_prefix("memcached.mem=") {
            let megabytes = value
                .parse::<u32>()
                .ok()
                .filter(|mb| (1..=1 << 20).contains(mb))
                .ok_or(CommandLineError::BadMemcachedMemory)?;
            memory = Some(megabytes);
        }
    }
    Ok(memory)
}

/// The command-line keys starting with `netd.` that belong to the kernel, not to netd.
pub const KERNEL_NETD_KEYS: &[&str] = &["netd.report", "netd.move"];

/// What was wrong with a `netd.*` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionProblem {
    /// netd has no option of this name.
    Unknown,
    /// The value is not one the option takes.
    BadValue,
}

/// A `netd.*` option netd could not use; the default stays in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionError<'a> {
    /// The option's key.
    pub key: &'a str,
    /// Its value.
    pub value: &'a str,
    /// What was wrong.
    pub problem: OptionProblem,
}

impl core::fmt::Display for OptionError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let expected = match self.key {
            "netd.mode" => "poll or interrupt",
            "netd.lrp" | "netd.offload" => "on or off",
            "netd.udp" => "fast or smoltcp",
            "netd.icmp_rate" => "ICMP errors per second, 0 to 1000000",
            "netd.rx_hold_us" => "microseconds, 0 (off) to 10000",
            "netd.tcp_max_conn" => "connections per core, 1 to 1000000",
            "netd.tcp_mem" => "megabytes per core, 1 to 65536",
            "netd.tcp_buffer_kb" => "kilobytes, 4 to 16384",
            "netd.tcp_backlog" => "half-open connections per port, 1 to 1000000",
            "netd.tcp_idle_s" | "netd.tcp_keepalive_s" => "seconds, 0 (off) to 86400",
            "netd.tcp_coalesce_us" => "microseconds, 0 (off) to 10000",
            _ => "",
        };
        match self.problem {
            OptionProblem::Unknown => write!(
                f,
                "unknown option {}={} (netd knows {})",
                self.key,
                self.value,
                KNOWN_OPTIONS.join(", ")
            ),
            OptionProblem::BadValue => write!(
                f,
                "bad value for {}: {:?} (expected {expected})",
                self.key, self.value
            ),
        }
    }
}

/// The `netd.*` options netd reads.
pub const KNOWN_OPTIONS: &[&str] = &[
    "netd.mode",
    "netd.lrp",
    "netd.udp",
    "netd.offload",
    "netd.icmp_rate",
    "netd.rx_hold_us",
    "netd.tcp_max_conn",
    "netd.tcp_mem",
    "netd.tcp_buffer_kb",
    "netd.tcp_backlog",
    "netd.tcp_idle_s",
    "netd.tcp_keepalive_s",
    "netd.tcp_coalesce_us",
];

/// A decimal number within `range`.
fn number_in(value: &str, range: core::ops::RangeInclusive<u32>) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|n| range.contains(n))
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// Reads netd's options from a kernel command line: `netd.mode=poll|interrupt` (default poll),
/// `netd.lrp=on|off` (default on; off selects the shared-FIFO baseline; ignored under
/// `netd.mode=interrupt`), `netd.udp=fast|smoltcp`, `netd.offload=on|off`, `netd.icmp_rate=N`
/// and TCP's `netd.tcp_max_conn=N`, `netd.tcp_mem=MB`, `netd.tcp_buffer_kb=KB`,
/// `netd.tcp_backlog=N`, `netd.tcp_idle_s=S`, `netd.tcp_keepalive_s=S` ([`TcpOptions`]). Other words,
/// including the kernel's own [`KERNEL_NETD_KEYS`], are ignored. Every unknown `netd.` key or
/// bad value goes to `report` and leaves the default in force.
pub fn parse_options<'a>(line: &'a str, mut report: impl FnMut(OptionError<'a>)) -> NetOptions {
    let mut options = NetOptions::default();
    let mut interrupt = false;
    let mut lrp = true;
    for word in line.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        if !key.starts_with("netd.") || KERNEL_NETD_KEYS.contains(&key) {
            continue;
        }
        let ok = match key {
            "netd.mode" => match value {
                "poll" => {
                    interrupt = false;
                    true
                }
                "interrupt" => {
                    interrupt = true;
                    true
                }
                _ => false,
            },
            "netd.lrp" => on_off(value).map(|on| lrp = on).is_some(),
            "netd.udp" => match value {
                "fast" => {
                    options.udp = UdpPath::Fast;
                    true
                }
                "smoltcp" => {
                    options.udp = UdpPath::Socket;
                    true
                }
                _ => false,
            },
            "netd.offload" => on_off(value).map(|on| options.tx_offload = on).is_some(),
            "netd.icmp_rate" => number_in(value, 0..=1_000_000)
                .map(|n| options.icmp_rate = n)
                .is_some(),
            "netd.rx_hold_us" => number_in(value, 0..=10_000)
                .map(|n| options.rx_hold_us = n)
                .is_some(),
            "netd.tcp_max_conn" => number_in(value, 1..=1_000_000)
                .map(|n| options.tcp.max_connections = n)
                .is_some(),
            "netd.tcp_mem" => number_in(value, 1..=65536)
                .map(|n| options.tcp.memory_mb = Some(n))
                .is_some(),
            "netd.tcp_buffer_kb" => number_in(value, 4..=16384)
                .map(|n| options.tcp.max_buffer_kb = n)
                .is_some(),
            "netd.tcp_backlog" => number_in(value, 1..=1_000_000)
                .map(|n| options.tcp.backlog = n)
                .is_some(),
            "netd.tcp_idle_s" => number_in(value, 0..=86400)
                .map(|n| options.tcp.idle_seconds = n)
                .is_some(),
            "netd.tcp_keepalive_s" => number_in(value, 0..=86400)
                .map(|n| options.tcp.keepalive_seconds = n)
                .is_some(),
            "netd.tcp_coalesce_us" => number_in(value, 0..=10_000)
                .map(|n| options.tcp.coalesce_us = n)
                .is_some(),
            _ => {
                report(OptionError {
                    key,
                    value,
                    problem: OptionProblem::Unknown,
                });
                continue;
            }
        };
        if !ok {
            report(OptionError {
                key,
                value,
                problem: OptionProblem::BadValue,
            });
        }
    }
    options.discipline = match (interrupt, lrp) {
        (true, _) => Discipline::Interrupt,
        (false, true) => Discipline::Lrp,
        (false, false) => Discipline::SharedFifo,
    };
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcached_memory_and_the_wall_clock() {
        assert_eq!(parse_memcached_memory("ip=1.2.3.4/8"), Ok(None));
        assert_eq!(parse_memcached_memory("memcached.mem=64 x=1"), Ok(Some(64)));
        assert_eq!(
            parse_memcached_memory("memcached.mem=0"),
            Err(CommandLineError::BadMemcachedMemory)
        );
        assert_eq!(
            parse_memcached_memory("memcached.mem=lots"),
            Err(CommandLineError::BadMemcachedMemory)
        );
        let clock = WallClock {
            unix_seconds: 1_800_000_000,
            at: smoltcp::time::Instant::from_millis(5_000),
        };
        let at = smoltcp::time::Instant::from_millis;
        assert_eq!(clock.unix_seconds_at(at(5_999)), 1_800_000_000);
        assert_eq!(clock.unix_seconds_at(at(7_000)), 1_800_000_002);
        assert_eq!(clock.unix_seconds_at(at(4_500)), 1_799_999_999);
    }

    #[test]
    fn netd_options_parse_and_bad_ones_are_named() {
        let none = |e: OptionError<'_>| panic!("{e}");
        assert_eq!(parse_options("", none), NetOptions::default());
        assert_eq!(
            parse_options("netd.report=100 netd.move=1:2@3 ip=1.2.3.4/8", none),
            NetOptions::default()
        );
        let interrupt = parse_options("netd.mode=interrupt netd.udp=fast", none);
        assert_eq!(interrupt.discipline, Discipline::Interrupt);
        let fifo = parse_options("netd.lrp=off netd.offload=off netd.udp=smoltcp", none);
        assert_eq!(
            fifo,
            NetOptions {
                discipline: Discipline::SharedFifo,
                udp: UdpPath::Socket,
                tx_offload: false,
                ..NetOptions::default()
            }
        );
        let mut errors = std::vec::Vec::new();
        let options = parse_options(
            "netd.mode=fast netd.lrp=maybe netd.colour=red netd.udp",
            |e| errors.push(e),
        );
        assert_eq!(options, NetOptions::default());
        let named: std::vec::Vec<_> = errors.iter().map(|e| (e.key, e.problem)).collect();
        assert_eq!(
            named,
            [
                ("netd.mode", OptionProblem::BadValue),
                ("netd.lrp", OptionProblem::BadValue),
                ("netd.colour", OptionProblem::Unknown),
                ("netd.udp", OptionProblem::BadValue),
            ]
        );
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            errors[0].to_string(),
            "bad value for netd.mode: \"fast\" (expected poll or interrupt)"
        );
        assert!(errors[2]
            .to_string()
            .contains("unknown option netd.colour=red"));
    }

    #[test]
    fn tcp_options_parse_and_bad_ones_are_named() {
        let none = |e: OptionError<'_>| panic!("{e}");
        let options = parse_options(
            "netd.tcp_max_conn=5000 netd.tcp_mem=80 netd.tcp_buffer_kb=64 netd.tcp_backlog=32 \
             netd.tcp_idle_s=0 netd.tcp_keepalive_s=15 netd.icmp_rate=0",
            none,
        );
        assert_eq!(
            options.tcp,
            TcpOptions {
                max_connections: 5000,
                memory_mb: Some(80),
                max_buffer_kb: 64,
                backlog: 32,
                idle_seconds: 0,
                keepalive_seconds: 15,
                coalesce_us: 500,
            }
        );
        assert_eq!(options.icmp_rate, 0);
        let mut errors = std::vec::Vec::new();
        let options = parse_options(
            "netd.tcp_max_conn=0 netd.tcp_mem=-1 netd.tcp_buffer_kb=2 netd.tcp_idle_s=1e3 \
             netd.tcp_keepalive_s= netd.tcp_maxconn=9",
            |e| errors.push(e),
        );
        assert_eq!(options, NetOptions::default());
        let named: std::vec::Vec<_> = errors.iter().map(|e| (e.key, e.problem)).collect();
        assert_eq!(
            named,
            [
                ("netd.tcp_max_conn", OptionProblem::BadValue),
                ("netd.tcp_mem", OptionProblem::BadValue),
                ("netd.tcp_buffer_kb", OptionProblem::BadValue),
                ("netd.tcp_idle_s", OptionProblem::BadValue),
                ("netd.tcp_keepalive_s", OptionProblem::BadValue),
                ("netd.tcp_maxconn", OptionProblem::Unknown),
            ]
        );
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            errors[0].to_string(),
            "bad value for netd.tcp_max_conn: \"0\" (expected connections per core, 1 to 1000000)"
        );
        assert!(errors[5].to_string().contains("netd.tcp_keepalive_s"));
    }

    #[test]
    fn tcp_budget_comes_from_the_heap_and_leaves_the_applications_theirs() {
        let mut config = NetConfig::new([2, 0, 0, 0, 0, 1], 0, 1);
        assert_eq!(config.tcp_budget_bytes(), 64 << 20);
        assert_eq!(config.application_heap_bytes(), 0);
        config.heap_bytes = 128 << 20;
        assert_eq!(config.tcp_budget_bytes(), 96 << 20);
        assert_eq!(config.application_heap_bytes(), 32 << 20);
        config.options.tcp.memory_mb = Some(40);
        assert_eq!(config.tcp_budget_bytes(), 40 << 20);
        assert_eq!(config.application_heap_bytes(), 88 << 20);
        config.heap_bytes = 32 << 20;
        assert_eq!(config.application_heap_bytes(), 32 << 20);
        config.options.tcp.memory_mb = None;
        assert_eq!(config.tcp_budget_bytes(), 8 << 20);
        assert_eq!(config.application_heap_bytes(), 32 << 20);
    }

    #[test]
    fn defaults_when_absent() {
        assert_eq!(
            parse_command_line("console=ttyS0 quiet"),
            Ok(Addresses::default())
        );
        assert_eq!(parse_command_line(""), Ok(Addresses::default()));
    }

    #[test]
    fn addresses_print_as_people_write_them() {
        extern crate std;
        use std::string::ToString;
        let addresses = parse_command_line("ip=192.168.7.2/16 gw=192.168.0.1").unwrap();
        assert_eq!(addresses.to_string(), "192.168.7.2/16 via 192.168.0.1");
        assert_eq!(Addresses::default().ip.to_string(), "10.0.2.15/24");
        assert_eq!(
            MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0xa6]).to_string(),
            "52:54:00:12:34:a6"
        );
    }

    #[test]
    fn parses_ip_and_gateway() {
        let a = parse_command_line("x=1 ip=192.168.7.2/16 gw=192.168.0.1").unwrap();
        assert_eq!(a.ip.address, [192, 168, 7, 2]);
        assert_eq!(a.ip.prefix, 16);
        assert_eq!(a.gateway, [192, 168, 0, 1]);
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            parse_command_line("ip=10.0.0.1"),
            Err(CommandLineError::BadPrefix)
        );
        assert_eq!(
            parse_command_line("ip=10.0.0.1/33"),
            Err(CommandLineError::BadPrefix)
        );
        assert_eq!(
            parse_command_line("ip=10.0.0/8"),
            Err(CommandLineError::BadAddress)
        );
        assert_eq!(
            parse_command_line("gw=10.0.0.256"),
            Err(CommandLineError::BadAddress)
        );
        assert_eq!(
            parse_command_line("gw=10.0.0.1.2"),
            Err(CommandLineError::BadAddress)
        );
        assert_eq!(
            parse_command_line("gw=+1.0.0.1"),
            Err(CommandLineError::BadAddress)
        );
    }
}
