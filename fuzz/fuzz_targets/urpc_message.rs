//! Fuzz target `urpc_message`: URPC's own messages (`CoreMessage`) decoded from one slot payload against a region table. The entry point is `urpc::fuzzing::core_message` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| urpc::fuzzing::core_message(data));
