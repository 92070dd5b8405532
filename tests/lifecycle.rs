//! End-to-end tests of boxes that live, in the container box (as root):
//! `run -d`, `--name`, `--rm`, `create`/`start`, `ps`, `logs`, `exec`,
//! `stop`, `kill`, `rm`, `wait`, `inspect`, `-i` and `-t` (driven through
//! a PTY), a capped log under a flood, a killed supervisor, and 50 boxes
//! at once, each checked for what it leaves behind. The VM box's
//! lifecycle tests are in `vm_linux.rs`, beside its other guest tests.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pty::Pty;
use common::{cgroups_of, code, host_mounts_of, processes_with, stderr, stdout, Env};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn env() -> Result<Env, Box<dyn std::error::Error>> {
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    Ok(env)
}

/// `twinbox ARGS` must succeed; its stdout, trimmed.
fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(code(&out), 0, "twinbox {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn detached(env: &Env, name: &str, cmd: &[&str]) -> String {
    let mut v = vec![
        "run",
        "-d",
        "--isolation",
        "container",
        "--name",
        name,
        "busybox",
    ];
    v.extend_from_slice(cmd);
    ok(env, &v)
}

fn inspect(env: &Env, name: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let v: serde_json::Value = serde_json::from_str(&ok(env, &["inspect", name]))?;
    Ok(v[0].clone())
}

fn status(env: &Env, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(inspect(env, name)?["state"]["status"]
        .as_str()
        .unwrap_or("?")
        .to_string())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Box directories left in the store.
fn box_dirs(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(env.home().join("boxes"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !p.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_detached_box_lives_logs_execs_stops_and_is_removed() -> TestResult {
    let env = env()?;
    let id = detached(
        &env,
        "web",
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; readlink /proc/self/ns/pid; exec sleep 1000",
        ],
    );
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let rec = inspect(&env, "web")?;
    assert_eq!(rec["state"]["status"], "running");
    let sup = rec["state"]["supervisor"].as_i64().ok_or("supervisor")?;
    let pid = rec["state"]["pid"].as_i64().ok_or("pid")?;
    assert!(alive(sup) && alive(pid));

    // ps: the table, -q, --format json, and found by prefix.
    let ps = ok(&env, &["ps"]);
    let head = ps.lines().next().unwrap_or("");
    for col in [
        "BOX ID",
        "NAME",
        "IMAGE",
        "ISOLATION",
        "COMMAND",
        "CREATED",
        "STATUS",
    ] {
        assert!(head.contains(col), "{ps}");
    }
    let line = ps
        .lines()
        .find(|l| l.contains("web"))
        .ok_or("no web in ps")?;
    assert!(
        line.starts_with(&id[..12]) && line.contains("Up ") && line.contains("container"),
        "{line}"
    );
    assert_eq!(ok(&env, &["ps", "-q"]), id[..12]);
    let j: serde_json::Value = serde_json::from_str(&ok(&env, &["ps", "--format", "json"]))?;
    assert_eq!(j["Names"], "web");
    assert_eq!(j["State"], "running");
    assert_eq!(inspect(&env, &id[..8])?["name"], "web");

    // logs: both streams, kept apart; --tail; -t.
    wait_for("the box's first lines", Duration::from_secs(10), || {
        stdout(&env.run(&["logs", "web"])).lines().count() >= 2
    });
    let out = env.run(&["logs", "web"]);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hello"), "{text}");
    let ns = lines.next().ok_or("no ns line")?.to_string();
    assert!(ns.starts_with("pid:["), "{ns}");
    assert_eq!(stderr(&out).trim(), "oops");
    // The last record is one line, of either stream (the two pipes are
    // read as their lines come).
    let tail = env.run(&["logs", "--tail", "1", "web"]);
    let both = format!("{}{}", stdout(&tail), stderr(&tail));
    assert!(both == format!("{ns}\n") || both == "oops\n", "{both:?}");
    let t = ok(&env, &["logs", "-t", "web"]);
    assert!(t.starts_with("20") && t.contains("Z hello"), "{t}");

    // exec: same namespaces, cgroup and confinement as the first process.
    let out = env.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "readlink /proc/self/ns/pid; exit 7",
    ]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), ns, "{}", stderr(&out));
    let mine = ok(&env, &["exec", "web", "cat", "/proc/self/status"]);
    let field = |k: &str| {
        mine.lines()
            .find(|l| l.starts_with(k))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    let first = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let cap = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("CapBnd:"))
            .map(String::from)
            .unwrap_or_default()
    };
    assert_eq!(cap(&mine), cap(&first));
    assert_eq!(
        ok(&env, &["exec", "web", "cat", "/proc/self/cgroup"]),
        ok(&env, &["exec", "web", "cat", "/proc/1/cgroup"])
    );
    assert_eq!(ok(&env, &["exec", "web", "hostname"]), "twinbox");
    assert!(ok(&env, &["exec", "web", "cat", "/proc/1/cmdline"]).contains("sleep"));
    // -e, -w, -u; stdin with -i, none without.
    assert_eq!(
        ok(&env, &["exec", "-e", "K=V w", "web", "sh", "-c", "echo $K"]),
        "V w"
    );
    assert_eq!(ok(&env, &["exec", "-w", "/tmp", "web", "pwd"]), "/tmp");
    assert_eq!(
        ok(&env, &["exec", "-u", "1000:1000", "web", "id", "-u"]),
        "1000"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinbox"))
        .args(["exec", "-i", "web", "cat"])
        .env("TWINBOX_HOME", env.home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(c.stdin.as_mut().ok_or("stdin")?, b"piped in\n")?;
    drop(c.stdin.take());
    let o = c.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped in\n");
    assert_eq!(
        ok(&env, &["exec", "web", "cat"]),
        "",
        "no -i: stdin is empty"
    );
    // 127, 126, and a detached exec.
    let out = env.run(&["exec", "web", "no-such-command"]);
    assert_eq!(code(&out), 127);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["exec", "web", "/etc/passwd"])), 126);
    ok(
        &env,
        &[
            "exec",
            "-d",
            "web",
            "sh",
            "-c",
            "sleep 0.2; echo done > /tmp/flag",
        ],
    );
    wait_for("the detached exec", Duration::from_secs(10), || {
        stdout(&env.run(&["exec", "web", "cat", "/tmp/flag"])).trim() == "done"
    });

    // A running box cannot be removed without -f; stop takes the grace
    // period (sh and sleep as PID 1 ignore SIGTERM) and then kills.
    assert_ne!(code(&env.run(&["rm", "web"])), 0);
    let t0 = Instant::now();
    assert_eq!(ok(&env, &["stop", "-t", "1", "web"]), "web");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(status(&env, "web")?, "exited");
    assert_eq!(ok(&env, &["wait", "web"]), "137");
    assert!(ok(&env, &["ps", "-a"]).contains("Exited (137)"));
    assert!(!ok(&env, &["ps"]).contains("web"));
    assert!(!alive(sup) && !alive(pid));
    assert!(cgroups_of(sup as u32).is_empty());
    // The log is kept after the exit.
    assert!(ok(&env, &["logs", "web"]).starts_with("hello"));
    assert_ne!(code(&env.run(&["exec", "web", "true"])), 0);
    assert_eq!(ok(&env, &["rm", "web"]), "web");
    assert!(box_dirs(&env).is_empty(), "{:?}", box_dirs(&env));
    assert!(host_mounts_of(&env).is_empty());
    Ok(())
}

