//! Copying files and trees between the host and a box's root (`twinbox
//! cp`), with every box path resolved inside the box.
//!
//! The box's root is a directory descriptor (a running container's
//! `/proc/<pid>/root`, opened once). A box path's parent is opened from it
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! ([`twinbox_images::confined::Root`]), so a symlink in the box such as
//! `/x -> /etc` or `/x -> ../../..` is followed as the box would follow
//! it, never on the host. From there the copy is `twinbox_agent::copy`'s
//! walk into its `FsSink`, the code a VM box's copies run too (in the
//! guest, and on the host for what the guest sends): `*at` calls on
//! single names with `O_NOFOLLOW`, so a symlink is copied as a symlink,
//! never written through; a file is created with `O_CREAT | O_EXCL` after
//! whatever was at its name is unlinked; FIFOs, sockets and devices are
//! refused (skipped inside a tree); kernel file systems are not entered.
//!
//! Modes and times (access, modification) are kept. Files written into
//! the box belong to the box's root user (its uid 0 as the host sees it,
//! Docker's default); files written to the host belong to the caller, with
//! set-user-id and set-group-id bits dropped, so a box cannot hand the
//! host a set-uid-root program.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use twinbox_agent::copy::{self as tree, At, FsSink, Policy};
use twinbox_images::confined::{self, Root};

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A box path is malformed or escapes with `..`.
    #[error(transparent)]
    Confined(#[from] confined::Error),
    /// The copy itself.
    #[error(transparent)]
    Copy(#[from] tree::Error),
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |errno| {
        Error::Copy(tree::Error::Sys {
            op,
            path: path.to_path_buf(),
            errno,
        })
    }
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
    let mut sink = FsSink::new(dst, dst_path, *policy);
    tree::walk(src, src_path, &mut sink)?;
    Ok(())
}

/// A host path's parent directory, opened (host symlinks followed: the
/// path is the caller's), and its last component. `/` has no parent.
pub fn host_parent(path: &Path) -> Result<(OwnedFd, OsString), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| tree::Error::NotFound(path.to_path_buf()))?
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
        Errno::ENOENT => tree::Error::NotFound(parent.to_path_buf()).into(),
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

/// The host directory a `SRC/.` names (host symlinks followed).
pub fn host_contents_dir(path: &Path) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => tree::Error::NotFound(path.to_path_buf()).into(),
        Errno::ENOTDIR => tree::Error::NotADirectory(path.to_path_buf()).into(),
        e => sys("opening", path)(e),
    })
}

/// The box directory a `BOX:PATH/.` names, every symlink followed inside
/// the box; `shown` names it in messages.
pub fn box_contents_dir(root: &Root, path: &str, shown: &Path) -> Result<OwnedFd, Error> {
    let rel = confined::normalize(Path::new(path))?;
    root.open_dir(&rel).map_err(|e| match e {
        confined::Error::NotADirectory(_) => tree::Error::NotADirectory(shown.to_path_buf()).into(),
        confined::Error::Sys {
            errno: Errno::ENOENT,
            ..
        } => tree::Error::NotFound(shown.to_path_buf()).into(),
        e => e.into(),
    })
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
    use std::ffi::OsStr;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

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
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        assert_eq!(st.st_ino, std::fs::metadata(root_path.join("etc"))?.ino());
        Ok(())
    }
}
