//! `twinbox-runtime`: the OCI runtime command line (the one runc defines
//! and engines call) for twinbox's container box. The twinbox binary
//! answers to it when called by that name (a link to it: engines exec
//! the runtime by path, and one static binary is one thing to install).
//!
//! Commands: `create`, `start`, `run` (both, then a wait for the program
//! and a delete, as `runc run`), `state`, `kill`, `delete`, `exec`, `ps`,
//! `features`; global flags `--root`, `--log`, `--log-format`,
//! `--systemd-cgroup` (refused). Errors go to stderr and, as log lines,
//! to `--log` (JSON objects with `level`, `msg` and `time` with
//! `--log-format json`: containerd's shim reads the last `error` line
//! from there and shows it); the exit code is 1. The box itself is made
//! by `twinbox_container::oci`; this module reads the spec
//! ([`spec`]), keeps the state ([`state`]) and runs the hooks.

pub mod spec;
pub mod state;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use state::{State, Status};

/// The program name engines call.
pub const NAME: &str = "twinbox-runtime";

/// The spec version this runtime follows.
const OCI_VERSION: &str = "1.0.2";

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "twinbox's container box as an OCI runtime")]
struct Cli {
    /// Where containers' state is kept.
    #[arg(long, global = true, default_value = "/run/twinbox-runtime")]
    root: PathBuf,
    /// Log file (errors and notes).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Refused: twinbox-runtime drives cgroupfs only.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted and ignored (runc's).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Makes a container from a bundle; its process waits for `start`.
    Create {
        #[command(flatten)]
        new: NewArgs,
        /// The container's id.
        id: String,
    },
    /// Creates and starts a container; without --detach, waits for its
    /// program (signals sent to the runtime are passed on), deletes the
    /// container and exits with the program's status.
    Run {
        #[command(flatten)]
        new: NewArgs,
        /// Return once the program runs; the container stays.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The container's id.
        id: String,
    },
    /// Lets a created container's program run.
    Start {
        /// The container's id.
        id: String,
    },
    /// Prints the container's state (the spec's JSON).
    State {
        /// The container's id.
        id: String,
    },
    /// Sends a signal to the container's process (or all with --all).
    Kill {
        /// Every process in the container.
        #[arg(long, short = 'a')]
        all: bool,
        /// The container's id.
        id: String,
        /// Number or name (default SIGTERM).
        signal: Option<String>,
    },
    /// Removes a stopped (or created; with --force, any) container.
    Delete {
        /// Kill it first if it runs.
        #[arg(long, short = 'f')]
        force: bool,
        /// The container's id.
        id: String,
    },
    /// Runs another process in the container.
    Exec {
        /// The process, as the spec's `process` JSON.
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        /// Return once it runs (it is reparented to the subreaper).
        #[arg(long, short = 'd')]
        detach: bool,
        /// Where to write its pid.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// A Unix socket that gets the terminal's master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// A terminal (without --process).
        #[arg(long, short = 't')]
        tty: bool,
        /// Working directory (without --process).
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE (without --process).
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// The container's id.
        id: String,
        /// The command (without --process).
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Lists the container's processes.
    Ps {
        /// `table` or `json`.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// The container's id.
        id: String,
    },
    /// Prints what this runtime supports (JSON).
    Features,
}

/// What `create` and `run` take to make a container.
#[derive(clap::Args, Debug)]
struct NewArgs {
    /// The bundle directory.
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Where to write the container's pid.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// A Unix socket that gets the terminal's master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// MS_MOVE and chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted (no session keyring is made anyway).
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
}

/// Where log lines go.
struct Log {
    file: Option<PathBuf>,
    json: bool,
}

impl Log {
    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else {
            return;
        };
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The runtime's entry point (argv[0] is `twinbox-runtime`).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let log = Log {
        file: cli.log.clone(),
        json: cli.log_format == "json",
    };
    if std::env::var_os("TWINBOX_RUNTIME_TRACE").is_some() {
        let argv: Vec<String> = std::env::args().collect();
        log.write("debug", &format!("argv: {argv:?}"));
    }
    let r = if cli.systemd_cgroup {
        Err(anyhow::anyhow!(
            "--systemd-cgroup is not supported: twinbox-runtime drives cgroupfs (set \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"] in daemon.json)"
        ))
    } else {
        run(&cli)
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            log.write("error", &msg);
            eprintln!("{NAME}: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<u8> {
    let root = &cli.root;
    match &cli.cmd {
        Cmd::Create { new, id } => create(root, new, id),
        Cmd::Run { new, detach, id } => {
            create(root, new, id)?;
            if let Err(e) = start(root, id) {
                let _ = delete(root, id, true);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            let (_, s) = state::load(root, id)?;
            let code = wait_passing_signals(s.pid);
            delete(root, id, true)?;
            code
        }
        Cmd::Start { id } => start(root, id),
        Cmd::State { id } => {
            let (dir, s) = state::load(root, id)?;
            println!("{}", serde_json::to_string_pretty(&state_json(&dir, &s))?);
            Ok(0)
        }
        Cmd::Kill { all, id, signal } => kill(root, id, signal.as_deref(), *all),
        Cmd::Delete { force, id } => delete(root, id, *force),
        Cmd::Exec {
            process,
            detach,
            pid_file,
            console_socket,
            tty,
            cwd,
            env,
            id,
            command,
        } => {
            let p = match process {
                Some(f) => spec::read_json::<spec::ProcessSpec>(f)?,
                None => {
                    let mut v = serde_json::json!({
                        "args": command, "env": env, "terminal": tty,
                        "cwd": cwd.clone().unwrap_or_else(|| "/".into()),
                    });
                    if env.is_empty() {
                        v["env"] = serde_json::json!([
                            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                        ]);
                    }
                    serde_json::from_value(v)?
                }
            };
            exec(root, id, &p, *detach, pid_file.as_deref(), console_socket)
        }
        Cmd::Ps { format, id } => {
            let (dir, s) = state::load(root, id)?;
            let pids = if state::status(&dir, &s) == Status::Stopped {
                Vec::new()
            } else {
                pids(&s)
            };
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
            Ok(0)
        }
        Cmd::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
    }
}

fn state_json(dir: &Path, s: &State) -> serde_json::Value {
    let status = state::status(dir, s);
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": s.id,
        "status": status.as_str(),
        "pid": if status == Status::Stopped { 0 } else { s.pid },
        "bundle": s.bundle,
        "created": s.created,
        "annotations": s.annotations,
    })
}

