//! The mounts a box gets on top of its rootfs: /proc, /sys, /dev and its
//! sub-mounts, and the paths an OCI runtime masks or makes read-only by
//! default. Planned in the parent as plain data ([`Mount`] with C strings);
//! applied in the child ([`apply`]) with system calls only.

use std::ffi::CString;

use nix::errno::Errno;

use crate::cstring as c;
use nix::mount::{mount, MsFlags};

/// One `mount(2)` call.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Source (`None` for a remount).
    pub source: Option<CString>,
    /// Target, an absolute host path under the new root.
    pub target: CString,
    /// File system type (`None` for binds and remounts).
    pub fstype: Option<CString>,
    /// Flags.
    pub flags: MsFlags,
    /// File-system options.
    pub data: Option<CString>,
    /// A missing target is fine (a masked path this kernel does not have).
    pub optional: bool,
}

/// Paths covered by /dev/null (files) or an empty read-only tmpfs
/// (directories): they leak host information or control.
pub const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only: writes there change the host kernel.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The kernel file systems under `root` (the merged rootfs, before
/// `pivot_root`). `dir_masks` tells which masked paths are directories:
/// that is only known on the host, so the caller asks.
pub fn plan(root: &str, is_dir: &dyn Fn(&str) -> bool) -> Vec<Mount> {
    let at = |p: &str| c(&format!("{root}{p}"));
    let fs = |src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>| Mount {
        source: Some(c(src)),
        target: at(target),
        fstype: Some(c(fstype)),
        flags,
        data: data.map(c),
        optional: false,
    };
    let mut v = vec![
        fs("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        fs(
            "sysfs",
            "/sys",
            "sysfs",
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
            None,
        ),
        fs(
            "tmpfs",
            "/dev",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    ];
    for p in MASKED {
        if is_dir(p) {
            v.push(Mount {
                optional: true,
                ..fs("tmpfs", p, "tmpfs", MsFlags::MS_RDONLY, Some("size=0"))
            });
        } else {
            v.push(Mount {
                source: Some(c("/dev/null")),
                target: at(p),
                fstype: None,
                flags: MsFlags::MS_BIND,
                data: None,
                optional: true,
            });
        }
    }
    for p in READ_ONLY {
        v.push(Mount {
            source: Some(at(p)),
            target: at(p),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
            optional: true,
        });
        v.push(Mount {
            source: None,
            target: at(p),
            fstype: None,
            flags: MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | NOSUID_NODEV_NOEXEC,
            data: None,
            optional: true,
        });
    }
    v
}

/// The mounts inside the new /dev, made after its device nodes.
pub fn dev_plan(root: &str, user_namespace: bool) -> Vec<Mount> {
    let at = |p: &str| c(&format!("{root}{p}"));
    let pts_opts = if user_namespace {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    vec![
        Mount {
            source: Some(c("devpts")),
            target: at("/dev/pts"),
            fstype: Some(c("devpts")),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some(c(pts_opts)),
            optional: false,
        },
        Mount {
            source: Some(c("shm")),
            target: at("/dev/shm"),
            fstype: Some(c("tmpfs")),
            flags: NOSUID_NODEV_NOEXEC,
            data: Some(c("mode=1777,size=65536k")),
            optional: false,
        },
        Mount {
            source: Some(c("mqueue")),
            target: at("/dev/mqueue"),
            fstype: Some(c("mqueue")),
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            optional: true,
        },
    ]
}

/// Makes the mounts, in order (child side: system calls only). Returns the
/// failing mount's index with the error.
pub fn apply(mounts: &[Mount]) -> Result<(), (usize, Errno)> {
    for (i, m) in mounts.iter().enumerate() {
        match mount(
            m.source.as_deref(),
            m.target.as_c_str(),
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) if m.optional => {}
            Err(e) => return Err((i, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_files_with_dev_null_and_dirs_with_tmpfs() {
        let v = plan("/r", &|p| p == "/proc/acpi" || p == "/sys/firmware");
        let find = |t: &str| {
            v.iter()
                .find(|m| m.target.to_str() == Ok(t))
                .unwrap_or_else(|| panic!("{t} planned"))
        };
        assert_eq!(find("/r/proc").fstype.as_deref(), Some(c"proc"));
        assert!(find("/r/sys").flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(find("/r/proc/kcore").source.as_deref(), Some(c"/dev/null"));
        assert_eq!(find("/r/proc/acpi").fstype.as_deref(), Some(c"tmpfs"));
        // Read-only paths: a bind, then a read-only remount that keeps the
        // flags of /proc (a user namespace refuses to drop them).
        let ro: Vec<_> = v
            .iter()
            .filter(|m| m.target.to_str() == Ok("/r/proc/sysrq-trigger"))
            .collect();
        assert_eq!(ro.len(), 2);
        assert!(ro[1]
            .flags
            .contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        // proc, sys and dev come before anything mounted inside them.
        assert_eq!(v[0].target.to_str(), Ok("/r/proc"));
    }
}
