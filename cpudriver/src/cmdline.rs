//! The kernel command line: `key=value` words separated by spaces.
//!
//! The CPU driver reads its own options ([`KernelOptions`]); other subsystems read theirs with
//! [`Cmdline::get`]. An option the kernel does not know, or a value it cannot parse, is reported
//! by name and the default is used: a typo never stops the machine.
#![forbid(unsafe_code)]

/// A borrowed command line.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a>(pub &'a str);

impl<'a> Cmdline<'a> {
    /// All `(key, value)` pairs; a word without `=` has an empty value.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .split_ascii_whitespace()
            .map(|word| word.split_once('=').unwrap_or((word, "")))
    }

    /// The value of the last `key=...` word.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }
}

/// The log level option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

/// A deliberate fault, for testing that a fault on one core is contained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Invalid opcode (`ud2`): vector 6.
    InvalidOpcode,
    /// Page fault on an unmapped address: vector 14.
    PageFault,
    /// Divide error: vector 0.
    DivideError,
    /// Breakpoint (`int3`): vector 3.
    Breakpoint,
}

/// A fault to inject: which core, what kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInjection {
    /// The core that faults.
    pub core: u32,
    /// What it does.
    pub kind: FaultKind,
}

/// A hang to inject: the core stops answering (interrupts off, halted) after `after_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HangInjection {
    /// The core that hangs.
    pub core: u32,
    /// Milliseconds after it came online.
    pub after_ms: u32,
}

/// Options the CPU driver itself reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOptions {
    /// `log=error|warn|info|debug|trace` (default info).
    pub log: LogLevel,
    /// `fault=CORE:ud|pf|de|bp`: make one core fault after it comes online.
    pub fault: Option<FaultInjection>,
    /// `hang=CORE@MS`: make one core hang MS milliseconds after it comes online.
    pub hang: Option<HangInjection>,
    /// `tick_hz=N` (opt-in, 1..=10000): also wake every core N times a second whatever its
    /// deadlines say. Default 0: no periodic tick, the timer is programmed one-shot for the
    /// earliest deadline only.
    pub tick_hz: u32,
    /// `exit=ready`: end QEMU through isa-debug-exit once every core is online.
    pub exit_when_ready: bool,
    /// `urpc=off|matrix|matrix:ROUNDS|wake|wake:ROUNDS`: the URPC latency matrix at boot
    /// (default 200 rounds a pair; 0 = off).
    pub urpc_matrix_rounds: u32,
    /// `urpc=wake[:ROUNDS]`: after the polled matrix, the same walk with the pinged core halted
    /// between probes (its figure includes the IPI wake-up).
    pub urpc_matrix_wake: bool,
    /// `netd.report=MS`: every core prints its network counters every MS milliseconds (0: off).
    pub netd_report_ms: u32,
    /// `monitor.heartbeat_ms=N`: the monitors' heartbeat period (default 100, 1..=10000).
    pub heartbeat_ms: u32,
    /// `monitor.miss=K`: heartbeats missed in a row before a core is declared failed (default 5).
    pub missed_heartbeats: u32,
    /// `netd.move=GROUP:CORE@MS`: MS ms after the machine is complete, core 0 proposes moving
    /// flow group GROUP to CORE (an agreement round, then the NIC is reprogrammed).
    pub move_flow_group: Option<FlowGroupMove>,
    /// `bind=SERVER:CLIENT`: core SERVER registers the name `echo` with the monitors and core
    /// CLIENT binds to it; the two then ping over the channel the monitors set up.
    pub bind_demo: Option<(u32, u32)>,
    /// `poll_us=N`: after network traffic a core keeps polling this many microseconds before
    /// it halts (default 0: halt as soon as there is no work; interrupts only start polling).
    pub poll_after_traffic_us: u32,
}

/// A flow-group move asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowGroupMove {
    /// The redirection table entry.
    pub group: u16,
    /// The core that gets it.
    pub to: u32,
    /// Milliseconds after the machine is complete.
    pub after_ms: u32,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            log: LogLevel::Info,
            fault: None,
            hang: None,
            tick_hz: 0,
            exit_when_ready: false,
            urpc_matrix_rounds: 200,
            urpc_matrix_wake: false,
            netd_report_ms: 0,
            heartbeat_ms: 100,
            missed_heartbeats: 5,
            move_flow_group: None,
            bind_demo: None,
            poll_after_traffic_us: 0,
        }
    }
}

