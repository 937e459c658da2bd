//! Fuzz target `http`: the HTTP server's request handling on one connection. The entry point is `netd::fuzzing::http_requests` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::http_requests(data));