/// The pids of a container: those in its groups, else its first process.
fn pids(s: &State) -> Vec<i32> {
    let mut v = twinbox_container::cgroups::oci::pids(&s.cgroups);
    if v.is_empty() {
        v.push(s.pid);
    }
    v
}

/// Writes a pid file as runc does: a temporary sibling, renamed.
fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pid"),
        std::process::id()
    ));
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn create(root: &Path, new: &NewArgs, id: &str) -> Result<u8> {
    let (bundle, pid_file) = (&new.bundle, new.pid_file.as_deref());
    let (console_socket, no_pivot) = (&new.console_socket, new.no_pivot);
    let bundle =
        std::fs::canonicalize(bundle).with_context(|| format!("bundle {}", bundle.display()))?;
    let spec = spec::load(&bundle)?;
    let dir = state::make(root, id)?;
    let made = (|| -> Result<State> {
        let b = spec::bundle(
            &spec,
            spec::Context {
                bundle: &bundle,
                id,
                console_socket: console_socket.clone(),
                no_pivot,
                exec_fifo: state::fifo(&dir),
            },
        )?;
        let program = b.process.args[0].clone();
        let created = twinbox_container::oci::create(&b).map_err(|e| match e.exit_code() {
            // Docker turns these words into exit codes 127 and 126.
            127 => anyhow::anyhow!("exec: {program:?}: executable file not found in $PATH"),
            126 => anyhow::anyhow!("exec: {program:?}: permission denied"),
            _ => anyhow::Error::new(e).context("creating the container"),
        })?;
        let s = State {
            id: id.to_string(),
            pid: created.pid,
            pid_start: state::proc_stat(created.pid).map_or(0, |(t, _)| t),
            bundle: bundle.clone(),
            created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            annotations: spec.annotations.clone(),
            cgroups: created.cgroups,
        };
        state::save(&dir, &s)?;
        let hooks: Vec<&spec::Hook> = spec
            .hooks
            .prestart
            .iter()
            .chain(&spec.hooks.create_runtime)
            .collect();
        let st = state_json(&dir, &s);
        for h in hooks {
            if let Err(e) = run_hook(h, &st) {
                destroy(&s);
                return Err(e.context("a prestart/createRuntime hook failed"));
            }
        }
        Ok(s)
    })();
    let s = match made {
        Ok(s) => s,
        Err(e) => {
            let _ = state::remove(&dir);
            return Err(e);
        }
    };
    if let Some(p) = pid_file {
        if let Err(e) = write_pid_file(p, s.pid) {
            destroy(&s);
            let _ = state::remove(&dir);
            return Err(e);
        }
    }
    Ok(0)
}

