//! VM mode: the workload in a microVM booted by twinbox's own VMM.
//!
//! The image's rootfs reaches the guest one of two ways. With a kernel that
//! has legacy pmem built in (ours), as an ext4 disk (built once per image
//! id, cached) that the VMM maps into guest memory as `/dev/pmem0`; init
//! mounts it read-only under a tmpfs overlay. Otherwise (another kernel) in
//! the initramfs, as an archive (packed once per image id, cached). Either
//! way the initramfs ends with a small per-run archive with
//! our init (`/.twinbox/init`, static), the workload spec
//! (`/.twinbox/spec.json`) and `/dev/console`. The kernel is
//! `$TWINBOX_KERNEL` if set, else the one our recipe built (its uncompressed
//! vmlinux when present: no decompression), else Debian's fallback. Init reports the workload's status through the
//! VMM's exit port.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twinbox_images::ext4;
use twinbox_images::initramfs::{self, Newc};
use twinbox_images::kernel;
use twinbox_vmm::profile::{Profile, Symbols};
use twinbox_vmm::{vm, StopReason, VmConfig};

use super::Backend;
use crate::workload::Workload;

/// Guest memory when the workload sets none.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// The spec init reads (its `spec.rs` has the same fields).
#[derive(serde::Serialize)]
pub(crate) struct Spec<'a> {
    pub argv: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub user: &'a str,
    pub hostname: &'a str,
    /// The root disk init mounts, or empty (the initramfs is the root).
    pub root: &'a str,
}

/// Where the guest finds the image's root disk.
const ROOT_DISK: &str = "/dev/pmem0";

/// True if the kernel at `kernel` can take the root as a pmem disk: the
/// `config` beside it has legacy pmem, the pmem driver and ext4 built in
/// (a module would need a module loader in the initramfs).
pub fn has_pmem_root(kernel: &Path) -> bool {
    let Ok(config) = std::fs::read_to_string(kernel.with_file_name("config")) else {
        return false;
    };
    [
        "CONFIG_X86_PMEM_LEGACY=y",
        "CONFIG_BLK_DEV_PMEM=y",
        "CONFIG_EXT4_FS=y",
    ]
    .iter()
    .all(|want| config.lines().any(|l| l == *want))
}

/// The VM backend.
pub struct VmBackend {
    /// Show the guest kernel's messages.
    pub debug: bool,
    /// Profile the guest and write the report here.
    pub profile: Option<PathBuf>,
}

/// How often the profiler samples.
pub const PROFILE_INTERVAL: Duration = Duration::from_millis(10);

/// Writes the profile of a run to `out`, naming addresses with the
/// `System.map` beside `kernel` (addresses stay unnamed without one).
pub fn write_profile(out: &Path, profile: &Profile, kernel: &Path) -> Result<()> {
    let map = kernel.with_file_name("System.map");
    let symbols = match std::fs::read_to_string(&map) {
        Ok(text) => Symbols::from_system_map(&text),
        Err(e) => {
            eprintln!(
                "twinbox: no symbols for the profile ({}: {e})",
                map.display()
            );
            Symbols::default()
        }
    };
    let text = profile.report(&symbols, 40, Duration::from_secs(1));
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// Finds the static guest init: `$TWINBOX_INIT`, where `scripts/bootstrap`
/// builds it, or beside the twinbox binary.
pub fn find_init() -> Result<PathBuf> {
    crate::host::find_static("twinbox-init", "TWINBOX_INIT")
}

/// True if the ELF file at `path` asks for a program interpreter (is
/// dynamically linked): such an init cannot run in an initramfs.
pub fn is_dynamic(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        bail!("{} is a truncated ELF", path.display());
    };
    const PT_INTERP: u32 = 3;
    Ok((0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            == Some(PT_INTERP)
    }))
}

