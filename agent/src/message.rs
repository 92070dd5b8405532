//! The messages carried in frames, their payload encoding (see the crate's
//! top comment) and its bounds: every count and length is checked against
//! what is left of the payload and against the limits here before anything
//! is allocated for it.

use crate::frame::{self, Frame, Kind, MAX_PAYLOAD};

/// Most argv entries in an `Exec`.
pub const MAX_ARGV: usize = 1024;
/// Most environment entries in an `Exec`.
pub const MAX_ENV: usize = 1024;
/// Highest signal number (Linux's `SIGRTMAX`).
pub const MAX_SIGNAL: u32 = 64;
/// Longest path in a `CopyOut` or `CopyIn` (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest entry name (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Longest symlink target (`PATH_MAX` less its NUL).
pub const MAX_TARGET: usize = 4095;

/// A frame that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bad frame.
    #[error(transparent)]
    Frame(#[from] frame::Error),
    /// The payload ends inside a field.
    #[error("{kind:?} message cut short")]
    Truncated {
        /// The message.
        kind: Kind,
    },
    /// Bytes after the last field.
    #[error("{kind:?} message has {extra} bytes too many")]
    Trailing {
        /// The message.
        kind: Kind,
        /// How many.
        extra: usize,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not UTF-8")]
    Utf8 {
        /// Which field.
        what: &'static str,
    },
    /// A string holding a NUL byte (argv, env, cwd and user become C strings).
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which field.
        what: &'static str,
    },
    /// A list longer than its limit.
    #[error("{count} {what} entries, at most {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An `Exec` with an empty argv or program.
    #[error("Exec with no program")]
    NoProgram,
    /// Exec flag bits this version does not know.
    #[error("Exec flags {0:#04x} has unknown bits")]
    Flags(u8),
    /// A signal number out of range.
    #[error("signal {0} is not 1 to {MAX_SIGNAL}")]
    Signal(u32),
    /// A `Forward` or `ForwardUdp` to port 0.
    #[error("forward to port 0")]
    Port,
    /// Copy flag bits this version does not know.
    #[error("copy flags {0:#04x} has unknown bits")]
    CopyFlags(u8),
    /// A copy's path that is empty or too long.
    #[error("copy path of {0} bytes, 1 to {MAX_PATH} allowed")]
    CopyPath(usize),
    /// An entry kind this version does not know.
    #[error("unknown entry kind {0}")]
    EntryKind(u8),
    /// Mode bits an entry of its kind may not have.
    #[error("{kind:?} entry with mode {mode:#o}")]
    Mode {
        /// The entry's kind.
        kind: EntryKind,
        /// Its mode.
        mode: u32,
    },
    /// A time whose nanoseconds are a second or more.
    #[error("a time with {0} nanoseconds")]
    Nanos(u32),
    /// A size on an entry that is not a file.
    #[error("{0:?} entry with a size")]
    Size(EntryKind),
    /// An entry name that is not one file name.
    #[error("entry name {0:?} is not one file name")]
    Name(String),
    /// A symlink without a good target, or a target on another entry.
    #[error("{kind:?} entry with a target of {len} bytes")]
    Target {
        /// The entry's kind.
        kind: EntryKind,
        /// The target's length.
        len: usize,
    },
    /// The message does not fit in one frame.
    #[error("{kind:?} message of {len} bytes is over the frame limit of {MAX_PAYLOAD}")]
    TooBig {
        /// The message.
        kind: Kind,
        /// Its payload length.
        len: usize,
    },
}

/// A request to start a process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exec {
    /// The host's id for it (not 0).
    pub id: u32,
    /// Program and arguments; the program is looked up in `PATH` from
    /// `env` when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs, the whole environment.
    pub env: Vec<String>,
    /// Working directory; empty is `/`.
    pub cwd: String,
    /// `uid[:gid]` or a user name of the box's /etc/passwd; empty is the
    /// agent's own identity (root).
    pub user: String,
    /// Run on a new terminal (stdout and stderr are one stream, `Stdout`).
    pub tty: bool,
    /// The terminal's rows (with `tty`).
    pub rows: u16,
    /// The terminal's columns (with `tty`).
    pub cols: u16,
    /// Relay `Stdin`; otherwise stdin is /dev/null (on a terminal: the
    /// terminal gets no input).
    pub stdin: bool,
    /// Keep running when the connection ends (stdio on /dev/null, no
    /// output relayed); otherwise a dropped connection kills it.
    pub detach: bool,
}

