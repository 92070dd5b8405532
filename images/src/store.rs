//! The image store: one unpacked rootfs per image plus its record.
//!
//! Layout under the store's home (`$TWINBOX_HOME`, default
//! `/var/lib/twinbox` as root and `~/.local/share/twinbox` otherwise):
//!
//! ```text
//! images/<name+path@tag>/rootfs/      the unpacked root filesystem
//! images/<name+path@tag>/image.json   ImageMeta
//! tmp/<pid>-<n>-<what>/               staging of imports and removals
//! lock                                flock'ed while images/ changes
//! ```
//!
//! An image appears whole or not at all: an import unpacks into `tmp/` (same
//! file system), then one `rename` (an atomic exchange when replacing) puts it
//! in place. A failed import drops its staging directory; one whose process
//! was killed is collected by the next `Store::open`, which removes staging
//! directories whose owner process is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags, AT_FDCWD};

use crate::config::ImageMeta;
use crate::reference::Reference;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not in the store.
    #[error("no such image: {0} (see `twinbox image ls`)")]
    NotFound(Reference),
    /// A store file could not be read or written.
    #[error("image store {path:?}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An image record is unreadable.
    #[error("image record {path:?} is corrupt")]
    Corrupt {
        /// The record's path.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its record.
    pub meta: ImageMeta,
    /// Its directory (holding `rootfs/` and `image.json`).
    pub dir: PathBuf,
}

impl Image {
    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// A staging directory inside the store; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// The staging directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// Where the rootfs is unpacked.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.dir.exists() {
            // Best effort: a leftover is collected by the next Store::open.
            let _ = crate::fsutil::remove_tree(&self.dir);
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store's home: `$TWINBOX_HOME`, else `/var/lib/twinbox` for root,
    /// else `$XDG_DATA_HOME/twinbox` or `~/.local/share/twinbox`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("TWINBOX_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/twinbox");
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(d).join("twinbox");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".local/share/twinbox")
    }

    /// Opens (creating if needed) the store at `home`, and collects staging
    /// directories left by processes that no longer exist.
    pub fn open(home: &Path) -> Result<Self> {
        let store = Self {
            home: home.to_path_buf(),
        };
        for d in [store.images_dir(), store.tmp_dir()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        store.collect_stale();
        Ok(store)
    }

    /// The store's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn images_dir(&self) -> PathBuf {
        self.home.join("images")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.home.join("tmp")
    }

    fn collect_stale(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            if !pid.is_some_and(crate::cache::pid_alive) {
                let _ = crate::fsutil::remove_tree(&e.path());
            }
        }
    }

    fn lock(&self) -> Result<Flock<fs::File>> {
        let path = self.home.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
            path,
            source: e.into(),
        })
    }

    /// A new staging directory, with an empty `rootfs/` in it.
    pub fn staging(&self, what: &str) -> Result<Staging> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .tmp_dir()
            .join(format!("{}-{}-{}", std::process::id(), n, what));
        let staging = Staging { dir };
        let rootfs = staging.rootfs();
        fs::create_dir_all(&rootfs).map_err(io_err(&rootfs))?;
        Ok(staging)
    }

    fn image_dir(&self, r: &Reference) -> PathBuf {
        self.images_dir().join(r.dir_name())
    }

    /// Puts a staged image in place under `meta.name`, replacing an image of
    /// the same name atomically.
    pub fn commit(&self, staging: Staging, meta: &ImageMeta, name: &Reference) -> Result<Image> {
        let record = staging.path().join("image.json");
        let json = serde_json::to_vec_pretty(meta).map_err(|source| Error::Corrupt {
            path: record.clone(),
            source,
        })?;
        crate::fsutil::write_synced(&record, &json).map_err(io_err(&record))?;
        let target = self.image_dir(name);
        let _lock = self.lock()?;
        if target.exists() {
            // Swap the new image in; the old one is now in the staging dir,
            // which is removed when `staging` drops.
            renameat2(
                AT_FDCWD,
                staging.path(),
                AT_FDCWD,
                &target,
                RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::Io {
                path: target.clone(),
                source: e.into(),
            })?;
        } else {
            fs::rename(staging.path(), &target).map_err(io_err(&target))?;
        }
        drop(staging);
        Ok(Image {
            meta: meta.clone(),
            dir: target,
        })
    }

    /// The image called `r`.
    pub fn get(&self, r: &Reference) -> Result<Image> {
        let dir = self.image_dir(r);
        let record = dir.join("image.json");
        let data = match fs::read(&record) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(r.clone()))
            }
            Err(e) => return Err(io_err(&record)(e)),
        };
        let meta = serde_json::from_slice(&data).map_err(|source| Error::Corrupt {
            path: record,
            source,
        })?;
        Ok(Image { meta, dir })
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Some(r) = e
                .file_name()
                .to_str()
                .and_then(|n| Reference::from_dir_name(n).ok())
            else {
                continue;
            };
            out.push(self.get(&r)?);
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Removes the image called `r`: it disappears at once (a rename), then
    /// its files are deleted.
    pub fn remove(&self, r: &Reference) -> Result<()> {
        let dir = self.image_dir(r);
        if !dir.join("image.json").exists() {
            return Err(Error::NotFound(r.clone()));
        }
        let trash = self.staging("rm")?;
        {
            let _lock = self.lock()?;
            crate::fsutil::remove_tree(trash.path()).map_err(io_err(trash.path()))?;
            fs::rename(&dir, trash.path()).map_err(io_err(&dir))?;
        }
        drop(trash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;

    fn meta(name: &str) -> ImageMeta {
        ImageMeta {
            name: name.into(),
            id: "sha256:0".into(),
            config: RunConfig::default(),
            size: 1,
            created: None,
            imported: "now".into(),
            architecture: "amd64".into(),
            layers: vec![],
            source: "test".into(),
        }
    }

    #[test]
    fn commit_replace_list_remove() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let store = Store::open(home.path())?;
        let r = Reference::parse("a/b:1")?;
        for content in ["one", "two"] {
            let s = store.staging("import")?;
            fs::write(s.rootfs().join("f"), content)?;
            store.commit(s, &meta("a/b:1"), &r)?;
        }
        let img = store.get(&r)?;
        assert_eq!(fs::read_to_string(img.rootfs().join("f"))?, "two");
        assert_eq!(store.list()?.len(), 1);
        // The replaced image went away with its staging directory.
        assert_eq!(fs::read_dir(home.path().join("tmp"))?.count(), 0);
        store.remove(&r)?;
        assert!(matches!(store.get(&r), Err(Error::NotFound(_))));
        assert!(matches!(store.remove(&r), Err(Error::NotFound(_))));
        assert_eq!(fs::read_dir(home.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn dropped_staging_leaves_nothing_and_stale_ones_are_collected(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let store = Store::open(home.path())?;
        let s = store.staging("import")?;
        fs::write(s.rootfs().join("f"), "x")?;
        drop(s);
        assert_eq!(fs::read_dir(home.path().join("tmp"))?.count(), 0);
        // A staging dir of a dead process (pid far above pid_max).
        fs::create_dir_all(home.path().join("tmp/999999999-0-import/rootfs"))?;
        Store::open(home.path())?;
        assert_eq!(fs::read_dir(home.path().join("tmp"))?.count(), 0);
        Ok(())
    }
}
