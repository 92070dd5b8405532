//! Seccomp filters for the VMM's threads, compiled to BPF at build time
//! (build.rs) from the allow-lists in `rules.rs`.
//!
//! Each vCPU thread installs the vCPU filter before its first `KVM_RUN`; the
//! VMM thread installs its own once the vCPU threads are started (it handles
//! no guest input: devices run in the vCPU threads, but for the vsock
//! device's queues and sockets, which its own thread handles under its own
//! filter, installed before it looks at any, and a virtio-fs device's
//! interrupts, relayed by its own thread under its own). A VM with shared
//! directories gives its vCPUs a filter with three calls more (the
//! vhost-user messages of a virtio-fs device's activation and reset);
//! one without keeps the plain vCPU filter. A call outside the list
//! ends the process: a VMM that does something it never does must not go
//! on. The filter traps it (`SECCOMP_RET_TRAP`) rather than killing at
//! once, so that a SIGSYS handler can first say on stderr which thread
//! made which call; the handler then makes a call no list allows, which
//! the kernel, finding SIGSYS blocked in its own handler, delivers with
//! the default action: the process dies of SIGSYS all the same, as with
//! `SECCOMP_RET_KILL_PROCESS`.

#[allow(dead_code, clippy::all)]
mod rules {
    include!("rules.rs");
}

pub use rules::Allowed;

/// Errors of installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the filter.
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("installing the {0} thread's SIGSYS handler")]
    Handler(&'static str, #[source] std::io::Error),
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// A vCPU thread.
    Vcpu,
    /// The VMM thread.
    Vmm,
    /// The vsock device's thread.
    Vsock,
    /// A vCPU thread of a VM with shared directories (vhost-user
    /// messages on DRIVER_OK and reset).
    VcpuShares,
    /// A virtio-fs device's thread.
    Virtiofs,
}

static VCPU_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vcpu.bpf"));
static VMM_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmm.bpf"));
static VSOCK_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vsock.bpf"));
static VCPU_SHARES_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vcpu_shares.bpf"));
static VIRTIOFS_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/virtiofs.bpf"));

impl Thread {
    fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vCPU",
            Self::Vmm => "VMM",
            Self::Vsock => "vsock",
            Self::VcpuShares => "vCPU (with shares)",
            Self::Virtiofs => "virtio-fs",
        }
    }

    /// The allow-list.
    pub fn allowed(self) -> Vec<&'static Allowed> {
        match self {
            Self::Vcpu => rules::vcpu(),
            Self::Vmm => rules::vmm(),
            Self::Vsock => rules::vsock(),
            Self::VcpuShares => rules::vcpu_shares(),
            Self::Virtiofs => rules::virtiofs(),
        }
    }

    /// The compiled program.
    pub fn program(self) -> Vec<seccompiler::sock_filter> {
        let bytes = match self {
            Self::Vcpu => VCPU_BPF,
            Self::Vmm => VMM_BPF,
            Self::Vsock => VSOCK_BPF,
            Self::VcpuShares => VCPU_SHARES_BPF,
            Self::Virtiofs => VIRTIOFS_BPF,
        };
        bytes
            .chunks_exact(8)
            .map(|c| seccompiler::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    }
}

/// Installs the filter for `thread` on the calling thread (and sets
/// `no_new_privs`, which seccomp requires), with the SIGSYS handler that
/// names a refused call.
pub fn install(thread: Thread) -> Result<(), Error> {
    trap::set_up(thread.name()).map_err(|e| Error::Handler(thread.name(), e))?;
    seccompiler::apply_filter(&thread.program()).map_err(|e| Error::Install(thread.name(), e))
}

/// The SIGSYS handler of trapped calls.
mod trap {
    use std::cell::Cell;

    /// A call on no thread's list: the handler makes it to die.
    pub const NEVER_ALLOWED: libc::c_long = libc::SYS_getppid;

    thread_local! {
        /// The filter this thread runs under (a constant initializer, so
        /// reading it in the handler takes no lock and no allocation).
        static FILTER: Cell<&'static str> = const { Cell::new("") };
    }

    /// Where the call's number sits in a SIGSYS `siginfo_t` on x86_64:
    /// after signo, errno, code and padding (16 bytes) and the call's
    /// address (8), the `_syscall` int of the `_sigsys` member.
    const SYSCALL_OFFSET: usize = 24;

