#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::mailbox`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::mailbox(data));
