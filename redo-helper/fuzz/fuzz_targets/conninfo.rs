#![no_main]
//! Fuzz target: `redo_helper::fuzzing::conninfo` (see redo-helper/fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    redo_helper::fuzzing::conninfo(data);
});
