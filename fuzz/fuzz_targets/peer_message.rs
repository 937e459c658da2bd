//! Fuzz target `peer_message`: netd's cross-core messages (`PeerMessage`) decoded and re-encoded. The entry point is `netd::fuzzing::peer_message` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::peer_message(data));
