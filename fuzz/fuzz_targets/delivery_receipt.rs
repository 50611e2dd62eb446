#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::delivery_receipt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::delivery_receipt(data));
