//! The guest kernel recipe: Debian's `linux-source-6.1`, `make tinyconfig`,
//! our fragment (`images/kernel/twinbox.config`) and our patches, built once
//! into the cache under a key that hashes all of those inputs.
//!
//! ```text
//! <cache>/kernel/src-<version>-<patches>/linux-source-6.1/   patched source, shared
//! <cache>/kernel/<key>/{bzImage,vmlinux,config,System.map,build.json}
//! <cache>/kernel/debian-<version>/{bzImage,build.json}   the fallback
//! ```
//!
//! After `olddefconfig` every option of the fragment is checked against the
//! final `.config`: an option Kconfig dropped fails the build, so the fragment
//! never claims what the kernel lacks. The fallback is Debian's prebuilt
//! `linux-image-*-amd64`, downloaded and unpacked with `dpkg-deb -x` (never
//! installed into /boot).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::command;

/// Errors of the kernel recipe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel source package is not installed.
    #[error("{SOURCE_PACKAGE} is not installed (apt-get install {SOURCE_PACKAGE}): {0}")]
    NoSource(String),
    /// A build step failed.
    #[error(transparent)]
    Command(#[from] command::Error),
    /// Options of the fragment did not survive `olddefconfig`.
    #[error(
        "kernel config options were dropped by Kconfig (fix images/kernel/twinbox.config):\n{0}"
    )]
    Dropped(String),
    /// A cache file could not be read or written.
    #[error("{path:?}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The build produced no kernel image.
    #[error("no kernel image found in {0:?}")]
    NoImage(PathBuf),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Debian's kernel source package the recipe builds from.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Our config fragment.
pub const FRAGMENT: &str = include_str!("../kernel/twinbox.config");
/// Our patches, applied in order with `patch -p1` (name, text). Each says
/// at its top what it is for.
pub const PATCHES: &[(&str, &str)] = &[
    (
        "0001-x86-alternatives-no_int3_selftest.patch",
        include_str!("../kernel/patches/0001-x86-alternatives-no_int3_selftest.patch"),
    ),
    (
        "0002-x86-fault-twinbox_pvm_syscall.patch",
        include_str!("../kernel/patches/0002-x86-fault-twinbox_pvm_syscall.patch"),
    ),
    (
        "0003-x86-fpu-twinbox_no_fwait.patch",
        include_str!("../kernel/patches/0003-x86-fpu-twinbox_no_fwait.patch"),
    ),
    (
        "0004-char-devport-on-x86.patch",
        include_str!("../kernel/patches/0004-char-devport-on-x86.patch"),
    ),
    (
        "0005-x86-e820-pmem-without-pci.patch",
        include_str!("../kernel/patches/0005-x86-e820-pmem-without-pci.patch"),
    ),
    (
        "0006-sysfs-twinbox_lean_sysfs.patch",
        include_str!("../kernel/patches/0006-sysfs-twinbox_lean_sysfs.patch"),
    ),
    (
        "0007-x86-mm-skip-e820-lookups-for-empty-entries.patch",
        include_str!("../kernel/patches/0007-x86-mm-skip-e820-lookups-for-empty-entries.patch"),
    ),
];
/// Bumped when the build steps change in a way that changes the result.
const RECIPE_VERSION: u32 = 1;

/// Where a kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Built by our recipe.
    Twinbox,
    /// Debian's prebuilt `linux-image-*-amd64`.
    Debian,
}

/// What a build recorded about itself (`build.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Where it came from.
    pub origin: Origin,
    /// The cache key.
    pub key: String,
    /// The source package and version.
    pub source: String,
    /// Wall time of the build, in seconds.
    pub build_seconds: f64,
    /// Size of the bzImage.
    pub bzimage_bytes: u64,
    /// Size of the vmlinux ELF (0 if none).
    pub vmlinux_bytes: u64,
    /// When it was built, RFC 3339.
    pub built_at: String,
}

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Its cache directory.
    pub dir: PathBuf,
    /// Its build record.
    pub info: BuildInfo,
}

