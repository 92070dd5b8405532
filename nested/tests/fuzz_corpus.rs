//! Replays the fuzz corpus of `fuzz/fuzz_targets/nested_protocol.rs` (its
//! seeds and whatever `cargo fuzz` has added), with the target's property:
//! every input parses or fails cleanly, and what parses re-encodes to the
//! same records.

use twinbox_nested::protocol;

#[test]
fn the_fuzz_corpus_parses_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nested_protocol");
    let mut seen = 0;
    let mut parsed = 0;
    for e in std::fs::read_dir(&dir)? {
        let data = std::fs::read(e?.path())?;
        seen += 1;
        if let Ok(records) = protocol::decode(&data) {
            parsed += 1;
            let again: String = records.iter().map(protocol::encode).collect();
            assert_eq!(protocol::decode(again.as_bytes())?, records);
        }
    }
    assert!(seen >= 5, "only {seen} corpus files in {}", dir.display());
    assert!(parsed >= 3, "only {parsed} of {seen} corpus files parse");
    Ok(())
}
