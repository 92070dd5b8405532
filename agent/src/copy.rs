//! Copying trees for `twinbox cp`: the one walker, writer and stream codec
//! every direction uses, so that a container box and a VM box copy alike.
//!
//! A copy is a walk of a source ([`walk`]) into a [`Sink`]. The sinks:
//! [`FsSink`] writes into a directory (the host, a container's root, the
//! guest's own file system); [`StreamSink`] encodes the walk as the
//! agent's tree messages (`Entry`, `Data`, `Up`, `CopyEnd`; see the crate's
//! top comment and [`crate::tree`]), and [`receive`] turns such a stream
//! back into calls on a sink. So a container copy is `walk -> FsSink`, a
//! copy out of a VM is `walk -> StreamSink` in the guest and `receive ->
//! FsSink` on the host, and a copy into a VM the other way round.
//!
//! The source side: a source is opened `O_PATH` and checked before it is
//! read: a FIFO, socket or device named directly is refused (reading one
//! could block or touch a driver); one met inside a directory is skipped
//! ([`Sink::skipped`]: a warning, or a `Skipped` entry for the receiver to
//! warn about). Directories are read entry by entry and files streamed,
//! so a huge tree costs memory for its depth only (at most
//! [`MAX_DEPTH`] levels). Kernel file systems (/proc, /sys, /dev/pts,
//! cgroups, mqueue, ...) are not entered.
//!
//! The writing side ([`FsSink`]) is given a directory and the name of the
//! top entry in it, and descends only through directories it made or
//! found and opened itself with `O_DIRECTORY | O_NOFOLLOW`; every entry is
//! one file name (a stream's names are checked by the message decoder:
//! no `/`, not `.` or `..`), acted on with `*at` calls: a symlink is made
//! as a symlink and never written through; a file is created with
//! `O_CREAT | O_EXCL` after whatever was at its name is unlinked; a
//! directory onto a file, or a file onto a directory, is refused. So what
//! a stream names cannot reach outside the destination, whatever symlinks
//! it made before. Nothing but directories, files and symlinks is ever
//! made: a stream has no hard links or devices to ask for.
//!
//! Modes and times (access, modification) are kept, as far as the
//! [`Policy`] allows: the owner given, or the writer's own, and the mode
//! bits masked (a host takes set-id bits from no box).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};

use crate::frame::{self, Kind, MAX_PAYLOAD};
use crate::message::{self, Entry, EntryKind, Message, Time};
use crate::tree::{self, Limits, Tree};

pub use crate::tree::MAX_DEPTH;

/// A path or text for a message, with control characters escaped: names
/// come from boxes, and a name is not to drive the user's terminal.
pub struct Shown<'a>(pub &'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0.to_string_lossy()))
    }
}

