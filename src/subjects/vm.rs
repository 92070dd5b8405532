//! The VM subjects of the benchmark: `twinbox run --isolation vm`, the same
//! image in a microVM with our kernel and init, warm (`twinbox-vm`,
//! restored from the snapshot the benchmark makes first) and cold
//! (`twinbox-vm-cold`, `--cold`: booted). On a PVM host (a software
//! hypervisor) a Linux guest boots in [`PVM_BOOT`], so the benchmark runs
//! the cold VM [`SLOW_VM_RUNS`] times for startup, once idle and with a few
//! boxes for density, and the warm one [`SLOW_WARM_RUNS`] times, once idle
//! and [`SLOW_WARM_DENSITY`] at once, instead of in every scenario:
//! [`slow_host`] says so, and [`Skipped`] stands in where they are not run.

use std::path::PathBuf;
use std::process::Command;

use twinbox_bench::{Idle, Ready, Subject};
use twinbox_vmm::hypervisor::{self, Kind};

/// `twinbox run --isolation vm IMAGE ...`.
pub struct TwinboxVm {
    /// The twinbox binary.
    pub exe: PathBuf,
    /// The image name.
    pub image: String,
    /// Store home.
    pub home: PathBuf,
    /// Boot (`--cold`) instead of restoring the snapshot.
    pub cold: bool,
}

impl TwinboxVm {
    fn with(&self, extra: &[&str], argv: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("TWINBOX_HOME", &self.home)
            .args(["run", "--isolation", "vm", "-m", "256m", "--cpus", "1"])
            .args(if self.cold { &["--cold"][..] } else { &[][..] })
            .args(extra)
            .arg(&self.image)
            .args(argv);
        c
    }
}

/// How long a Linux guest takes to boot on a PVM host (measured with
/// `twinbox bench boot`; README, "A Linux guest on this PVM host").
pub const PVM_BOOT: &str = "about 20 s";

/// Startup runs of the cold VM on a slow host (instead of the plan's 60).
pub const SLOW_VM_RUNS: usize = 3;
/// Cold VMs up at once for density on a slow host (instead of 30).
pub const SLOW_VM_DENSITY: usize = 3;
/// Startup runs of the warm VM on a slow host.
pub const SLOW_WARM_RUNS: usize = 20;
/// Warm VMs up at once for density on a slow host.
pub const SLOW_WARM_DENSITY: usize = 10;

/// Why a Linux guest is too slow here to run in every scenario, if it is;
/// `quick` for `bench --quick`, which runs no Linux guest there.
pub fn slow_host(quick: bool) -> Option<String> {
    matches!(hypervisor::detect_kind(), Kind::Pvm { .. }).then(|| {
        if quick {
            format!("not in --quick: a Linux guest boots in {PVM_BOOT} on this PVM host (software hypervisor)")
        } else {
            format!("a Linux guest boots in {PVM_BOOT} on this PVM host (software hypervisor), so the VMs run only for startup ({SLOW_WARM_RUNS} warm runs, {SLOW_VM_RUNS} cold), idle memory, density ({SLOW_WARM_DENSITY} warm, {SLOW_VM_DENSITY} cold at once) and the isolation probe (warm)")
        }
    })
}

/// A subject not run in a scenario, with the reason (it is reported, never
/// dropped).
pub struct Skipped {
    /// The subject's name.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Subject for Skipped {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn unavailable(&self) -> Option<String> {
        Some(self.reason.clone())
    }
    fn command(&self) -> Command {
        Command::new("false")
    }
}

impl Subject for TwinboxVm {
    fn name(&self) -> String {
        match self.cold {
            true => "twinbox-vm-cold".into(),
            false => "twinbox-vm".into(),
        }
    }
    fn unavailable(&self) -> Option<String> {
        match hypervisor::detect_kind() {
            _ if !std::path::Path::new("/dev/kvm").exists() => Some("no /dev/kvm".into()),
            _ if std::env::var_os("TWINBOX_KERNEL").is_none()
                && twinbox_images::kernel::find().is_none() =>
            {
                Some("no guest kernel: run `twinbox kernel build`".into())
            }
            _ => None,
        }
    }
    fn command(&self) -> Command {
        self.with(&[], &["/bin/true"])
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.with(&[], &["sh", "-c", "echo twinbox-idle-up; exec sleep 1000"]),
            workload_exe: None,
            // Up when the guest's shell runs, however long the boot took.
            ready: Some(Ready {
                line: "twinbox-idle-up".into(),
                within: std::time::Duration::from_secs(180),
            }),
        })
    }
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let argv = super::probe_argv(args);
        Some(self.with(&["--timeout", "400s"], &argv))
    }
    fn limited(&self, argv: &[&str]) -> Option<Command> {
        let mut c = Command::new(&self.exe);
        c.env("TWINBOX_HOME", &self.home)
            .args(["run", "--isolation", "vm", "-m", "64m", "--timeout", "5s"])
            .args(if self.cold { &["--cold"][..] } else { &[][..] })
            .arg(&self.image)
            .args(argv);
        Some(c)
    }
    fn version(&self) -> Option<String> {
        Some(format!("twinbox {}", env!("CARGO_PKG_VERSION")))
    }
}
