//! Runs one box: checks the configuration, makes its cgroups, plans the
//! child, clones it into new namespaces, feeds it the go-ahead, waits for
//! its exit, a timeout or a signal to the launcher, and cleans up on every
//! path (the guards below remove the cgroups and reap the child even when
//! setup fails half-way).
//!
//! Mounts need no cleanup: they live only in the box's mount namespace,
//! which dies with its last process. If the launcher itself is SIGKILLed,
//! the box gets SIGKILL too (parent-death signal) and the cgroups it left
//! are removed by the next launcher ([`crate::cgroups::collect_stale`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::cgroups::{self, Cgroup};
use crate::child::{self, ChildPlan, Stage};
use crate::config::{self, ContainerConfig};
use crate::cstring as c;
use crate::spawn::{self, Fork};
use crate::{binds, caps, devices, idmap, mounts, rootfs, user};

/// Errors of running a box.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] user::Error),
    /// The cgroups could not be made.
    #[error(transparent)]
    Cgroups(#[from] cgroups::Error),
    /// The id maps could not be written.
    #[error("user namespace: {0}")]
    IdMap(#[from] idmap::Error),
    /// A launcher-side system call failed.
    #[error("{0}")]
    Sys(&'static str, #[source] Errno),
    /// Not root and no user namespace asked for.
    #[error("a container needs root, or --userns to run without it")]
    NotRoot,
    /// A user namespace maps root only.
    #[error("with a user namespace only root (uid 0) exists in the box, not {0:?}")]
    UserInUserns(String),
    /// The box failed before its command started.
    #[error("setting up the box: {} failed: {}", .0.doing(), .1.desc())]
    Setup(Stage, Errno),
    /// The command could not be executed.
    #[error("{cmd}: {}", match .errno { Errno::ENOENT | Errno::ENOTDIR => "command not found in the box".to_string(), e => e.desc().to_string() })]
    Exec {
        /// The command.
        cmd: String,
        /// Why.
        errno: Errno,
    },
}

impl Error {
    /// The exit code a shell would give for this error: 127 for a missing
    /// command, 126 for one that cannot run, 125 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Exec {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            } => 127,
            Self::Exec { .. } => 126,
            _ => 125,
        }
    }
}

/// The error a child's report (stage and errno) stands for; `cmd` is the
/// program it was to run.
pub(crate) fn report_error(stage: Option<Stage>, errno: Errno, cmd: &str) -> Error {
    match stage {
        Some(Stage::Exec) => Error::Exec {
            cmd: cmd.to_string(),
            errno,
        },
        Some(s) => Error::Setup(s, errno),
        None => Error::Setup(Stage::Parent, Errno::EPROTO),
    }
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

/// Why the run ended, beyond the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The workload ended by itself.
    Normal,
    /// The timeout passed and the box was killed.
    TimedOut,
    /// The launcher got this signal and killed the box.
    Interrupted(i32),
}

/// Where the time of a run went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Making the cgroups.
    pub cgroup_create: Duration,
    /// From `clone` to the workload's `execve` reported back.
    pub setup: Duration,
    /// From `execve` to the workload's exit.
    pub workload: Duration,
    /// Removing the cgroups.
    pub cleanup: Duration,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How the workload ended.
    pub exit: Exit,
    /// Why.
    pub ending: Ending,
    /// OOM kills inside the box.
    pub oom_kills: u64,
    /// Peak memory of the box, where the kernel reports it.
    pub memory_peak: Option<u64>,
    /// Where the time went.
    pub timings: Timings,
}

/// The signals that make the launcher kill the box and clean up.
const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Restores the launcher's signal mask when dropped.
struct MaskGuard(SigSet);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

/// Kills and reaps the child when dropped, unless it was reaped.
struct ChildGuard(Option<Pid>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys("pipe", e))
}

/// Wakes the child. `Ok(false)`: it has already ended (its setup failed
/// before it waited, and its report says why), so there is nobody to wake.
fn write_byte(fd: RawFd) -> Result<bool, Error> {
    // SAFETY: writes one byte from a literal to our pipe.
    if unsafe { libc::write(fd, b"g".as_ptr().cast(), 1) } != 1 {
        return match Errno::last() {
            Errno::EPIPE => Ok(false),
            e => Err(Error::Sys("waking the box", e)),
        };
    }
    Ok(true)
}

/// Candidate paths for the program: itself if it holds a '/', else each
/// `PATH` entry (the box's, or the usual default).
pub(crate) fn exec_paths(program: &str, env: &[String]) -> Vec<CString> {
    if program.contains('/') {
        return vec![c(program)];
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| c(&format!("{}/{program}", d.trim_end_matches('/'))))
        .collect()
}

