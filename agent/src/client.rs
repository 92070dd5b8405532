//! The host side, blocking: reach a VM guest's port through the VM's Unix
//! socket ([`connect_vm`]), greet the agent ([`Client::hello`]), start
//! processes ([`Client::exec`]) and take their output and exits
//! ([`Client::recv`], [`Client::wait`]); a [`Sender`] sends stdin,
//! signals and resizes, from another thread if need be
//! ([`Client::try_sender`] for a `UnixStream`); or make a fresh
//! connection a guest TCP port's stream ([`forward`]) or a flow of a guest
//! UDP port's datagrams ([`forward_udp`]).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::copy::{self, At, Sink, StreamSink};
use crate::frame::{self, Frame, HEADER_LEN, MAX_PAYLOAD, VERSION};
use crate::message::{self, Exec, Message, MessageDecoder};
use crate::tree::Limits;
use crate::MAIN_ID;

/// Longest reply line to `CONNECT`.
const MAX_CONNECT_REPLY: usize = 64;

/// A failure of the host side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the stream.
    #[error("agent connection")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a message.
    #[error("bad message from the agent")]
    Protocol(#[from] message::Error),
    /// The VM's socket did not connect us to the port.
    #[error("the VM refused CONNECT {port}: {reply:?}")]
    Connect {
        /// The port asked for.
        port: u32,
        /// What it said instead of `OK`.
        reply: String,
    },
    /// The agent speaks another version.
    #[error("the agent speaks protocol version {got}, this side {VERSION}")]
    Version {
        /// Its version.
        got: u32,
    },
    /// The agent refused the request (or, for id 0, the connection).
    #[error("the agent refused {id}: {message}")]
    Refused {
        /// The id.
        id: u32,
        /// Its reason.
        message: String,
    },
    /// A message out of place (e.g. no `Hello` first).
    #[error("unexpected {0:?} from the agent")]
    Unexpected(Box<Message>),
    /// The agent closed the connection.
    #[error("the agent closed the connection")]
    Closed,
}

/// Connects to `port` of the VM whose vsock Unix socket is `uds`: writes
/// `CONNECT <port>\n` and takes the `OK <n>\n` line; the stream then
/// carries the guest port's bytes.
pub fn connect_vm(uds: &Path, port: u32) -> Result<UnixStream, Error> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // One byte at a time: nothing after the line may be read here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 || line.len() >= MAX_CONNECT_REPLY {
            break;
        }
        if b[0] == b'\n' {
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("OK ") {
                return Ok(s);
            }
            break;
        }
        line.push(b[0]);
    }
    Err(Error::Connect {
        port,
        reply: String::from_utf8_lossy(&line).into_owned(),
    })
}

/// Most messages `forward` reads before its answer (`Hello` and the main
/// workload's `Started` come first).
const MAX_BEFORE_FORWARDING: usize = 8;

/// Makes `stream`, a fresh connection to the agent, a byte stream to the
/// guest's TCP `port` on 127.0.0.1: greets the agent, asks for `Forward`
/// and waits for `Forwarding`. Frames are read exactly, header then
/// payload, so nothing of the port's own bytes is read here. The caller
/// bounds the wait (a read timeout on the stream).
pub fn forward<S: Read + Write>(stream: S, port: u16) -> Result<S, Error> {
    forward_as(stream, &Message::Forward { port })
}

/// Makes `stream`, a fresh connection to the agent, one flow of the
/// guest's UDP `port` on 127.0.0.1: as [`forward`], with `ForwardUdp`;
/// the stream then carries datagrams framed by [`crate::datagram`].
pub fn forward_udp<S: Read + Write>(stream: S, port: u16) -> Result<S, Error> {
    forward_as(stream, &Message::ForwardUdp { port })
}

fn forward_as<S: Read + Write>(mut stream: S, request: &Message) -> Result<S, Error> {
    let mut out = Message::Hello {
        version: u32::from(VERSION),
    }
    .encode()?;
    request.encode_into(&mut out)?;
    stream.write_all(&out)?;
    for _ in 0..MAX_BEFORE_FORWARDING {
        let mut h = [0u8; HEADER_LEN];
        read_exact(&mut stream, &mut h)?;
        let (kind, id, len) = frame::parse_header(&h).map_err(message::Error::from)?;
        let mut payload = vec![0u8; len];
        read_exact(&mut stream, &mut payload)?;
        match Message::decode(&Frame { kind, id, payload })? {
            Message::Forwarding => return Ok(stream),
            Message::Hello { version } if version == u32::from(VERSION) => {}
            Message::Hello { version } => return Err(Error::Version { got: version }),
            Message::Started { id: 0, .. } => {}
            Message::Failed { id, message } => return Err(Error::Refused { id, message }),
            m => return Err(Error::Unexpected(Box::new(m))),
        }
    }
    Err(Error::Closed)
}

