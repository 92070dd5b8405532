//! Copying files and trees between the host and a box's root (`twinbox
//! cp`), with every box path resolved inside the box.
//!
//! The box's root is a directory descriptor (a running container's
//! `/proc/<pid>/root`, opened once). A box path's parent is opened from it
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! ([`twinbox_images::confined::Root`]), so a symlink in the box such as
//! `/x -> /etc` or `/x -> ../../..` is followed as the box would follow
//! it, never on the host. Below that, everything is done with `*at` calls
//! on single names and `O_NOFOLLOW`: a symlink is copied as a symlink,
//! never written through; a file is created with `O_CREAT | O_EXCL` after
//! whatever was at its name is unlinked.
//!
//! Sources are opened `O_PATH` first and checked: a FIFO, socket or device
//! named directly is refused (reading one could block or touch a driver);
//! one met inside a directory is skipped with a warning. Directories are
//! read entry by entry and files streamed, so a huge tree costs memory for
//! its depth only (at most [`MAX_DEPTH`] levels). Kernel file systems (the
//! box's /proc, /sys, /dev/pts, cgroups, mqueue) are not entered.
//!
//! Modes and times (access, modification) are kept. Files written into
//! the box belong to the box's root user (its uid 0 as the host sees it,
//! Docker's default); files written to the host belong to the caller, with
//! set-user-id and set-group-id bits dropped, so a box cannot hand the
//! host a set-uid-root program.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};
use twinbox_images::confined::{self, Root};

/// Deepest directory nesting copied.
pub const MAX_DEPTH: usize = 256;

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A box path is malformed or escapes with `..`.
    #[error(transparent)]
    Confined(#[from] confined::Error),
    /// A system call failed on a path.
    #[error("{op} {}: {}", path.display(), errno.desc())]
    Sys {
        /// What was being done.
        op: &'static str,
        /// On what (a box path or a host path).
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// Reading or writing a file's bytes failed.
    #[error("copying {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source is not a file, directory or symlink.
    #[error("{path}: is a {1}; only files, directories and symlinks are copied", path = .0.display())]
    Special(PathBuf, &'static str),
    /// The source does not exist.
    #[error("{path}: no such file or directory", path = .0.display())]
    NotFound(PathBuf),
    /// A directory would replace a file, or a file a directory.
    #[error("{path}: cannot copy a {1} onto a {2}", path = .0.display())]
    Mismatch(PathBuf, &'static str, &'static str),
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("{path}: deeper than {MAX_DEPTH} directories", path = .0.display())]
    TooDeep(PathBuf),
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |errno| Error::Sys {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

/// What one copy does with what it writes.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Give every written entry this owner (uid, gid).
    pub owner: Option<(u32, u32)>,
    /// Keep only these mode bits (`0o7777`, or `0o1777` to drop set-id).
    pub mode_mask: u32,
}

/// A place in a directory: the directory and a name in it.
#[derive(Debug)]
pub struct At<'a> {
    /// The directory.
    pub dir: BorrowedFd<'a>,
    /// The name.
    pub name: &'a OsStr,
}

fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "special file",
    }
}

fn lstat_at(at: &At<'_>, path: &Path) -> Result<Option<FileStat>, Error> {
    match fstatat(at.dir, at.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(sys("stat", path)(e)),
    }
}

/// What a source is, without following it: refuses what cannot be copied.
pub fn check_source(at: &At<'_>, path: &Path) -> Result<FileStat, Error> {
    let st = lstat_at(at, path)?.ok_or_else(|| Error::NotFound(path.to_path_buf()))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK => Ok(st),
        m => Err(Error::Special(path.to_path_buf(), kind_name(m))),
    }
}

/// Whether an existing destination `dst` is a directory (following
/// nothing): `None` if nothing is there.
pub fn dest_kind(at: &At<'_>, path: &Path) -> Result<Option<bool>, Error> {
    Ok(lstat_at(at, path)?.map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

/// Copies `src` to `dst` (a new name, or an existing file replaced, or an
/// existing directory merged into). `src_path` and `dst_path` name them
/// in messages.
pub fn copy(
    src: &At<'_>,
    src_path: &Path,
    dst: &At<'_>,
    dst_path: &Path,
    policy: &Policy,
) -> Result<(), Error> {
    let st = check_source(src, src_path)?;
    let mut c = Copier {
        policy: *policy,
        src_path: src_path.to_path_buf(),
        dst_path: dst_path.to_path_buf(),
    };
    c.entry(src, dst, &st, 0, true)
}

struct Copier {
    policy: Policy,
    src_path: PathBuf,
    dst_path: PathBuf,
}

/// File systems whose files are the kernel's, not the box's.
fn is_kernel_fs(fd: BorrowedFd<'_>) -> bool {
    const KERNEL: [i64; 9] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x1cd1,      // devpts
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x1980_0202, // mqueue
        0x7372_6573, // securityfs
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
    ];
    // SAFETY: fstatfs fills the struct we pass for a descriptor we hold.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) } != 0 {
        return false;
    }
    KERNEL.contains(&(s.f_type as i64))
}

