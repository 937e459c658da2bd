//! Fuzz target `memcached_protocol`: memcached's command-line framing and parser. The entry point is `netd::fuzzing::memcached_protocol` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::memcached_protocol(data));
