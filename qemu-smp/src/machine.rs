//! Booting a Flotilla machine in QEMU and watching its serial console.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (the default; what tests use).
    Tcg,
    /// KVM (opt-in; unreliable on nested or software-KVM hosts).
    Kvm,
}

/// What the machine boots.
#[derive(Clone, Debug)]
pub enum BootMedium {
    /// QEMU loads the ELF with `-kernel` (PVH) and passes `cmdline`.
    Kernel {
        /// The image.
        path: PathBuf,
        /// The kernel command line.
        cmdline: String,
    },
    /// A GRUB ISO, under SeaBIOS or OVMF.
    Iso {
        /// The ISO.
        path: PathBuf,
        /// OVMF image for UEFI; `None` boots SeaBIOS.
        uefi: Option<PathBuf>,
    },
}

/// The machine's network.
#[derive(Clone, Debug)]
pub enum Network {
    /// No NIC.
    None,
    /// An igb NIC on QEMU user networking with host ports forwarded: `(proto, host, guest)`.
    User(Vec<(&'static str, u16, u16)>),
    /// An igb NIC whose frames travel in UDP datagrams between two loopback ports (no root).
    Datagram {
        /// The port QEMU listens on.
        local: u16,
        /// The port QEMU sends to.
        remote: u16,
    },
    /// An igb NIC on tap device `tap`; QEMU runs inside network namespace `namespace`.
    Tap {
        /// The namespace QEMU runs in.
        namespace: String,
        /// The tap device in it.
        tap: String,
    },
}

/// Everything needed to boot one machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Number of cores.
    pub cores: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// The accelerator.
    pub accel: Accel,
    /// Split cores and memory into this many NUMA nodes (0: no NUMA).
    pub numa_nodes: u32,
    /// What to boot.
    pub medium: BootMedium,
    /// The network.
    pub network: Network,
    /// QEMU's gdb stub (`run --gdb`), if wanted.
    pub gdb: Option<crate::debug::GdbStub>,
    /// Write every frame the NIC sends and receives to this pcap file (`run --pcap`).
    pub pcap: Option<PathBuf>,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
    /// Append `time=UNIX_SECONDS` (the host's clock when QEMU starts) to a kernel command line
    /// that has no `time=` of its own, so the guest's wall clock need not wait for the RTC.
    pub pass_time: bool,
}

impl MachineConfig {
    /// A machine booting `kernel` with `cores` cores, 1 GiB, TCG, no network.
    pub fn kernel(kernel: PathBuf, cores: u32, cmdline: &str) -> Self {
        Self {
            cores,
            memory_mb: 1024,
            accel: Accel::Tcg,
            numa_nodes: 0,
            medium: BootMedium::Kernel {
                path: kernel,
                cmdline: cmdline.to_string(),
            },
            network: Network::None,
            gdb: None,
            pcap: None,
            extra_args: Vec::new(),
            pass_time: true,
        }
    }

