//! A bundle's mounts, masked and read-only paths and sysctls: planned in
//! the parent as C strings, made in the child before `pivot_root` with
//! system calls only. Every destination is resolved inside the root with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, what is missing made
//! there ([`crate::binds::resolve_path`]), and the mount made onto
//! `/proc/self/fd/N` of the resolved descriptor, so an image's symlink
//! never leads a mount out of the root.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode};

use crate::binds::{in_root, proc_fd_path, resolve_path};
use crate::cstring as c;

/// What a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A bind of a host path (`MS_REC` with `rbind`).
    Bind {
        /// `rbind`: with the mounts below the source.
        recursive: bool,
    },
    /// A file system of this type (proc, tmpfs, devpts, mqueue, sysfs...).
    Fs(String),
    /// `cgroup`: a tmpfs holding a bind of the box's own group in each
    /// hierarchy (v1), or a `cgroup2` mount (v2).
    Cgroup,
}

/// One mount of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where, in the box: absolute, without `.` or `..`.
    pub destination: String,
    /// What.
    pub kind: MountKind,
    /// The source (a host path for a bind).
    pub source: String,
    /// Flags (`MS_RDONLY`, `MS_NOSUID`, ...; not `MS_BIND`).
    pub flags: MsFlags,
    /// Propagation to set afterwards (`MS_PRIVATE | MS_REC`, ...), or empty.
    pub propagation: MsFlags,
    /// File-system options (`mode=755,size=65536k`).
    pub data: String,
}

/// A path in the box as the child resolves it.
#[derive(Debug, Clone)]
pub(crate) struct BoxPath {
    pub prefixes: Vec<CString>,
    pub names: Vec<CString>,
}

impl BoxPath {
    pub(crate) fn new(path: &str) -> Self {
        let names: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let mut prefixes = Vec::new();
        let mut acc = String::new();
        for n in &names {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(n);
            prefixes.push(c(&acc));
        }
        Self {
            prefixes,
            names: names.iter().map(|n| c(n)).collect(),
        }
    }

    fn last(&self) -> Option<&CStr> {
        self.prefixes.last().map(|p| p.as_c_str())
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Bind {
        source: CString,
        recursive: bool,
        remount: Option<MsFlags>,
    },
    Fs {
        source: CString,
        fstype: CString,
        data: Option<CString>,
    },
    CgroupV1 {
        subdirs: Vec<(CString, CString)>,
    },
}

/// One mount, ready for the child.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub at: BoxPath,
    pub file: bool,
    pub step: Step,
    pub flags: MsFlags,
    pub propagation: MsFlags,
}

/// Plans `mounts`; `cgroups` are (hierarchy name, the box's group there).
pub(crate) fn plan(
    mounts: &[Mount],
    cgroups: &[(String, std::path::PathBuf)],
    v2: bool,
) -> Vec<Planned> {
    mounts
        .iter()
        .map(|m| {
            let at = BoxPath::new(&m.destination);
            let data = (!m.data.is_empty()).then(|| c(&m.data));
            let (file, step) = match &m.kind {
                MountKind::Bind { recursive } => {
                    let extra = m.flags
                        & (MsFlags::MS_RDONLY
                            | MsFlags::MS_NOSUID
                            | MsFlags::MS_NODEV
                            | MsFlags::MS_NOEXEC
                            | MsFlags::MS_NOATIME
                            | MsFlags::MS_RELATIME
                            | MsFlags::MS_STRICTATIME);
                    (
                        !std::path::Path::new(&m.source).is_dir(),
                        Step::Bind {
                            source: c(&m.source),
                            recursive: *recursive,
                            remount: (!extra.is_empty())
                                .then_some(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra),
                        },
                    )
                }
                MountKind::Fs(t) => (
                    false,
                    Step::Fs {
                        source: c(&m.source),
                        fstype: c(t),
                        data,
                    },
                ),
                MountKind::Cgroup if v2 => (
                    false,
                    Step::Fs {
                        source: c("cgroup2"),
                        fstype: c("cgroup2"),
                        data: None,
                    },
                ),
                MountKind::Cgroup => (
                    false,
                    Step::CgroupV1 {
                        subdirs: cgroups
                            .iter()
                            .map(|(n, d)| (c(n), c(&d.to_string_lossy())))
                            .collect(),
                    },
                ),
            };
            Planned {
                at,
                file,
                step,
                flags: m.flags,
                propagation: m.propagation,
            }
        })
        .collect()
}

fn none() -> Option<&'static CStr> {
    None
}

/// Mounts onto the descriptor `fd` (through /proc/self/fd).
fn mount_at(
    source: Option<&CStr>,
    fd: &OwnedFd,
    fstype: Option<&CStr>,
    flags: MsFlags,
    data: Option<&CStr>,
) -> Result<(), Errno> {
    let mut buf = [0u8; 32];
    let at = proc_fd_path(fd.as_raw_fd(), &mut buf);
    mount(source, at, fstype, flags, data)
}

/// Makes the planned mounts under `root` (an `O_PATH` descriptor of the
/// bound root). Returns the failing mount's index with the error.
pub(crate) fn apply(root: &OwnedFd, mounts: &[Planned]) -> Result<(), (usize, Errno)> {
    for (i, m) in mounts.iter().enumerate() {
        apply_one(root, m).map_err(|e| (i, e))?;
    }
    Ok(())
}