/// Writes the per-run archive: init, spec, /dev/console.
pub(crate) fn run_archive(out: File, init: &Path, spec: &[u8]) -> Result<()> {
    let mut init_file = File::open(init).with_context(|| format!("opening {}", init.display()))?;
    let init_len = u32::try_from(init_file.metadata()?.len()).context("init is too large")?;
    let mut cpio = Newc::new(BufWriter::new(out));
    cpio.dir(b".twinbox", 0o700, 0, 0)?;
    cpio.file(b".twinbox/init", 0o755, 0, 0, init_len, &mut init_file)?;
    let spec_len = u32::try_from(spec.len()).context("spec is too large")?;
    cpio.file(b".twinbox/spec.json", 0o600, 0, 0, spec_len, &mut &spec[..])?;
    cpio.dir(b"dev", 0o755, 0, 0)?;
    const S_IFCHR: u32 = 0o020000;
    cpio.node(b"dev/console", S_IFCHR | 0o600, 0, 0, (5, 1))?;
    cpio.finish()?.flush()?;
    Ok(())
}

/// The kernel command line for a workload run; `$TWINBOX_KERNEL_ARGS` is
/// appended (to debug a guest: `initcall_debug`, ...).
pub fn cmdline(debug: bool) -> String {
    let mut c = String::from("console=ttyS0 reboot=k panic=-1 rdinit=/.twinbox/init");
    if !debug {
        c.push_str(" quiet loglevel=1");
    }
    if let Some(extra) = std::env::var("TWINBOX_KERNEL_ARGS")
        .ok()
        .filter(|e| !e.is_empty())
    {
        c.push(' ');
        c.push_str(&extra);
    }
    c
}

/// Boot-timer marks init writes (its `port.rs`): init started, workload
/// about to start.
const MARK_INIT: u8 = 1;
const MARK_WORKLOAD: u8 = 2;

