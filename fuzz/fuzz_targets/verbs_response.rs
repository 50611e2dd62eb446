#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::verbs_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::verbs_response(data));
