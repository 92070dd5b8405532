//! Replays the fuzz corpus of `fuzz/fuzz_targets/vcpu_state.rs` (its seeds,
//! among them a real vCPU's state, and whatever `cargo fuzz` has added)
//! with the target's property: every input parses or fails cleanly, and
//! what parses encodes back to the same bytes.

use twinbox_vmm::snapshot::vcpu::VcpuState;

#[test]
fn the_vcpu_state_corpus_parses_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vcpu_state");
    let (mut seen, mut parsed) = (0, 0);
    for e in std::fs::read_dir(&dir)? {
        let data = std::fs::read(e?.path())?;
        seen += 1;
        if let Ok(state) = VcpuState::decode(&data) {
            parsed += 1;
            let again = state.encode();
            assert_eq!(VcpuState::decode(&again)?.encode(), again);
        }
    }
    assert!(seen >= 5, "only {seen} corpus files in {}", dir.display());
    assert!(parsed >= 3, "only {parsed} of {seen} corpus files parse");
    Ok(())
}