/// Kills everything of a container and removes its groups.
fn destroy(s: &State) {
    for p in pids(s) {
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    if state::proc_stat(s.pid).is_some_and(|(t, _)| t == s.pid_start) {
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(s.pid, libc::SIGKILL) };
    }
    let _ = twinbox_container::cgroups::oci::remove(&s.cgroups);
}

/// Runs one hook with the state on its stdin, within its timeout.
fn run_hook(h: &spec::Hook, st: &serde_json::Value) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        c.arg0(first).args(rest);
    }
    c.env_clear();
    for e in &h.env {
        if let Some((k, v)) = e.split_once('=') {
            c.env(k, v);
        }
    }
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c
        .spawn()
        .with_context(|| format!("running hook {}", h.path))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(st.to_string().as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(h.timeout.unwrap_or(120).max(1));
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("hook {} exited with {status}: {}", h.path, err.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("hook {} timed out", h.path);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start(root: &Path, id: &str) -> Result<u8> {
    let (dir, s) = state::load(root, id)?;
    match state::status(&dir, &s) {
        Status::Created => {}
        Status::Running => bail!("cannot start an already running container"),
        Status::Stopped => bail!("cannot start a container that has stopped"),
    }
    let alive = || state::status(&dir, &s) != Status::Stopped;
    twinbox_container::oci::start(&state::fifo(&dir), &alive)?;
    if let Ok(spec) = spec::load(&s.bundle) {
        let st = state_json(&dir, &s);
        for h in &spec.hooks.poststart {
            // The spec: a failed poststart hook is logged, not fatal.
            if let Err(e) = run_hook(h, &st) {
                eprintln!("{NAME}: poststart hook: {e:#}");
            }
        }
    }
    Ok(0)
}

/// Waits for `pid`, the container's first process and this process's
/// child (`create` cloned it), passing on the signals a shell or an
/// engine sends to the runtime; its status, 128 + N for death by signal N.
/// SIGCHLD is taken on the same signalfd, so the end wakes the wait.
fn wait_passing_signals(pid: i32) -> Result<u8> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        // Not passed on: it wakes the wait when the program ends.
        Signal::SIGCHLD,
    ] {
        mask.add(sig);
    }
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    loop {
        let mut status = 0;
        // SAFETY: reaps our own child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(if libc::WIFSIGNALED(status) {
                (128 + libc::WTERMSIG(status)) as u8
            } else {
                libc::WEXITSTATUS(status) as u8
            });
        }
        if r < 0 {
            bail!("waiting for the container: {}", nix::errno::Errno::last());
        }
        let mut fds = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&sigfd),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: polls one pollfd we own, 1 s at most (SIGCHLD wakes it).
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        while let Ok(Some(si)) = sigfd.read_signal() {
            if si.ssi_signo != libc::SIGCHLD as u32 {
                // SAFETY: kill takes integers only; the pid is our unreaped child.
                unsafe { libc::kill(pid, si.ssi_signo as i32) };
            }
        }
    }
}

/// A signal by number or name (`9`, `KILL`, `SIGKILL`).
fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n}: out of range");
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig: nix::sys::signal::Signal = format!("SIG{name}")
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))?;
    Ok(sig as i32)
}

fn kill(root: &Path, id: &str, signal: Option<&str>, all: bool) -> Result<u8> {
    let (dir, s) = state::load(root, id)?;
    let sig = parse_signal(signal.unwrap_or("SIGTERM"))?;
    if state::status(&dir, &s) == Status::Stopped {
        bail!("container not running");
    }
    let targets = if all { pids(&s) } else { vec![s.pid] };
    for p in targets {
        // SAFETY: kill takes integers only.
        if unsafe { libc::kill(p, sig) } != 0
            && nix::errno::Errno::last() != nix::errno::Errno::ESRCH
        {
            bail!("kill {p}: {}", nix::errno::Errno::last().desc());
        }
    }
    Ok(0)
}