fn read_exact<S: Read>(s: &mut S, buf: &mut [u8]) -> Result<(), Error> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Closed,
        _ => Error::Io(e),
    })
}

/// Sends requests on a stream.
#[derive(Debug)]
pub struct Sender<W: Write> {
    w: W,
}

impl<W: Write> Sender<W> {
    /// A sender on `w` (after the `Hello` exchange).
    pub fn new(w: W) -> Self {
        Sender { w }
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message) -> Result<(), Error> {
        let bytes = m.encode()?;
        self.w.write_all(&bytes)?;
        Ok(())
    }

    /// Sends `data` to the stdin of `id` (in frames of at most 64 KiB).
    pub fn stdin(&mut self, id: u32, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.send(&Message::Stdin {
                id,
                data: chunk.to_vec(),
            })?;
        }
        Ok(())
    }

    /// Ends the stdin of `id`.
    pub fn stdin_eof(&mut self, id: u32) -> Result<(), Error> {
        self.send(&Message::StdinEof { id })
    }

    /// Sends signal `signo` to `id` (0: the main workload).
    pub fn signal(&mut self, id: u32, signo: i32) -> Result<(), Error> {
        self.send(&Message::Signal {
            id,
            signo: signo as u32,
        })
    }

    /// Sets the terminal size of `id`.
    pub fn resize(&mut self, id: u32, rows: u16, cols: u16) -> Result<(), Error> {
        self.send(&Message::Resize { id, rows, cols })
    }
}

/// One connection to the agent.
#[derive(Debug)]
pub struct Client<S: Read + Write> {
    stream: S,
    decoder: MessageDecoder,
    /// Messages read while waiting for another one, for `recv`.
    queued: VecDeque<Message>,
    /// Messages decoded from the stream but not yet read, oldest first.
    inbox: VecDeque<Message>,
}

impl<S: Read + Write> Client<S> {
    /// Exchanges `Hello` on `stream` (connected to the agent's port).
    pub fn hello(stream: S) -> Result<Self, Error> {
        let mut c = Client {
            stream,
            decoder: MessageDecoder::new(),
            queued: VecDeque::new(),
            inbox: VecDeque::new(),
        };
        c.sender().send(&Message::Hello {
            version: u32::from(VERSION),
        })?;
        match c.read_message()? {
            Message::Hello { version } if version == u32::from(VERSION) => Ok(c),
            Message::Hello { version } => Err(Error::Version { got: version }),
            Message::Failed { id, message } => Err(Error::Refused { id, message }),
            m => Err(Error::Unexpected(Box::new(m))),
        }
    }

    /// A sender on this connection's stream.
    pub fn sender(&mut self) -> Sender<&mut S> {
        Sender::new(&mut self.stream)
    }

    /// Asks for `exec` and waits for the answer: the pid of the started
    /// process, or the agent's refusal. Other messages that arrive
    /// meanwhile are kept for [`recv`](Client::recv).
    pub fn exec(&mut self, exec: &Exec) -> Result<u32, Error> {
        self.sender().send(&Message::Exec(exec.clone()))?;
        let mut held = VecDeque::new();
        let result = loop {
            match self.read_message() {
                Ok(Message::Started { id, pid }) if id == exec.id => break Ok(pid),
                Ok(Message::Failed { id, message }) if id == exec.id || id == 0 => {
                    break Err(Error::Refused { id, message })
                }
                Ok(m) => held.push_back(m),
                Err(e) => break Err(e),
            }
        };
        held.append(&mut self.queued);
        self.queued = held;
        result
    }

    /// The next message from the agent; [`Error::Closed`] at the end.
    pub fn recv(&mut self) -> Result<Message, Error> {
        match self.queued.pop_front() {
            Some(m) => Ok(m),
            None => self.read_message(),
        }
    }

