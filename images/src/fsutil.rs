//! Small file system helpers shared by the store, the packers and the
//! kernel cache: removing a tree that may hold read-only directories,
//! writing a file durably, publishing a file atomically (replacing, or
//! only once).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Removes `path` and all it holds. Directories without write permission
/// (an image may have them) are opened up first when that is what failed.
/// Symlinks are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn open_up(path: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(path)?;
    if md.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for e in fs::read_dir(path)? {
            open_up(&e?.path())?;
        }
    }
    Ok(())
}

/// Writes `data` to `path` and syncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Publishes `tmp` as `dest` with one rename (same file system), so that a
/// reader sees the whole file or none.
pub fn publish(tmp: &Path, dest: &Path) -> io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    fs::rename(tmp, dest)
}

/// Publishes the file `tmp` as `dest` unless `dest` already exists (then
/// `tmp` is removed and the existing file is kept): a link, which never
/// replaces, then the temporary name is dropped. Concurrent makers of one
/// cache entry all end up using the first one published, so an entry a
/// reader already opened (and fingerprinted) is never swapped under it.
pub fn publish_once(tmp: &Path, dest: &Path) -> io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    let linked = match fs::hard_link(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(tmp);
    linked
}

/// Bytes of file data under `root` (regular files' sizes), without following
/// symlinks.
pub fn tree_size(root: &Path) -> io::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(root)? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_dir() {
            total += tree_size(&e.path())?;
        } else if md.is_file() {
            total += md.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_once_keeps_the_first() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("entry");
        for (i, text) in ["first", "second"].iter().enumerate() {
            let tmp = dir.path().join(format!(".entry.tmp-{i}"));
            fs::write(&tmp, text)?;
            publish_once(&tmp, &dest)?;
            assert!(!tmp.exists(), "the temporary is left");
        }
        assert_eq!(fs::read_to_string(&dest)?, "first");
        Ok(())
    }
}
