//! The receiving side of `twinbox cp` (what a VM guest sends the host
//! when copying out of it, and the host the guest when copying in): any
//! byte stream, fed in pieces of any size, is decoded into messages and
//! received into a sink that checks every promise the receiver makes
//! (`twinbox_agent::copy::CheckSink`: directories balanced and never
//! deeper than the limit, each file exactly its announced size, entries
//! and bytes within the limits), or is refused cleanly; and a stream that
//! is taken leaves no directory open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_agent::copy::{receive_bytes, CheckSink};
use twinbox_agent::tree::Limits;

fuzz_target!(|data: &[u8]| {
    let step = 1 + data.len() % 4099;
    let limits = Limits {
        bytes: 1 << 20,
        entries: 1000,
    };
    let mut sink = CheckSink::new(limits);
    if receive_bytes(data, step, limits, &mut sink).is_ok() {
        assert_eq!(sink.depth, 0);
    }
});
