//! What a guest can hand the vsock device: a queue in guest memory whose
//! descriptor table, avail ring and buffers are all the fuzzer's (see
//! `twinbox_vmm::devices::vsock::packet::parse_queue_image`). Every chain
//! is walked, read as a tx packet and checked as an rx buffer; nothing may
//! panic, loop for ever or allocate past the payload limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_vmm::devices::vsock::packet::parse_queue_image;

fuzz_target!(|data: &[u8]| {
    let _ = parse_queue_image(data);
});