    /// Names this thread's filter and installs the process's handler
    /// (again: a sigaction of the same handler is harmless).
    pub fn set_up(name: &'static str) -> std::io::Result<()> {
        FILTER.with(|f| f.set(name));
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // `extern "C"` function of the signature SA_SIGINFO expects, and it
        // only reads thread-local and signal data and makes raw calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Appends `n` in decimal.
    fn put_number(out: &mut [u8], at: &mut usize, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(out, at, &digits[i..]);
    }

    fn put(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
        let n = bytes.len().min(out.len() - *at);
        out[*at..*at + n].copy_from_slice(&bytes[..n]);
        *at += n;
    }

    /// The message for a trapped call `nr` on a thread under `filter`.
    pub fn message(out: &mut [u8; 256], filter: &str, nr: i32) -> usize {
        let mut at = 0;
        put(out, &mut at, b"twinbox: the VMM's ");
        put(
            out,
            &mut at,
            if filter.is_empty() {
                b"?"
            } else {
                filter.as_bytes()
            },
        );
        put(out, &mut at, b" thread made system call ");
        match u64::try_from(nr) {
            Ok(n) => put_number(out, &mut at, n),
            Err(_) => put(out, &mut at, b"(negative)"),
        }
        put(
            out,
            &mut at,
            b", which its seccomp filter does not allow: stopping the VM\n",
        );
        at
    }

    extern "C" fn handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        let mut nr = -1;
        if !info.is_null() {
            // SAFETY: the kernel's siginfo for SIGSYS, at least 128 bytes;
            // an unaligned read of the int at its documented offset.
            nr = unsafe {
                std::ptr::read_unaligned(info.cast::<u8>().add(SYSCALL_OFFSET).cast::<i32>())
            };
        }
        let filter = FILTER.with(|f| f.get());
        let mut buf = [0u8; 256];
        let n = message(&mut buf, filter, nr);
        // SAFETY: writes our own buffer to stderr (write is on every list),
        // then makes a call none allows, which ends the process (module doc).
        unsafe {
            libc::syscall(libc::SYS_write, 2, buf.as_ptr(), n);
            libc::syscall(NEVER_ALLOWED);
            libc::syscall(libc::SYS_exit_group, 159);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_compiled_and_lists_are_small() {
        for t in [
            Thread::Vcpu,
            Thread::Vmm,
            Thread::Vsock,
            Thread::VcpuShares,
            Thread::Virtiofs,
        ] {
            let p = t.program();
            assert!(!p.is_empty());
            // Every BPF program ends with a return.
            assert_eq!(p.last().map(|i| i.code & 0x07), Some(0x06));
            assert!(t.allowed().len() < 30);
        }
        // Firecracker's figures for comparison: 27 vCPU, 50 VMM syscalls.
        assert_eq!(Thread::Vcpu.allowed().len(), 18);
        assert_eq!(Thread::Vmm.allowed().len(), 21);
        assert_eq!(Thread::Vsock.allowed().len(), 26);
        assert_eq!(Thread::VcpuShares.allowed().len(), 22);
        assert_eq!(Thread::Virtiofs.allowed().len(), 21);
        assert!(Thread::Vcpu
            .allowed()
            .iter()
            .any(|a| a.name == "ioctl" && a.arg1.len() == 3));
    }

    /// Runs `f` in a forked child under the vCPU filter; returns how the
    /// child ended and what it wrote on stderr.
    fn in_filtered_child(f: fn()) -> (nix::sys::wait::WaitStatus, String) {
        let Ok((r, w)) = nix::unistd::pipe() else {
            return (nix::sys::wait::WaitStatus::StillAlive, String::new());
        };
        // SAFETY: the child only moves its stderr, installs the filter and
        // makes raw system calls before it ends with the exit syscall; it
        // takes no lock.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: our pipe's write end onto stderr.
                unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&w), 2) };
                if install(Thread::Vcpu).is_err() {
                    // SAFETY: ending the child.
                    unsafe { libc::syscall(libc::SYS_exit, 99) };
                }
                f();
                // SAFETY: `exit` (not exit_group) is on the vCPU list.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
                unreachable!()
            }
            pid => {
                drop(w);
                let mut said = String::new();
                let _ = std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut said);
                let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
                    .unwrap_or(nix::sys::wait::WaitStatus::StillAlive);
                (st, said)
            }
        }
    }

    #[test]
    fn the_call_the_handler_dies_by_is_on_no_list() {
        for t in [
            Thread::Vcpu,
            Thread::Vmm,
            Thread::Vsock,
            Thread::VcpuShares,
            Thread::Virtiofs,
        ] {
            assert!(t.allowed().iter().all(|a| a.nr != trap::NEVER_ALLOWED));
        }
        let mut buf = [0u8; 256];
        let n = trap::message(&mut buf, "vCPU", 1234);
        assert_eq!(
            std::str::from_utf8(&buf[..n]),
            Ok("twinbox: the VMM's vCPU thread made system call 1234, which its seccomp filter does not allow: stopping the VM\n")
        );
        let n = trap::message(&mut buf, &"x".repeat(400), 0);
        assert_eq!(n, 256);
    }

    #[test]
    fn the_filter_kills_what_is_not_listed_and_allows_what_is() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        // SAFETY: getpid has no preconditions (and is not on the list).
        let (st, said) = in_filtered_child(|| unsafe {
            libc::syscall(libc::SYS_getpid);
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{st:?}"
        );
        // The handler names the thread and the call before the end.
        assert_eq!(
            said,
            format!(
                "twinbox: the VMM's vCPU thread made system call {}, which its seccomp filter does not allow: stopping the VM\n",
                libc::SYS_getpid
            )
        );
        // An ioctl other than KVM_RUN/KVM_GET_REGS is killed too.
        // SAFETY: a harmless ioctl on stdin (FIONREAD into a local).
        let (st, said) = in_filtered_child(|| unsafe {
            let mut n: libc::c_int = 0;
            libc::ioctl(0, libc::FIONREAD, &mut n);
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{st:?}"
        );
        assert!(said.contains("system call 16,"), "{said}");
        // SAFETY: a zero-length write is on the list and harmless.
        let (st, said) = in_filtered_child(|| unsafe {
            libc::syscall(libc::SYS_write, 2, std::ptr::null::<u8>(), 0);
        });
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
        assert_eq!(said, "");
    }
}
