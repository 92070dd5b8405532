//! `twinbox cp` for a VM box, the guest's side: a connection that asked
//! the agent for `CopyOut` or `CopyIn` leaves the agent's poll loop and
//! gets a thread of its own (as a forwarded port does), which walks the
//! guest path into the connection as the protocol's tree messages, or
//! writes the tree the host sends at the guest path, with
//! `twinbox_agent::copy`: the walker and writer the host runs for a
//! container box's copies, so both boxes copy alike.
//!
//! Guest paths are resolved in the guest, from its root, with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` as the host resolves
//! a container's (the guest is the box). Placement follows `docker cp`:
//! into an existing directory under the top entry's name (into it
//! directly for `SRC/.`), else at the path. What arrives is checked
//! against the tree's shape and limits (`twinbox_agent::tree`) like
//! anything the host receives. Written entries belong to root, with all
//! their mode bits.
//!
//! Bounded: at most [`MAX_COPIES`] at once (more are refused), and a
//! peer that neither sends nor takes anything for [`IDLE`] loses its copy.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use twinbox_agent::copy::{self, At, Error, FsSink, Policy, StreamSink};
use twinbox_agent::message::MessageDecoder;
use twinbox_agent::tree::Limits;
use twinbox_agent::{Message, MAIN_ID};

/// Most copies at once.
pub const MAX_COPIES: usize = 8;

/// Longest the peer may neither send nor take anything.
const IDLE: Duration = if cfg!(test) {
    Duration::from_secs(5)
} else {
    Duration::from_secs(60)
};

/// Stack of a copying thread: the walk recurses once per directory level
/// (at most `MAX_DEPTH`), its buffers are on the heap.
const STACK: usize = 1024 * 1024;

/// What is written into the guest: root's (the agent is root; in the
/// tests perhaps not, then the writer's), every mode bit kept.
fn into_guest() -> Policy {
    Policy {
        owner: nix::unistd::geteuid().is_root().then_some((0, 0)),
        mode_mask: 0o7777,
    }
}

/// Longest reason sent back in `Failed`.
const MAX_REASON: usize = 8 * 1024;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A copy the host asked for.
#[derive(Debug, Clone)]
pub enum Request {
    /// Send the tree at `path`.
    Out {
        /// Its contents (`SRC/.`).
        contents: bool,
        /// The guest path.
        path: String,
    },
    /// Take a tree at `path`.
    In {
        /// The host's contents (`SRC/.`) go into `path` itself.
        contents: bool,
        /// The guest path.
        path: String,
    },
}

/// Counts one copy while it runs.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_COPIES).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes over `conn` (greeted; `queued` is what the agent still had to
/// send it, `decoder` holds what it sent after the request) for `req`;
/// an error if no thread is free, with `conn` handed back so the agent
/// can refuse it.
pub fn start(
    conn: OwnedFd,
    decoder: MessageDecoder,
    queued: Vec<u8>,
    req: Request,
) -> Result<(), (OwnedFd, String)> {
    let Some(slot) = Slot::take() else {
        return Err((conn, format!("{MAX_COPIES} copies run already")));
    };
    let cell = std::sync::Arc::new(std::sync::Mutex::new(Some(conn)));
    let inner = cell.clone();
    let spawned = std::thread::Builder::new()
        .name("copy".into())
        .stack_size(STACK)
        .spawn(move || {
            let _slot = slot;
            let conn = inner.lock().ok().and_then(|mut c| c.take());
            if let Some(conn) = conn {
                run(conn, decoder, queued, req);
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => match cell.lock().ok().and_then(|mut c| c.take()) {
            Some(conn) => Err((conn, format!("no thread for the copy: {e}"))),
            None => Ok(()),
        },
    }
}

/// Makes `fd` blocking, with [`IDLE`] as its send and receive timeouts.
fn prepare(fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    let tv = libc::timeval {
        tv_sec: IDLE.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: fcntl and setsockopt on a descriptor we own, with integer
    // flags and a timeval that outlives the calls; a failure leaves the
    // socket as it was (then the copy waits longer).
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }
}

fn run(conn: OwnedFd, decoder: MessageDecoder, queued: Vec<u8>, req: Request) {
    prepare(&conn);
    let mut sock = File::from(conn);
    if sock.write_all(&queued).is_err() {
        return;
    }
    let r = match &req {
        Request::Out { contents, path } => copy_out(&sock, *contents, path),
        Request::In { contents, path } => {
            let mut incoming = Incoming {
                sock: &sock,
                decoder,
                buf: vec![0; 64 * 1024],
                start: 0,
                end: 0,
            };
            copy_in(&mut incoming, &sock, *contents, path)
        }
    };
    if let Err(e) = r {
        fail(&mut sock, &e);
    }
}

/// The error and its sources, as one line.
fn reason(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Tells the host why, then lets it read that: nothing more is sent, and
/// what it still sends is taken (briefly) rather than left to reset the
/// connection under its reply.
fn fail(sock: &mut File, e: &Error) {
    let m = Message::Failed {
        id: MAIN_ID,
        message: reason(e),
    };
    if let Ok(bytes) = m.encode() {
        let _ = sock.write_all(&bytes);
    }
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < end {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `path` relative to the root: `/` and `.` dropped, `..` refused.
fn relative(path: &str) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Peer(format!("{path}: climbs out with '..'")))
            }
        }
    }
    Ok(out)
}

