//! Named volumes on this host: `$TWINBOX_HOME/volumes/<name>/`, one
//! directory per volume holding `_data` (what boxes see, 0755) and
//! `volume.json` (its [`Meta`], written atomically with the box store's
//! helper). `volumes/.lock` (an `flock`, the box store's helper too)
//! serialises making, removing and pruning volumes against boxes being
//! created with them, so a volume a new box names cannot vanish between
//! the check and the box's record.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::is_volume_name;
use crate::boxes::store::{lock_file, write_atomic, Lock};

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The box store's helpers failed (lock, atomic write).
    #[error(transparent)]
    Store(#[from] crate::boxes::store::Error),
    /// A record could not be read or written.
    #[error("volume record {}", path.display())]
    Record {
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No volume has this name.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// The name breaks Docker's rule.
    #[error("invalid volume name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed")]
    BadName(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// What is kept of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// Its name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// The volume store.
#[derive(Debug, Clone)]
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    /// The store under `home` (made if missing, mode 0700).
    pub fn open(home: &Path) -> Result<Self, Error> {
        let dir = home.join("volumes");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        Ok(Self { dir })
    }

    /// Takes the store-wide lock.
    pub fn lock(&self) -> Result<Lock, Error> {
        Ok(lock_file(&self.dir.join(".lock"))?)
    }

    /// Where volume `name`'s data is (what boxes mount).
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// Volume `name`'s record, if it exists.
    pub fn get(&self, name: &str) -> Result<Meta, Error> {
        if !is_volume_name(name) {
            return Err(Error::NotFound(name.into()));
        }
        let path = self.dir.join(name).join("volume.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(name.into()))
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| Error::Record { path, source })
    }

    /// Makes volume `name` unless it exists (call with the lock held);
    /// returns its record and whether it is new.
    pub fn ensure(&self, name: &str) -> Result<(Meta, bool), Error> {
        if !is_volume_name(name) {
            return Err(Error::BadName(name.into()));
        }
        match self.get(name) {
            Ok(m) => return Ok((m, false)),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let d = self.dir.join(name);
        // A directory without a record is what a killed `ensure` left.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io("creating", &d))?;
        let data = d.join("_data");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&data)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io("creating", &data))?;
        let meta = Meta {
            name: name.into(),
            created_at: crate::boxes::record::now(),
        };
        let text = serde_json::to_vec_pretty(&meta).map_err(|source| Error::Record {
            path: d.join("volume.json"),
            source,
        })?;
        write_atomic(&d, "volume.json", &text)?;
        Ok((meta, true))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Meta>, Error> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let e = e.map_err(io("listing", &self.dir))?;
            let Some(name) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            if let Ok(m) = self.get(&name) {
                v.push(m);
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Removes volume `name` and its data (call with the lock held, after
    /// checking no box uses it). Returns the bytes its files held.
    pub fn remove(&self, name: &str) -> Result<u64, Error> {
        self.get(name)?;
        let d = self.dir.join(name);
        let size = tree_size(&d.join("_data"));
        // The record goes first: a half-removed volume is no volume.
        let rec = d.join("volume.json");
        std::fs::remove_file(&rec).map_err(io("removing", &rec))?;
        std::fs::remove_dir_all(&d).map_err(io("removing", &d))?;
        Ok(size)
    }
}

/// Bytes held by the files under `path` (apparent sizes, each inode once,
/// symlinks not followed, other file systems not entered). Walked with an
/// explicit stack, so a deep tree does not grow ours.
pub fn tree_size(path: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() <= 1 || seen.insert(m.ino()) {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_made_once_listed_and_removed() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let v = Volumes::open(home.path())?;
        let _l = v.lock()?;
        let (m, new) = v.ensure("data")?;
        assert!(new);
        assert_eq!(m.name, "data");
        let (again, new) = v.ensure("data")?;
        assert!(!new);
        assert_eq!(again, m);
        assert!(v.data("data").is_dir());
        std::fs::write(v.data("data").join("f"), vec![0u8; 1000])?;
        std::fs::create_dir(v.data("data").join("d"))?;
        std::fs::write(v.data("data").join("d/g"), vec![0u8; 24])?;
        v.ensure("other")?;
        let names: Vec<String> = v.list()?.into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["data", "other"]);
        assert_eq!(v.remove("data")?, 1024);
        assert!(!home.path().join("volumes/data").exists());
        assert!(matches!(v.get("data"), Err(Error::NotFound(_))));
        assert!(matches!(v.remove("data"), Err(Error::NotFound(_))));
        assert!(matches!(v.ensure("../x"), Err(Error::BadName(_))));
        assert!(matches!(v.get("../x"), Err(Error::NotFound(_))));
        Ok(())
    }
}
