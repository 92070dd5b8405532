//! The benchmark's lab: everything the subjects need, made once per run.
//! It moves the benchmark into a private mount namespace without the empty
//! cgroup2 mount of a hybrid host (crun refuses that layout; the host is
//! untouched), makes the probe image (busybox plus the static isolation
//! probe, so every box runs the same rootfs), writes the null guests, and
//! holds the temporary directory for bundles and runtime state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use twinbox_container::cgroups::layout::{self, Layout};
use twinbox_images::{Reference, Store};

use super::container::{Native, OciRuntime, TwinboxContainer, Unshare};
use super::floor::{Firecracker, QemuMicrovm, TwinboxVmm};
use super::vm::TwinboxVm;

/// The probe image's name.
pub const PROBE_IMAGE: &str = "twinbox-probe:latest";

/// Gives this process a private mount namespace without the v2 mount of a
/// hybrid layout. Must run before any thread exists (the kernel refuses a
/// new mount namespace to a multi-threaded process).
pub fn hide_hybrid_v2() -> Result<Option<String>> {
    let Layout::Hybrid { v2_mount, .. } = layout::detect()? else {
        return Ok(None);
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("a private mount namespace for the benchmark")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    nix::mount::umount2(&v2_mount, nix::mount::MntFlags::MNT_DETACH).with_context(|| {
        format!(
            "unmounting {} in the benchmark's namespace",
            v2_mount.display()
        )
    })?;
    Ok(Some(format!(
        "This host's cgroups are hybrid and crun refuses that layout, so the benchmark runs in a private mount namespace with {} unmounted: every subject sees pure v1 (the host is untouched).",
        v2_mount.display()
    )))
}

/// Finds the static probe: `$TWINBOX_PROBE`, where `scripts/bootstrap`
/// builds it, or beside the twinbox binary.
pub fn find_probe() -> Result<PathBuf> {
    crate::host::find_static("twinbox-probe", "TWINBOX_PROBE")
}

/// Everything a benchmark run drives.
pub struct Lab {
    /// Bundles, state, null guests; removed on drop.
    pub dir: tempfile::TempDir,
    /// Note for the report, if the environment was changed.
    pub note: Option<String>,
    /// Store home.
    pub home: PathBuf,
    /// Rootfs of the probe image.
    pub rootfs: PathBuf,
    /// The twinbox binary the subjects run: a copy of this one in `dir`.
    pub exe: PathBuf,
}

/// Copies the twinbox binary, with the guest init beside it if there is
/// one, into `dir` and returns the copy. Subjects run the copy because PSS
/// splits a page among the processes that map it: run from the benchmark's
/// own binary, a twinbox box or VMM would share its code pages with the
/// benchmark process and look lighter than a monitor of another binary.
fn copy_binaries(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the twinbox binary")?;
    let copy = dir.join("twinbox");
    std::fs::copy(&exe, &copy).with_context(|| format!("copying {}", exe.display()))?;
    // Without an init the VM subject says why it cannot run.
    if let Ok(init) = crate::host::find_static("twinbox-init", "TWINBOX_INIT") {
        std::fs::copy(&init, dir.join("twinbox-init"))
            .with_context(|| format!("copying {}", init.display()))?;
    }
    Ok(copy)
}

impl Lab {
    /// Prepares the lab. Call before any thread is started.
    pub fn prepare() -> Result<Self> {
        let note = hide_hybrid_v2()?;
        let home = Store::default_home();
        let store = Store::open(&home)?;
        let base = store
            .get(&Reference::parse(twinbox_images::base::NAME)?)
            .context("the busybox base image (make it with `twinbox image build-base`)")?;
        let probe = find_probe()?;
        let image = twinbox_images::derive::derive(
            &store,
            &base,
            PROBE_IMAGE,
            &[("probe", probe.as_path(), 0o755)],
        )
        .context("making the probe image")?;
        let dir = tempfile::tempdir()?;
        let exe = copy_binaries(dir.path())?;
        Ok(Self {
            dir,
            note,
            rootfs: image.rootfs(),
            home,
            exe,
        })
    }

    /// Native execution from the image's rootfs.
    pub fn native(&self) -> Native {
        Native {
            rootfs: self.rootfs.clone(),
        }
    }

    /// The namespace floor.
    pub fn unshare(&self) -> Unshare {
        Unshare {
            rootfs: self.rootfs.clone(),
        }
    }

    /// twinbox's container, recording its timings to `timings` if given.
    pub fn container(&self, timings: Option<PathBuf>) -> TwinboxContainer {
        TwinboxContainer {
            exe: self.exe.clone(),
            image: PROBE_IMAGE.into(),
            home: self.home.clone(),
            timings,
        }
    }

    /// twinbox's VM.
    /// The VM, warm (restored from its snapshot) or `cold` (booted).
    pub fn vm(&self, cold: bool) -> TwinboxVm {
        TwinboxVm {
            exe: self.exe.clone(),
            image: PROBE_IMAGE.into(),
            home: self.home.clone(),
            cold,
        }
    }

    /// An OCI runtime.
    pub fn oci(&self, runtime: &'static str) -> Result<OciRuntime> {
        Ok(OciRuntime::new(runtime, &self.rootfs, self.dir.path())?)
    }

    /// twinbox-runtime, twinbox's OCI runtime, on the same bundles as crun
    /// and runc: a link by that name to the twinbox copy the subjects run.
    pub fn oci_twinbox(&self) -> Result<OciRuntime> {
        let link = self.dir.path().join("twinbox-runtime");
        if !link.exists() {
            std::os::unix::fs::symlink(&self.exe, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(OciRuntime::with_binary(
            "twinbox-runtime",
            Some(link),
            &self.rootfs,
            self.dir.path(),
        )?)
    }

    /// The monitors on the null guest (exit and idle variants written here).
    pub fn floor(
        &self,
        firecracker: Option<PathBuf>,
    ) -> Result<(TwinboxVmm, QemuMicrovm, Firecracker)> {
        use twinbox_vmm::null_guest::{elf, Program};
        let kernel = self.dir.path().join("null-guest.elf");
        let spin = self.dir.path().join("null-guest-idle.elf");
        std::fs::write(&kernel, elf(Program::Exit(0)))?;
        std::fs::write(&spin, elf(Program::Idle))?;
        let ours = TwinboxVmm {
            exe: self.exe.clone(),
            kernel: kernel.clone(),
            spin: Some(spin.clone()),
        };
        let mut qemu = QemuMicrovm::find(&kernel);
        qemu.spin = Some(spin.clone());
        let fc = Firecracker::new(firecracker, &kernel, Some(&spin), self.dir.path())?;
        Ok((ours, qemu, fc))
    }
}
