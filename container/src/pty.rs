//! A terminal inside the box (`-t`): the workload's side makes a new PTY
//! in the box's own devpts instance, so `tty` names `/dev/pts/0` there and
//! the host's /dev/pts stays out of sight, takes the slave as its stdin,
//! stdout, stderr and controlling terminal, and hands the master to the
//! launcher over a socket (`SCM_RIGHTS`). The launcher relays the master.
//!
//! The child side makes system calls only (it runs between clone and
//! execve).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::child::Stage;

fn check(r: libc::c_int) -> Result<libc::c_int, (Stage, Errno)> {
    if r < 0 {
        return Err((Stage::Stdio, Errno::last()));
    }
    Ok(r)
}

/// Child side: a new PTY of `rows` x `cols` from the box's `/dev/ptmx`,
/// its master sent on `sock`, its slave made fds 0-2 and the controlling
/// terminal of a new session.
pub(crate) fn make_in_box(sock: RawFd, rows: u16, cols: u16) -> Result<(), (Stage, Errno)> {
    // SAFETY: opens the box's multiplexer by a literal path.
    let m = check(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a local.
    check(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) })?;
    if rows > 0 && cols > 0 {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a local.
        check(unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) })?;
    }
    // SAFETY: TIOCGPTPEER returns a new descriptor.
    let s = check(unsafe { libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_CLOEXEC) })?;
    send_fd(sock, m)?;
    // SAFETY: closes our copy of the master; dup2 makes the slave 0-2
    // (without close-on-exec), then the session takes it.
    unsafe {
        libc::close(m);
        for t in 0..3 {
            check(libc::dup2(s, t))?;
        }
        libc::close(s);
    }
    nix::unistd::setsid().map_err(|e| (Stage::Stdio, e))?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    Ok(())
}

fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), (Stage, Errno)> {
    // Room for one descriptor: CMSG_SPACE(4) is 24 on 64-bit Linux.
    let mut cbuf = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; the control buffer is ours and large
    // enough for one SCM_RIGHTS header and descriptor (CMSG_SPACE(4)).
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &mh, libc::MSG_NOSIGNAL) != 1 {
            return Err((Stage::Stdio, Errno::last()));
        }
    }
    Ok(())
}

/// Launcher side: the master the child sent on `sock`.
pub(crate) fn recv_master(sock: RawFd) -> Result<OwnedFd, Errno> {
    let mut cbuf = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as in `send_fd`; the one descriptor the kernel put in the
    // control buffer is now ours.
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = libc::CMSG_SPACE(4) as usize;
        if libc::recvmsg(sock, &mut mh, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) != 1 {
            return Err(Errno::last());
        }
        let c = libc::CMSG_FIRSTHDR(&mh);
        if c.is_null()
            || (*c).cmsg_type != libc::SCM_RIGHTS
            || (*c).cmsg_len != libc::CMSG_LEN(4) as usize
        {
            return Err(Errno::EPROTO);
        }
        Ok(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(c).cast::<RawFd>(),
        )))
    }
}

/// A socket pair for the master's way back (close-on-exec both ends).
pub(crate) fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into our array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Errno::last());
    }
    // SAFETY: two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
