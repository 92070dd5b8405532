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
use twinbox_vmm::config::{Irqchip, Snapshot};
use twinbox_vmm::profile::{Profile, Symbols};
use twinbox_vmm::{hypervisor, snapshot, vm, StopReason, VmConfig};

use super::Backend;
use crate::snapshots::{fingerprint, Key, Meta};
use crate::workload::Workload;

/// The vsock context id of every guest: each VM has its own device and
/// socket, so they need not differ.
pub const GUEST_CID: u64 = 3;

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
    /// The vsock port init's guest agent serves (a box that lives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_port: Option<u32>,
    /// The first process only holds the box; the host runs the workload
    /// through the agent (a box with `-i` or `-t`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// Volumes: the virtio-fs shares init mounts.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub mounts: &'a [GuestMount],
}

/// One volume as init mounts it (its `spec::Mount`).
#[derive(serde::Serialize, Debug, Clone)]
pub(crate) struct GuestMount {
    pub tag: String,
    pub target: String,
    pub readonly: bool,
}

/// A host directory a VM box mounts (`-v`), over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmVolume {
    /// The host directory.
    pub source: PathBuf,
    /// Where the guest mounts it.
    pub target: String,
    /// Read-only, enforced on the host (see `twinbox_vmm::virtiofsd`).
    pub readonly: bool,
}

/// The tag of a VM's volume `i`.
fn share_tag(i: usize) -> String {
    format!("twinbox{i}")
}

/// True if the kernel at `kernel` has virtio-fs built in.
pub fn has_virtiofs(kernel: &Path) -> bool {
    std::fs::read_to_string(kernel.with_file_name("config"))
        .is_ok_and(|c| c.lines().any(|l| l == "CONFIG_VIRTIO_FS=y"))
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
    /// Boot, without a snapshot and without taking one (`--cold`).
    pub cold: bool,
    /// Profile the guest and write the report here.
    pub profile: Option<PathBuf>,
    /// Where the guest's console goes (default: stdout); a detached box's
    /// supervisor gives a pipe to its log.
    pub console: Option<std::sync::Arc<std::fs::File>>,
    /// A box that lives: the VM gets a vsock device whose Unix socket is
    /// here, and init serves its guest agent on [`twinbox_agent::PORT`].
    pub vsock: Option<PathBuf>,
    /// With `vsock`: init's first process only holds the box, and the
    /// supervisor starts the workload through the agent, relaying its
    /// stdin and terminal (`-i`, `-t`).
    pub hold: bool,
    /// Volumes (`-v`): each a virtio-fs device served by a virtiofsd of
    /// its own, started for the run and stopped after it. A VM with any
    /// boots: its memory is shared with the servers, which a snapshot
    /// cannot restore.
    pub volumes: Vec<VmVolume>,
    /// Where the servers' sockets go (a box's directory); `None` is a
    /// temporary directory of the run.
    pub fs_dir: Option<PathBuf>,
}

/// True if the kernel at `kernel` has the virtio-vsock driver built in
/// (the `config` beside it says so).
pub fn has_vsock(kernel: &Path) -> bool {
    std::fs::read_to_string(kernel.with_file_name("config"))
        .is_ok_and(|c| c.lines().any(|l| l == "CONFIG_VIRTIO_VSOCKETS=y"))
}