impl Kernel {
    /// The compressed, bootable kernel image.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
    /// The uncompressed ELF kernel, if the origin provides one.
    pub fn vmlinux(&self) -> Option<PathBuf> {
        let p = self.dir.join("vmlinux");
        p.exists().then_some(p)
    }

    fn load(dir: PathBuf) -> Option<Self> {
        let data = fs::read(dir.join("build.json")).ok()?;
        let info = serde_json::from_slice(&data).ok()?;
        Some(Self { dir, info })
    }
}

/// The installed kernel source.
#[derive(Debug, Clone)]
pub struct Source {
    /// The source tarball.
    pub tarball: PathBuf,
    /// The Debian package version.
    pub version: String,
}

impl Source {
    /// Finds the installed `linux-source-6.1` package.
    pub fn find() -> Result<Self> {
        let version = command::stdout(Command::new("dpkg-query").args([
            "-W",
            "-f=${Version}",
            SOURCE_PACKAGE,
        ]))
        .map_err(|e| Error::NoSource(e.to_string()))?;
        let tarball = PathBuf::from(format!("/usr/src/{SOURCE_PACKAGE}.tar.xz"));
        if version.is_empty() || !tarball.exists() {
            return Err(Error::NoSource(format!("{} missing", tarball.display())));
        }
        Ok(Self { tarball, version })
    }

    /// The cache key of our recipe on this source.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "recipe {RECIPE_VERSION}\n{SOURCE_PACKAGE} {}\n",
            self.version
        ));
        h.update(FRAGMENT);
        for (name, text) in PATCHES {
            h.update(name);
            h.update(text);
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// The kernel part of the cache.
pub fn cache_dir() -> PathBuf {
    crate::cache::dir().join("kernel")
}

/// Our recipe's kernel for `source`, if it is built.
pub fn cached(source: &Source) -> Option<Kernel> {
    Kernel::load(cache_dir().join(source.key()))
}

/// The Debian fallback kernel, if one was fetched.
pub fn cached_debian() -> Option<Kernel> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("debian-"))
        })
        .collect();
    found.sort();
    found.into_iter().rev().find_map(Kernel::load)
}

/// The cached kernel whose image is the file `path` (its directory holds
/// the build record), e.g. what `$TWINBOX_KERNEL` names.
pub fn at(path: &Path) -> Option<Kernel> {
    Kernel::load(path.parent()?.to_path_buf())
}

