//! The agent's frame and message decoder (what a host, or a process in the
//! guest, can send the guest agent): any byte stream, fed in pieces of any
//! size, decodes or fails cleanly within the decoder's bound, and every
//! message that decodes encodes back to a frame that decodes to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_agent::message::MessageDecoder;

fuzz_target!(|data: &[u8]| {
    // Fed in pieces whose size varies with the input's length.
    let step = 1 + data.len() % 4099;
    let mut d = MessageDecoder::new();
    for piece in data.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let took = d.feed(rest);
            rest = &rest[took..];
            loop {
                match d.next_message() {
                    Ok(Some(m)) => {
                        let again = m.encode().expect("a decoded message encodes");
                        let mut d2 = MessageDecoder::new();
                        assert_eq!(d2.feed(&again), again.len());
                        assert_eq!(d2.next_message().expect("re-encoded decodes"), Some(m));
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            assert!(d.pending() <= twinbox_agent::frame::Decoder::CAPACITY);
        }
    }
});
