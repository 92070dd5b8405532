//! `twinbox nested agent`: PID 1 of the outer machine.
//!
//! It mounts what a Linux userland expects (proc, sysfs, devtmpfs), brings
//! up the loopback device, installs busybox's applets,
//! loads the KVM modules (so `/dev/kvm` is `kvm_amd` on the emulated SVM
//! CPU), then runs the plan's steps one at a time, each in its own process
//! group with a timeout, and writes a record per step to the second serial
//! port as soon as it ends (so a hang later loses nothing before it). Then
//! the fetched files, the kernel's log, `done`, and power-off. It refuses
//! to run as anything but PID 1, so it never powers off a host.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::protocol::{self, Record};
use super::{payload, Plan, Step, StepResult};

/// The serial port the records go to (the console is ttyS0).
const RESULTS_PORT: &str = "/dev/ttyS1";
/// Where busybox is, from the machine's base archive.
const BUSYBOX: &str = "/bin/busybox";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the agent; returns only if this is not PID 1 or the machine could
/// not be powered off.
pub fn run() -> Result<()> {
    if std::process::id() != 1 {
        bail!("`twinbox nested agent` is the outer machine's init (PID 1), which powers off at the end; it does not run elsewhere");
    }
    let result = serve();
    if let Err(e) = &result {
        eprintln!("twinbox nested agent: {e:#}");
    }
    nix::unistd::sync();
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).context("powering off")?;
    result
}

fn mount_fs(fstype: &str, at: &str, data: Option<&str>) -> Result<()> {
    fs::create_dir_all(at)?;
    mount(Some(fstype), at, Some(fstype), MsFlags::MS_NOSUID, data)
        .with_context(|| format!("mounting {fstype} on {at}"))
}

fn serve() -> Result<()> {
    mount_fs("proc", "/proc", None)?;
    let uptime_s = uptime();
    mount_fs("devtmpfs", "/dev", None)?;
    // Terminals for the tests' PTY harness (`exec -it`).
    fs::create_dir_all("/dev/pts")?;
    mount_fs("devpts", "/dev/pts", Some("mode=0620,ptmxmode=0666"))?;
    mount_fs("sysfs", "/sys", None)?;
    // The root is the kernel's tmpfs (no root= given), which already holds
    // what the payload put under /tmp: no second tmpfs over it.
    fs::create_dir_all("/tmp")?;
    fs::set_permissions("/tmp", std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    fs::create_dir_all("/root")?;
    // The kernel leaves `lo` down and nothing else here brings it up:
    // without it the tests' servers on 127.0.0.1 (published ports) are
    // unreachable.
    twinbox_container::network::loopback_up().context("bringing up lo")?;
    let mut port = open_port()?;
    let outcome = (|| -> Result<()> {
        let plan: Plan =
            serde_json::from_slice(&fs::read(payload::PLAN_PATH).context("reading the plan")?)
                .context("parsing the plan")?;
        if std::path::Path::new(BUSYBOX).is_file() {
            let _ = Command::new(BUSYBOX)
                .args(["--install", "-s", "/bin"])
                .status();
        }
        let t = Instant::now();
        for m in &plan.modules {
            load_module(m)?;
        }
        let modules_s = t.elapsed().as_secs_f64();
        send(
            &mut port,
            &Record::Ready {
                uptime_s,
                modules_s,
                hypervisor: twinbox_vmm::hypervisor::detect_kind().to_string(),
            },
        )?;
        for step in &plan.steps {
            let r = run_step(step, &plan.env);
            send(&mut port, &Record::Step(r))?;
        }
        for path in &plan.fetch {
            let data = read_bounded(path);
            send(
                &mut port,
                &Record::File {
                    path: path.clone(),
                    data,
                },
            )?;
        }
        Ok(())
    })();
    if let Err(e) = &outcome {
        let _ = send(
            &mut port,
            &Record::Fatal {
                error: format!("{e:#}"),
            },
        );
    }
    send(&mut port, &Record::Log { text: kernel_log() })?;
    send(&mut port, &Record::Done)?;
    port.flush()?;
    let _ = nix::sys::termios::tcdrain(&port);
    outcome
}

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The results port, raw: no newline translation, no echo.
fn open_port() -> Result<fs::File> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    use std::os::unix::fs::OpenOptionsExt;
    let port = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(RESULTS_PORT)
        .with_context(|| format!("opening {RESULTS_PORT}"))?;
    let mut t = tcgetattr(&port).context("reading the port's settings")?;
    cfmakeraw(&mut t);
    tcsetattr(&port, SetArg::TCSANOW, &t).context("making the port raw")?;
    Ok(port)
}

