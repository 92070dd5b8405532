//! The per-run archive for the outer machine, appended to the machine's
//! base archive (the kernel unpacks concatenated newc archives in order):
//! the agent (this very twinbox binary, at `/bin/twinbox`), the plan, every
//! file and directory the plan carries, each at its own host path unless
//! it names another, the host's `mkfs.ext4` and `debugfs` (VM mode packs a
//! root disk with them), and the shared libraries of every dynamic
//! executable among them, found with `ldd`, at their host paths.
//!
//! Files keep their modes; symlinks inside carried directories stay
//! symlinks; parent directories are made as needed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use twinbox_images::initramfs::Newc;

use super::{machine, Plan};

/// Where the plan goes in the outer machine.
pub const PLAN_PATH: &str = "/nested/plan.json";
/// Where the agent goes.
pub const AGENT_PATH: &str = "/bin/twinbox";

/// The host tools VM mode runs, carried in whenever the host has them.
const HOST_TOOLS: [&str; 2] = ["mkfs.ext4", "debugfs"];
/// The host files those tools read.
const HOST_FILES: [&str; 1] = ["/etc/mke2fs.conf"];

/// An archive being written.
struct Writer<W: Write> {
    cpio: Newc<W>,
    /// Paths (without the leading slash) already in the archive.
    have: BTreeSet<String>,
    /// Dynamic executables whose libraries are still to add.
    dynamic: Vec<PathBuf>,
}

/// `path` as an archive name: absolute, normal components only, no `..`.
fn name_of(path: &str) -> Result<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("{path}: paths in the outer machine are absolute");
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => bail!("{path}: no . or .. in paths of the outer machine"),
        }
    }
    if parts.is_empty() {
        bail!("{path}: not a file path");
    }
    Ok(parts.join("/"))
}

impl<W: Write> Writer<W> {
    fn parents(&mut self, name: &str) -> Result<()> {
        let mut at = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if self.have.insert(at.clone()) {
                self.cpio.dir(at.as_bytes(), 0o755, 0, 0)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, host: &Path, name: &str, mode: Option<u32>) -> Result<()> {
        if self.have.contains(name) {
            return Ok(());
        }
        self.parents(name)?;
        let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        machine::add_file(&mut self.cpio, host, name, mode)?;
        self.have.insert(name.to_string());
        if mode & 0o111 != 0 && crate::backends::vm::is_dynamic(host).unwrap_or(false) {
            self.dynamic.push(host.to_path_buf());
        }
        Ok(())
    }

    fn tree(&mut self, host: &Path, name: &str) -> Result<()> {
        let meta =
            fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            if self.have.insert(name.to_string()) {
                self.parents(name)?;
                let target = fs::read_link(host)?;
                self.cpio
                    .symlink(name.as_bytes(), target.as_os_str().as_bytes(), 0, 0)?;
            }
        } else if ft.is_dir() {
            if self.have.insert(name.to_string()) {
                self.parents(name)?;
                self.cpio
                    .dir(name.as_bytes(), meta.permissions().mode() & 0o7777, 0, 0)?;
            }
            let mut entries: Vec<_> = fs::read_dir(host)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let child = format!("{name}/{}", e.file_name().to_string_lossy());
                self.tree(&e.path(), &child)?;
            }
        } else if ft.is_file() {
            self.file(host, name, None)?;
        }
        Ok(())
    }

    /// Adds the libraries of every dynamic executable added so far.
    fn libraries(&mut self) -> Result<()> {
        while let Some(exe) = self.dynamic.pop() {
            for lib in libraries_of(&exe)? {
                let name = name_of(&lib.to_string_lossy())?;
                self.file(&lib, &name, None)?;
            }
        }
        Ok(())
    }
}

/// The shared libraries `ldd` lists for `exe`, the loader included.
pub fn libraries_of(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("running ldd (libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(" (").next()?,
                None => l.split(" (").next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path.trim()))
        })
        .collect()
}

/// Appends the per-run archive for `plan` to `out`.
pub fn write(plan: &Plan, out: impl Write) -> Result<()> {
    let mut w = Writer {
        cpio: Newc::new(out),
        have: BTreeSet::new(),
        dynamic: Vec::new(),
    };
    // The base archive made these already; making them again is harmless,
    // but the names must not be made files.
    for d in ["bin", "lib", "lib/modules"] {
        w.have.insert(d.into());
    }
    let agent = std::env::current_exe().context("finding the twinbox binary")?;
    w.file(&agent, &name_of(AGENT_PATH)?, Some(0o755))?;
    for tool in HOST_TOOLS {
        if let Some(p) = crate::host::on_path(tool) {
            w.file(&p, &name_of(&p.to_string_lossy())?, Some(0o755))?;
        }
    }
    for f in HOST_FILES {
        if Path::new(f).is_file() {
            w.file(Path::new(f), &name_of(f)?, None)?;
        }
    }
    for put in &plan.put {
        let guest = match &put.guest {
            Some(g) => g.clone(),
            None => put
                .host
                .canonicalize()
                .with_context(|| format!("carrying {}", put.host.display()))?
                .to_string_lossy()
                .into_owned(),
        };
        w.tree(&put.host, &name_of(&guest)?)?;
    }
    w.libraries()?;
    let mut plan = plan.clone();
    plan.modules = machine::MODULES
        .iter()
        .map(|m| format!("{}/{m}.ko", machine::MODULE_DIR))
        .collect();
    let json = serde_json::to_vec(&plan)?;
    let name = name_of(PLAN_PATH)?;
    w.parents(&name)?;
    w.cpio.file(
        name.as_bytes(),
        0o644,
        0,
        0,
        u32::try_from(json.len())?,
        &mut &json[..],
    )?;
    w.cpio.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn guest_paths_are_absolute_and_plain() {
        assert_eq!(name_of("/a/b/c").ok().as_deref(), Some("a/b/c"));
        assert_eq!(name_of("/a//b/").ok().as_deref(), Some("a/b"));
        // Interior `.` components are dropped by the parser, not refused.
        assert_eq!(name_of("/./a").ok().as_deref(), Some("a"));
        for bad in ["a/b", "/a/../b", "/", "/.."] {
            assert!(name_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_carried_tree_keeps_files_links_and_libraries() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub"))?;
        fs::write(src.join("sub/data"), b"payload")?;
        std::os::unix::fs::symlink("sub/data", src.join("link"))?;
        let plan = Plan {
            put: vec![super::super::Put {
                host: src.clone(),
                guest: Some("/carried".into()),
            }],
            steps: vec![super::super::Step::new(["true"])],
            ..Plan::default()
        };
        let archive = dir.path().join("a.cpio");
        write(&plan, fs::File::create(&archive)?)?;
        let x = dir.path().join("x");
        fs::create_dir(&x)?;
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -id --quiet < {}", archive.display()))
            .current_dir(&x)
            .status()?;
        assert!(st.success());
        assert_eq!(fs::read(x.join("carried/sub/data"))?, b"payload");
        assert_eq!(
            fs::read_link(x.join("carried/link"))?,
            Path::new("sub/data")
        );
        let plan: Plan = serde_json::from_slice(&fs::read(x.join("nested/plan.json"))?)?;
        assert_eq!(plan.modules.len(), 3);
        assert!(x.join("bin/twinbox").is_file());
        // The test binary is dynamic, so its loader came along.
        if crate::backends::vm::is_dynamic(&std::env::current_exe()?)? {
            assert!(x.join("lib64/ld-linux-x86-64.so.2").is_file());
        }
        Ok(())
    }
}
