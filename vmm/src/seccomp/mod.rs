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
//! kills the process (`SECCOMP_RET_KILL_PROCESS`): a VMM that does something
//! it never does must not go on.

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
/// `no_new_privs`, which seccomp requires).
pub fn install(thread: Thread) -> Result<(), Error> {
    seccompiler::apply_filter(&thread.program()).map_err(|e| Error::Install(thread.name(), e))
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
    /// child ended.
    fn in_filtered_child(f: fn()) -> nix::sys::wait::WaitStatus {
        // SAFETY: the child only installs the filter and makes raw system
        // calls before it ends with the exit syscall; it takes no lock.
        match unsafe { libc::fork() } {
            0 => {
                if install(Thread::Vcpu).is_err() {
                    // SAFETY: ending the child.
                    unsafe { libc::syscall(libc::SYS_exit, 99) };
                }
                f();
                // SAFETY: `exit` (not exit_group) is on the vCPU list.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
                unreachable!()
            }
            pid => nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
                .unwrap_or(nix::sys::wait::WaitStatus::StillAlive),
        }
    }

    #[test]
    fn the_filter_kills_what_is_not_listed_and_allows_what_is() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        // SAFETY: getppid has no preconditions (and is not on the list).
        let st = in_filtered_child(|| unsafe {
            libc::syscall(libc::SYS_getppid);
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{st:?}"
        );
        // An ioctl other than KVM_RUN/KVM_GET_REGS is killed too.
        // SAFETY: a harmless ioctl on stdin (FIONREAD into a local).
        let st = in_filtered_child(|| unsafe {
            let mut n: libc::c_int = 0;
            libc::ioctl(0, libc::FIONREAD, &mut n);
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{st:?}"
        );
        // SAFETY: a zero-length write is on the list and harmless.
        let st = in_filtered_child(|| unsafe {
            libc::syscall(libc::SYS_write, 2, std::ptr::null::<u8>(), 0);
        });
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }
}
