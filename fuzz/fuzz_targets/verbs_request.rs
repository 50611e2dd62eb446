#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::verbs_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::verbs_request(data));
