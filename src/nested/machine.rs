//! The outer machine: Debian's cloud kernel (virtio, 8250 serial and ext4
//! built in; KVM as modules), its `irqbypass`, `kvm` and `kvm-amd` modules,
//! and the static busybox of `busybox-static`, all from Debian's packages
//! (`apt-get download`, `dpkg-deb -x`, never installed).
//!
//! Cached in `$TWINBOX_CACHE/nested/<key>/` like the guest kernel: the key
//! hashes this recipe's version and the two packages' names and versions, so
//! a new kernel upload builds a new machine, and the entry is written beside
//! its final name and renamed into place. Where apt cannot resolve the
//! packages (no package lists), the newest cached machine is used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use twinbox_images::{cache, command, fsutil, initramfs::Newc};

/// Bumped when the build steps change what a machine holds.
const RECIPE_VERSION: u32 = 1;
/// The meta-package that names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// The static busybox the agent's steps may use as a shell.
const BUSYBOX: &str = "busybox-static";
/// The modules, in load order, and where the agent finds them.
pub const MODULES: [&str; 3] = ["irqbypass", "kvm", "kvm-amd"];
/// Where the modules go in the outer machine.
pub const MODULE_DIR: &str = "/lib/modules/twinbox";

/// What a build recorded (`machine.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// The cache key.
    pub key: String,
    /// The kernel package and version.
    pub kernel: String,
    /// The busybox package and version.
    pub busybox: String,
    /// Wall time of the build, in seconds.
    pub build_seconds: f64,
    /// When it was built, RFC 3339.
    pub built_at: String,
}

/// A machine in the cache.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Its cache directory.
    pub dir: PathBuf,
    /// Its record.
    pub info: Info,
}

impl Machine {
    /// The kernel QEMU boots.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The base archive: modules and busybox.
    pub fn base_cpio(&self) -> PathBuf {
        self.dir.join("base.cpio")
    }

    fn load(dir: PathBuf) -> Option<Self> {
        let info = serde_json::from_slice(&fs::read(dir.join("machine.json")).ok()?).ok()?;
        let m = Self { dir, info };
        (m.vmlinuz().is_file() && m.base_cpio().is_file()).then_some(m)
    }
}

/// The cache's part for outer machines.
pub fn cache_dir() -> PathBuf {
    cache::dir().join("nested")
}

/// A package and its candidate version, as apt resolves them now.
#[derive(Debug, Clone, PartialEq)]
struct Package {
    name: String,
    version: String,
}

fn candidate(name: &str) -> Result<Package> {
    let policy = command::stdout(Command::new("apt-cache").args(["policy", name]))?;
    let version = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .with_context(|| format!("apt knows no candidate of {name} (run apt-get update)"))?;
    Ok(Package {
        name: name.into(),
        version: version.trim().into(),
    })
}

/// The cloud kernel package the meta-package depends on now.
fn kernel_package() -> Result<Package> {
    let deps = command::stdout(Command::new("apt-cache").args([
        "depends",
        "--no-recommends",
        KERNEL_META,
    ]))?;
    let name = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .with_context(|| format!("apt-cache names no kernel behind {KERNEL_META}"))?;
    candidate(name.trim())
}

fn key(kernel: &Package, busybox: &Package) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "nested machine {RECIPE_VERSION}\n{} {}\n{} {}\n",
        kernel.name, kernel.version, busybox.name, busybox.version
    ));
    hex::encode(&h.finalize()[..8])
}

/// The newest machine in the cache, if any.
fn newest_cached() -> Option<Machine> {
    let mut found: Vec<Machine> = fs::read_dir(cache_dir())
        .ok()?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Machine::load(e.path()))
        .collect();
    found.sort_by(|a, b| a.info.built_at.cmp(&b.info.built_at));
    found.pop()
}

/// The outer machine for the packages apt offers now: from the cache, or
/// built (about 30 MB of downloads, a few seconds).
pub fn ensure() -> Result<Machine> {
    let resolved = kernel_package().and_then(|k| Ok((k, candidate(BUSYBOX)?)));
    let (kernel, busybox) = match resolved {
        Ok(p) => p,
        Err(e) => {
            return newest_cached()
                .ok_or(e)
                .context("resolving the outer machine's packages (no machine is cached either)")
        }
    };
    let dir = cache_dir();
    let key = key(&kernel, &busybox);
    if let Some(m) = Machine::load(dir.join(&key)) {
        return Ok(m);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cache::collect_stale(&dir);
    let work = dir.join(cache::tmp_name(&key));
    fs::create_dir_all(&work)?;
    let built = build(&work, &key, &kernel, &busybox);
    let result = built.and_then(|out| {
        let dest = dir.join(&key);
        match fs::rename(&out, &dest) {
            Ok(()) => {}
            // Another run built the same machine at the same time and
            // published first (a cold cache, tests in parallel): theirs
            // is as good as ours, which goes with `work`.
            Err(_) if Machine::load(dest.clone()).is_some() => {}
            Err(e) => return Err(e).with_context(|| format!("publishing {}", dest.display())),
        }
        Machine::load(dest).context("the machine just built does not load")
    });
    let _ = fsutil::remove_tree(&work);
    result
}

fn download(p: &Package, into: &Path) -> Result<PathBuf> {
    let spec = format!("{}={}", p.name, p.version);
    command::run(
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(into),
    )?;
    let deb = fs::read_dir(into)?
        .flatten()
        .map(|e| e.path())
        .find(|f| {
            f.extension().is_some_and(|e| e == "deb")
                && f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}_", p.name)))
        })
        .with_context(|| format!("apt-get download left no {} .deb", p.name))?;
    let x = into.join(format!("x-{}", p.name));
    command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    Ok(x)
}

