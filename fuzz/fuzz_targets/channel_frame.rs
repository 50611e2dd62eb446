#![no_main]
//! Fuzz target: see `ptpchat::fuzzing::channel_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptpchat::fuzzing::channel_frame(data));