impl Copier {
    fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
        (
            TimeSpec::new(st.st_atime, st.st_atime_nsec),
            TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        )
    }

    fn mode(&self, st: &FileStat) -> Mode {
        Mode::from_bits_truncate((st.st_mode & self.policy.mode_mask) as libc::mode_t)
    }

    fn chown(&self, fd: BorrowedFd<'_>) -> Result<(), Error> {
        if let Some((u, g)) = self.policy.owner {
            nix::unistd::fchown(fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                .map_err(sys("chown", &self.dst_path))?;
        }
        Ok(())
    }

    /// Unlinks a non-directory at `dst`; a directory there is an error.
    fn clear(&self, dst: &At<'_>, what: &'static str) -> Result<(), Error> {
        match dest_kind(dst, &self.dst_path)? {
            None => Ok(()),
            Some(true) => Err(Error::Mismatch(self.dst_path.clone(), what, "directory")),
            Some(false) => unlinkat(dst.dir, dst.name, UnlinkatFlags::NoRemoveDir)
                .map_err(sys("removing", &self.dst_path)),
        }
    }

    fn entry(
        &mut self,
        src: &At<'_>,
        dst: &At<'_>,
        st: &FileStat,
        depth: usize,
        top: bool,
    ) -> Result<(), Error> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => self.file(src, dst, st),
            libc::S_IFDIR => self.dir(src, dst, st, depth),
            libc::S_IFLNK => self.symlink(src, dst, st),
            m if top => Err(Error::Special(self.src_path.clone(), kind_name(m))),
            m => {
                eprintln!(
                    "twinbox: cp: skipping {} (a {})",
                    self.src_path.display(),
                    kind_name(m)
                );
                Ok(())
            }
        }
    }

    fn file(&mut self, src: &At<'_>, dst: &At<'_>, st: &FileStat) -> Result<(), Error> {
        // O_PATH first: nothing is opened for reading until it is known to
        // be the regular file that was listed (a FIFO swapped in would
        // block, a device would reach its driver).
        let p = openat(
            src.dir,
            src.name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", &self.src_path))?;
        let now = fstat(p.as_fd()).map_err(sys("stat", &self.src_path))?;
        if now.st_mode & libc::S_IFMT != libc::S_IFREG || now.st_ino != st.st_ino {
            return Err(Error::Special(self.src_path.clone(), "file that changed"));
        }
        let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
        let input = std::fs::OpenOptions::new()
            .read(true)
            .open(&reopen)
            .map_err(|source| Error::Io {
                path: self.src_path.clone(),
                source,
            })?;
        drop(p);
        self.clear(dst, "file")?;
        let out = openat(
            dst.dir,
            dst.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(sys("creating", &self.dst_path))?;
        let mut out = std::fs::File::from(out);
        let mut input = input;
        std::io::copy(&mut input, &mut out).map_err(|source| Error::Io {
            path: self.src_path.clone(),
            source,
        })?;
        self.chown(out.as_fd())?;
        nix::sys::stat::fchmod(out.as_fd(), self.mode(st)).map_err(sys("chmod", &self.dst_path))?;
        let (a, m) = Self::times(st);
        nix::sys::stat::futimens(out.as_fd(), &a, &m).map_err(sys("setting times", &self.dst_path))
    }

    fn symlink(&mut self, src: &At<'_>, dst: &At<'_>, st: &FileStat) -> Result<(), Error> {
        let target =
            nix::fcntl::readlinkat(src.dir, src.name).map_err(sys("reading", &self.src_path))?;
        self.clear(dst, "symlink")?;
        nix::unistd::symlinkat(target.as_os_str(), dst.dir, dst.name)
            .map_err(sys("creating", &self.dst_path))?;
        if let Some((u, g)) = self.policy.owner {
            nix::unistd::fchownat(
                dst.dir,
                dst.name,
                Some(Uid::from_raw(u)),
                Some(Gid::from_raw(g)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown", &self.dst_path))?;
        }
        let (a, m) = Self::times(st);
        nix::sys::stat::utimensat(dst.dir, dst.name, &a, &m, UtimensatFlags::NoFollowSymlink)
            .map_err(sys("setting times", &self.dst_path))
    }

    fn dir(
        &mut self,
        src: &At<'_>,
        dst: &At<'_>,
        st: &FileStat,
        depth: usize,
    ) -> Result<(), Error> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep(self.src_path.clone()));
        }
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let sfd = openat(src.dir, src.name, OFlag::O_PATH | dir_flags, Mode::empty())
            .map_err(sys("opening", &self.src_path))?;
        if depth > 0 && is_kernel_fs(sfd.as_fd()) {
            return Ok(());
        }
        match dest_kind(dst, &self.dst_path)? {
            Some(true) => {}
            Some(false) => return Err(Error::Mismatch(self.dst_path.clone(), "directory", "file")),
            None => mkdirat(dst.dir, dst.name, Mode::from_bits_truncate(0o700))
                .map_err(sys("creating", &self.dst_path))?,
        }
        let dfd = openat(
            dst.dir,
            dst.name,
            OFlag::O_RDONLY | dir_flags,
            Mode::empty(),
        )
        .map_err(sys("opening", &self.dst_path))?;
        let listing = openat(sfd.as_fd(), ".", OFlag::O_RDONLY | dir_flags, Mode::empty())
            .map_err(sys("opening", &self.src_path))?;
        let mut d = nix::dir::Dir::from_fd(listing).map_err(sys("listing", &self.src_path))?;
        for e in d.iter() {
            let e = e.map_err(sys("listing", &self.src_path))?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let name: OsString = name.to_os_string();
            self.src_path.push(&name);
            self.dst_path.push(&name);
            let s = At {
                dir: sfd.as_fd(),
                name: &name,
            };
            let t = At {
                dir: dfd.as_fd(),
                name: &name,
            };
            let r = match lstat_at(&s, &self.src_path) {
                // Gone since it was listed: a live box changes its files.
                Ok(None) => Ok(()),
                Ok(Some(cst)) => self.entry(&s, &t, &cst, depth + 1, false),
                Err(e) => Err(e),
            };
            self.src_path.pop();
            self.dst_path.pop();
            r?;
        }
        self.chown(dfd.as_fd())?;
        nix::sys::stat::fchmod(dfd.as_fd(), self.mode(st)).map_err(sys("chmod", &self.dst_path))?;
        let (a, m) = Self::times(st);
        nix::sys::stat::futimens(dfd.as_fd(), &a, &m).map_err(sys("setting times", &self.dst_path))
    }
}

