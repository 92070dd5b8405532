//! The VM subject of the benchmark: `twinbox run --isolation vm`, the same
//! image in a microVM with our kernel and init. On a PVM host a Linux guest
//! cannot run user programs (see the README), so the subject reports that
//! instead of failing every run.

use std::path::PathBuf;
use std::process::Command;

use twinbox_bench::{Idle, Subject};
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

impl Subject for TwinboxVm {
    fn name(&self) -> String {
        "twinbox-vm".into()
    }
    fn unavailable(&self) -> Option<String> {
        match hypervisor::detect_kind() {
            Kind::Pvm { .. } => Some(
                "this host's /dev/kvm is PVM, where a stock Linux guest cannot run user programs (its first system call faults; README, \"A Linux guest on this PVM host\")".into(),
            ),
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
            command: self.with(&[], &["sleep", "1000"]),
            workload_exe: None,
        })
    }
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let mut argv = vec!["/probe"];
        argv.extend_from_slice(args);
        Some(self.with(&["--timeout", "120s"], &argv))
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
