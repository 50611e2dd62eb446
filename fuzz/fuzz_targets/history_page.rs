#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::history_page`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::history_page(data));
