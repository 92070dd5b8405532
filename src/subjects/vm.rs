//! The VM subject of the benchmark: `twinbox run --isolation vm`, the same
//! image in a microVM with our kernel and init. On a PVM host (a software
//! hypervisor) a Linux guest boots in [`PVM_BOOT`], so the benchmark runs it
//! [`SLOW_VM_RUNS`] times for startup, once idle, once with a few boxes for
//! density and once for the isolation probe instead of in every scenario: [`slow_host`] says so, and
//! [`Skipped`] stands in for it where it is not run.

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
}

impl TwinboxVm {
    fn with(&self, extra: &[&str], argv: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("TWINBOX_HOME", &self.home)
            .args(["run", "--isolation", "vm", "-m", "256m", "--cpus", "1"])
            .args(extra)
            .arg(&self.image)
            .args(argv);
        c
    }
}

/// How long a Linux guest takes to boot on a PVM host (measured with
/// `twinbox bench boot`; README, "A Linux guest on this PVM host").
pub const PVM_BOOT: &str = "about 20 s";

/// Startup runs of the VM on a slow host (instead of the plan's 60).
pub const SLOW_VM_RUNS: usize = 3;
/// VMs up at once for density on a slow host (instead of 30).
pub const SLOW_VM_DENSITY: usize = 3;

/// Why a Linux guest is too slow here to run in every scenario, if it is;
/// `quick` for `bench --quick`, which runs no Linux guest there.
pub fn slow_host(quick: bool) -> Option<String> {
    matches!(hypervisor::detect_kind(), Kind::Pvm { .. }).then(|| {
        if quick {
            format!("not in --quick: a Linux guest boots in {PVM_BOOT} on this PVM host (software hypervisor)")
        } else {
            format!("a Linux guest boots in {PVM_BOOT} on this PVM host (software hypervisor), so the VM runs only for startup ({SLOW_VM_RUNS} runs), idle memory and density (a few boxes) and the isolation probe")
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
        "twinbox-vm".into()
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
            .arg(&self.image)
            .args(argv);
        Some(c)
    }
    fn version(&self) -> Option<String> {
        Some(format!("twinbox {}", env!("CARGO_PKG_VERSION")))
    }
}