const FLAG_TTY: u8 = 1;
const FLAG_STDIN: u8 = 2;
const FLAG_DETACH: u8 = 4;

const COPY_CONTENTS: u8 = 1;

/// What a tree [`Entry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A directory: the entries that follow, up to its `Up`, are in it.
    Dir = 1,
    /// A regular file: `Data` frames of exactly its size follow.
    File = 2,
    /// A symbolic link, copied as one.
    Symlink = 3,
    /// Something not copied (a FIFO, socket or device), named so the
    /// receiver can say so; its mode is the file type (`S_IFMT` bits).
    Skipped = 4,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<EntryKind> {
        Some(match b {
            1 => EntryKind::Dir,
            2 => EntryKind::File,
            3 => EntryKind::Symlink,
            4 => EntryKind::Skipped,
            _ => return None,
        })
    }
}

/// The file types a `Skipped` entry may name.
const SKIPPED_TYPES: [u32; 4] = [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK];

/// A point in time: seconds since the epoch and nanoseconds (under 10^9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

/// One entry of a tree being copied (see the crate's top comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (at most `0o7777`); for `Skipped`, the file type.
    pub mode: u32,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
    /// A file's size (the bytes of `Data` that follow); 0 for the others.
    pub size: u64,
    /// Its name: one file name (1 to [`MAX_NAME`] bytes, no `/` or NUL,
    /// not `.` or `..`). The receiver decides the top entry's own name.
    pub name: Vec<u8>,
    /// A symlink's target (1 to [`MAX_TARGET`] bytes, no NUL, never
    /// followed by the receiver); empty for the others.
    pub target: Vec<u8>,
}

