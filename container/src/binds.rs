//! Host paths bind-mounted into the box (`-v HOST:BOX[:ro]`), planned in
//! the parent ([`plan`]) and made in the child ([`apply`]) right after the
//! root is assembled, before /proc, /sys and /dev are mounted on top (so a
//! volume can never cover the box's kernel file systems or their masks).
//!
//! The box path is the image's to shape: its `/data` may be a symlink to
//! `/etc`, to `../../..` or to a host path. So it is never resolved as a
//! host path. Each prefix of it is opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the merged root, so every
//! symlink and `..` lands inside the box; a missing directory (or, for a
//! file source, the last component as an empty file) is made with
//! `mkdirat`/`openat(O_EXCL | O_NOFOLLOW)` in the parent found that way.
//! The mount is then made onto the resulting descriptor through
//! `/proc/self/fd/N`, never onto a path the kernel would walk again.
//!
//! Flags: `MS_BIND | MS_REC`, then a remount with `nosuid`, `nodev` (and
//! `ro` for `:ro`) plus whatever the source mount already has that a user
//! namespace would refuse to drop (read from `statvfs` in the parent). The
//! box has no `CAP_SYS_ADMIN` and its seccomp profile denies `mount`, so
//! it cannot remount a read-only volume writable. Mounts above the source
//! (a `MS_REC` bind carries them along) keep their own flags.
//!
//! The child side makes system calls only: every path is a C string made
//! by the parent, and `/proc/self/fd/N` is written into a stack buffer.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode};

use crate::config::Bind;
use crate::cstring as c;

/// One bind mount, ready for the child.
#[derive(Debug, Clone)]
pub struct BindPlan {
    /// The host path.
    pub source: CString,
    /// Each prefix of the box path, relative: `a`, `a/b`, `a/b/c`.
    pub prefixes: Vec<CString>,
    /// Each component of the box path: `a`, `b`, `c`.
    pub names: Vec<CString>,
    /// The source is not a directory: the target is an (empty) file.
    pub file: bool,
    /// The flags of the remount after the bind.
    pub remount: MsFlags,
}

/// The flags a bind of `source` must keep when remounted: those of the
/// mount it is on (a user namespace cannot clear them).
fn locked_flags(source: &std::path::Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(source) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (st_flag, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            m |= ms;
        }
    }
    m
}

/// Plans `binds` (validated by [`Bind::validate`]).
pub fn plan(binds: &[Bind]) -> Vec<BindPlan> {
    binds
        .iter()
        .map(|b| {
            let names: Vec<&str> = b.target.split('/').filter(|p| !p.is_empty()).collect();
            let mut prefixes = Vec::with_capacity(names.len());
            let mut acc = String::new();
            for n in &names {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(n);
                prefixes.push(c(&acc));
            }
            let mut remount = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | locked_flags(&b.source);
            if b.readonly {
                remount |= MsFlags::MS_RDONLY;
            }
            BindPlan {
                source: c(&b.source.to_string_lossy()),
                prefixes,
                names: names.iter().map(|n| c(n)).collect(),
                file: !b.source.is_dir(),
                remount,
            }
        })
        .collect()
}

/// Why [`apply`] failed: the box path resolves to the box's root (an
/// image's symlink such as `/data -> ../..`), or a system call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The target is the box's root.
    OnRoot,
    /// A system call failed.
    Sys(Errno),
}

pub(crate) fn in_root() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// `/proc/self/fd/<fd>` as a C string in `buf` (no allocation).
pub(crate) fn proc_fd_path(fd: i32, buf: &mut [u8; 32]) -> &CStr {
    const HEAD: &[u8] = b"/proc/self/fd/";
    buf[..HEAD.len()].copy_from_slice(HEAD);
    let mut digits = [0u8; 10];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[HEAD.len() + i] = digits[len - 1 - i];
    }
    buf[HEAD.len() + len] = 0;
    // The buffer holds a NUL right after the digits; fd 0 gives "0".
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/-1")
}

/// Opens the box path of `b` inside `root` (`O_PATH`), making what is
/// missing. A component that exists but does not resolve (a dangling
/// symlink) is an error (`EEXIST`), not a guess.
fn resolve(root: &OwnedFd, b: &BindPlan) -> Result<OwnedFd, Errno> {
    resolve_path(root, &b.prefixes, &b.names, b.file)
}

/// Opens the box path whose prefixes and components are given inside
/// `root` (`O_PATH`), making what is missing: directories, and the last
/// component as an empty file when `file`. Child side: system calls only.
pub(crate) fn resolve_path(
    root: &OwnedFd,
    prefixes: &[CString],
    names: &[CString],
    file: bool,
) -> Result<OwnedFd, Errno> {
    struct B<'a> {
        prefixes: &'a [CString],
        names: &'a [CString],
        file: bool,
    }
    let b = B {
        prefixes,
        names,
        file,
    };
    if b.prefixes.is_empty() {
        return Err(Errno::EINVAL);
    }
    let last = b.prefixes.len().saturating_sub(1);
    if let Ok(fd) = openat2(root.as_fd(), b.prefixes[last].as_c_str(), in_root()) {
        return Ok(fd);
    }
    for i in 0..b.prefixes.len() {
        match openat2(root.as_fd(), b.prefixes[i].as_c_str(), in_root()) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = match i {
            0 => None,
            _ => Some(openat2(
                root.as_fd(),
                b.prefixes[i - 1].as_c_str(),
                in_root().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
            )?),
        };
        let pfd = parent.as_ref().map_or(root.as_fd(), |p| p.as_fd());
        if i == last && b.file {
            openat(
                pfd,
                b.names[i].as_c_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
        } else {
            mkdirat(pfd, b.names[i].as_c_str(), Mode::from_bits_truncate(0o755))?;
        }
    }
    openat2(root.as_fd(), b.prefixes[last].as_c_str(), in_root())
}