/// `s` with control characters written as escapes.
pub fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect()
}

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed on a path.
    #[error("{op} {}: {}", Shown(path), errno.desc())]
    Sys {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// Reading or writing a file's bytes failed.
    #[error("copying {}", Shown(path))]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source is not a file, directory or symlink.
    #[error("{}: is a {}; only files, directories and symlinks are copied", Shown(.0), .1)]
    Special(PathBuf, &'static str),
    /// The source does not exist.
    #[error("{}: no such file or directory", Shown(.0))]
    NotFound(PathBuf),
    /// The source is not a directory (it ends in `/.`).
    #[error("{}: not a directory", Shown(.0))]
    NotADirectory(PathBuf),
    /// A directory would replace a file, or a file a directory.
    #[error("{}: cannot copy a {} onto a {}", Shown(.0), .1, .2)]
    Mismatch(PathBuf, &'static str, &'static str),
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("{}: deeper than {MAX_DEPTH} directories", Shown(.0))]
    TooDeep(PathBuf),
    /// The stream broke the tree's shape or its limits at `path`.
    #[error("{}: the copy's stream", Shown(path))]
    Stream {
        /// Where in the tree.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: tree::Error,
    },
    /// A message that does not encode (or decode).
    #[error("a copy message")]
    Message(#[from] message::Error),
    /// Writing the stream failed.
    #[error("sending the copy")]
    Send(#[source] std::io::Error),
    /// Reading the stream failed.
    #[error("receiving the copy")]
    Receive(#[source] std::io::Error),
    /// The host side's connection to the agent.
    #[error("the guest agent")]
    Agent(#[from] crate::client::Error),
    /// The other side failed the copy, with its reason.
    #[error("{}", escape(.0))]
    Peer(String),
    /// Nothing moved for longer than the connection's timeout.
    #[error("the other side stalled: nothing moved within the copy's timeout")]
    Stalled,
}

impl Error {
    /// A stalled stream's error as such.
    pub fn or_stalled(self) -> Error {
        let io = match &self {
            Error::Send(e) | Error::Receive(e) => Some(e.kind()),
            Error::Agent(crate::client::Error::Io(e)) => Some(e.kind()),
            _ => None,
        };
        match io {
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Error::Stalled,
            _ => self,
        }
    }
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |errno| Error::Sys {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

/// What one copy does with what it writes.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Give every written entry this owner (uid, gid).
    pub owner: Option<(u32, u32)>,
    /// Keep only these mode bits (`0o7777`, or `0o1777` to drop set-id).
    pub mode_mask: u32,
}

/// A place in a directory: the directory and a name in it.
#[derive(Debug)]
pub struct At<'a> {
    /// The directory.
    pub dir: BorrowedFd<'a>,
    /// The name.
    pub name: &'a OsStr,
}

/// An entry's mode bits and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
}

fn time(secs: i64, nanos: i64) -> Time {
    Time {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

impl Meta {
    /// A file's, from its status.
    pub fn of(st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
        }
    }

    fn times(&self) -> (TimeSpec, TimeSpec) {
        let t = |t: Time| TimeSpec::new(t.secs, i64::from(t.nanos));
        (t(self.atime), t(self.mtime))
    }
}

/// The name of a file type (`S_IFMT` bits), for messages.
pub fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "special file",
    }
}

fn lstat_at(at: &At<'_>, path: &Path) -> Result<Option<FileStat>, Error> {
    match fstatat(at.dir, at.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(sys("stat", path)(e)),
    }
}

/// What a source is, without following it: refuses what cannot be copied.
pub fn check_source(at: &At<'_>, path: &Path) -> Result<FileStat, Error> {
    let st = lstat_at(at, path)?.ok_or_else(|| Error::NotFound(path.to_path_buf()))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK => Ok(st),
        m => Err(Error::Special(path.to_path_buf(), kind_name(m))),
    }
}

/// Whether what is at `at` is a directory (following nothing): `None` if
/// nothing is there.
pub fn dest_kind(at: &At<'_>, path: &Path) -> Result<Option<bool>, Error> {
    Ok(lstat_at(at, path)?.map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

/// Where a walk puts what it reads: one call per entry, `enter` and
/// `leave` around a directory's entries. `src` names the source entry in
/// messages; the first call is the top entry.
pub trait Sink {
    /// A regular file of `size` bytes (as its status said when opened;
    /// `input` may give more or fewer if it changes meanwhile).
    fn file(
        &mut self,
        name: &OsStr,
        meta: &Meta,
        size: u64,
        input: &mut dyn Read,
        src: &Path,
    ) -> Result<(), Error>;
    /// A symlink to `target`.
    fn symlink(&mut self, name: &OsStr, target: &OsStr, meta: &Meta) -> Result<(), Error>;
    /// A directory, whose entries follow up to the matching `leave`.
    fn enter(&mut self, name: &OsStr, meta: &Meta) -> Result<(), Error>;
    /// The directory entered last is complete.
    fn leave(&mut self) -> Result<(), Error>;
    /// Something not copied, of file type `kind` (`S_IFMT` bits).
    fn skipped(&mut self, name: &OsStr, src: &Path, kind: u32) -> Result<(), Error>;
}

/// Says that `src` is not copied.
pub fn warn_skipped(src: &Path, kind: u32) {
    eprintln!(
        "twinbox: cp: skipping {} (a {})",
        Shown(src),
        kind_name(kind)
    );
}

/// Walks the tree at `src` (named `src_path` in messages) into `sink`.
pub fn walk(src: &At<'_>, src_path: &Path, sink: &mut dyn Sink) -> Result<(), Error> {
    let st = check_source(src, src_path)?;
    let mut w = Walker {
        path: src_path.to_path_buf(),
    };
    w.entry(src, &st, 0, true, sink)
}

struct Walker {
    path: PathBuf,
}

/// File systems whose files are the kernel's, not the box's.
fn is_kernel_fs(fd: BorrowedFd<'_>) -> bool {
    const KERNEL: [i64; 9] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x1cd1,      // devpts
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x1980_0202, // mqueue
        0x7372_6573, // securityfs
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
    ];
    // SAFETY: fstatfs fills the struct we pass for a descriptor we hold.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) } != 0 {
        return false;
    }
    KERNEL.contains(&(s.f_type as i64))
}

impl Walker {
    fn entry(
        &mut self,
        src: &At<'_>,
        st: &FileStat,
        depth: usize,
        top: bool,
        sink: &mut dyn Sink,
    ) -> Result<(), Error> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => self.file(src, st, sink),
            libc::S_IFDIR => self.dir(src, st, depth, sink),
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(src.dir, src.name)
                    .map_err(sys("reading", &self.path))?;
                sink.symlink(src.name, &target, &Meta::of(st))
            }
            m if top => Err(Error::Special(self.path.clone(), kind_name(m))),
            m => sink.skipped(src.name, &self.path, m),
        }
    }

    fn file(&mut self, src: &At<'_>, st: &FileStat, sink: &mut dyn Sink) -> Result<(), Error> {
        // O_PATH first: nothing is opened for reading until it is known to
        // be the regular file that was listed (a FIFO swapped in would
        // block, a device would reach its driver).
        let p = openat(
            src.dir,
            src.name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", &self.path))?;
        let now = fstat(p.as_fd()).map_err(sys("stat", &self.path))?;
        if now.st_mode & libc::S_IFMT != libc::S_IFREG || now.st_ino != st.st_ino {
            return Err(Error::Special(self.path.clone(), "file that changed"));
        }
        let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
        let mut input = std::fs::OpenOptions::new()
            .read(true)
            .open(&reopen)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        drop(p);
        let size = u64::try_from(now.st_size).unwrap_or(0);
        sink.file(src.name, &Meta::of(st), size, &mut input, &self.path)
    }

    fn dir(
        &mut self,
        src: &At<'_>,
        st: &FileStat,
        depth: usize,
        sink: &mut dyn Sink,
    ) -> Result<(), Error> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep(self.path.clone()));
        }
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let sfd = openat(src.dir, src.name, OFlag::O_PATH | dir_flags, Mode::empty())
            .map_err(sys("opening", &self.path))?;
        if depth > 0 && is_kernel_fs(sfd.as_fd()) {
            return Ok(());
        }
        sink.enter(src.name, &Meta::of(st))?;
        let listing = openat(sfd.as_fd(), ".", OFlag::O_RDONLY | dir_flags, Mode::empty())
            .map_err(sys("opening", &self.path))?;
        let mut d = nix::dir::Dir::from_fd(listing).map_err(sys("listing", &self.path))?;
        for e in d.iter() {
            let e = e.map_err(sys("listing", &self.path))?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let name: OsString = name.to_os_string();
            self.path.push(&name);
            let s = At {
                dir: sfd.as_fd(),
                name: &name,
            };
            let r = match lstat_at(&s, &self.path) {
                // Gone since it was listed: a live box changes its files.
                Ok(None) => Ok(()),
                Ok(Some(cst)) => self.entry(&s, &cst, depth + 1, false, sink),
                Err(e) => Err(e),
            };
            self.path.pop();
            r?;
        }
        sink.leave()
    }
}

