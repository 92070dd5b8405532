//! The container subjects of the benchmark: twinbox's launcher, the
//! process-start floor (native), the namespace floor (`unshare`), and the
//! OCI runtimes crun, runc (and runsc when installed) on bundles made from
//! the same image rootfs.
//!
//! Parity: every box runs from the same rootfs (the busybox image with the
//! isolation probe added), with new pid, net, ipc, uts and mount
//! namespaces, the same memory/pids/CPU limits, the same capability set,
//! masked and read-only paths, and the same seccomp deny list (given to the
//! OCI runtimes in OCI form, which they compile at each start). One
//! difference is in their favour: the OCI bundle's root is the image rootfs
//! itself, read-only, while twinbox also stacks a writable overlay on a
//! tmpfs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::json;
use twinbox_bench::{Idle, Subject};
use twinbox_container::{caps, mounts, seccomp};

use super::first_line;
use crate::host::on_path;

/// The limits every box gets in the benchmark.
pub const MEMORY: u64 = 256 << 20;
/// Most tasks.
pub const PIDS: u64 = 1024;
/// CPUs.
pub const CPUS: f64 = 1.0;

/// The workload run directly (the process-start floor), and the probe run
/// on the host (the reference every box is compared with).
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
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let mut c = Command::new(self.rootfs.join("probe"));
        c.args(args);
        Some(c)
    }
}

/// `unshare --fork --pid --mount --uts --ipc --net`: the namespaces alone.
pub struct Unshare {
    /// Host path of the image's rootfs.
    pub rootfs: PathBuf,
}

impl Unshare {
    fn with(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--fork", "--pid", "--mount", "--uts", "--ipc", "--net"]);
        match argv.split_first() {
            Some((&"/probe", rest)) => {
                c.arg(self.rootfs.join("probe")).args(rest);
            }
            _ => {
                c.arg(self.rootfs.join("bin/busybox")).args(argv);
            }
        }
        c
    }
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
        self.with(&["true"])
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.with(&["sleep", "1000"]),
            workload_exe: Some("busybox".into()),
            ready: None,
        })
    }
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let argv = super::probe_argv(args);
        Some(self.with(&argv))
    }
    fn version(&self) -> Option<String> {
        first_line(Command::new("unshare").arg("--version"))
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
    /// The command with the workload's argv, under the benchmark's limits.
    pub fn command_with(&self, argv: &[&str]) -> Command {
        self.command_limited(argv, MEMORY, PIDS, None)
    }

    fn command_limited(
        &self,
        argv: &[&str],
        memory: u64,
        pids: u64,
        timeout: Option<&str>,
    ) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("TWINBOX_HOME", &self.home);
        if let Some(t) = &self.timings {
            c.env("TWINBOX_TIMINGS", t);
        }
        c.args(["run", "--isolation", "container", "-m"])
            .arg(memory.to_string())
            .arg("--pids-limit")
            .arg(pids.to_string())
            .arg("--cpus")
            .arg(CPUS.to_string());
        if let Some(t) = timeout {
            c.args(["--timeout", t]);
        }
        c.arg(&self.image).args(argv);
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
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.command_with(&["sleep", "1000"]),
            workload_exe: Some("busybox".into()),
            ready: None,
        })
    }
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let argv = super::probe_argv(args);
        Some(self.command_with(&argv))
    }
    fn limited(&self, argv: &[&str]) -> Option<Command> {
        Some(self.command_limited(argv, 64 << 20, 64, Some("5s")))
    }
    fn version(&self) -> Option<String> {
        Some(format!("twinbox {}", env!("CARGO_PKG_VERSION")))
    }
}

/// An OCI runtime (crun, runc, runsc, or twinbox-runtime, the twinbox
/// binary by that name) on bundles of the same rootfs, one bundle per
/// distinct argv, written on first use.
pub struct OciRuntime {
    /// `crun`, `runc`, `runsc` or `twinbox-runtime`.
    pub runtime: &'static str,
    /// Its binary, if found.
    pub binary: Option<PathBuf>,
    rootfs: PathBuf,
    dir: PathBuf,
    state: PathBuf,
    bundles: Mutex<HashMap<Vec<String>, PathBuf>>,
    seq: AtomicU64,
}

