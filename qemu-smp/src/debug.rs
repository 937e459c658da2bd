//! Debugging support: QEMU's gdb stub (`run --gdb`), gdb attached with Flotilla's extension
//! (`qemu-smp gdb`), and a pcap capture of the NIC's traffic (`run --pcap`).
//!
//! QEMU's gdb stub shows each virtual CPU as a gdb thread: thread N is core N-1. The extension
//! (`qemu-smp/gdb/flotilla.py`) unwinds through interrupt entry and adds `flotilla cores`,
//! `flotilla channels` and `flotilla paths`; see `docs/debugging.md`.

use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The port `run --gdb` and `qemu-smp gdb` use when none is named (QEMU's own `-s` default).
pub const DEFAULT_GDB_PORT: u16 = 1234;

/// The id of the `filter-dump` object that writes the capture.
const PCAP_FILTER_ID: &str = "flotilla-pcap";

/// QEMU's gdb stub, on 127.0.0.1 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GdbStub {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// Keep the guest paused before its first instruction until gdb says `continue`.
    pub wait: bool,
}

impl GdbStub {
    /// QEMU's arguments for the stub.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = vec!["-gdb".to_string(), format!("tcp:127.0.0.1:{}", self.port)];
        if self.wait {
            args.push("-S".into());
        }
        args
    }
}

/// QEMU's arguments that write every frame of netdev `n0` (both directions) to `file`.
pub fn pcap_args(file: &Path) -> Vec<String> {
    // QEMU's option syntax: a comma inside a value is written twice.
    let file = file.to_string_lossy().replace(',', ",,");
    vec![
        "-object".into(),
        format!("filter-dump,id={PCAP_FILTER_ID},netdev=n0,file={file}"),
    ]
}

/// `run`'s debugging options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DebugArgs {
    /// Start QEMU's gdb stub on 127.0.0.1:PORT (1234 if no port is named); the guest waits
    /// before its first instruction until gdb continues it. Attach with `qemu-smp gdb`.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "1234")]
    pub gdb: Option<u16>,
    /// With --gdb: let the guest run at once instead of waiting for gdb.
    #[arg(long, requires = "gdb")]
    pub gdb_no_wait: bool,
    /// Write every frame the NIC sends and receives to this pcap file (QEMU's filter-dump on the
    /// NIC's netdev; read it with tshark or Wireshark).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
}

/// `qemu-smp gdb`'s options.
#[derive(clap::Args, Clone, Debug)]
pub struct GdbArgs {
    /// The gdb stub's port on 127.0.0.1 (the one given to `run --gdb`).
    #[arg(long, default_value_t = DEFAULT_GDB_PORT)]
    pub port: u16,
    /// The kernel ELF whose symbols gdb loads (default: the image `qemu-smp build` prints).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Extra gdb arguments, after `--` (e.g. `-batch -ex 'flotilla cores'`).
    #[arg(last = true)]
    pub gdb_args: Vec<String>,
}

/// Adds the stub and the capture `options` ask for to `config` (after its network is chosen);
/// returns the lines to tell the user (how to attach, where the capture goes). `elf` is the
/// kernel with the symbols; `exit_when_ready` is `run --exit-when-ready`.
pub fn configure(
    config: &mut crate::MachineConfig,
    options: &DebugArgs,
    elf: &Path,
    exit_when_ready: bool,
) -> Result<Vec<String>, DebugError> {
    let mut notes = Vec::new();
    if let Some(file) = &options.pcap {
        if matches!(config.network, crate::Network::None) {
            return Err(DebugError::PcapWithoutNic);
        }
        let file = pcap_path(file)?;
        notes.push(format!(
            "capturing every frame the NIC sends and receives to {} (read it with `tshark -r {}`)",
            file.display(),
            file.display()
        ));
        config.pcap = Some(file);
    }
    if let Some(port) = options.gdb {
        let wait = !options.gdb_no_wait;
        if wait && exit_when_ready {
            return Err(DebugError::WaitAndExit);
        }
        check_gdb_port(port)?;
        check_kernel_symbols(elf)?;
        config.gdb = Some(GdbStub { port, wait });
        notes.push(format!(
            "gdb stub on 127.0.0.1:{port}; {}",
            if wait {
                "the guest waits before its first instruction until gdb continues it (`continue`)"
            } else {
                "the guest runs (--gdb-no-wait)"
            }
        ));
        notes.push(format!("attach with: {}", attach_hint(port)));
        notes.push(format!(
            "or with plain gdb: {}",
            plain_gdb_command_line(elf, port)
        ));
        notes.push(
            "in gdb, thread N is core N-1 (`info threads`, `thread 2`); `flotilla cores` shows every core"
                .into(),
        );
    }
    Ok(notes)
}

