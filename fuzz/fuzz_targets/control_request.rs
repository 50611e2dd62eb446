#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::control_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::control_request(data));