/// A problem with one command-line word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionError<'a> {
    /// The option's key.
    pub key: &'a str,
    /// Its value.
    pub value: &'a str,
    /// What was wrong.
    pub problem: OptionProblem,
}

/// What was wrong with an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionProblem {
    /// The value cannot be parsed; the default stays.
    BadValue,
    /// No subsystem knows this key.
    UnknownOption,
}

/// Keys other subsystems own; the CPU driver does not warn about them.
pub const FOREIGN_KEYS: &[&str] = &["ip", "gw", "time", "memcached.mem"];

/// Prefix of netd's options; those the kernel does not read itself are left to netd's parser.
pub const NETD_PREFIX: &str = "netd.";

impl KernelOptions {
    /// Parses the CPU driver's options; every problem is passed to `report`.
    pub fn parse<'a>(cmdline: Cmdline<'a>, mut report: impl FnMut(OptionError<'a>)) -> Self {
        let mut options = Self::default();
        for (key, value) in cmdline.pairs() {
            let ok = match key {
                "log" => parse_level(value)
                    .map(|level| options.log = level)
                    .is_some(),
                "fault" => parse_fault(value)
                    .map(|fault| options.fault = Some(fault))
                    .is_some(),
                "hang" => parse_hang(value)
                    .map(|hang| options.hang = Some(hang))
                    .is_some(),
                "tick_hz" => value
                    .parse::<u32>()
                    .ok()
                    .filter(|hz| (1..=10_000).contains(hz))
                    .map(|hz| options.tick_hz = hz)
                    .is_some(),
                "exit" => (value == "ready")
                    .then(|| options.exit_when_ready = true)
                    .is_some(),
                "netd.report" => value
                    .parse::<u32>()
                    .ok()
                    .filter(|ms| *ms >= 10)
                    .map(|ms| options.netd_report_ms = ms)
                    .is_some(),
                "monitor.heartbeat_ms" => value
                    .parse::<u32>()
                    .ok()
                    .filter(|ms| (1..=10_000).contains(ms))
                    .map(|ms| options.heartbeat_ms = ms)
                    .is_some(),
                "monitor.miss" => value
                    .parse::<u32>()
                    .ok()
                    .filter(|k| (1..=1000).contains(k))
                    .map(|k| options.missed_heartbeats = k)
                    .is_some(),
                "poll_us" => value
                    .parse::<u32>()
                    .ok()
                    .filter(|us| *us <= 1_000_000)
                    .map(|us| options.poll_after_traffic_us = us)
                    .is_some(),
                "bind" => value
                    .split_once(':')
                    .and_then(|(server, client)| Some((server.parse().ok()?, client.parse().ok()?)))
                    .filter(|(server, client)| server != client)
                    .map(|pair| options.bind_demo = Some(pair))
                    .is_some(),
                "netd.move" => parse_move(value)
                    .map(|request| options.move_flow_group = Some(request))
                    .is_some(),
                "urpc" => parse_urpc(value)
                    .map(|(rounds, wake)| {
                        options.urpc_matrix_rounds = rounds;
                        options.urpc_matrix_wake = wake;
                    })
                    .is_some(),
                _ if FOREIGN_KEYS.contains(&key) => true,
                // netd's own options (netd.mode, netd.lrp, ...): netd's parser checks them and
                // names a bad one.
                _ if key.starts_with(NETD_PREFIX) => true,
                _ => {
                    report(OptionError {
                        key,
                        value,
                        problem: OptionProblem::UnknownOption,
                    });
                    continue;
                }
            };
            if !ok {
                report(OptionError {
                    key,
                    value,
                    problem: OptionProblem::BadValue,
                });
            }
        }
        options
    }
}

