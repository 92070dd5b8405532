//! The control socket between twinbox's commands and a box's supervisor
//! (`boxes/<id>/control.sock`, mode 0600 in a 0700 directory).
//!
//! One JSON object per line each way. A request may carry descriptors
//! (`SCM_RIGHTS`) with its line: an exec hands over the caller's stdin,
//! stdout and stderr, so a container's process writes straight to the
//! caller's terminal or pipe. Lines are bounded ([`MAX_LINE`]); a peer that
//! sends more, or garbage, is dropped.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest line either side sends.
pub const MAX_LINE: usize = 64 << 10;

/// Most descriptors one request carries.
pub const MAX_FDS: usize = 3;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("box control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a line that is not a message.
    #[error("box control socket: malformed message: {0}")]
    Malformed(String),
    /// The peer sent a line longer than [`MAX_LINE`].
    #[error("box control socket: message longer than {MAX_LINE} bytes")]
    TooLong,
    /// The supervisor is not there (the box is not running).
    #[error("the box is not running (its supervisor does not answer: {0})")]
    NotRunning(std::io::Error),
}

/// A new process in a running box.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Extra environment, `KEY=VALUE`, on top of the box's.
    pub env: Vec<String>,
    /// Working directory (default: the box's).
    pub cwd: Option<String>,
    /// User (default: the box's).
    pub user: Option<String>,
    /// A terminal: the supervisor makes a PTY and relays it to the
    /// descriptors passed.
    pub tty: bool,
    /// Pass stdin.
    pub interactive: bool,
    /// Do not wait for the process: reply once it started.
    pub detach: bool,
}

/// What a command asks of a supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Start a process (descriptors: stdin, stdout, stderr).
    Exec(ExecRequest),
    /// Signal the box's first process.
    Kill {
        /// The signal.
        signal: i32,
    },
    /// Reply with the box's exit code when it ends.
    Wait,
    /// A terminal's new size: the box's own on a fresh connection, the
    /// exec's on the exec's connection.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// What a supervisor answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// Done.
    Ok,
    /// The exec'd process runs.
    Started {
        /// Its pid on the host (the VM's: in the guest).
        pid: i32,
    },
    /// The process (or the box) ended.
    Exit {
        /// Its code (128 + N for signal N).
        code: i32,
    },
    /// It could not be done.
    Error {
        /// Why.
        message: String,
        /// The exit code a command should end with (125 twinbox's error,
        /// 126/127 as a shell).
        code: i32,
    },
}

/// The control socket of the box whose directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// A path for `path` short enough for `sockaddr_un` (108 bytes): itself,
/// or its name under `/proc/self/fd/<dir>` when the directory is open in
/// `dirfd`.
pub fn short_path(path: &Path, dirfd: RawFd) -> PathBuf {
    if path.as_os_str().len() < 100 {
        return path.to_path_buf();
    }
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    PathBuf::from(format!("/proc/self/fd/{dirfd}")).join(name)
}

/// Opens `dir` as a path-only descriptor (for [`short_path`]).
pub fn open_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

/// Connects to the supervisor of the box in `dir`.
pub fn connect(dir: &Path) -> Result<UnixStream, Error> {
    let d = open_dir(dir).map_err(Error::NotRunning)?;
    let p = short_path(&socket_path(dir), d.as_raw_fd());
    UnixStream::connect(&p).map_err(Error::NotRunning)
}

/// Sends one message with `fds`.
pub fn send<T: Serialize>(s: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<(), Error> {
    let mut line = serde_json::to_vec(msg).map_err(|e| Error::Malformed(e.to_string()))?;
    line.push(b'\n');
    if fds.is_empty() {
        return Ok((&*s).write_all(&line)?);
    }
    let fds = &fds[..fds.len().min(MAX_FDS)];
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: line.as_mut_ptr().cast(),
        iov_len: line.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: the control buffer has room for one header and `fds` (its
    // size from CMSG_SPACE); CMSG_FIRSTHDR and CMSG_DATA point into it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
    }
    // SAFETY: sends from buffers that live across the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let n = n as usize;
    if n < line.len() {
        (&*s).write_all(&line[n..])?;
    }
    Ok(())
}

/// Reads the bytes waiting on `s` (at most `buf.len()`) and the
/// descriptors that came with them.
pub fn recv(s: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: receives into buffers that live across the call; received
    // descriptors are close-on-exec.
    let n = unsafe { libc::recvmsg(s, &mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into `cbuf`,
    // within `msg_controllen`; each SCM_RIGHTS payload is descriptors now
    // ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let n = len / std::mem::size_of::<RawFd>();
                let p: *const RawFd = libc::CMSG_DATA(c).cast();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    Ok((n as usize, fds))
}

/// Splits the first complete line off `buf`; an over-long line is an
/// error.
pub fn take_line(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(p) if p <= MAX_LINE => {
            let rest = buf.split_off(p + 1);
            let mut line = std::mem::replace(buf, rest);
            line.pop();
            Ok(Some(line))
        }
        Some(_) => Err(Error::TooLong),
        None if buf.len() > MAX_LINE => Err(Error::TooLong),
        None => Ok(None),
    }
}

/// Splits every complete line off `buf`.
pub fn take_lines(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, Error> {
    let mut lines = Vec::new();
    while let Some(l) = take_line(buf)? {
        lines.push(l);
    }
    Ok(lines)
}

/// Reads one reply (blocking).
pub fn read_reply(s: &mut UnixStream, pending: &mut Vec<u8>) -> Result<Option<Reply>, Error> {
    loop {
        if let Some(line) = take_line(pending)? {
            return serde_json::from_slice(&line)
                .map(Some)
                .map_err(|e| Error::Malformed(e.to_string()));
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b)?;
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&b[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_with_descriptors() -> Result<(), Box<dyn std::error::Error>>
    {
        let (a, mut b) = UnixStream::pair()?;
        let req = Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["A=1".into()],
            cwd: Some("/tmp".into()),
            user: None,
            tty: false,
            interactive: true,
            detach: false,
        });
        let f = tempfile::tempfile()?;
        send(&a, &req, &[f.as_raw_fd()])?;
        let mut buf = vec![0u8; MAX_LINE];
        let (n, fds) = recv(b.as_raw_fd(), &mut buf)?;
        assert_eq!(fds.len(), 1);
        let mut v = buf[..n].to_vec();
        let lines = take_lines(&mut v)?;
        assert_eq!(serde_json::from_slice::<Request>(&lines[0])?, req);
        send(&a, &Reply::Exit { code: 7 }, &[])?;
        let mut pending = Vec::new();
        assert_eq!(
            read_reply(&mut b, &mut pending)?,
            Some(Reply::Exit { code: 7 })
        );
        drop(a);
        assert_eq!(read_reply(&mut b, &mut pending)?, None);
        Ok(())
    }

    #[test]
    fn long_or_garbled_lines_are_refused() {
        let mut v = vec![b'x'; MAX_LINE + 1];
        assert!(matches!(take_lines(&mut v), Err(Error::TooLong)));
        let mut v = b"{\"op\":\"nope\"}\n".to_vec();
        let l = take_lines(&mut v).unwrap_or_default();
        assert!(serde_json::from_slice::<Request>(&l[0]).is_err());
    }

    #[test]
    fn long_socket_paths_go_through_proc() {
        let long = PathBuf::from(format!("/{}/control.sock", "d".repeat(120)));
        assert_eq!(
            short_path(&long, 7),
            PathBuf::from("/proc/self/fd/7/control.sock")
        );
        let short = PathBuf::from("/x/control.sock");
        assert_eq!(short_path(&short, 7), short);
    }
}
