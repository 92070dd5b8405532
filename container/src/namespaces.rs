//! The namespace kinds, and whether this host lets us create each one.
//!
//! The probe forks a child per kind that calls `unshare(2)` and exits with
//! the result, so the caller's own namespaces never change.

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// The namespace kinds a container uses, with their names.
pub const KINDS: [(&str, CloneFlags); 8] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mount", CloneFlags::CLONE_NEWNS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
];

/// Errors of the namespace probe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The probe child could not be forked or waited for.
    #[error("probing namespaces")]
    Probe(#[from] nix::errno::Errno),
}

/// Whether a child of this process can `unshare` the namespace kind:
/// `Ok(None)` if it can, `Ok(Some(errno))` with the refusal otherwise.
pub fn can_unshare(flag: CloneFlags) -> Result<Option<nix::errno::Errno>, Error> {
    // SAFETY: the child only calls unshare(2) and _exit(2), both
    // async-signal-safe, so forking a (possibly multi-threaded) process is
    // sound: nothing in the child touches locks or the allocator.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match nix::sched::unshare(flag) {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or flushing its copied stdio buffers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(None),
            WaitStatus::Exited(_, code) => Ok(Some(nix::errno::Errno::from_raw(code))),
            _ => Ok(Some(nix::errno::Errno::ECHILD)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uts_namespace_probe_agrees_with_privilege() -> Result<(), Error> {
        let r = can_unshare(CloneFlags::CLONE_NEWUTS)?;
        if nix::unistd::geteuid().is_root() {
            assert_eq!(r, None);
        }
        // A flag unshare(2) does not take is refused with EINVAL, so the probe
        // really reports the kernel's answer.
        assert_eq!(
            can_unshare(CloneFlags::CLONE_VFORK)?,
            Some(nix::errno::Errno::EINVAL)
        );
        Ok(())
    }
}