/// `qemu-smp gdb`: starts gdb on the kernel ELF with Flotilla's extension, connected to the
/// stub on `args.port`; returns when gdb exits.
pub fn attach(args: &GdbArgs) -> Result<std::process::ExitStatus, DebugError> {
    let elf = args.kernel.clone().unwrap_or_else(crate::kernel_image_path);
    check_kernel_symbols(&elf)?;
    let script = gdb_script();
    if !script.is_file() {
        return Err(DebugError::NoScript(script));
    }
    check_gdb_listening(args.port)?;
    eprintln!(
        "qemu-smp: gdb on {} with {}, connecting to 127.0.0.1:{}",
        elf.display(),
        script.display(),
        args.port
    );
    gdb_command(&elf, args.port, &args.gdb_args)
        .status()
        .map_err(DebugError::Gdb)
}

/// Errors of the debugging commands.
#[derive(Debug)]
pub enum DebugError {
    /// The gdb port is taken on 127.0.0.1.
    PortInUse(u16),
    /// Nothing listens on the gdb port (no machine was started with `run --gdb PORT`).
    NothingListening(u16),
    /// The kernel ELF is not there.
    NoKernel(PathBuf),
    /// The kernel ELF could not be read or is not an ELF file.
    BadKernel(PathBuf, String),
    /// The kernel ELF has no `.debug_info` section: gdb would show addresses, not names.
    NoDebugInfo(PathBuf),
    /// The gdb extension is missing from the checkout.
    NoScript(PathBuf),
    /// The directory for the capture file does not exist.
    PcapDirectory(PathBuf),
    /// `--pcap` with `--net none`: there is no NIC to capture.
    PcapWithoutNic,
    /// `--gdb` (waiting for gdb) with `--exit-when-ready`: the boot would wait on gdb.
    WaitAndExit,
    /// gdb could not be started.
    Gdb(std::io::Error),
}

impl fmt::Display for DebugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebugError::PortInUse(port) => write!(
                f,
                "gdb port {port} is in use on 127.0.0.1: choose another with --gdb PORT (and attach with `qemu-smp gdb --port PORT`)"
            ),
            DebugError::NothingListening(port) => write!(
                f,
                "nothing listens on 127.0.0.1:{port}: start the machine first with `cargo run -p qemu-smp -- run --gdb {port}`"
            ),
            DebugError::NoKernel(path) => write!(
                f,
                "no kernel image at {}: build it with `cargo run -p qemu-smp -- build` (`run` builds it too)",
                path.display()
            ),
            DebugError::BadKernel(path, why) => {
                write!(f, "{} is not a readable ELF file: {why}", path.display())
            }
            DebugError::NoDebugInfo(path) => write!(
                f,
                "{} has no debug information (.debug_info): gdb would show addresses only; boot/Cargo.toml's [profile.release] sets `debug = 2`",
                path.display()
            ),
            DebugError::NoScript(path) => {
                write!(f, "the gdb extension {} is missing", path.display())
            }
            DebugError::PcapDirectory(path) => write!(
                f,
                "--pcap: the directory {} does not exist",
                path.display()
            ),
            DebugError::PcapWithoutNic => {
                f.write_str("--pcap needs a NIC: use it with --net user or --net tap")
            }
            DebugError::WaitAndExit => f.write_str(
                "--gdb with --exit-when-ready: the guest would wait for gdb; add --gdb-no-wait",
            ),
            DebugError::Gdb(e) => write!(
                f,
                "could not start gdb: {e} (apt-get install gdb; qemu-smp/install-deps.sh installs it)"
            ),
        }
    }
}

