//! `qemu-smp fuzz`: runs every coverage-guided fuzz target of `fuzz/` (cargo-fuzz and libFuzzer,
//! on the nightly toolchain; the project itself stays on stable) for a given time each, one after
//! another, one libFuzzer process at a time (this machine's cores are shared), and prints the
//! executions, time and executions per second of each. See `docs/fuzzing.md`.
//!
//! Before fuzzing it checks that the nightly toolchain and `cargo-fuzz` are there and installs
//! what is missing (`rustup toolchain install nightly`, `cargo install cargo-fuzz`), saying so.
//! Each target starts from its kept inputs (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`)
//! and grows its working corpus in `fuzz/corpus/<target>/` (not committed). A crash stops that
//! target (libFuzzer writes the input to `fuzz/artifacts/<target>/`); the others still run, and
//! the command fails at the end naming every crash.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// The executions every target should reach (issue 15's goal).
pub const GOAL_EXECUTIONS: u64 = 10_000_000;

/// glibc's allocator settings for the fuzz processes: large allocations stay on the heap and
/// freed memory is kept, so an input's buffers reuse the previous input's pages.
const GLIBC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824";

/// Options of `qemu-smp fuzz`.
#[derive(clap::Args, Clone, Debug)]
pub struct FuzzArgs {
    /// Minutes of fuzzing per target (fractions allowed, e.g. 0.5).
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Also stop a target after this many executions (0: only the time limit).
    #[arg(long, default_value_t = 0)]
    pub runs: u64,
    /// The sanitizer cargo-fuzz builds with: none (fastest; the fuzzed crates are safe Rust, and
    /// overflow checks and debug assertions stay on) or address.
    #[arg(long, value_enum, default_value_t = Sanitizer::None)]
    pub sanitizer: Sanitizer,
    /// Only list the targets.
    #[arg(long)]
    pub list: bool,
    /// Also write the figures as CSV (target, executions, seconds, executions per second,
    /// corpus, outcome).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Targets to run (default: every target in fuzz/Cargo.toml).
    pub targets: Vec<String>,
}

/// cargo-fuzz's `--sanitizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sanitizer {
    /// No sanitizer.
    None,
    /// AddressSanitizer.
    Address,
}

impl Sanitizer {
    fn flag(self) -> &'static str {
        match self {
            Sanitizer::None => "none",
            Sanitizer::Address => "address",
        }
    }
}

/// The targets a `fuzz/Cargo.toml` declares (its `[[bin]]` names), in file order.
pub fn targets_of(manifest: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = manifest
        .parse()
        .map_err(|error: toml::de::Error| format!("fuzz/Cargo.toml: {error}"))?;
    let bins = table
        .get("bin")
        .and_then(|bins| bins.as_array())
        .ok_or("fuzz/Cargo.toml declares no [[bin]] targets")?;
    bins.iter()
        .map(|bin| {
            bin.get("name")
                .and_then(|name| name.as_str())
                .map(str::to_owned)
                .ok_or_else(|| "a [[bin]] in fuzz/Cargo.toml has no name".to_owned())
        })
        .collect()
}

/// What libFuzzer reported at the end of a run (`-print_final_stats=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinalStats {
    /// `stat::number_of_executed_units`.
    pub executions: u64,
    /// `stat::average_exec_per_sec`.
    pub executions_per_second: u64,
    /// `stat::new_units_added`.
    pub new_units: u64,
    /// `stat::peak_rss_mb`.
    pub peak_rss_mb: u64,
}

/// Reads libFuzzer's final statistics from its output (`None` if it printed none).
pub fn parse_final_stats(output: &str) -> Option<FinalStats> {
    let mut stats = FinalStats::default();
    let mut seen = false;
    for line in output.lines() {
        let Some((key, value)) = line.trim().rsplit_once(':') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let field = match key.trim() {
            "stat::number_of_executed_units" => &mut stats.executions,
            "stat::average_exec_per_sec" => &mut stats.executions_per_second,
            "stat::new_units_added" => &mut stats.new_units,
            "stat::peak_rss_mb" => &mut stats.peak_rss_mb,
            _ => continue,
        };
        *field = value;
        seen = true;
    }
    seen.then_some(stats)
}

/// Where libFuzzer wrote a crashing, timing-out or leaking input (`Test unit written to PATH`).
pub fn parse_artifact(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        line.split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_owned())
    })
}

/// How one target's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The time (or run) limit came with no crash.
    Clean,
    /// libFuzzer stopped on an input, written here.
    Crash(String),
    /// The run failed without an input to show (build or harness error); the log says why.
    Failed(String),
}

