// The box's default seccomp profile, as plain data.
//
// This file is `include!`d twice: by build.rs, which assembles it into a
// BPF program at build time, and by `seccomp/mod.rs`, which reports it. So
// it uses nothing but `libc` and holds nothing but data.
//
// Like Docker's profile, it allows what is not listed: a box runs arbitrary
// programs, and an allow-list that breaks them is no use for comparison. It
// denies what a container has no business doing on a shared kernel: loading
// code into the kernel, reading or changing kernel-wide state, making new
// namespaces or mounts, reaching into other processes, and the interfaces
// with the worst record (bpf, perf_event_open, userfaultfd, io_uring,
// keyrings). Syscall numbers of the x32 ABI (bit 30 set) are refused
// outright so no call can slip past this list under another number.

/// A denied system call and the error it returns.
pub struct Denied {
    /// Its name.
    pub name: &'static str,
    /// Its number on x86_64.
    pub nr: i64,
    /// The errno the caller gets.
    pub errno: i32,
}

const fn deny(name: &'static str, nr: i64) -> Denied {
    Denied {
        name,
        nr,
        errno: libc::EPERM,
    }
}

/// Denied whatever the arguments.
pub const DENIED: &[Denied] = &[
    // Kernel code and kernel-wide state.
    deny("kexec_load", libc::SYS_kexec_load),
    deny("kexec_file_load", libc::SYS_kexec_file_load),
    deny("init_module", libc::SYS_init_module),
    deny("finit_module", libc::SYS_finit_module),
    deny("delete_module", libc::SYS_delete_module),
    deny("bpf", libc::SYS_bpf),
    deny("perf_event_open", libc::SYS_perf_event_open),
    deny("userfaultfd", libc::SYS_userfaultfd),
    deny("reboot", libc::SYS_reboot),
    deny("swapon", libc::SYS_swapon),
    deny("swapoff", libc::SYS_swapoff),
    deny("syslog", libc::SYS_syslog),
    deny("acct", libc::SYS_acct),
    deny("settimeofday", libc::SYS_settimeofday),
    deny("clock_settime", libc::SYS_clock_settime),
    deny("clock_adjtime", libc::SYS_clock_adjtime),
    deny("adjtimex", libc::SYS_adjtimex),
    deny("iopl", libc::SYS_iopl),
    deny("ioperm", libc::SYS_ioperm),
    deny("quotactl", libc::SYS_quotactl),
    deny("quotactl_fd", libc::SYS_quotactl_fd),
    deny("nfsservctl", libc::SYS_nfsservctl),
    deny("uselib", libc::SYS_uselib),
    deny("_sysctl", libc::SYS__sysctl),
    deny("lookup_dcookie", libc::SYS_lookup_dcookie),
    deny("vhangup", libc::SYS_vhangup),
    deny("fanotify_init", libc::SYS_fanotify_init),
    // Keyrings are not namespaced.
    deny("keyctl", libc::SYS_keyctl),
    deny("add_key", libc::SYS_add_key),
    deny("request_key", libc::SYS_request_key),
    // Mounts and namespaces.
    deny("mount", libc::SYS_mount),
    deny("umount2", libc::SYS_umount2),
    deny("pivot_root", libc::SYS_pivot_root),
    deny("open_tree", libc::SYS_open_tree),
    deny("move_mount", libc::SYS_move_mount),
    deny("fsopen", libc::SYS_fsopen),
    deny("fsconfig", libc::SYS_fsconfig),
    deny("fsmount", libc::SYS_fsmount),
    deny("fspick", libc::SYS_fspick),
    deny("mount_setattr", libc::SYS_mount_setattr),
    deny("unshare", libc::SYS_unshare),
    deny("setns", libc::SYS_setns),
    // File handles bypass the mount tree ("shocker").
    deny("open_by_handle_at", libc::SYS_open_by_handle_at),
    deny("name_to_handle_at", libc::SYS_name_to_handle_at),
    // Other processes' memory.
    deny("ptrace", libc::SYS_ptrace),
    deny("process_vm_readv", libc::SYS_process_vm_readv),
    deny("process_vm_writev", libc::SYS_process_vm_writev),
    deny("kcmp", libc::SYS_kcmp),
    // io_uring.
    deny("io_uring_setup", libc::SYS_io_uring_setup),
    deny("io_uring_enter", libc::SYS_io_uring_enter),
    deny("io_uring_register", libc::SYS_io_uring_register),
    // clone3 passes its flags in memory, where BPF cannot look: ENOSYS makes
    // the C library fall back to clone, whose flags are checked below.
    Denied {
        name: "clone3",
        nr: libc::SYS_clone3,
        errno: libc::ENOSYS,
    },
];

/// `clone` is allowed without any of these flags (new namespaces).
pub const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u32;

/// `ioctl(fd, TIOCSTI, ...)` pushes input into a terminal the box shares.
pub const TIOCSTI: u32 = libc::TIOCSTI as u32;
