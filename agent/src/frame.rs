//! Framing: the 12-byte header, [`Frame`], and the incremental
//! [`Decoder`] both sides read a stream with (layout in the crate's top
//! comment).
//!
//! The decoder owns one buffer of [`HEADER_LEN`] + [`MAX_PAYLOAD`] bytes,
//! allocated once: it takes bytes only while there is room, and checks a
//! header as soon as it has one, so a length from the wire is compared
//! with the bound before anything waits for (or stores) the payload. A bad
//! header is an error and poisons the decoder: a stream is not
//! resynchronized after garbage.

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"TB";
/// The protocol version this crate speaks (header and `Hello`).
pub const VERSION: u8 = 1;
/// Size of the header.
pub const HEADER_LEN: usize = 12;
/// Longest payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// not an agent frame: bad magic {0:02x?}
    #[error("not an agent frame: bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// protocol version {got}, this side speaks {VERSION}
    #[error("protocol version {got}, this side speaks {VERSION}")]
    Version {
        /// The version in the header.
        got: u8,
    },
    /// unknown message type {0}
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// payload of {0} bytes is over the limit
    #[error("payload of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    Oversized(u32),
    /// the decoder already failed
    #[error("the stream already had a bad frame")]
    Poisoned,
}

/// The message types (the header's type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Protocol version, both ways.
    Hello = 1,
    /// Start a process.
    Exec = 2,
    /// A process started.
    Started = 3,
    /// Bytes for a process's stdin.
    Stdin = 4,
    /// A process's stdin ends.
    StdinEof = 5,
    /// Bytes a process wrote to stdout (or its terminal).
    Stdout = 6,
    /// Bytes a process wrote to stderr.
    Stderr = 7,
    /// Send a signal to a process.
    Signal = 8,
    /// A process's terminal size.
    Resize = 9,
    /// A process ended (its output drained).
    Exited = 10,
    /// A request was refused, or the connection is closing.
    Failed = 11,
    /// Connect this connection to a TCP port in the guest.
    Forward = 12,
    /// The connection is now that port's byte stream.
    Forwarding = 13,
    /// Send a guest path's tree to the host (`twinbox cp BOX:PATH ...`).
    CopyOut = 14,
    /// Take a tree from the host at a guest path (`twinbox cp ... BOX:PATH`).
    CopyIn = 15,
    /// The guest resolved a `CopyIn`'s destination: send the tree.
    CopyReady = 16,
    /// One entry of a tree: a directory, file, symlink, or one skipped.
    Entry = 17,
    /// Bytes of the file entry before it.
    Data = 18,
    /// The directory entered last ends.
    Up = 19,
    /// The whole tree is sent (and, from the guest after a `CopyIn`, applied).
    CopyEnd = 20,
    /// Connect this connection to a UDP port in the guest (datagrams).
    ForwardUdp = 21,
}

impl Kind {
    /// The kind for a type byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Exec,
            3 => Kind::Started,
            4 => Kind::Stdin,
            5 => Kind::StdinEof,
            6 => Kind::Stdout,
            7 => Kind::Stderr,
            8 => Kind::Signal,
            9 => Kind::Resize,
            10 => Kind::Exited,
            11 => Kind::Failed,
            12 => Kind::Forward,
            13 => Kind::Forwarding,
            14 => Kind::CopyOut,
            15 => Kind::CopyIn,
            16 => Kind::CopyReady,
            17 => Kind::Entry,
            18 => Kind::Data,
            19 => Kind::Up,
            20 => Kind::CopyEnd,
            21 => Kind::ForwardUdp,
            _ => return None,
        })
    }
}

/// One frame: type, id and payload (at most [`MAX_PAYLOAD`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type.
    pub kind: Kind,
    /// The process it is about (0: the main workload or the connection).
    pub id: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Checks a header; the payload length it announces.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(Kind, u32, usize), Error> {
    if h[0..2] != MAGIC {
        return Err(Error::BadMagic([h[0], h[1]]));
    }
    if h[2] != VERSION {
        return Err(Error::Version { got: h[2] });
    }
    let kind = Kind::from_u8(h[3]).ok_or(Error::UnknownType(h[3]))?;
    let id = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len as usize > MAX_PAYLOAD {
        return Err(Error::Oversized(len));
    }
    Ok((kind, id, len as usize))
}

/// Appends a frame to `out`. A payload over [`MAX_PAYLOAD`] is the
/// caller's bug; it is refused, not cut.
pub fn encode_into(kind: Kind, id: u32, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let len = u32::try_from(payload.len()).map_err(|_| Error::Oversized(u32::MAX))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::Oversized(len));
    }
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        encode_into(self.kind, self.id, &self.payload, &mut out)?;
        Ok(out)
    }
}

