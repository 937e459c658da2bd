//! Entry points of the coverage-guided fuzz targets over the monitor (`fuzz/`, built with
//! cargo-fuzz), kept here so that the stable test suite replays the same code on the kept inputs
//! (`fuzz/regressions/`, `fuzz/seeds/`). Host tooling only: compiled for tests and with the
//! `fuzzing` feature, never into the kernel. See `docs/fuzzing.md`.

use crate::{
    Change, Config, CoreId, CoreInfo, CoreSet, Hooks, Instant, Message, Monitor, Name, Outbox,
    Protocol, Region, Vote, COUNTERS, MESSAGE_BYTES,
};

/// `monitor_message`: bytes decoded as a monitor [`Message`]. What decodes must encode back to
/// the same bytes (the decoder accepts only zero padding after a message) and decode again to
/// the same message.
pub fn message(data: &[u8]) {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let mut slot = [0u8; MESSAGE_BYTES];
    let length = message.encode(&mut slot);
    assert!(
        length <= data.len(),
        "{message:?} encodes longer than its input"
    );
    assert_eq!(
        &slot[..length],
        &data[..length],
        "{message:?} re-encodes differently"
    );
    assert!(data[length..].iter().all(|&byte| byte == 0));
    assert_eq!(Message::decode(&slot[..length]), Ok(message));
}

/// The input, read front to back; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, count: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(count.min(self.0.len()));
        self.0 = rest;
        taken
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hooks that vote as the input says, hand out regions from a bounded range and count.
struct FuzzHooks {
    next_region: u64,
    veto: bool,
}

impl Hooks for FuzzHooks {
    fn vote(&mut self, _change: &Change) -> Vote {
        if self.veto {
            Vote::No
        } else {
            Vote::Yes
        }
    }
    fn allocate_region(&mut self, len: u64) -> Option<Region> {
        if self.next_region + len > 1 << 24 {
            return None;
        }
        let region = Region {
            base: self.next_region,
            len,
        };
        self.next_region += len;
        Some(region)
    }
    fn free_region(&mut self, _region: Region) {}
    fn counters(&mut self) -> [u64; COUNTERS] {
        [7; COUNTERS]
    }
}

/// Checks every message the monitor sends: never to itself, only to cores of the machine, and
/// encodable into one slot.
struct CheckedOutbox {
    me: CoreId,
    expected: CoreSet,
}

impl Outbox for CheckedOutbox {
    fn send(&mut self, to: CoreId, message: Message) {
        assert_ne!(to, self.me, "{message:?} sent to its own core");
        assert!(
            self.expected.contains(to),
            "{message:?} sent to {to:?} outside the machine"
        );
        let mut slot = [0u8; MESSAGE_BYTES];
        let length = message.encode(&mut slot);
        assert_eq!(Message::decode(&slot[..length]), Ok(message));
    }
}

/// `monitor_handle`: one monitor of a machine of 2..=8 cores, driven by the input as the kernel
/// drives it, with the other cores' monitors replaced by whatever the input says they send.
/// Input: the machine size and this core's number, then operations: deliver message bytes from
/// a peer, let time pass and tick, begin an agreement, register a name, bind to one, gather
/// statistics, flip the local vote. The monitor must not panic, must only send to other cores of
/// the machine, and must keep its leader among the live cores.
pub fn monitor(data: &[u8]) {
    let mut input = Input(data);
    let cores = 2 + usize::from(input.u8() % 7);
    let me = CoreId::new(input.u8() % cores as u8).expect("below MAX_CORES");
    let expected = CoreSet::first(cores);
    let mut config = Config::new(me, expected);
    config.boot_timeout_ns = 50_000_000;
    let info = CoreInfo {
        core: me,
        apic_id: u32::from(me.as_u8()),
        numa_node: 0,
        memory: Region {
            base: 1 << 32,
            len: 1 << 30,
        },
    };
    let hooks = FuzzHooks {
        next_region: 1 << 20,
        veto: false,
    };
    let mut now = Instant::from_nanos(1_000_000);
    let mut monitor = Monitor::new(config, info, hooks, now).expect("a valid configuration");
    let mut out = CheckedOutbox { me, expected };
    monitor.tick(now, &mut out);
    let mut operations = 0;
    while !input.is_empty() && operations < 4096 {
        operations += 1;
        match input.u8() % 8 {
            0..=2 => {
                let from = CoreId::new(input.u8() % cores as u8).expect("below MAX_CORES");
                let length = usize::from(input.u8()) % (MESSAGE_BYTES + 1);
                let bytes = input.bytes(length);
                if from != me {
                    let _ = monitor.handle_bytes(now, from, bytes, &mut out);
                }
            }
            3 => {
                now = now.after(u64::from(input.u16()) * 10_000);
                monitor.tick(now, &mut out);
            }
            4 => {
                let group = input.u16() % 160;
                let from = CoreId::new(input.u8() % cores as u8).expect("below MAX_CORES");
                let to = CoreId::new(input.u8() % cores as u8).expect("below MAX_CORES");
                let port = input.u16();
                let change = match input.u8() % 3 {
                    0 => Change::MoveFlowGroup { group, from, to },
                    1 => Change::OpenPort {
                        proto: Protocol::Tcp,
                        port,
                    },
                    _ => Change::ClosePort {
                        proto: Protocol::Udp,
                        port,
                    },
                };
                let _ = monitor.begin_agreement(now, change, &mut out);
            }
            5 => {
                let length = 1 + usize::from(input.u8() % 4);
                if let Ok(name) = Name::new(input.bytes(length)) {
                    if input.u8() % 2 == 0 {
                        let _ = monitor.register_name(now, name, &mut out);
                    } else {
                        let _ = monitor.bind(now, name, &mut out);
                    }
                }
            }
            6 => {
                let _ = monitor.request_stats(now, &mut out);
            }
            _ => {
                let veto = input.u8() % 2 == 1;
                monitor.hooks_mut().veto = veto;
            }
        }
        while monitor.poll_event().is_some() {}
        if !monitor.is_fenced() {
            let leader = monitor.leader();
            assert!(
                monitor.live().contains(leader) || monitor.live().is_empty(),
                "leader {leader:?} is not live"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::path::PathBuf;
    use std::vec::Vec;

    /// Every kept input of `target` (`fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`),
    /// with its path; the seeds must exist (a renamed target must not skip its replay silently).
    fn kept_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut inputs = Vec::new();
        for kind in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("readable directory").path();
                let bytes = std::fs::read(&path).expect("readable input");
                inputs.push((path, bytes));
            }
        }
        inputs.sort();
        assert!(
            inputs
                .iter()
                .any(|(path, _)| path.components().any(|c| c.as_os_str() == "seeds")),
            "no seeds for fuzz target {target} under {}",
            fuzz.display()
        );
        inputs
    }

    #[test]
    fn monitor_message_inputs_replay() {
        for (path, bytes) in kept_inputs("monitor_message") {
            std::eprintln!("replaying {}", path.display());
            super::message(&bytes);
        }
    }

    #[test]
    fn monitor_handle_inputs_replay() {
        for (path, bytes) in kept_inputs("monitor_handle") {
            std::eprintln!("replaying {}", path.display());
            super::monitor(&bytes);
        }
    }
}
