//! Per-core network configuration and the kernel command-line parser for `ip=`, `gw=` and
//! `memcached.mem=`.

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
}

impl NetConfig {
    /// A configuration with QEMU user-networking addresses for `core` of `core_count`.
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
