//! Packs a rootfs into an ext4 disk image (`mkfs.ext4 -d`), cached by
//! image id or content hash, byte-for-byte deterministic. Its size is a
//! multiple of 2 MiB, so the VMM can map it as a guest's pmem disk.
//!
//! `mkfs.ext4 -d` copies each source file's access and change times, which
//! change whenever the store is read; and e2fsprogs 1.47.0 (Debian 12) has
//! no `SOURCE_DATE_EPOCH`. So the recipe fixes everything it can on the
//! command line (UUID and hash seed derived from the content hash, no
//! journal, fixed creation time via `E2FSPROGS_FAKE_TIME`) and then zeroes
//! every inode's times in one batched `debugfs -w` pass.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command;

/// Errors of building an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the rootfs or the cache failed.
    #[error("{path:?}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// mkfs.ext4 or debugfs failed.
    #[error(transparent)]
    Command(#[from] command::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

const BLOCK: u64 = 4096;
const TIME_FIELDS: [&str; 8] = [
    "atime",
    "ctime",
    "mtime",
    "crtime",
    "atime_extra",
    "ctime_extra",
    "mtime_extra",
    "crtime_extra",
];

/// Size, inode count and entry count for a rootfs: data blocks plus room
/// to spare.
fn geometry(root: &Path) -> std::io::Result<(u64, u64, u64)> {
    let entries = crate::walk::walk(root)?;
    let blocks: u64 = entries
        .iter()
        .map(|e| {
            if e.meta.is_file() {
                e.meta.len().div_ceil(BLOCK)
            } else {
                1
            }
        })
        .sum();
    let inodes = entries.len() as u64 + 64;
    // Data, inode tables (256 bytes each), 25% slack, 16 MiB for metadata
    // and for the workload to write; whole 2 MiB (a pmem disk's unit).
    let bytes = (blocks * BLOCK + inodes * 256) * 5 / 4 + (16 << 20);
    Ok((bytes.div_ceil(2 << 20) << 21, inodes, entries.len() as u64))
}

/// Formats `hash` (hex) as a UUID.
fn uuid(hash: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hash[0..8],
        &hash[8..12],
        &hash[12..16],
        &hash[16..20],
        &hash[20..32]
    )
}

/// Builds the image of `root` into the cache and returns it. The entry is
/// named by `key` when the caller has one that names the rootfs's content
/// (an image id: then the rootfs is not read to find a cached image), else
/// by the rootfs's content hash.
pub fn build(root: &Path, key: Option<&str>) -> Result<PathBuf> {
    use sha2::Digest;
    let io_err = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (stem, hash) = match key {
        Some(k) => {
            let h = hex::encode(sha2::Sha256::digest(k.as_bytes()));
            (format!("id-{}", &h[..32]), h)
        }
        None => {
            let h = crate::walk::content_hash(root).map_err(|e| io_err(root, e))?;
            (h[..32].to_string(), h)
        }
    };
    crate::cache::produce(
        "ext4",
        &format!("{stem}.ext4"),
        |tmp| make(root, &hash, tmp),
        io_err,
    )
}

fn make(root: &Path, hash: &str, out: &Path) -> Result<()> {
    let (bytes, inodes, entries) = geometry(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let id = uuid(hash);
    command::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-O",
                "^has_journal",
                "-L",
                "twinbox",
            ])
            .args(["-N", &inodes.to_string(), "-U", &id])
            .arg("-E")
            .arg(format!(
                "hash_seed={id},root_owner=0:0,lazy_itable_init=0,nodiscard"
            ))
            .arg("-d")
            .arg(root)
            .arg(out)
            .arg(format!("{}k", bytes / 1024)),
    )?;
    // Inode numbers used: the root (2), lost+found (11), and one per entry
    // from 12 on (fewer when there are hard links).
    let mut script = String::new();
    let inos = [2u64, 11].into_iter().chain(12..12 + entries);
    for ino in inos {
        for f in TIME_FIELDS {
            let _ = writeln!(script, "set_inode_field <{ino}> {f} 0");
        }
    }
    // Beside the temporary, named after all of it: concurrent makers of
    // one entry each have their own (`with_extension` would cut the
    // temporary's unique suffix and give them one script to fight over).
    let mut script_path = out.as_os_str().to_owned();
    script_path.push(".debugfs");
    let script_path = std::path::PathBuf::from(script_path);
    fs::write(&script_path, script).map_err(|source| Error::Io {
        path: script_path.clone(),
        source,
    })?;
    let r = command::run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out),
    );
    let _ = fs::remove_file(&script_path);
    r?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn same_tree_same_bytes_even_after_reads_and_chmods() -> TestResult {
        let t = tempfile::tempdir()?;
        let root = t.path().join("root");
        fs::create_dir_all(root.join("bin"))?;
        fs::write(root.join("bin/app"), b"hello ext4")?;
        symlink("app", root.join("bin/sh"))?;
        let a = t.path().join("a.ext4");
        let b = t.path().join("b.ext4");
        make(&root, &"ab".repeat(32), &a)?;
        assert_eq!(fs::metadata(&a)?.len() % (2 << 20), 0, "whole 2 MiB");
        // Change access and change times (a read, a no-op chmod).
        let _ = fs::read(root.join("bin/app"))?;
        let perm = fs::metadata(root.join("bin/app"))?.permissions();
        fs::set_permissions(root.join("bin/app"), perm)?;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make(&root, &"ab".repeat(32), &b)?;
        assert!(fs::read(&a)? == fs::read(&b)?, "ext4 images differ");
        // The content is really there.
        let out = Command::new("debugfs")
            .arg("-R")
            .arg("cat /bin/app")
            .arg(&a)
            .output()?;
        assert_eq!(out.stdout, b"hello ext4");
        Ok(())
    }

    #[test]
    fn concurrent_makers_of_one_entry_do_not_share_a_script() -> TestResult {
        let t = tempfile::tempdir()?;
        let root = t.path().join("root");
        fs::create_dir_all(root.join("bin"))?;
        fs::write(root.join("bin/app"), b"hello ext4")?;
        // Temporaries as the cache names them: one entry, four makers.
        let outs: Vec<PathBuf> = (0..4)
            .map(|i| {
                t.path()
                    .join(format!(".id-ab.ext4.tmp-{}-{i}", std::process::id()))
            })
            .collect();
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = outs
                .iter()
                .map(|o| s.spawn(|| make(&root, &"cd".repeat(32), o).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .collect()
        });
        assert_eq!(results, vec![true; 4], "a concurrent maker failed");
        let first = fs::read(&outs[0])?;
        for o in &outs[1..] {
            assert!(
                fs::read(o)? == first,
                "concurrent makers made different disks"
            );
        }
        Ok(())
    }
}
