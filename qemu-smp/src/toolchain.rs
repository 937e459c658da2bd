//! The Rust toolchain the kernel needs: the one `rust-toolchain.toml` names, with every target
//! and component that file lists.
//!
//! rustup installs a missing toolchain with the targets and components the file lists, but it
//! does not add them to a toolchain that is already installed (a machine image that carries
//! 1.95.0 without `x86_64-unknown-none` fails every kernel build with E0463 "can't find crate
//! for `core`"). So before a kernel build, [`ensure_toolchain`] asks rustup what the toolchain
//! has (`rustup target list --installed`, `rustup component list --installed`: local, no
//! network, ~20 ms each), adds what is missing with `rustup target add` / `rustup component
//! add` and says so, or, without rustup, prints the exact command and stops.
//!
//! The decision ([`plan`]) is a pure function of the file and rustup's output, tested on the host.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// What `rust-toolchain.toml` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolchainFile {
    /// `channel`, e.g. `1.95.0`.
    pub channel: String,
    /// `targets`, e.g. `["x86_64-unknown-none"]`.
    pub targets: Vec<String>,
    /// `components`, e.g. `["rustfmt", "clippy"]`.
    pub components: Vec<String>,
}

/// Errors reading the toolchain file or completing the toolchain.
#[derive(Debug)]
pub enum ToolchainError {
    /// The file could not be read.
    Read(String, std::io::Error),
    /// The file is not the TOML we expect; the message says where.
    Parse(String),
    /// Something is missing and could not be added here; the message holds the command to run.
    Missing(String),
    /// rustup ran and failed.
    Rustup(String),
}

impl fmt::Display for ToolchainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolchainError::Read(path, e) => write!(f, "{path}: {e}"),
            ToolchainError::Parse(message) => write!(f, "rust-toolchain.toml: {message}"),
            ToolchainError::Missing(message) | ToolchainError::Rustup(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ToolchainError {}

/// Parses the `[toolchain]` table of a `rust-toolchain.toml`.
pub fn parse_toolchain_file(text: &str) -> Result<ToolchainFile, ToolchainError> {
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ToolchainError::Parse(e.to_string()))?;
    let table = value
        .get("toolchain")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| ToolchainError::Parse("no [toolchain] table".into()))?;
    let channel = table
        .get("channel")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| ToolchainError::Parse("[toolchain] has no `channel` string".into()))?
        .to_string();
    let list = |key: &str| -> Result<Vec<String>, ToolchainError> {
        match table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        ToolchainError::Parse(format!("`{key}` must be a list of strings"))
                    })
                })
                .collect(),
            Some(_) => Err(ToolchainError::Parse(format!(
                "`{key}` must be a list of strings"
            ))),
        }
    };
    Ok(ToolchainFile {
        channel,
        targets: list("targets")?,
        components: list("components")?,
    })
}

/// What rustup reported about the toolchain, or that there is no rustup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// rustup's `target list --installed` and `component list --installed` output.
    Rustup {
        /// One target triple per line.
        targets: String,
        /// One component per line, most with the host triple appended (`rustfmt-x86_64-...`).
        components: String,
    },
    /// No rustup on this machine: nothing can be checked or added automatically.
    NoRustup,
}

/// What to do before building.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Everything the file lists is installed.
    Ready,
    /// Run these rustup commands (each a full argument list after `rustup`).
    Add(Vec<Vec<String>>),
    /// Without rustup: the exact commands a person must run (or their equivalent).
    Manual(Vec<String>),
}

fn component_installed(component: &str, installed: &str) -> bool {
    // rustup lists host components with the host triple appended (`rustfmt-x86_64-unknown-
    // linux-gnu`) and the `rustc` component is always there, so it names the host.
    let host = installed
        .lines()
        .find_map(|line| line.trim().strip_prefix("rustc-"));
    installed.lines().map(str::trim).any(|line| {
        line == component
            || host.is_some_and(|host| {
                line.strip_prefix(component)
                    .and_then(|rest| rest.strip_prefix('-'))
                    == Some(host)
            })
    })
}

