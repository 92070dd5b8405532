//! The result stream of the nested harness's outer machine: any bytes must
//! parse or fail cleanly, and what parses must encode and parse back alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_nested::protocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = protocol::decode(data) {
        let again: String = records.iter().map(protocol::encode).collect();
        let back = protocol::decode(again.as_bytes()).expect("re-encoded records parse");
        assert_eq!(back, records);
    }
});
