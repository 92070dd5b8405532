//! One vsock stream connection between a guest port and a host Unix
//! socket: its state machine, its two bounded buffers and its credit.
//!
//! States: a host client that connected to the VM's socket is in
//! [`State::Handshake`] until its `CONNECT <port>\n` line, then
//! [`State::Connecting`] (a REQUEST goes to the guest) until the guest's
//! RESPONSE (`OK <local port>\n` goes to the client) or RST (the client
//! is closed); a guest-initiated connection starts in
//! [`State::Established`] with a RESPONSE owed. Established, bytes are
//! relayed both ways; SHUTDOWN from the guest shuts the host socket's
//! matching half, EOF from the host sends SHUTDOWN(SEND) to the guest;
//! once neither side sends any more the connection is reset (RST) and
//! forgotten. [`State::Closing`]: the guest shut both directions; what it
//! sent is written out to the host (for at most [`CLOSE_TIMEOUT`]), then
//! RST.
//!
//! Credit (virtio 1.2, 5.10.6.3): we tell the guest our receive buffer
//! ([`BUF_ALLOC`]) and how much of it we have written out to the host
//! (`fwd_cnt`), in every header; a guest that sends past that is reset.
//! We send the guest at most what its own `buf_alloc` and `fwd_cnt` leave
//! free, and read from the host socket only as much as that credit and
//! [`READ_CAP`] allow, so no connection ever holds more than
//! `BUF_ALLOC + READ_CAP` bytes.

use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::{Header, MAX_PAYLOAD};
use super::{op, shutdown, HOST_CID, TYPE_STREAM};

/// Bytes we accept from the guest before the host has read them: the
/// `buf_alloc` we advertise.
pub const BUF_ALLOC: u32 = 128 * 1024;
/// Most bytes read from a host socket before the guest has taken them.
pub const READ_CAP: usize = MAX_PAYLOAD as usize;
/// Longest `CONNECT <port>\n` line.
pub const LINE_MAX: usize = 32;
/// How long a host client has to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to answer a REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to write out what the guest
/// sent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A credit update is sent when this much has been written out to the
/// host since the guest last heard our `fwd_cnt`.
const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A host client's `CONNECT` line, so far.
    Handshake(Vec<u8>),
    /// REQUEST owed or sent to the guest; waiting for its answer.
    Connecting,
    /// Relaying.
    Established,
    /// The guest shut both directions; writing out what is left.
    Closing,
}

/// What the connection wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Goes on.
    Keep,
    /// Ends, and the guest is sent RST (it still knows the connection).
    Reset,
    /// Ends quietly (the guest does not know it, or reset it itself).
    Drop,
}

/// Control packets a connection owes the guest.
mod owed {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
    pub const SHUTDOWN: u8 = 16;
}

/// A connection.
pub struct Connection {
    stream: UnixStream,
    /// Where it is.
    pub state: State,
    /// Our (the host's) port.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    guest_cid: u64,
    to_host: Vec<u8>,
    to_guest: Vec<u8>,
    owed: u8,
    fwd_cnt: Wrapping<u32>,
    fwd_told: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The host sent EOF: it sends no more.
    host_eof: bool,
    /// The guest sends no more (SHUTDOWN SEND).
    guest_no_send: bool,
    /// The guest takes no more (SHUTDOWN RCV).
    guest_no_recv: bool,
    host_write_shut: bool,
    deadline: Option<Instant>,
}

