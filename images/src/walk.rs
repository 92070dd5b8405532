//! A deterministic walk of a rootfs, and its content hash.
//!
//! Both packers need the same thing: every entry under a root, in one fixed
//! order (by name, parents before children), without following symlinks; and
//! a hash of what matters to a guest (paths, kinds, modes, owners, device
//! numbers, link targets, file bytes) so a packed image can be cached under
//! it. Modification times are not part of the hash: the packers do not keep
//! them, so two trees that differ only in times pack to the same bytes.

use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// One entry of a rootfs.
#[derive(Debug)]
pub struct Entry {
    /// Path relative to the root.
    pub rel: PathBuf,
    /// Its metadata (of the entry itself, not a symlink's target).
    pub meta: Metadata,
    /// A symlink's target.
    pub link: Option<PathBuf>,
}

/// Every entry under `root` (not the root itself), sorted by name, parents
/// before their children.
pub fn walk(root: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, rel: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        let link = if meta.file_type().is_symlink() {
            Some(fs::read_link(&path)?)
        } else {
            None
        };
        let is_dir = meta.is_dir();
        out.push(Entry {
            rel: rel.clone(),
            meta,
            link,
        });
        if is_dir {
            walk_into(root, &rel, out)?;
        }
    }
    Ok(())
}

/// The SHA-256 (hex) of everything under `root` that a guest could observe,
/// except times.
pub fn content_hash(root: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    for e in walk(root)? {
        h.update(e.rel.as_os_str().as_bytes());
        h.update([0]);
        let m = &e.meta;
        h.update(format!(
            "{:o} {} {} {} {}\n",
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev(),
            m.len()
        ));
        if let Some(t) = &e.link {
            h.update(t.as_os_str().as_bytes());
            h.update([0]);
        } else if m.is_file() {
            let mut f = fs::File::open(root.join(&e.rel))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}