    /// QEMU's arguments for this machine.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "-M",
            "q35",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-monitor",
            "none",
        ]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
        match self.accel {
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities,+x2apic"]),
        }
        let cores = self.cores.to_string();
        let memory = format!("{}M", self.memory_mb);
        push(&["-smp", &cores, "-m", &memory]);
        if self.numa_nodes > 0 {
            let nodes = self.numa_nodes.min(self.cores);
            let per_node_memory = self.memory_mb / nodes;
            let per_node_cores = self.cores / nodes;
            for node in 0..nodes {
                let first = node * per_node_cores;
                let last = if node + 1 == nodes {
                    self.cores - 1
                } else {
                    first + per_node_cores - 1
                };
                let object = format!("memory-backend-ram,id=ram{node},size={per_node_memory}M");
                let numa = format!("node,nodeid={node},cpus={first}-{last},memdev=ram{node}");
                push(&["-object", &object, "-numa", &numa]);
            }
        }
        match &self.medium {
            BootMedium::Kernel { path, cmdline } => {
                let has_time = cmdline
                    .split_ascii_whitespace()
                    .any(|word| word.starts_with("time="));
                let cmdline = if self.pass_time && !has_time {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.as_secs());
                    format!("{cmdline} time={now}").trim_start().to_string()
                } else {
                    cmdline.clone()
                };
                push(&["-kernel", &path.to_string_lossy(), "-append", &cmdline]);
            }
            BootMedium::Iso { path, uefi } => {
                if let Some(ovmf) = uefi {
                    push(&["-bios", &ovmf.to_string_lossy()]);
                }
                push(&["-cdrom", &path.to_string_lossy(), "-boot", "d"]);
            }
        }
        match &self.network {
            Network::None => push(&["-nic", "none"]),
            Network::User(forwards) => {
                let mut netdev = String::from("user,id=n0");
                for (proto, host, guest) in forwards {
                    netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{guest}"));
                }
                push(&[
                    "-netdev",
                    &netdev,
                    "-device",
                    "igb,netdev=n0,mac=52:54:00:12:34:56",
                ]);
            }
            Network::Datagram { local, remote } => {
                let netdev = format!(
                    "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={local},remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
                );
                push(&[
                    "-netdev",
                    &netdev,
                    "-device",
                    "igb,netdev=n0,mac=52:54:00:12:34:56",
                ]);
            }
            Network::Tap { tap, .. } => {
                let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
                push(&[
                    "-netdev",
                    &netdev,
                    "-device",
                    "igb,netdev=n0,mac=52:54:00:12:34:56",
                ]);
            }
        }
        if let Some(pcap) = &self.pcap {
            args.extend(crate::debug::pcap_args(pcap));
        }
        if let Some(stub) = &self.gdb {
            args.extend(stub.qemu_args());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// Errors running a machine.
#[derive(Debug)]
pub enum MachineError {
    /// QEMU could not be started.
    Spawn(std::io::Error),
    /// The awaited line did not come in time.
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// The console so far.
        console: String,
    },
    /// QEMU exited before the awaited line.
    Exited {
        /// What was awaited.
        waiting_for: String,
        /// The console.
        console: String,
    },
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Spawn(e) => write!(f, "could not start qemu-system-x86_64: {e}"),
            MachineError::Timeout {
                waiting_for,
                console,
            } => {
                write!(
                    f,
                    "timed out waiting for {waiting_for}; console:\n{console}"
                )
            }
            MachineError::Exited {
                waiting_for,
                console,
            } => {
                write!(
                    f,
                    "QEMU exited while waiting for {waiting_for}; console:\n{console}"
                )
            }
        }
    }
}

impl std::error::Error for MachineError {}

/// A running QEMU machine.
pub struct Machine {
    child: Child,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
    /// When QEMU was started.
    pub started: Instant,
}

impl Machine {
    /// Starts QEMU; with `echo`, the console is copied to this process's stdout as it arrives.
    pub fn start(config: &MachineConfig, echo: bool) -> Result<Self, MachineError> {
        let started = Instant::now();
        let mut command = match &config.network {
            Network::Tap { namespace, .. } => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, "qemu-system-x86_64"]);
                command
            }
            _ => Command::new("qemu-system-x86_64"),
        };
        let mut child = command
            .args(config.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(MachineError::Spawn)?;
        let (sender, lines) = mpsc::channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "qemu: "),
        ] {
            let sender = sender.clone();
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let text = format!(
                        "{prefix}{}",
                        String::from_utf8_lossy(&line).trim_end_matches('\r')
                    );
                    if echo {
                        println!("{text}");
                    }
                    console.lock().expect("console lock").push(text.clone());
                    if sender.send(text).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            lines,
            console,
            started,
        })
    }

    /// QEMU's process id (`ip netns exec` replaces itself with QEMU, so this is QEMU's pid
    /// also on a tap network): for CPU caps on its threads.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().expect("console lock").clone()
    }

    /// Waits until a console line satisfies `matches`, at most `timeout`. Lines before it are
    /// consumed (they stay in [`Machine::console`]).
    pub fn wait_for(
        &mut self,
        description: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, MachineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(MachineError::Timeout {
                        waiting_for: description.into(),
                        console: self.console().join("\n"),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(MachineError::Exited {
                        waiting_for: description.into(),
                        console: self.console().join("\n"),
                    })
                }
            }
        }
    }

    /// Waits for QEMU to exit by itself, at most `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits for QEMU to exit by itself, however long that takes; returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|status| status.code())
    }

    /// Stops QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The line the kernel prints once every core is online: returns (cores, milliseconds).
