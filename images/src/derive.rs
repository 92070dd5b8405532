//! Derived images: an image in the store plus a few host files, committed
//! under a new name. The benchmark uses it to put its isolation probe into
//! the busybox image, so the probe runs from the same rootfs in every box.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::ImageMeta;
use crate::reference::Reference;
use crate::store::{self, Image, Store};

/// Errors of deriving an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The new name is invalid.
    #[error(transparent)]
    Reference(#[from] crate::reference::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Copying or hashing failed.
    #[error("{0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A destination is not a plain relative path.
    #[error("{0}: want a relative path inside the image")]
    Dest(String),
}

/// Copies `base`'s rootfs, adds `files` (destination inside the image,
/// host source, mode), and commits it as `name`. If an image of that name
/// with the same content exists, it is returned as it is.
pub fn derive(
    store: &Store,
    base: &Image,
    name: &str,
    files: &[(&str, &Path, u32)],
) -> Result<Image, Error> {
    use std::os::unix::fs::PermissionsExt;
    let name = Reference::parse(name)?;
    let staging = store.staging("derive")?;
    let root = staging.rootfs();
    let src = base.rootfs();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&root)
        .status()
        .map_err(|e| Error::Io(src.clone(), e))?;
    if !st.success() {
        return Err(Error::Io(
            src,
            std::io::Error::other(format!("cp -a: {st}")),
        ));
    }
    for (dest, host, mode) in files {
        let rel = crate::confined::normalize(Path::new(dest))
            .map_err(|_| Error::Dest(dest.to_string()))?;
        let to = root.join(&rel);
        std::fs::copy(host, &to).map_err(|e| Error::Io(host.to_path_buf(), e))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::Io(to.clone(), e))?;
    }
    let hash = crate::walk::content_hash(&root).map_err(|e| Error::Io(root.clone(), e))?;
    let id = format!("sha256:{hash}");
    if let Ok(existing) = store.get(&name) {
        if existing.meta.id == id {
            return Ok(existing);
        }
    }
    let size = crate::fsutil::tree_size(&root).map_err(|e| Error::Io(root.clone(), e))?;
    let meta = ImageMeta {
        name: name.to_string(),
        id,
        size,
        imported: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        source: format!("{} plus {} file(s)", base.meta.name, files.len()),
        ..base.meta.clone()
    };
    Ok(store.commit(staging, &meta, &name)?)
}
