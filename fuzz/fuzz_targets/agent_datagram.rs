//! The datagram framing of a published UDP port's flow (what the guest
//! agent sends the host after `Forwarding`, and the host the agent): any
//! byte stream, fed in pieces of any size, decodes into datagrams of at
//! most `MAX_DATAGRAM` bytes or fails cleanly within the decoder's bound;
//! the datagrams framed again are exactly the bytes they came from, and a
//! failure is exactly a length over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbox_agent::datagram::{self, Decoder, MAX_DATAGRAM};

fuzz_target!(|data: &[u8]| {
    // Fed in pieces whose size varies with the input's length.
    let step = 1 + data.len() % 70_001;
    let mut d = Decoder::new();
    let mut again = Vec::new();
    let mut fed = 0usize;
    for piece in data.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let took = d.feed(rest);
            rest = &rest[took..];
            fed += took;
            loop {
                match d.next_datagram() {
                    Ok(Some(g)) => {
                        assert!(g.len() <= MAX_DATAGRAM);
                        datagram::encode_into(g, &mut again).expect("a decoded datagram frames");
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // The failure is the length where decoding stopped.
                        let at = again.len();
                        let len = u16::from_le_bytes([data[at], data[at + 1]]);
                        assert!(usize::from(len) > MAX_DATAGRAM);
                        return;
                    }
                }
            }
            // Taking every whole datagram always makes room again.
            assert!(d.pending() < Decoder::CAPACITY);
        }
    }
    // Everything fed is either a datagram or the start of the next one.
    assert_eq!(again.len() + d.pending(), fed);
    assert_eq!(&again[..], &data[..again.len()]);
});