pub(crate) fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn stdout_tty() -> Option<String> {
    if !nix::unistd::isatty(std::io::stdout()).unwrap_or(false) {
        return None;
    }
    std::fs::read_link("/proc/self/fd/1")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("/dev/"))
}

/// Starts the box described by `cfg` and returns once its command runs
/// (its `execve` succeeded); [`Running`] owns it from there. The workload
/// starts with the caller's signal mask.
pub fn start(cfg: &ContainerConfig) -> Result<Running, Error> {
    let mask = SigSet::thread_get_mask().map_err(|e| Error::Sys("sigprocmask", e))?;
    start_masked(cfg, mask)
}

/// [`start`], the workload's signal mask set to `sigmask` before `execve`.
fn start_masked(cfg: &ContainerConfig, old_mask: SigSet) -> Result<Running, Error> {
    cfg.validate()?;
    let root = nix::unistd::geteuid().is_root();
    if !root && !cfg.user_namespace {
        return Err(Error::NotRoot);
    }
    let ids = user::resolve(&cfg.rootfs, &cfg.user)?;
    if cfg.user_namespace && ids.uid != 0 {
        return Err(Error::UserInUserns(cfg.user.clone()));
    }

    // cgroups, made before the box so a failure costs nothing else.
    let t0 = Instant::now();
    let cgroup = if root {
        let layout = cgroups::layout::detect().map_err(|e| {
            Error::Sys(
                "reading /proc/self/mountinfo",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let plan = cgroups::plan(&layout, &cgroups::fresh_name(), &cfg.limits, &|ctl| {
            cgroups::own_group(&own, ctl)
        })?;
        cgroups::collect_stale(&plan);
        Some(Cgroup::create(plan)?)
    } else {
        if cfg.limits != config::Limits::default() {
            return Err(cgroups::Error::Unavailable(
                "limits need root (the launcher writes the cgroup files)".into(),
            )
            .into());
        }
        None
    };
    let cgroup_create = t0.elapsed();

    // The child's plan.
    let rootfs_s = cfg.rootfs.to_string_lossy();
    let scratch_s = cfg.scratch.to_string_lossy();
    let size = cfg.writable_size.or(cfg.limits.memory).unwrap_or(1 << 30);
    let root_plan = rootfs::plan(&rootfs_s, &scratch_s, size, cfg.user_namespace);
    let merged = root_plan.merged.to_string_lossy().into_owned();
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let pty_pair = match cfg.stdio.pty {
        Some(_) => Some(crate::pty::pair().map_err(|e| Error::Sys("socketpair", e))?),
        None => None,
    };
    let argv_store: Vec<CString> = cfg.argv.iter().map(|a| c(a)).collect();
    let env_store: Vec<CString> = cfg.env.iter().map(|e| c(e)).collect();
    let mut cwd_parts = Vec::new();
    let mut acc = String::new();
    for part in cfg.cwd.split('/').filter(|p| !p.is_empty()) {
        acc.push('/');
        acc.push_str(part);
        cwd_parts.push(c(&acc));
    }
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(1024);
    let plan = ChildPlan {
        mounts: mounts::plan(&merged, &|p| std::path::Path::new(p).is_dir()),
        binds: binds::plan(&cfg.binds),
        dev: devices::plan(&merged, cfg.user_namespace, stdout_tty().as_deref()),
        dev_mounts: mounts::dev_plan(&merged, cfg.user_namespace),
        root: root_plan,
        hostname: c(&cfg.hostname),
        loopback: true,
        join_cgroups: cgroup
            .as_ref()
            .map(|cg| {
                cg.self_join_files()
                    .iter()
                    .map(|p| c(&p.to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default(),
        wait_for_maps: cfg.user_namespace,
        cgroup_ns: cgroup.is_some(),
        cwd_parts,
        cwd: c(&cfg.cwd),
        nofile: (1024.min(hard), hard),
        caps: (caps::default_mask(), caps::last_cap()),
        set_groups: !cfg.user_namespace,
        uid: ids.uid,
        gid: ids.gid,
        groups: ids
            .groups
            .iter()
            .map(|&g| nix::unistd::Gid::from_raw(g))
            .collect(),
        seccomp: cfg.seccomp,
        exec_paths: exec_paths(&cfg.argv[0], &cfg.env),
        argv: null_terminated(&argv_store),
        envp: null_terminated(&env_store),
        argv_store,
        env_store,
        sigmask: *old_mask.as_ref(),
        go_read: go_read.as_raw_fd(),
        go_write: go_write.as_raw_fd(),
        err_write: err_write.as_raw_fd(),
        err_read: err_read.as_raw_fd(),
        stdio: cfg.stdio,
        pty_sock: pty_pair.as_ref().map_or(-1, |(_, c)| c.as_raw_fd()),
    };
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    if cfg.user_namespace {
        flags |= CloneFlags::CLONE_NEWUSER;
    }

    // On v2 the child is created in its group (no move, no RCU wait).
    let cgroup_dir = match cgroup.as_ref().filter(|cg| cg.needs_add()) {
        Some(cg) => cg
            .dirs()
            .next()
            .map(|d| {
                nix::fcntl::open(
                    d,
                    nix::fcntl::OFlag::O_RDONLY
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
            })
            .transpose()
            .map_err(|e| Error::Sys("opening the box's cgroup", e))?,
        None => None,
    };

    let t_clone = Instant::now();
    // SAFETY: the child runs `child::run`, which makes system calls only
    // and never returns.
    let fork = unsafe { spawn::clone(flags, cgroup_dir.as_ref().map(|f| f.as_raw_fd())) }
        .map_err(|e| Error::Sys("clone with new namespaces", e))?;
    let (pid, in_cgroup) = match fork {
        Fork::Child => child::run(&plan),
        Fork::Parent { pid, in_cgroup } => (Pid::from_raw(pid), in_cgroup),
    };
    drop(cgroup_dir);
    let mut guard = ChildGuard(Some(pid));
    drop(go_read);
    drop(err_write);

    // A child whose setup failed has ended without waiting for us: then
    // its report is all that is left to read.
    let mut alive = true;
    if cfg.user_namespace {
        idmap::write(
            pid.as_raw(),
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )?;
        alive = write_byte(go_write.as_raw_fd())?;
    }
    // Joining the cgroup fails too when the child has ended: its report
    // comes first, as the better reason.
    let mut join = Ok(());
    if alive {
        if let Some(cg) = cgroup.as_ref().filter(|cg| cg.needs_add() && !in_cgroup) {
            join = cg.add(pid.as_raw());
        }
        if join.is_ok() {
            alive = write_byte(go_write.as_raw_fd())?;
        } else {
            // Whether or not it still runs, the child is done: what it
            // reported before, if anything, is read below.
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
    }

    // EOF on the error pipe: execve succeeded. Eight bytes: a failure.
    let report = child::read_report(&err_read)
        .map_err(|e| Error::Sys("reading the box's setup report", e))?;
    let setup = t_clone.elapsed();
    drop(go_write);
    if let Some((stage, errno)) = report {
        guard.0 = None;
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(report_error(stage, errno, &cfg.argv[0]));
    }
    join?;
    if !alive {
        return Err(Error::Sys("waking the box", Errno::EPIPE));
    }

    // SAFETY: pidfd_open takes a pid and flags, no pointers; a valid
    // result is a new descriptor we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) } as RawFd;
    let pidfd = (raw >= 0).then(|| {
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
    });
    let pty = match &pty_pair {
        Some((ours, _)) => Some(
            crate::pty::recv_master(ours.as_raw_fd())
                .map_err(|e| Error::Sys("receiving the box's terminal", e))?,
        ),
        None => None,
    };
    guard.0 = None;
    Ok(Running {
        pid,
        pidfd,
        pty,
        cgroup,
        reaped: false,
        t_exec: Instant::now(),
        cgroup_create,
        setup,
        exec: ExecContext {
            rootfs: cfg.rootfs.clone(),
            seccomp: cfg.seccomp,
            user_namespace: cfg.user_namespace,
            nofile: (1024.min(hard), hard),
        },
    })
}

/// What an exec into a running box needs to know of how its first
/// process was confined.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The image's root file system on the host (for user names).
    pub rootfs: std::path::PathBuf,
    /// The seccomp profile is installed.
    pub seccomp: bool,
    /// The box has its own user namespace.
    pub user_namespace: bool,
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
}

/// A started box: its first process, its cgroups. Dropping it before
/// [`Running::finish`] kills the box and removes its cgroups.
#[derive(Debug)]
pub struct Running {
    pid: Pid,
    pidfd: Option<OwnedFd>,
    pty: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
    reaped: bool,
    t_exec: Instant,
    cgroup_create: Duration,
    setup: Duration,
    exec: ExecContext,
}

impl Running {
    /// The box's first process, as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// A pidfd of the first process (readable when it exits), where the
    /// kernel has them.
    pub fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(|f| f.as_raw_fd())
    }

    /// The master of the box's terminal (with `Stdio::pty`), once.
    pub fn take_pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    /// How the first process was confined, for exec.
    pub fn exec_context(&self) -> &ExecContext {
        &self.exec
    }

    /// The box's cgroup directories (what an exec'd process joins).
    pub fn cgroup_dirs(&self) -> Vec<std::path::PathBuf> {
        self.cgroup
            .as_ref()
            .map(|cg| cg.dirs().map(|d| d.to_path_buf()).collect())
            .unwrap_or_default()
    }

    /// Sends `sig` to the box's first process. A process that already
    /// exited (not yet reaped) is not an error.
    pub fn signal(&self, sig: i32) -> Result<(), Error> {
        // SAFETY: kill takes integers only.
        let r = unsafe { libc::kill(self.pid.as_raw(), sig) };
        if r != 0 && Errno::last() != Errno::ESRCH {
            return Err(Error::Sys("signalling the box", Errno::last()));
        }
        Ok(())
    }

    /// The first process's end, if it has ended (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<Exit>, Error> {
        if self.reaped {
            return Ok(None);
        }
        loop {
            match nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                    self.reaped = true;
                    return Ok(Some(Exit::Code(code)));
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    self.reaped = true;
                    return Ok(Some(Exit::Signal(sig as i32)));
                }
                Ok(_) => return Ok(None),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::Sys("waiting for the box", e)),
            }
        }
    }

    /// Cleans up after the first process's `exit`: whatever is left in the
    /// box's cgroups is killed and the groups are removed.
    pub fn finish(mut self, exit: Exit, ending: Ending) -> Result<Outcome, Error> {
        if !self.reaped {
            let _ = self.signal(libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
            self.reaped = true;
        }
        let workload = self.t_exec.elapsed();
        let t_clean = Instant::now();
        let cgroup = self.cgroup.take();
        let (oom_kills, memory_peak) = cgroup
            .as_ref()
            .map_or((0, None), |cg| (cg.oom_kills(), cg.memory_peak()));
        if let Some(cg) = cgroup {
            cg.remove()?;
        }
        Ok(Outcome {
            exit,
            ending,
            oom_kills,
            memory_peak,
            timings: Timings {
                cgroup_create: self.cgroup_create,
                setup: self.setup,
                workload,
                cleanup: t_clean.elapsed(),
            },
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.signal(libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// Runs the box described by `cfg` to its end: its exit, its timeout, or
/// a stop signal to the launcher (which kills it).
pub fn run(cfg: &ContainerConfig) -> Result<Outcome, Error> {
    let old_mask = SigSet::thread_get_mask().map_err(|e| Error::Sys("sigprocmask", e))?;
    // Signals to the launcher are taken from a signalfd from here on, so a
    // Ctrl-C cannot end the launcher between clone and cleanup.
    let mut stop = SigSet::empty();
    for s in STOP_SIGNALS {
        stop.add(s);
    }
    stop.thread_block()
        .map_err(|e| Error::Sys("sigprocmask", e))?;
    let _mask = MaskGuard(old_mask);
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &stop,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| Error::Sys("signalfd", e))?;
    let mut box_ = start_masked(cfg, old_mask)?;

    // Wait for the exit, a timeout or a stop signal.
    let deadline = cfg.timeout.map(|t| box_.t_exec + t);
    let pidfd = box_.pidfd().unwrap_or(-1);
    let mut ending = Ending::Normal;
    let exit = loop {
        let timeout_ms: i32 = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        let mut fds = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // With no pidfd (kernels before 5.3) poll only the signals, briefly.
        let (ptr, n, t) = if pidfd >= 0 {
            (fds.as_mut_ptr(), 2, timeout_ms)
        } else {
            (
                fds[1..].as_mut_ptr(),
                1,
                if timeout_ms < 0 {
                    10
                } else {
                    timeout_ms.min(10)
                },
            )
        };
        // SAFETY: polls pollfds we own.
        let r = unsafe { libc::poll(ptr, n, t) };
        if r < 0 && Errno::last() != Errno::EINTR {
            return Err(Error::Sys("poll", Errno::last()));
        }
        if let Ok(Some(si)) = sigfd.read_signal() {
            ending = Ending::Interrupted(si.ssi_signo as i32);
            let _ = box_.signal(libc::SIGKILL);
        } else if deadline.is_some_and(|d| Instant::now() >= d) && ending == Ending::Normal {
            ending = Ending::TimedOut;
            let _ = box_.signal(libc::SIGKILL);
        }
        if let Some(exit) = box_.try_wait()? {
            break exit;
        }
    };
    box_.finish(exit, ending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_paths_follow_path_or_take_a_slash_path() {
        let env = vec!["PATH=/usr/bin::/bin/".to_string()];
        let v: Vec<_> = exec_paths("ls", &env)
            .into_iter()
            .map(|c| c.into_string().unwrap_or_default())
            .collect();
        assert_eq!(v, vec!["/usr/bin/ls", "./ls", "/bin/ls"]);
        assert_eq!(exec_paths("./x", &env).len(), 1);
        assert_eq!(exec_paths("true", &[]).len(), 6);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Exit::Signal(9).code(), 137);
        let e = Error::Exec {
            cmd: "x".into(),
            errno: Errno::ENOENT,
        };
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().contains("not found"));
        assert_eq!(
            Error::Exec {
                cmd: "x".into(),
                errno: Errno::EACCES
            }
            .exit_code(),
            126
        );
    }
}
