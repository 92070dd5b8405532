//! The box's default seccomp profile (see `profile.rs` for what it denies
//! and why), assembled to BPF at build time by build.rs, so a start only
//! hands the kernel a ready program.

pub mod filter;
pub mod syscalls;

#[allow(dead_code)]
mod profile {
    include!("profile.rs");
}

pub use profile::{Denied, CLONE_NAMESPACE_FLAGS, DENIED};

include!(concat!(env!("OUT_DIR"), "/seccomp_profile.rs"));

/// Names of the denied system calls (plus clone with namespace flags and
/// ioctl TIOCSTI), for reports.
pub fn denied_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = DENIED.iter().map(|d| d.name).collect();
    v.push("clone(CLONE_NEW*)");
    v.push("ioctl(TIOCSTI)");
    v
}

/// Installs the profile on the calling thread. Needs `no_new_privs` (or
/// CAP_SYS_ADMIN); makes only system calls, so it is safe between `clone`
/// and `execve`.
pub fn install() -> Result<(), nix::errno::Errno> {
    let prog = libc::sock_fprog {
        len: PROGRAM.len() as u16,
        filter: PROGRAM.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program, which is valid for the call;
    // the filter pointer is only read despite its type.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_what_the_profile_says() {
        // Arch check, x32 check, two per denied call, five each for clone
        // and ioctl, the final allow.
        assert_eq!(PROGRAM.len(), 6 + 2 * DENIED.len() + 5 + 5 + 1);
        assert!(PROGRAM.len() < 4096);
        assert!(DENIED.iter().any(|d| d.name == "keyctl"));
        assert!(DENIED.iter().any(|d| d.name == "finit_module"));
        assert_eq!(denied_names().len(), DENIED.len() + 2);
    }

    fn in_child(f: fn() -> bool) -> bool {
        // SAFETY: the child only makes system calls and _exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let ok = f();
                // SAFETY: ends the child without unwinding into the harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ),
            Err(_) => false,
        }
    }

    #[test]
    fn denies_listed_calls_and_allows_the_rest() {
        assert!(in_child(|| {
            // SAFETY: no pointers.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
            if !nnp || install().is_err() {
                return false;
            }
            let errno = || nix::errno::Errno::last_raw();
            // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID=0, KEY_SPEC_SESSION_KEYRING=-3, 0)
            // takes no pointers; it must be refused before the kernel looks.
            let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) } == -1
                && errno() == libc::EPERM;
            // SAFETY: finit_module on fd -1 with an empty string literal.
            let module = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) }
                == -1
                && errno() == libc::EPERM;
            // SAFETY: unshare takes flags only.
            let unshare =
                unsafe { libc::unshare(libc::CLONE_NEWUTS) } == -1 && errno() == libc::EPERM;
            // SAFETY: the x32 number of getpid takes no arguments.
            let x32 = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) } == -1
                && errno() == libc::EPERM;
            // SAFETY: getpid takes no arguments.
            let allowed = unsafe { libc::getpid() } > 0;
            keyctl && module && unshare && x32 && allowed
        }));
    }
}
