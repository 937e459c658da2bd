//! Fuzz target `monitor_message`: monitor messages decoded (and re-encoded) from arbitrary bytes. The entry point is `monitor::fuzzing::message` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::message(data));
