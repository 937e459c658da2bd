//! Building the kernel image (`boot/`, for `x86_64-unknown-none`) and GRUB ISO images.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while building.
#[derive(Debug)]
pub enum BuildError {
    /// cargo could not be started.
    Spawn(std::io::Error),
    /// cargo failed; its output went to the terminal.
    Cargo(std::process::ExitStatus),
    /// grub-mkrescue failed.
    Grub(String),
    /// A file could not be written.
    Io(std::io::Error),
    /// The toolchain lacks a target or component and it could not be added.
    Toolchain(crate::toolchain::ToolchainError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Spawn(e) => write!(f, "could not run cargo: {e}"),
            BuildError::Cargo(status) => write!(f, "building the kernel failed ({status})"),
            BuildError::Grub(message) => write!(f, "grub-mkrescue failed: {message}"),
            BuildError::Io(e) => write!(f, "{e}"),
            BuildError::Toolchain(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The workspace root (the folder holding `boot/`).
pub fn workspace_root() -> PathBuf {
    if let Ok(root) = std::env::var("FLOTILLA_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-smp lives in the workspace")
        .to_path_buf()
}

/// Where [`build_kernel`] puts the kernel image (an ELF with debug information), built or not.
pub fn kernel_image_path() -> PathBuf {
    workspace_root()
        .join("target")
        .join("kernel")
        .join("x86_64-unknown-none")
        .join("release")
        .join("flotilla")
}

/// Builds the kernel (release profile) and returns the image's path. Cargo's progress goes to
/// stderr, so stdout stays clean for the path. First makes sure the toolchain has the targets
/// and components `rust-toolchain.toml` lists ([`crate::toolchain::ensure_toolchain`]).
pub fn build_kernel() -> Result<PathBuf, BuildError> {
    let root = workspace_root();
    crate::toolchain::ensure_toolchain(&root).map_err(BuildError::Toolchain)?;
    let target_dir = root.join("target").join("kernel");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("boot"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        // The kernel's flags come from boot/build.rs; host-side flags must not leak in.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Cargo(status));
    }
    Ok(kernel_image_path())
}

/// Builds a GRUB ISO that boots `kernel` with `cmdline` under BIOS and UEFI; returns its path.
pub fn build_iso(kernel: &Path, cmdline: &str, output: &Path) -> Result<PathBuf, BuildError> {
    let staging = output.with_extension("iso.d");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("boot/grub")).map_err(BuildError::Io)?;
    std::fs::copy(kernel, staging.join("boot/flotilla.elf")).map_err(BuildError::Io)?;
    let config = format!(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial console\n\
         terminal_output serial console\nmenuentry \"Flotilla\" {{\n  multiboot2 /boot/flotilla.elf {cmdline}\n  boot\n}}\n"
    );
    std::fs::write(staging.join("boot/grub/grub.cfg"), config).map_err(BuildError::Io)?;
    let result = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(output)
        .arg(&staging)
        .output()
        .map_err(|e| BuildError::Grub(format!("could not run grub-mkrescue: {e}")))?;
    let _ = std::fs::remove_dir_all(&staging);
    if !result.status.success() {
        return Err(BuildError::Grub(
            String::from_utf8_lossy(&result.stderr).into_owned(),
        ));
    }
    Ok(output.to_path_buf())
}
