//! The architecture seam: one module per architecture, each exporting the same names.
//! Flotilla runs on x86_64 only for now.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
