//! Datagrams over a stream: what a connection carries after
//! `ForwardUdp{port}` and `Forwarding` (one flow of a published UDP port,
//! between the host's supervisor and the guest agent).
//!
//! A stream has no message boundaries, so each datagram is framed:
//!
//! ```text
//! offset  size  field
//!  0       2    length n, u16 little-endian, <= MAX_DATAGRAM (65507)
//!  2       n    the datagram's bytes (n = 0 is an empty datagram)
//! ```
//!
//! [`MAX_DATAGRAM`] is the most an IPv4 UDP datagram carries (65535 less
//! the IP and UDP headers): the guest's side is 127.0.0.1, so nothing
//! larger can come from it or go to it. A length over it is an error from
//! the two length bytes alone and poisons the [`Decoder`] (a stream is not
//! resynchronized after garbage): whatever the guest sends is hostile
//! input. The decoder holds at most one largest datagram, allocated once,
//! and gives datagrams as slices of that buffer (no copy).
//!
//! An [`Outbox`] is the writing side: whole framed datagrams queued up to
//! a bound, written as the stream takes them. UDP may lose datagrams, so
//! a full outbox drops the datagram rather than blocking the sender: a
//! slow peer loses its own flow's datagrams and holds up nothing else.

use std::io::Write;

/// Largest datagram carried.
pub const MAX_DATAGRAM: usize = 65_507;
/// Size of the length before each datagram.
pub const LEN_BYTES: usize = 2;

/// A malformed datagram stream, or a datagram that cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A length over the limit (read from the stream, or asked to send).
    #[error("datagram of {0} bytes is over the limit of {MAX_DATAGRAM}")]
    Oversized(usize),
    /// The decoder already failed.
    #[error("the datagram stream already had a bad length")]
    Poisoned,
}

