//! The machines an experiment measures: Flotilla or the Linux baseline, booted on the same QEMU
//! line (TCG, q35, igb on a tap device in a network namespace made for it, the same cores and
//! memory, `-name ...,debug-threads=on` so vCPU threads can be capped), or a machine already
//! running elsewhere (`--target`).

use super::cgroup::CpuCaps;
use super::ExperimentError;
use crate::linux_guest::{self, LinuxGuest};
use crate::machine::{is_failure_line, Machine, MachineConfig, Network};
use crate::tap::{TapError, TapNamespace, GUEST_ADDRESS, HOST_ADDRESS};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The guest's MAC address (as `MachineConfig::qemu_args` gives it).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// A tap namespace `name` for one guest, with the host's neighbour entry for the guest made
/// permanent (so no ARP retry timer blurs the boot-to-serving time or the first requests).
pub fn guest_namespace(name: &str) -> Result<TapNamespace, TapError> {
    let namespace = TapNamespace::create(name)?;
    namespace.exec(&[
        "ip",
        "neigh",
        "replace",
        GUEST_ADDRESS,
        "lladdr",
        GUEST_MAC,
        "dev",
        &namespace.tap,
        "nud",
        "permanent",
    ])?;
    Ok(namespace)
}

/// Why a guest never answered the probe.
#[derive(Debug)]
pub enum NotServing {
    /// The check reported a failure (a fault or panic line of the console).
    Failed(String),
    /// No echo within the limit.
    TimedOut,
}

/// Probes the guest's UDP echo port with `probe` (a socket connected to it) every 2 ms from
/// QEMU's start `started` until an echo of a probe comes back, at most `limit`; every 200 tries
/// `failure` may say the guest failed. Returns the time from `started` to the first echo.
pub fn wait_for_echo(
    probe: &UdpSocket,
    started: Instant,
    limit: Duration,
    mut failure: impl FnMut() -> Option<String>,
) -> Result<Duration, NotServing> {
    let _ = probe.set_read_timeout(Some(Duration::from_millis(2)));
    let mut buffer = [0u8; 256];
    let mut tries = 0u64;
    while started.elapsed() < limit {
        tries += 1;
        // Sends fail while the tap has no carrier (QEMU not yet attached): keep probing.
        let _ = probe.send(format!("probe {tries:<58}").as_bytes());
        if let Ok(n) = probe.recv(&mut buffer) {
            if buffer[..n].starts_with(b"probe ") {
                return Ok(started.elapsed());
            }
        }
        if tries.is_multiple_of(200) {
            if let Some(line) = failure() {
                return Err(NotServing::Failed(line));
            }
        }
    }
    Err(NotServing::TimedOut)
}

/// Which operating system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// This project's kernel.
    Flotilla,
    /// Debian's Linux 6.1 with echod and memcached.
    Linux,
}

impl System {
    /// The `system` column's value.
    pub fn name(self) -> &'static str {
        match self {
            System::Flotilla => "flotilla",
            System::Linux => "linux",
        }
    }
}

/// Where the load goes.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// The generator's source address.
    pub source: Ipv4Addr,
    /// The namespace the generator joins (`None`: this machine's own network).
    pub netns: Option<PathBuf>,
}

impl Endpoint {
    /// `address:port`.
    pub fn at(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, port)
    }
}

/// A guest this experiment booted (stopped, its namespace and caps removed, on drop).
pub struct Guest {
    /// Which system.
    pub system: System,
    /// Cores.
    pub cores: u32,
    /// Where to send load.
    pub endpoint: Endpoint,
    /// QEMU's command line.
    pub qemu_command: String,
    /// Kernel command line.
    pub cmdline: String,
    /// QEMU start → first UDP echo answered.
    pub boot_to_serving: Duration,
    caps: Option<CpuCaps>,
    machine: Machine,
    namespace: TapNamespace,
}

fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "fl-exp-{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Guest {
    /// Boots `system` with `cores` cores (Flotilla: `extra_cmdline` appended to its command
    /// line) and waits until it answers UDP echo, at most `limit`.
    pub fn boot(
        system: System,
        cores: u32,
        extra_cmdline: &str,
        kernel: &std::path::Path,
        linux: Option<&LinuxGuest>,
        limit: Duration,
    ) -> Result<Self, ExperimentError> {
        let name = unique_name(system.name());
        let namespace =
            guest_namespace(&name).map_err(|e| ExperimentError::Setup(e.to_string()))?;
        let (mut config, cmdline) = match system {
            System::Flotilla => {
                let cmdline = format!("log=warn urpc=off {extra_cmdline}")
                    .trim_end()
                    .to_string();
                (
                    MachineConfig::kernel(kernel.to_path_buf(), cores, &cmdline),
                    cmdline,
                )
            }
            System::Linux => {
                let guest = linux.ok_or_else(|| {
                    ExperimentError::Setup("the Linux guest was not prepared".into())
                })?;
                let mut config =
                    MachineConfig::kernel(guest.kernel.clone(), cores, linux_guest::CMDLINE);
                config.extra_args = guest.extra_args();
                (config, linux_guest::CMDLINE.to_string())
            }
        };
        config
            .extra_args
            .extend(["-name".to_string(), format!("{name},debug-threads=on")]);
        config.network = Network::Tap {
            namespace: namespace.name.clone(),
            tap: namespace.tap.clone(),
        };
        let qemu_command = format!(
            "ip netns exec {} qemu-system-x86_64 {}",
            namespace.name,
            config.qemu_args().join(" ")
        );
        let netns = PathBuf::from(format!("/run/netns/{}", namespace.name));
        let probe = probe_socket(&netns)?;
        let machine =
            Machine::start(&config, false).map_err(|e| ExperimentError::Setup(e.to_string()))?;
        let started = machine.started;
        let boot_to_serving = wait_serving(&probe, started, limit, &machine)?;
        Ok(Self {
            system,
            cores,
            endpoint: Endpoint {
                address: GUEST_ADDRESS.parse().expect("a valid address constant"),
                source: HOST_ADDRESS.parse().expect("a valid address constant"),
                netns: Some(netns),
            },
            qemu_command,
            cmdline,
            boot_to_serving,
            caps: None,
            machine,
            namespace,
        })
    }

    /// Caps each vCPU thread at `share` of one host core (replacing an earlier cap).
    pub fn cap_per_vcpu(&mut self, share: f64, tag: &str) -> Result<String, ExperimentError> {
        self.caps = None;
        let caps = CpuCaps::per_vcpu(
            self.machine.pid(),
            share,
            &format!("{tag}-{}", unique_name("cap")),
        )
        .map_err(|e| ExperimentError::Setup(e.to_string()))?;
        let description = caps.description.clone();
        self.caps = Some(caps);
        Ok(description)
    }

    /// The console so far.
    pub fn console(&self) -> Vec<String> {
        self.machine.console()
    }

    /// Console lines saying the kernel ignored an option (Flotilla: `'KEY=VALUE': unknown
    /// option, ignored`).
    pub fn ignored_options(&self) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|line| line.contains("unknown option") || line.contains("bad value"))
            .collect()
    }

    /// A counter of the host's tap device (`/sys/class/net/tap0/statistics/NAME`, read inside
    /// the guest's namespace): `tx_dropped` counts frames for the guest that QEMU did not take
    /// (its igb model stops reading the tap while every receive ring is full).
    pub fn tap_counter(&self, name: &str) -> Option<u64> {
        let path = format!("/sys/class/net/{}/statistics/{name}", self.namespace.tap);
        let output = self.namespace.exec(&["cat", &path]).ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    }

    /// The monitors' failure verdicts the console printed (`monitor: core A saw core B fail at
    /// T ms`): in an experiment every core is alive, so each is a false verdict.
    pub fn failure_verdicts(&self) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|line| line.contains(" saw core ") && line.contains(" fail"))
            .collect()
    }

    /// A failure the console reported (fault, panic), if any.
    pub fn failure(&self) -> Option<String> {
        self.console()
            .into_iter()
            .find(|line| is_failure_line(line) || line.contains("Kernel panic"))
    }
}

/// A UDP socket in namespace `netns` connected to the guest's echo port.
fn probe_socket(netns: &std::path::Path) -> Result<UdpSocket, ExperimentError> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<UdpSocket, ExperimentError> {
        loadgen::sys::join_network_namespace(&netns)
            .map_err(|e| ExperimentError::Setup(format!("joining {}: {e}", netns.display())))?;
        let socket = UdpSocket::bind((HOST_ADDRESS, 0))
            .map_err(|e| ExperimentError::Setup(format!("probe socket: {e}")))?;
        socket
            .connect((GUEST_ADDRESS, 7))
            .map_err(|e| ExperimentError::Setup(format!("probe socket: {e}")))?;
        Ok(socket)
    })
    .join()
    .map_err(|_| ExperimentError::Setup("the probe thread panicked".into()))?
}

fn wait_serving(
    probe: &UdpSocket,
    started: Instant,
    limit: Duration,
    machine: &Machine,
) -> Result<Duration, ExperimentError> {
    let failure = || {
        machine
            .console()
            .into_iter()
            .find(|l| is_failure_line(l) || l.contains("Kernel panic"))
    };
    wait_for_echo(probe, started, limit, failure).map_err(|error| {
        let console = machine.console().join("\n");
        ExperimentError::Guest(match error {
            NotServing::Failed(line) => format!("boot failed: {line}\n{console}"),
            NotServing::TimedOut => {
                format!("no UDP echo within {limit:?} of QEMU's start; console:\n{console}")
            }
        })
    })
}

/// An endpoint for `--target ADDR`: the source address is the one this machine uses to reach
/// it; `netns` (`--netns NAME`) makes the generator run inside that namespace.
pub fn remote_endpoint(
    address: Ipv4Addr,
    netns: Option<&str>,
) -> Result<Endpoint, ExperimentError> {
    let netns = netns.map(|name| PathBuf::from(format!("/run/netns/{name}")));
    let inner = netns.clone();
    let source = std::thread::spawn(move || -> Result<Ipv4Addr, String> {
        if let Some(path) = &inner {
            loadgen::sys::join_network_namespace(path)
                .map_err(|e| format!("joining {}: {e}", path.display()))?;
        }
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket
            .connect((address, 7))
            .map_err(|e| format!("no route to {address}: {e}"))?;
        match socket.local_addr().map_err(|e| e.to_string())? {
            std::net::SocketAddr::V4(local) => Ok(*local.ip()),
            std::net::SocketAddr::V6(_) => Err("an IPv6 source for an IPv4 target".into()),
        }
    })
    .join()
    .map_err(|_| ExperimentError::Setup("the route thread panicked".into()))?
    .map_err(ExperimentError::Setup)?;
    Ok(Endpoint {
        address,
        source,
        netns,
    })
}