impl OciRuntime {
    /// Finds `runtime` on PATH; bundles of `rootfs` go under `dir`.
    pub fn new(runtime: &'static str, rootfs: &Path, dir: &Path) -> std::io::Result<Self> {
        Self::with_binary(runtime, on_path(runtime), rootfs, dir)
    }

    /// `runtime` at `binary` (twinbox-runtime: a link to the twinbox copy
    /// the subjects run).
    pub fn with_binary(
        runtime: &'static str,
        binary: Option<PathBuf>,
        rootfs: &Path,
        dir: &Path,
    ) -> std::io::Result<Self> {
        let state = dir.join(format!("{runtime}-state"));
        std::fs::create_dir_all(&state)?;
        Ok(Self {
            runtime,
            binary,
            rootfs: rootfs.to_path_buf(),
            dir: dir.to_path_buf(),
            state,
            bundles: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    fn bundle(&self, argv: &[&str]) -> PathBuf {
        let key: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut map = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.len();
        map.entry(key)
            .or_insert_with(|| {
                let b = self.dir.join(format!("{}-bundle-{n}", self.runtime));
                let written = std::fs::create_dir_all(&b).and_then(|()| {
                    std::fs::write(
                        b.join("config.json"),
                        serde_json::to_vec_pretty(&bundle_config(&self.rootfs, argv))?,
                    )
                });
                if let Err(e) = written {
                    // The run then fails with the runtime's own message.
                    eprintln!("twinbox: writing the {} bundle: {e}", self.runtime);
                }
                b
            })
            .clone()
    }

    /// The command running `argv` in a fresh container.
    pub fn command_argv(&self, argv: &[&str]) -> Command {
        let bundle = self.bundle(argv);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("twinbox-bench-{}-{n}", std::process::id());
        let mut c = Command::new(self.binary.as_deref().unwrap_or(Path::new(self.runtime)));
        c.arg("--root").arg(&self.state);
        if self.runtime == "crun" {
            c.arg("--cgroup-manager=cgroupfs");
        }
        c.args(["run", "--bundle"]).arg(bundle).arg(id);
        c
    }
}

impl Subject for OciRuntime {
    fn name(&self) -> String {
        self.runtime.into()
    }
    fn unavailable(&self) -> Option<String> {
        self.binary.is_none().then(|| {
            if self.runtime == "runsc" {
                "runsc (gVisor) not found: Debian 12 does not package it; install it from gVisor's releases".into()
            } else {
                format!("{} not found (apt-get install {})", self.runtime, self.runtime)
            }
        })
    }
    fn command(&self) -> Command {
        self.command_argv(&["/bin/true"])
    }
    fn idle(&self) -> Option<Idle> {
        Some(Idle {
            command: self.command_argv(&["sleep", "1000"]),
            workload_exe: Some("busybox".into()),
            ready: None,
        })
    }
    fn probe(&self, args: &[&str]) -> Option<Command> {
        let argv = super::probe_argv(args);
        Some(self.command_argv(&argv))
    }
    fn version(&self) -> Option<String> {
        if self.runtime == "twinbox-runtime" {
            return Some(format!("twinbox-runtime {}", env!("CARGO_PKG_VERSION")));
        }
        first_line(Command::new(self.binary.as_deref()?).arg("--version"))
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
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=262144k"]}
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

    #[test]
    fn one_bundle_per_argv() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let rt = OciRuntime::new("crun", Path::new("/r"), d.path())?;
        let a = rt.bundle(&["/bin/true"]);
        let b = rt.bundle(&["sleep", "1"]);
        assert_ne!(a, b);
        assert_eq!(rt.bundle(&["/bin/true"]), a);
        assert!(a.join("config.json").is_file());
        Ok(())
    }
}