/// Appends `datagram`, framed, to `out`; one over [`MAX_DATAGRAM`] is
/// refused and nothing is appended.
pub fn encode_into(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Error::Oversized(datagram.len()));
    }
    out.reserve(LEN_BYTES + datagram.len());
    out.extend_from_slice(&(datagram.len() as u16).to_le_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// The incremental decoder: put bytes in with [`feed`](Decoder::feed) (or
/// read straight into [`space`](Decoder::space) and say
/// [`filled`](Decoder::filled)), take datagrams with
/// [`next_datagram`](Decoder::next_datagram).
#[derive(Debug)]
pub struct Decoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    poisoned: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// Largest number of bytes the decoder holds: one largest datagram.
    pub const CAPACITY: usize = LEN_BYTES + MAX_DATAGRAM;

    /// An empty decoder (one allocation of [`Decoder::CAPACITY`] bytes).
    pub fn new() -> Self {
        Decoder {
            buf: vec![0u8; Self::CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
            poisoned: false,
        }
    }

    /// The free room after what is held, for a read to fill (then call
    /// [`filled`](Decoder::filled)); empty when the decoder is full (take
    /// datagrams first) or poisoned. Held bytes are moved to the front to
    /// make it as large as it can be.
    pub fn space(&mut self) -> &mut [u8] {
        if self.poisoned {
            return &mut [];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Says that the first `n` bytes of [`space`](Decoder::space) were
    /// filled (more than it had is taken as all of it).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Takes as many of `data`'s bytes as there is room for; returns how
    /// many it took. A full decoder holds a whole datagram or a bad
    /// length, so calling `next_datagram` until it gives `None` always
    /// makes room again.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let space = self.space();
        let n = data.len().min(space.len());
        space[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// Bytes held that are not yet a whole datagram.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next whole datagram, `None` until one has arrived; an error for
    /// a length over the limit (then every later call fails too).
    pub fn next_datagram(&mut self) -> Result<Option<&[u8]>, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let held = &self.buf[self.start..self.end];
        let Some(len) = held.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_le_bytes(*len));
        if len > MAX_DATAGRAM {
            self.poisoned = true;
            return Err(Error::Oversized(len));
        }
        if held.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let at = self.start + LEN_BYTES;
        self.start = at + len;
        if self.start == self.end {
            // Nothing more held: the next bytes go to the front. The
            // datagram's bytes stay where they are until then.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// Framed datagrams waiting to be written to a stream, at most a bound
/// of bytes.
#[derive(Debug)]
pub struct Outbox {
    buf: Vec<u8>,
    at: usize,
    cap: usize,
}

impl Outbox {
    /// An empty outbox that holds up to `cap` bytes (at least one largest
    /// framed datagram).
    pub fn new(cap: usize) -> Self {
        Outbox {
            buf: Vec::new(),
            at: 0,
            cap: cap.max(Decoder::CAPACITY),
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a largest datagram would still fit.
    pub fn has_room(&self) -> bool {
        self.len() + Decoder::CAPACITY <= self.cap
    }

    /// Queues `datagram`; `Ok(false)` if it does not fit (it is dropped),
    /// an error if it is over [`MAX_DATAGRAM`].
    pub fn push(&mut self, datagram: &[u8]) -> Result<bool, Error> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Error::Oversized(datagram.len()));
        }
        if self.len() + LEN_BYTES + datagram.len() > self.cap {
            return Ok(false);
        }
        if self.at > 0 && self.at >= self.buf.len() / 2 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        encode_into(datagram, &mut self.buf)?;
        Ok(true)
    }

    /// Writes what waits to `w` until it is all written or `w` would
    /// block (a non-blocking stream); an error (other than would-block
    /// and interrupted) is the stream's end.
    pub fn flush<W: Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        while self.at < self.buf.len() {
            match w.write(&self.buf[self.at..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.at = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(datagrams: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for d in datagrams {
            assert_eq!(encode_into(d, &mut v), Ok(()));
        }
        v
    }

    /// Decodes `stream` fed `step` bytes at a time; the datagrams, and
    /// the error that ended it if any.
    fn decode(stream: &[u8], step: usize) -> (Vec<Vec<u8>>, Option<Error>) {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let took = d.feed(rest);
                rest = &rest[took..];
                loop {
                    match d.next_datagram() {
                        Ok(Some(g)) => got.push(g.to_vec()),
                        Ok(None) => break,
                        Err(e) => return (got, Some(e)),
                    }
                }
            }
        }
        (got, None)
    }

    #[test]
    fn datagrams_round_trip_in_pieces_of_any_size() {
        let big = vec![7u8; MAX_DATAGRAM];
        let all: [&[u8]; 5] = [b"query", b"", &big, b"x", &big];
        let stream = framed(&all);
        assert_eq!(stream.len(), 5 * LEN_BYTES + 6 + 2 * MAX_DATAGRAM);
        for step in [1, 2, 3, 1000, 65_509, stream.len()] {
            let (got, err) = decode(&stream, step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(got, all.map(|d| d.to_vec()), "step {step}");
        }
    }

    #[test]
    fn reading_into_the_space_fills_it_to_one_largest_datagram() {
        let mut d = Decoder::new();
        let stream = framed(&[b"ab", b"cde"]);
        let space = d.space();
        assert_eq!(space.len(), Decoder::CAPACITY);
        space[..stream.len()].copy_from_slice(&stream);
        d.filled(stream.len());
        assert_eq!(d.next_datagram(), Ok(Some(&b"ab"[..])));
        assert_eq!(d.next_datagram(), Ok(Some(&b"cde"[..])));
        assert_eq!(d.next_datagram(), Ok(None));
        assert_eq!(d.feed(&[9]), 1);
        assert_eq!(d.space().len(), Decoder::CAPACITY - 1);
        assert_eq!(d.next_datagram(), Ok(None));
        // A full decoder (one largest datagram less a byte) takes no more
        // than fits.
        let mut d = Decoder::new();
        let max = framed(&[&vec![1; MAX_DATAGRAM]]);
        assert_eq!(d.feed(&max[..max.len() - 1]), max.len() - 1);
        assert_eq!(d.next_datagram(), Ok(None));
        assert_eq!(d.feed(&[1, 2, 3]), 1);
        assert!(d.space().is_empty());
        assert_eq!(
            d.next_datagram().map(|g| g.map(<[u8]>::len)),
            Ok(Some(MAX_DATAGRAM))
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_length_over_the_limit_poisons_the_stream() {
        for len in [MAX_DATAGRAM as u16 + 1, u16::MAX] {
            let mut stream = framed(&[b"ok"]);
            stream.extend_from_slice(&len.to_le_bytes());
            stream.extend_from_slice(b"more");
            let (got, err) = decode(&stream, 1);
            assert_eq!(got, vec![b"ok".to_vec()]);
            assert_eq!(err, Some(Error::Oversized(usize::from(len))));
        }
        let mut d = Decoder::new();
        d.feed(&u16::MAX.to_le_bytes());
        assert!(d.next_datagram().is_err());
        assert_eq!(d.next_datagram(), Err(Error::Poisoned));
        assert_eq!(d.feed(b"x"), 0);
        assert!(d.space().is_empty());
        // Nothing over the limit is framed.
        let mut out = Vec::new();
        assert_eq!(
            encode_into(&vec![0; MAX_DATAGRAM + 1], &mut out),
            Err(Error::Oversized(MAX_DATAGRAM + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_cut_datagram_waits() {
        let stream = framed(&[b"abcdef"]);
        for cut in 0..stream.len() {
            let mut d = Decoder::new();
            d.feed(&stream[..cut]);
            assert_eq!(d.next_datagram(), Ok(None), "cut at {cut}");
            assert_eq!(d.pending(), cut);
        }
    }

    /// A writer that takes `room` bytes, then would block.
    struct Slow {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room).min(1000);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outbox_drops_what_does_not_fit_and_writes_the_rest_in_order() {
        let cap = 3 * Decoder::CAPACITY;
        let mut o = Outbox::new(cap);
        let big = vec![5u8; MAX_DATAGRAM];
        assert!(o.has_room());
        for _ in 0..3 {
            assert_eq!(o.push(&big), Ok(true));
        }
        assert!(!o.has_room());
        // Full: dropped, whole, not cut.
        assert_eq!(o.push(b"lost"), Ok(false));
        assert_eq!(o.len(), cap);
        let mut w = Slow {
            got: Vec::new(),
            room: 70_000,
        };
        assert!(o.flush(&mut w).is_ok());
        assert_eq!(o.len(), cap - 70_000);
        assert_eq!(o.push(b"next"), Ok(true));
        w.room = usize::MAX;
        assert!(o.flush(&mut w).is_ok());
        assert!(o.is_empty());
        let (got, err) = decode(&w.got, 4096);
        assert_eq!(err, None);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], b"next");
        assert_eq!(
            o.push(&vec![0; MAX_DATAGRAM + 1]),
            Err(Error::Oversized(MAX_DATAGRAM + 1))
        );
    }
}
