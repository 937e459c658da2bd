//! Fuzz target `memcached_session`: a memcached connection over three cores' engines fed arbitrary bytes and events. The entry point is `netd::fuzzing::memcached_session` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::memcached_session(data));
