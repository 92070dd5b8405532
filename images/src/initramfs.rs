//! Packs a rootfs into an initramfs: a newc cpio archive, uncompressed or
//! gzip, cached by content hash, byte-for-byte deterministic.
//!
//! Determinism: entries in [`crate::walk`] order, inode numbers assigned in
//! that order, every mtime 0, gzip with no name and time 0. Hard links are
//! stored as separate copies (nlink 1): simpler for the kernel's unpacker and
//! for us, at the price of size when an image has many.
//!
//! Uncompressed is the default: on a software hypervisor (PVM) the guest
//! kernel's inflate is slow enough to dominate boot (see issue notes), and on
//! hardware KVM it costs more than it saves for images of a few megabytes.
//! The kernel accepts several archives one after another, so a VM can get
//! this cached image plus a small per-run archive (init, workload spec).

use std::fs::File;

use sha2::Digest as _;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors of packing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the rootfs or writing the archive failed.
    #[error("packing {path:?}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is larger than newc can describe (4 GiB).
    #[error("{0:?} is too large for a cpio archive (4 GiB limit)")]
    TooLarge(PathBuf),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Compression of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain newc.
    None,
    /// gzip (fast level).
    Gzip,
}

/// A newc (`070701`) cpio writer.
pub struct Newc<W: Write> {
    w: W,
    ino: u32,
    offset: u64,
}

/// Mode bits of the kinds of entries.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl<W: Write> Newc<W> {
    /// A writer onto `w`.
    pub fn new(w: W) -> Self {
        Self {
            w,
            ino: 0,
            offset: 0,
        }
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.w.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        self.ino += 1;
        let h =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, uid, gid, nlink, 0, size, 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        self.put(h.as_bytes())?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad()
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &[u8], perm: u32, uid: u32, gid: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | (perm & 0o7777), uid, gid, 2, 0, (0, 0))
    }

    /// Adds a regular file of `size` bytes read from `data`.
    pub fn file(
        &mut self,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
        size: u32,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.header(name, S_IFREG | (perm & 0o7777), uid, gid, 1, size, (0, 0))?;
        let n = io::copy(&mut data.take(u64::from(size)), &mut self.w)?;
        if n != u64::from(size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while packing",
            ));
        }
        self.offset += n;
        self.pad()
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, name: &[u8], target: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        self.header(
            name,
            S_IFLNK | 0o777,
            uid,
            gid,
            1,
            target.len() as u32,
            (0, 0),
        )?;
        self.put(target)?;
        self.pad()
    }

    /// Adds a FIFO, socket or device node with the given full mode.
    pub fn node(
        &mut self,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        self.header(name, mode, uid, gid, 1, 0, rdev)
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(b"TRAILER!!!", 0, 0, 0, 1, 0, (0, 0))?;
        Ok(self.w)
    }
}

/// Adds every entry of `root` to `cpio`.
pub fn pack_dir<W: Write>(root: &Path, cpio: &mut Newc<W>) -> Result<()> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    for e in crate::walk::walk(root).map_err(io_err(root))? {
        let name = e.rel.as_os_str().as_bytes();
        let m = &e.meta;
        let r = if let Some(t) = &e.link {
            cpio.symlink(name, t.as_os_str().as_bytes(), m.uid(), m.gid())
        } else if m.is_dir() {
            cpio.dir(name, m.mode(), m.uid(), m.gid())
        } else if m.is_file() {
            let size = u32::try_from(m.len()).map_err(|_| Error::TooLarge(e.rel.clone()))?;
            let path = root.join(&e.rel);
            let mut f = File::open(&path).map_err(io_err(&path))?;
            cpio.file(name, m.mode(), m.uid(), m.gid(), size, &mut f)
        } else {
            let rdev = m.rdev();
            cpio.node(
                name,
                m.mode(),
                m.uid(),
                m.gid(),
                (libc::major(rdev), libc::minor(rdev)),
            )
        };
        r.map_err(io_err(&e.rel))?;
    }
    Ok(())
}

