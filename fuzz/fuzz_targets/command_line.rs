//! Fuzz target `command_line`: the kernel command line: kernel options, `time=`, netd's readers and the stack built from them. The entry point is `cpudriver::fuzzing::command_line` (see its documentation and
//! `docs/fuzzing.md`); the stable test suite replays the kept inputs through it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cpudriver::fuzzing::command_line(data));