impl VmBackend {
    /// A writer for the guest's console.
    fn console(&self) -> Box<dyn std::io::Write + Send> {
        match self.console.as_ref().map(|f| f.try_clone()) {
            Some(Ok(f)) => Box::new(f),
            _ => Box::new(std::io::stdout()),
        }
    }
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

pub use super::elf::is_dynamic;

/// Where init finds the boot file (root disk and mailbox) in the archive.
const BOOT_FILE: &[u8] = b".twinbox/boot.json";
/// The mailbox's device in the guest ([`twinbox_vmm::mailbox`]).
const MAILBOX_DISK: &str = "/dev/pmem1";

/// Writes the per-run archive: init, `name` (the boot file or the spec)
/// holding `data`, /dev/console.
pub(crate) fn run_archive(out: File, init: &Path, name: &[u8], data: &[u8]) -> Result<()> {
    let mut init_file = File::open(init).with_context(|| format!("opening {}", init.display()))?;
    let init_len = u32::try_from(init_file.metadata()?.len()).context("init is too large")?;
    let mut cpio = Newc::new(BufWriter::new(out));
    cpio.dir(b".twinbox", 0o700, 0, 0)?;
    cpio.file(b".twinbox/init", 0o755, 0, 0, init_len, &mut init_file)?;
    let len = u32::try_from(data.len()).context("spec is too large")?;
    cpio.file(name, 0o600, 0, 0, len, &mut &data[..])?;
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
const MARK_READY: u8 = twinbox_vmm::devices::ports::MARK_READY;

/// Appends where a VM run's time went as one JSON line to `path` (set by
/// `twinbox bench boot` through `$TWINBOX_TIMINGS`): the VMM's setup, the
/// kernel (to init's first mark), init (to the workload's start), the
/// workload and power-off (to the exit), the teardown; milliseconds from
/// the start of the VM. A failure to record is not the run's failure.
fn record_timings(path: &std::ffi::OsStr, o: &vm::Outcome, root: &str, start: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mark = |id| o.marks.iter().find(|m| m.id == id).map(|m| ms(m.at));
    let line = serde_json::json!({
        "root": root,
        "start": start,
        "ready_ms": mark(MARK_READY),
        "vm_created_ms": ms(o.timings.vm_created),
        "memory_ready_ms": ms(o.timings.memory_ready),
        "guest_loaded_ms": ms(o.timings.guest_loaded),
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

/// A VM run made ready: its config, the snapshot key (when it can be
/// warm), and the archive its initramfs ends with (kept open: the VMM reads
/// it through /proc).
pub struct Prepared {
    /// The VM's configuration.
    pub config: VmConfig,
    /// The kernel.
    pub kernel: PathBuf,
    /// The root as "pmem" or "initramfs".
    pub root: &'static str,
    /// The snapshot key, when this run can be restored from a snapshot.
    pub key: Option<Key>,
    _archive: File,
}

/// Why a run cannot be warm, if it cannot.
fn cold_because(pmem_root: bool, irqchip: Irqchip) -> Option<&'static str> {
    if !pmem_root {
        return Some("the kernel has no pmem root (needed for the mailbox)");
    }
    if irqchip != Irqchip::Split {
        return Some("snapshots need the split irqchip");
    }
    None
}

impl VmBackend {
    /// The VM for `w`: kernel, root disk (or initramfs), the run archive,
    /// limits, and the snapshot key.
    pub fn prepare(&self, w: &Workload) -> Result<Prepared> {
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
            agent_port: self.vsock.as_ref().map(|_| twinbox_agent::PORT),
            hold: self.hold && self.vsock.is_some(),
            mounts: &self
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| GuestMount {
                    tag: share_tag(i),
                    target: v.target.clone(),
                    readonly: v.readonly,
                })
                .collect::<Vec<_>>(),
        })?;
        // An unnamed file (O_TMPFILE): it is gone with the last descriptor,
        // even if this process is killed, so a run never leaves it behind.
        // The VMM reads it through /proc while `run_cpio` keeps it open.
        // With a root disk, the archive holds nothing of the run (the spec
        // comes through the mailbox after the ready mark): it is the same
        // for every run, so a snapshot of the guest holds no run's data.
        let run_cpio = tempfile::tempfile().context("a temporary file for the run archive")?;
        if pmem_root {
            let (argv, path_var) = &w.image_command;
            let boot = serde_json::to_vec(&serde_json::json!({
                "root": ROOT_DISK,
                "mailbox": MAILBOX_DISK,
                "preload": super::preload::files(&w.rootfs, argv, path_var),
            }))?;
            run_archive(run_cpio.try_clone()?, &init, BOOT_FILE, &boot)?;
            c.mailbox = Some(spec);
        } else {
            run_archive(run_cpio.try_clone()?, &init, b".twinbox/spec.json", &spec)?;
        }
        c.initrd.push(PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&run_cpio)
        )));
        if let Some(uds) = &self.vsock {
            if !has_vsock(&kernel_path) {
                bail!("the guest kernel {} has no virtio-vsock driver, which a VM box that lives needs: run `twinbox kernel build`", kernel_path.display());
            }
            c.vsock = Some(twinbox_vmm::config::VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: uds.clone(),
            });
        }
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
        if !self.volumes.is_empty() && !has_virtiofs(&kernel_path) {
            bail!("the guest kernel {} has no virtio-fs driver, which volumes in a VM need: run `twinbox kernel build`", kernel_path.display());
        }
        let why_cold = cold_because(pmem_root, c.irqchip).or(if self.volumes.is_empty() {
            None
        } else {
            Some("volumes share the VM's memory with their file servers, which a snapshot cannot restore")
        });
        if let (Some(why), false) = (why_cold, self.cold) {
            eprintln!("twinbox: booting (no warm start: {why})");
        }
        let key = match (why_cold, self.cold) {
            (None, false) => Some(snapshot_key(w, &c, &kernel_path, &init)?),
            _ => None,
        };
        Ok(Prepared {
            config: c,
            kernel: kernel_path,
            root: if pmem_root { "pmem" } else { "initramfs" },
            key,
            _archive: run_cpio,
        })
    }
}