struct TargetReport {
    target: String,
    stats: FinalStats,
    seconds: f64,
    corpus: usize,
    outcome: Outcome,
    log: PathBuf,
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The nightly toolchain and cargo-fuzz, installed if missing (saying so).
fn ensure_tools(root: &Path) -> Result<(), String> {
    let has_nightly = || {
        succeeds(
            Command::new("cargo")
                .args(["+nightly", "--version"])
                .current_dir(root),
        )
    };
    if !has_nightly() {
        println!(
            "qemu-smp fuzz: the nightly toolchain is missing (cargo-fuzz needs it; the project \
             itself builds on stable): running `rustup toolchain install nightly --profile minimal`"
        );
        let status = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .map_err(|error| {
                format!("rustup: {error}; install a nightly toolchain (https://rustup.rs) first")
            })?;
        if !status.success() || !has_nightly() {
            return Err("could not install the nightly toolchain: run \
                        `rustup toolchain install nightly --profile minimal`"
                .into());
        }
    }
    let has_cargo_fuzz = || {
        succeeds(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "--version"])
                .current_dir(root),
        )
    };
    if !has_cargo_fuzz() {
        println!(
            "qemu-smp fuzz: cargo-fuzz is not installed: running `cargo install cargo-fuzz` \
             (from crates.io, about a minute)"
        );
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz"])
            .status()
            .map_err(|error| format!("cargo install cargo-fuzz: {error}"))?;
        if !status.success() || !has_cargo_fuzz() {
            return Err("could not install cargo-fuzz: run `cargo install cargo-fuzz`".into());
        }
    }
    Ok(())
}

fn count_files(directory: &Path) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| entries.count())
}

/// Runs one target for `args.minutes`, its output to `log`.
fn run_target(root: &Path, target: &str, args: &FuzzArgs, log: &Path) -> TargetReport {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let _ = std::fs::create_dir_all(&corpus);
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--fuzz-dir",
            "fuzz",
            "--sanitizer",
        ])
        .arg(args.sanitizer.flag())
        .arg(target)
        .arg(&corpus);
    for kept in ["seeds", "regressions"] {
        let directory = fuzz.join(kept).join(target);
        if directory.is_dir() {
            command.arg(directory);
        }
    }
    let seconds = (args.minutes * 60.0).round().max(1.0) as u64;
    command.arg("--").args([
        format!("-max_total_time={seconds}"),
        "-print_final_stats=1".to_owned(),
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
    ]);
    if args.runs > 0 {
        command.arg(format!("-runs={}", args.runs));
    }
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // Keep glibc from mapping and unmapping the stacks' large buffers (socket buffers,
        // memcached's store) on every input: without it `core_net` spent three quarters of its
        // time in the kernel and ran five times slower.
        command.env("GLIBC_TUNABLES", GLIBC_TUNABLES);
    }
    let started = Instant::now();
    let output = command.stdin(Stdio::null()).output();
    let elapsed = started.elapsed().as_secs_f64();
    let (text, success) = match output {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            (text, output.status.success())
        }
        Err(error) => (format!("could not run cargo fuzz: {error}\n"), false),
    };
    let _ = std::fs::write(log, &text);
    let stats = parse_final_stats(&text).unwrap_or_default();
    let outcome = match (success, parse_artifact(&text)) {
        (true, _) => Outcome::Clean,
        (false, Some(artifact)) => Outcome::Crash(artifact),
        (false, None) => Outcome::Failed(
            text.lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("no output")
                .to_owned(),
        ),
    };
    TargetReport {
        target: target.to_owned(),
        stats,
        seconds: elapsed,
        corpus: count_files(&corpus),
        outcome,
        log: log.to_path_buf(),
    }
}

