//! Fuzz target `fastpath`: the UDP fast path on any frame, length and reply size. The entry point is `netd::fuzzing::fastpath` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::fastpath(data));