/// The key of the snapshot a run of `w` with config `c` can use.
fn snapshot_key(w: &Workload, c: &VmConfig, kernel: &Path, init: &Path) -> Result<Key> {
    let exe = std::env::current_exe().context("finding twinbox's own binary")?;
    let disk = c.pmem.as_deref().context("a warm run has a root disk")?;
    Ok(Key::new(&[
        (
            "format",
            format!(
                "state {} machine {} vcpu {} mailbox {}",
                snapshot::file::VERSION,
                snapshot::machine::VERSION,
                snapshot::vcpu::VERSION,
                twinbox_vmm::mailbox::VERSION
            ),
        ),
        (
            "vmm",
            format!("{} {}", env!("CARGO_PKG_VERSION"), fingerprint(&exe)?),
        ),
        ("hypervisor", format!("{:?}", hypervisor::detect_kind())),
        ("kernel", fingerprint(kernel)?),
        ("init", fingerprint(init)?),
        ("image", w.image_id.clone()),
        ("disk", fingerprint(disk)?),
        ("cmdline", c.cmdline.clone()),
        ("memory", c.memory.to_string()),
        ("vcpus", c.vcpus.to_string()),
        ("vsock", if c.vsock.is_some() { "on" } else { "off" }.into()),
    ]))
}

/// What a warm run did, for `twinbox bench` and the timings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Booted, no snapshot involved.
    Cold,
    /// Booted to the ready mark, saved a snapshot, restored from it.
    Made,
    /// Restored from a snapshot that was there.
    Warm,
}

impl Start {
    fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Made => "made",
            Start::Warm => "warm",
        }
    }
}

/// What making a snapshot gave.
pub enum Made {
    /// The snapshot's directory, and how long the boot and the save took
    /// (ms).
    Saved(PathBuf, f64, f64),
    /// The guest stopped before it was ready (init failed, the time limit
    /// passed): that is the run's outcome, booting again would end the same.
    Stopped(Box<vm::Outcome>),
}

/// Boots `p`'s guest to its ready mark and saves it as the snapshot of
/// `key`.
pub fn make_snapshot(p: &Prepared, key: &Key, w: &Workload) -> Result<Made> {
    let mut c = p.config.clone();
    c.snapshot = Snapshot::Take;
    let t0 = std::time::Instant::now();
    let mut o = vm::run(&c, Box::new(std::io::stdout()))?;
    let boot_ms = t0.elapsed().as_secs_f64() * 1e3;
    let Some(mut captured) = o.captured.take() else {
        return Ok(Made::Stopped(Box::new(o)));
    };
    let tmp = crate::snapshots::temp(key)?;
    let saved = snapshot::dir::save(&tmp, &key.text, &mut captured);
    drop(captured);
    let saved = match saved {
        Ok(s) => s,
        Err(e) => {
            let _ = crate::snapshots::remove(&tmp);
            return Err(e).context("saving the snapshot");
        }
    };
    let meta = Meta {
        image: w.image.clone(),
        image_id: w.image_id.clone(),
        kernel: p.kernel.display().to_string(),
        memory: c.memory,
        vcpus: c.vcpus,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        save_ms: saved.took.as_secs_f64() * 1e3,
        boot_ms,
        key: key.text.clone(),
    };
    let dir = crate::snapshots::publish(&tmp, key, &meta)?;
    Ok(Made::Saved(dir, boot_ms, meta.save_ms))
}

