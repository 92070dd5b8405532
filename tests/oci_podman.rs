//! twinbox-runtime under Podman: rootful Podman with storage, run and
//! temporary directories of its own (the vfs driver, cgroupfs, file
//! events, no network), `--runtime` the twinbox-runtime link, so conmon
//! drives it; the busybox base image `podman import`ed. The verbs: `run
//! --rm` (exit code, stdout and stderr apart, `-e -w -u`, Podman's
//! capability set and seccomp profile, a missing program's 127, `-t`,
//! `-v`), `run -d` + `exec` + `logs` + `stop` + `rm`. Afterwards no
//! runtime state, cgroup or process of ours is left, and the directories
//! are removed whatever happened.
//!
//! Podman's default rlimits (nofile and nproc of 1048576 and 4194304) are
//! above this sandbox's hard limits, and raising a hard limit needs
//! CAP_SYS_RESOURCE, which root lacks here: runc and twinbox-runtime both
//! refuse them with EPERM. The test's containers.conf therefore sets no
//! default ulimits, and the boxes keep the host's.
//!
//! Skipped (with the reason printed) without root or without podman and
//! conmon (`scripts/bootstrap` installs podman).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pty::Pty;
use common::{code, stderr, stdout, Env};

const IMAGE: &str = "localhost/twinbox-podman-test-busybox";
/// What a detached container's command carries, to find its processes.
const MARKER: &str = "tb-podman-marker";

/// Podman's private directories, cleaned up on drop.
struct Podman {
    dir: PathBuf,
    runtime: String,
}

impl Podman {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args);
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// `podman run` with twinbox-runtime and no network.
    fn run(&self, args: &[&str]) -> Output {
        let mut v = vec!["run", "--runtime", &self.runtime, "--network", "none"];
        v.extend_from_slice(args);
        self.podman(&v)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
        common::unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (rootful podman)".into());
    }
    for tool in ["podman", "conmon"] {
        if !common::on_path(tool) {
            return Some(format!("{tool} is not installed (apt-get install podman)"));
        }
    }
    None
}

/// What of the containers `ids` may be left: twinbox-runtime's state
/// (Podman gives the runtime the root `/run/<its name>`), their cgroups
/// under Podman's cgroupfs parent, processes with the marker.
fn leftovers(ids: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for id in ids {
        let state = Path::new("/run/twinbox-runtime").join(id);
        if state.exists() {
            v.push(format!("state {}", state.display()));
        }
        for h in common::cgroup_hierarchies() {
            let g = h.join("libpod_parent").join(format!("libpod-{id}"));
            if g.exists() {
                v.push(format!("cgroup {}", g.display()));
            }
        }
    }
    v.extend(
        common::processes_with(MARKER)
            .iter()
            .map(|p| format!("process {p}")),
    );
    v
}

#[test]
fn podman_runs_containers_with_twinbox_runtime() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    if !out.status.success() {
        eprintln!("skipped: no busybox base image: {}", stderr(&out));
        return;
    }
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let runtime = bin.join("twinbox-runtime");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_twinbox"), &runtime).expect("link");
    let dir = tempfile::Builder::new()
        .prefix("tbp")
        .tempdir_in("/tmp")
        .expect("podman dir")
        .keep();
    for d in ["root", "run", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("podman dirs");
    }
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n",
    )
    .expect("containers.conf");
    let p = Podman {
        dir: dir.clone(),
        runtime: runtime.to_string_lossy().into_owned(),
    };

    // The image: the base rootfs, tarred and imported.
    let rootfs = env.home().join("images/busybox@latest/rootfs");
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let import = p
        .command(&["import", "-", IMAGE])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("podman import");
    assert!(tar.wait().is_ok_and(|s| s.success()), "tar of the rootfs");
    assert!(import.status.success(), "import: {}", stderr(&import));

    // Exit code, stdout and stderr apart; -e, -w, -u.
    let o = p.run(&["--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "out");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));
    let o = p.run(&[
        "--rm",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g",
    ]);
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["bar", "/tmp", "1000", "1000"],
        "{}",
        stderr(&o)
    );
    // Podman's seccomp profile and capability set are in force.
    let o = p.run(&[
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "grep -E '^(Seccomp|CapBnd):' /proc/self/status",
    ]);
    let s = stdout(&o);
    assert!(s.contains("Seccomp:\t2"), "{s} {}", stderr(&o));
    assert!(s.contains("CapBnd:\t00000000a80425fb"), "{s}");
    // A missing program is Podman's 127.
    let o = p.run(&["--rm", IMAGE, "/no/such/program"]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("executable file not found"),
        "{}",
        stderr(&o)
    );

    // -t: a terminal in the box.
    let mut pty = Pty::spawn(
        p.command(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            &p.runtime,
            "--network",
            "none",
            IMAGE,
            "tty",
        ]),
        24,
        80,
    )
    .expect("podman run -t");
    let t = Duration::from_secs(60);
    pty.expect("/dev/pts/0", t).expect("a tty in the box");
    assert_eq!(pty.wait(t).expect("podman run -t ends"), 0);

    // -v: a host directory, read and written.
    let vol = dir.join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("in"), "from-host").expect("in");
    let spec = format!("{}:/data", vol.display());
    let o = p.run(&[
        "--rm",
        "-v",
        &spec,
        IMAGE,
        "sh",
        "-c",
        "cat /data/in; echo from-box > /data/out",
    ]);
    assert_eq!(stdout(&o).trim(), "from-host", "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(vol.join("out"))
            .unwrap_or_default()
            .trim(),
        "from-box"
    );

    // -d, exec, logs, stop, rm.
    let o = p.run(&[
        "-d",
        "--name",
        "tb-podman-d",
        IMAGE,
        "sh",
        "-c",
        "echo started; while :; do sleep 1; done",
        MARKER,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    // It is twinbox-runtime's container: its state file is ours (runc's
    // has no `pid_start`).
    let state = Path::new("/run/twinbox-runtime")
        .join(&id)
        .join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap_or_default()).unwrap_or_default();
    assert!(state["pid_start"].is_u64() && state["id"] == *id, "{state}");
    let o = p.podman(&["exec", "tb-podman-d", "sh", "-c", "echo in-exec; exit 7"]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "in-exec");
    let o = p.podman(&["logs", "tb-podman-d"]);
    assert_eq!(stdout(&o).trim(), "started", "{}", stderr(&o));
    let o = p.podman(&["stop", "-t", "1", "tb-podman-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = p.podman(&["rm", "tb-podman-d"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Nothing of ours is left.
    let ids = vec![id];
    let t0 = Instant::now();
    let mut left = leftovers(&ids);
    while !left.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers(&ids);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(p);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts left under {}",
        dir.display()
    );
}