/// Decides what is missing from the toolchain `file` names, given what rustup reported.
pub fn plan(file: &ToolchainFile, installed: &Installed) -> Plan {
    match installed {
        Installed::Rustup {
            targets,
            components,
        } => {
            let have_target = |t: &str| targets.lines().map(str::trim).any(|line| line == t);
            let missing_targets: Vec<&String> =
                file.targets.iter().filter(|t| !have_target(t)).collect();
            let missing_components: Vec<&String> = file
                .components
                .iter()
                .filter(|c| !component_installed(c, components))
                .collect();
            let mut commands = Vec::new();
            if !missing_targets.is_empty() {
                let mut command = vec![
                    "target".to_string(),
                    "add".into(),
                    "--toolchain".into(),
                    file.channel.clone(),
                ];
                command.extend(missing_targets.into_iter().cloned());
                commands.push(command);
            }
            if !missing_components.is_empty() {
                let mut command = vec![
                    "component".to_string(),
                    "add".into(),
                    "--toolchain".into(),
                    file.channel.clone(),
                ];
                command.extend(missing_components.into_iter().cloned());
                commands.push(command);
            }
            if commands.is_empty() {
                Plan::Ready
            } else {
                Plan::Add(commands)
            }
        }
        Installed::NoRustup => {
            let mut commands = vec![
                "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh".to_string(),
                format!("rustup toolchain install {}", file.channel),
            ];
            if !file.targets.is_empty() {
                commands.push(format!(
                    "rustup target add --toolchain {} {}",
                    file.channel,
                    file.targets.join(" ")
                ));
            }
            if !file.components.is_empty() {
                commands.push(format!(
                    "rustup component add --toolchain {} {}",
                    file.channel,
                    file.components.join(" ")
                ));
            }
            Plan::Manual(commands)
        }
    }
}