impl VmBackend {
    /// Runs `w`, warm when it can be: restored from its snapshot, or booted
    /// to the ready mark, saved, then restored; a snapshot that cannot be
    /// used is removed (with a one-line notice) and the run boots.
    fn run_vm(&self, w: &Workload) -> Result<(vm::Outcome, Prepared, Start)> {
        let mut p = self.prepare(w)?;
        // The file servers live as long as this call (their parent-death
        // signal follows this thread).
        let (_servers, _tmp) = self.file_servers(&mut p.config)?;
        let Some(key) = p.key.clone() else {
            let o = vm::run(&p.config, self.console())?;
            return Ok((o, p, Start::Cold));
        };
        if let Some(why) = crate::snapshots::broken(&key) {
            eprintln!("twinbox: booting (a snapshot of this VM could not be restored here: {why}; `twinbox snapshot prune` to try again)");
            let o = vm::run(&p.config, self.console())?;
            return Ok((o, p, Start::Cold));
        }
        let t0 = std::time::Instant::now();
        let mut start = Start::Warm;
        let mut dir = crate::snapshots::entry(&key);
        if !dir.is_dir() {
            match make_snapshot(&p, &key, w) {
                Ok(Made::Saved(d, _, _)) => {
                    dir = d;
                    start = Start::Made;
                }
                Ok(Made::Stopped(o)) => return Ok((*o, p, Start::Cold)),
                Err(e) => {
                    // The VMM cannot take one here (no split irqchip, a
                    // state KVM will not give): do not try in every run.
                    if matches!(e.downcast_ref::<vm::Error>(), Some(vm::Error::Snapshot(_))) {
                        crate::snapshots::mark_broken(&key, &format!("{e:#}"));
                    }
                    eprintln!("twinbox: warning: no snapshot ({e:#}); booting instead");
                    let o = vm::run(&p.config, self.console())?;
                    return Ok((o, p, Start::Cold));
                }
            }
        }
        let mut c = p.config.clone();
        c.snapshot = Snapshot::Restore {
            dir: dir.clone(),
            key: key.text.clone(),
        };
        // The time limit is the run's, snapshot making included.
        c.timeout = c.timeout.map(|t| t.saturating_sub(t0.elapsed()));
        match vm::run(&c, self.console()) {
            Ok(o) => Ok((o, p, start)),
            Err(e) => {
                let unusable = matches!(e, vm::Error::Snapshot(_));
                let why = format!("{:#}", anyhow::Error::from(e));
                if start == Start::Made && unusable {
                    // Made this moment and refused at once: this host
                    // cannot restore this VM; do not make it again.
                    let _ = crate::snapshots::remove(&dir);
                    crate::snapshots::mark_broken(&key, &why);
                    eprintln!(
                        "twinbox: warning: the snapshot just made cannot be restored here ({why}); this VM boots from now on"
                    );
                } else if unusable {
                    let _ = crate::snapshots::remove(&dir);
                    eprintln!(
                        "twinbox: warning: snapshot {} is unusable ({why}); removed it, booting instead",
                        key.hash()
                    );
                } else {
                    eprintln!(
                        "twinbox: warning: restoring snapshot {} failed ({why}); booting instead",
                        key.hash()
                    );
                }
                let o = vm::run(&p.config, self.console())?;
                Ok((o, p, Start::Cold))
            }
        }
    }
}

impl VmBackend {
    /// Starts one virtiofsd per volume and gives the VM its shares; the
    /// servers (stopped and their sockets removed when dropped) and the
    /// temporary directory of their sockets, if one was made.
    fn file_servers(
        &self,
        c: &mut VmConfig,
    ) -> Result<(
        Vec<twinbox_vmm::virtiofsd::Virtiofsd>,
        Option<tempfile::TempDir>,
    )> {
        if self.volumes.is_empty() {
            return Ok((Vec::new(), None));
        }
        let (dir, tmp) = match &self.fs_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("twinbox-fs-")
                    .tempdir()
                    .context("a directory for the file servers' sockets")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut servers = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let socket = dir.join(format!("fs{i}.sock"));
            let mut o = twinbox_vmm::virtiofsd::Options::new(&v.source, &socket);
            o.read_only = v.readonly;
            let s = twinbox_vmm::virtiofsd::spawn(&o)
                .with_context(|| format!("starting the file server of {}", v.source.display()))?;
            servers.push(s);
            c.shares.push(twinbox_vmm::config::ShareConfig {
                tag: share_tag(i),
                socket,
            });
        }
        Ok((servers, tmp))
    }
}

impl Backend for VmBackend {
    fn run(&self, w: &Workload) -> Result<i32> {
        let (o, p, start) = self.run_vm(w)?;
        if let (Some(out), Some(prof)) = (&self.profile, &o.profile) {
            write_profile(out, prof, &p.kernel)?;
        }
        if let Some(path) = std::env::var_os("TWINBOX_TIMINGS") {
            record_timings(&path, &o, p.root, start.name());
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
        run_archive(
            File::create(&out)?,
            &init,
            b".twinbox/spec.json",
            br#"{"argv":["true"]}"#,
        )?;
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
