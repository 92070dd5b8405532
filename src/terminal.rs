//! Terminals on the host side: window sizes,
//! and the host terminal's raw mode while a box owns it (restored on
//! drop, so an error or a signal-driven exit leaves the shell usable).

#[cfg(test)]
use std::os::fd::FromRawFd;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Opens a new PTY: (master, slave), both close-on-exec (for tests: a
/// box's terminal is made inside the box, see `twinbox_container::pty`). The slave is
/// opened from the master (`TIOCGPTPEER`), not by path, so it is the
/// pair's even if /dev/pts is not the host's.
#[cfg(test)]
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: opens a device by a NUL-terminated literal path.
    let m = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `m` is a fresh descriptor we own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a local.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh descriptor we own.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// The window size of terminal `fd` (rows, columns), if it is one.
pub fn winsize(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into our local.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}

/// Sets terminal `fd`'s window size (its foreground group gets SIGWINCH).
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from our local.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The host terminal in raw mode until dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode; `None` if it is not a terminal.
    pub fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: termios is plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into our local.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw edits our local.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: tcsetattr reads our local.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Writes all of `data` to `fd` (blocking), retrying on EINTR and
/// waiting out EAGAIN.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writes from our buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: polls one pollfd of ours.
                    unsafe { libc::poll(&mut p, 1, 1000) };
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads what is waiting on `fd` into `buf`: `Ok(0)` at end (a PTY
/// master whose slave closed reports EIO, also an end).
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: reads into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Makes `fd` non-blocking (only for descriptors this process made).
pub fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL takes integers.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_carries_bytes_and_its_size() -> std::io::Result<()> {
        let (m, s) = open_pty()?;
        // SAFETY: isatty takes an integer.
        assert_eq!(unsafe { libc::isatty(s.as_raw_fd()) }, 1);
        set_winsize(m.as_raw_fd(), 33, 101)?;
        assert_eq!(winsize(s.as_raw_fd()), Some((33, 101)));
        write_all(s.as_raw_fd(), b"hi\n")?;
        let mut b = [0u8; 16];
        let n = read_some(m.as_raw_fd(), &mut b)?;
        assert!(b[..n].starts_with(b"hi"), "{:?}", &b[..n]);
        drop(s);
        assert_eq!(read_some(m.as_raw_fd(), &mut b)?, 0, "slave closed: end");
        Ok(())
    }
}