/// Writes a walk into a directory (see the module's top comment).
pub struct FsSink<'a> {
    policy: Policy,
    top_dir: BorrowedFd<'a>,
    /// The top entry's name; `None`: the name the top entry comes with.
    top_name: Option<&'a OsStr>,
    dst_path: PathBuf,
    /// Directories entered: the open directory, its mode and times (set
    /// when it is left, so a read-only one can be filled first), and
    /// whether its name was pushed onto `dst_path`.
    open: Vec<(OwnedFd, Meta, bool)>,
}

impl<'a> FsSink<'a> {
    /// A sink whose top entry is `top` (named `dst_path` in messages).
    pub fn new(top: &At<'a>, dst_path: &Path, policy: Policy) -> Self {
        FsSink {
            policy,
            top_dir: top.dir,
            top_name: Some(top.name),
            dst_path: dst_path.to_path_buf(),
            open: Vec::new(),
        }
    }

    /// A sink whose top entry goes into `dir` (named `dir_path`) under
    /// the name it comes with.
    pub fn into_dir(dir: BorrowedFd<'a>, dir_path: &Path, policy: Policy) -> Self {
        FsSink {
            policy,
            top_dir: dir,
            top_name: None,
            dst_path: dir_path.to_path_buf(),
            open: Vec::new(),
        }
    }