/// `send(2)` with MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is the stream's.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `recv(2)` into `buf`.
fn recv(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
    let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Parses `CONNECT <port>` (an optional `\r` before the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"CONNECT ")?;
    if rest.is_empty() || rest.len() > 10 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

impl Connection {
    /// A host client that just connected; `local_port` is ours for it.
    pub fn from_host(stream: UnixStream, guest_cid: u64, local_port: u32, now: Instant) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, 0);
        c.state = State::Handshake(Vec::new());
        c.deadline = Some(now + HANDSHAKE_TIMEOUT);
        c
    }

    /// A guest's REQUEST `hdr`, connected to a host socket: RESPONSE owed.
    pub fn from_guest(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Self::new(stream, hdr.src_cid, hdr.dst_port, hdr.src_port);
        c.state = State::Established;
        c.owed = owed::RESPONSE;
        c.credit_from(hdr);
        c
    }

    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state: State::Connecting,
            local_port,
            peer_port,
            guest_cid,
            to_host: Vec::new(),
            to_guest: Vec::new(),
            owed: 0,
            fwd_cnt: Wrapping(0),
            fwd_told: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_eof: false,
            guest_no_send: false,
            guest_no_recv: false,
            host_write_shut: false,
            deadline: None,
        }
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// When it must have moved on, if it must.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the guest knows of it (so that ending it owes an RST).
    pub fn guest_knows(&self) -> bool {
        match self.state {
            State::Handshake(_) => false,
            State::Connecting => self.owed & owed::REQUEST == 0,
            _ => true,
        }
    }

    /// The bytes the guest lets us send it now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn credit_from(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Whether to read from the host socket now.
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::Handshake(_) => true,
            State::Established => {
                let room = READ_CAP.min(self.peer_credit() as usize);
                !self.host_eof && !self.guest_no_recv && self.to_guest.len() < room
            }
            _ => false,
        }
    }

    /// Whether there is something to write to the host socket.
    pub fn wants_write(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Whether it has a packet for the guest.
    pub fn has_for_guest(&self) -> bool {
        let data =
            self.state == State::Established && !self.to_guest.is_empty() && self.peer_credit() > 0;
        self.owed != 0 || data
    }

    /// The host socket is readable (or hung up): reads what the state
    /// and the credit allow.
    pub fn on_readable(&mut self) -> Verdict {
        if let State::Handshake(line) = &mut self.state {
            let mut buf = [0u8; LINE_MAX];
            let room = LINE_MAX - line.len();
            let n = match recv(&self.stream, &mut buf[..room]) {
                Ok(0) => return Verdict::Drop,
                Ok(n) => n,
                Err(e) if would_block(&e) => return Verdict::Keep,
                Err(_) => return Verdict::Drop,
            };
            line.extend_from_slice(&buf[..n]);
            let Some(nl) = line.iter().position(|&b| b == b'\n') else {
                return match line.len() < LINE_MAX {
                    true => Verdict::Keep,
                    false => Verdict::Drop,
                };
            };
            let Some(port) = parse_connect(&line[..nl]) else {
                return Verdict::Drop;
            };
            // What the client sent after its line goes to the guest once
            // connected (at most LINE_MAX bytes).
            let rest = line[nl + 1..].to_vec();
            self.peer_port = port;
            self.to_guest = rest;
            self.state = State::Connecting;
            self.owed |= owed::REQUEST;
            self.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
            return Verdict::Keep;
        }
        if !self.wants_read() {
            return Verdict::Keep;
        }
        let room = READ_CAP.min(self.peer_credit() as usize) - self.to_guest.len();
        let at = self.to_guest.len();
        self.to_guest.resize(at + room, 0);
        let got = recv(&self.stream, &mut self.to_guest[at..]);
        let n = match &got {
            Ok(n) => *n,
            Err(_) => 0,
        };
        self.to_guest.truncate(at + n);
        match got {
            Ok(0) => {
                self.host_eof = true;
                self.owed |= owed::SHUTDOWN;
                self.finished()
            }
            Ok(_) => Verdict::Keep,
            Err(e) if would_block(&e) => Verdict::Keep,
            Err(_) => Verdict::Reset,
        }
    }

    /// Writes what it can of what the guest sent out to the host.
    pub fn flush(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            match send(&self.stream, &self.to_host) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => return Verdict::Reset,
            }
        }
        if self.to_host.is_empty() {
            if self.guest_no_send && !self.host_write_shut {
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.host_write_shut = true;
            }
            if self.state == State::Closing {
                return Verdict::Reset;
            }
        }
        if (self.fwd_cnt - self.fwd_told).0 >= CREDIT_THRESHOLD {
            self.owed |= owed::CREDIT_UPDATE;
        }
        self.finished()
    }

    /// Both sides are done sending and everything is written out.
    fn finished(&self) -> Verdict {
        let out = self.to_host.is_empty() && self.to_guest.is_empty() && self.owed == 0;
        match self.host_eof && self.guest_no_send && out {
            true => Verdict::Reset,
            false => Verdict::Keep,
        }
    }

    /// A packet from the guest for this connection.
    pub fn on_guest(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        self.credit_from(hdr);
        match (&self.state, hdr.op) {
            // What the guest sent before its RST is the stream's: Linux
            // ends an orderly close with one, so what is still buffered
            // goes to the host as far as its socket takes it now.
            (_, op::RST) => {
                let _ = self.flush();
                Verdict::Drop
            }
            (State::Connecting, op::RESPONSE) if self.owed & owed::REQUEST == 0 => {
                self.state = State::Established;
                self.deadline = None;
                // A fresh socket takes a 16-byte line whole; one that does
                // not is of no use.
                let line = format!("OK {}\n", self.local_port);
                match send(&self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Verdict::Keep,
                    _ => Verdict::Reset,
                }
            }
            (State::Established | State::Closing, op::RW) => {
                if self.guest_no_send {
                    return Verdict::Reset;
                }
                if self.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    // Past the credit we gave.
                    return Verdict::Reset;
                }
                self.to_host.extend_from_slice(payload);
                self.flush()
            }
            (State::Established | State::Closing, op::CREDIT_UPDATE) => Verdict::Keep,
            (State::Established | State::Closing, op::CREDIT_REQUEST) => {
                self.owed |= owed::CREDIT_UPDATE;
                Verdict::Keep
            }
            (State::Established, op::SHUTDOWN) => {
                if hdr.flags & shutdown::RCV != 0 {
                    self.guest_no_recv = true;
                    self.to_guest.clear();
                    self.owed &= !owed::SHUTDOWN;
                }
                if hdr.flags & shutdown::SEND != 0 {
                    self.guest_no_send = true;
                }
                if self.guest_no_recv && self.guest_no_send {
                    self.state = State::Closing;
                    self.owed = 0;
                    self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                self.flush()
            }
            (State::Closing, op::SHUTDOWN) => Verdict::Keep,
            _ => Verdict::Reset,
        }
    }

    /// The next packet for the guest, its payload at most `room` bytes;
    /// `None` if it owes none.
    pub fn next_for_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        let (op, flags, payload) = if self.owed & owed::REQUEST != 0 {
            self.owed &= !owed::REQUEST;
            (op::REQUEST, 0, Vec::new())
        } else if self.owed & owed::RESPONSE != 0 {
            self.owed &= !owed::RESPONSE;
            (op::RESPONSE, 0, Vec::new())
        } else if self.state == State::Established
            && !self.to_guest.is_empty()
            && self.peer_credit() > 0
            && room > 0
        {
            let n = self
                .to_guest
                .len()
                .min(room)
                .min(self.peer_credit() as usize)
                .min(MAX_PAYLOAD as usize);
            let data: Vec<u8> = self.to_guest.drain(..n).collect();
            self.rx_cnt += Wrapping(n as u32);
            (op::RW, 0, data)
        } else if self.owed & owed::SHUTDOWN != 0 && self.to_guest.is_empty() {
            self.owed &= !owed::SHUTDOWN;
            (op::SHUTDOWN, shutdown::SEND, Vec::new())
        } else if self.owed & owed::CREDIT_UPDATE != 0 {
            self.owed &= !owed::CREDIT_UPDATE;
            (op::CREDIT_UPDATE, 0, Vec::new())
        } else if self.owed & owed::CREDIT_REQUEST != 0 {
            self.owed &= !owed::CREDIT_REQUEST;
            (op::CREDIT_REQUEST, 0, Vec::new())
        } else {
            return None;
        };
        if op == op::RW && self.peer_credit() == 0 {
            self.owed |= owed::CREDIT_REQUEST;
        }
        // Every header tells the guest our credit.
        self.fwd_told = self.fwd_cnt;
        self.owed &= !owed::CREDIT_UPDATE;
        let h = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        };
        Some((h, payload))
    }

    /// Whether it has run out of time at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// After a packet to the guest: whether both sides are done.
    pub fn done(&self) -> Verdict {
        self.finished()
    }
}

