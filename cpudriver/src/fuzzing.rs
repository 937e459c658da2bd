//! Entry points of the coverage-guided fuzz targets over the CPU driver's parsers (`fuzz/`, built
//! with cargo-fuzz), kept here so that the stable test suite replays the same code on the kept
//! inputs (`fuzz/regressions/`, `fuzz/seeds/`). Host tooling only: compiled for tests and with
//! the `fuzzing` feature, never into the kernel. See `docs/fuzzing.md`.
#![forbid(unsafe_code)]

use crate::boot_info::{parse_multiboot2, parse_pvh, PhysicalMemory};
use crate::cmdline::{Cmdline, KernelOptions};
use crate::node::framing::{Body, Family, KernelMessage, Letter};
use crate::topology::parse_srat;
use crate::wall_clock::boot_time;
use urpc::{Message, Payload, RegionId, RegionTable, SharedRegion, PAYLOAD_SIZE};

/// `framing`: one slot payload decoded as a [`Letter`] against four cores' bulk regions, then
/// its inline body decoded by its family (monitor message, netd peer message, kernel message).
/// Input: the payload (zero-filled or cut to 56 bytes). What decodes must encode back to the
/// same payload; a kernel message must encode back to its body.
pub fn framing(data: &[u8]) {
    const REGIONS: [SharedRegion; 4] = [
        SharedRegion {
            id: RegionId(0),
            length: 1 << 20,
        },
        SharedRegion {
            id: RegionId(1),
            length: 1 << 20,
        },
        SharedRegion {
            id: RegionId(2),
            length: 4096,
        },
        SharedRegion {
            id: RegionId(3),
            length: 0,
        },
    ];
    let mut payload: Payload = [0; PAYLOAD_SIZE];
    let length = data.len().min(PAYLOAD_SIZE);
    payload[..length].copy_from_slice(&data[..length]);
    let bulk = Letter::is_bulk(&payload);
    let Ok(letter) = Letter::decode(&payload, &RegionTable::new(&REGIONS)) else {
        return;
    };
    let mut again: Payload = [0; PAYLOAD_SIZE];
    letter.encode(&mut again);
    assert_eq!(
        again, payload,
        "{letter:?} does not encode to the bytes it came from"
    );
    assert_eq!(bulk, matches!(letter.body, Body::Bulk { .. }));
    let Body::Inline(body) = letter.body else {
        return;
    };
    match letter.family {
        Family::Monitor => {
            let _ = monitor::Message::decode(body.as_slice());
        }
        Family::Net => {
            let _ = netd::PeerMessage::decode(body.as_slice());
        }
        Family::Kernel => {
            if let Ok(message) = KernelMessage::decode(body.as_slice()) {
                assert_eq!(message.encode().as_slice(), body.as_slice(), "{message:?}");
            }
        }
    }
}

/// Physical memory made of one range of the input at a base address.
struct Memory<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl PhysicalMemory for Memory<'_> {
    fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(address.checked_sub(self.base)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

/// `boot_info`: the loader's boot information (PVH `hvm_start_info` or Multiboot2 tags) in
/// physical memory the input fills. Input: the protocol (bit 0), the structure's offset in the
/// memory (u16), the memory's base address (u64, cut to x86_64's 52 physical address bits: no
/// machine has memory near 2^64), then the memory's bytes. What parses is
/// consistent: regions run forwards, the command line is ASCII, the structure's range starts at
/// its address.
pub fn boot_info(data: &[u8]) {
    if data.len() < 11 {
        return;
    }
    let protocol = data[0];
    let offset = u64::from(u16::from_le_bytes([data[1], data[2]]));
    let mut base = [0u8; 8];
    base.copy_from_slice(&data[3..11]);
    let memory = Memory {
        base: u64::from_le_bytes(base) & ((1 << 52) - 1),
        bytes: &data[11..],
    };
    let address = memory.base.saturating_add(offset);
    let parsed = if protocol & 1 == 0 {
        parse_pvh(&memory, address)
    } else {
        parse_multiboot2(&memory, address)
    };
    let Ok(info) = parsed else {
        return;
    };
    assert_eq!(info.info_range.0, address);
    assert!(info.info_range.1 >= info.info_range.0);
    assert!(info.cmdline.is_ascii());
    for region in &info.memory {
        assert!(region.start <= region.end, "{region:?}");
    }
}

/// `srat`: an ACPI SRAT's bytes. What parses names enabled entries only, ranges run forwards.
pub fn srat(data: &[u8]) {
    let Ok(info) = parse_srat(data) else {
        return;
    };
    for (range, _) in &info.memory {
        assert!(range.start <= range.end, "{range:?}");
    }
    for (apic, _) in &info.cores {
        let _ = info.node_of(*apic);
    }
}

/// `command_line`: a kernel command line as the kernel reads it: its own options (every problem
/// named by a word of the line), `time=`, then netd's readers and a stack built from them
/// (`netd::fuzzing::command_line`).
pub fn command_line(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let line = Cmdline(text);
    let _ = KernelOptions::parse(line, |error| {
        assert!(
            line.pairs()
                .any(|(key, value)| key == error.key && value == error.value),
            "{error:?} names no word of the line"
        );
    });
    let _ = boot_time(line.get("time"), || None);
    netd::fuzzing::command_line(data);
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

    fn replay(target: &str, harness: fn(&[u8])) {
        for (path, bytes) in kept_inputs(target) {
            std::eprintln!("replaying {}", path.display());
            harness(&bytes);
        }
    }

    #[test]
    fn framing_inputs_replay() {
        replay("framing", super::framing);
    }

    #[test]
    fn boot_info_inputs_replay() {
        replay("boot_info", super::boot_info);
    }

    #[test]
    fn srat_inputs_replay() {
        replay("srat", super::srat);
    }

    #[test]
    fn command_line_inputs_replay() {
        replay("command_line", super::command_line);
    }
}
