//! Fuzz target `srat`: the ACPI SRAT parser. The entry point is `cpudriver::fuzzing::srat` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cpudriver::fuzzing::srat(data));