/// Packs `root` into `out`.
pub fn write(root: &Path, compression: Compression, out: impl Write) -> Result<()> {
    let io_err = |source| Error::Io {
        path: root.to_path_buf(),
        source,
    };
    match compression {
        Compression::None => {
            let mut cpio = Newc::new(out);
            pack_dir(root, &mut cpio)?;
            cpio.finish().map_err(io_err)?.flush().map_err(io_err)
        }
        Compression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::fast());
            let mut cpio = Newc::new(gz);
            pack_dir(root, &mut cpio)?;
            cpio.finish()
                .map_err(io_err)?
                .finish()
                .map_err(io_err)?
                .flush()
                .map_err(io_err)
        }
    }
}

/// Packs `root` into the cache and returns the path. The entry is named by
/// `key` when the caller has one that names the rootfs's content (an image
/// id: then the rootfs is not read to find a cached archive), else by the
/// rootfs's content hash.
pub fn build(root: &Path, compression: Compression, key: Option<&str>) -> Result<PathBuf> {
    let io_err = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let stem = match key {
        Some(k) => format!(
            "id-{}",
            &hex::encode(sha2::Sha256::digest(k.as_bytes()))[..32]
        ),
        None => crate::walk::content_hash(root).map_err(|e| io_err(root, e))?[..32].to_string(),
    };
    let ext = match compression {
        Compression::None => "cpio",
        Compression::Gzip => "cpio.gz",
    };
    crate::cache::produce(
        "initramfs",
        &format!("{stem}.{ext}"),
        |tmp| {
            let f = File::create(tmp).map_err(|e| io_err(tmp, e))?;
            write(root, compression, BufWriter::new(f))
        },
        io_err,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn sample() -> std::io::Result<tempfile::TempDir> {
        let t = tempfile::tempdir()?;
        fs::create_dir_all(t.path().join("bin"))?;
        fs::write(t.path().join("bin/app"), b"#!/bin/sh\necho hi\n")?;
        fs::set_permissions(t.path().join("bin/app"), fs::Permissions::from_mode(0o4755))?;
        symlink("app", t.path().join("bin/sh"))?;
        fs::write(t.path().join("odd"), b"123")?;
        Ok(t)
    }

    #[test]
    fn round_trips_through_cpio_and_is_deterministic() -> TestResult {
        let src = sample()?;
        let mut a = Vec::new();
        write(src.path(), Compression::None, &mut a)?;
        // Touching times does not change the bytes.
        let f = fs::File::options()
            .append(true)
            .open(src.path().join("odd"))?;
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)?;
        let mut b = Vec::new();
        write(src.path(), Compression::None, &mut b)?;
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
        // GNU cpio reads it back.
        let out = tempfile::tempdir()?;
        let archive = out.path().join("a.cpio");
        fs::write(&archive, &a)?;
        let x = out.path().join("x");
        fs::create_dir(&x)?;
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -id --quiet < {}", archive.display()))
            .current_dir(&x)
            .status()?;
        assert!(st.success());
        assert_eq!(fs::read(x.join("bin/app"))?, b"#!/bin/sh\necho hi\n");
        assert_eq!(
            fs::metadata(x.join("bin/app"))?.permissions().mode() & 0o7777,
            0o4755
        );
        assert_eq!(fs::read_link(x.join("bin/sh"))?, Path::new("app"));
        assert_eq!(fs::read(x.join("odd"))?, b"123");
        Ok(())
    }

    #[test]
    fn gzip_is_deterministic_and_decodes_to_the_plain_archive() -> TestResult {
        let src = sample()?;
        let (mut plain, mut gz1, mut gz2) = (Vec::new(), Vec::new(), Vec::new());
        write(src.path(), Compression::None, &mut plain)?;
        write(src.path(), Compression::Gzip, &mut gz1)?;
        write(src.path(), Compression::Gzip, &mut gz2)?;
        assert_eq!(gz1, gz2);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gz1[..]).read_to_end(&mut decoded)?;
        assert_eq!(decoded, plain);
        Ok(())
    }
}
