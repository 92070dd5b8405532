//! Creating the box's first process: `clone` into new namespaces, fork-like
//! (no new stack, no shared memory), and on cgroup v2 straight into the
//! box's group with `clone3(CLONE_INTO_CGROUP)`.
//!
//! Why the cgroup at clone time: moving a process into a group afterwards
//! (writing its pid to `cgroup.procs`) takes the kernel's global
//! threadgroup lock for writing, which waits out an RCU grace period (5-20
//! ms on the 2-CPU host this was measured on). A process created inside
//! the group takes no such lock. On v1, where `CLONE_INTO_CGROUP` does not
//! exist, the child moves itself instead (see `Cgroup::self_join_files`).

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sched::CloneFlags;

/// Which side of the clone this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The new process.
    Child,
    /// The launcher, with the child's pid and whether it was born in the
    /// cgroup.
    Parent {
        /// The child.
        pid: i32,
        /// Created inside the cgroup (`CLONE_INTO_CGROUP` worked).
        in_cgroup: bool,
    },
}

/// `struct clone_args` of linux/sched.h (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones a fork-like child with `flags`; with `cgroup` (an open v2 group
/// directory) the child is created in that group where the kernel can
/// (5.7+), else the caller must move it.
///
/// # Safety
///
/// As for `fork`: in the child, only async-signal-safe work may follow if
/// the caller has other threads.
pub unsafe fn clone(flags: CloneFlags, cgroup: Option<RawFd>) -> Result<Fork, Errno> {
    if let Some(fd) = cgroup {
        let mut args = CloneArgs {
            flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 reads `args`, valid for the call; without CLONE_VM
        // and with no stack it behaves as fork (the caller's contract).
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok(Fork::Child),
            pid if pid > 0 => {
                return Ok(Fork::Parent {
                    pid: pid as i32,
                    in_cgroup: true,
                })
            }
            _ => match Errno::last() {
                // No clone3, no CLONE_INTO_CGROUP, or a group that cannot
                // take it: fall back to clone and a move.
                Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::EBUSY => {
                }
                e => return Err(e),
            },
        }
    }
    // SAFETY: as above, through the classic clone entry point.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        0 => Ok(Fork::Child),
        pid if pid > 0 => Ok(Fork::Parent {
            pid: pid as i32,
            in_cgroup: false,
        }),
        _ => Err(Errno::last()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// On a host with a cgroup2 mount (this one's hybrid `unified` mount
    /// counts), the child is born in the group.
    #[test]
    fn clone_into_a_v2_group() -> Result<(), Box<dyn std::error::Error>> {
        let Some(mount) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        else {
            return Ok(());
        };
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let name = format!("twinbox-spawn-test-{}", std::process::id());
        let dir = mount.join(&name);
        std::fs::create_dir(&dir)?;
        let fd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: the child only reads a file into a stack buffer and exits.
        let r = unsafe { clone(CloneFlags::empty(), Some(fd.as_raw_fd())) };
        let outcome = match r {
            Ok(Fork::Child) => {
                let mut buf = [0u8; 512];
                let ok = std::fs::File::open("/proc/self/cgroup")
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
                    .map(|n| {
                        String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .any(|l| l.starts_with("0::/") && l.ends_with(&name))
                    })
                    .unwrap_or(false);
                // SAFETY: ends the child without unwinding into the harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            Ok(Fork::Parent { pid, in_cgroup }) => {
                let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                Ok((in_cgroup, st))
            }
            Err(e) => Err(e),
        };
        std::fs::remove_dir(&dir)?;
        let (in_cgroup, st) = outcome?;
        assert!(in_cgroup);
        assert!(matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))));
        Ok(())
    }
}
