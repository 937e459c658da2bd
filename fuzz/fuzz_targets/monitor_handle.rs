//! Fuzz target `monitor_handle`: one monitor's state machine driven by arbitrary peer messages, ticks and requests. The entry point is `monitor::fuzzing::monitor` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::monitor(data));
