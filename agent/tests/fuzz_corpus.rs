//! Replays the corpus of `fuzz/fuzz_targets/agent_frame.rs` (its seeds and
//! whatever `cargo fuzz` has added) with the target's property: any byte
//! stream decodes into messages or fails cleanly, and every message that
//! decodes encodes back to the bytes of its frame.

use std::path::Path;

use twinbox_agent::message::MessageDecoder;

#[test]
fn the_agent_frame_corpus_decodes_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/agent_frame");
    let (mut inputs, mut decoded, mut refused) = (0, 0, 0);
    for e in std::fs::read_dir(&dir)? {
        let data = std::fs::read(e?.path())?;
        inputs += 1;
        let mut d = MessageDecoder::new();
        let mut rest = &data[..];
        let mut failed = false;
        while !rest.is_empty() && !failed {
            let took = d.feed(rest);
            rest = &rest[took..];
            loop {
                match d.next_message() {
                    Ok(Some(m)) => {
                        decoded += 1;
                        let again = m.encode()?;
                        let mut d2 = MessageDecoder::new();
                        assert_eq!(d2.feed(&again), again.len());
                        assert_eq!(d2.next_message()?, Some(m));
                    }
                    Ok(None) => break,
                    Err(_) => {
                        refused += 1;
                        failed = true;
                        break;
                    }
                }
            }
        }
    }
    assert!(
        inputs >= 5,
        "only {inputs} corpus files in {}",
        dir.display()
    );
    assert!(decoded >= 3, "only {decoded} messages decode");
    assert!(refused >= 3, "only {refused} inputs are refused");
    Ok(())
}
