//! `qemu-smp experiment NAME [--quick] [--out DIR]`: the classic figures, each one command.
//!
//! An experiment is one file in this folder defining `pub const EXPERIMENT: Experiment` plus
//! its name in the [`experiments!`] list below. Running it ([`run`]) measures the load
//! generator's own ceiling on loopback (next to a plain one-syscall-per-packet client), calls
//! the experiment, checks that its table starts with the columns it declared, and writes
//! `DIR/NAME.csv`, `DIR/NAME.png` (drawn by the experiment with [`plot`]) and
//! `DIR/NAME.meta.json` (provenance: git commit, QEMU version and command lines, host CPU and
//! load, CPU caps, the generator's ceiling). See `docs/experiments.md`.

pub mod cgroup;
pub mod configuration;
pub mod csv;
pub mod guest;
pub mod plot;
mod provenance;
mod sweep;

use crate::linux_guest::LinuxGuest;
use guest::{Endpoint, Guest, System};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Declares the experiments: each name is a module (a file in this folder) that defines
/// `pub const EXPERIMENT: Experiment`. Adding an experiment = its file + its name here.
macro_rules! experiments {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*
        /// Every experiment, in `experiment list` order.
        pub const EXPERIMENTS: &[Experiment] = &[$($module::EXPERIMENT),*];
    };
}

experiments![urpc_matrix, livelock, isolation, latency_load, scaling];

/// One experiment.
pub struct Experiment {
    /// Its name on the command line and in file names.
    pub name: &'static str,
    /// One line: what it shows and which paper figure it reproduces.
    pub about: &'static str,
    /// The CSV columns it promises, in order (extra columns may follow).
    pub columns: &'static [&'static str],
    /// Runs it.
    pub run: fn(&mut Context) -> Result<Figure, ExperimentError>,
}

/// What an experiment produced (its PNG is already written to [`Context::png_path`]).
pub struct Figure {
    /// The rows.
    pub table: csv::Table,
    /// The one-line summary printed at the end.
    pub summary: String,
}

/// Why an experiment failed.
#[derive(Debug)]
pub enum ExperimentError {
    /// No experiment of that name.
    Unknown(String),
    /// Building, namespaces, caps, files.
    Setup(String),
    /// A guest misbehaved.
    Guest(String),
    /// The load generator failed.
    Load(loadgen::LoadError),
    /// The figure could not be drawn.
    Plot(plot::PlotError),
    /// The experiment's table does not have the columns it declared.
    Columns(String),
    /// This experiment cannot run against `--target`.
    NotRemote(String),
}

impl fmt::Display for ExperimentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(name) => write!(
                f,
                "no experiment named '{name}'; known: {}",
                EXPERIMENTS
                    .iter()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Setup(what) | Self::Guest(what) | Self::Columns(what) | Self::NotRemote(what) => {
                f.write_str(what)
            }
            Self::Load(e) => write!(f, "load generator: {e}"),
            Self::Plot(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ExperimentError {}

impl From<loadgen::LoadError> for ExperimentError {
    fn from(e: loadgen::LoadError) -> Self {
        Self::Load(e)
    }
}

impl From<csv::WidthError> for ExperimentError {
    fn from(e: csv::WidthError) -> Self {
        Self::Columns(format!(
            "a row of {} cells in a table of {} columns",
            e.cells, e.columns
        ))
    }
}

impl From<plot::PlotError> for ExperimentError {
    fn from(e: plot::PlotError) -> Self {
        Self::Plot(e)
    }
}

/// `qemu-smp experiment`'s arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ExperimentArgs {
    /// The experiment, or `list`.
    pub name: String,
    /// Short run (at most ~90 s, for CI) instead of the documented full run.
    #[arg(long)]
    pub quick: bool,
    /// Where the CSV, PNG and provenance files go.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run against a machine already running at this IPv4 address (Flotilla booted from the
    /// ISO on real hardware, or under KVM on a bigger host) instead of booting guests here.
    #[arg(long)]
    pub target: Option<Ipv4Addr>,
    /// With --target: the `system` column's value (e.g. flotilla or linux).
    #[arg(long, default_value = "target", requires = "target")]
    pub target_system: String,
    /// With --target: how many cores (NIC queues) the target serves with.
    #[arg(long, default_value_t = 1, requires = "target")]
    pub target_cores: u32,
    /// With --target: run the generator inside this network namespace.
    #[arg(long, requires = "target")]
    pub netns: Option<String>,
}

/// Settings every experiment reads.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick (CI) or full (docs) mode.
    pub quick: bool,
    /// Output folder.
    pub out: PathBuf,
    /// `--target`: the remote machine.
    pub target: Option<Ipv4Addr>,
    /// `--target-system`.
    pub target_system: String,
    /// `--target-cores`.
    pub target_cores: u32,
    /// `--netns`.
    pub netns: Option<String>,
}

