#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::envelope(data));