pub fn parse_ready_line(line: &str) -> Option<(u32, f64)> {
    let rest = line.strip_prefix("flotilla: all ")?;
    let (cores, rest) = rest.split_once(" cores online in ")?;
    let ms = rest.strip_suffix(" ms")?;
    Some((cores.parse().ok()?, ms.parse().ok()?))
}

/// Whether a console line reports a fault, a panic or a failed boot.
pub fn is_failure_line(line: &str) -> bool {
    line.starts_with("flotilla: fault")
        || line.starts_with("flotilla: panic")
        || line.starts_with("flotilla: fatal")
        || (line.starts_with("flotilla: only ") && line.contains(" cores online"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        assert_eq!(
            parse_ready_line("flotilla: all 8 cores online in 77.3 ms"),
            Some((8, 77.3))
        );
        assert_eq!(parse_ready_line("flotilla: core 1 online apic=1"), None);
        assert!(is_failure_line(
            "flotilla: fault core=2 vector=6 (#UD invalid opcode) error=0x0 rip=0x1"
        ));
        assert!(is_failure_line("flotilla: only 3 of 4 cores online"));
        assert!(!is_failure_line("flotilla: all 4 cores online in 3.0 ms"));
    }

    #[test]
    fn qemu_arguments_name_cores_numa_and_network() {
        let mut config = MachineConfig::kernel(PathBuf::from("/k"), 4, "log=info");
        config.numa_nodes = 2;
        config.network = Network::User(vec![("tcp", 8080, 80)]);
        let args = config.qemu_args().join(" ");
        assert!(args.contains("-smp 4 -m 1024M"), "{args}");
        assert!(
            args.contains("-numa node,nodeid=1,cpus=2-3,memdev=ram1"),
            "{args}"
        );
        assert!(args.contains("hostfwd=tcp:127.0.0.1:8080-:80"), "{args}");
        assert!(args.contains("-kernel /k -append log=info time="), "{args}");
        // The guest's own time= is kept; without pass_time none is added.
        let mut config = MachineConfig::kernel(PathBuf::from("/k"), 1, "time=5 log=info");
        assert!(config
            .qemu_args()
            .join(" ")
            .ends_with("-append time=5 log=info -nic none"));
        config = MachineConfig::kernel(PathBuf::from("/k"), 1, "");
        config.pass_time = false;
        let args = config.qemu_args();
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[append + 1], "");
        config.pass_time = true;
        let args = config.qemu_args();
        let time: u64 = args[append + 1]
            .strip_prefix("time=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(time > 1_700_000_000, "{time}");
        let args = args.join(" ");
        assert!(
            !args.contains("-gdb") && !args.contains("filter-dump"),
            "{args}"
        );
    }

    #[test]
    fn qemu_arguments_name_the_gdb_stub_and_the_capture() {
        let mut config = MachineConfig::kernel(PathBuf::from("/k"), 2, "log=info");
        config.network = Network::Datagram {
            local: 5000,
            remote: 5001,
        };
        config.gdb = Some(crate::debug::GdbStub {
            port: 1234,
            wait: true,
        });
        config.pcap = Some(PathBuf::from("/tmp/n.pcap"));
        let args = config.qemu_args().join(" ");
        assert!(args.contains("-gdb tcp:127.0.0.1:1234 -S"), "{args}");
        assert!(
            args.contains("-object filter-dump,id=flotilla-pcap,netdev=n0,file=/tmp/n.pcap"),
            "{args}"
        );
    }
}