/// Whether `name` is one file name an entry may have.
pub fn is_file_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The sender's protocol version.
    Hello {
        /// It.
        version: u32,
    },
    /// Start a process.
    Exec(Exec),
    /// Process `id` runs as `pid` (in the guest).
    Started {
        /// Its id.
        id: u32,
        /// Its pid.
        pid: u32,
    },
    /// Bytes for the stdin of `id`.
    Stdin {
        /// Its id.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The stdin of `id` ends (on a terminal: an end-of-file character).
    StdinEof {
        /// Its id.
        id: u32,
    },
    /// Bytes `id` wrote to stdout (or to its terminal).
    Stdout {
        /// Its id.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Bytes `id` wrote to stderr.
    Stderr {
        /// Its id.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Send `signo` to `id` (to its process group when on a terminal).
    Signal {
        /// Its id.
        id: u32,
        /// The signal number, 1 to [`MAX_SIGNAL`].
        signo: u32,
    },
    /// The terminal of `id` is now this size.
    Resize {
        /// Its id.
        id: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// `id` ended with `code` (128 + N for signal N) and its output is all sent.
    Exited {
        /// Its id.
        id: u32,
        /// Its code.
        code: i32,
    },
    /// The request for `id` was refused; for id 0, the connection ends.
    Failed {
        /// Its id.
        id: u32,
        /// Why.
        message: String,
    },
    /// Make this connection a byte stream to the guest's TCP `port` on
    /// 127.0.0.1 (a published port). Sent after `Hello`, and nothing after
    /// it until the answer.
    Forward {
        /// The port, 1 to 65535.
        port: u16,
    },
    /// The guest is connected to the port: from the end of this frame on,
    /// the connection carries that TCP stream's bytes, both ways, unframed
    /// (after `Forward`), or that UDP port's datagrams, each framed by
    /// [`crate::datagram`] (after `ForwardUdp`).
    Forwarding,
    /// Send the tree at guest `path` (sent after `Hello`, alone on its
    /// connection): the agent answers with the tree's entries and
    /// `CopyEnd`, or `Failed`.
    CopyOut {
        /// `path` ends in `/.`: the directory it names is followed, even
        /// through a symlink, and its contents are what the host wants.
        contents: bool,
        /// The guest path, 1 to [`MAX_PATH`] bytes, resolved in the guest.
        path: String,
    },
    /// Take a tree at guest `path` (sent after `Hello`, alone on its
    /// connection): the agent answers `CopyReady` (or `Failed`), the host
    /// sends the entries and `CopyEnd`, the agent answers `CopyEnd` once
    /// all is written (or `Failed`). Placed as `docker cp` places it: into
    /// `path` under the top entry's name if `path` is a directory (or, with
    /// `contents`, into `path` itself); otherwise at `path`.
    CopyIn {
        /// The host's source ended in `/.`: its contents go into `path`.
        contents: bool,
        /// The guest path, 1 to [`MAX_PATH`] bytes, resolved in the guest.
        path: String,
    },
    /// The destination of a `CopyIn` is resolved: send the tree.
    CopyReady,
    /// One entry of a tree.
    Entry(Entry),
    /// Bytes of the file entry before it.
    Data {
        /// The bytes.
        data: Vec<u8>,
    },
    /// The directory entered last ends (its mode and times are applied now).
    Up,
    /// The tree is complete (or, from the agent after `CopyIn`, written).
    CopyEnd,
    /// Make this connection carry datagrams to and from the guest's UDP
    /// `port` on 127.0.0.1 (one flow of a published UDP port). Sent after
    /// `Hello`, and nothing after it until the answer.
    ForwardUdp {
        /// The port, 1 to 65535.
        port: u16,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&b[..b.len().min(u16::MAX as usize)]);
}

fn put_time(out: &mut Vec<u8>, t: Time) {
    out.extend_from_slice(&t.secs.to_le_bytes());
    out.extend_from_slice(&t.nanos.to_le_bytes());
}

fn copy_payload(contents: bool, path: &str) -> Vec<u8> {
    let mut p = vec![if contents { COPY_CONTENTS } else { 0 }];
    put_str(&mut p, path);
    p
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for s in items.iter().take(u16::MAX as usize) {
        put_str(out, s);
    }
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::Exec(_) => Kind::Exec,
            Message::Started { .. } => Kind::Started,
            Message::Stdin { .. } => Kind::Stdin,
            Message::StdinEof { .. } => Kind::StdinEof,
            Message::Stdout { .. } => Kind::Stdout,
            Message::Stderr { .. } => Kind::Stderr,
            Message::Signal { .. } => Kind::Signal,
            Message::Resize { .. } => Kind::Resize,
            Message::Exited { .. } => Kind::Exited,
            Message::Failed { .. } => Kind::Failed,
            Message::Forward { .. } => Kind::Forward,
            Message::Forwarding => Kind::Forwarding,
            Message::CopyOut { .. } => Kind::CopyOut,
            Message::CopyIn { .. } => Kind::CopyIn,
            Message::CopyReady => Kind::CopyReady,
            Message::Entry(_) => Kind::Entry,
            Message::Data { .. } => Kind::Data,
            Message::Up => Kind::Up,
            Message::CopyEnd => Kind::CopyEnd,
            Message::ForwardUdp { .. } => Kind::ForwardUdp,
        }
    }

    /// The id the message is about.
    pub fn id(&self) -> u32 {
        match self {
            Message::Hello { .. }
            | Message::Forward { .. }
            | Message::Forwarding
            | Message::CopyOut { .. }
            | Message::CopyIn { .. }
            | Message::CopyReady
            | Message::Entry(_)
            | Message::Data { .. }
            | Message::Up
            | Message::CopyEnd
            | Message::ForwardUdp { .. } => 0,
            Message::Exec(e) => e.id,
            Message::Started { id, .. }
            | Message::Stdin { id, .. }
            | Message::StdinEof { id }
            | Message::Stdout { id, .. }
            | Message::Stderr { id, .. }
            | Message::Signal { id, .. }
            | Message::Resize { id, .. }
            | Message::Exited { id, .. }
            | Message::Failed { id, .. } => *id,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Message::Hello { version } => version.to_le_bytes().to_vec(),
            Message::Exec(e) => {
                let mut p = Vec::new();
                let flags = (if e.tty { FLAG_TTY } else { 0 })
                    | (if e.stdin { FLAG_STDIN } else { 0 })
                    | (if e.detach { FLAG_DETACH } else { 0 });
                p.push(flags);
                p.extend_from_slice(&e.rows.to_le_bytes());
                p.extend_from_slice(&e.cols.to_le_bytes());
                put_str(&mut p, &e.cwd);
                put_str(&mut p, &e.user);
                put_list(&mut p, &e.argv);
                put_list(&mut p, &e.env);
                p
            }
            Message::Started { pid, .. } => pid.to_le_bytes().to_vec(),
            Message::Stdin { data, .. }
            | Message::Stdout { data, .. }
            | Message::Stderr { data, .. } => data.clone(),
            Message::StdinEof { .. } => Vec::new(),
            Message::Signal { signo, .. } => signo.to_le_bytes().to_vec(),
            Message::Resize { rows, cols, .. } => {
                let mut p = rows.to_le_bytes().to_vec();
                p.extend_from_slice(&cols.to_le_bytes());
                p
            }
            Message::Exited { code, .. } => code.to_le_bytes().to_vec(),
            Message::Failed { message, .. } => message.as_bytes().to_vec(),
            Message::Forward { port } | Message::ForwardUdp { port } => port.to_le_bytes().to_vec(),
            Message::CopyOut { contents, path } | Message::CopyIn { contents, path } => {
                copy_payload(*contents, path)
            }
            Message::Entry(e) => {
                let mut p = Vec::with_capacity(41 + e.name.len() + e.target.len());
                p.push(e.kind as u8);
                p.extend_from_slice(&e.mode.to_le_bytes());
                put_time(&mut p, e.atime);
                put_time(&mut p, e.mtime);
                p.extend_from_slice(&e.size.to_le_bytes());
                put_bytes16(&mut p, &e.name);
                put_bytes16(&mut p, &e.target);
                p
            }
            Message::Data { data } => data.clone(),
            Message::Forwarding | Message::CopyReady | Message::Up | Message::CopyEnd => Vec::new(),
        }
    }

    /// Appends the message's frame to `out`; a message whose payload does
    /// not fit one frame (an `Exec` too long, bytes over [`MAX_PAYLOAD`])
    /// is refused and nothing is appended. Checks what a receiver checks,
    /// so what encodes decodes.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let payload = self.payload();
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooBig {
                kind: self.kind(),
                len: payload.len(),
            });
        }
        if matches!(
            self,
            Message::Exec(_)
                | Message::Signal { .. }
                | Message::Forward { .. }
                | Message::ForwardUdp { .. }
                | Message::CopyOut { .. }
                | Message::CopyIn { .. }
                | Message::Entry(_)
        ) {
            // Refuse what the other side would refuse (NUL bytes, limits).
            Message::decode(&Frame {
                kind: self.kind(),
                id: self.id(),
                payload: payload.clone(),
            })?;
        }
        frame::encode_into(self.kind(), self.id(), &payload, out)?;
        Ok(())
    }

    /// The message's frame bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The message in a frame.
    pub fn decode(frame: &Frame) -> Result<Message, Error> {
        let kind = frame.kind;
        let id = frame.id;
        let mut r = Reader {
            kind,
            rest: &frame.payload,
        };
        let m = match kind {
            Kind::Hello => Message::Hello { version: r.u32()? },
            Kind::Exec => Message::Exec(r.exec(id)?),
            Kind::Started => Message::Started { id, pid: r.u32()? },
            Kind::Stdin => Message::Stdin { id, data: r.rest() },
            Kind::StdinEof => Message::StdinEof { id },
            Kind::Stdout => Message::Stdout { id, data: r.rest() },
            Kind::Stderr => Message::Stderr { id, data: r.rest() },
            Kind::Signal => {
                let signo = r.u32()?;
                if signo == 0 || signo > MAX_SIGNAL {
                    return Err(Error::Signal(signo));
                }
                Message::Signal { id, signo }
            }
            Kind::Resize => Message::Resize {
                id,
                rows: r.u16()?,
                cols: r.u16()?,
            },
            Kind::Exited => Message::Exited {
                id,
                code: r.u32()? as i32,
            },
            Kind::Failed => {
                let bytes = r.rest();
                let message = String::from_utf8(bytes).map_err(|_| Error::Utf8 {
                    what: "Failed message",
                })?;
                Message::Failed { id, message }
            }
            Kind::Forward => match r.u16()? {
                0 => return Err(Error::Port),
                port => Message::Forward { port },
            },
            Kind::Forwarding => Message::Forwarding,
            Kind::CopyOut => {
                let (contents, path) = r.copy()?;
                Message::CopyOut { contents, path }
            }
            Kind::CopyIn => {
                let (contents, path) = r.copy()?;
                Message::CopyIn { contents, path }
            }
            Kind::CopyReady => Message::CopyReady,
            Kind::Entry => Message::Entry(r.entry()?),
            Kind::Data => Message::Data { data: r.rest() },
            Kind::Up => Message::Up,
            Kind::CopyEnd => Message::CopyEnd,
            Kind::ForwardUdp => match r.u16()? {
                0 => return Err(Error::Port),
                port => Message::ForwardUdp { port },
            },
        };
        r.end()?;
        Ok(m)
    }
}