    /// The name to write `name` under, pushed onto `dst_path` if it is one
    /// (not for a top entry named by the caller).
    fn begin(&mut self, name: &OsStr) -> (OsString, bool) {
        match (self.open.is_empty(), self.top_name) {
            (true, Some(top)) => (top.to_os_string(), false),
            _ => {
                self.dst_path.push(name);
                (name.to_os_string(), true)
            }
        }
    }

    fn dir(&self) -> BorrowedFd<'_> {
        self.open
            .last()
            .map_or(self.top_dir, |(fd, _, _)| fd.as_fd())
    }

    fn mode(&self, meta: &Meta) -> Mode {
        Mode::from_bits_truncate((meta.mode & self.policy.mode_mask) as libc::mode_t)
    }

    fn chown(&self, fd: BorrowedFd<'_>) -> Result<(), Error> {
        if let Some((u, g)) = self.policy.owner {
            nix::unistd::fchown(fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                .map_err(sys("chown", &self.dst_path))?;
        }
        Ok(())
    }

    /// Unlinks a non-directory at `dst`; a directory there is an error.
    fn clear(&self, dst: &At<'_>, what: &'static str) -> Result<(), Error> {
        match dest_kind(dst, &self.dst_path)? {
            None => Ok(()),
            Some(true) => Err(Error::Mismatch(self.dst_path.clone(), what, "directory")),
            Some(false) => unlinkat(dst.dir, dst.name, UnlinkatFlags::NoRemoveDir)
                .map_err(sys("removing", &self.dst_path)),
        }
    }

    fn write_file(
        &self,
        name: &OsStr,
        meta: &Meta,
        input: &mut dyn Read,
        src: &Path,
    ) -> Result<(), Error> {
        let dst = At {
            dir: self.dir(),
            name,
        };
        self.clear(&dst, "file")?;
        let out = openat(
            dst.dir,
            dst.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(sys("creating", &self.dst_path))?;
        let mut out = std::fs::File::from(out);
        std::io::copy(input, &mut out).map_err(|source| Error::Io {
            path: src.to_path_buf(),
            source,
        })?;
        // Owner first: chown clears set-id bits.
        self.chown(out.as_fd())?;
        nix::sys::stat::fchmod(out.as_fd(), self.mode(meta))
            .map_err(sys("chmod", &self.dst_path))?;
        let (a, m) = meta.times();
        nix::sys::stat::futimens(out.as_fd(), &a, &m).map_err(sys("setting times", &self.dst_path))
    }

    fn write_symlink(&self, name: &OsStr, target: &OsStr, meta: &Meta) -> Result<(), Error> {
        let dst = At {
            dir: self.dir(),
            name,
        };
        self.clear(&dst, "symlink")?;
        // The target is text, never followed here.
        nix::unistd::symlinkat(target, dst.dir, dst.name)
            .map_err(sys("creating", &self.dst_path))?;
        if let Some((u, g)) = self.policy.owner {
            nix::unistd::fchownat(
                dst.dir,
                dst.name,
                Some(Uid::from_raw(u)),
                Some(Gid::from_raw(g)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown", &self.dst_path))?;
        }
        let (a, m) = meta.times();
        nix::sys::stat::utimensat(dst.dir, dst.name, &a, &m, UtimensatFlags::NoFollowSymlink)
            .map_err(sys("setting times", &self.dst_path))
    }

    fn open_dir(&self, name: &OsStr) -> Result<OwnedFd, Error> {
        let dst = At {
            dir: self.dir(),
            name,
        };
        match dest_kind(&dst, &self.dst_path)? {
            Some(true) => {}
            Some(false) => return Err(Error::Mismatch(self.dst_path.clone(), "directory", "file")),
            None => mkdirat(dst.dir, dst.name, Mode::from_bits_truncate(0o700))
                .map_err(sys("creating", &self.dst_path))?,
        }
        openat(
            dst.dir,
            dst.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", &self.dst_path))
    }
}

impl Sink for FsSink<'_> {
    fn file(
        &mut self,
        name: &OsStr,
        meta: &Meta,
        _size: u64,
        input: &mut dyn Read,
        src: &Path,
    ) -> Result<(), Error> {
        let (n, pushed) = self.begin(name);
        let r = self.write_file(&n, meta, input, src);
        if pushed {
            self.dst_path.pop();
        }
        r
    }

    fn symlink(&mut self, name: &OsStr, target: &OsStr, meta: &Meta) -> Result<(), Error> {
        let (n, pushed) = self.begin(name);
        let r = self.write_symlink(&n, target, meta);
        if pushed {
            self.dst_path.pop();
        }
        r
    }

    fn enter(&mut self, name: &OsStr, meta: &Meta) -> Result<(), Error> {
        let (n, pushed) = self.begin(name);
        match self.open_dir(&n) {
            Ok(fd) => {
                self.open.push((fd, *meta, pushed));
                Ok(())
            }
            Err(e) => {
                if pushed {
                    self.dst_path.pop();
                }
                Err(e)
            }
        }
    }

    fn leave(&mut self) -> Result<(), Error> {
        let Some((fd, meta, pushed)) = self.open.pop() else {
            return Ok(());
        };
        let r = (|| {
            self.chown(fd.as_fd())?;
            nix::sys::stat::fchmod(fd.as_fd(), self.mode(&meta))
                .map_err(sys("chmod", &self.dst_path))?;
            let (a, m) = meta.times();
            nix::sys::stat::futimens(fd.as_fd(), &a, &m)
                .map_err(sys("setting times", &self.dst_path))
        })();
        if pushed {
            self.dst_path.pop();
        }
        r
    }

    fn skipped(&mut self, _name: &OsStr, src: &Path, kind: u32) -> Result<(), Error> {
        warn_skipped(src, kind);
        Ok(())
    }
}

/// Encodes a walk as tree messages on `out` (buffered; [`finish`]
/// sends `CopyEnd` and flushes).
///
/// [`finish`]: StreamSink::finish
pub struct StreamSink<W: Write> {
    out: std::io::BufWriter<W>,
    top_name: Option<OsString>,
    started: bool,
    warn_here: bool,
    frame: Vec<u8>,
    chunk: Vec<u8>,
}

impl<W: Write> StreamSink<W> {
    /// A sink on `out`. `top_name` replaces the top entry's name (the
    /// receiver may use it); `warn_here`: skipped entries are warned
    /// about here rather than sent (a host walking its own files).
    pub fn new(out: W, top_name: Option<&OsStr>, warn_here: bool) -> Self {
        StreamSink {
            out: std::io::BufWriter::with_capacity(256 * 1024, out),
            top_name: top_name.map(OsStr::to_os_string),
            started: false,
            warn_here,
            frame: Vec::with_capacity(frame::HEADER_LEN + MAX_PAYLOAD),
            chunk: vec![0; MAX_PAYLOAD],
        }
    }

    fn send(&mut self, m: &Message) -> Result<(), Error> {
        self.frame.clear();
        m.encode_into(&mut self.frame)?;
        self.out.write_all(&self.frame).map_err(Error::Send)
    }

    fn entry(
        &mut self,
        kind: EntryKind,
        name: &OsStr,
        meta: &Meta,
        size: u64,
        target: &OsStr,
    ) -> Result<(), Error> {
        let name = match (self.started, &self.top_name) {
            (false, Some(top)) => top.as_bytes().to_vec(),
            _ => name.as_bytes().to_vec(),
        };
        self.started = true;
        self.send(&Message::Entry(Entry {
            kind,
            mode: meta.mode,
            atime: meta.atime,
            mtime: meta.mtime,
            size,
            name,
            target: target.as_bytes().to_vec(),
        }))
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(Error::Send)
    }

    /// Ends the tree (`CopyEnd`), flushes, and gives the stream back.
    pub fn finish(mut self) -> Result<W, Error> {
        self.send(&Message::CopyEnd)?;
        self.out
            .into_inner()
            .map_err(|e| Error::Send(e.into_error()))
    }
}

impl<W: Write> Sink for StreamSink<W> {
    fn file(
        &mut self,
        name: &OsStr,
        meta: &Meta,
        size: u64,
        input: &mut dyn Read,
        src: &Path,
    ) -> Result<(), Error> {
        self.entry(EntryKind::File, name, meta, size, OsStr::new(""))?;
        // Exactly `size` bytes, as announced: a file that grew is cut
        // there, one that shrank is filled with zeros (as tar does).
        let mut left = size;
        let mut ended = false;
        while left > 0 {
            let want = left.min(MAX_PAYLOAD as u64) as usize;
            let mut n = 0;
            while n < want && !ended {
                match input.read(&mut self.chunk[n..want]) {
                    Ok(0) => ended = true,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            path: src.to_path_buf(),
                            source,
                        })
                    }
                }
            }
            self.chunk[n..want].fill(0);
            self.frame.clear();
            frame::encode_into(Kind::Data, 0, &self.chunk[..want], &mut self.frame)
                .map_err(message::Error::from)?;
            self.out.write_all(&self.frame).map_err(Error::Send)?;
            left -= want as u64;
        }
        Ok(())
    }

    fn symlink(&mut self, name: &OsStr, target: &OsStr, meta: &Meta) -> Result<(), Error> {
        self.entry(EntryKind::Symlink, name, meta, 0, target)
    }

    fn enter(&mut self, name: &OsStr, meta: &Meta) -> Result<(), Error> {
        self.entry(EntryKind::Dir, name, meta, 0, OsStr::new(""))
    }

    fn leave(&mut self) -> Result<(), Error> {
        self.send(&Message::Up)
    }

    fn skipped(&mut self, name: &OsStr, src: &Path, kind: u32) -> Result<(), Error> {
        if self.warn_here {
            warn_skipped(src, kind);
            return Ok(());
        }
        let meta = Meta {
            mode: kind & libc::S_IFMT,
            atime: Time::default(),
            mtime: Time::default(),
        };
        self.entry(EntryKind::Skipped, name, &meta, 0, OsStr::new(""))
    }
}

