//! A network namespace with a tap device: the host's own Linux stack opposite the guest, so
//! unmodified clients (`ping`, `curl`, `nc`, memcached clients) can talk to Flotilla while all
//! traffic stays inside a namespace this tool created. Needs root (`ip netns`).

use std::fmt;
use std::process::{Command, Output};

/// The host side's address in the namespace (the guest's default gateway).
pub const HOST_ADDRESS: &str = "10.0.2.2";
/// The guest's default address.
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The prefix length of the namespace's network.
pub const PREFIX: u8 = 24;

/// Errors creating the namespace.
#[derive(Debug)]
pub struct TapError {
    /// The command that failed.
    pub command: String,
    /// What it said.
    pub output: String,
}

impl fmt::Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` failed: {} (creating a namespace and a tap device needs root and iproute2)",
            self.command,
            self.output.trim()
        )
    }
}

impl std::error::Error for TapError {}

fn run(args: &[&str]) -> Result<Output, TapError> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| TapError {
            command: args.join(" "),
            output: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(TapError {
            command: args.join(" "),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output)
}

/// A namespace holding a tap device `tap0` with [`HOST_ADDRESS`]; removed on drop.
pub struct TapNamespace {
    /// The namespace's name.
    pub name: String,
    /// The tap device's name inside it.
    pub tap: String,
}

impl TapNamespace {
    /// Creates namespace `name` with an up loopback and `tap0` at HOST_ADDRESS/PREFIX.
    pub fn create(name: &str) -> Result<Self, TapError> {
        let _ = run(&["ip", "netns", "del", name]);
        run(&["ip", "netns", "add", name])?;
        let namespace = Self {
            name: name.to_string(),
            tap: "tap0".into(),
        };
        let address = format!("{HOST_ADDRESS}/{PREFIX}");
        for command in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            vec!["ip", "addr", "add", &address, "dev", "tap0"],
            vec!["ip", "link", "set", "tap0", "up"],
        ] {
            namespace.exec(&command)?;
        }
        Ok(namespace)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, command: &[&str]) -> Result<Output, TapError> {
        let mut args = vec!["ip", "netns", "exec", &self.name];
        args.extend_from_slice(command);
        run(&args)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for TapNamespace {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