/// Reads fields off a payload, each checked against what is left.
struct Reader<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if self.rest.len() < n {
            return Err(Error::Truncated { kind: self.kind });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn time(&mut self) -> Result<Time, Error> {
        let secs = self.u64()? as i64;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Error::Nanos(nanos));
        }
        Ok(Time { secs, nanos })
    }

    fn bytes16(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.u16()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn copy(&mut self) -> Result<(bool, String), Error> {
        let flags = self.take(1)?[0];
        if flags & !COPY_CONTENTS != 0 {
            return Err(Error::CopyFlags(flags));
        }
        let path = self.string("copy path")?;
        if path.is_empty() || path.len() > MAX_PATH {
            return Err(Error::CopyPath(path.len()));
        }
        Ok((flags & COPY_CONTENTS != 0, path))
    }

    fn entry(&mut self) -> Result<Entry, Error> {
        let k = self.take(1)?[0];
        let kind = EntryKind::from_u8(k).ok_or(Error::EntryKind(k))?;
        let mode = self.u32()?;
        let atime = self.time()?;
        let mtime = self.time()?;
        let size = self.u64()?;
        let name = self.bytes16()?;
        let target = self.bytes16()?;
        let mode_ok = match kind {
            EntryKind::Skipped => SKIPPED_TYPES.contains(&mode),
            _ => mode & !0o7777 == 0,
        };
        if !mode_ok {
            return Err(Error::Mode { kind, mode });
        }
        if size != 0 && kind != EntryKind::File {
            return Err(Error::Size(kind));
        }
        if !is_file_name(&name) {
            return Err(Error::Name(String::from_utf8_lossy(&name).into_owned()));
        }
        let target_ok = match kind {
            EntryKind::Symlink => {
                !target.is_empty() && target.len() <= MAX_TARGET && !target.contains(&0)
            }
            _ => target.is_empty(),
        };
        if !target_ok {
            return Err(Error::Target {
                kind,
                len: target.len(),
            });
        }
        Ok(Entry {
            kind,
            mode,
            atime,
            mtime,
            size,
            name,
            target,
        })
    }

    fn rest(&mut self) -> Vec<u8> {
        let v = self.rest.to_vec();
        self.rest = &[];
        v
    }

    fn string(&mut self, what: &'static str) -> Result<String, Error> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| Error::Utf8 { what })?;
        if s.contains('\0') {
            return Err(Error::Nul { what });
        }
        Ok(s.to_owned())
    }

    fn list(&mut self, what: &'static str, max: usize) -> Result<Vec<String>, Error> {
        let count = self.u16()? as usize;
        if count > max {
            return Err(Error::TooMany { what, count, max });
        }
        // Each entry takes at least its 4-byte length: a count the rest
        // cannot hold is cut short before anything is reserved for it.
        if count * 4 > self.rest.len() {
            return Err(Error::Truncated { kind: self.kind });
        }
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(self.string(what)?);
        }
        Ok(v)
    }

    fn exec(&mut self, id: u32) -> Result<Exec, Error> {
        let flags = self.take(1)?[0];
        if flags & !(FLAG_TTY | FLAG_STDIN | FLAG_DETACH) != 0 {
            return Err(Error::Flags(flags));
        }
        let rows = self.u16()?;
        let cols = self.u16()?;
        let cwd = self.string("cwd")?;
        let user = self.string("user")?;
        let argv = self.list("argv", MAX_ARGV)?;
        let env = self.list("env", MAX_ENV)?;
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(Error::NoProgram);
        }
        Ok(Exec {
            id,
            argv,
            env,
            cwd,
            user,
            tty: flags & FLAG_TTY != 0,
            rows,
            cols,
            stdin: flags & FLAG_STDIN != 0,
            detach: flags & FLAG_DETACH != 0,
        })
    }

    fn end(&self) -> Result<(), Error> {
        match self.rest.len() {
            0 => Ok(()),
            extra => Err(Error::Trailing {
                kind: self.kind,
                extra,
            }),
        }
    }
}