/// Appends where a VM run's time went as one JSON line to `path` (set by
/// `twinbox bench boot` through `$TWINBOX_TIMINGS`): the VMM's setup, the
/// kernel (to init's first mark), init (to the workload's start), the
/// workload and power-off (to the exit), the teardown; milliseconds from
/// the start of the VM. A failure to record is not the run's failure.
fn record_timings(path: &std::ffi::OsStr, o: &vm::Outcome, root: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mark = |id| o.marks.iter().find(|m| m.id == id).map(|m| ms(m.at));
    let line = serde_json::json!({
        "root": root,
        "vcpus_started_ms": ms(o.timings.vcpus_started),
        "init_ms": mark(MARK_INIT),
        "workload_ms": mark(MARK_WORKLOAD),
        "stopped_ms": ms(o.timings.stopped),
        "torn_down_ms": ms(o.timings.torn_down),
    });
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

impl Backend for VmBackend {
    fn run(&self, w: &Workload) -> Result<i32> {
        let kernel_path = match std::env::var_os("TWINBOX_KERNEL") {
            Some(p) => PathBuf::from(p),
            None => {
                let k = kernel::find().context("no guest kernel: run `twinbox kernel build`")?;
                k.vmlinux().unwrap_or_else(|| k.bzimage())
            }
        };
        let init = find_init()?;
        if is_dynamic(&init)? {
            bail!("{} is dynamically linked; the guest needs a static init (scripts/bootstrap builds one)", init.display());
        }
        let pmem_root = has_pmem_root(&kernel_path)
            && std::env::var("TWINBOX_VM_ROOT").as_deref() != Ok("initramfs");
        let mut c = VmConfig::new(&kernel_path);
        if pmem_root {
            let disk = ext4::build(&w.rootfs, Some(&w.image_id))
                .with_context(|| format!("packing {} into an ext4 disk", w.image))?;
            c.pmem = Some(disk);
        } else {
            let image =
                initramfs::build(&w.rootfs, initramfs::Compression::None, Some(&w.image_id))
                    .with_context(|| format!("packing {} into an initramfs", w.image))?;
            c.initrd.push(image);
        }
        let spec = serde_json::to_vec(&Spec {
            argv: &w.argv,
            env: &w.env,
            cwd: &w.cwd,
            user: &w.user,
            hostname: "twinbox",
            root: if pmem_root { ROOT_DISK } else { "" },
        })?;
        // An unnamed file (O_TMPFILE): it is gone with the last descriptor,
        // even if this process is killed, so a run never leaves it behind.
        // The VMM reads it through /proc while `run_cpio` keeps it open.
        let run_cpio = tempfile::tempfile().context("a temporary file for the run archive")?;
        run_archive(run_cpio.try_clone()?, &init, &spec)?;
        c.initrd.push(PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&run_cpio)
        )));
        c.cmdline = cmdline(self.debug);
        c.memory = w.limits.memory.unwrap_or(DEFAULT_MEMORY);
        c.vcpus = w.limits.cpus.map_or(1, |n| n as u32);
        c.timeout = w.limits.timeout;
        c.profile = self.profile.as_ref().map(|_| PROFILE_INTERVAL);
        if let Ok(chip) = std::env::var("TWINBOX_IRQCHIP") {
            c.irqchip = chip
                .parse()
                .map_err(|e: String| anyhow::anyhow!("TWINBOX_IRQCHIP: {e}"))?;
        }
        let o = vm::run(&c, Box::new(std::io::stdout()))?;
        if let (Some(out), Some(p)) = (&self.profile, &o.profile) {
            write_profile(out, p, &kernel_path)?;
        }
        if let Some(path) = std::env::var_os("TWINBOX_TIMINGS") {
            record_timings(&path, &o, if pmem_root { "pmem" } else { "initramfs" });
        }
        match o.reason {
            StopReason::Exited(code) => Ok(code & 0xff),
            StopReason::TimedOut(t) => {
                eprintln!(
                    "twinbox: the VM was stopped after --timeout {}",
                    humantime::format_duration(t)
                );
                Ok(137)
            }
            other => bail!(
                "the VM stopped without the workload's status: {other:?}; last console output:\n{}",
                o.console_tail
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_static_elves_are_told_apart() -> Result<()> {
        // This test binary is dynamically linked (it has PT_INTERP).
        assert!(is_dynamic(&std::env::current_exe()?)?);
        // The null guest has no interpreter.
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("null");
        std::fs::write(
            &p,
            twinbox_vmm::null_guest::elf(twinbox_vmm::null_guest::Program::Exit(0)),
        )?;
        assert!(!is_dynamic(&p)?);
        std::fs::write(&p, b"not an elf")?;
        assert!(is_dynamic(&p).is_err());
        Ok(())
    }

    #[test]
    fn a_pmem_root_needs_the_drivers_built_in() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let kernel = dir.path().join("vmlinux");
        assert!(!has_pmem_root(&kernel), "no config beside the kernel");
        let all = "CONFIG_X86_PMEM_LEGACY=y\nCONFIG_BLK_DEV_PMEM=y\nCONFIG_EXT4_FS=y\n";
        std::fs::write(dir.path().join("config"), all)?;
        assert!(has_pmem_root(&kernel));
        let module = all.replace("CONFIG_BLK_DEV_PMEM=y", "CONFIG_BLK_DEV_PMEM=m");
        std::fs::write(dir.path().join("config"), module)?;
        assert!(
            !has_pmem_root(&kernel),
            "a module cannot be loaded by our init"
        );
        Ok(())
    }

    #[test]
    fn the_run_archive_holds_init_spec_and_console() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let init = dir.path().join("init");
        std::fs::write(&init, b"\x7fELF fake init")?;
        let out = dir.path().join("run.cpio");
        run_archive(File::create(&out)?, &init, br#"{"argv":["true"]}"#)?;
        let listing = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv < {}", out.display()))
            .output()?;
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains(".twinbox/init"), "{text}");
        assert!(text.contains(".twinbox/spec.json"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with('c') && l.contains("dev/console")),
            "{text}"
        );
        Ok(())
    }
}
