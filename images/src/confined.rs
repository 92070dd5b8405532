//! A directory used as a root: every path is resolved inside it, never outside.
//!
//! Image layers are hostile input. A layer may hold `evil -> /` and then
//! `evil/etc/passwd`, or `../../x`, or `/abs/path`. Everything that touches a
//! rootfs (the layer applier, the reader of an archive's blobs) goes through
//! [`Root`], which resolves parent directories with `openat2(RESOLVE_IN_ROOT)`:
//! the kernel treats the root as `/`, so symlinks, absolute or relative, and
//! `..` can never climb out of it. The last component of a path is then acted
//! on with the `*at` calls and `O_NOFOLLOW`, so a symlink in last position is
//! replaced or refused, never written through.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Errors of confined path handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path in the input climbs out of the root with `..`.
    #[error("path {0:?} escapes the root with '..'")]
    Escapes(PathBuf),
    /// A path component is not valid (empty name, NUL byte).
    #[error("path {0:?} is not a valid relative path")]
    Invalid(PathBuf),
    /// A path that should be a directory is something else.
    #[error("{0:?} is not a directory")]
    NotADirectory(PathBuf),
    /// A parent path is a symlink that leads nowhere inside the root.
    #[error("{0:?} is a symlink that leads nowhere inside the root")]
    Dangling(PathBuf),
    /// A system call on a path inside the root failed.
    #[error("{op} {path:?}: {errno}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The path inside the root.
        path: PathBuf,
        /// The error the kernel returned.
        errno: Errno,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |errno| Error::Sys {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

/// Turns a path from an archive into a clean relative path.
///
/// A leading `/` and `.` components are dropped (the path is confined to the
/// root, as GNU tar does); a `..` component is refused. The empty result
/// stands for the root itself.
pub fn normalize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => return Err(Error::Invalid(path.to_path_buf())),
            Component::ParentDir => return Err(Error::Escapes(path.to_path_buf())),
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// A directory that paths are confined to.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path` (which must be a directory) as a root.
    pub fn open(path: &Path) -> Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("open root", path))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path of the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn how(flags: OFlag) -> OpenHow {
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    }

    /// Opens the directory `rel` (a normalized path), following symlinks
    /// inside the root only.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd> {
        let target: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        openat2(
            self.fd.as_fd(),
            target,
            Self::how(OFlag::O_PATH | OFlag::O_DIRECTORY),
        )
        .map_err(|e| match e {
            Errno::ENOTDIR => Error::NotADirectory(rel.to_path_buf()),
            e => Error::Sys {
                op: "open directory",
                path: rel.to_path_buf(),
                errno: e,
            },
        })
    }

    /// Opens the regular file `rel` for reading, following symlinks inside
    /// the root only.
    pub fn open_file(&self, rel: &Path) -> Result<std::fs::File> {
        let fd =
            openat2(self.fd.as_fd(), rel, Self::how(OFlag::O_RDONLY)).map_err(sys("open", rel))?;
        Ok(std::fs::File::from(fd))
    }

    /// Makes sure directory `rel` exists (like `mkdir -p` inside the root)
    /// and opens it.
    pub fn ensure_dir(&self, rel: &Path) -> Result<OwnedFd> {
        match self.open_dir(rel) {
            Ok(fd) => Ok(fd),
            Err(Error::Sys {
                errno: Errno::ENOENT,
                ..
            }) => {
                let (parent, name) = split(rel)?;
                let pfd = self.ensure_dir(parent)?;
                match mkdirat(pfd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => self.open_dir(rel),
                    // Something is there but does not resolve to a directory:
                    // a dangling symlink (perhaps to a host path). Refuse
                    // rather than guess where it should lead.
                    Err(Errno::EEXIST) => Err(Error::Dangling(rel.to_path_buf())),
                    Err(e) => Err(sys("mkdir", rel)(e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the parent directory of `rel` (creating it if needed) and
    /// returns it with the last component's name.
    pub fn parent<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let (parent, name) = split(rel)?;
        Ok((self.ensure_dir(parent)?, name))
    }
}

/// Splits a normalized non-empty path into parent and last component.
fn split(rel: &Path) -> Result<(&Path, &OsStr)> {
    let name = rel
        .file_name()
        .ok_or_else(|| Error::Invalid(rel.to_path_buf()))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((parent, name))
}

/// What is at `name` in `dir`, without following a symlink.
pub fn kind_at(dir: &impl AsFd, name: &OsStr) -> Option<SFlag> {
    let st = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    Some(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// Removes `name` in `dir` whatever it is; a directory is removed with all
/// it holds. Never follows a symlink. A missing entry is not an error.
pub fn remove_at(dir: &impl AsFd, name: &OsStr) -> std::result::Result<(), Errno> {
    match kind_at(dir, name) {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            empty_dir_at(dir, name)?;
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
        Some(_) => match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Err(Errno::ENOENT) => Ok(()),
            r => r,
        },
    }
}

/// Removes everything inside directory `name` in `dir`, keeping the
/// directory itself.
pub fn empty_dir_at(dir: &impl AsFd, name: &OsStr) -> std::result::Result<(), Errno> {
    let fd = openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    empty_dir_except(&fd, &|_| false)
}

/// Removes everything inside the open directory `dir` except the entries
/// for which `keep` is true.
pub fn empty_dir_except(
    dir: &impl AsFd,
    keep: &dyn Fn(&OsStr) -> bool,
) -> std::result::Result<(), Errno> {
    for child in list_dir(dir)? {
        if !keep(&child) {
            remove_at(dir, &child)?;
        }
    }
    Ok(())
}

/// The names in an open directory, without `.` and `..`.
fn list_dir(dir: &impl AsFd) -> std::result::Result<Vec<OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    // `dir` may be an O_PATH descriptor, which cannot be read: reopen it.
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn normalize_strips_root_and_dots_and_refuses_dotdot() {
        assert_eq!(
            normalize(Path::new("/etc/passwd")).ok(),
            Some("etc/passwd".into())
        );
        assert_eq!(normalize(Path::new("./a/./b/")).ok(), Some("a/b".into()));
        assert_eq!(normalize(Path::new("./")).ok(), Some(PathBuf::new()));
        assert!(matches!(
            normalize(Path::new("a/../../b")),
            Err(Error::Escapes(_))
        ));
        assert!(matches!(
            normalize(Path::new("../x")),
            Err(Error::Escapes(_))
        ));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        let tmp = tempfile::tempdir()?;
        let root_path = tmp.path().join("root");
        std::fs::create_dir(&root_path)?;
        symlink("/", root_path.join("evil"))?;
        symlink(outside.path(), root_path.join("abs"))?;
        symlink("../../../..", root_path.join("up"))?;
        let root = Root::open(&root_path)?;
        for p in ["evil/x", "up/x"] {
            let (dir, name) = root.parent(Path::new(p))?;
            let f = openat(
                &dir,
                name,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            )?;
            drop(f);
        }
        // Both landed in the root.
        assert!(root_path.join("x").is_file());
        // `abs` points at a host directory's path, which does not exist inside
        // the root: refused, and nothing was written on the host.
        assert!(matches!(
            root.parent(Path::new("abs/x")),
            Err(Error::Dangling(_))
        ));
        assert_eq!(std::fs::read_dir(outside.path())?.count(), 0);
        Ok(())
    }

    #[test]
    fn remove_at_does_not_follow_symlinks() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("keep"), b"x")?;
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir(tmp.path().join("d"))?;
        symlink(outside.path(), tmp.path().join("d/link"))?;
        let root = Root::open(tmp.path())?;
        let top = root.open_dir(Path::new(""))?;
        remove_at(&top, OsStr::new("d"))?;
        assert!(!tmp.path().join("d").exists());
        assert!(outside.path().join("keep").is_file());
        Ok(())
    }
}