impl std::error::Error for DebugError {}

/// Checks that the gdb port can be given to QEMU now.
pub fn check_gdb_port(port: u16) -> Result<(), DebugError> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(DebugError::PortInUse(port)),
    }
}

/// Checks that something (QEMU's stub, presumably) listens on the gdb port, without connecting
/// (a connection that closes would count as a gdb session to QEMU).
pub fn check_gdb_listening(port: u16) -> Result<(), DebugError> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Err(DebugError::NothingListening(port)),
        Err(_) => Ok(()),
    }
}

/// The capture file as QEMU should get it: absolute (QEMU may run in another directory, inside
/// `ip netns exec`), in a directory that exists.
pub fn pcap_path(file: &Path) -> Result<PathBuf, DebugError> {
    let absolute = std::path::absolute(file).map_err(|_| DebugError::PcapDirectory(file.into()))?;
    let directory = absolute.parent().unwrap_or(Path::new("/"));
    if !directory.is_dir() {
        return Err(DebugError::PcapDirectory(directory.to_path_buf()));
    }
    Ok(absolute)
}

/// The gdb extension kept in the repository.
pub fn gdb_script() -> PathBuf {
    crate::workspace_root()
        .join("qemu-smp")
        .join("gdb")
        .join("flotilla.py")
}

