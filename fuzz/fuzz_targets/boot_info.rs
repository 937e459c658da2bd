//! Fuzz target `boot_info`: PVH and Multiboot2 boot information in fuzzed physical memory. The entry point is `cpudriver::fuzzing::boot_info` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cpudriver::fuzzing::boot_info(data));
