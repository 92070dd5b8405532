//! Copies one stream both ways between two connected sockets until both
//! directions have ended: what a published port is, on either side of a
//! box's wall (the supervisor between a host client and the box; the
//! guest agent between its vsock connection and a guest TCP port).
//!
//! Each direction runs on its own thread with blocking calls, through a
//! pipe with `splice(2)`, so the bytes never pass through user space
//! where the kernel can splice the socket (it falls back to `read` and
//! `write` where it cannot). A direction whose source ends half-closes its
//! destination (`shutdown(SHUT_WR)`), so a client that says it is done
//! while still reading (HTTP/1.0, `nc -q`) gets its answer. A direction
//! that fails (a reset, a box gone) shuts both sockets down, which ends the
//! other direction too: nothing waits on a dead peer.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::pool::{Job, Pool};

/// Most bytes moved by one call.
const CHUNK: usize = 64 * 1024;

/// Stack of the second direction's thread (it holds no buffer of its own
/// when splicing, and a heap buffer otherwise).
const STACK: usize = 64 * 1024;

/// What went through, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Relays between `a` and `b` until both directions end (end of stream
/// on both sides, or an error on either); then both are closed. Blocking:
/// it runs one direction on the caller's thread and the other on a thread
/// of its own, or on the caller's thread after the first if no thread can
/// be made.
pub fn relay(a: OwnedFd, b: OwnedFd) -> Moved {
    relay_on(None, a, b)
}

/// [`relay`], the second direction on a thread of `pool` when it has one
/// to give (a new thread otherwise).
pub fn relay_on(pool: Option<&Pool>, a: OwnedFd, b: OwnedFd) -> Moved {
    for fd in [&a, &b] {
        set_blocking(fd.as_raw_fd());
    }
    let a = Arc::new(a);
    let b = Arc::new(b);
    let (a2, b2) = (a.clone(), b.clone());
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<u64>(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(one_way(&b2, &a2));
    });
    let job = match pool {
        Some(p) => p.run(job).err(),
        None => Some(job),
    };
    let spawned = match job {
        None => true,
        Some(job) => std::thread::Builder::new()
            .name("relay".into())
            .stack_size(STACK)
            .spawn(job)
            .is_ok(),
    };
    let a_to_b = one_way(&a, &b);
    // A job that could not be spawned was dropped with its sender.
    let b_to_a = match done_rx.recv() {
        Ok(n) => n,
        Err(_) if !spawned => one_way(&b, &a),
        Err(_) => 0,
    };
    Moved { a_to_b, b_to_a }
}

fn set_blocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL take integers on a descriptor we hold.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}

fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown takes integers; an error (not a socket, not
    // connected) changes nothing.
    unsafe { libc::shutdown(fd, how) };
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// How one direction ended.
enum End {
    /// The source ended its stream.
    Eof,
    /// A call failed.
    Failed,
    /// The kernel cannot splice this source: nothing was moved.
    NoSplice,
}

/// Copies `src` to `dst` until `src` ends (then `dst` is half-closed) or
/// something fails (then both are shut down); the bytes moved.
fn one_way(src: &OwnedFd, dst: &OwnedFd) -> u64 {
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut moved = 0u64;
    let end = match spliced(s, d, &mut moved) {
        End::NoSplice => copied(s, d, &mut moved),
        end => end,
    };
    match end {
        End::Eof => shutdown(d, libc::SHUT_WR),
        End::Failed | End::NoSplice => {
            shutdown(s, libc::SHUT_RDWR);
            shutdown(d, libc::SHUT_RDWR);
        }
    }
    moved
}

thread_local! {
    /// A pipe left empty by this thread's last direction, for its next
    /// (a pooled thread relays many connections).
    static SPARE: RefCell<Option<(OwnedFd, OwnedFd)>> = const { RefCell::new(None) };
}

fn new_pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: two fresh descriptors nobody else owns.
    Some(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn spliced(s: RawFd, d: RawFd, moved: &mut u64) -> End {
    let spare = SPARE.with(|c| c.borrow_mut().take());
    let Some(pipe) = spare.or_else(new_pipe) else {
        return End::NoSplice;
    };
    let end = spliced_through(&pipe, s, d, moved);
    // Only a direction that ended at the source's end (or never started)
    // left the pipe empty: every byte spliced into it was spliced out.
    if matches!(end, End::Eof | End::NoSplice) {
        SPARE.with(|c| *c.borrow_mut() = Some(pipe));
    }
    end
}

fn spliced_through(pipe: &(OwnedFd, OwnedFd), s: RawFd, d: RawFd, moved: &mut u64) -> End {
    let (r, w) = pipe;
    loop {
        // SAFETY: splice between descriptors we hold, no offsets.
        let n = unsafe {
            libc::splice(
                s,
                std::ptr::null_mut(),
                w.as_raw_fd(),
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_MOVE,
            )
        };
        if n == 0 {
            return End::Eof;
        }
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EINVAL if *moved == 0 => return End::NoSplice,
                _ => return End::Failed,
            }
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe {
                libc::splice(
                    r.as_raw_fd(),
                    std::ptr::null_mut(),
                    d,
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if m < 0 && errno() == libc::EINTR {
                continue;
            }
            if m <= 0 {
                return End::Failed;
            }
            left -= m as usize;
            *moved += m as u64;
        }
    }
}

fn copied(s: RawFd, d: RawFd, moved: &mut u64) -> End {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // SAFETY: reads into the buffer we own, at most its length.
        let n = unsafe { libc::read(s, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return End::Eof;
        }
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return End::Failed;
        }
        let mut at = 0usize;
        while at < n as usize {
            // SAFETY: writes from the part of the buffer that was read.
            let m = unsafe { libc::write(d, buf[at..].as_ptr().cast(), n as usize - at) };
            if m < 0 && errno() == libc::EINTR {
                continue;
            }
            if m <= 0 {
                return End::Failed;
            }
            at += m as usize;
            *moved += m as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// A relay between the far ends of two socket pairs; the near ends.
    fn relayed() -> Result<(UnixStream, UnixStream, std::thread::JoinHandle<Moved>)> {
        let (x, a) = UnixStream::pair()?;
        let (y, b) = UnixStream::pair()?;
        let t = std::thread::spawn(move || relay(a.into(), b.into()));
        Ok((x, y, t))
    }

    #[test]
    fn bytes_go_both_ways_and_half_closes_pass() -> Result {
        let (mut x, mut y, t) = relayed()?;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let w = {
            let mut x = x.try_clone()?;
            let big = big.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                x.write_all(&big)?;
                x.shutdown(Shutdown::Write)
            })
        };
        let mut got = Vec::new();
        y.read_to_end(&mut got)?;
        w.join().map_err(|_| "writer")??;
        assert!(got == big, "{} bytes came, {} went", got.len(), big.len());
        // x said it is done; y still answers, and x still reads.
        y.write_all(b"answer")?;
        y.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        x.read_to_end(&mut back)?;
        assert_eq!(back, b"answer");
        let m = t.join().map_err(|_| "relay")?;
        assert_eq!(
            m,
            Moved {
                a_to_b: 3_000_000,
                b_to_a: 6
            }
        );
        Ok(())
    }

    #[test]
    fn a_peer_that_goes_away_ends_both_directions() -> Result {
        let (x, y, t) = relayed()?;
        drop(y);
        // x's reads end instead of waiting for a peer that is gone.
        x.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut b = Vec::new();
        (&x).read_to_end(&mut b)?;
        assert!(b.is_empty());
        drop(x);
        t.join().map_err(|_| "relay")?;
        Ok(())
    }

    #[test]
    fn tcp_to_unix_and_back() -> Result {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let (mut s, _) = l.accept()?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            s.write_all(&got)?;
            Ok(got)
        });
        let tcp = TcpStream::connect(addr)?;
        let (mut x, a) = UnixStream::pair()?;
        let t = std::thread::spawn(move || relay(a.into(), tcp.into()));
        x.write_all(b"ping over tcp")?;
        x.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        x.read_to_end(&mut back)?;
        assert_eq!(back, b"ping over tcp");
        assert_eq!(server.join().map_err(|_| "server")??, b"ping over tcp");
        t.join().map_err(|_| "relay")?;
        Ok(())
    }
}
