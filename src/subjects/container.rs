//! The container subjects of the benchmark: twinbox's launcher, the
//! process-start floor (native), the namespace floor (`unshare`), and the
//! OCI runtimes crun and runc on a bundle made from the same image rootfs.
//!
//! Parity: every box runs busybox `/bin/true` from the same rootfs, with
//! new pid, net, ipc, uts and mount namespaces, the same memory/pids/CPU
//! limits, the same capability set, masked and read-only paths, and the
//! same seccomp deny list (given to crun and runc in OCI form, which they
//! compile at each start). One difference is in their favour: the OCI
//! bundle's root is the image rootfs itself, read-only, while twinbox also
//! stacks a writable overlay on a tmpfs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use twinbox_bench::Subject;
use twinbox_container::{caps, mounts, seccomp};

use crate::host::on_path;

/// The limits every box gets in the benchmark.
pub const MEMORY: u64 = 256 << 20;
/// Most tasks.
pub const PIDS: u64 = 1024;
/// CPUs.
pub const CPUS: f64 = 1.0;

/// The workload: busybox's `true`, run directly (the process-start floor).
pub struct Native {
    /// Host path of the image's rootfs.
    pub rootfs: PathBuf,
}

impl Subject for Native {
    fn name(&self) -> String {
        "native".into()
    }
    fn command(&self) -> Command {
        let mut c = Command::new(self.rootfs.join("bin/busybox"));
        c.arg("true");
        c
    }
}

/// `unshare --fork --pid --mount --uts --ipc --net`: the namespaces alone.
pub struct Unshare {
    /// Host path of the image's rootfs.
    pub rootfs: PathBuf,
}

impl Subject for Unshare {
    fn name(&self) -> String {
        "unshare".into()
    }
    fn unavailable(&self) -> Option<String> {
        on_path("unshare")
            .is_none()
            .then(|| "unshare not found (util-linux)".into())
    }
    fn command(&self) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--fork", "--pid", "--mount", "--uts", "--ipc", "--net"])
            .arg(self.rootfs.join("bin/busybox"))
            .arg("true");
        c
    }
}

/// `twinbox run --isolation container` with the limits on.
pub struct TwinboxContainer {
    /// The twinbox binary.
    pub exe: PathBuf,
    /// The image name.
    pub image: String,
    /// Store home (TWINBOX_HOME) the image is in.
    pub home: PathBuf,
    /// Where the launcher appends its own timings (`$TWINBOX_TIMINGS`).
    pub timings: Option<PathBuf>,
}

impl TwinboxContainer {
    /// The command with the workload's argv.
    pub fn command_with(&self, argv: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("TWINBOX_HOME", &self.home);
        if let Some(t) = &self.timings {
            c.env("TWINBOX_TIMINGS", t);
        }
        c.args(["run", "--isolation", "container", "-m"])
            .arg(MEMORY.to_string())
            .arg("--pids-limit")
            .arg(PIDS.to_string())
            .arg("--cpus")
            .arg(CPUS.to_string())
            .arg(&self.image)
            .args(argv);
        c
    }
}

impl Subject for TwinboxContainer {
    fn name(&self) -> String {
        "twinbox-container".into()
    }
    fn command(&self) -> Command {
        self.command_with(&["/bin/true"])
    }
}

/// An OCI runtime (crun or runc) on a bundle of the same rootfs.
pub struct OciRuntime {
    /// `crun` or `runc`.
    pub runtime: &'static str,
    /// Its binary, if found.
    pub binary: Option<PathBuf>,
    /// The bundle directory (config.json).
    pub bundle: PathBuf,
    /// The runtime's state directory (--root).
    pub state: PathBuf,
    seq: AtomicU64,
}

impl OciRuntime {
    /// Finds `runtime` on PATH and writes its bundle for `argv` under `dir`.
    pub fn new(
        runtime: &'static str,
        rootfs: &Path,
        dir: &Path,
        argv: &[&str],
    ) -> std::io::Result<Self> {
        let bundle = dir.join(format!("{runtime}-bundle"));
        let state = dir.join(format!("{runtime}-state"));
        std::fs::create_dir_all(&bundle)?;
        std::fs::create_dir_all(&state)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&bundle_config(rootfs, argv))?,
        )?;
        Ok(Self {
            runtime,
            binary: on_path(runtime),
            bundle,
            state,
            seq: AtomicU64::new(0),
        })
    }

    /// The command for one run, with a fresh container id.
    pub fn command_named(&self, id: &str) -> Command {
        let mut c = Command::new(self.binary.as_deref().unwrap_or(Path::new(self.runtime)));
        c.arg("--root").arg(&self.state);
        if self.runtime == "crun" {
            c.arg("--cgroup-manager=cgroupfs");
        }
        c.args(["run", "--bundle"]).arg(&self.bundle).arg(id);
        c
    }
}

impl Subject for OciRuntime {
    fn name(&self) -> String {
        self.runtime.into()
    }
    fn unavailable(&self) -> Option<String> {
        self.binary.is_none().then(|| {
            format!(
                "{} not found (apt-get install {})",
                self.runtime, self.runtime
            )
        })
    }
    fn command(&self) -> Command {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.command_named(&format!("twinbox-bench-{}-{n}", std::process::id()))
    }
}

/// The OCI config.json of the benchmark's box.
pub fn bundle_config(rootfs: &Path, argv: &[&str]) -> serde_json::Value {
    let caps: Vec<&str> = caps::DEFAULT.iter().map(|(n, _)| *n).collect();
    let denied: Vec<&str> = seccomp::DENIED
        .iter()
        .filter(|d| d.name != "clone3")
        .map(|d| d.name)
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": caps, "ambient": []
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "twinbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "resources": {
                "memory": {"limit": MEMORY, "swap": MEMORY},
                "pids": {"limit": PIDS},
                "cpu": {"quota": (CPUS * 100_000.0) as u64, "period": 100_000}
            },
            "maskedPaths": mounts::MASKED,
            "readonlyPaths": mounts::READ_ONLY,
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_has_the_same_limits_and_profile() {
        let c = bundle_config(Path::new("/r"), &["/bin/true"]);
        assert_eq!(c["root"]["path"], "/r");
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], PIDS);
        assert_eq!(
            c["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(caps::DEFAULT.len())
        );
        let names = &c["linux"]["seccomp"]["syscalls"][0]["names"];
        assert!(names
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n == "keyctl")));
    }
}