/// `qemu-smp fuzz`.
pub fn run(args: &FuzzArgs) -> ExitCode {
    let root = crate::workspace_root();
    let manifest = match std::fs::read_to_string(root.join("fuzz/Cargo.toml")) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("qemu-smp fuzz: fuzz/Cargo.toml: {error}");
            return ExitCode::FAILURE;
        }
    };
    let all = match targets_of(&manifest) {
        Ok(targets) => targets,
        Err(error) => {
            eprintln!("qemu-smp fuzz: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.list {
        for target in &all {
            println!("{target}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(unknown) = args.targets.iter().find(|target| !all.contains(target)) {
        eprintln!(
            "qemu-smp fuzz: no target named {unknown}; the targets: {}",
            all.join(", ")
        );
        return ExitCode::FAILURE;
    }
    if args.minutes.is_nan() || args.minutes <= 0.0 {
        eprintln!("qemu-smp fuzz: --minutes must be more than 0");
        return ExitCode::FAILURE;
    }
    let targets = if args.targets.is_empty() {
        all
    } else {
        args.targets.clone()
    };
    if let Err(error) = ensure_tools(&root) {
        eprintln!("qemu-smp fuzz: {error}");
        return ExitCode::FAILURE;
    }
    println!(
        "qemu-smp fuzz: building {} target(s) (cargo +nightly fuzz build, sanitizer {})",
        targets.len(),
        args.sanitizer.flag()
    );
    let built = Command::new("cargo")
        .current_dir(&root)
        .args([
            "+nightly",
            "fuzz",
            "build",
            "--fuzz-dir",
            "fuzz",
            "--sanitizer",
        ])
        .arg(args.sanitizer.flag())
        .status();
    if !built.is_ok_and(|status| status.success()) {
        eprintln!("qemu-smp fuzz: the fuzz targets did not build");
        return ExitCode::FAILURE;
    }
    let logs = root.join("fuzz/artifacts/logs");
    let _ = std::fs::create_dir_all(&logs);
    let mut reports = Vec::new();
    for target in &targets {
        let log = logs.join(format!("{target}.log"));
        println!(
            "qemu-smp fuzz: {target}: {} min, one process (log: {})",
            args.minutes,
            log.display()
        );
        let report = run_target(&root, target, args, &log);
        println!("  {}", line_of(&report));
        reports.push(report);
    }
    println!("\n{}", table(&reports));
    if let Some(path) = &args.csv {
        if let Err(error) = std::fs::write(path, csv(&reports)) {
            eprintln!("qemu-smp fuzz: {}: {error}", path.display());
        }
    }
    let failures: Vec<&TargetReport> = reports
        .iter()
        .filter(|report| report.outcome != Outcome::Clean)
        .collect();
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for report in failures {
        match &report.outcome {
            Outcome::Crash(artifact) => eprintln!(
                "qemu-smp fuzz: {} stopped on {artifact}: reproduce with `cargo +nightly fuzz run \
                 --fuzz-dir fuzz {} {artifact}`; once fixed keep it as fuzz/regressions/{}/NAME \
                 (the stable tests replay it)",
                report.target, report.target, report.target
            ),
            Outcome::Failed(last) => eprintln!(
                "qemu-smp fuzz: {} failed: {last} (log: {})",
                report.target,
                report.log.display()
            ),
            Outcome::Clean => {}
        }
    }
    ExitCode::FAILURE
}

fn outcome_text(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Clean => "clean",
        Outcome::Crash(_) => "CRASH",
        Outcome::Failed(_) => "FAILED",
    }
}

fn line_of(report: &TargetReport) -> String {
    let goal = if report.stats.executions >= GOAL_EXECUTIONS {
        ""
    } else {
        " (below the 10^7 goal)"
    };
    format!(
        "{}: {} executions in {:.0} s, {} exec/s, corpus {}, {}{goal}",
        report.target,
        report.stats.executions,
        report.seconds,
        report.stats.executions_per_second,
        report.corpus,
        outcome_text(&report.outcome)
    )
}

fn table(reports: &[TargetReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>14} {:>9} {:>10} {:>8}  outcome",
        "target", "executions", "seconds", "exec/s", "corpus"
    );
    for report in reports {
        let _ = writeln!(
            out,
            "{:<20} {:>14} {:>9.0} {:>10} {:>8}  {}",
            report.target,
            report.stats.executions,
            report.seconds,
            report.stats.executions_per_second,
            report.corpus,
            outcome_text(&report.outcome)
        );
    }
    out
}

fn csv(reports: &[TargetReport]) -> String {
    let mut out = String::from("target,executions,seconds,executions_per_second,corpus,outcome\n");
    for report in reports {
        let _ = writeln!(
            out,
            "{},{},{:.1},{},{},{}",
            report.target,
            report.stats.executions,
            report.seconds,
            report.stats.executions_per_second,
            report.corpus,
            outcome_text(&report.outcome)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_bins_of_the_fuzz_manifest() {
        let manifest = "[package]\nname = \"f\"\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n\
                        [[bin]]\nname = \"b\"\npath = \"b.rs\"\n";
        assert_eq!(targets_of(manifest).unwrap(), ["a", "b"]);
        assert!(targets_of("[package]\nname = \"f\"\n").is_err());
        let real =
            std::fs::read_to_string(crate::workspace_root().join("fuzz/Cargo.toml")).unwrap();
        let targets = targets_of(&real).unwrap();
        for target in &targets {
            assert!(
                crate::workspace_root()
                    .join("fuzz/fuzz_targets")
                    .join(format!("{target}.rs"))
                    .is_file(),
                "{target} has no source"
            );
            assert!(
                crate::workspace_root()
                    .join("fuzz/seeds")
                    .join(target)
                    .is_dir(),
                "{target} has no seeds (the stable tests replay them)"
            );
        }
        assert!(targets.len() >= 15, "{targets:?}");
    }

    #[test]
    fn final_stats_and_artifacts_are_read_from_libfuzzer_output() {
        let output = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                      Done 123456 runs in 2 second(s)\n\
                      stat::number_of_executed_units: 123456\n\
                      stat::average_exec_per_sec:     61728\n\
                      stat::new_units_added:          17\n\
                      stat::slowest_unit_time_sec:    0\n\
                      stat::peak_rss_mb:              41\n";
        assert_eq!(
            parse_final_stats(output),
            Some(FinalStats {
                executions: 123456,
                executions_per_second: 61728,
                new_units: 17,
                peak_rss_mb: 41
            })
        );
        assert_eq!(parse_final_stats("no stats here\n"), None);
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='fuzz/artifacts/classify/'; Test unit written to \
                     fuzz/artifacts/classify/crash-0123abcd\nBase64: AAA=\n";
        assert_eq!(
            parse_artifact(crash).as_deref(),
            Some("fuzz/artifacts/classify/crash-0123abcd")
        );
        assert_eq!(parse_artifact(output), None);
    }
}
