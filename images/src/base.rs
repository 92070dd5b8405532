//! The `busybox` base image, built from Debian's `busybox-static` package,
//! so that a fresh machine has something to run with no registry.
//!
//! The package is fetched with `apt-get download` (or given as a `.deb`),
//! unpacked with `dpkg-deb -x` into a scratch directory, and its static
//! `busybox` is laid out in a new rootfs with one symlink per applet (from
//! `busybox --list-full`), a minimal `/etc` (passwd, group, hosts) and the
//! usual empty mount points. The image goes into the store like an import.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command;
use crate::config::{ImageMeta, RunConfig};
use crate::reference::Reference;
use crate::store::{self, Image, Store};

/// Errors of building the base image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching or unpacking the package failed.
    #[error(transparent)]
    Command(#[from] command::Error),
    /// The package does not hold a static busybox.
    #[error("{0:?} holds no bin/busybox")]
    NoBusybox(PathBuf),
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

/// The base image's name.
pub const NAME: &str = "busybox:latest";
/// The Debian package it is built from.
pub const PACKAGE: &str = "busybox-static";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an I/O failure of the shared steps was about.
type IoAt = (PathBuf, std::io::Error);

/// The directories and minimal `/etc` every image built here has: the
/// usual mount points and scratch directories with their modes, passwd,
/// group, hosts, hostname. Shared with the python image.
pub(crate) fn skeleton(root: &Path) -> std::result::Result<(), IoAt> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("var/tmp", 0o1777),
        ("run", 0o755),
    ] {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(at(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(at(&p))?;
    }
    for (file, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        ("etc/hostname", "twinbox\n"),
    ] {
        let p = root.join(file);
        fs::write(&p, text).map_err(at(&p))?;
    }
    Ok(())
}

/// The record of an image built here from `root`: its content hash and
/// size, command `cmd`, the usual `PATH`, and where it came from.
pub(crate) fn meta(
    root: &Path,
    name: &Reference,
    cmd: &str,
    source: String,
) -> std::result::Result<ImageMeta, IoAt> {
    let hash = crate::walk::content_hash(root).map_err(|e| (root.to_path_buf(), e))?;
    let size = crate::fsutil::tree_size(root).map_err(|e| (root.to_path_buf(), e))?;
    Ok(ImageMeta {
        name: name.to_string(),
        id: format!("sha256:{hash}"),
        config: RunConfig {
            entrypoint: vec![],
            cmd: vec![cmd.into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            workdir: "/".into(),
            user: String::new(),
        },
        size,
        created: None,
        imported: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        architecture: "amd64".into(),
        layers: vec![],
        source,
    })
}

/// Builds the base image into `store` from `deb` (downloaded when `None`).
pub fn build(store: &Store, deb: Option<&Path>) -> Result<Image> {
    let scratch = store.staging("base-deb")?;
    let deb = match deb {
        Some(d) => d.to_path_buf(),
        None => {
            command::run(
                Command::new("apt-get")
                    .args(["download", PACKAGE])
                    .current_dir(scratch.path()),
            )?;
            fs::read_dir(scratch.path())
                .map_err(io_err(scratch.path()))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .ok_or_else(|| Error::NoBusybox(scratch.path().to_path_buf()))?
        }
    };
    let version = command::stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    let x = scratch.path().join("x");
    command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let busybox = x.join("bin/busybox");
    if !busybox.is_file() {
        return Err(Error::NoBusybox(deb));
    }
    let applets = command::stdout(Command::new(&busybox).arg("--list-full"))?;

    let staging = store.staging("base")?;
    let root = staging.rootfs();
    skeleton(&root).map_err(|(path, source)| Error::Io { path, source })?;
    let dest = root.join("bin/busybox");
    fs::copy(&busybox, &dest).map_err(io_err(&dest))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(io_err(&dest))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
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
        if !link.exists() {
            symlink("/bin/busybox", &link).map_err(io_err(&link))?;
        }
    }
    drop(scratch);
    let name = Reference::parse(NAME).map_err(|e| Error::Io {
        path: root.clone(),
        source: std::io::Error::other(e),
    })?;
    let meta = meta(&root, &name, "sh", format!("debian {PACKAGE} {version}"))
        .map_err(|(path, source)| Error::Io { path, source })?;
    Ok(store.commit(staging, &meta, &name)?)
}