/// Turns the tree messages that `next` gives (already decoded; the
/// caller deals with what is not the tree's, e.g. a peer's `Failed`)
/// into calls on `sink`, checking each against the tree's shape and
/// `limits` first ([`crate::tree`]). Returns at `CopyEnd`. `src_path`
/// names the source's top entry in messages.
pub fn receive(
    next: &mut dyn FnMut() -> Result<Message, Error>,
    limits: Limits,
    sink: &mut dyn Sink,
    src_path: &Path,
) -> Result<(), Error> {
    let mut tree = Tree::new(limits);
    let mut path = src_path.to_path_buf();
    let mut pushed: Vec<bool> = Vec::new();
    loop {
        let m = next()?;
        let top = !tree.started();
        tree.check(&m).map_err(|source| Error::Stream {
            path: path.clone(),
            source,
        })?;
        let e = match m {
            Message::Entry(e) => e,
            Message::Up => {
                sink.leave()?;
                if pushed.pop() == Some(true) {
                    path.pop();
                }
                continue;
            }
            Message::CopyEnd => return Ok(()),
            // The tree allows nothing else here.
            other => {
                return Err(Error::Stream {
                    path,
                    source: tree::Error::Unexpected(other.kind()),
                })
            }
        };
        let name = OsStr::from_bytes(&e.name);
        let here = if top { path.clone() } else { path.join(name) };
        let meta = Meta {
            mode: e.mode,
            atime: e.atime,
            mtime: e.mtime,
        };
        match e.kind {
            EntryKind::Dir => {
                sink.enter(name, &meta)?;
                pushed.push(!top);
                path = here;
            }
            EntryKind::File => {
                let mut input = DataIn {
                    next: &mut *next,
                    tree: &mut tree,
                    buf: Vec::new(),
                    pos: 0,
                    path: &here,
                    failure: None,
                };
                let r = sink.file(name, &meta, e.size, &mut input, &here);
                if let Some(f) = input.failure.take() {
                    return Err(f);
                }
                r?;
                // A sink that stopped reading early: the rest is dropped.
                if let Err(e) = std::io::copy(&mut input, &mut std::io::sink()) {
                    return Err(input.failure.take().unwrap_or(Error::Receive(e)));
                }
            }
            EntryKind::Symlink => sink.symlink(name, OsStr::from_bytes(&e.target), &meta)?,
            EntryKind::Skipped => sink.skipped(name, &here, e.mode)?,
        }
    }
}

