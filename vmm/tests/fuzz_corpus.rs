//! Replays the fuzz corpora of `fuzz/fuzz_targets/vcpu_state.rs`,
//! `snapshot_file.rs`, `machine_state.rs` and `vsock_packet.rs` (their
//! seeds, among them a real vCPU's state, and whatever `cargo fuzz` has
//! added) with the targets' properties: every input is refused cleanly or
//! gives what encodes back to the same bytes; every queue image a guest
//! could make is survived.

use std::path::{Path, PathBuf};

use twinbox_vmm::snapshot::file;
use twinbox_vmm::snapshot::vcpu::VcpuState;

fn corpus(target: &str) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        out.push(std::fs::read(e?.path())?);
    }
    assert!(
        out.len() >= 5,
        "only {} corpus files in {}",
        out.len(),
        dir.display()
    );
    Ok(out)
}

#[test]
fn the_vcpu_state_corpus_parses_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let inputs = corpus("vcpu_state")?;
    let mut parsed = 0;
    for data in &inputs {
        if let Ok(state) = VcpuState::decode(data) {
            parsed += 1;
            let again = state.encode();
            assert_eq!(VcpuState::decode(&again)?.encode(), again);
        }
    }
    assert!(
        parsed >= 3,
        "only {parsed} of {} corpus files parse",
        inputs.len()
    );
    Ok(())
}

#[test]
fn the_snapshot_file_corpus_parses_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let inputs = corpus("snapshot_file")?;
    let mut parsed = 0;
    for data in &inputs {
        if let Ok(state) = file::decode(data, "fuzz") {
            parsed += 1;
            assert_eq!(&file::encode("fuzz", state), data);
        }
    }
    assert!(
        parsed >= 3,
        "only {parsed} of {} corpus files parse",
        inputs.len()
    );
    Ok(())
}

#[test]
fn the_machine_state_corpus_parses_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    use twinbox_vmm::snapshot::machine::MachineState;
    let inputs = corpus("machine_state")?;
    let mut parsed = 0;
    for data in &inputs {
        if let Ok(state) = MachineState::decode(data) {
            parsed += 1;
            let again = state.encode();
            assert_eq!(MachineState::decode(&again)?.encode(), again);
        }
    }
    // Among the seeds: the states of real Linux guests saved on PVM.
    assert!(
        parsed >= 2,
        "only {parsed} of {} corpus files parse",
        inputs.len()
    );
    Ok(())
}

#[test]
fn the_vsock_packet_corpus_is_survived() -> Result<(), Box<dyn std::error::Error>> {
    use twinbox_vmm::devices::vsock::packet::parse_queue_image;
    let inputs = corpus("vsock_packet")?;
    let usable: usize = inputs.iter().map(|d| parse_queue_image(d)).sum();
    // Among the seeds: packets in one, two and three buffers, an rx
    // buffer, an indirect table.
    assert!(usable >= 5, "only {usable} usable chains in the corpus");
    Ok(())
}