    /// Copies the output of `id` to `stdout` and `stderr` until it exits;
    /// its exit code. Messages about other ids are kept for `recv`.
    pub fn wait(
        &mut self,
        id: u32,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, Error> {
        let mut others = VecDeque::new();
        let result = loop {
            let m = match self.recv() {
                Ok(m) => m,
                Err(e) => break Err(e),
            };
            match m {
                Message::Stdout { id: i, data } if i == id => stdout.write_all(&data)?,
                Message::Stderr { id: i, data } if i == id => stderr.write_all(&data)?,
                Message::Exited { id: i, code } if i == id => break Ok(code),
                Message::Failed { id: i, message } if i == id || i == 0 => {
                    break Err(Error::Refused { id: i, message })
                }
                m => others.push_back(m),
            }
        };
        others.append(&mut self.queued);
        self.queued = others;
        result
    }

    /// Copies the tree at guest `path` into `sink` (`CopyOut`; `contents`:
    /// the path ended in `/.`). Everything the agent sends is checked
    /// against the tree's shape and `limits` before `sink` sees it;
    /// `src_path` names the source in messages. A connection of its own:
    /// nothing else may run on it.
    pub fn copy_out(
        &mut self,
        path: &str,
        contents: bool,
        sink: &mut dyn Sink,
        src_path: &Path,
        limits: Limits,
    ) -> Result<(), copy::Error> {
        self.sender().send(&Message::CopyOut {
            contents,
            path: path.to_owned(),
        })?;
        let mut next = || self.copy_message();
        copy::receive(&mut next, limits, sink, src_path).map_err(copy::Error::or_stalled)
    }

    /// Copies the host's tree at `src` (named `src_path`) to guest `path`
    /// (`CopyIn`, placed as `docker cp` places it; `contents`: the source
    /// ended in `/.`), its top entry named `top_name`. Returns once the
    /// agent has written it all. A connection of its own.
    pub fn copy_in(
        &mut self,
        path: &str,
        contents: bool,
        src: &At<'_>,
        src_path: &Path,
        top_name: &OsStr,
    ) -> Result<(), copy::Error> {
        self.sender().send(&Message::CopyIn {
            contents,
            path: path.to_owned(),
        })?;
        match self.copy_message()? {
            Message::CopyReady => {}
            m => return Err(Error::Unexpected(Box::new(m)).into()),
        }
        let sent = {
            let mut sink = StreamSink::new(&mut self.stream, Some(top_name), true);
            copy::walk(src, src_path, &mut sink).and_then(|()| sink.finish().map(|_| ()))
        };
        match sent {
            Ok(()) => {}
            Err(copy::Error::Send(e)) => {
                // The agent stopped taking the tree: its reason, if it gave one.
                return Err(match self.copy_message() {
                    Err(peer @ copy::Error::Peer(_)) => peer,
                    _ => copy::Error::Send(e).or_stalled(),
                });
            }
            Err(e) => return Err(e),
        }
        match self.copy_message().map_err(copy::Error::or_stalled)? {
            Message::CopyEnd => Ok(()),
            m => Err(Error::Unexpected(Box::new(m)).into()),
        }
    }

    /// The next message of a copy: the agent's refusal as the error, the
    /// main workload's `Started` skipped.
    fn copy_message(&mut self) -> Result<Message, copy::Error> {
        loop {
            match self.recv()? {
                Message::Started { id: MAIN_ID, .. } => {}
                Message::Failed { message, .. } => return Err(copy::Error::Peer(message)),
                Message::Exited { id: MAIN_ID, code } => {
                    return Err(copy::Error::Peer(format!(
                        "the box's main process ended ({code}) during the copy"
                    )))
                }
                m => return Ok(m),
            }
        }
    }

    /// The stream, and nothing of what was read but not yet taken.
    pub fn into_inner(self) -> S {
        self.stream
    }

    fn read_message(&mut self) -> Result<Message, Error> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let took = self.decoder.feed(rest);
                rest = &rest[took..];
                // A full decoder holds whole frames: take them, in order,
                // to make room for the rest.
                while let Some(m) = self.decoder.next_message()? {
                    self.inbox.push_back(m);
                }
            }
        }
    }
}