fn delete(root: &Path, id: &str, force: bool) -> Result<u8> {
    let (dir, s) = match state::load(root, id) {
        Ok(x) => x,
        Err(state::Error::NotFound(_)) if force => {
            // runc: a forced delete of what is not there succeeds.
            let _ = state::dir(root, id).map(|d| state::remove(&d));
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let status = state::status(&dir, &s);
    if status == Status::Running && !force {
        bail!(
            "cannot delete container {id} that is not stopped: {}",
            status.as_str()
        );
    }
    destroy(&s);
    if let Ok(spec) = spec::load(&s.bundle) {
        let st = state_json(&dir, &s);
        for h in &spec.hooks.poststop {
            if let Err(e) = run_hook(h, &st) {
                eprintln!("{NAME}: poststop hook: {e:#}");
            }
        }
    }
    twinbox_container::cgroups::oci::remove(&s.cgroups)
        .context("removing the container's cgroups")?;
    remove_default_parents(&s.cgroups);
    state::remove(&dir)?;
    Ok(0)
}

/// Removes the default parent groups (`spec::DEFAULT_CGROUP_PARENT`, ours
/// to make) above `groups` once they are empty; one another container
/// still uses stays (rmdir refuses it).
fn remove_default_parents(groups: &[PathBuf]) {
    for g in groups {
        if let Some(parent) = g.parent() {
            if parent.file_name() == Some(std::ffi::OsStr::new(spec::DEFAULT_CGROUP_PARENT)) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn exec(
    root: &Path,
    id: &str,
    p: &spec::ProcessSpec,
    detach: bool,
    pid_file: Option<&Path>,
    console_socket: &Option<PathBuf>,
) -> Result<u8> {
    let (dir, s) = state::load(root, id)?;
    if state::status(&dir, &s) == Status::Stopped {
        bail!("cannot exec in a stopped container");
    }
    let spec = spec::load(&s.bundle)?;
    let process = spec::process(p)?;
    let program = process.args[0].clone();
    if !detach {
        // The process is a grandchild: become its reaper to wait for it.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let cfg = twinbox_container::oci::ExecConfig {
        pid: s.pid,
        cgroups: s.cgroups.clone(),
        process,
        seccomp: spec::seccomp(&spec)?,
        console_socket: console_socket.clone(),
    };
    let pid = twinbox_container::oci::exec(&cfg).map_err(|e| match e.exit_code() {
        127 => anyhow::anyhow!("exec: {program:?}: executable file not found in $PATH"),
        126 => anyhow::anyhow!("exec: {program:?}: permission denied"),
        _ => anyhow::Error::new(e).context("exec in the container"),
    })?;
    if let Some(f) = pid_file {
        write_pid_file(f, pid)?;
    }
    if detach {
        return Ok(0);
    }
    loop {
        let mut status = 0;
        // SAFETY: waits for any child into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            bail!(
                "waiting for the process: {}",
                nix::errno::Errno::last().desc()
            );
        }
        if r == pid {
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            return Ok(code as u8);
        }
    }
}

fn features() -> serde_json::Value {
    let ns = ["mount", "network", "uts", "pid", "ipc", "cgroup"];
    let caps: Vec<String> = (0..=40).filter_map(cap_name).collect();
    let mut annotations = BTreeMap::new();
    annotations.insert("io.twinbox.box", "container");
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "sync", "async", "dirsync", "noatime", "atime", "nodiratime", "diratime",
            "relatime", "norelatime", "strictatime", "nostrictatime", "bind", "rbind",
            "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable",
            "runbindable"],
        "linux": {
            "namespaces": ns,
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
                    "SCMP_ACT_LOG", "SCMP_ACT_TRACE"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                    "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": annotations,
    })
}

fn cap_name(n: u32) -> Option<String> {
    twinbox_container::caps::name(n).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("SIGTERM").ok(), Some(15));
        assert_eq!(parse_signal("term").ok(), Some(15));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn features_name_every_capability() {
        let f = features();
        assert_eq!(
            f["linux"]["capabilities"].as_array().map(Vec::len),
            Some(41)
        );
        assert_eq!(f["linux"]["cgroup"]["systemd"], false);
    }
}
