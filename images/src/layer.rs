//! Applies one image layer (a tar stream) onto a rootfs, safely.
//!
//! OCI layer semantics: entries are created in order, replacing what a lower
//! layer left at the same path; `.wh.NAME` deletes `NAME` from lower layers;
//! `.wh..wh..opq` in a directory hides everything lower layers put in it.
//! Regular files, directories, symlinks, hard links and FIFOs are kept with
//! their modes (setuid, sticky included), owners (when running as root) and
//! modification times. Device nodes are skipped with a warning: an image must
//! not be able to hand a workload `/dev/sda`.
//!
//! Every path goes through [`crate::confined::Root`], so `..`, absolute
//! paths and symlinks planted by earlier entries can never make this write
//! outside the rootfs (see that module for the rules).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, futimens, FchmodatFlags, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;

use crate::confined::{self, kind_at, remove_at, Root};

/// Errors of applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The archive cannot be read: truncated, garbage, or a bad header.
    #[error("reading the layer archive: {0}")]
    Archive(#[source] io::Error),
    /// A path in the archive is refused (escapes the root, dangling parent).
    #[error("{0}")]
    Path(#[from] confined::Error),
    /// A file system operation inside the rootfs failed.
    #[error("{op} {path:?}: {errno}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The path inside the rootfs.
        path: PathBuf,
        /// The error the kernel returned.
        errno: Errno,
    },
    /// Writing file data failed.
    #[error("writing {path:?}: {source}")]
    Write {
        /// The path inside the rootfs.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A hard link names a target that is missing or is a directory.
    #[error("hard link {path:?} -> {target:?}: target is missing or a directory")]
    HardLinkTarget {
        /// The link's path.
        path: PathBuf,
        /// The target it names.
        target: PathBuf,
    },
    /// The unpacked image would exceed the size limit (a decompression bomb,
    /// or simply too big).
    #[error("image exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
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

/// How to apply layers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interpret `.wh.` whiteout entries (true for image layers).
    pub whiteouts: bool,
    /// Give files the owners the archive names (needs root).
    pub chown: bool,
    /// Most bytes of file data all layers together may write.
    pub max_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            whiteouts: true,
            chown: nix::unistd::geteuid().is_root(),
            max_bytes: 64 << 30,
        }
    }
}

/// What applying layers did, summed over layers.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Entries created.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries skipped, with the reason (device nodes, unknown types).
    pub warnings: Vec<String>,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// A directory whose mode, owner and time are applied after the layer, so