impl Client<UnixStream> {
    /// A sender on a clone of the socket, for another thread.
    pub fn try_sender(&self) -> Result<Sender<UnixStream>, Error> {
        Ok(Sender::new(self.stream.try_clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn temp_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "twinbox-agent-client-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::create_dir_all(&d);
        d
    }

    #[test]
    fn forward_reads_no_byte_past_forwarding() -> Result<(), Box<dyn std::error::Error>> {
        let (host, mut guest) = UnixStream::pair()?;
        let t = std::thread::spawn(move || -> Result<(), Error> {
            let mut d = MessageDecoder::new();
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while got.len() < 2 {
                let n = guest.read(&mut buf)?;
                d.feed(&buf[..n]);
                while let Some(m) = d.next_message()? {
                    got.push(m);
                }
            }
            assert_eq!(got[1], Message::Forward { port: 8080 });
            let mut out = Message::Hello { version: 1 }.encode()?;
            Message::Started { id: 0, pid: 1 }.encode_into(&mut out)?;
            Message::Forwarding.encode_into(&mut out)?;
            out.extend_from_slice(b"HTTP/1.0 200 OK\r\n");
            guest.write_all(&out)?;
            Ok(())
        });
        let mut s = forward(host, 8080)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        assert_eq!(rest, b"HTTP/1.0 200 OK\r\n");
        t.join().map_err(|_| "guest thread")??;

        // Nobody listens: the agent's refusal is the error.
        let (host, mut guest) = UnixStream::pair()?;
        let mut out = Message::Hello { version: 1 }.encode()?;
        Message::Failed {
            id: 0,
            message: "connection refused".into(),
        }
        .encode_into(&mut out)?;
        guest.write_all(&out)?;
        match forward(host, 1) {
            Err(Error::Refused { message, .. }) => assert_eq!(message, "connection refused"),
            other => panic!("{other:?}"),
        }
        // A peer that sends garbage or only chatter is an error, not a hang.
        let (host, mut guest) = UnixStream::pair()?;
        guest.write_all(&[0xff; 64])?;
        assert!(matches!(forward(host, 1), Err(Error::Protocol(_))));
        let (host, mut guest) = UnixStream::pair()?;
        let mut out = Vec::new();
        for _ in 0..20 {
            Message::Started { id: 0, pid: 1 }.encode_into(&mut out)?;
        }
        guest.write_all(&out)?;
        assert!(matches!(forward(host, 1), Err(Error::Closed)));
        Ok(())
    }

    #[test]
    fn forward_udp_asks_for_the_udp_port_and_leaves_the_datagrams(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (host, mut guest) = UnixStream::pair()?;
        let t = std::thread::spawn(move || -> Result<Vec<Message>, Error> {
            let mut d = MessageDecoder::new();
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while got.len() < 2 {
                let n = guest.read(&mut buf)?;
                d.feed(&buf[..n]);
                while let Some(m) = d.next_message()? {
                    got.push(m);
                }
            }
            let mut out = Message::Hello { version: 1 }.encode()?;
            Message::Forwarding.encode_into(&mut out)?;
            let _ = crate::datagram::encode_into(b"reply", &mut out);
            guest.write_all(&out)?;
            Ok(got)
        });
        let mut s = forward_udp(host, 5353)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        assert_eq!(rest, b"\x05\x00reply");
        let asked = t.join().map_err(|_| "guest thread")??;
        assert_eq!(asked[1], Message::ForwardUdp { port: 5353 });
        Ok(())
    }

    #[test]
    fn connect_vm_speaks_the_connect_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir();
        let path = dir.join("vm.sock");
        let l = UnixListener::bind(&path)?;
        let t = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut got = Vec::new();
            for reply in [&b"OK 1073741824\nTB"[..], b"NO\n"] {
                let (mut s, _) = l.accept()?;
                let mut b = [0u8; 1];
                while s.read(&mut b)? == 1 && b[0] != b'\n' {
                    got.push(b[0]);
                }
                s.write_all(reply)?;
            }
            Ok(got)
        });
        let mut s = connect_vm(&path, 1024)?;
        // What follows the OK line is left on the stream.
        let mut two = [0u8; 2];
        s.read_exact(&mut two)?;
        assert_eq!(&two, b"TB");
        match connect_vm(&path, 7) {
            Err(Error::Connect { port: 7, reply }) => assert_eq!(reply, "NO"),
            other => panic!("{other:?}"),
        }
        let got = t.join().map_err(|_| "server thread")??;
        assert_eq!(got, b"CONNECT 1024CONNECT 7");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A stand-in guest on `guest` that greets, then sends `msgs`, then
    /// holds the connection open until the host is done.
    fn fake_guest(mut guest: UnixStream, msgs: Vec<Message>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut out = Message::Hello { version: 1 }.encode().unwrap_or_default();
            let _ = Message::Started { id: 0, pid: 1 }.encode_into(&mut out);
            for m in &msgs {
                let _ = m.encode_into(&mut out);
            }
            let _ = guest.write_all(&out);
            let mut sink = Vec::new();
            let _ = guest.read_to_end(&mut sink);
        })
    }

    #[test]
    fn a_hostile_guest_copy_meets_the_checks_and_the_timeout(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use crate::copy::{FsSink, Policy};
        use crate::message::{Entry, EntryKind, Time};
        use std::os::fd::AsFd;
        let d = tempfile::tempdir()?;
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside)?;
        let top = nix::fcntl::open(
            d.path(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )?;
        let policy = Policy {
            owner: None,
            mode_mask: 0o1777,
        };
        let ent = |kind, name: &[u8], size, target: &[u8]| {
            Message::Entry(Entry {
                kind,
                mode: 0o4755,
                atime: Time::default(),
                mtime: Time::default(),
                size,
                name: name.to_vec(),
                target: target.to_vec(),
            })
        };
        let copy = |at: &str, msgs: Vec<Message>| -> Result<(), copy::Error> {
            let (host, guest) = UnixStream::pair().map_err(copy::Error::Receive)?;
            host.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .map_err(copy::Error::Receive)?;
            let t = fake_guest(guest, msgs);
            let mut c = Client::hello(host)?;
            let mut sink = FsSink::new(
                &At {
                    dir: top.as_fd(),
                    name: OsStr::new(at),
                },
                &d.path().join(at),
                policy,
            );
            let r = c.copy_out(
                "/x",
                false,
                &mut sink,
                Path::new("box:/x"),
                Limits::default(),
            );
            drop(c);
            let _ = t.join();
            r
        };
        // A symlink out and a directory through it: refused, nothing
        // written outside; the set-uid file kept without its bit.
        let r = copy(
            "got",
            vec![
                ent(EntryKind::Dir, b"x", 0, b""),
                ent(EntryKind::File, b"suid", 1, b""),
                Message::Data {
                    data: b"s".to_vec(),
                },
                ent(
                    EntryKind::Symlink,
                    b"esc",
                    0,
                    outside.to_string_lossy().as_bytes(),
                ),
                ent(EntryKind::Dir, b"esc", 0, b""),
            ],
        );
        assert!(matches!(r, Err(copy::Error::Mismatch(..))), "{r:?}");
        assert_eq!(std::fs::read_dir(&outside)?.count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("got/suid"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        // A guest that stops sending: the timeout, said as such.
        let r = copy("stalled", vec![ent(EntryKind::File, b"x", 10, b"")]);
        assert!(matches!(r, Err(copy::Error::Stalled)), "{r:?}");
        // Its refusal is its reason, and an announced size over the limit
        // is refused before the data.
        let r = copy(
            "refused",
            vec![Message::Failed {
                id: 0,
                message: "/x: no such file or directory".into(),
            }],
        );
        assert!(
            matches!(&r, Err(copy::Error::Peer(m)) if m.ends_with("no such file or directory"))
        );
        let r = copy("huge", vec![ent(EntryKind::File, b"x", u64::MAX, b"")]);
        assert!(matches!(r, Err(copy::Error::Stream { .. })), "{r:?}");
        assert!(!d.path().join("huge").exists() && !d.path().join("refused").exists());
        Ok(())
    }

    #[test]
    fn hello_refuses_another_version() -> Result<(), Box<dyn std::error::Error>> {
        let (a, mut b) = UnixStream::pair()?;
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let _ = b.read_exact(&mut buf);
            let _ = b.write_all(&Message::Hello { version: 9 }.encode().unwrap_or_default());
        });
        match Client::hello(a) {
            Err(Error::Version { got: 9 }) => {}
            other => panic!("{other:?}"),
        }
        let _ = t.join();
        Ok(())
    }
}
