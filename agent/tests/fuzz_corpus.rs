//! Replays the corpora of `fuzz/fuzz_targets/agent_frame.rs` and
//! `agent_tree.rs` (their seeds and whatever `cargo fuzz` has added) with
//! the targets' properties: any byte stream decodes into messages or fails
//! cleanly, and every message that decodes encodes back to the bytes of its
//! frame; any byte stream is received as a copy's tree into a sink that
//! checks the receiver's promises, or refused cleanly.

use std::path::Path;

use twinbox_agent::copy::{receive_bytes, CheckSink};
use twinbox_agent::message::MessageDecoder;
use twinbox_agent::tree::Limits;

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

#[test]
fn the_agent_tree_corpus_is_received_or_refused_cleanly() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/agent_tree");
    let limits = Limits {
        bytes: 1 << 20,
        entries: 1000,
    };
    let (mut inputs, mut taken, mut refused) = (0, 0, 0);
    for e in std::fs::read_dir(&dir)? {
        let data = std::fs::read(e?.path())?;
        inputs += 1;
        // As the target feeds it, and in one piece and byte by byte.
        let mut outcomes = Vec::new();
        for step in [1 + data.len() % 4099, data.len(), 1] {
            let mut sink = CheckSink::new(limits);
            let ok = receive_bytes(&data, step, limits, &mut sink).is_ok();
            if ok {
                assert_eq!(sink.depth, 0);
            }
            outcomes.push((ok, sink.entries, sink.bytes));
        }
        // However it is cut, a stream means the same.
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
        if outcomes[0].0 {
            taken += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        inputs >= 10,
        "only {inputs} corpus files in {}",
        dir.display()
    );
    assert!(taken >= 3, "only {taken} streams are taken");
    assert!(refused >= 8, "only {refused} streams are refused");
    Ok(())
}

/// Replays the corpus of `fuzz/fuzz_targets/agent_datagram.rs` with the
/// target's property: any byte stream decodes into datagrams of at most
/// `MAX_DATAGRAM` bytes, which framed again are the bytes they came from,
/// or fails exactly at a length over the limit.
#[test]
fn the_agent_datagram_corpus_decodes_or_fails_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    use twinbox_agent::datagram::{self, Decoder, MAX_DATAGRAM};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/agent_datagram");
    let (mut inputs, mut decoded, mut refused) = (0, 0, 0);
    for e in std::fs::read_dir(&dir)? {
        let data = std::fs::read(e?.path())?;
        inputs += 1;
        let mut d = Decoder::new();
        let mut again = Vec::new();
        let mut rest = &data[..];
        let mut failed = false;
        while !rest.is_empty() && !failed {
            let took = d.feed(rest);
            rest = &rest[took..];
            loop {
                match d.next_datagram() {
                    Ok(Some(g)) => {
                        assert!(g.len() <= MAX_DATAGRAM);
                        decoded += 1;
                        datagram::encode_into(g, &mut again)?;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let at = again.len();
                        let len = u16::from_le_bytes([data[at], data[at + 1]]);
                        assert!(usize::from(len) > MAX_DATAGRAM);
                        refused += 1;
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed || d.pending() < Decoder::CAPACITY);
        }
        assert_eq!(&again[..], &data[..again.len()]);
        if !failed {
            assert_eq!(again.len() + d.pending(), data.len());
        }
    }
    assert!(
        inputs >= 5,
        "only {inputs} corpus files in {}",
        dir.display()
    );
    assert!(decoded >= 5, "only {decoded} datagrams decode");
    assert!(refused >= 2, "only {refused} inputs are refused");
    Ok(())
}