/// The `Data` of one file entry, as a reader.
struct DataIn<'a> {
    next: &'a mut dyn FnMut() -> Result<Message, Error>,
    tree: &'a mut Tree,
    buf: Vec<u8>,
    pos: usize,
    path: &'a Path,
    /// What went wrong with the stream (the reader's error says less).
    failure: Option<Error>,
}

impl Read for DataIn<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.failure.is_some() {
                return Err(std::io::Error::other("the copy's stream failed"));
            }
            if self.tree.file_left() == 0 {
                return Ok(0);
            }
            let m = match (self.next)() {
                Ok(m) => m,
                Err(e) => {
                    self.failure = Some(e);
                    continue;
                }
            };
            if let Err(source) = self.tree.check(&m) {
                self.failure = Some(Error::Stream {
                    path: self.path.to_path_buf(),
                    source,
                });
                continue;
            }
            if let Message::Data { data } = m {
                self.buf = data;
                self.pos = 0;
            }
        }
    }
}

/// Decodes `data`, fed `step` bytes at a time, as the messages of a
/// copy's stream and [`receive`]s them into `sink`: the receiving side of a
/// copy as a hostile peer meets it (the fuzz target `agent_tree`).
pub fn receive_bytes(
    data: &[u8],
    step: usize,
    limits: Limits,
    sink: &mut dyn Sink,
) -> Result<(), Error> {
    let mut decoder = message::MessageDecoder::new();
    let mut pieces = data.chunks(step.max(1));
    let mut piece: &[u8] = &[];
    let mut next = || loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(m);
        }
        if piece.is_empty() {
            piece = pieces
                .next()
                .ok_or_else(|| Error::Receive(std::io::ErrorKind::UnexpectedEof.into()))?;
        }
        let took = decoder.feed(piece);
        piece = &piece[took..];
    };
    receive(&mut next, limits, sink, Path::new("fuzz"))
}