/// that a read-only directory can still be filled first.
struct DeferredDir {
    rel: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Applies the layer tar read from `reader` onto `root`.
pub fn apply(root: &Root, reader: impl Read, opts: &Options, report: &mut Report) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<DeferredDir> = Vec::new();
    for entry in archive.entries().map_err(Error::Archive)? {
        let mut entry = entry.map_err(Error::Archive)?;
        let raw = entry.path().map_err(Error::Archive)?.into_owned();
        let rel = confined::normalize(&raw)?;
        let header = entry.header();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(Error::Archive)? & 0o7777,
            uid: header.uid().map_err(Error::Archive)?,
            gid: header.gid().map_err(Error::Archive)?,
            mtime: header.mtime().map_err(Error::Archive)?,
        };
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself ("./"): its mode stays ours.
            continue;
        };
        if opts.whiteouts && name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            whiteout(root, &rel, &name, &created)?;
            continue;
        }
        match kind {
            EntryType::Char | EntryType::Block => {
                report
                    .warnings
                    .push(format!("skipped device node {}", raw.display()));
                continue;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Directory
            | EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                report.warnings.push(format!(
                    "skipped {} (unsupported entry type {:?})",
                    raw.display(),
                    other
                ));
                continue;
            }
        }
        let (dir, name) = root.parent(&rel)?;
        match kind {
            EntryType::Directory => {
                if kind_at(&dir, name) != Some(SFlag::S_IFDIR) {
                    remove_at(&dir, name).map_err(sys("remove", &rel))?;
                    mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                        .map_err(sys("mkdir", &rel))?;
                }
                dirs.push(DeferredDir {
                    rel: rel.clone(),
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    mtime: meta.mtime,
                });
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(Error::Archive)?
                    .ok_or_else(|| Error::Archive(io::Error::other("symlink without a target")))?
                    .into_owned();
                remove_at(&dir, name).map_err(sys("remove", &rel))?;
                // The target is stored as text and never followed here.
                symlinkat(target.as_path(), &dir, name).map_err(sys("symlink", &rel))?;
                if opts.chown {
                    fchownat(&dir, name, uid(meta.uid), gid(meta.gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(sys("chown", &rel))?;
                }
                let t = TimeSpec::new(meta.mtime as i64, 0);
                utimensat(&dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(sys("utimes", &rel))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(Error::Archive)?
                    .ok_or_else(|| Error::Archive(io::Error::other("hard link without a target")))?;
                let target = confined::normalize(&target)?;
                hard_link(root, &rel, &dir, name, &target)?;
            }
            EntryType::Fifo => {
                remove_at(&dir, name).map_err(sys("remove", &rel))?;
                mknodat(&dir, name, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(sys("mkfifo", &rel))?;
                if opts.chown {
                    fchownat(&dir, name, uid(meta.uid), gid(meta.gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(sys("chown", &rel))?;
                }
                // The FIFO was just made under this name in a directory only
                // we write to, so following the name reaches it.
                fchmodat(&dir, name, Mode::from_bits_truncate(meta.mode), FchmodatFlags::FollowSymlink)
                    .map_err(sys("chmod", &rel))?;
            }
            _ => {
                remove_at(&dir, name).map_err(sys("remove", &rel))?;
                let fd = openat(
                    &dir,
                    name,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(sys("create", &rel))?;
                let mut file = std::fs::File::from(fd);
                let budget = opts.max_bytes.saturating_sub(report.bytes);
                let n = io::copy(&mut (&mut entry).take(budget.saturating_add(1)), &mut file)
                    .map_err(|source| Error::Write {
                        path: rel.clone(),
                        source,
                    })?;
                if n > budget {
                    return Err(Error::TooLarge {
                        limit: opts.max_bytes,
                    });
                }
                report.bytes += n;
                finish_inode(&file, &rel, &meta, opts.chown)?;
            }
        }
        report.entries += 1;
        created.insert(rel);
    }
    // Deepest first, so that a read-only parent is sealed after its children.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
    for d in dirs {
        let dir = match root.open_dir(&d.rel) {
            Ok(fd) => fd,
            // Replaced later in the layer by something else: nothing to do.
            Err(_) => continue,
        };
        let fd = openat(&dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys("open", &d.rel))?;
        let file = std::fs::File::from(fd);
        let meta = Meta {
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
            mtime: d.mtime,
        };
        finish_inode(&file, &d.rel, &meta, opts.chown)?;
    }
    Ok(())
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

fn uid(id: u64) -> Option<Uid> {
    u32::try_from(id).ok().map(Uid::from_raw)
}

fn gid(id: u64) -> Option<Gid> {
    u32::try_from(id).ok().map(Gid::from_raw)
}

/// Owner first (chown clears setuid bits), then mode, then time.
fn finish_inode(file: &impl AsFd, rel: &Path, meta: &Meta, chown: bool) -> Result<()> {
    if chown {
        fchown(file, uid(meta.uid), gid(meta.gid)).map_err(sys("chown", rel))?;
    }
    fchmod(file, Mode::from_bits_truncate(meta.mode)).map_err(sys("chmod", rel))?;
    let t = TimeSpec::new(meta.mtime as i64, 0);
    futimens(file, &t, &t).map_err(sys("utimes", rel))?;
    Ok(())
}

fn hard_link(root: &Root, rel: &Path, dir: &OwnedFd, name: &OsStr, target: &Path) -> Result<()> {
    let missing = || Error::HardLinkTarget {
        path: rel.to_path_buf(),
        target: target.to_path_buf(),
    };
    if target == rel {
        return Ok(());
    }
    let tname = target.file_name().ok_or_else(missing)?;
    let tdir = root
        .open_dir(target.parent().unwrap_or(Path::new("")))
        .map_err(|_| missing())?;
    match kind_at(&tdir, tname) {
        None | Some(SFlag::S_IFDIR) => return Err(missing()),
        Some(_) => {}
    }
    remove_at(dir, name).map_err(sys("remove", rel))?;
    // Without AT_SYMLINK_FOLLOW, a symlink target is linked as the symlink
    // itself: nothing outside the root is reached.
    linkat(&tdir, tname, dir, name, AtFlags::empty()).map_err(sys("link", rel))?;
    Ok(())
}

/// Applies a whiteout entry `rel` (whose last component is `name`).
fn whiteout(root: &Root, rel: &Path, name: &OsStr, created: &HashSet<PathBuf>) -> Result<()> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = match root.open_dir(parent) {
        Ok(d) => d,
        // Whiting out inside a directory no lower layer made: nothing to hide.
        Err(confined::Error::Sys {
            errno: Errno::ENOENT,
            ..
        }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if name.as_bytes() == OPAQUE {
        let keep = |child: &OsStr| created.contains(&parent.join(child));
        confined::empty_dir_except(&dir, &keep).map_err(sys("opaque whiteout", rel))?;
    } else {
        let hidden = OsStr::from_bytes(&name.as_bytes()[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(confined::Error::Invalid(rel.to_path_buf()).into());
        }
        if !created.contains(&parent.join(hidden)) {
            remove_at(&dir, hidden).map_err(sys("whiteout", rel))?;
        }
    }
    Ok(())
}