fn apply_one(root: &OwnedFd, m: &Planned) -> Result<(), Errno> {
    let target = resolve_path(root, &m.at.prefixes, &m.at.names, m.file)?;
    match &m.step {
        Step::Bind {
            source,
            recursive,
            remount,
        } => {
            let mut f = MsFlags::MS_BIND;
            if *recursive {
                f |= MsFlags::MS_REC;
            }
            mount_at(Some(source), &target, None, f, none())?;
            if let Some(r) = remount {
                let top = resolve_path(root, &m.at.prefixes, &m.at.names, m.file)?;
                mount_at(None, &top, None, *r, none())?;
            }
        }
        Step::Fs {
            source,
            fstype,
            data,
        } => mount_at(
            Some(source),
            &target,
            Some(fstype),
            m.flags,
            data.as_deref(),
        )?,
        Step::CgroupV1 { subdirs } => {
            let rw = m.flags & !MsFlags::MS_RDONLY;
            mount_at(
                Some(c"tmpfs"),
                &target,
                Some(c"tmpfs"),
                rw,
                Some(c"mode=755"),
            )?;
            let top = resolve_path(root, &m.at.prefixes, &m.at.names, false)?;
            for (name, host) in subdirs {
                mkdirat(
                    top.as_fd(),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o755),
                )?;
                let sub = openat(
                    top.as_fd(),
                    name.as_c_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                mount_at(
                    Some(host),
                    &sub,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none(),
                )?;
                let sub = openat(
                    top.as_fd(),
                    name.as_c_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                mount_at(
                    None,
                    &sub,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | m.flags,
                    none(),
                )?;
            }
            if m.flags.contains(MsFlags::MS_RDONLY) {
                mount_at(None, &top, None, MsFlags::MS_REMOUNT | m.flags, none())?;
            }
        }
    }
    if !m.propagation.is_empty() {
        let top = resolve_path(root, &m.at.prefixes, &m.at.names, m.file)?;
        mount_at(None, &top, None, m.propagation, none())?;
    }
    Ok(())
}

/// Opens a box path that must exist (`None` if it does not).
fn existing(root: &OwnedFd, p: &BoxPath) -> Result<Option<OwnedFd>, Errno> {
    let Some(last) = p.last() else {
        return Ok(None);
    };
    match openat2(root.as_fd(), last, in_root()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Covers each masked path (a directory with an empty read-only tmpfs, a
/// file with /dev/null) and makes each read-only path so; paths this
/// kernel does not have are skipped.
pub(crate) fn mask(root: &OwnedFd, masked: &[BoxPath], readonly: &[BoxPath]) -> Result<(), Errno> {
    for p in readonly {
        let Some(fd) = existing(root, p)? else {
            continue;
        };
        let mut buf = [0u8; 32];
        let at = proc_fd_path(fd.as_raw_fd(), &mut buf);
        mount(
            Some(at),
            at,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none(),
        )?;
        let Some(top) = existing(root, p)? else {
            continue;
        };
        mount_at(
            None,
            &top,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            none(),
        )?;
    }
    for p in masked {
        let Some(fd) = existing(root, p)? else {
            continue;
        };
        let st = fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mount_at(
                Some(c"tmpfs"),
                &fd,
                Some(c"tmpfs"),
                MsFlags::MS_RDONLY,
                Some(c"size=0"),
            )?;
        } else {
            mount_at(Some(c"/dev/null"), &fd, None, MsFlags::MS_BIND, none())?;
        }
    }
    Ok(())
}

/// Writes each (file under the box's /proc/sys, value).
pub(crate) fn sysctls(root: &OwnedFd, list: &[(BoxPath, CString)]) -> Result<(), Errno> {
    for (p, value) in list {
        let Some(last) = p.last() else {
            return Err(Errno::EINVAL);
        };
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(root.as_fd(), last, how)?;
        nix::unistd::write(&fd, value.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_binds_filesystems_and_cgroups() {
        let m = |dest: &str, kind, source: &str, flags| Mount {
            destination: dest.into(),
            kind,
            source: source.into(),
            flags,
            propagation: MsFlags::empty(),
            data: String::new(),
        };
        let p = plan(
            &[
                m(
                    "/proc",
                    MountKind::Fs("proc".into()),
                    "proc",
                    MsFlags::MS_NOSUID,
                ),
                m(
                    "/etc/hosts",
                    MountKind::Bind { recursive: true },
                    "/etc/hosts",
                    MsFlags::empty(),
                ),
                m(
                    "/data",
                    MountKind::Bind { recursive: false },
                    "/tmp",
                    MsFlags::MS_RDONLY,
                ),
                m(
                    "/sys/fs/cgroup",
                    MountKind::Cgroup,
                    "cgroup",
                    MsFlags::MS_RDONLY,
                ),
            ],
            &[("memory".into(), "/sys/fs/cgroup/memory/docker/x".into())],
            false,
        );
        assert_eq!(p[0].at.prefixes[0].to_str(), Ok("proc"));
        assert!(matches!(p[1].step, Step::Bind { remount: None, .. }));
        assert!(p[1].file, "a file source makes a file target");
        let Step::Bind {
            remount: Some(r),
            recursive,
            ..
        } = p[2].step
        else {
            panic!("a read-only bind remounts");
        };
        assert!(r.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT) && !recursive);
        assert!(!p[2].file);
        let Step::CgroupV1 { subdirs } = &p[3].step else {
            panic!("a cgroup mount on v1");
        };
        assert_eq!(subdirs[0].0.to_str(), Ok("memory"));
        assert_eq!(
            p[3].at
                .prefixes
                .iter()
                .map(|p| p.to_str().unwrap_or(""))
                .collect::<Vec<_>>(),
            vec!["sys", "sys/fs", "sys/fs/cgroup"]
        );
    }
}
