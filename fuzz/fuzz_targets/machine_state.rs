//! A snapshot's machine state (everything but RAM): any bytes must be
//! refused or give a state that encodes to bytes which parse to the same
//! state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_vmm::snapshot::machine::MachineState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = MachineState::decode(data) {
        let again = state.encode();
        match MachineState::decode(&again) {
            Ok(back) => assert_eq!(back.encode(), again),
            Err(e) => panic!("a parsed state does not parse again: {e}"),
        }
    }
});
