//! The host side of Flotilla: build the kernel image, check and install QEMU and its firmware,
//! boot machines and watch their serial console, build GRUB ISO images. The `qemu-smp` binary
//! is a command line over this library; the integration tests in `tests/` use it directly.
#![forbid(unsafe_code)]

pub mod bench_echo;
pub mod bench_kv;
pub mod bench_tcp;
pub mod build;
pub mod debug;
pub mod deps;
pub mod experiment;
pub mod forward;
pub mod fuzz;
pub mod linux_guest;
pub mod machine;
pub mod tap;
pub mod toolchain;

pub use build::{build_iso, build_kernel, kernel_image_path, workspace_root, BuildError};
pub use deps::{ensure_dependencies, DependencyError, Firmware};
pub use machine::{Accel, BootMedium, Machine, MachineConfig, MachineError, Network};
pub use toolchain::{ensure_toolchain, ToolchainError};
