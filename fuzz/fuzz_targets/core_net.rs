//! Fuzz target `core_net`: two whole network stacks on the simulated NIC fed arbitrary frames and TCP segments. The entry point is `netd::fuzzing::core_net` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::core_net(data));
