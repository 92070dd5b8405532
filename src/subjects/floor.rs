//! The monitors' floor: the null guest (no Linux) booted by twinbox's VMM,
//! QEMU's microvm machine and Firecracker, all with 1 vCPU and 128 MiB.
//! What is left is the cost of the monitor itself: process start, VM
//! creation, memory, vCPU start, the exits of the guest's port writes, and
//! tear-down.

use std::path::{Path, PathBuf};
use std::process::Command;

use twinbox_bench::{Idle, Subject};
use twinbox_vmm::hypervisor::{self, Kind};
use twinbox_vmm::null_guest::MARKER;

use super::first_line;
use crate::host::on_path;

/// twinbox's own VMM (`twinbox vmm boot`).
pub struct TwinboxVmm {
    /// The twinbox binary.
    pub exe: PathBuf,
    /// The null guest ELF.
    pub kernel: PathBuf,
    /// A null guest that halts forever (for an idle VM), if written.
    pub spin: Option<PathBuf>,
}

impl TwinboxVmm {
    fn command_for(&self, kernel: &Path) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(["vmm", "boot", "-m", "128m", "--cpus", "1"])
            .arg(kernel);
        c
    }
}

impl Subject for TwinboxVmm {
    fn name(&self) -> String {
        "twinbox-vmm".into()
    }
    fn command(&self) -> Command {
        self.command_for(&self.kernel)
    }
    fn marker(&self) -> Option<String> {
        Some(MARKER.into())
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.command_for(self.spin.as_deref()?),
            workload_exe: None,
            ready: None,
        })
    }
    fn version(&self) -> Option<String> {
        Some(format!("twinbox {}", env!("CARGO_PKG_VERSION")))
    }
}

/// QEMU's microvm machine, with only a serial port and the debug-exit device
/// on the null guest's exit port.
pub struct QemuMicrovm {
    /// qemu-system-x86_64, if found.
    pub qemu: Option<PathBuf>,
    /// The null guest ELF (with its PVH note).
    pub kernel: PathBuf,
    /// A null guest that halts forever (for an idle VM), if written.
    pub spin: Option<PathBuf>,
}

impl QemuMicrovm {
    /// Finds qemu-system-x86_64 on PATH.
    pub fn find(kernel: &Path) -> Self {
        Self {
            qemu: on_path("qemu-system-x86_64"),
            kernel: kernel.to_path_buf(),
            spin: None,
        }
    }

    /// The CPU model: `host` on hardware KVM; on PVM, QEMU 7.2 aborts
    /// setting the MSRs of `-cpu host`, and `qemu64` works.
    pub fn cpu_model() -> &'static str {
        match hypervisor::detect_kind() {
            Kind::Pvm { .. } => "qemu64",
            _ => "host",
        }
    }
}

impl Subject for QemuMicrovm {
    fn name(&self) -> String {
        "qemu-microvm".into()
    }
    fn unavailable(&self) -> Option<String> {
        self.qemu
            .is_none()
            .then(|| "qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into())
    }
    fn command(&self) -> Command {
        self.command_for(&self.kernel)
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.command_for(self.spin.as_deref()?),
            workload_exe: None,
            ready: None,
        })
    }
    fn version(&self) -> Option<String> {
        first_line(Command::new(self.qemu.as_deref()?).arg("--version"))
    }
    fn marker(&self) -> Option<String> {
        Some(MARKER.into())
    }
    /// isa-debug-exit exits with `(value << 1) | 1`; the null guest writes 0.
    fn expected_status(&self) -> i32 {
        1
    }
}

impl QemuMicrovm {
    fn command_for(&self, kernel: &Path) -> Command {
        let mut c = Command::new(
            self.qemu
                .as_deref()
                .unwrap_or(Path::new("qemu-system-x86_64")),
        );
        c.args([
            "-M",
            "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
            "-enable-kvm",
            "-cpu",
            Self::cpu_model(),
            "-m",
            "128m",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=1",
            "-kernel",
        ])
        .arg(kernel);
        c
    }
}

/// Firecracker, when given with `--firecracker PATH` (never installed by
/// twinbox).
pub struct Firecracker {
    /// The firecracker binary.
    pub exe: Option<PathBuf>,
    /// Its config file (boot source: the null guest; 1 vCPU, 128 MiB).
    pub config: PathBuf,
    /// The same with a null guest that halts forever, if written.
    pub idle_config: Option<PathBuf>,
}

impl Firecracker {
    /// Writes the config for `kernel` (and for `spin`, the idle guest, if
    /// given) into `dir`.
    pub fn new(
        exe: Option<PathBuf>,
        kernel: &Path,
        spin: Option<&Path>,
        dir: &Path,
    ) -> std::io::Result<Self> {
        let config = Self::write_config(kernel, &dir.join("firecracker.json"))?;
        let idle_config = match spin {
            Some(s) => Some(Self::write_config(s, &dir.join("firecracker-idle.json"))?),
            None => None,
        };
        Ok(Self {
            exe,
            config,
            idle_config,
        })
    }

    /// `drives` may be empty but not absent: Firecracker 1.16 refuses the
    /// file without it.
    fn write_config(kernel: &Path, path: &Path) -> std::io::Result<PathBuf> {
        let json = serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": ""},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        });
        std::fs::write(path, json.to_string())?;
        Ok(path.to_path_buf())
    }

    fn command_for(&self, config: &Path) -> Command {
        let mut c = Command::new(self.exe.as_deref().unwrap_or(Path::new("firecracker")));
        c.args(["--no-api", "--level", "Error", "--config-file"])
            .arg(config);
        c
    }
}

impl Subject for Firecracker {
    fn name(&self) -> String {
        "firecracker".into()
    }
    fn unavailable(&self) -> Option<String> {
        match &self.exe {
            None => Some("not given (--firecracker PATH)".into()),
            Some(p) if !p.is_file() => Some(format!("{} does not exist", p.display())),
            Some(_) => None,
        }
    }
    fn command(&self) -> Command {
        self.command_for(&self.config)
    }
    fn marker(&self) -> Option<String> {
        Some(MARKER.into())
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.command_for(self.idle_config.as_deref()?),
            workload_exe: None,
            ready: None,
        })
    }
    fn version(&self) -> Option<String> {
        first_line(Command::new(self.exe.as_deref()?).arg("--version"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Firecracker 1.16's `--config-file` needs all three sections
    /// (without `drives` every run exited 1), and the idle config differs
    /// only in its kernel.
    #[test]
    fn firecracker_configs_have_what_firecracker_requires() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let fc = Firecracker::new(
            None,
            Path::new("/k/exit.elf"),
            Some(Path::new("/k/idle.elf")),
            dir.path(),
        )?;
        let read = |p: &Path| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
            Ok(serde_json::from_slice(&std::fs::read(p)?)?)
        };
        let run = read(&fc.config)?;
        assert_eq!(run["boot-source"]["kernel_image_path"], "/k/exit.elf");
        assert_eq!(run["drives"], serde_json::json!([]));
        assert_eq!(run["machine-config"]["vcpu_count"], 1);
        assert_eq!(run["machine-config"]["mem_size_mib"], 128);
        let idle = read(fc.idle_config.as_deref().ok_or("no idle config")?)?;
        assert_eq!(idle["boot-source"]["kernel_image_path"], "/k/idle.elf");
        assert_eq!(idle["machine-config"], run["machine-config"]);
        assert!(fc.unavailable().is_some());
        Ok(())
    }
}
