//! A saved vCPU state (part of a snapshot file): any bytes must parse or
//! fail cleanly, and what parses must encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_vmm::snapshot::vcpu::VcpuState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = VcpuState::decode(data) {
        let again = state.encode();
        let back = VcpuState::decode(&again).expect("re-encoded state parses");
        assert_eq!(back.encode(), again);
    }
});