impl Options {
    /// Quick mode into `out`, guests booted here.
    pub fn quick(out: &Path) -> Self {
        Self {
            quick: true,
            out: out.to_path_buf(),
            target: None,
            target_system: "target".into(),
            target_cores: 1,
            netns: None,
        }
    }
}

impl From<&ExperimentArgs> for Options {
    fn from(args: &ExperimentArgs) -> Self {
        Self {
            quick: args.quick,
            out: args.out.clone(),
            target: args.target,
            target_system: args.target_system.clone(),
            target_cores: args.target_cores.max(1),
            netns: args.netns.clone(),
        }
    }
}

/// The state of one experiment run, handed to the experiment.
pub struct Context {
    /// The settings.
    pub options: Options,
    /// The experiment's name.
    pub name: &'static str,
    /// The generator's ceiling, measured at the start of this run.
    pub ceiling: loadgen::Ceiling,
    progress: ProgressBar,
    provenance: provenance::Provenance,
    kernel: Option<PathBuf>,
    linux: Option<LinuxGuest>,
    flags: Vec<String>,
}

impl Context {
    /// Where the experiment draws its figure.
    pub fn png_path(&self) -> PathBuf {
        self.options.out.join(format!("{}.png", self.name))
    }

    /// Picks the quick or the full value.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.options.quick {
            quick
        } else {
            full
        }
    }

    /// The Flotilla kernel image (built once).
    pub fn kernel(&mut self) -> Result<PathBuf, ExperimentError> {
        if let Some(kernel) = &self.kernel {
            return Ok(kernel.clone());
        }
        self.progress.set_message("building the kernel");
        let kernel = crate::build_kernel().map_err(|e| ExperimentError::Setup(e.to_string()))?;
        self.kernel = Some(kernel.clone());
        Ok(kernel)
    }

    /// The Linux guest (built once from Debian packages).
    pub fn linux_guest(&mut self) -> Result<LinuxGuest, ExperimentError> {
        if let Some(linux) = &self.linux {
            return Ok(linux.clone());
        }
        self.progress.set_message("preparing the Linux guest");
        let linux =
            crate::linux_guest::prepare().map_err(|e| ExperimentError::Setup(e.to_string()))?;
        self.provenance.set(
            "linux_guest",
            format!(
                "{}; memcached {}; busybox-static; echod (linux-guest/echod.c, gcc -static)",
                linux.kernel_package, linux.memcached_version
            ),
        );
        self.linux = Some(linux.clone());
        Ok(linux)
    }

    /// Boots `system` with `cores` cores here (`extra_cmdline` for Flotilla), records its QEMU
    /// command line, and notes any option the kernel said it ignored.
    pub fn boot(
        &mut self,
        system: System,
        cores: u32,
        extra_cmdline: &str,
    ) -> Result<Guest, ExperimentError> {
        let kernel = self.kernel()?;
        let linux = match system {
            System::Linux => Some(self.linux_guest()?),
            System::Flotilla => None,
        };
        self.progress
            .set_message(format!("booting {} on {cores} cores", system.name()));
        let guest = Guest::boot(
            system,
            cores,
            extra_cmdline,
            &kernel,
            linux.as_ref(),
            Duration::from_secs(180),
        )?;
        self.provenance
            .push("qemu_command_lines", guest.qemu_command.clone());
        self.provenance.push(
            "boot_to_serving",
            format!(
                "{} {} cores: {:.2} s",
                system.name(),
                cores,
                guest.boot_to_serving.as_secs_f64()
            ),
        );
        // Give the console a moment to print option warnings that come after serving starts.
        for line in guest.ignored_options() {
            self.note(format!(
                "{} ({extra_cmdline}): the kernel said: {line}",
                system.name()
            ));
        }
        Ok(guest)
    }

    /// Caps each vCPU thread of `guest` at `share` of a host core and records it.
    pub fn cap(&mut self, guest: &mut Guest, share: f64) -> Result<(), ExperimentError> {
        let description = guest.cap_per_vcpu(share, self.name)?;
        self.provenance.push(
            "cpu_caps",
            format!(
                "{} {} cores: {description}",
                guest.system.name(),
                guest.cores
            ),
        );
        Ok(())
    }

    /// The endpoint of `--target`, if given.
    pub fn remote(&self) -> Result<Option<Endpoint>, ExperimentError> {
        match self.options.target {
            Some(address) => {
                guest::remote_endpoint(address, self.options.netns.as_deref()).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Sets the progress bar's length (steps of this run).
    pub fn steps(&self, total: u64) {
        self.progress.set_length(total);
    }

    /// Advances the progress bar with what is being measured now.
    pub fn step(&self, message: impl Into<String>) {
        self.progress.set_message(message.into());
        self.progress.inc(1);
    }

    /// A note that goes into the provenance file and is printed at the end.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.flags.contains(&note) {
            self.flags.push(note);
        }
    }

    /// Flags `rate` (per second) if it is within 10% of, or above, the generator's ceiling:
    /// such a figure measures the generator, not the guest. Returns whether it was flagged.
    pub fn check_ceiling(&mut self, rate: f64, what: &str) -> bool {
        let limit = 0.9
            * self
                .ceiling
                .generator_per_second
                .min(self.ceiling.offered_per_second.max(1.0));
        if rate >= limit {
            self.note(format!(
                "{what}: {:.0}/s is at or above 90% of the generator's loopback ceiling ({:.0}/s): it measures the generator",
                rate, limit / 0.9
            ));
            true
        } else {
            false
        }
    }

    /// Records a key/value in the provenance file.
    pub fn record(&mut self, key: &str, value: impl Into<String>) {
        self.provenance.set(key, value.into());
    }

    /// Appends a value to the list `key` of the provenance file.
    pub fn record_list(&mut self, key: &str, value: impl Into<String>) {
        self.provenance.push(key, value.into());
    }
}

