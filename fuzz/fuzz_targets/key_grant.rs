#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::key_grant`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::key_grant(data));