/// Names the ELF sections of `bytes` (a 64-bit little-endian ELF file).
fn section_names(bytes: &[u8]) -> Result<Vec<String>, String> {
    let word = |at: usize, size: usize| -> Result<u64, String> {
        let field = bytes
            .get(at..at + size)
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        let mut value = [0u8; 8];
        value[..size].copy_from_slice(field);
        Ok(u64::from_le_bytes(value))
    };
    if bytes.get(0..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4) != Some(&2) {
        return Err("not a 64-bit ELF file".into());
    }
    let table = word(0x28, 8)? as usize;
    let entry_size = word(0x3A, 2)? as usize;
    let count = word(0x3C, 2)? as usize;
    let names_index = word(0x3E, 2)? as usize;
    let header = |index: usize| table + index * entry_size;
    let names_offset = word(header(names_index) + 0x18, 8)? as usize;
    (0..count)
        .map(|index| {
            let name = names_offset + word(header(index), 4)? as usize;
            let rest = bytes
                .get(name..)
                .ok_or_else(|| format!("section name at {name} outside the file"))?;
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

/// Checks that `elf` exists and carries debug information (a `.debug_info` section).
pub fn check_kernel_symbols(elf: &Path) -> Result<(), DebugError> {
    let mut bytes = Vec::new();
    std::fs::File::open(elf)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DebugError::NoKernel(elf.to_path_buf()),
            _ => DebugError::BadKernel(elf.to_path_buf(), e.to_string()),
        })?;
    let names =
        section_names(&bytes).map_err(|why| DebugError::BadKernel(elf.to_path_buf(), why))?;
    if names.iter().any(|name| name == ".debug_info") {
        Ok(())
    } else {
        Err(DebugError::NoDebugInfo(elf.to_path_buf()))
    }
}

/// The command a person types to attach to the stub on `port`.
pub fn attach_hint(port: u16) -> String {
    if port == DEFAULT_GDB_PORT {
        "cargo run -p qemu-smp -- gdb".into()
    } else {
        format!("cargo run -p qemu-smp -- gdb --port {port}")
    }
}

/// The same without qemu-smp: plain gdb on `elf`, with the extension, connected to `port`.
pub fn plain_gdb_command_line(elf: &Path, port: u16) -> String {
    format!(
        "gdb -q {} -ex 'source {}' -ex 'target remote 127.0.0.1:{port}'",
        elf.display(),
        gdb_script().display()
    )
}

/// gdb on `elf` with Flotilla's extension, connected to the stub on `port`; `extra` arguments
/// come after those, so their `-ex` commands run once gdb is connected (e.g. `-batch`, `-nx`,
/// `-ex bt`).
pub fn gdb_command(elf: &Path, port: u16, extra: &[String]) -> Command {
    let mut command = Command::new("gdb");
    command
        .arg("-q")
        .arg(elf)
        .arg("-ex")
        .arg(format!("source {}", gdb_script().display()))
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{port}"))
        .args(extra);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_waits_unless_told_not_to() {
        let waiting = GdbStub {
            port: 1234,
            wait: true,
        };
        assert_eq!(waiting.qemu_args(), ["-gdb", "tcp:127.0.0.1:1234", "-S"]);
        let running = GdbStub {
            port: 4321,
            wait: false,
        };
        assert_eq!(running.qemu_args(), ["-gdb", "tcp:127.0.0.1:4321"]);
    }

    #[test]
    fn pcap_commas_are_escaped() {
        assert_eq!(
            pcap_args(Path::new("/tmp/a,b.pcap"))[1],
            "filter-dump,id=flotilla-pcap,netdev=n0,file=/tmp/a,,b.pcap"
        );
    }

    #[test]
    fn a_busy_port_is_named() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let error = check_gdb_port(port).unwrap_err().to_string();
        assert!(
            error.contains(&format!("gdb port {port} is in use")),
            "{error}"
        );
        assert!(check_gdb_listening(port).is_ok());
        drop(listener);
        assert!(check_gdb_port(port).is_ok());
        assert!(matches!(
            check_gdb_listening(port),
            Err(DebugError::NothingListening(p)) if p == port
        ));
    }

    #[test]
    fn pcap_needs_an_existing_directory() {
        assert!(pcap_path(Path::new("capture.pcap")).unwrap().is_absolute());
        let error = pcap_path(Path::new("/no/such/dir/x.pcap")).unwrap_err();
        assert!(error.to_string().contains("/no/such/dir"), "{error}");
    }

    #[test]
    fn debug_sections_are_found_in_this_test_binary() {
        // The test binary itself is an ELF with debug information (the workspace's release
        // profile and the test profile both keep it); a file that is not ELF is refused.
        let me = std::env::current_exe().unwrap();
        let names = section_names(&std::fs::read(&me).unwrap()).unwrap();
        assert!(names.iter().any(|n| n == ".text"), "{names:?}");
        assert!(check_kernel_symbols(&me).is_ok());
        let not_elf = std::env::temp_dir().join(format!("not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"hello").unwrap();
        assert!(matches!(
            check_kernel_symbols(&not_elf),
            Err(DebugError::BadKernel(..))
        ));
        std::fs::remove_file(&not_elf).unwrap();
        // A copy of the binary with its `.debug_info` section renamed (every occurrence of the
        // name, the section-name table's among them) reads as one without symbols.
        let mut bytes = std::fs::read(&me).unwrap();
        let places: Vec<usize> = bytes
            .windows(12)
            .enumerate()
            .filter(|(_, w)| *w == b".debug_info\0")
            .map(|(at, _)| at)
            .collect();
        assert!(!places.is_empty());
        for at in places {
            bytes[at + 1] = b'x';
        }
        let stripped = std::env::temp_dir().join(format!("stripped-{}", std::process::id()));
        std::fs::write(&stripped, &bytes).unwrap();
        let error = check_kernel_symbols(&stripped).unwrap_err();
        std::fs::remove_file(&stripped).unwrap();
        assert!(matches!(error, DebugError::NoDebugInfo(_)), "{error}");
        assert!(matches!(
            check_kernel_symbols(Path::new("/no/such/kernel")),
            Err(DebugError::NoKernel(_))
        ));
    }
}