/// A sink that writes nothing and checks what [`receive`] gives it
/// against what a receiver promises: directories entered and left in
/// pairs, never more than [`MAX_DEPTH`] open; every file exactly its
/// announced size; entries and bytes within the limits. A broken promise
/// panics (it is for the fuzz target and its corpus test).
#[derive(Debug)]
pub struct CheckSink {
    limits: Limits,
    /// Directories open now.
    pub depth: usize,
    /// Entries given.
    pub entries: u64,
    /// File bytes given.
    pub bytes: u64,
}

impl CheckSink {
    /// A checker for a copy with `limits`.
    pub fn new(limits: Limits) -> Self {
        CheckSink {
            limits,
            depth: 0,
            entries: 0,
            bytes: 0,
        }
    }

    fn count(&mut self, name: &OsStr) {
        assert!(message::is_file_name(name.as_bytes()), "{name:?}");
        self.entries += 1;
        assert!(self.entries <= self.limits.entries);
    }
}

impl Sink for CheckSink {
    fn file(
        &mut self,
        name: &OsStr,
        _meta: &Meta,
        size: u64,
        input: &mut dyn Read,
        src: &Path,
    ) -> Result<(), Error> {
        self.count(name);
        let n = std::io::copy(input, &mut std::io::sink()).map_err(|source| Error::Io {
            path: src.to_path_buf(),
            source,
        })?;
        assert_eq!(n, size, "a file given other than its announced size");
        self.bytes += n;
        assert!(self.bytes <= self.limits.bytes);
        Ok(())
    }

    fn symlink(&mut self, name: &OsStr, target: &OsStr, _meta: &Meta) -> Result<(), Error> {
        self.count(name);
        assert!(!target.is_empty() && !target.as_bytes().contains(&0));
        Ok(())
    }

    fn enter(&mut self, name: &OsStr, _meta: &Meta) -> Result<(), Error> {
        self.count(name);
        self.depth += 1;
        assert!(self.depth <= MAX_DEPTH);
        Ok(())
    }

    fn leave(&mut self) -> Result<(), Error> {
        assert!(self.depth > 0, "left a directory never entered");
        self.depth -= 1;
        Ok(())
    }

    fn skipped(&mut self, name: &OsStr, _src: &Path, kind: u32) -> Result<(), Error> {
        self.count(name);
        assert!(kind & !libc::S_IFMT == 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
