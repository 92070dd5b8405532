//! The agent's listening socket in a VM: a vsock stream socket bound to
//! any CID (the guest's own) and the agent's port, so that the host
//! reaches it through the VMM's vsock device.

use std::os::fd::{FromRawFd, OwnedFd};

/// Listens on vsock `port`; an error when the kernel has no vsock (no
/// `AF_VSOCK`, or no transport: no virtio-vsock device).
pub fn listen(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all zeros is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: bind reads the address we own, of the size given.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    // SAFETY: listen on our socket, no pointers.
    if r != 0 || unsafe { libc::listen(fd, 16) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Where the host has vsock (bind needs no transport), the socket is
    /// bound to the port asked for; elsewhere the error is clean.
    #[test]
    fn listens_on_the_port_or_fails_cleanly() {
        let port = 3_000_000 + std::process::id();
        let sock = match listen(port) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("no vsock on this host: {e}");
                return;
            }
        };
        // SAFETY: sockaddr_vm is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: valid pointers to the address and its length, which we own.
        let r = unsafe {
            libc::getsockname(
                sock.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_vm).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(addr.svm_family, libc::AF_VSOCK as libc::sa_family_t);
        assert_eq!(addr.svm_port, port);
        // The same port twice is refused, not panicked on.
        assert!(listen(port).is_err());
    }
}
