//! The `debian-python` image: python3 from Debian's own packages, with
//! busybox for `/bin/sh` and the coreutils applets.
//!
//! It is a heavier workload than the `busybox` base image for the warm-start
//! benchmark (an interpreter that maps a few MB of shared libraries and reads
//! its standard library at start), built, like [`crate::base`], with no
//! registry reachable: only Debian's apt mirror (or `.deb` files at hand).
//!
//! The packages ([`PACKAGES`]) are fetched with `apt-get download` (or taken
//! from a directory of `.deb` files) and each is unpacked with `dpkg-deb -x`
//! into a new rootfs, keeping the layout Debian 12 gives them (`/lib`,
//! `/lib64`, `/usr/lib` as separate directories). Then come the
//! `/usr/bin/python3` symlink, one symlink per busybox applet where no
//! package already put a file, a minimal `/etc` (passwd, group, hosts) and
//! the usual empty mount points. The image goes into the store like an
//! import.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command;
use crate::reference::Reference;
use crate::store::{self, Image, Store};

/// Errors of building the python image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching or unpacking a package failed.
    #[error(transparent)]
    Command(#[from] command::Error),
    /// A package the image needs is not among the `.deb` files.
    #[error("{dir:?} holds no {package} .deb")]
    Missing {
        /// The package.
        package: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The busybox-static package does not hold a static busybox.
    #[error("{0:?} holds no bin/busybox")]
    NoBusybox(PathBuf),
    /// The python package does not hold the interpreter.
    #[error("{0:?} holds no usr/bin/python3.11")]
    NoPython(PathBuf),
    /// Writing the rootfs failed.
    #[error("{path:?}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The python image's name.
pub const NAME: &str = "debian-python:latest";
/// The Debian package the interpreter comes from (its version names the
/// image's source).
pub const PACKAGE: &str = "python3.11-minimal";
/// The interpreter that package installs in `/usr/bin`.
const INTERPRETER: &str = "python3.11";
/// Every package unpacked into the image.
///
/// `python3.11` links only libc, libm, zlib and expat (`ldd`); its
/// `-minimal` packages hold the core of the standard library (`os`, `sys`,
/// `re`, `encodings`, ...), and `json` lives in `libpython3.11-stdlib`. The
/// libraries that package's other extension modules link (ssl, sqlite,
/// ffi, lzma, readline, ...) are left out: those modules fail to import.
pub const PACKAGES: &[&str] = &[
    PACKAGE,
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    crate::base::PACKAGE,
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds the python image into `store` from the `.deb` files in `debs`
/// (downloaded when `None`).
pub fn build(store: &Store, debs: Option<&Path>) -> Result<Image> {
    let scratch = store.staging("python-debs")?;
    let dir = match debs {
        Some(d) => d.to_path_buf(),
        None => {
            command::run(
                Command::new("apt-get")
                    .arg("download")
                    .args(PACKAGES)
                    .current_dir(scratch.path()),
            )?;
            scratch.path().to_path_buf()
        }
    };
    let debs = find_debs(&dir)?;

    let staging = store.staging("python")?;
    let root = staging.rootfs();
    let mut version = String::new();
    for (package, deb) in &debs {
        command::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        if *package == PACKAGE {
            version = command::stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"))?;
        }
    }
    if !root.join("usr/bin").join(INTERPRETER).is_file() {
        return Err(Error::NoPython(dir));
    }
    let busybox = root.join("bin/busybox");
    if !busybox.is_file() {
        return Err(Error::NoBusybox(dir));
    }
    let applets = command::stdout(Command::new(&busybox).arg("--list-full"))?;

    crate::base::skeleton(&root).map_err(|(path, source)| Error::Io { path, source })?;
    link_if_absent(INTERPRETER, &root.join("usr/bin/python3"))?;
    link_applets(&root, &applets)?;
    drop(scratch);
    let name = Reference::parse(NAME).map_err(|e| Error::Io {
        path: root.clone(),
        source: std::io::Error::other(e),
    })?;
    let meta = crate::base::meta(
        &root,
        &name,
        "python3",
        format!("debian {PACKAGE} {version}"),
    )
    .map_err(|(path, source)| Error::Io { path, source })?;
    Ok(store.commit(staging, &meta, &name)?)
}

/// The `.deb` file of each of [`PACKAGES`] in `dir`, found by the package
/// name in its control file (not its file name), in [`PACKAGES`] order.
fn find_debs(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let package =
                command::stdout(Command::new("dpkg-deb").arg("-f").arg(&path).arg("Package"))?;
            found.push((package, path));
        }
    }
    found.sort();
    PACKAGES
        .iter()
        .map(|&package| {
            found
                .iter()
                .find(|(p, _)| p == package)
                .map(|(_, path)| (package, path.clone()))
                .ok_or_else(|| Error::Missing {
                    package,
                    dir: dir.to_path_buf(),
                })
        })
        .collect()
}

/// Makes `link` a symlink to `target` unless something (a file, a
/// directory, a symlink, even a dangling one) is already there. Returns
/// whether it made one.
fn link_if_absent(target: &str, link: &Path) -> Result<bool> {
    if fs::symlink_metadata(link).is_ok() {
        return Ok(false);
    }
    symlink(target, link).map_err(io_err(link))?;
    Ok(true)
}

/// Lays out one `/bin/busybox` symlink per applet of `list` (the output of
/// `busybox --list-full`) under `root`, as [`crate::base`] does, but never
/// over a file a package provides. Returns how many it made.
fn link_applets(root: &Path, list: &str) -> Result<usize> {
    let mut made = 0;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let Ok(rel) = crate::confined::normalize(Path::new(applet)) else {
            continue;
        };
        if rel == Path::new("bin/busybox") || rel.components().count() < 2 {
            continue;
        }
        let link = root.join(&rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if link_if_absent("/bin/busybox", &link)? {
            made += 1;
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applets_never_overwrite() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin"))?;
        fs::write(root.join("usr/bin/env"), "from a package")?;
        // Dangling on the host, as an absolute link inside a rootfs can be.
        symlink("/nonexistent/ld.so", root.join("usr/bin/ldd"))?;
        let list =
            "bin/sh\n/usr/bin/env\nusr/bin/ldd\nbin/busybox\nlinuxrc\n../../etc/x\n\nusr/bin/tr\n";
        assert_eq!(link_applets(root, list)?, 2);
        assert_eq!(
            fs::read_link(root.join("bin/sh"))?,
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_link(root.join("usr/bin/tr"))?,
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/bin/env"))?,
            "from a package"
        );
        assert_eq!(
            fs::read_link(root.join("usr/bin/ldd"))?,
            Path::new("/nonexistent/ld.so")
        );
        assert!(fs::symlink_metadata(root.join("bin/busybox")).is_err());
        assert!(fs::symlink_metadata(root.join("linuxrc")).is_err());
        // A second pass makes nothing: everything is there.
        assert_eq!(link_applets(root, list)?, 0);
        Ok(())
    }

    #[test]
    fn find_debs_reports_the_missing_package() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        match find_debs(dir.path()) {
            Err(Error::Missing { package, .. }) => assert_eq!(package, PACKAGE),
            other => panic!("expected Missing, got {other:?}"),
        }
        Ok(())
    }
}