/// The RST for a packet that has no connection (or for one that ended):
/// from our `local` port to the guest's `peer` port.
pub fn reset(guest_cid: u64, local: u32, peer: u32) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: local,
        dst_port: peer,
        len: 0,
        type_: TYPE_STREAM,
        op: op::RST,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 1 << 30,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    fn connected() -> io::Result<(Connection, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut c = Connection::from_host(ours, 3, 1 << 30, Instant::now());
        std::io::Write::write_all(&mut &theirs, b"CONNECT 1000\n")?;
        assert_eq!(c.on_readable(), Verdict::Keep);
        assert_eq!(c.state, State::Connecting);
        let (h, _) = c.next_for_guest(4096).ok_or(io::ErrorKind::Other)?;
        assert_eq!((h.op, h.dst_port, h.src_port), (op::REQUEST, 1000, 1 << 30));
        assert_eq!(c.on_guest(&guest(op::RESPONSE, 0), &[]), Verdict::Keep);
        let mut ok = [0u8; 14];
        std::io::Read::read_exact(&mut &theirs, &mut ok)?;
        assert_eq!(&ok, b"OK 1073741824\n");
        Ok((c, theirs))
    }

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"connect 52",
            b"CONNECT 5 2",
            b"CONNECT 0x10",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bytes_flow_both_ways_within_credit() -> io::Result<()> {
        let (mut c, theirs) = connected()?;
        // Guest to host.
        assert_eq!(c.on_guest(&guest(op::RW, 5), b"hello"), Verdict::Keep);
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut &theirs, &mut got)?;
        assert_eq!(&got, b"hello");
        // Host to guest: no more than the guest's 4096 bytes of credit.
        std::io::Write::write_all(&mut &theirs, &[7u8; 10000])?;
        assert!(c.wants_read());
        assert_eq!(c.on_readable(), Verdict::Keep);
        assert!(!c.wants_read(), "credit used up");
        let (h, d) = c.next_for_guest(1000).ok_or(io::ErrorKind::Other)?;
        assert_eq!((h.op, d.len(), h.fwd_cnt), (op::RW, 1000, 5));
        let (_, d) = c.next_for_guest(8000).ok_or(io::ErrorKind::Other)?;
        assert_eq!(d.len(), 3096);
        // Out of credit with nothing buffered: a credit request, then
        // nothing until the guest's update.
        let (h, _) = c.next_for_guest(8000).ok_or(io::ErrorKind::Other)?;
        assert_eq!(h.op, op::CREDIT_REQUEST);
        assert!(c.next_for_guest(8000).is_none());
        let mut upd = guest(op::CREDIT_UPDATE, 0);
        upd.fwd_cnt = 4096;
        assert_eq!(c.on_guest(&upd, &[]), Verdict::Keep);
        assert!(c.wants_read());
        Ok(())
    }

    #[test]
    fn a_guest_past_its_credit_is_reset() -> io::Result<()> {
        let (mut c, _theirs) = connected()?;
        // The client does not read: fill the socket, then our buffer.
        let chunk = vec![1u8; MAX_PAYLOAD as usize];
        let mut v = Verdict::Keep;
        for _ in 0..64 {
            v = c.on_guest(&guest(op::RW, chunk.len() as u32), &chunk);
            if v != Verdict::Keep {
                break;
            }
        }
        assert_eq!(v, Verdict::Reset);
        assert!(c.to_host.len() <= BUF_ALLOC as usize);
        Ok(())
    }

    #[test]
    fn shutdowns_end_in_a_reset() -> io::Result<()> {
        let (mut c, theirs) = connected()?;
        // Host EOF: SHUTDOWN(SEND) to the guest.
        theirs.shutdown(std::net::Shutdown::Write)?;
        assert_eq!(c.on_readable(), Verdict::Keep);
        let (h, _) = c.next_for_guest(4096).ok_or(io::ErrorKind::Other)?;
        assert_eq!((h.op, h.flags), (op::SHUTDOWN, shutdown::SEND));
        // The guest still sends; then it shuts its sending side.
        assert_eq!(c.on_guest(&guest(op::RW, 2), b"ok"), Verdict::Keep);
        let mut sd = guest(op::SHUTDOWN, 0);
        sd.flags = shutdown::SEND;
        assert_eq!(c.on_guest(&sd, &[]), Verdict::Reset);
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut &theirs, &mut all)?;
        assert_eq!(all, b"ok");
        Ok(())
    }

    #[test]
    fn the_guest_refusing_or_answering_out_of_turn() -> io::Result<()> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut c = Connection::from_host(ours, 3, 7, Instant::now());
        assert!(!c.guest_knows());
        std::io::Write::write_all(&mut &theirs, b"CONNECT 9\n")?;
        c.on_readable();
        // A RESPONSE before the REQUEST went out is out of turn.
        assert_eq!(c.on_guest(&guest(op::RESPONSE, 0), &[]), Verdict::Reset);
        let _ = c.next_for_guest(100);
        assert!(c.guest_knows());
        assert_eq!(c.on_guest(&guest(op::RST, 0), &[]), Verdict::Drop);
        // Garbage and over-long lines end the client.
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut c = Connection::from_host(ours, 3, 7, Instant::now());
        std::io::Write::write_all(&mut &theirs, &[b'C'; 20])?;
        assert_eq!(c.on_readable(), Verdict::Keep);
        std::io::Write::write_all(&mut &theirs, &[b'C'; 20])?;
        assert_eq!(c.on_readable(), Verdict::Drop);
        // An unknown op on a live connection resets it.
        let (mut c, _t) = connected()?;
        assert_eq!(c.on_guest(&guest(99, 0), &[]), Verdict::Reset);
        Ok(())
    }
}