/// Opens directory `rel` as the guest resolves it from its root (every
/// symlink followed, none out of the root, no magic links).
fn open_dir(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let target: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    nix::fcntl::openat2(
        root,
        target,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

fn root() -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Error::Sys {
        op: "opening",
        path: "/".into(),
        errno,
    })
}

/// A directory error as the container's copy words it.
fn dir_error(errno: Errno, path: &Path) -> Error {
    match errno {
        Errno::ENOENT => Error::NotFound(path.to_path_buf()),
        Errno::ENOTDIR => Error::NotADirectory(path.to_path_buf()),
        errno => Error::Sys {
            op: "opening",
            path: path.to_path_buf(),
            errno,
        },
    }
}

/// The parent directory of `rel` (named `shown`) and its last name.
fn parent(root: BorrowedFd<'_>, rel: &Path, shown: &Path) -> Result<(OwnedFd, OsString), Error> {
    let Some(name) = rel.file_name() else {
        return Err(Error::NotADirectory(shown.to_path_buf()));
    };
    let fd =
        open_dir(root, rel.parent().unwrap_or(Path::new(""))).map_err(|e| dir_error(e, shown))?;
    Ok((fd, name.to_os_string()))
}

/// Sends the tree at `path` on `sock`, then `CopyEnd`.
fn copy_out(sock: &File, contents: bool, path: &str) -> Result<(), Error> {
    let rel = relative(path)?;
    let shown = Path::new("/").join(&rel);
    let root = root()?;
    let (dir, name) = if contents {
        let fd = open_dir(root.as_fd(), &rel).map_err(|e| dir_error(e, &shown))?;
        (fd, OsString::from("."))
    } else {
        parent(root.as_fd(), &rel, &shown)?
    };
    // The host names the top entry itself; a `SRC/.`'s `.` is no name.
    let top = rel.file_name().unwrap_or(OsStr::new("root"));
    let mut sink = StreamSink::new(sock, Some(top), false);
    copy::walk(
        &At {
            dir: dir.as_fd(),
            name: &name,
        },
        &shown,
        &mut sink,
    )?;
    sink.finish()?;
    Ok(())
}

/// Writes the tree the host sends at `path`, then says `CopyEnd`.
fn copy_in(
    incoming: &mut Incoming<'_>,
    mut sock: &File,
    contents: bool,
    path: &str,
) -> Result<(), Error> {
    let rel = relative(path)?;
    let shown = Path::new("/").join(&rel);
    let root = root()?;
    // Into an existing directory, else at the path.
    let (dir, name) = match open_dir(root.as_fd(), &rel) {
        Ok(fd) if contents => (fd, Some(OsString::from("."))),
        Ok(fd) => (fd, None),
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            let (fd, n) = parent(root.as_fd(), &rel, &shown)?;
            (fd, Some(n))
        }
        Err(e) => return Err(dir_error(e, &shown)),
    };
    let ready = Message::CopyReady.encode()?;
    sock.write_all(&ready).map_err(Error::Send)?;
    let mut sink = match &name {
        Some(n) => FsSink::new(
            &At {
                dir: dir.as_fd(),
                name: n,
            },
            &shown,
            into_guest(),
        ),
        None => FsSink::into_dir(dir.as_fd(), &shown, into_guest()),
    };
    let mut next = || incoming.next();
    copy::receive(&mut next, Limits::default(), &mut sink, &shown)?;
    let end = Message::CopyEnd.encode()?;
    sock.write_all(&end).map_err(Error::Send)
}

/// The messages the host sends on a copy's connection, read as they are
/// needed.
struct Incoming<'a> {
    sock: &'a File,
    decoder: MessageDecoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Incoming<'_> {
    fn next(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            if self.start < self.end {
                // A decoder with no whole frame has room: it takes some.
                let took = self.decoder.feed(&self.buf[self.start..self.end]);
                self.start += took;
                if took > 0 {
                    continue;
                }
            }
            let n = loop {
                match self.sock.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Receive(e).or_stalled()),
                }
            };
            if n == 0 {
                return Err(Error::Receive(std::io::ErrorKind::UnexpectedEof.into()));
            }
            (self.start, self.end) = (0, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_taken_from_the_root() {
        assert_eq!(relative("/a/./b/").ok(), Some(PathBuf::from("a/b")));
        assert_eq!(relative("/").ok(), Some(PathBuf::new()));
        assert!(relative("/a/../../b").is_err());
    }
}