/// The incremental decoder: [`feed`](Decoder::feed) bytes as they come,
/// take frames with [`next_frame`](Decoder::next_frame).
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
    /// Largest number of bytes the decoder holds.
    pub const CAPACITY: usize = HEADER_LEN + MAX_PAYLOAD;

    /// An empty decoder (one allocation of [`Decoder::CAPACITY`] bytes).
    pub fn new() -> Self {
        Decoder {
            buf: vec![0u8; Self::CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
            poisoned: false,
        }
    }

    /// Takes as many of `data`'s bytes as there is room for; returns how
    /// many it took. Room is made by taking frames: a full decoder holds
    /// a whole frame or a bad header, so calling `next_frame` until it
    /// gives `None` always makes room again.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.poisoned {
            return 0;
        }
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = data.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next whole frame, `None` until one has arrived; an error for a
    /// bad header (then every later call fails too).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let held = &self.buf[self.start..self.end];
        let Some(header) = held.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, id, len) = match parse_header(header) {
            Ok(h) => h,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        let Some(payload) = held.get(HEADER_LEN..HEADER_LEN + len) else {
            // Not all here yet; make room for the rest if it would not fit.
            if self.start + HEADER_LEN + len > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            return Ok(None);
        };
        let frame = Frame {
            kind,
            id,
            payload: payload.to_vec(),
        };
        self.start += HEADER_LEN + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        assert_eq!(encode_into(kind, id, payload, &mut v), Ok(()));
        v
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let mut stream = frame(Kind::Stdout, 7, b"hello");
        stream.extend(frame(Kind::StdinEof, 3, b""));
        stream.extend(frame(Kind::Stdin, u32::MAX, &vec![0xaa; MAX_PAYLOAD]));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            assert_eq!(d.feed(std::slice::from_ref(b)), 1);
            while let Ok(Some(f)) = d.next_frame() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].kind, got[0].id, &got[0].payload[..]),
            (Kind::Stdout, 7, &b"hello"[..])
        );
        assert_eq!(
            (got[1].kind, got[1].id, got[1].payload.len()),
            (Kind::StdinEof, 3, 0)
        );
        assert_eq!(got[2].payload.len(), MAX_PAYLOAD);
        assert_eq!(
            got[2].encode().map(|e| e.len()),
            Ok(HEADER_LEN + MAX_PAYLOAD)
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_full_decoder_makes_room_by_giving_frames() {
        // Many small frames fed in one big slice: feed takes what fits.
        let mut stream = Vec::new();
        for i in 0..20_000u32 {
            stream.extend(frame(Kind::Stdout, i, b"0123456789"));
        }
        let mut d = Decoder::new();
        let (mut rest, mut n) = (&stream[..], 0u32);
        while !rest.is_empty() {
            let took = d.feed(rest);
            rest = &rest[took..];
            while let Ok(Some(f)) = d.next_frame() {
                assert_eq!(f.id, n);
                n += 1;
            }
        }
        assert_eq!(n, 20_000);
    }

    #[test]
    fn a_straddling_big_frame_is_moved_to_fit() {
        let mut stream = frame(Kind::Stdout, 1, b"x");
        stream.extend(frame(Kind::Stdout, 2, &vec![1; MAX_PAYLOAD]));
        let mut d = Decoder::new();
        let (mut rest, mut ids) = (&stream[..], Vec::new());
        while !rest.is_empty() {
            let took = d.feed(&rest[..rest.len().min(40_000)]);
            rest = &rest[took..];
            while let Ok(Some(f)) = d.next_frame() {
                ids.push(f.id);
            }
        }
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn bad_headers_are_refused_before_the_payload() {
        let mut d = Decoder::new();
        d.feed(b"GET / HTTP/1.1\r\n");
        assert_eq!(d.next_frame(), Err(Error::BadMagic(*b"GE")));
        assert_eq!(d.next_frame(), Err(Error::Poisoned));
        assert_eq!(d.feed(b"more"), 0);

        let mut v = frame(Kind::Hello, 0, &[1, 0, 0, 0]);
        v[2] = 2;
        let mut d = Decoder::new();
        d.feed(&v);
        assert_eq!(d.next_frame(), Err(Error::Version { got: 2 }));

        let mut v = frame(Kind::Hello, 0, b"");
        v[3] = 200;
        let mut d = Decoder::new();
        d.feed(&v);
        assert_eq!(d.next_frame(), Err(Error::UnknownType(200)));

        // An oversized length is refused from the header alone.
        let mut v = frame(Kind::Stdin, 1, b"");
        v[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = Decoder::new();
        d.feed(&v);
        assert_eq!(d.next_frame(), Err(Error::Oversized(u32::MAX)));
        let mut v = frame(Kind::Stdin, 1, b"");
        v[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let mut d = Decoder::new();
        d.feed(&v);
        assert_eq!(
            d.next_frame(),
            Err(Error::Oversized(MAX_PAYLOAD as u32 + 1))
        );
    }

    #[test]
    fn truncated_frames_wait() {
        let v = frame(Kind::Stdout, 9, b"abcdef");
        for cut in 0..v.len() {
            let mut d = Decoder::new();
            d.feed(&v[..cut]);
            assert_eq!(d.next_frame(), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_payloads_are_not_encoded() {
        let mut out = Vec::new();
        let big = vec![0; MAX_PAYLOAD + 1];
        assert!(encode_into(Kind::Stdout, 1, &big, &mut out).is_err());
        assert!(out.is_empty());
    }
}