fn parse_level(value: &str) -> Option<LogLevel> {
    Some(match value {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

fn parse_move(value: &str) -> Option<FlowGroupMove> {
    let (group, rest) = value.split_once(':')?;
    let (to, after) = rest.split_once('@')?;
    let group: u16 = group.parse().ok().filter(|g| *g < 128)?;
    Some(FlowGroupMove {
        group,
        to: to.parse().ok()?,
        after_ms: after.parse().ok()?,
    })
}

fn parse_urpc(value: &str) -> Option<(u32, bool)> {
    let (mode, rounds) = match value.split_once(':') {
        Some((mode, rounds)) => (
            mode,
            rounds.parse().ok().filter(|r| (1..=100_000).contains(r))?,
        ),
        None => (value, 200),
    };
    match mode {
        "off" if value == "off" => Some((0, false)),
        "matrix" => Some((rounds, false)),
        "wake" => Some((rounds, true)),
        _ => None,
    }
}

fn parse_fault(value: &str) -> Option<FaultInjection> {
    let (core, kind) = value.split_once(':')?;
    let kind = match kind {
        "ud" => FaultKind::InvalidOpcode,
        "pf" => FaultKind::PageFault,
        "de" => FaultKind::DivideError,
        "bp" => FaultKind::Breakpoint,
        _ => return None,
    };
    Some(FaultInjection {
        core: core.parse().ok()?,
        kind,
    })
}

fn parse_hang(value: &str) -> Option<HangInjection> {
    let (core, after) = value.split_once('@')?;
    Some(HangInjection {
        core: core.parse().ok()?,
        after_ms: after.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_defaults_hold() {
        let mut errors = std::vec::Vec::new();
        let options = KernelOptions::parse(
            Cmdline("log=debug fault=2:ud hang=3@500 tick_hz=250 ip=10.0.0.2/24 exit=ready urpc=matrix:50"),
            |e| errors.push(e),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(options.log, LogLevel::Debug);
        assert_eq!(
            options.fault,
            Some(FaultInjection {
                core: 2,
                kind: FaultKind::InvalidOpcode
            })
        );
        assert_eq!(
            options.hang,
            Some(HangInjection {
                core: 3,
                after_ms: 500
            })
        );
        assert_eq!(options.tick_hz, 250);
        assert!(options.exit_when_ready);
        assert_eq!(options.urpc_matrix_rounds, 50);
        assert!(!options.urpc_matrix_wake);
        let wake = KernelOptions::parse(Cmdline("urpc=wake:30"), |e| panic!("{e:?}"));
        assert_eq!((wake.urpc_matrix_rounds, wake.urpc_matrix_wake), (30, true));
        assert_eq!(
            KernelOptions::default().tick_hz,
            0,
            "no periodic tick by default"
        );
        let moved = KernelOptions::parse(
            Cmdline("netd.move=5:2@300 monitor.heartbeat_ms=20 monitor.miss=3"),
            |e| panic!("{e:?}"),
        );
        assert_eq!(
            moved.move_flow_group,
            Some(FlowGroupMove {
                group: 5,
                to: 2,
                after_ms: 300
            })
        );
        assert_eq!((moved.heartbeat_ms, moved.missed_heartbeats), (20, 3));
        assert_eq!(
            KernelOptions::parse(Cmdline("bind=1:3"), |e| panic!("{e:?}")).bind_demo,
            Some((1, 3))
        );
        let mut errors = 0;
        let _ = KernelOptions::parse(Cmdline("netd.move=200:1@5"), |_| errors += 1);
        assert_eq!(errors, 1, "flow group 200 does not exist");
        // netd's own options pass the kernel by; netd names a bad one itself.
        let _ = KernelOptions::parse(Cmdline("netd.mode=interrupt netd.lrp=off"), |e| {
            panic!("{e:?}")
        });
        assert_eq!(
            KernelOptions::parse(Cmdline("urpc=off"), |_| panic!()).urpc_matrix_rounds,
            0
        );
        assert_eq!(
            KernelOptions::parse(Cmdline(""), |_| panic!()),
            KernelOptions::default()
        );
    }

    #[test]
    fn bad_and_unknown_options_are_named_and_defaults_kept() {
        let mut errors = std::vec::Vec::new();
        let options =
            KernelOptions::parse(Cmdline("log=loud tick_hz=0 fault=x:ud colour=red"), |e| {
                errors.push(e)
            });
        assert_eq!(options, KernelOptions::default());
        let keys: std::vec::Vec<_> = errors.iter().map(|e| (e.key, e.problem)).collect();
        assert_eq!(
            keys,
            [
                ("log", OptionProblem::BadValue),
                ("tick_hz", OptionProblem::BadValue),
                ("fault", OptionProblem::BadValue),
                ("colour", OptionProblem::UnknownOption)
            ]
        );
    }

    #[test]
    fn get_returns_last_value() {
        let line = Cmdline("ip=1.2.3.4/8 flag ip=5.6.7.8/16");
        assert_eq!(line.get("ip"), Some("5.6.7.8/16"));
        assert_eq!(line.get("flag"), Some(""));
        assert_eq!(line.get("gw"), None);
    }
}