fn rustup_output(args: &[&str]) -> Option<Result<String, String>> {
    let output = match Command::new("rustup").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("could not run rustup: {e}"))),
    };
    if output.status.success() {
        Some(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
    } else {
        Some(Err(format!(
            "`rustup {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Asks rustup what the toolchain `channel` has (two local queries, no network).
pub fn query_installed(channel: &str) -> Result<Installed, ToolchainError> {
    let targets = rustup_output(&["target", "list", "--installed", "--toolchain", channel]);
    let Some(targets) = targets else {
        return Ok(Installed::NoRustup);
    };
    let components = rustup_output(&["component", "list", "--installed", "--toolchain", channel])
        .unwrap_or_else(|| Err("rustup disappeared".into()));
    match (targets, components) {
        (Ok(targets), Ok(components)) => Ok(Installed::Rustup {
            targets,
            components,
        }),
        // The toolchain itself is not installed yet: rustup installs it, with the file's targets
        // and components, the first time cargo runs in the workspace. Ask for exactly that.
        (Err(e), _) | (_, Err(e)) if e.contains("not installed") => Ok(Installed::Rustup {
            targets: String::new(),
            components: String::new(),
        }),
        (Err(e), _) | (_, Err(e)) => Err(ToolchainError::Rustup(e)),
    }
}

/// Makes sure the toolchain named in `<root>/rust-toolchain.toml` has its targets and
/// components: adds the missing ones with rustup (saying so), or returns the commands to run.
pub fn ensure_toolchain(root: &Path) -> Result<(), ToolchainError> {
    let path = root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ToolchainError::Read(path.display().to_string(), e))?;
    let file = parse_toolchain_file(&text)?;
    match plan(&file, &query_installed(&file.channel)?) {
        Plan::Ready => Ok(()),
        Plan::Add(commands) => {
            for command in commands {
                eprintln!(
                    "qemu-smp: the {} toolchain lacks what rust-toolchain.toml lists; running `rustup {}`",
                    file.channel,
                    command.join(" ")
                );
                let status = Command::new("rustup")
                    .args(&command)
                    .status()
                    .map_err(|e| ToolchainError::Rustup(format!("could not run rustup: {e}")))?;
                if !status.success() {
                    return Err(ToolchainError::Rustup(format!(
                        "`rustup {}` failed ({status}); run it by hand and retry",
                        command.join(" ")
                    )));
                }
            }
            Ok(())
        }
        Plan::Manual(commands) => Err(ToolchainError::Missing(format!(
            "qemu-smp: rustup is not installed, so the {} toolchain's targets ({}) and components ({}) cannot be checked or added. Install them, e.g.:\n  {}",
            file.channel,
            file.targets.join(", "),
            file.components.join(", "),
            commands.join("\n  ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"x86_64-unknown-none\"]\ncomponents = [\"rustfmt\", \"clippy\"]\n";

    const COMPONENTS: &str = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-docs-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu\n";

    fn file() -> ToolchainFile {
        parse_toolchain_file(FILE).unwrap()
    }

    #[test]
    fn the_file_parses() {
        assert_eq!(
            file(),
            ToolchainFile {
                channel: "1.95.0".into(),
                targets: vec!["x86_64-unknown-none".into()],
                components: vec!["rustfmt".into(), "clippy".into()],
            }
        );
        let bare = parse_toolchain_file("[toolchain]\nchannel = \"stable\"\n").unwrap();
        assert!(bare.targets.is_empty() && bare.components.is_empty());
        assert!(parse_toolchain_file("channel = \"x\"").is_err());
        assert!(parse_toolchain_file("[toolchain]\ntargets = [1]\nchannel = \"x\"").is_err());
        assert!(parse_toolchain_file("[toolchain\n").is_err());
        // The workspace's own file is one this parser reads.
        let ours = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../rust-toolchain.toml"),
        )
        .unwrap();
        assert!(parse_toolchain_file(&ours)
            .unwrap()
            .targets
            .contains(&"x86_64-unknown-none".to_string()));
    }

    #[test]
    fn everything_present_is_ready() {
        let installed = Installed::Rustup {
            targets: "x86_64-unknown-linux-gnu\nx86_64-unknown-none\n".into(),
            components: COMPONENTS.into(),
        };
        assert_eq!(plan(&file(), &installed), Plan::Ready);
    }

    #[test]
    fn a_missing_target_is_added_to_the_named_toolchain() {
        let installed = Installed::Rustup {
            targets: "x86_64-unknown-linux-gnu\n".into(),
            components: COMPONENTS.into(),
        };
        assert_eq!(
            plan(&file(), &installed),
            Plan::Add(vec![vec![
                "target".into(),
                "add".into(),
                "--toolchain".into(),
                "1.95.0".into(),
                "x86_64-unknown-none".into()
            ]])
        );
    }

    #[test]
    fn missing_components_are_added_and_prefixes_do_not_fool_the_check() {
        let installed = Installed::Rustup {
            targets: "x86_64-unknown-none\n".into(),
            // clippy absent; `rustfmt-preview`-like or `rust-std` lines must not count.
            components: "cargo-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu\n"
                .into(),
        };
        assert_eq!(
            plan(&file(), &installed),
            Plan::Add(vec![vec![
                "component".into(),
                "add".into(),
                "--toolchain".into(),
                "1.95.0".into(),
                "clippy".into()
            ]])
        );
        assert!(!component_installed(
            "rust",
            "rustc-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
        assert!(component_installed("rust-src", "rust-src\n"));
    }

    #[test]
    fn an_uninstalled_toolchain_gets_everything() {
        let installed = Installed::Rustup {
            targets: String::new(),
            components: String::new(),
        };
        match plan(&file(), &installed) {
            Plan::Add(commands) => assert_eq!(commands.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_rustup_the_exact_commands_are_given() {
        match plan(&file(), &Installed::NoRustup) {
            Plan::Manual(commands) => {
                assert!(commands
                    .contains(&"rustup target add --toolchain 1.95.0 x86_64-unknown-none".into()));
                assert!(commands
                    .contains(&"rustup component add --toolchain 1.95.0 rustfmt clippy".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
