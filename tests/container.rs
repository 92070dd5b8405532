//! End-to-end tests of container mode (`run --isolation container`), as
//! root: exit codes and signals, env, cwd and user, what the box can see
//! (PIDs, mounts, host name, network) and do (capabilities, seccomp,
//! mounts, /proc/sysrq-trigger), limits (OOM under -m, a fork bomb under
//! --pids-limit), timeouts, and that no cgroup, mount or process outlives a
//! run, even when the box or the launcher is killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cgroups_of, code, host_mounts_of, processes_with, stderr, stdout, Env};
use twinbox_images::testing::{docker_save_edited, tar_of_dir, Tar};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store with the busybox base image, and an image `probe` that is
/// busybox plus the static isolation probe at /probe.
fn env_with_images() -> Result<Env, Box<dyn std::error::Error>> {
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let probe = probe_binary();
    let inspect = env.run(&["image", "inspect", "busybox"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    let rootfs = PathBuf::from(v["rootfs"].as_str().ok_or("rootfs")?);
    let base = tar_of_dir(&rootfs)?;
    let top = Tar::new()
        .file("probe", 0o755, &std::fs::read(&probe)?)
        .finish();
    let dir = env.path().join("probe-image");
    std::fs::create_dir_all(&dir)?;
    docker_save_edited(&dir, &[base, top], "probe:latest", &|c| {
        c["config"] = serde_json::json!({"Cmd": ["/probe"], "Env": ["PATH=/bin"]});
    })?;
    let tar = env.path().join("probe.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    assert!(st.success());
    let out = env.run(&["image", "import", tar.to_str().ok_or("path")?]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    Ok(env)
}

fn probe_binary() -> PathBuf {
    let p = std::env::var_os("TWINBOX_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-gnu/release/twinbox-probe")
        });
    assert!(
        p.is_file(),
        "the static probe {} is not built: run scripts/bootstrap",
        p.display()
    );
    p
}

fn box_run(env: &Env, args: &[&str]) -> std::process::Output {
    let mut v = vec!["run", "--isolation", "container"];
    v.extend_from_slice(args);
    env.run(&v)
}

fn spawn(env: &Env, args: &[&str]) -> std::io::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_twinbox"))
        .args(["run", "--isolation", "container"])
        .args(args)
        .env("TWINBOX_HOME", env.home())
        .env("TWINBOX_CACHE", env.cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// The pid of the box's first process: the launcher's child.
fn box_pid(launcher: u32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children"))
        {
            if let Some(p) = c.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Some(p);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Waits until the box's first process has executed the workload (its
/// command line holds `marker` and its program is no longer twinbox).
fn wait_until_exec(pid: i32, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if String::from_utf8_lossy(&c).contains(marker)
            && exe.file_name().is_some_and(|n| n != "twinbox")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn exit_codes_env_cwd_user_and_missing_commands() -> TestResult {
    let env = env_with_images()?;
    let out = box_run(&env, &["busybox", "/bin/true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = box_run(&env, &["busybox", "sh", "-c", "exit 42"]);
    assert_eq!(code(&out), 42);
    let out = box_run(&env, &["busybox", "false"]);
    assert_eq!(code(&out), 1);

    let out = box_run(
        &env,
        &[
            "-e",
            "GREETING=hello box",
            "-w",
            "/work/dir",
            "busybox",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; echo err >&2",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello box\n/work/dir\n");
    assert_eq!(stderr(&out), "err\n");

    let out = box_run(&env, &["-u", "nobody", "busybox", "id"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("uid=65534(nobody)"),
        "{}",
        stdout(&out)
    );
    let out = box_run(
        &env,
        &["-u", "1234:5678", "busybox", "sh", "-c", "id -u; id -g"],
    );
    assert_eq!(stdout(&out), "1234\n5678\n");
    let out = box_run(&env, &["-u", "nosuchuser", "busybox", "id"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("nosuchuser"), "{}", stderr(&out));

    let out = box_run(&env, &["busybox", "no-such-command"]);
    assert_eq!(code(&out), 127);
    assert!(
        stderr(&out).contains("no-such-command: command not found"),
        "{}",
        stderr(&out)
    );
    let out = box_run(&env, &["busybox", "/etc/passwd"]);
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    Ok(())
}

#[test]
fn a_signal_comes_back_as_128_plus_n() -> TestResult {
    let env = env_with_images()?;
    let child = spawn(&env, &["busybox", "sleep", "31001"])?;
    let pid = box_pid(child.id()).ok_or("no box process")?;
    wait_until_exec(pid, "31001");
    // From the host, the box's PID 1 can be killed (SIGKILL is the one
    // signal an ancestor namespace can force on it).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(137));
    Ok(())
}

#[test]
fn the_box_sees_only_itself() -> TestResult {
    let env = env_with_images()?;
    let out = box_run(&env, &["probe", "/probe"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // PID 1 is the workload, and it is alone.
    assert_eq!(v["pid"], 1);
    assert_eq!(v["pids_visible"], serde_json::json!([1]));
    assert_eq!(v["exes_visible"], serde_json::json!(["/probe"]));
    assert_eq!(v["hostname"], "twinbox");
    assert_eq!(v["interfaces"], serde_json::json!(["lo"]));
    // Its own mounts only: the overlay root, /proc, /sys, /dev and theirs.
    let mounts = v["mounts"].as_u64().ok_or("mounts")?;
    assert!((5..40).contains(&mounts), "{mounts} mounts");
    let inner = box_run(&env, &["busybox", "cat", "/proc/self/mountinfo"]);
    let text = stdout(&inner);
    assert!(!text.contains("/sys/fs/cgroup"), "{text}");
    assert!(!text.contains(" /work"), "{text}");
    // Default capabilities, the seccomp filter, no_new_privs.
    assert_eq!(v["cap_eff"], "00000000a00425fb");
    assert_eq!(v["cap_bnd"], "00000000a00425fb");
    assert_eq!(v["seccomp"], "2");
    assert_eq!(v["no_new_privs"], "1");
    // The profile's denials.
    let s = &v["syscalls"];
    for call in [
        "keyctl",
        "finit_module",
        "mount",
        "unshare_user",
        "ptrace",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "reboot",
    ] {
        assert_eq!(s[call], "EPERM", "{call}: {s}");
    }
    // The same probe on the host gets further: the denials are the box's.
    let host = Command::new(probe_binary()).arg("syscalls").output()?;
    let h: serde_json::Value = serde_json::from_slice(&host.stdout)?;
    assert_ne!(h["keyctl"], "EPERM", "{h}");
    Ok(())
}

#[test]
fn kernel_interfaces_are_closed() -> TestResult {
    let env = env_with_images()?;
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "echo h > /proc/sysrq-trigger || echo sysrq-refused",
        ],
    );
    assert!(stdout(&out).contains("sysrq-refused"), "{}", stdout(&out));
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "mkdir -p /mnt && mount -t tmpfs none /mnt || echo mount-refused",
        ],
    );
    assert!(stdout(&out).contains("mount-refused"), "{}", stdout(&out));
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "echo 1 > /proc/sys/kernel/panic || echo sysctl-refused",
        ],
    );
    assert!(stdout(&out).contains("sysctl-refused"), "{}", stdout(&out));
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "mknod /tmp/disk b 8 0 || echo mknod-refused",
        ],
    );
    assert!(stdout(&out).contains("mknod-refused"), "{}", stdout(&out));
    let out = box_run(
        &env,
        &["busybox", "sh", "-c", "insmod /nonexistent.ko; echo $?"],
    );
    assert_ne!(stdout(&out).trim(), "0");
    // Writes land in the box's own layer and vanish with it.
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "echo x > /etc/written && cat /etc/written",
        ],
    );
    assert_eq!(stdout(&out), "x\n", "{}", stderr(&out));
    let out = box_run(&env, &["busybox", "cat", "/etc/written"]);
    assert_ne!(code(&out), 0);
    Ok(())
}

#[test]
fn memory_limit_oom_kills_inside_and_is_reported() -> TestResult {
    let env = env_with_images()?;
    // tail keeps all of a line-less stream's last line: 100 MiB under 64 MiB.
    let out = box_run(
        &env,
        &[
            "-m",
            "64m",
            "busybox",
            "sh",
            "-c",
            "head -c 104857600 /dev/zero | tail >/dev/null; echo after",
        ],
    );
    assert!(stderr(&out).contains("OOM killer"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("after"),
        "the box's shell outlives the OOM kill"
    );
    // The same allocation without a limit works.
    let out = box_run(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "head -c 104857600 /dev/zero | tail | wc -c",
        ],
    );
    assert_eq!(stdout(&out).trim(), "104857600", "{}", stderr(&out));
    assert!(!stderr(&out).contains("OOM"));
    Ok(())
}

#[test]
fn a_fork_bomb_is_contained_by_the_pids_limit() -> TestResult {
    let env = env_with_images()?;
    let child = spawn(
        &env,
        &[
            "--pids-limit",
            "32",
            "--timeout",
            "3s",
            "busybox",
            "sh",
            "-c",
            "bomb() { bomb | bomb & }; bomb; sleep 31002",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    // The host can still fork while the bomb runs.
    let st = Command::new("true").status()?;
    assert!(st.success());
    let launcher = child.id();
    let out = child.wait_with_output()?;
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
    assert!(cgroups_of(launcher).is_empty());
    assert!(processes_with("31002").is_empty());
    Ok(())
}

#[test]
fn a_timeout_kills_the_whole_box() -> TestResult {
    let env = env_with_images()?;
    let t = Instant::now();
    let out = box_run(
        &env,
        &[
            "--timeout",
            "500ms",
            "busybox",
            "sh",
            "-c",
            "sleep 31003 & sleep 31003",
        ],
    );
    assert_eq!(code(&out), 137);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(processes_with("31003").is_empty());
    Ok(())
}

#[test]
fn many_runs_and_killed_runs_leave_nothing_behind() -> TestResult {
    let env = env_with_images()?;
    let scratch = env.home().join("run");
    for i in 0..200 {
        let mut c = spawn(
            &env,
            &[
                "-m",
                "32m",
                "--pids-limit",
                "64",
                "--cpus",
                "1",
                "busybox",
                "/bin/true",
            ],
        )?;
        let launcher = c.id();
        assert!(c.wait()?.success(), "run {i}");
        assert!(cgroups_of(launcher).is_empty(), "run {i} left a cgroup");
    }
    // Twenty killed mid-run: the box's process, SIGTERM and SIGINT to the
    // launcher, and SIGKILL to the launcher (whose cgroups the next run
    // removes).
    let mut killed_launchers = Vec::new();
    for i in 0..20 {
        let mut c = spawn(
            &env,
            &[
                "-m",
                "32m",
                "busybox",
                "sh",
                "-c",
                "sleep 31004 & sleep 31004",
            ],
        )?;
        let launcher = c.id();
        let pid = box_pid(launcher).ok_or("no box")?;
        wait_until_exec(pid, "31004");
        let (target, sig) = match i % 4 {
            0 => (pid, nix::sys::signal::Signal::SIGKILL),
            1 => (launcher as i32, nix::sys::signal::Signal::SIGTERM),
            2 => (launcher as i32, nix::sys::signal::Signal::SIGINT),
            _ => (launcher as i32, nix::sys::signal::Signal::SIGKILL),
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), sig)?;
        let st = c.wait()?;
        match i % 4 {
            0 => assert_eq!(st.code(), Some(137)),
            1 => assert_eq!(st.code(), Some(143)),
            2 => assert_eq!(st.code(), Some(130)),
            _ => {}
        }
        killed_launchers.push(launcher);
    }
    // One more run collects what SIGKILLed launchers could not.
    let out = box_run(&env, &["-m", "32m", "busybox", "/bin/true"]);
    assert_eq!(code(&out), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("31004").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_with("31004").is_empty(),
        "box processes outlived their launcher"
    );
    for l in killed_launchers {
        assert!(
            cgroups_of(l).is_empty(),
            "launcher {l} left {:?}",
            cgroups_of(l)
        );
    }
    assert!(
        host_mounts_of(&env).is_empty(),
        "{:?}",
        host_mounts_of(&env)
    );
    // The scratch directory is only ever a mount point inside boxes.
    assert_eq!(std::fs::read_dir(&scratch)?.count(), 0);
    Ok(())
}

#[test]
fn user_namespace_maps_root_to_the_caller() -> TestResult {
    let env = env_with_images()?;
    let out = box_run(
        &env,
        &[
            "--userns",
            "busybox",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map, vec!["0", &nix::unistd::getuid().to_string(), "1"]);
    let out = box_run(&env, &["--userns", "-u", "1000", "busybox", "true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("only root"), "{}", stderr(&out));
    Ok(())
}
