#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::identity_document`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::identity_document(data));