fn send(port: &mut fs::File, r: &Record) -> Result<()> {
    port.write_all(protocol::encode(r).as_bytes())
        .context("writing to the results port")
}

fn load_module(path: &str) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {path}"))?;
    match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("loading {path}")),
    }
}

/// Reads a stream to its end on a thread of its own, keeping at most
/// [`protocol::MAX_OUTPUT`] bytes (and one more, to know it was cut); what
/// it kept arrives on the channel.
fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = (protocol::MAX_OUTPUT + 1).saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// How long a killed step may take to die, and its pipes to close, before
/// the agent reports it and goes on.
pub const GRACE: Duration = Duration::from_secs(10);

/// Waits for `child` until `deadline`; `None` if it is still there.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

fn run_step(step: &Step, env: &[(String, String)]) -> StepResult {
    let mut r = StepResult {
        argv: step.argv.clone(),
        code: None,
        signal: None,
        timed_out: false,
        error: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        seconds: 0.0,
    };
    let Some((prog, args)) = step.argv.split_first() else {
        r.error = Some("empty argv".into());
        return r;
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("TMPDIR", "/tmp")
        .envs(env.iter().chain(&step.env).map(|(k, v)| (k, v)))
        .current_dir(step.cwd.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(format!("cannot run {prog}: {e}"));
            return r;
        }
    };
    let pgid = Pid::from_raw(child.id() as i32);
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let mut status = wait_until(&mut child, start + Duration::from_secs(step.timeout_s));
    if status.is_none() {
        r.timed_out = true;
        let _ = killpg(pgid, Signal::SIGKILL);
        status = wait_until(&mut child, Instant::now() + GRACE);
        if status.is_none() {
            r.error = Some(format!(
                "killed at its timeout, but still not gone {GRACE:?} after SIGKILL (stuck in the kernel?)"
            ));
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    // What the step left running goes with it (it would hold the pipes).
    let _ = killpg(pgid, Signal::SIGKILL);
    reap_orphans();
    if let Some(st) = status {
        r.code = st.code();
        r.signal = st.signal();
    }
    let deadline = Instant::now() + GRACE;
    let take = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        rx.and_then(|rx| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
        })
        .unwrap_or_default()
    };
    let (o, ocut) = protocol::bounded(&take(out));
    let (e, ecut) = protocol::bounded(&take(err));
    r.stdout = o;
    r.stderr = e;
    r.truncated = ocut || ecut;
    r
}

/// PID 1 inherits every orphan; collect those that have ended.
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

fn read_bounded(path: &str) -> std::result::Result<String, String> {
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    f.take(protocol::MAX_OUTPUT as u64)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

/// The kernel's log buffer.
fn kernel_log() -> String {
    const READ_ALL: libc::c_int = 3;
    let mut buf = vec![0u8; 1 << 20];
    let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: klogctl writes at most `len` bytes into `buf`, which is that
    // long and lives across the call.
    let n = unsafe { libc::klogctl(READ_ALL, buf.as_mut_ptr().cast(), len) };
    match usize::try_from(n) {
        Ok(n) => String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned(),
        Err(_) => format!("klogctl failed: {}", std::io::Error::last_os_error()),
    }
}
