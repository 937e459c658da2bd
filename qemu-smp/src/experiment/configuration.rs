//! The configurations an experiment measures one after the other (a system, a mode, the kernel
//! options that make the mode), and reaching each: a guest booted here and capped, or the one
//! machine of `--target`. What every sweep experiment did the same way before its own loop.

use super::csv::Cell;
use super::guest::{Endpoint, Guest, System};
use super::{Context, ExperimentError};

/// One configuration: the rows of one (`system`, `mode`).
#[derive(Clone, Copy, Debug)]
pub struct Configuration {
    /// Which system boots.
    pub system: System,
    /// The `mode` column's value.
    pub mode: &'static str,
    /// Kernel options that select the mode (Flotilla only; empty for the default).
    pub cmdline: &'static str,
}

/// What one pass of an experiment measures: a configuration booted here, or `--target`.
#[derive(Clone, Debug)]
pub struct Run {
    /// The `system` column's value.
    pub system: String,
    /// The `mode` column's value.
    pub mode: String,
    /// The configuration to boot (`None` with `--target`).
    pub configuration: Option<Configuration>,
}

impl Run {
    /// `system/mode`, for progress lines and notes.
    pub fn label(&self) -> String {
        format!("{}/{}", self.system, self.mode)
    }
}

/// A machine being measured: where the load goes and what its rows say about it.
pub struct Target {
    /// Where the load goes.
    pub endpoint: Endpoint,
    /// Receive queues (= cores) the flows are spread over.
    pub queues: u32,
    /// The `guest_cpu_limit` / `vcpu_share` cell: the share, or `uncapped` for `--target`.
    pub limit: Cell,
    /// Non-empty when the kernel ignored the mode's options (the rows repeat the default).
    pub note: String,
    /// The guest booted for this run (`None` with `--target`); stopped when dropped.
    pub guest: Option<Guest>,
}

/// Flotilla and Linux, each in its default mode (`mode=default`).
pub const DEFAULTS: [Configuration; 2] = [
    Configuration {
        system: System::Flotilla,
        mode: "default",
        cmdline: "",
    },
    Configuration {
        system: System::Linux,
        mode: "default",
        cmdline: "",
    },
];

/// The monitors' heartbeat period the experiments keep (the kernel's default).
pub const HEARTBEAT_MS: u32 = 100;
/// Heartbeats a core may miss before it is declared failed, uncapped (the kernel's default).
pub const MISSES_UNCAPPED: u32 = 5;

/// The failure detector's settings for a guest whose vCPUs get `share` of a host core:
/// `monitor.heartbeat_ms=100 monitor.miss=⌈5 / share⌉` (50 at 10%, 10 at 50%). A capped guest
/// runs 1/share times slower in wall-clock time, and the detector's timeout is wall-clock: the
/// default 100 ms × 5 = 500 ms then covers only 50 ms of a 10% vCPU's work. Measured at a 10%
/// cap under memcached overload with the defaults: a live core was declared failed in two of
/// three runs, 3.7 and 12 s into the overload, while the cores' outboxes were full (thousands of
/// `outbox_full` refusals: monitor letters share the outbox with memcached's, and a full
/// outbox drops a heartbeat); with 50 misses, in none. The heartbeat period itself stays (idle
/// cores wake at it). See `docs/experiments.md`.
pub fn monitor_options(share: f64) -> String {
    let misses = (f64::from(MISSES_UNCAPPED) / share.clamp(0.01, 1.0)).ceil() as u32;
    format!(
        "monitor.heartbeat_ms={HEARTBEAT_MS} monitor.miss={}",
        misses.max(MISSES_UNCAPPED)
    )
}

impl Context {
    /// The runs of `configurations`: each one here, or the single `--target` machine (whose
    /// rows carry `--target-system` and mode `target`).
    pub fn runs(&self, configurations: &[Configuration]) -> Vec<Run> {
        match self.options.target {
            Some(_) => vec![Run {
                system: self.options.target_system.clone(),
                mode: "target".into(),
                configuration: None,
            }],
            None => configurations
                .iter()
                .map(|configuration| Run {
                    system: configuration.system.name().into(),
                    mode: configuration.mode.into(),
                    configuration: Some(*configuration),
                })
                .collect(),
        }
    }

    /// Boots `run`'s configuration on `cores` cores and caps each vCPU at `share` of a host
    /// core (or reaches `--target`, uncapped), then notes whether the kernel ignored the mode's
    /// options. Flotilla gets the failure detector's settings for `share` ([`monitor_options`]:
    /// give the smallest share the run will use). One progress step.
    pub fn reach(&mut self, run: &Run, cores: u32, share: f64) -> Result<Target, ExperimentError> {
        let Some(configuration) = run.configuration else {
            let endpoint = self.remote()?.ok_or_else(|| {
                ExperimentError::Setup("a run without a configuration needs --target".into())
            })?;
            return Ok(Target {
                endpoint,
                queues: self.options.target_cores,
                limit: "uncapped".into(),
                note: String::new(),
                guest: None,
            });
        };
        self.step(format!("booting {}", run.label()));
        let cmdline = match configuration.system {
            System::Flotilla => format!("{} {}", configuration.cmdline, monitor_options(share)),
            System::Linux => String::new(),
        };
        let mut guest = self.boot(configuration.system, cores, cmdline.trim())?;
        self.cap(&mut guest, share)?;
        let note = if guest.ignored_options().is_empty() {
            String::new()
        } else {
            format!(
                "{} not implemented by this kernel (ignored): same as the default",
                configuration.cmdline
            )
        };
        if !note.is_empty() {
            self.note(format!("{}: {note}", run.label()));
        }
        Ok(Target {
            endpoint: guest.endpoint.clone(),
            queues: cores,
            limit: share.into(),
            note,
            guest: Some(guest),
        })
    }

    /// Caps `target`'s vCPUs at `share` instead, unless they are capped so already (a guest
    /// booted here; `--target` stays uncapped), and updates its limit cell.
    pub fn recap(&mut self, target: &mut Target, share: f64) -> Result<(), ExperimentError> {
        if target.limit == Cell::from(share) {
            return Ok(());
        }
        if let Some(guest) = target.guest.as_mut() {
            self.cap(guest, share)?;
            target.limit = share.into();
        }
        Ok(())
    }

    /// Ends a run: notes a failure the guest's console reported, then stops the guest.
    pub fn finish(&mut self, run: &Run, target: Target) {
        if let Some(guest) = target.guest.as_ref() {
            if let Some(failure) = guest.failure() {
                self.note(format!("{}: the console reported: {failure}", run.label()));
            }
            for verdict in guest.failure_verdicts() {
                self.note(format!("{}: {verdict}", run.label()));
            }
        }
    }

    /// The caption of a figure's cap: `uncapped` with `--target`, else the share per vCPU.
    pub fn cap_text(&self, share: f64) -> String {
        match self.options.target {
            Some(_) => "uncapped".into(),
            None => format!("each vCPU capped at {:.0}% of a host core", share * 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_timeout_grows_as_the_cap_shrinks() {
        assert_eq!(
            monitor_options(0.1),
            "monitor.heartbeat_ms=100 monitor.miss=50"
        );
        assert_eq!(
            monitor_options(0.5),
            "monitor.heartbeat_ms=100 monitor.miss=10"
        );
        assert_eq!(
            monitor_options(1.0),
            "monitor.heartbeat_ms=100 monitor.miss=5"
        );
        // Never below the kernel's default, whatever the share.
        assert_eq!(
            monitor_options(4.0),
            "monitor.heartbeat_ms=100 monitor.miss=5"
        );
    }
}