/// The kernel a VM should boot: ours if built, else the Debian fallback.
pub fn find() -> Option<Kernel> {
    Source::find()
        .ok()
        .and_then(|s| cached(&s))
        .or_else(cached_debian)
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Builds our kernel (or returns the cached one), showing progress on `pb`.
pub fn build(source: &Source, jobs: usize, pb: &ProgressBar) -> Result<Kernel> {
    if let Some(k) = cached(source) {
        return Ok(k);
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    crate::cache::collect_stale(&cache);
    let start = Instant::now();
    let tree = extract_source(source, &cache, pb)?;
    let key = source.key();
    let out = cache.join(crate::cache::tmp_name(&format!("build-{key}")));
    fs::create_dir_all(&out).map_err(io_err(&out))?;
    let result = build_in(&tree, &out, jobs, pb).and_then(|()| {
        let dest_tmp = cache.join(crate::cache::tmp_name(&key));
        fs::create_dir_all(&dest_tmp).map_err(io_err(&dest_tmp))?;
        for (from, to) in [
            ("arch/x86/boot/bzImage", "bzImage"),
            ("vmlinux", "vmlinux"),
            (".config", "config"),
            ("System.map", "System.map"),
        ] {
            let from = out.join(from);
            fs::copy(&from, dest_tmp.join(to)).map_err(io_err(&from))?;
        }
        let info = BuildInfo {
            origin: Origin::Twinbox,
            key: key.clone(),
            source: format!("{SOURCE_PACKAGE} {}", source.version),
            build_seconds: start.elapsed().as_secs_f64(),
            bzimage_bytes: file_len(&dest_tmp.join("bzImage")),
            vmlinux_bytes: file_len(&dest_tmp.join("vmlinux")),
            built_at: now(),
        };
        write_info(&dest_tmp, &info)?;
        let dest = cache.join(&key);
        fs::rename(&dest_tmp, &dest).map_err(io_err(&dest))?;
        Ok(Kernel { dir: dest, info })
    });
    let _ = crate::fsutil::remove_tree(&out);
    result
}

fn write_info(dir: &Path, info: &BuildInfo) -> Result<()> {
    let p = dir.join("build.json");
    let json = serde_json::to_vec_pretty(info).map_err(|e| Error::Io {
        path: p.clone(),
        source: e.into(),
    })?;
    crate::fsutil::write_synced(&p, &json).map_err(io_err(&p))
}

/// A hash of our patches: the extracted (and patched) source is shared by
/// every build with the same source version and patches.
fn patches_hash() -> String {
    let mut h = Sha256::new();
    for (name, text) in PATCHES {
        h.update(name);
        h.update(text);
    }
    hex::encode(&h.finalize()[..4])
}

/// Extracts the source tarball and applies our patches, once per source
/// version and patch set; returns the tree.
fn extract_source(source: &Source, cache: &Path, pb: &ProgressBar) -> Result<PathBuf> {
    let dir = cache.join(format!("src-{}-{}", source.version, patches_hash()));
    let tree = dir.join(SOURCE_PACKAGE);
    if tree.join("Makefile").exists() {
        return Ok(tree);
    }
    pb.set_message(format!("extracting {}", source.tarball.display()));
    let tmp = cache.join(crate::cache::tmp_name(&format!("src-{}", source.version)));
    let tmp_tree = tmp.join(SOURCE_PACKAGE);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let r = command::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&source.tarball)
            .arg("-C")
            .arg(&tmp),
    )
    .map_err(Error::from)
    .and_then(|_| {
        for (name, text) in PATCHES {
            pb.set_message(format!("applying {name}"));
            let p = tmp.join(name);
            fs::write(&p, text).map_err(io_err(&p))?;
            // --batch: never ask; a patch that does not apply fails the build.
            command::run(
                Command::new("patch")
                    .args(["-p1", "--batch", "--forward", "-i"])
                    .arg(&p)
                    .current_dir(&tmp_tree),
            )?;
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(io_err(&dir))
    });
    if r.is_err() {
        let _ = crate::fsutil::remove_tree(&tmp);
    }
    r.map(|()| tree)
}

fn make(tree: &Path, out: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(tree)
        .arg(format!("O={}", out.display()))
        // Reproducible identification strings.
        .env("KBUILD_BUILD_USER", "twinbox")
        .env("KBUILD_BUILD_HOST", "twinbox")
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01");
    c
}

fn build_in(tree: &Path, out: &Path, jobs: usize, pb: &ProgressBar) -> Result<()> {
    pb.set_message("make tinyconfig");
    command::run(make(tree, out).arg("tinyconfig"))?;
    let frag = out.join("twinbox.config");
    fs::write(&frag, FRAGMENT).map_err(io_err(&frag))?;
    command::run(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(out)
            .arg(out.join(".config"))
            .arg(&frag)
            .current_dir(tree),
    )?;
    command::run(make(tree, out).arg("olddefconfig"))?;
    let config = fs::read_to_string(out.join(".config")).map_err(io_err(out))?;
    let dropped = dropped_options(FRAGMENT, &config);
    if !dropped.is_empty() {
        return Err(Error::Dropped(dropped.join("\n")));
    }
    pb.set_message("compiling");
    let mut cmd = make(tree, out);
    cmd.arg(format!("-j{jobs}"))
        .arg("bzImage")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| command::Error::Spawn {
        program: "make".into(),
        source,
    })?;
    // stderr is drained on a thread so neither pipe can fill and block make.
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(e).lines().map_while(|l| l.ok()) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        })
    });
    let mut log = String::new();
    let mut objects = 0u64;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if line.trim_start().starts_with("CC ") {
                objects += 1;
                pb.set_message(format!("compiling ({objects} objects) {}", line.trim()));
            }
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child.wait().map_err(io_err(out))?;
    if let Some(t) = stderr {
        log.push_str(&t.join().unwrap_or_default());
    }
    if !status.success() {
        return Err(command::failed(&cmd, status, &log).into());
    }
    Ok(())
}

