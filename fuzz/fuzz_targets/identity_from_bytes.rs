#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::identity_from_bytes`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::identity_from_bytes(data));
