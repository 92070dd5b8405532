//! The snapshot cache: booted guests saved for warm start, in
//! `$TWINBOX_CACHE/snapshots/<hash of the key>/` (`state`, `memory`,
//! `meta.json`).
//!
//! A snapshot's key is everything the saved guest was made from: the
//! image (its id, and the ext4 disk packed from it), the kernel, init, the
//! VMM (twinbox's version and binary), the kernel command line, the memory
//! size, the vCPU count and the kind of hypervisor. Files are named in the
//! key by their fingerprint (device, inode, size, modification time), so
//! a rebuilt kernel, init or twinbox, or a repacked disk, never meets an old
//! snapshot. The key's hash is also inside the state file, which the VMM
//! checks, so a directory renamed by hand is refused too.
//!
//! Entries are made in a temporary sibling (named with the maker's pid)
//! and published with one rename: concurrent first runs of one key make
//! one snapshot (the loser's is thrown away), and a killed maker leaves a
//! temporary that no run uses and the next maker removes.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use twinbox_images::cache;

/// The key of a snapshot: its inputs as `name value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The canonical text.
    pub text: String,
}

impl Key {
    /// A key of `inputs`, in the order given.
    pub fn new(inputs: &[(&str, String)]) -> Self {
        let text = inputs
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect::<String>();
        Self { text }
    }

    /// Its name in the cache: 16 hex digits of its SHA-256.
    pub fn hash(&self) -> String {
        let d = Sha256::digest(self.text.as_bytes());
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The fingerprint of the file at `path`: device, inode, size and
/// modification time, which change whenever the file is replaced or
/// rewritten.
pub fn fingerprint(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "{} dev {} ino {} size {} mtime {}.{:09}",
        path.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// Where snapshots live.
pub fn root() -> PathBuf {
    cache::dir().join("snapshots")
}

/// The directory of `key`'s snapshot (it may not exist).
pub fn entry(key: &Key) -> PathBuf {
    root().join(key.hash())
}

/// A new private temporary directory for `key`'s snapshot, after removing
/// what killed makers left.
pub fn temp(key: &Key) -> Result<PathBuf> {
    let root = root();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    cache::collect_stale(&root);
    let tmp = root.join(cache::tmp_name(&key.hash()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// What a snapshot was made from, for `twinbox snapshot ls`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The image's name when it was made.
    pub image: String,
    /// The image's id.
    pub image_id: String,
    /// The kernel's path.
    pub kernel: String,
    /// Guest memory, bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// When it was made, seconds since the epoch.
    pub created: u64,
    /// How long saving took, milliseconds.
    pub save_ms: f64,
    /// How long the boot to the ready mark took, milliseconds.
    pub boot_ms: f64,
    /// The key's text.
    pub key: String,
}

/// Publishes the temporary `tmp` as `key`'s snapshot, with `meta`. If
/// another run published one first, `tmp` is thrown away and theirs is
/// kept. Returns the entry's directory.
pub fn publish(tmp: &Path, key: &Key, meta: &Meta) -> Result<PathBuf> {
    let meta_path = tmp.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(meta)?)
        .with_context(|| format!("writing {}", meta_path.display()))?;
    let dest = entry(key);
    match std::fs::rename(tmp, &dest) {
        Ok(()) => Ok(dest),
        Err(_) if dest.is_dir() => {
            let _ = twinbox_images::fsutil::remove_tree(tmp);
            Ok(dest)
        }
        Err(e) => {
            let _ = twinbox_images::fsutil::remove_tree(tmp);
            Err(e).with_context(|| format!("publishing {}", dest.display()))
        }
    }
}

/// Where a key's "cannot be restored here" marker is.
fn broken_marker(key: &Key) -> PathBuf {
    root().join(format!("{}.broken", key.hash()))
}

/// Records that a snapshot of `key`, made on this host, could not be
/// restored here (`why`), so later runs boot instead of making it again.
/// A failure to record only costs a boot later.
pub fn mark_broken(key: &Key, why: &str) {
    let _ = std::fs::write(broken_marker(key), why);
}

/// Why snapshots of `key` cannot be restored here, if a run found so.
pub fn broken(key: &Key) -> Option<String> {
    let text = std::fs::read_to_string(broken_marker(key)).ok()?;
    Some(
        text.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect(),
    )
}

/// Removes a snapshot (a no-op if it is gone).
pub fn remove(dir: &Path) -> Result<()> {
    twinbox_images::fsutil::remove_tree(dir).with_context(|| format!("removing {}", dir.display()))
}

/// One snapshot in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// Its name (the key's hash).
    pub id: String,
    /// Bytes it takes on disk (its memory file's holes excluded).
    pub disk_bytes: u64,
    /// What it was made from, if its meta file reads.
    pub meta: Option<Meta>,
}

/// Every snapshot in the cache, newest first.
pub fn list() -> Vec<Listed> {
    let Ok(entries) = std::fs::read_dir(root()) else {
        return Vec::new();
    };
    let mut v: Vec<Listed> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Entries only: not temporaries, not "cannot be restored" marks.
            !name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| {
            let dir = e.path();
            let disk_bytes = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.blocks() * 512)
                        .sum()
                })
                .unwrap_or(0);
            let meta = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Listed {
                id: e.file_name().to_string_lossy().into_owned(),
                disk_bytes,
                meta,
            }
        })
        .collect();
    v.sort_by_key(|l| std::cmp::Reverse(l.meta.as_ref().map_or(0, |m| m.created)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_in_any_input_and_name_their_entry() {
        let a = Key::new(&[("image", "sha256:1".into()), ("memory", "256".into())]);
        let b = Key::new(&[("image", "sha256:1".into()), ("memory", "512".into())]);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
        assert_eq!(
            a,
            Key::new(&[("image", "sha256:1".into()), ("memory", "256".into())])
        );
    }

    #[test]
    fn a_rewritten_file_has_another_fingerprint() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        std::fs::write(&p, b"one")?;
        let first = fingerprint(&p)?;
        std::fs::write(&p, b"three")?;
        assert_ne!(first, fingerprint(&p)?);
        Ok(())
    }
}