/// The `CONFIG_X=y` / `# CONFIG_X is not set` lines of `fragment` that are
/// not in `config`.
pub fn dropped_options(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = config.lines().map(str::trim).collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("CONFIG_") || (l.starts_with("# CONFIG_") && l.ends_with(" is not set"))
        })
        .filter(|l| !have.contains(l))
        .map(String::from)
        .collect()
}

/// Downloads Debian's current `linux-image-*-amd64` and unpacks its kernel
/// into the cache (the fallback when our recipe cannot be built).
pub fn fetch_debian(pb: &ProgressBar) -> Result<Kernel> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    crate::cache::collect_stale(&cache);
    let start = Instant::now();
    pb.set_message("resolving linux-image-amd64");
    let deps = command::stdout(Command::new("apt-cache").args([
        "depends",
        "--no-recommends",
        "linux-image-amd64",
    ]))?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && !p.contains("signed-template"))
        .map(|p| p.trim().to_string())
        .ok_or_else(|| Error::NoSource("apt-cache names no linux-image package".into()))?;
    let work = cache.join(crate::cache::tmp_name("debian"));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = (|| {
        pb.set_message(format!("apt-get download {package}"));
        command::run(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&work),
        )?;
        let deb = fs::read_dir(&work)
            .map_err(io_err(&work))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| Error::NoImage(work.clone()))?;
        let version = command::stdout(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Version"),
        )?;
        pb.set_message("dpkg-deb -x");
        let x = work.join("x");
        command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
        let vmlinuz = fs::read_dir(x.join("boot"))
            .map_err(io_err(&x))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .ok_or_else(|| Error::NoImage(x.join("boot")))?;
        let key = format!("debian-{}", package.trim_start_matches("linux-image-"));
        let dest_tmp = work.join("out");
        fs::create_dir_all(&dest_tmp).map_err(io_err(&dest_tmp))?;
        fs::copy(&vmlinuz, dest_tmp.join("bzImage")).map_err(io_err(&vmlinuz))?;
        let info = BuildInfo {
            origin: Origin::Debian,
            key: key.clone(),
            source: format!("{package} {version}"),
            build_seconds: start.elapsed().as_secs_f64(),
            bzimage_bytes: file_len(&dest_tmp.join("bzImage")),
            vmlinux_bytes: 0,
            built_at: now(),
        };
        write_info(&dest_tmp, &info)?;
        let dest = cache.join(&key);
        let _ = crate::fsutil::remove_tree(&dest);
        fs::rename(&dest_tmp, &dest).map_err(io_err(&dest))?;
        Ok(Kernel { dir: dest, info })
    })();
    let _ = crate::fsutil::remove_tree(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_options_are_found() {
        let frag = "# comment\nCONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_C is not set\nCONFIG_B=\"y\"\n";
        assert_eq!(
            dropped_options(frag, config),
            vec!["CONFIG_B=\"x\"".to_string()]
        );
        assert!(
            dropped_options(frag, "CONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set").is_empty()
        );
    }

    #[test]
    fn fragment_sets_what_the_vmm_needs() {
        for needed in [
            "CONFIG_64BIT=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_BLK_DEV_INITRD=y",
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_EXT4_FS=y",
            "CONFIG_DEVTMPFS=y",
        ] {
            assert!(
                FRAGMENT.lines().any(|l| l.trim() == needed),
                "{needed} missing"
            );
        }
    }
}
