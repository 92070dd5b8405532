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
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;

use crate::confined::{self, kind_at, remove_at, Root};

/// Errors of applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The archive cannot be read: truncated, garbage, or a bad header.
    #[error("malformed or truncated tar archive")]
    Archive(#[source] io::Error),
    /// A path in the archive is refused (escapes the root, dangling parent).
    #[error(transparent)]
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
    #[error("writing {path:?}")]
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
                    chown_at(&dir, name, &rel, &meta)?;
                }
                let t = TimeSpec::new(meta.mtime as i64, 0);
                utimensat(&dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(sys("utimes", &rel))?;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(Error::Archive)?.ok_or_else(|| {
                    Error::Archive(io::Error::other("hard link without a target"))
                })?;
                let target = confined::normalize(&target)?;
                hard_link(root, &rel, &dir, name, &target)?;
            }
            EntryType::Fifo => {
                remove_at(&dir, name).map_err(sys("remove", &rel))?;
                mknodat(
                    &dir,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(sys("mkfifo", &rel))?;
                if opts.chown {
                    chown_at(&dir, name, &rel, &meta)?;
                }
                // The FIFO was just made under this name in a directory only
                // we write to, so following the name reaches it.
                fchmodat(
                    &dir,
                    name,
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(sys("chmod", &rel))?;
            }
            _ => {
                remove_at(&dir, name).map_err(sys("remove", &rel))?;
                let fd = openat(
                    &dir,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
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
        let fd = openat(
            &dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
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

/// Gives `name` in `dir` the archive's owner, without following a symlink.
fn chown_at(dir: &OwnedFd, name: &OsStr, rel: &Path, meta: &Meta) -> Result<()> {
    fchownat(
        dir,
        name,
        uid(meta.uid),
        gid(meta.gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys("chown", rel))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Tar;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn apply_all(root: &Path, layers: &[Vec<u8>]) -> Result<Report> {
        let r = Root::open(root)?;
        let mut report = Report::default();
        for l in layers {
            apply(&r, &l[..], &Options::default(), &mut report)?;
        }
        Ok(report)
    }

    #[test]
    fn files_modes_links_and_order() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let l1 = Tar::new()
            .dir("bin/", 0o755)
            .file("bin/app", 0o4755, b"v1")
            .hardlink("bin/app2", "bin/app")
            .symlink("bin/sh", "/bin/app")
            .dir("ro/", 0o555)
            .file("ro/inside", 0o600, b"x")
            .entry(EntryType::Fifo, "pipe", 0o640, "", b"")
            .finish();
        let l2 = Tar::new().file("bin/app", 0o755, b"v2").finish();
        apply_all(tmp.path(), &[l1, l2])?;
        let p = tmp.path();
        assert_eq!(fs::read(p.join("bin/app"))?, b"v2");
        assert_eq!(
            fs::read(p.join("bin/app2"))?,
            b"v1",
            "hard link kept the first file"
        );
        assert_eq!(fs::read_link(p.join("bin/sh"))?, Path::new("/bin/app"));
        assert_eq!(
            fs::metadata(p.join("bin/app"))?.permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::metadata(p.join("bin/app2"))?.permissions().mode() & 0o7777,
            0o4755
        );
        assert_eq!(fs::metadata(p.join("bin/app2"))?.nlink(), 1);
        assert_eq!(
            fs::metadata(p.join("ro"))?.permissions().mode() & 0o7777,
            0o555
        );
        assert_eq!(fs::read(p.join("ro/inside"))?, b"x");
        assert_eq!(fs::metadata(p.join("bin/app"))?.mtime(), 1_700_000_000);
        assert!(fs::symlink_metadata(p.join("pipe"))?
            .file_type()
            .is_fifo_like());
        Ok(())
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }
    impl FifoLike for fs::FileType {
        fn is_fifo_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_fifo()
        }
    }

    #[test]
    fn whiteouts_and_opaque_dirs() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let l1 = Tar::new()
            .file("a", 0o644, b"a")
            .file("d/old1", 0o644, b"1")
            .file("d/old2", 0o644, b"2")
            .file("e/sub/deep", 0o644, b"3")
            .finish();
        let l2 = Tar::new()
            .file(".wh.a", 0o644, b"")
            .file("d/.wh..wh..opq", 0o644, b"")
            .file("d/new", 0o644, b"n")
            .file(".wh.e", 0o644, b"")
            .finish();
        apply_all(tmp.path(), &[l1, l2])?;
        let p = tmp.path();
        assert!(!p.join("a").exists());
        assert!(!p.join("e").exists());
        let mut names: Vec<_> = fs::read_dir(p.join("d"))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec!["new"]);
        assert!(!p.join(".wh.a").exists());
        Ok(())
    }

    #[test]
    fn hostile_paths_never_leave_the_root() -> TestResult {
        let outside = tempfile::tempdir()?;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        fs::create_dir(&root)?;
        // `..` is refused.
        let l = Tar::new().file("../escape", 0o644, b"x").finish();
        assert!(matches!(
            apply_all(&root, &[l]),
            Err(Error::Path(confined::Error::Escapes(_)))
        ));
        assert!(!tmp.path().join("escape").exists());
        // Absolute paths and symlinks to / are confined.
        let l = Tar::new()
            .file("/abs", 0o644, b"x")
            .symlink("evil", "/")
            .file("evil/x", 0o644, b"x")
            .symlink("rel", "../../../../..")
            .file("rel/y", 0o644, b"y")
            .finish();
        apply_all(&root, &[l])?;
        assert!(root.join("abs").is_file() && root.join("x").is_file() && root.join("y").is_file());
        // A symlink to a host directory, then a write through it: refused
        // (the target does not exist inside the root), host untouched.
        let target = outside.path().to_string_lossy().into_owned();
        let l = Tar::new()
            .symlink("host", &target)
            .file("host/pwn", 0o644, b"x")
            .finish();
        assert!(apply_all(&root, &[l]).is_err());
        assert_eq!(fs::read_dir(outside.path())?.count(), 0);
        // A file entry over a symlink replaces the symlink, not its target.
        fs::write(outside.path().join("victim"), b"safe")?;
        let victim = outside.path().join("victim").to_string_lossy().into_owned();
        let l = Tar::new()
            .symlink("v", &victim)
            .file("v", 0o644, b"pwned")
            .finish();
        apply_all(&root, &[l])?;
        assert_eq!(fs::read(outside.path().join("victim"))?, b"safe");
        assert_eq!(fs::read(root.join("v"))?, b"pwned");
        // A hard link to a host file: resolved inside the root, where it is missing.
        let l = Tar::new().hardlink("shadow", "/etc/passwd").finish();
        assert!(matches!(
            apply_all(&root, &[l]),
            Err(Error::HardLinkTarget { .. })
        ));
        // Device nodes are skipped with a warning.
        let l = Tar::new()
            .entry(EntryType::Char, "dev/mem", 0o600, "", b"")
            .finish();
        let report = apply_all(&root, &[l])?;
        assert!(!root.join("dev/mem").exists());
        assert_eq!(report.warnings.len(), 1);
        Ok(())
    }

    #[test]
    fn size_limit_stops_a_bomb() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let l = Tar::new().file("big", 0o644, &vec![0u8; 4096]).finish();
        let r = Root::open(tmp.path())?;
        let opts = Options {
            max_bytes: 1000,
            ..Options::default()
        };
        let err = apply(&r, &l[..], &opts, &mut Report::default());
        assert!(matches!(err, Err(Error::TooLarge { limit: 1000 })));
        Ok(())
    }

    #[test]
    fn truncated_and_garbage_archives_are_errors() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let l = Tar::new().file("f", 0o644, &vec![7u8; 5000]).finish();
        let r = Root::open(tmp.path())?;
        let err = apply(&r, &l[..1000], &Options::default(), &mut Report::default());
        assert!(
            matches!(err, Err(Error::Archive(_)) | Err(Error::Write { .. })),
            "{err:?}"
        );
        let garbage = vec![0x5au8; 2048];
        let err = apply(
            &r,
            &garbage[..],
            &Options::default(),
            &mut Report::default(),
        );
        assert!(matches!(err, Err(Error::Archive(_))), "{err:?}");
        Ok(())
    }
}