#[test]
fn signals_exit_codes_restarts_and_auto_removal() -> TestResult {
    let env = env()?;
    // kill -s: a trap in the box sees the signal and exits with its code.
    detached(
        &env,
        "trap",
        &[
            "sh",
            "-c",
            "trap 'exit 42' USR1; while true; do sleep 0.1; done",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ok(&env, &["kill", "-s", "USR1", "trap"]), "trap");
    assert_eq!(ok(&env, &["wait", "trap"]), "42");
    assert_ne!(code(&env.run(&["kill", "trap"])), 0, "not running");
    assert_ne!(code(&env.run(&["kill", "-s", "NOSUCH", "trap"])), 0);
    // stop with a workload that honours SIGTERM is quick.
    detached(
        &env,
        "polite",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    ok(&env, &["stop", "polite"]);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(inspect(&env, "polite")?["state"]["exit_code"], 0);

    // create, then start; start again after the exit.
    let id = ok(
        &env,
        &[
            "create",
            "--isolation",
            "container",
            "--name",
            "later",
            "busybox",
            "sh",
            "-c",
            "echo ran; exit 3",
        ],
    );
    assert!(ok(&env, &["ps", "-a"]).contains("Created"));
    assert_eq!(status(&env, "later")?, "created");
    assert_eq!(ok(&env, &["start", &id[..12]]), &id[..12]);
    assert_eq!(ok(&env, &["wait", "later"]), "3");
    ok(&env, &["start", "later"]);
    assert_eq!(ok(&env, &["wait", "later"]), "3");
    assert_eq!(ok(&env, &["logs", "later"]), "ran\nran");

    // A command that cannot start: run -d says so with 127, the box is
    // kept as exited (Docker keeps it as created).
    let out = env.run(&[
        "run",
        "-d",
        "--isolation",
        "container",
        "--name",
        "bad",
        "busybox",
        "no-such",
    ]);
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"));
    assert_eq!(inspect(&env, "bad")?["state"]["exit_code"], 127);

    // --rm: gone after its exit; a foreground named run gives its code.
    detached_rm(&env)?;
    let out = env.run(&[
        "run",
        "--isolation",
        "container",
        "--name",
        "fg",
        "busybox",
        "sh",
        "-c",
        "echo out; exit 5",
    ]);
    assert_eq!(code(&out), 5);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(ok(&env, &["logs", "fg"]), "out");
    let out = env.run(&[
        "run",
        "--rm",
        "--isolation",
        "container",
        "--name",
        "gone",
        "busybox",
        "true",
    ]);
    assert_eq!(code(&out), 0);
    assert_ne!(code(&env.run(&["inspect", "gone"])), 0);

    // --timeout ends a detached box.
    detached_timeout(&env)?;

    // Names: unique, Docker's rule; unknown and ambiguous references.
    let out = env.run(&[
        "run",
        "-d",
        "--isolation",
        "container",
        "--name",
        "trap",
        "busybox",
        "true",
    ]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    let out = env.run(&[
        "create",
        "--isolation",
        "container",
        "--name=-x",
        "busybox",
        "true",
    ]);
    assert!(
        stderr(&out).contains("invalid box name"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["inspect", "nosuchbox"]);
    assert!(stderr(&out).contains("no such box"), "{}", stderr(&out));
    // 17 boxes: two share a first hex digit.
    for _ in 0..17 {
        ok(
            &env,
            &["create", "--isolation", "container", "busybox", "true"],
        );
    }
    let ids = ok(&env, &["ps", "-aq"]);
    let first = (b'0'..=b'f')
        .map(char::from)
        .find(|c| ids.lines().filter(|l| l.starts_with(*c)).count() > 1)
        .ok_or("no shared digit")?;
    let out = env.run(&["rm", &first.to_string()]);
    assert!(
        stderr(&out).contains("matches several boxes"),
        "{}",
        stderr(&out)
    );
    let all: Vec<String> = ok(&env, &["ps", "-aq"]).lines().map(String::from).collect();
    let mut v = vec!["rm", "-f"];
    v.extend(all.iter().map(|s| s.as_str()));
    ok(&env, &v);
    assert!(box_dirs(&env).is_empty(), "{:?}", box_dirs(&env));
    Ok(())
}

fn detached_rm(env: &Env) -> TestResult {
    let id = ok(
        env,
        &[
            "run",
            "-d",
            "--rm",
            "--isolation",
            "container",
            "busybox",
            "sh",
            "-c",
            "sleep 0.3",
        ],
    );
    wait_for("--rm to remove the box", Duration::from_secs(10), || {
        !env.home().join("boxes").join(&id).exists()
    });
    Ok(())
}

fn detached_timeout(env: &Env) -> TestResult {
    ok(
        env,
        &[
            "run",
            "-d",
            "--timeout",
            "1s",
            "--isolation",
            "container",
            "--name",
            "slow",
            "busybox",
            "sleep",
            "100",
        ],
    );
    assert_eq!(ok(env, &["wait", "slow"]), "137");
    let e = inspect(env, "slow")?["state"]["error"].to_string();
    assert!(e.contains("timeout"), "{e}");
    Ok(())
}

#[test]
fn a_flood_of_output_is_capped() -> TestResult {
    let env = env()?;
    // 50 MB of output against a 1 MiB cap.
    ok(
        &env,
        &[
            "run",
            "-d",
            "--isolation",
            "container",
            "--name",
            "flood",
            "--log-opt",
            "max-size=1m",
            "busybox",
            "sh",
            "-c",
            "yes twinbox | head -c 50000000; echo last line",
        ],
    );
    assert_eq!(ok(&env, &["wait", "flood"]), "0");
    let dir = env
        .home()
        .join("boxes")
        .join(inspect(&env, "flood")?["id"].as_str().ok_or("id")?);
    let size: u64 = ["log", "log.1"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(size <= (1 << 20) + (17 << 10), "the log holds {size} bytes");
    let logs = ok(&env, &["logs", "--tail", "2", "flood"]);
    assert!(logs.ends_with("last line"), "{logs}");
    assert!(env.run(&["logs", "flood"]).stdout.len() > 100_000);
    Ok(())
}

#[test]
fn a_killed_supervisor_takes_its_box_and_rm_removes_every_trace() -> TestResult {
    let env = env()?;
    detached(&env, "victim", &["sleep", "1000"]);
    let rec = inspect(&env, "victim")?;
    let sup = rec["state"]["supervisor"].as_i64().ok_or("supervisor")?;
    let pid = rec["state"]["pid"].as_i64().ok_or("pid")?;
    assert!(!cgroups_of(sup as u32).is_empty());
    // SAFETY: kill takes integers.
    unsafe { libc::kill(sup as i32, libc::SIGKILL) };
    wait_for(
        "the box to die with its supervisor",
        Duration::from_secs(10),
        || !alive(pid),
    );
    let rec = inspect(&env, "victim")?;
    assert_eq!(rec["state"]["status"], "exited");
    assert!(rec["state"]["error"].to_string().contains("gone"), "{rec}");
    assert!(ok(&env, &["ps", "-a"]).contains("Exited (137)"));
    assert!(!ok(&env, &["ps"]).contains("victim"));
    ok(&env, &["rm", "victim"]);
    assert!(
        cgroups_of(sup as u32).is_empty(),
        "{:?}",
        cgroups_of(sup as u32)
    );
    assert!(box_dirs(&env).is_empty());
    assert!(host_mounts_of(&env).is_empty());
    Ok(())
}

#[test]
fn fifty_boxes_at_once_and_nothing_left_after() -> TestResult {
    let env = env()?;
    let marker = format!("supervise-test-{}", std::process::id());
    let _ = marker;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(detached(&env, &format!("b{i}"), &["sleep", "1000"]));
    }
    let running: Vec<String> = ok(&env, &["ps", "-q"]).lines().map(String::from).collect();
    assert_eq!(running.len(), 50);
    let sups: Vec<i64> = ids
        .iter()
        .map(|id| inspect(&env, id).map(|r| r["state"]["supervisor"].as_i64().unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    assert!(sups.iter().all(|&p| p > 0 && alive(p)));
    let mut v = vec!["rm", "-f"];
    v.extend(ids.iter().map(|s| s.as_str()));
    let out = env.run(&v);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(ok(&env, &["ps", "-aq"]), "");
    for p in &sups {
        assert!(!alive(*p), "supervisor {p} lives on");
        assert!(cgroups_of(*p as u32).is_empty());
    }
    let home = env.home().to_string_lossy().into_owned();
    assert!(
        processes_with(&home).is_empty(),
        "{:?}",
        processes_with(&home)
    );
    assert!(box_dirs(&env).is_empty());
    assert!(host_mounts_of(&env).is_empty());
    Ok(())
}

fn twinbox(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinbox"));
    c.args(args)
        .env("TWINBOX_HOME", env.home())
        .env("TWINBOX_CACHE", env.cache());
    c
}

/// `-it`: a real terminal in the box: its size at the start and after a
/// resize, Ctrl-C reaching the workload, the exit code, and the host
/// terminal restored.
fn drive_terminal(pty: &mut Pty) -> TestResult {
    let t = Duration::from_secs(20);
    let before = pty.lflag()?;
    pty.send(b"stty size; tty\r")?;
    pty.expect("24 80", t)?;
    pty.expect("/dev/pts/", t)?;
    pty.resize(30, 100)?;
    std::thread::sleep(Duration::from_millis(300));
    pty.send(b"stty size\r")?;
    pty.expect("30 100", t)?;
    pty.send(b"sleep 1000\r")?;
    std::thread::sleep(Duration::from_millis(500));
    pty.send(b"\x03")?;
    std::thread::sleep(Duration::from_millis(300));
    pty.send(b"echo status=$?\r")?;
    pty.expect("status=130", t)?;
    pty.send(b"exit 5\r")?;
    assert_eq!(pty.wait(t)?, 5);
    let after = pty.lflag()?;
    assert_eq!(after, before, "the terminal's modes are restored");
    assert_ne!(after & libc::ICANON, 0);
    Ok(())
}

#[test]
fn run_and_exec_with_a_terminal() -> TestResult {
    let env = env()?;
    let mut pty = Pty::spawn(
        twinbox(
            &env,
            &[
                "run",
                "-it",
                "--isolation",
                "container",
                "--name",
                "tty",
                "busybox",
                "sh",
            ],
        ),
        24,
        80,
    )?;
    drive_terminal(&mut pty)?;
    // What the terminal showed is the box's log too.
    assert!(ok(&env, &["logs", "tty"]).contains("30 100"));

    detached(&env, "host", &["sleep", "1000"]);
    let mut pty = Pty::spawn(twinbox(&env, &["exec", "-it", "host", "sh"]), 24, 80)?;
    drive_terminal(&mut pty)?;
    ok(&env, &["rm", "-f", "host", "tty"]);
    assert!(box_dirs(&env).is_empty());
    Ok(())
}
