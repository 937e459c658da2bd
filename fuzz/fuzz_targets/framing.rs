//! Fuzz target `framing`: the kernel's letter framing and each family's inline decoder. The entry point is `cpudriver::fuzzing::framing` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cpudriver::fuzzing::framing(data));