/// Makes the bind mounts under `merged` (the assembled root, before
/// `pivot_root`), in order. Child side: system calls only. Returns the
/// failing bind's index with why.
pub fn apply(merged: &CStr, binds: &[BindPlan]) -> Result<(), (usize, Failure)> {
    if binds.is_empty() {
        return Ok(());
    }
    let sys = |i: usize| move |e: Errno| (i, Failure::Sys(e));
    let root = nix::fcntl::open(
        merged,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(0))?;
    let root_st = fstat(root.as_fd()).map_err(sys(0))?;
    let none = None::<&CStr>;
    for (i, b) in binds.iter().enumerate() {
        if b.prefixes.is_empty() {
            return Err((i, Failure::OnRoot));
        }
        let target = resolve(&root, b).map_err(sys(i))?;
        let st = fstat(target.as_fd()).map_err(sys(i))?;
        if st.st_dev == root_st.st_dev && st.st_ino == root_st.st_ino {
            return Err((i, Failure::OnRoot));
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir == b.file {
            return Err((
                i,
                Failure::Sys(if is_dir {
                    Errno::EISDIR
                } else {
                    Errno::ENOTDIR
                }),
            ));
        }
        let mut buf = [0u8; 32];
        let at = proc_fd_path(target.as_raw_fd(), &mut buf);
        mount(
            Some(b.source.as_c_str()),
            at,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(sys(i))?;
        drop(target);
        // The same path again lands on the new mount's root.
        let top = resolve(&root, b).map_err(sys(i))?;
        let mut buf = [0u8; 32];
        let at = proc_fd_path(top.as_raw_fd(), &mut buf);
        mount(none, at, none, b.remount, none).map_err(sys(i))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_prefixes_and_flags() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let file = d.path().join("f");
        std::fs::write(&file, b"x")?;
        let p = plan(&[
            Bind {
                source: d.path().into(),
                target: "/a//b/c/".into(),
                readonly: true,
            },
            Bind {
                source: file,
                target: "/etc/x.conf".into(),
                readonly: false,
            },
        ]);
        let s = |v: &[CString]| -> Vec<String> {
            v.iter().map(|c| c.to_string_lossy().into_owned()).collect()
        };
        assert_eq!(s(&p[0].prefixes), ["a", "a/b", "a/b/c"]);
        assert_eq!(s(&p[0].names), ["a", "b", "c"]);
        assert!(!p[0].file && p[1].file);
        assert!(p[0]
            .remount
            .contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(p[1]
            .remount
            .contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND));
        Ok(())
    }

    #[test]
    fn proc_fd_paths_are_spelled_out() {
        let mut b = [0u8; 32];
        assert_eq!(proc_fd_path(0, &mut b), c"/proc/self/fd/0");
        assert_eq!(proc_fd_path(1234, &mut b), c"/proc/self/fd/1234");
        assert_eq!(proc_fd_path(i32::MAX, &mut b), c"/proc/self/fd/2147483647");
    }

    /// The confined resolution without mounting: a symlink to `/etc`, to
    /// `../../..` and to an absolute path all stay inside the root, and
    /// what is missing is made there.
    #[test]
    fn resolution_stays_in_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        let d = tempfile::tempdir()?;
        let root_path = d.path().join("root");
        std::fs::create_dir_all(root_path.join("etc"))?;
        std::os::unix::fs::symlink("/etc", root_path.join("data"))?;
        std::os::unix::fs::symlink("../../..", root_path.join("up"))?;
        std::os::unix::fs::symlink(outside.path(), root_path.join("abs"))?;
        let root = nix::fcntl::open(
            &root_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let one = |target: &str, file: bool| {
            let mut p = plan(&[Bind {
                source: d.path().into(),
                target: target.into(),
                readonly: false,
            }]);
            p[0].file = file;
            resolve(&root, &p[0])
        };
        // /data -> /etc is the box's /etc.
        let fd = one("/data", false)?;
        let st = fstat(fd.as_fd())?;
        let etc = std::fs::metadata(root_path.join("etc"))?;
        assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&etc));
        // Under a symlink that climbs: made inside the root.
        one("/up/made/here", false)?;
        assert!(root_path.join("made/here").is_dir());
        // Under an absolute host path: that path inside the root, which
        // does not exist there (refused, as any dangling link) and then
        // does; the host directory is never used.
        assert!(one("/abs/x", true).is_err());
        let in_root = root_path.join(outside.path().strip_prefix("/")?);
        std::fs::create_dir_all(&in_root)?;
        one("/abs/x", true)?;
        let inside = in_root.join("x");
        assert!(inside.is_file(), "{}", inside.display());
        assert_eq!(std::fs::read_dir(outside.path())?.count(), 0);
        // /up itself is the root.
        let fd = one("/up", false)?;
        let st = fstat(fd.as_fd())?;
        let r = fstat(root.as_fd())?;
        assert_eq!((st.st_dev, st.st_ino), (r.st_dev, r.st_ino));
        // A dangling symlink is refused, not followed or replaced.
        std::os::unix::fs::symlink("/nowhere/at/all", root_path.join("dangling"))?;
        assert!(one("/dangling", false).is_err());
        assert!(std::fs::symlink_metadata(root_path.join("dangling"))?
            .file_type()
            .is_symlink());
        Ok(())
    }
}
