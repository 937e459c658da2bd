//! Fuzz target `classify`: the frame classifier, then the UDP fast path for datagrams it delivers. The entry point is `netd::fuzzing::classify` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::classify(data));
