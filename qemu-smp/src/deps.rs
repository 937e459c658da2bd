//! Host dependencies: QEMU (10.x, for the igb NIC), OVMF, GRUB tools. On Debian as root they are
//! installed with `install-deps.sh` (embedded here, also used by CI); elsewhere the exact command
//! is printed.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;

/// The installer script, shared with `.ci/run`.
const INSTALLER: &str = include_str!("../install-deps.sh");

/// Errors finding or installing dependencies.
#[derive(Debug)]
pub enum DependencyError {
    /// Something is missing and could not be installed here; the message says what to run.
    Missing(String),
}

impl fmt::Display for DependencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DependencyError::Missing(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DependencyError {}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn qemu_has_igb() -> bool {
    Command::new("qemu-system-x86_64")
        .args(["-device", "help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("\"igb\""))
}

/// UEFI firmware for QEMU.
#[derive(Clone, Debug)]
pub struct Firmware {
    /// OVMF image usable with `-bios`.
    pub ovmf: PathBuf,
}

impl Firmware {
    /// Finds OVMF.
    pub fn find() -> Option<Self> {
        [
            "/usr/share/ovmf/OVMF.fd",
            "/usr/share/OVMF/OVMF.fd",
            "/usr/share/qemu/OVMF.fd",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .map(|ovmf| Self { ovmf })
    }
}

fn missing(grub: bool) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !have("qemu-system-x86_64") || !qemu_has_igb() {
        missing.push("QEMU >= 8 with the igb NIC (qemu-system-x86 from bookworm-backports)");
    }
    if grub {
        if Firmware::find().is_none() {
            missing.push("OVMF (ovmf)");
        }
        if !have("grub-mkrescue")
            || !PathBuf::from("/usr/lib/grub/i386-pc").exists()
            || !PathBuf::from("/usr/lib/grub/x86_64-efi").exists()
        {
            missing
                .push("GRUB tools for BIOS and EFI (grub-common, grub-pc-bin, grub-efi-amd64-bin)");
        }
        if !have("xorriso") || !have("mformat") {
            missing.push("xorriso and mtools");
        }
    }
    missing
}

/// Makes sure QEMU (and, with `grub`, OVMF and the GRUB tools) are present: installs them on
/// Debian as root, saying so; otherwise returns the exact command to run.
pub fn ensure_dependencies(grub: bool) -> Result<(), DependencyError> {
    let absent = missing(grub);
    if absent.is_empty() {
        return Ok(());
    }
    eprintln!("qemu-smp: missing: {}", absent.join("; "));
    eprintln!(
        "qemu-smp: running qemu-smp/install-deps.sh (installs them on Debian bookworm as root)"
    );
    let status = Command::new("bash").arg("-c").arg(INSTALLER).status();
    match status {
        Ok(s) if s.success() && missing(grub).is_empty() => Ok(()),
        _ => Err(DependencyError::Missing(format!(
            "qemu-smp: still missing: {}.\nOn Debian bookworm, as root:\n  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list\n  apt-get update && apt-get install -y -t bookworm-backports qemu-system-x86 && apt-get install -y ovmf grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools\nElsewhere: install QEMU >= 8.0 (igb NIC), OVMF, grub-mkrescue with BIOS and EFI modules, xorriso and mtools.",
            missing(grub).join("; ")
        ))),
    }
}