/// Runs experiment `name` with `options`; returns the summary line.
pub fn run(name: &str, options: Options) -> Result<String, ExperimentError> {
    let experiment = EXPERIMENTS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ExperimentError::Unknown(name.to_string()))?;
    std::fs::create_dir_all(&options.out)
        .map_err(|e| ExperimentError::Setup(format!("{}: {e}", options.out.display())))?;
    let started = Instant::now();
    let mut provenance = provenance::Provenance::start(experiment.name, &options);
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("a valid template"),
        );
        bar.set_prefix(experiment.name);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    progress.set_message("measuring the generator's ceiling on loopback");
    let phase = if options.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let ceiling = loadgen::ceiling::measure(phase)?;
    progress.println(format!("{}: {ceiling}", experiment.name));
    if progress.is_hidden() {
        eprintln!("{}: {ceiling}", experiment.name);
    }
    provenance.set_ceiling(&ceiling);
    let mut context = Context {
        options,
        name: experiment.name,
        ceiling,
        progress,
        provenance,
        kernel: None,
        linux: None,
        flags: Vec::new(),
    };
    if ceiling.ratio() < 3.0 {
        context.note(format!(
            "the generator's ceiling is only {:.1}x the plain client's (the design asks for 3x): the host is loaded or the generator regressed",
            ceiling.ratio()
        ));
    }
    let figure = (experiment.run)(&mut context);
    context.progress.finish_and_clear();
    let figure = figure?;
    let header: Vec<&str> = figure.table.columns().iter().map(String::as_str).collect();
    if !header.starts_with(experiment.columns) {
        return Err(ExperimentError::Columns(format!(
            "{}: table columns {header:?} do not start with {:?}",
            experiment.name, experiment.columns
        )));
    }
    let csv_path = context.options.out.join(format!("{}.csv", experiment.name));
    figure
        .table
        .write(&csv_path)
        .map_err(|e| ExperimentError::Setup(format!("{}: {e}", csv_path.display())))?;
    let png = context.png_path();
    if !png.exists() {
        return Err(ExperimentError::Setup(format!(
            "{} drew no figure at {}",
            experiment.name,
            png.display()
        )));
    }
    for flag in &context.flags {
        eprintln!("{}: note: {flag}", experiment.name);
    }
    context.provenance.finish(
        started.elapsed(),
        &figure.summary,
        &context.flags,
        figure.table.rows().len(),
    );
    let meta_path = context
        .options
        .out
        .join(format!("{}.meta.json", experiment.name));
    context
        .provenance
        .write(&meta_path)
        .map_err(|e| ExperimentError::Setup(format!("{}: {e}", meta_path.display())))?;
    Ok(format!(
        "{}: {} ({} rows, {:.0} s; {})",
        experiment.name,
        figure.summary,
        figure.table.rows().len(),
        started.elapsed().as_secs_f64(),
        csv_path.display()
    ))
}

/// `qemu-smp experiment ...`: `list`, or run one experiment and print its summary.
pub fn command(args: &ExperimentArgs) -> Result<(), ExperimentError> {
    if args.name == "list" {
        for experiment in EXPERIMENTS {
            println!("{:<14} {}", experiment.name, experiment.about);
            println!("{:<14} columns: {}", "", experiment.columns.join(","));
        }
        return Ok(());
    }
    let summary = run(&args.name, Options::from(args))?;
    println!("{summary}");
    Ok(())
}
