//! Fuzz target `stats_snapshot`: another core's statistics snapshot decoded and served as `/stats` JSON. The entry point is `netd::fuzzing::stats_snapshot` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::stats_snapshot(data));
