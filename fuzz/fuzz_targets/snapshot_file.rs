//! A snapshot state file: any bytes must be refused or give a state that
//! encodes back to the same file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_vmm::snapshot::file;

/// The key the seeds were made with.
const KEY: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = file::decode(data, KEY) {
        assert_eq!(file::encode(KEY, state), data);
    }
});