/// A [`frame::Decoder`] that gives messages.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    frames: frame::Decoder,
}

impl MessageDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes what fits of `data`; see [`frame::Decoder::feed`].
    pub fn feed(&mut self, data: &[u8]) -> usize {
        self.frames.feed(data)
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.frames.pending()
    }

    /// The next whole message, `None` until one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        match self.frames.next_frame()? {
            Some(f) => Ok(Some(Message::decode(&f)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Exec {
        Exec {
            id: 5,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi; exit 3".into()],
            env: vec!["PATH=/bin".into(), "HOME=/".into()],
            cwd: "/tmp".into(),
            user: "1000:1000".into(),
            tty: true,
            rows: 24,
            cols: 80,
            stdin: true,
            detach: false,
        }
    }

    fn all() -> Vec<Message> {
        vec![
            Message::Hello { version: 1 },
            Message::Exec(exec()),
            Message::Exec(Exec {
                argv: vec!["true".into()],
                ..Exec::default()
            }),
            Message::Started { id: 5, pid: 42 },
            Message::Stdin {
                id: 5,
                data: b"input\n".to_vec(),
            },
            Message::StdinEof { id: 5 },
            Message::Stdout {
                id: 5,
                data: vec![0xff, 0, 1],
            },
            Message::Stderr {
                id: 5,
                data: Vec::new(),
            },
            Message::Signal { id: 0, signo: 15 },
            Message::Resize {
                id: 5,
                rows: 50,
                cols: 132,
            },
            Message::Exited { id: 0, code: -1 },
            Message::Exited { id: 5, code: 143 },
            Message::Failed {
                id: 5,
                message: "no such user \"ghost\"".into(),
            },
            Message::Forward { port: 1 },
            Message::Forward { port: 65535 },
            Message::Forwarding,
            Message::CopyOut {
                contents: false,
                path: "/etc/hostname".into(),
            },
            Message::CopyIn {
                contents: true,
                path: "/tmp/d".into(),
            },
            Message::CopyReady,
            Message::Entry(entry(EntryKind::Dir, b"d", b"")),
            Message::Entry(Entry {
                size: u64::MAX,
                ..entry(EntryKind::File, &[0xff, b'\n', 0x1b], b"")
            }),
            Message::Data {
                data: vec![0; MAX_PAYLOAD],
            },
            Message::Entry(entry(EntryKind::Symlink, b"l", &[b'x'; MAX_TARGET])),
            Message::Entry(Entry {
                mode: libc::S_IFCHR,
                ..entry(EntryKind::Skipped, &[b'n'; MAX_NAME], b"")
            }),
            Message::Up,
            Message::CopyEnd,
            Message::ForwardUdp { port: 53 },
            Message::ForwardUdp { port: 65535 },
        ]
    }

    fn entry(kind: EntryKind, name: &[u8], target: &[u8]) -> Entry {
        Entry {
            kind,
            mode: 0o4755,
            atime: Time {
                secs: -1,
                nanos: 999_999_999,
            },
            mtime: Time {
                secs: i64::MAX,
                nanos: 0,
            },
            size: 0,
            name: name.to_vec(),
            target: target.to_vec(),
        }
    }

    #[test]
    fn hostile_entries_are_refused() {
        let refused = |e: Entry| {
            let m = Message::Entry(e);
            let p = m.payload();
            (
                decode_one(&frame(Kind::Entry, 0, &p)),
                // What the decoder refuses is not encoded either.
                m.encode().is_err(),
            )
        };
        let file = || entry(EntryKind::File, b"f", b"");
        for name in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/",
            b"a\0",
            &[b'n'; MAX_NAME + 1],
        ] {
            let (got, not_encoded) = refused(Entry {
                name: name.to_vec(),
                ..file()
            });
            assert!(matches!(got, Err(Error::Name(_))), "{name:?}: {got:?}");
            assert!(not_encoded);
        }
        let cases = [
            (
                Entry {
                    mode: 0o10644,
                    ..file()
                },
                "mode",
            ),
            (
                Entry {
                    mode: 0o755,
                    ..entry(EntryKind::Skipped, b"s", b"")
                },
                "mode",
            ),
            (
                Entry {
                    size: 1,
                    ..entry(EntryKind::Dir, b"d", b"")
                },
                "size",
            ),
            (entry(EntryKind::Symlink, b"l", b""), "target"),
            (entry(EntryKind::Symlink, b"l", b"a\0b"), "target"),
            (
                entry(EntryKind::Symlink, b"l", &[b'x'; MAX_TARGET + 1]),
                "target",
            ),
            (entry(EntryKind::File, b"f", b"t"), "target"),
            (
                Entry {
                    mtime: Time {
                        secs: 0,
                        nanos: 1_000_000_000,
                    },
                    ..file()
                },
                "nanos",
            ),
        ];
        for (e, what) in cases {
            let (got, not_encoded) = refused(e.clone());
            let ok = match what {
                "mode" => matches!(got, Err(Error::Mode { .. })),
                "size" => matches!(got, Err(Error::Size(_))),
                "target" => matches!(got, Err(Error::Target { .. })),
                _ => matches!(got, Err(Error::Nanos(_))),
            };
            assert!(ok && not_encoded, "{what}: {e:?}: {got:?}");
        }
        // An unknown kind, a name length past the payload, every cut.
        let mut p = Message::Entry(file()).payload();
        p[0] = 9;
        assert_eq!(
            decode_one(&frame(Kind::Entry, 0, &p)),
            Err(Error::EntryKind(9))
        );
        let good = Message::Entry(file()).payload();
        for cut in 0..good.len() {
            assert!(
                decode_one(&frame(Kind::Entry, 0, &good[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode_one(&frame(Kind::Entry, 0, &long)),
            Err(Error::Trailing { .. })
        ));
    }

    #[test]
    fn copy_requests_check_flags_and_paths() {
        let req = |flags: u8, path: &[u8]| {
            let mut p = vec![flags];
            p.extend_from_slice(&(path.len() as u32).to_le_bytes());
            p.extend_from_slice(path);
            p
        };
        for kind in [Kind::CopyOut, Kind::CopyIn] {
            assert!(decode_one(&frame(kind, 0, &req(1, b"/x"))).is_ok_and(|m| m.is_some()));
            assert_eq!(
                decode_one(&frame(kind, 0, &req(2, b"/x"))),
                Err(Error::CopyFlags(2))
            );
            assert_eq!(
                decode_one(&frame(kind, 0, &req(0, b""))),
                Err(Error::CopyPath(0))
            );
            assert_eq!(
                decode_one(&frame(kind, 0, &req(0, &[b'a'; MAX_PATH + 1]))),
                Err(Error::CopyPath(MAX_PATH + 1))
            );
            assert_eq!(
                decode_one(&frame(kind, 0, &req(0, b"/a\0"))),
                Err(Error::Nul { what: "copy path" })
            );
            assert_eq!(
                decode_one(&frame(kind, 0, &req(0, b"/\xff"))),
                Err(Error::Utf8 { what: "copy path" })
            );
        }
        for kind in [Kind::CopyReady, Kind::Up, Kind::CopyEnd] {
            assert_eq!(
                decode_one(&frame(kind, 0, b"x")),
                Err(Error::Trailing { kind, extra: 1 })
            );
        }
        assert!(Message::CopyOut {
            contents: false,
            path: String::new()
        }
        .encode()
        .is_err());
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Message>, Error> {
        let mut d = MessageDecoder::new();
        assert_eq!(d.feed(bytes), bytes.len());
        d.next_message()
    }

    #[test]
    fn every_message_round_trips() {
        let mut stream = Vec::new();
        for m in all() {
            assert_eq!(m.encode_into(&mut stream), Ok(()), "{m:?}");
        }
        let mut d = MessageDecoder::new();
        let (mut rest, mut got) = (&stream[..], Vec::new());
        while !rest.is_empty() {
            let took = d.feed(rest);
            rest = &rest[took..];
            while let Ok(Some(m)) = d.next_message() {
                got.push(m);
            }
        }
        assert_eq!(got, all());
    }

    /// An Exec payload from its parts, to build hostile ones.
    fn exec_payload(flags: u8, strings: &[&[u8]], argv: &[&[u8]], env_count: u16) -> Vec<u8> {
        let mut p = vec![flags, 24, 0, 80, 0];
        for s in strings {
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s);
        }
        p.extend_from_slice(&(argv.len() as u16).to_le_bytes());
        for s in argv {
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s);
        }
        p.extend_from_slice(&env_count.to_le_bytes());
        p
    }

    fn frame(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        assert_eq!(frame::encode_into(kind, id, payload, &mut v), Ok(()));
        v
    }

    #[test]
    fn hostile_execs_are_refused() {
        let ok = exec_payload(0, &[b"/", b""], &[b"true"], 0);
        assert!(matches!(
            decode_one(&frame(Kind::Exec, 1, &ok)),
            Ok(Some(Message::Exec(_)))
        ));
        let bad_utf8 = exec_payload(0, &[b"/\xff", b""], &[b"true"], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &bad_utf8)),
            Err(Error::Utf8 { what: "cwd" })
        );
        let argv_utf8 = exec_payload(0, &[b"/", b""], &[b"tr\xc3ue"], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &argv_utf8)),
            Err(Error::Utf8 { what: "argv" })
        );
        let nul = exec_payload(0, &[b"/", b""], &[b"tr\0ue"], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &nul)),
            Err(Error::Nul { what: "argv" })
        );
        let no_argv = exec_payload(0, &[b"/", b""], &[], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &no_argv)),
            Err(Error::NoProgram)
        );
        let empty_prog = exec_payload(0, &[b"/", b""], &[b""], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &empty_prog)),
            Err(Error::NoProgram)
        );
        let flags = exec_payload(0x80, &[b"/", b""], &[b"true"], 0);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &flags)),
            Err(Error::Flags(0x80))
        );
        // A count over the limit, and one the payload cannot hold.
        let many = exec_payload(0, &[b"/", b""], &[b"true"], 5000);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &many)),
            Err(Error::TooMany {
                what: "env",
                count: 5000,
                max: MAX_ENV
            })
        );
        let unheld = exec_payload(0, &[b"/", b""], &[b"true"], 1000);
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &unheld)),
            Err(Error::Truncated { kind: Kind::Exec })
        );
        // A string length past the payload.
        let mut long = vec![0, 24, 0, 80, 0];
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_one(&frame(Kind::Exec, 1, &long)),
            Err(Error::Truncated { kind: Kind::Exec })
        );
        // Every cut of a good Exec is refused cleanly.
        let good = Message::Exec(exec()).encode().unwrap_or_default();
        for cut in frame::HEADER_LEN..good.len() {
            let f = frame(Kind::Exec, 5, &good[frame::HEADER_LEN..cut]);
            assert!(decode_one(&f).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn fixed_messages_check_their_length() {
        assert_eq!(
            decode_one(&frame(Kind::Hello, 0, &[1, 0])),
            Err(Error::Truncated { kind: Kind::Hello })
        );
        assert_eq!(
            decode_one(&frame(Kind::Hello, 0, &[1, 0, 0, 0, 0])),
            Err(Error::Trailing {
                kind: Kind::Hello,
                extra: 1
            })
        );
        assert_eq!(
            decode_one(&frame(Kind::StdinEof, 1, b"x")),
            Err(Error::Trailing {
                kind: Kind::StdinEof,
                extra: 1
            })
        );
        assert_eq!(
            decode_one(&frame(Kind::Signal, 1, &0u32.to_le_bytes())),
            Err(Error::Signal(0))
        );
        assert_eq!(
            decode_one(&frame(Kind::Signal, 1, &65u32.to_le_bytes())),
            Err(Error::Signal(65))
        );
        assert_eq!(
            decode_one(&frame(Kind::Forward, 0, &0u16.to_le_bytes())),
            Err(Error::Port)
        );
        assert_eq!(
            decode_one(&frame(Kind::Forward, 0, &[80])),
            Err(Error::Truncated {
                kind: Kind::Forward
            })
        );
        assert_eq!(
            decode_one(&frame(Kind::ForwardUdp, 0, &0u16.to_le_bytes())),
            Err(Error::Port)
        );
        assert_eq!(
            decode_one(&frame(Kind::ForwardUdp, 0, &[53, 0, 0])),
            Err(Error::Trailing {
                kind: Kind::ForwardUdp,
                extra: 1
            })
        );
        assert_eq!(Message::ForwardUdp { port: 0 }.encode(), Err(Error::Port));
        assert_eq!(
            decode_one(&frame(Kind::Forwarding, 0, b"x")),
            Err(Error::Trailing {
                kind: Kind::Forwarding,
                extra: 1
            })
        );
        assert_eq!(
            decode_one(&frame(Kind::Failed, 1, b"\xff")),
            Err(Error::Utf8 {
                what: "Failed message"
            })
        );
    }

    #[test]
    fn what_would_be_refused_is_not_encoded() {
        let too_long = Message::Stdout {
            id: 1,
            data: vec![0; MAX_PAYLOAD + 1],
        };
        assert!(matches!(too_long.encode(), Err(Error::TooBig { .. })));
        let many = Message::Exec(Exec {
            argv: vec!["x".into(); MAX_ARGV + 1],
            ..Exec::default()
        });
        assert!(matches!(many.encode(), Err(Error::TooMany { .. })));
        let nul = Message::Exec(Exec {
            argv: vec!["a\0b".into()],
            ..Exec::default()
        });
        assert_eq!(nul.encode(), Err(Error::Nul { what: "argv" }));
        assert_eq!(
            Message::Signal { id: 1, signo: 99 }.encode(),
            Err(Error::Signal(99))
        );
    }
}