/// The one file under `root` whose name is `name` (searched depth first).
fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    for e in fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if ft.is_file() && e.file_name() == name {
            return Some(p);
        }
    }
    None
}

fn build(work: &Path, key: &str, kernel: &Package, busybox: &Package) -> Result<PathBuf> {
    let start = Instant::now();
    let kx = download(kernel, work)?;
    let bx = download(busybox, work)?;
    let out = work.join("out");
    fs::create_dir_all(&out)?;
    let vmlinuz = fs::read_dir(kx.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no boot/vmlinuz-*")?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))?;

    let mut cpio = Newc::new(fs::File::create(out.join("base.cpio"))?);
    let mut dirs = String::new();
    for part in MODULE_DIR.trim_start_matches('/').split('/') {
        if !dirs.is_empty() {
            dirs.push('/');
        }
        dirs.push_str(part);
        cpio.dir(dirs.as_bytes(), 0o755, 0, 0)?;
    }
    for m in MODULES {
        let f = find_file(&kx.join("lib/modules"), &format!("{m}.ko"))
            .with_context(|| format!("{} has no {m}.ko", kernel.name))?;
        add_file(
            &mut cpio,
            &f,
            &format!("{}/{m}.ko", &MODULE_DIR[1..]),
            0o644,
        )?;
    }
    let bb = bx.join("bin/busybox");
    if !bb.is_file() {
        bail!("{} has no bin/busybox", busybox.name);
    }
    cpio.dir(b"bin", 0o755, 0, 0)?;
    add_file(&mut cpio, &bb, "bin/busybox", 0o755)?;
    cpio.finish()?;

    let info = Info {
        key: key.into(),
        kernel: format!("{} {}", kernel.name, kernel.version),
        busybox: format!("{} {}", busybox.name, busybox.version),
        build_seconds: start.elapsed().as_secs_f64(),
        built_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    fs::write(out.join("machine.json"), serde_json::to_vec_pretty(&info)?)?;
    Ok(out)
}

/// Adds the host file `from` to `cpio` as `name` (no leading slash).
pub fn add_file<W: std::io::Write>(
    cpio: &mut Newc<W>,
    from: &Path,
    name: &str,
    mode: u32,
) -> Result<()> {
    let len = fs::metadata(from)
        .with_context(|| format!("reading {}", from.display()))?
        .len();
    let len = u32::try_from(len).with_context(|| format!("{} is over 4 GiB", from.display()))?;
    let mut f = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    cpio.file(name.as_bytes(), mode, 0, 0, len, &mut f)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_both_packages() {
        let k = |kv: &str, bv: &str| {
            key(
                &Package {
                    name: "linux-image-6.1.0-57-cloud-amd64".into(),
                    version: kv.into(),
                },
                &Package {
                    name: BUSYBOX.into(),
                    version: bv.into(),
                },
            )
        };
        assert_eq!(k("6.1.192-3", "1:1.35.0"), k("6.1.192-3", "1:1.35.0"));
        assert_ne!(k("6.1.192-3", "1:1.35.0"), k("6.1.193-1", "1:1.35.0"));
        assert_ne!(k("6.1.192-3", "1:1.35.0"), k("6.1.192-3", "1:1.36.0"));
        assert_eq!(k("a", "b").len(), 16);
    }

    #[test]
    fn a_partial_entry_does_not_load() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(Machine::load(dir.path().to_path_buf()).is_none());
        let info = Info {
            key: "k".into(),
            kernel: "k 1".into(),
            busybox: "b 1".into(),
            build_seconds: 1.0,
            built_at: "2026-12-01T00:00:00Z".into(),
        };
        fs::write(dir.path().join("machine.json"), serde_json::to_vec(&info)?)?;
        fs::write(dir.path().join("vmlinuz"), b"k")?;
        assert!(
            Machine::load(dir.path().to_path_buf()).is_none(),
            "no base.cpio"
        );
        fs::write(dir.path().join("base.cpio"), b"c")?;
        assert!(Machine::load(dir.path().to_path_buf()).is_some());
        Ok(())
    }
}
