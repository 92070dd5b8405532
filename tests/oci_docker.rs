//! twinbox-runtime under Docker: a private dockerd (its own data root,
//! exec root, socket, bridge and daemon.json registering the runtime
//! "twinbox" as a link to the twinbox binary), the busybox base image
//! `docker import`ed, and the verbs people type: `run --rm` (exit code,
//! output, -e, -w, -u), `-t`, `-v`, `-d` + `exec` + `logs` + `stop` +
//! `rm`, `-p` with busybox httpd and a GET from the host. Afterwards no
//! container state, cgroup or process of ours is left; the dockerd is
//! stopped and its directories removed whatever happened.
//!
//! Skipped (with the reason printed) without root or without docker.io
//! (`scripts/bootstrap` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{code, stderr, stdout, Env};

const IMAGE: &str = "twinbox-oci-test-busybox";
const BRIDGE: &str = "tbxoci0";

/// A private dockerd, stopped and cleaned up on drop.
struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    fn sock(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", self.sock())
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn start(dir: &Path, runtime: &Path) -> Result<Self, String> {
        let config = dir.join("daemon.json");
        let json = serde_json::json!({
            "runtimes": {"twinbox": {"path": runtime}},
        });
        std::fs::write(&config, json.to_string()).map_err(|e| e.to_string())?;
        // A bridge of our own, so another dockerd's docker0 is not touched;
        // no iptables rules (the userland proxy carries -p).
        let _ = Command::new("ip")
            .args(["link", "add", BRIDGE, "type", "bridge"])
            .status();
        let _ = Command::new("ip")
            .args(["addr", "add", "172.31.251.1/24", "dev", BRIDGE])
            .status();
        let _ = Command::new("ip")
            .args(["link", "set", BRIDGE, "up"])
            .status();
        let log = std::fs::File::create(dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(&config)
            .args(["-H", &format!("unix://{}/docker.sock", dir.display())])
            .args(["--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"])
            .args(["--ip-forward=false"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        let d = Dockerd {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if d.docker(&["version"]).status.success() {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "dockerd did not answer in 60 s: {}",
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        ))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "tb-oci-d", "tb-oci-web"])
            .env("DOCKER_HOST", self.sock())
            .output();
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill takes integers; the pid is our child's.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // What the engine left mounted under its directories.
        common::unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (dockerd)".into());
    }
    for tool in ["dockerd", "docker", "containerd", "ip"] {
        if !common::on_path(tool) {
            return Some(format!(
                "{tool} is not installed (apt-get install docker.io)"
            ));
        }
    }
    None
}

/// What of ours a container may leave: state directories, cgroups under
/// Docker's parent, processes running the image's marker.
fn leftovers(d: &Dockerd) -> Vec<String> {
    let mut v = Vec::new();
    let state = d.dir.join("exec/runtime-runc/moby");
    if let Ok(entries) = std::fs::read_dir(&state) {
        v.extend(
            entries
                .flatten()
                .map(|e| format!("state {}", e.path().display())),
        );
    }
    for h in common::cgroup_hierarchies() {
        let parent = h.join("docker");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            v.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| format!("cgroup {}", e.path().display())),
            );
        }
    }
    v.extend(
        common::processes_with("tb-oci-marker")
            .iter()
            .map(|p| format!("process {p}")),
    );
    v
}

#[test]
fn docker_runs_containers_with_twinbox_runtime() {
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
    // dockerd's paths must stay short (its socket, containerd's).
    let dir = tempfile::Builder::new()
        .prefix("tbo")
        .tempdir_in("/tmp")
        .expect("dockerd dir")
        .keep();
    let d = match Dockerd::start(&dir, &runtime) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
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
    let import = Command::new("docker")
        .args(["import", "-", IMAGE])
        .env("DOCKER_HOST", d.sock())
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("docker import");
    assert!(tar.wait().is_ok_and(|s| s.success()), "tar of the rootfs");
    assert!(import.status.success(), "import: {}", stderr(&import));

    let run = |args: &[&str]| {
        let mut v = vec!["run", "--rm", "--runtime", "twinbox"];
        v.extend_from_slice(args);
        d.docker(&v)
    };

    // Exit code and output pass through; -e, -w, -u.
    let o = run(&[IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "out");
    assert!(stderr(&o).contains("err"));
    let o = run(&[
        "-e",
        "FOO=bar",
        "-w",
        "/tmp/work",
        "-u",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g",
    ]);
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["bar", "/tmp/work", "1000", "1000"],
        "{}",
        stderr(&o)
    );
    // Docker's seccomp profile and capability set are in force.
    let o = run(&[
        IMAGE,
        "sh",
        "-c",
        "grep -E '^(Seccomp|CapBnd):' /proc/self/status",
    ]);
    let s = stdout(&o);
    assert!(s.contains("Seccomp:\t2"), "{s}");
    assert!(
        s.contains("CapBnd:\t00000000a80425fb"),
        "Docker's 14 capabilities: {s}"
    );
    // A missing program is Docker's 127.
    let o = run(&[IMAGE, "/no/such/program"]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("executable file not found"),
        "{}",
        stderr(&o)
    );

    // -t: a terminal in the box.
    let o = run(&["-t", IMAGE, "tty"]);
    assert!(
        stdout(&o).contains("/dev/pts/0"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );

    // -v: a host directory, read and written.
    let vol = d.dir.join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("in"), "from-host").expect("in");
    let spec = format!("{}:/data", vol.display());
    let o = run(&[
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
    let o = d.docker(&[
        "run",
        "-d",
        "--name",
        "tb-oci-d",
        "--runtime",
        "twinbox",
        IMAGE,
        "sh",
        "-c",
        "echo started; while :; do sleep 1; done",
        "tb-oci-marker",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.docker(&["exec", "tb-oci-d", "sh", "-c", "echo in-exec; exit 7"]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "in-exec");
    let o = d.docker(&["exec", "-t", "tb-oci-d", "tty"]);
    assert!(stdout(&o).contains("/dev/pts/"), "{}", stderr(&o));
    let o = d.docker(&["logs", "tb-oci-d"]);
    assert_eq!(stdout(&o).trim(), "started");
    let o = d.docker(&["top", "tb-oci-d"]);
    assert!(stdout(&o).contains("tb-oci-marker"), "{}", stderr(&o));
    let o = d.docker(&["stop", "-t", "1", "tb-oci-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.docker(&["rm", "tb-oci-d"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // -p: busybox httpd behind 127.0.0.1:PORT, fetched from the host.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let publish = format!("127.0.0.1:{port}:80");
    let o = d.docker(&[
        "run",
        "-d",
        "--name",
        "tb-oci-web",
        "--runtime",
        "twinbox",
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "echo hello-oci > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t0 = Instant::now();
    let got = loop {
        match common::http_get(port, "/index.html") {
            Ok((status, _)) if status.contains("200") => break Ok(status),
            r if t0.elapsed() > Duration::from_secs(20) => break r.map(|(s, _)| s),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        got.as_ref().is_ok_and(|s| s.contains("200")),
        "GET: {got:?}"
    );
    let o = d.docker(&["rm", "-f", "tb-oci-web"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Nothing of ours is left.
    let t0 = Instant::now();
    let mut left = leftovers(&d);
    while !left.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers(&d);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(d);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts left under {}",
        dir.display()
    );
}
