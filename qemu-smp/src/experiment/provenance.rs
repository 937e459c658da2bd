//! `NAME.meta.json`: what a reader needs to trust or reproduce a CSV — the git commit (and
//! whether the tree was dirty), the QEMU version and every QEMU command line, the host's CPU
//! model, core count and load average at the start and the end, the CPU caps, the generator's
//! ceiling, the Linux guest's packages, and the notes the run raised.

use super::Options;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The provenance of one run, filled in as it goes.
pub struct Provenance {
    fields: Map<String, Value>,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(crate::workspace_root())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_default()
}

impl Provenance {
    /// Starts the record of experiment `name`.
    pub fn start(name: &str, options: &Options) -> Self {
        let mut fields = Map::new();
        let commit =
            command_output("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entries = [
            ("experiment", json!(name)),
            ("mode", json!(if options.quick { "quick" } else { "full" })),
            ("git_commit", json!(commit)),
            ("git_dirty", json!(dirty)),
            ("started_unix_time", json!(unix_time)),
            (
                "qemu_version",
                json!(command_output("qemu-system-x86_64", &["--version"])
                    .and_then(|v| v.lines().next().map(str::to_string))),
            ),
            ("host_cpu_model", json!(cpu_model())),
            ("host_cpus", json!(loadgen::sys::host_cpus())),
            ("host_kernel", json!(command_output("uname", &["-r"]))),
            ("load_average_start", json!(load_average())),
            (
                "target",
                json!(options.target.map(|t| format!(
                    "{t} ({}, {} cores)",
                    options.target_system, options.target_cores
                ))),
            ),
            (
                "command",
                json!(std::env::args().collect::<Vec<_>>().join(" ")),
            ),
        ];
        for (key, value) in entries {
            fields.insert(key.to_string(), value);
        }
        Self { fields }
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: String) {
        self.fields.insert(key.to_string(), Value::String(value));
    }

    /// Appends `value` to the list `key`.
    pub fn push(&mut self, key: &str, value: String) {
        let entry = self
            .fields
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(Value::String(value));
        }
    }

    /// Records the generator's ceiling.
    pub fn set_ceiling(&mut self, ceiling: &loadgen::Ceiling) {
        self.fields.insert(
            "generator".into(),
            json!({
                "loopback_ceiling_echoes_per_s": ceiling.generator_per_second.round(),
                "loopback_open_loop_offered_per_s": ceiling.offered_per_second.round(),
                "plain_client_echoes_per_s": ceiling.plain_per_second.round(),
                "ratio": (ceiling.ratio() * 100.0).round() / 100.0,
            }),
        );
    }

    /// Records the end of the run.
    pub fn finish(&mut self, elapsed: Duration, summary: &str, notes: &[String], rows: usize) {
        self.fields
            .insert("load_average_end".into(), json!(load_average()));
        self.fields.insert(
            "elapsed_s".into(),
            json!((elapsed.as_secs_f64() * 10.0).round() / 10.0),
        );
        self.fields.insert("summary".into(), json!(summary));
        self.fields.insert("notes".into(), json!(notes));
        self.fields.insert("rows".into(), json!(rows));
    }

    /// Writes the record as pretty JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&Value::Object(self.fields.clone()))
            .expect("JSON values serialise");
        std::fs::write(path, text + "\n")
    }
}
