//! A PTY harness: runs a command with a new pseudo-terminal as its
//! controlling terminal and stdio, as a user's shell would, and drives it
//! from the master side (type keys, read the screen, resize the window).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A command on a PTY.
pub struct Pty {
    pub master: OwnedFd,
    slave: OwnedFd,
    pub child: Child,
    seen: Vec<u8>,
}

fn check(r: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

impl Pty {
    /// Starts `cmd` on a new PTY of `rows` x `cols`.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        // SAFETY: opens a device by a NUL-terminated literal path.
        let m = check(
            unsafe {
                libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            },
            "ptmx",
        )?;
        // SAFETY: a fresh descriptor we own.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int from a local.
        let r = unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) };
        check(r, "unlock")?;
        // SAFETY: TIOCGPTPEER returns a new descriptor.
        let s = check(
            unsafe { libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) },
            "peer",
        )?;
        // SAFETY: a fresh descriptor we own.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        set_size(&master, rows, cols)?;
        let sfd = slave.as_raw_fd();
        // SAFETY: between fork and exec: system calls only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0
                    || libc::ioctl(sfd, libc::TIOCSCTTY, 0) < 0
                    || libc::dup2(sfd, 0) < 0
                    || libc::dup2(sfd, 1) < 0
                    || libc::dup2(sfd, 2) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            master,
            slave,
            child,
            seen: Vec::new(),
        })
    }

    /// Types `s`.
    pub fn send(&self, s: &[u8]) -> std::io::Result<()> {
        // SAFETY: writes from our buffer.
        let n = unsafe { libc::write(self.master.as_raw_fd(), s.as_ptr().cast(), s.len()) };
        check(n as libc::c_int, "write")?;
        Ok(())
    }

    /// Reads the screen until it shows `want` (after everything already
    /// matched), or fails after `limit` with what it saw.
    pub fn expect(&mut self, want: &str, limit: Duration) -> std::io::Result<String> {
        let t0 = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(p) = text.find(want) {
                let upto = p + want.len();
                let got = text[..upto].to_string();
                self.seen = text.as_bytes()[upto..].to_vec();
                return Ok(got);
            }
            if t0.elapsed() > limit {
                return Err(std::io::Error::other(format!(
                    "waited {limit:?} for {want:?}; the screen showed {text:?}"
                )));
            }
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one pollfd of ours.
            unsafe { libc::poll(&mut p, 1, 100) };
            if p.revents & libc::POLLIN != 0 {
                let mut b = [0u8; 4096];
                // SAFETY: reads into our buffer.
                let n =
                    unsafe { libc::read(self.master.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
                if n > 0 {
                    self.seen.extend_from_slice(&b[..n as usize]);
                }
            }
        }
    }

    /// Resizes the window (the foreground group gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        set_size(&self.master, rows, cols)
    }

    /// The terminal's local modes (ICANON, ECHO, ...), as the slave has them.
    pub fn lflag(&self) -> std::io::Result<libc::tcflag_t> {
        // SAFETY: termios is plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into our local.
        let r = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        check(r, "tcgetattr")?;
        Ok(t.c_lflag)
    }

    /// Waits for the command's exit code, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::io::Result<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code().unwrap_or(-1));
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                return Err(std::io::Error::other("the command did not exit"));
            }
            // Keep the screen drained so the command never blocks on it.
            let _ = self.expect("\u{0}never", Duration::from_millis(50));
        }
    }
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from our local.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    check(r, "winsize")?;
    Ok(())
}
