// The seccomp allow-lists of the VMM's threads, as plain data.
//
// This file is `include!`d twice: by build.rs, which compiles the lists to
// BPF at build time, and by `seccomp/mod.rs`, which reports them. So it uses
// nothing but `libc` and holds nothing but data.

/// A system call a thread may make. If `arg1` is not empty, only those
/// values of its second argument are allowed (the `ioctl` request, the
/// `fcntl` command).
pub struct Allowed {
    /// Its name.
    pub name: &'static str,
    /// Its number on x86_64.
    pub nr: i64,
    /// Allowed values of argument 1; empty allows every value.
    pub arg1: &'static [u64],
}

/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`: read on an internal error, for the report.
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`: the I/O APIC's routes, when
/// the guest reprograms it (split irqchip).
pub const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;

const fn allow(name: &'static str, nr: i64) -> Allowed {
    Allowed { name, nr, arg1: &[] }
}

/// Memory, signals and thread exit: what the Rust and glibc runtimes need
/// in any thread, kept to what strace showed in real runs.
pub const RUNTIME: &[Allowed] = &[
    allow("futex", libc::SYS_futex),
    allow("mmap", libc::SYS_mmap),
    allow("munmap", libc::SYS_munmap),
    allow("mprotect", libc::SYS_mprotect),
    allow("madvise", libc::SYS_madvise),
    allow("mremap", libc::SYS_mremap),
    allow("brk", libc::SYS_brk),
    allow("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    allow("rt_sigreturn", libc::SYS_rt_sigreturn),
    allow("sigaltstack", libc::SYS_sigaltstack),
    allow("sched_yield", libc::SYS_sched_yield),
    allow("clock_gettime", libc::SYS_clock_gettime),
    allow("close", libc::SYS_close),
    allow("write", libc::SYS_write),
    allow("exit", libc::SYS_exit),
    // Rust checks a descriptor is open before closing it (debug builds).
    Allowed { name: "fcntl", nr: libc::SYS_fcntl, arg1: &[libc::F_GETFD as u64] },
];

/// A vCPU thread, besides [`RUNTIME`]: KVM_RUN, KVM_GET_REGS (for the
/// report of an internal error) and KVM_SET_GSI_ROUTING (the guest's
/// I/O APIC writes, handled on the vCPU that made them); and
/// EPOLL_CTL_DEL only: a guest driver resetting the vsock device (a
/// status write, on its vCPU) drops the device's host connections, whose
/// sockets leave the device thread's epoll set.
pub const VCPU_ONLY: &[Allowed] = &[
    Allowed {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        arg1: &[KVM_RUN, KVM_GET_REGS, KVM_SET_GSI_ROUTING],
    },
    Allowed {
        name: "epoll_ctl",
        nr: libc::SYS_epoll_ctl,
        arg1: &[libc::EPOLL_CTL_DEL as u64],
    },
];

/// The VMM thread once the vCPUs run, besides [`RUNTIME`]: wait, kick the
/// vCPU threads (pthread_kill is getpid + tgkill), tear down; pread64 reads
/// KVM's statistics files when profiling (fds opened before the filter).
pub const VMM_ONLY: &[Allowed] = &[
    allow("pread64", libc::SYS_pread64),
    allow("clock_nanosleep", libc::SYS_clock_nanosleep),
    allow("nanosleep", libc::SYS_nanosleep),
    allow("getpid", libc::SYS_getpid),
    allow("tgkill", libc::SYS_tgkill),
];

/// `SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC`: the one socket type the
/// vsock thread makes (guest-initiated connections to host sockets).
pub const VSOCK_SOCKET_TYPE: u64 =
    (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;

/// The vsock device thread, besides [`RUNTIME`]: wait on its epoll set
/// and change it, read its eventfds, accept host clients, move bytes on
/// sockets (recv and send with MSG_NOSIGNAL), connect to host sockets for
/// guest-initiated connections, shut a socket's half.
pub const VSOCK_ONLY: &[Allowed] = &[
    allow("epoll_wait", libc::SYS_epoll_wait),
    allow("epoll_pwait", libc::SYS_epoll_pwait),
    allow("epoll_ctl", libc::SYS_epoll_ctl),
    allow("read", libc::SYS_read),
    allow("recvfrom", libc::SYS_recvfrom),
    allow("sendto", libc::SYS_sendto),
    allow("accept4", libc::SYS_accept4),
    Allowed { name: "socket", nr: libc::SYS_socket, arg1: &[VSOCK_SOCKET_TYPE] },
    allow("connect", libc::SYS_connect),
    allow("shutdown", libc::SYS_shutdown),
];

/// A vCPU thread of a VM with shared directories, besides [`VCPU_ONLY`]:
/// the guest's DRIVER_OK and reset of a virtio-fs device are vhost-user
/// messages to its file server, sent and answered on that vCPU (sendmsg
/// with the memfd and eventfds, recvmsg), a reset drains the call
/// eventfds of the rings it stopped (read; the guest's first driver reset
/// at probe does it, so without it the vCPU was killed), and a server that
/// failed is cut off (shutdown of both directions only).
pub const VCPU_SHARES_ONLY: &[Allowed] = &[
    allow("read", libc::SYS_read),
    allow("sendmsg", libc::SYS_sendmsg),
    allow("recvmsg", libc::SYS_recvmsg),
    Allowed { name: "shutdown", nr: libc::SYS_shutdown, arg1: &[libc::SHUT_RDWR as u64] },
];

/// A virtio-fs device thread, besides [`RUNTIME`]: wait on its epoll set
/// (the call eventfds, the server's socket), read the eventfds, take the
/// socket out of the set once it hung up and cut it (shutdown of both
/// directions only) before closing it.
pub const VIRTIOFS_ONLY: &[Allowed] = &[
    allow("epoll_wait", libc::SYS_epoll_wait),
    allow("epoll_pwait", libc::SYS_epoll_pwait),
    Allowed {
        name: "epoll_ctl",
        nr: libc::SYS_epoll_ctl,
        arg1: &[libc::EPOLL_CTL_DEL as u64],
    },
    allow("read", libc::SYS_read),
    Allowed { name: "shutdown", nr: libc::SYS_shutdown, arg1: &[libc::SHUT_RDWR as u64] },
];

/// A vCPU thread's whole list.
pub fn vcpu() -> Vec<&'static Allowed> {
    VCPU_ONLY.iter().chain(RUNTIME).collect()
}

/// The VMM thread's whole list.
pub fn vmm() -> Vec<&'static Allowed> {
    VMM_ONLY.iter().chain(RUNTIME).collect()
}

/// The vsock thread's whole list.
pub fn vsock() -> Vec<&'static Allowed> {
    VSOCK_ONLY.iter().chain(RUNTIME).collect()
}

/// A vCPU thread's whole list in a VM with shared directories.
pub fn vcpu_shares() -> Vec<&'static Allowed> {
    VCPU_SHARES_ONLY.iter().chain(VCPU_ONLY).chain(RUNTIME).collect()
}

/// A virtio-fs thread's whole list.
pub fn virtiofs() -> Vec<&'static Allowed> {
    VIRTIOFS_ONLY.iter().chain(RUNTIME).collect()
}
