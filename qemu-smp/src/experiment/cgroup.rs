//! CPU caps for QEMU's threads with the cgroup v1 cpu controller (`/sys/fs/cgroup/cpu`; this
//! host's cgroup v2 has no cpu controller). A cap is a CFS quota per period; the period is as
//! short as the 1 ms minimum quota allows ([`period_us`]: 10 ms at 10%) so that a capped guest runs in small slices instead of stalling for tens of
//! milliseconds at a time (with the default 100 ms period, a 20% cap stops a guest for up to
//! 80 ms). With QEMU started with `-name NAME,debug-threads=on`, each vCPU thread is named
//! `CPU K/TCG` and gets its own group with the same share.

use std::fmt;
use std::path::{Path, PathBuf};

/// The cgroup v1 cpu hierarchy.
pub const CPU_CONTROLLER: &str = "/sys/fs/cgroup/cpu";
/// The smallest CFS quota the kernel accepts, in microseconds.
pub const MIN_QUOTA_US: u32 = 1_000;

/// The period for `share`: as short as the smallest quota allows (1 ms / share, at most
/// 100 ms), so that a throttled vCPU waits at most `period - quota` (9 ms at 10%, 1 ms at 50%).
pub fn period_us(share: f64) -> u32 {
    ((f64::from(MIN_QUOTA_US) / share.clamp(0.01, 1.0)).round() as u32).clamp(MIN_QUOTA_US, 100_000)
}

/// Why a cap could not be applied.
#[derive(Debug)]
pub struct CapError(pub String);

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPU cap: {} (needs root and the cgroup v1 cpu controller at {CPU_CONTROLLER})",
            self.0
        )
    }
}

impl std::error::Error for CapError {}

fn write(path: &Path, value: &str) -> Result<(), CapError> {
    std::fs::write(path, value)
        .map_err(|e| CapError(format!("writing '{value}' to {}: {e}", path.display())))
}

/// The threads of process `pid` as (thread id, name).
pub fn threads(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            Some((tid, name.trim().to_string()))
        })
        .collect();
    threads.sort();
    threads
}

/// The vCPU index of a QEMU thread named `CPU K/TCG` (or `CPU K/KVM`).
pub fn vcpu_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("CPU ")?;
    let (index, accelerator) = rest.split_once('/')?;
    (!accelerator.is_empty()).then_some(())?;
    index.parse().ok()
}

/// Caps applied to one QEMU process; the groups are removed (threads moved back to the root
/// group) when dropped.
pub struct CpuCaps {
    groups: Vec<PathBuf>,
    /// The share of one host core each capped group got (e.g. 0.25).
    pub share: f64,
    /// What was capped, for the provenance file.
    pub description: String,
}

impl CpuCaps {
    fn group(name: &str, share: f64) -> Result<PathBuf, CapError> {
        let path = Path::new(CPU_CONTROLLER).join(name);
        if !Path::new(CPU_CONTROLLER).join("tasks").exists() {
            return Err(CapError(format!("{CPU_CONTROLLER}/tasks does not exist")));
        }
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)
            .map_err(|e| CapError(format!("mkdir {}: {e}", path.display())))?;
        let period = period_us(share);
        write(&path.join("cpu.cfs_period_us"), &period.to_string())?;
        let quota = ((f64::from(period) * share).round() as u32).max(MIN_QUOTA_US);
        write(&path.join("cpu.cfs_quota_us"), &quota.to_string())?;
        Ok(path)
    }

    /// Gives each vCPU thread of QEMU process `pid` its own group capped at `share` of one
    /// host core (QEMU's other threads, the I/O thread that plays the NIC, stay uncapped).
    /// `tag` makes the group names unique (e.g. the experiment's name and this process's pid).
    pub fn per_vcpu(pid: u32, share: f64, tag: &str) -> Result<Self, CapError> {
        let vcpus: Vec<(u32, u32)> = threads(pid)
            .into_iter()
            .filter_map(|(tid, name)| Some((vcpu_index(&name)?, tid)))
            .collect();
        if vcpus.is_empty() {
            return Err(CapError(format!(
                "QEMU process {pid} has no thread named 'CPU K/TCG' (start it with -name NAME,debug-threads=on)"
            )));
        }
        let mut caps = Self {
            groups: Vec::new(),
            share,
            description: format!(
                "each of {} vCPU threads in its own cgroup: {:.0}% of one host core (quota {} us / period {} us); QEMU's other threads uncapped",
                vcpus.len(),
                share * 100.0,
                (f64::from(period_us(share)) * share).round(),
                period_us(share)
            ),
        };
        for (index, tid) in vcpus {
            let group = Self::group(&format!("flotilla-{tag}-vcpu{index}"), share)?;
            caps.groups.push(group.clone());
            write(&group.join("tasks"), &tid.to_string())?;
        }
        Ok(caps)
    }
}

impl Drop for CpuCaps {
    fn drop(&mut self) {
        let root = Path::new(CPU_CONTROLLER).join("tasks");
        for group in &self.groups {
            if let Ok(tasks) = std::fs::read_to_string(group.join("tasks")) {
                for task in tasks.lines() {
                    let _ = std::fs::write(&root, task);
                }
            }
            let _ = std::fs::remove_dir(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_are_recognised_by_name() {
        assert_eq!(vcpu_index("CPU 0/TCG"), Some(0));
        assert_eq!(vcpu_index("CPU 12/KVM"), Some(12));
        assert_eq!(vcpu_index("qemu-system-x86"), None);
        assert_eq!(vcpu_index("CPU x/TCG"), None);
        assert_eq!(vcpu_index("CPU 1/"), None);
        assert_eq!(period_us(0.10), 10_000);
        assert_eq!(period_us(0.5), 2_000);
        assert_eq!(period_us(1.0), 1_000);
        let me = threads(std::process::id());
        assert!(!me.is_empty());
    }
}