/// A host path's parent directory, opened (host symlinks followed: the
/// path is the caller's), and its last component. `/` has no parent.
pub fn host_parent(path: &Path) -> Result<(OwnedFd, OsString), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::NotFound(path.to_path_buf()))?
        .to_os_string();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fd = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => Error::NotFound(parent.to_path_buf()),
        e => sys("opening", parent)(e),
    })?;
    Ok((fd, name))
}

/// Opens a host directory (following host symlinks), if it is one.
pub fn host_dir(path: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// A box path as the root takes it (leading `/` dropped, `..` refused),
/// and its parent directory opened inside `root` (symlinks followed in
/// the box) with its last component. The root itself has no name: `None`.
pub fn box_parent(root: &Root, path: &str) -> Result<Option<(OwnedFd, OsString)>, Error> {
    let rel = confined::normalize(Path::new(path))?;
    let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
        return Ok(None);
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    let fd = root.open_dir(parent)?;
    Ok(Some((fd, name)))
}

/// Opens a box path as a directory inside `root`, if it is one (every
/// symlink, the last one too, followed inside the box).
pub fn box_dir(root: &Root, path: &str) -> Result<Option<OwnedFd>, Error> {
    let rel = confined::normalize(Path::new(path))?;
    match root.open_dir(&rel) {
        Ok(fd) => Ok(Some(fd)),
        Err(confined::Error::NotADirectory(_))
        | Err(confined::Error::Sys {
            errno: Errno::ENOENT,
            ..
        }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type R = Result<(), Box<dyn std::error::Error>>;

    fn at<'a>(fd: &'a OwnedFd, name: &'a OsStr) -> At<'a> {
        At {
            dir: fd.as_fd(),
            name,
        }
    }

    const KEEP: Policy = Policy {
        owner: None,
        mode_mask: 0o7777,
    };

    #[test]
    fn copies_a_tree_with_modes_times_and_symlinks() -> R {
        let d = tempfile::tempdir()?;
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("a/b"))?;
        std::fs::write(src.join("a/b/f"), b"hello")?;
        std::fs::set_permissions(src.join("a/b/f"), std::fs::Permissions::from_mode(0o4751))?;
        std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o710))?;
        std::os::unix::fs::symlink("/etc/passwd", src.join("link"))?;
        let old = TimeSpec::new(1_000_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join("a/b/f"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )?;
        let top = host_dir(d.path()).ok_or("dir")?;
        let policy = Policy {
            owner: None,
            mode_mask: 0o1777,
        };
        copy(
            &at(&top, OsStr::new("src")),
            &src,
            &at(&top, OsStr::new("dst")),
            &d.path().join("dst"),
            &policy,
        )?;
        let dst = d.path().join("dst");
        assert_eq!(std::fs::read(dst.join("a/b/f"))?, b"hello");
        let m = std::fs::metadata(dst.join("a/b/f"))?;
        assert_eq!(m.mode() & 0o7777, 0o751, "set-uid dropped, the rest kept");
        assert_eq!(m.mtime(), 1_000_000_000);
        assert_eq!(std::fs::metadata(dst.join("a"))?.mode() & 0o7777, 0o710);
        assert_eq!(
            std::fs::read_link(dst.join("link"))?,
            Path::new("/etc/passwd")
        );
        // Again, onto what is there: files replaced, directories merged.
        std::fs::write(src.join("a/b/f"), b"again")?;
        copy(
            &at(&top, OsStr::new("src")),
            &src,
            &at(&top, OsStr::new("dst")),
            &dst,
            &KEEP,
        )?;
        assert_eq!(std::fs::read(dst.join("a/b/f"))?, b"again");
        Ok(())
    }

    #[test]
    fn refuses_fifos_and_a_directory_onto_a_file() -> R {
        let d = tempfile::tempdir()?;
        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o644))?;
        std::fs::create_dir(d.path().join("dir"))?;
        nix::unistd::mkfifo(&d.path().join("dir/fifo"), Mode::from_bits_truncate(0o644))?;
        std::fs::write(d.path().join("file"), b"x")?;
        let top = host_dir(d.path()).ok_or("dir")?;
        let e = copy(
            &at(&top, OsStr::new("fifo")),
            Path::new("fifo"),
            &at(&top, OsStr::new("out")),
            Path::new("out"),
            &KEEP,
        )
        .expect_err("a fifo");
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(!d.path().join("out").exists());
        // Inside a directory it is skipped, and the rest copied.
        copy(
            &at(&top, OsStr::new("dir")),
            Path::new("dir"),
            &at(&top, OsStr::new("dir2")),
            Path::new("dir2"),
            &KEEP,
        )?;
        assert!(d.path().join("dir2").is_dir());
        assert!(!d.path().join("dir2/fifo").exists());
        let e = copy(
            &at(&top, OsStr::new("dir")),
            Path::new("dir"),
            &at(&top, OsStr::new("file")),
            Path::new("file"),
            &KEEP,
        )
        .expect_err("dir onto file");
        assert!(matches!(e, Error::Mismatch(..)), "{e}");
        Ok(())
    }

    #[test]
    fn box_paths_stay_in_the_root() -> R {
        let d = tempfile::tempdir()?;
        let root_path = d.path().join("root");
        std::fs::create_dir_all(root_path.join("etc"))?;
        std::fs::write(root_path.join("etc/hostname"), b"inside")?;
        std::os::unix::fs::symlink("/etc", root_path.join("x"))?;
        std::os::unix::fs::symlink("../../..", root_path.join("up"))?;
        let root = Root::open(&root_path)?;
        for p in ["/x/hostname", "/up/etc/hostname", "up/up/x/hostname"] {
            let (fd, name) = box_parent(&root, p)?.ok_or("a name")?;
            let out = host_dir(d.path()).ok_or("dir")?;
            copy(
                &at(&fd, &name),
                Path::new(p),
                &at(&out, OsStr::new("got")),
                Path::new("got"),
                &KEEP,
            )?;
            assert_eq!(std::fs::read(d.path().join("got"))?, b"inside", "{p}");
        }
        assert!(box_parent(&root, "/a/../../etc/passwd").is_err());
        assert!(box_parent(&root, "/")?.is_none());
        let fd = box_dir(&root, "/x")?.ok_or("x is a dir in the box")?;
        let st = fstat(fd.as_fd())?;
        assert_eq!(st.st_ino, std::fs::metadata(root_path.join("etc"))?.ino());
        Ok(())
    }
}
