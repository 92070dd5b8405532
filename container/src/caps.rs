//! Capabilities: the box keeps a Docker-like default set and nothing else,
//! in every set the kernel has (bounding, effective, permitted, inheritable,
//! ambient).
//!
//! One deliberate difference from Docker: `CAP_MKNOD` is not kept. Docker
//! pairs it with a device cgroup that forbids opening device nodes the box
//! makes; v2 has no device cgroup file (only an eBPF program), so without
//! it a root workload could `mknod` the host's disk and read it. The box's
//! rootfs is also mounted `nodev`.
//!
//! The functions here run in the box's child process between `clone` and
//! `execve`, so they only make system calls: no allocation.

/// The capabilities a box keeps (numbers from linux/capability.h).
pub const DEFAULT: [(&str, u32); 13] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// The default set as a 64-bit mask.
pub const fn default_mask() -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < DEFAULT.len() {
        m |= 1 << DEFAULT[i].1;
        i += 1;
    }
    m
}

/// The highest capability number this kernel knows, from
/// /proc/sys/kernel/cap_last_cap (read before the box is made).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Drops every capability outside `keep` from the bounding set, clears the
/// ambient set, and sets effective = permitted = inheritable = `keep`.
/// Needs `CAP_SETPCAP` on entry, so it runs before the user changes.
pub fn restrict(keep: u64, last_cap: u32) -> Result<(), nix::errno::Errno> {
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with PR_CAPBSET_DROP takes a capability number
            // and no pointers.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = nix::errno::Errno::last();
                // A number the kernel does not know is not in the set anyway.
                if e != nix::errno::Errno::EINVAL {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    set(keep, keep, keep)
}

/// Sets the effective, permitted and inheritable sets.
pub fn set(effective: u64, permitted: u64, inheritable: u64) -> Result<(), nix::errno::Errno> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |e: u64, p: u64, i: u64, hi: bool| {
        let s = if hi { 32 } else { 0 };
        Data {
            effective: (e >> s) as u32,
            permitted: (p >> s) as u32,
            inheritable: (i >> s) as u32,
        }
    };
    let data = [
        split(effective, permitted, inheritable, false),
        split(effective, permitted, inheritable, true),
    ];
    // SAFETY: capset reads a version-3 header and two data structs, both
    // valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// The current (effective, permitted, inheritable) sets of this thread.
pub fn get() -> Result<(u64, u64, u64), nix::errno::Errno> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes two data structs into the array we own.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// All five capability sets, as masks (an OCI process's `capabilities`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sets {
    /// The bounding set.
    pub bounding: u64,
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Ambient.
    pub ambient: u64,
}

/// The names of linux/capability.h up to `CAP_CHECKPOINT_RESTORE`, at
/// their numbers.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability by its name (`CAP_NET_ADMIN`), for the
/// capabilities of linux/capability.h up to `CAP_CHECKPOINT_RESTORE`.
pub fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// The name of capability `n`, the inverse of [`number`].
pub fn name(n: u32) -> Option<&'static str> {
    NAMES.get(n as usize).copied()
}

/// Drops every capability outside `bounding` from the bounding set (the
/// first half of [`apply_sets`], made while the process is still root:
/// it needs `CAP_SETPCAP`). System calls only.
pub fn drop_bounding(bounding: u64, last_cap: u32) -> Result<(), nix::errno::Errno> {
    for cap in 0..=last_cap.min(63) {
        if bounding & (1 << cap) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
                return Err(nix::errno::Errno::last());
            }
        }
    }
    Ok(())
}

/// The ambient capabilities of `s` the kernel lets a process raise: those
/// also permitted and inheritable. The rest are skipped, not refused, as
/// runc skips them (`runc spec`'s own default asks for ambient
/// capabilities without inheritable ones).
pub fn raisable(s: &Sets) -> u64 {
    s.ambient & s.permitted & s.inheritable
}

/// Sets the effective, permitted and inheritable sets of `s` and raises
/// its ambient ones (the second half, after the user change, which the
/// caller made with `PR_SET_KEEPCAPS` so the permitted set survived).
/// System calls only.
pub fn apply_sets(s: &Sets, last_cap: u32) -> Result<(), nix::errno::Errno> {
    set(s.effective, s.permitted, s.inheritable)?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(nix::errno::Errno::last());
    }
    let raise = raisable(s);
    for cap in 0..=last_cap.min(63) {
        if raise & (1 << cap) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes a capability number only.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(nix::errno::Errno::last());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_permitted_and_inheritable_ambient_caps_are_raised() {
        let s = Sets {
            ambient: 0b1111,
            permitted: 0b0111,
            inheritable: 0b1101,
            ..Default::default()
        };
        assert_eq!(raisable(&s), 0b0101);
    }

    #[test]
    fn names_are_the_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_MKNOD"), Some(27));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert!(DEFAULT.iter().all(|(n, v)| number(n) == Some(*v)));
    }

    #[test]
    fn default_set_is_dockers_without_mknod() {
        let m = default_mask();
        assert_eq!(m.count_ones() as usize, DEFAULT.len());
        assert_eq!(m & (1 << 27), 0, "CAP_MKNOD must not be kept");
        assert_eq!(m & (1 << 21), 0, "CAP_SYS_ADMIN must not be kept");
        assert_ne!(m & (1 << 0), 0);
    }

    #[test]
    fn restrict_in_a_child_leaves_only_the_set() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let last = last_cap();
        // SAFETY: the child only makes system calls and _exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let ok = restrict(default_mask(), last).is_ok()
                    && get().is_ok_and(|(e, p, i)| {
                        e == default_mask() && p == default_mask() && i == default_mask()
                    })
                    // SAFETY: PR_CAPBSET_READ takes a number, no pointers.
                    && unsafe { libc::prctl(libc::PR_CAPBSET_READ, 21, 0, 0, 0) } == 0;
                // SAFETY: ends the child without unwinding into the test harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let st = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
            Err(e) => panic!("fork: {e}"),
        }
    }
}
