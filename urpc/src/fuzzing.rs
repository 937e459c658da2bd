//! Entry points of the coverage-guided fuzz targets over urpc's decoders (`fuzz/`, built with
//! cargo-fuzz), kept here so that the stable test suite replays the same code on the kept inputs
//! (`fuzz/regressions/`, `fuzz/seeds/`). Host tooling only: compiled for tests and with the
//! `fuzzing` feature, never into the kernel. See `docs/fuzzing.md`.

use crate::channel::{Payload, PAYLOAD_SIZE};
use crate::message::{CoreMessage, Message, RegionId, RegionTable, SharedRegion};

/// `urpc_message`: one slot payload decoded as a [`CoreMessage`] against a region table the input
/// describes. Input: one byte giving how many regions (0..=3), 10 bytes per region (id u16 and
/// length u64, little-endian), then the payload (zero-filled or cut to 56 bytes). Whatever
/// decodes must encode back to the very same payload (the decoder rejects what it cannot
/// represent), and a decoded buffer handle must lie inside its region.
pub fn core_message(data: &[u8]) {
    let (count, mut rest) = match data.split_first() {
        Some((count, rest)) => (usize::from(*count % 4), rest),
        None => return,
    };
    let mut regions = [SharedRegion {
        id: RegionId(0),
        length: 0,
    }; 3];
    for region in regions.iter_mut().take(count) {
        let Some((entry, tail)) = rest.split_first_chunk::<10>() else {
            return;
        };
        *region = SharedRegion {
            id: RegionId(u16::from_le_bytes([entry[0], entry[1]])),
            length: u64::from_le_bytes([
                entry[2], entry[3], entry[4], entry[5], entry[6], entry[7], entry[8], entry[9],
            ]),
        };
        rest = tail;
    }
    let table = RegionTable::new(&regions[..count]);
    let mut payload: Payload = [0; PAYLOAD_SIZE];
    let length = rest.len().min(PAYLOAD_SIZE);
    payload[..length].copy_from_slice(&rest[..length]);
    let Ok(message) = CoreMessage::decode(&payload, &table) else {
        return;
    };
    let mut again: Payload = [0; PAYLOAD_SIZE];
    message.encode(&mut again);
    assert_eq!(
        again, payload,
        "{message:?} does not encode to the bytes it came from"
    );
    match message {
        CoreMessage::Buffer { handle, .. } => {
            let region = regions[..count]
                .iter()
                .find(|region| region.id == handle.region())
                .expect("a decoded handle names a known region");
            assert!(
                handle.range().end <= region.length,
                "{handle:?} outside {region:?}"
            );
        }
        CoreMessage::Inline(bytes) => assert!(bytes.as_slice().len() <= PAYLOAD_SIZE - 2),
        CoreMessage::Ping { .. } | CoreMessage::Pong { .. } => {}
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
    fn urpc_message_inputs_replay() {
        for (path, bytes) in kept_inputs("urpc_message") {
            std::eprintln!("replaying {}", path.display());
            super::core_message(&bytes);
        }
    }
}
