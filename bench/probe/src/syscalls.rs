//! System calls a box should not get, each tried with arguments that do
//! nothing harmful even where it is allowed, reported as "ok" or the errno
//! name ("EPERM" is what a seccomp denial or a missing capability gives).

use serde_json::{json, Map, Value};

/// The calls tried, in report order.
pub const NAMES: [&str; 10] = [
    "keyctl",
    "finit_module",
    "mount",
    "unshare_user",
    "ptrace",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "reboot",
];

fn errno_name(e: i32) -> String {
    let known = [
        (libc::EPERM, "EPERM"),
        (libc::EACCES, "EACCES"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EINVAL, "EINVAL"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBADF, "EBADF"),
        (libc::ENOENT, "ENOENT"),
        (libc::ENOKEY, "ENOKEY"),
        (libc::ESRCH, "ESRCH"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| s.to_string())
}

/// Makes one call; returns its raw result.
fn call(name: &str) -> libc::c_long {
    match name {
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create 0).
        // SAFETY: integer arguments only.
        "keyctl" => unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) },
        // On fd -1: EBADF where loading modules is allowed.
        // SAFETY: an fd, a pointer to a static empty string, flags.
        "finit_module" => unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) },
        // A tmpfs on a path that does not exist: ENOENT where allowed.
        // SAFETY: static strings and a NULL data pointer.
        "mount" => unsafe {
            libc::c_long::from(libc::mount(
                c"none".as_ptr(),
                c"/twinbox-probe-no-such-dir".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ))
        },
        // Only this process moves to a new user namespace, where allowed.
        // SAFETY: flags only.
        "unshare_user" => unsafe { libc::c_long::from(libc::unshare(libc::CLONE_NEWUSER)) },
        // PTRACE_PEEKUSER of pid 1 without attaching: ESRCH where allowed.
        // SAFETY: integer arguments only; nothing is written.
        "ptrace" => unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKUSER, 1, 0, 0) },
        // BPF_PROG_LOAD with a NULL attribute: EFAULT where allowed.
        // SAFETY: a NULL pointer the kernel checks.
        "bpf" => unsafe { libc::syscall(libc::SYS_bpf, 5, 0, 0) },
        // A NULL attribute: EFAULT where allowed.
        // SAFETY: a NULL pointer the kernel checks.
        "perf_event_open" => unsafe { libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0) },
        // SAFETY: flags only; a returned fd is closed by the caller.
        "userfaultfd" => unsafe { libc::syscall(libc::SYS_userfaultfd, 0) },
        // A NULL params pointer: EFAULT where allowed.
        // SAFETY: a NULL pointer the kernel checks.
        "io_uring_setup" => unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0) },
        // A wrong magic number: EINVAL where allowed.
        // SAFETY: integers and a NULL argument pointer.
        "reboot" => unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, std::ptr::null::<u8>()) },
        _ => -1,
    }
}

/// Tries every call; returns {name: "ok" | errno name}.
pub fn all() -> Value {
    let mut m = Map::new();
    for name in NAMES {
        let r = call(name);
        let out = if r >= 0 {
            if name == "userfaultfd" {
                // SAFETY: closes the descriptor userfaultfd just returned.
                unsafe { libc::close(r as i32) };
            }
            "ok".to_string()
        } else {
            errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        };
        m.insert(name.into(), json!(out));
    }
    Value::Object(m)
}
