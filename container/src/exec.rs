//! Exec: a new process in a running box, confined as its first process
//! was (`docker exec`).
//!
//! The process joins the box's cgroups, then every namespace of the box's
//! first process at once (`setns` on its pidfd), and forks: the fork is
//! inside the box's PID namespace, the parent stays outside as a
//! *waiter* that mirrors the fork's end in its own exit status (code, or
//! 128 + signal), so the launcher can wait for an ordinary child. The
//! fork then takes its stdio (a new session on a terminal with `-t`), its
//! working directory, its user, the box's capability bound, rlimit,
//! `no_new_privs` and seccomp profile, and `execve`s. Failures come back
//! on a close-on-exec pipe as for the first process ([`crate::child`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::child::{execve_over, fail, read_report, take_stdio, Stage};
use crate::config::Stdio;
use crate::cstring as c;
use crate::run::{Error, Running};
use crate::{caps, user};

/// One process to start in a running box.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The program and its arguments (looked up in `PATH` without '/').
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory in the box (must exist).
    pub cwd: String,
    /// User: `""` (the box's first process's), `uid[:gid]` or a name.
    pub user: String,
    /// Its standard streams.
    pub stdio: Stdio,
}

/// A started exec: the waiter, a child of the caller, whose exit status
/// is the process's (its code, or 128 + the signal that killed it).
#[derive(Debug)]
pub struct ExecProcess {
    /// The waiter's pid.
    pub pid: i32,
    /// The master of its terminal (with `Stdio::pty`).
    pub pty: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys("pipe", e))
}

/// What the forked side needs, made before the fork.
struct Plan {
    join: Vec<CString>,
    pidfd: RawFd,
    ns_flags: libc::c_int,
    cwd: CString,
    exec_paths: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
    set_groups: bool,
    nofile: (u64, u64),
    caps: (u64, u32),
    seccomp: bool,
    stdio: Stdio,
    pty_sock: RawFd,
    err_write: RawFd,
}

/// Starts `cfg` in `box_`; returns once the process runs (its `execve`
/// succeeded) or with why it could not (127/126 as for the first
/// process, see [`Error::exit_code`]).
pub fn exec(box_: &Running, cfg: &ExecConfig) -> Result<ExecProcess, Error> {
    if cfg.argv.is_empty() || cfg.argv[0].is_empty() {
        return Err(Error::Config(crate::config::Error::NoCommand));
    }
    if cfg
        .argv
        .iter()
        .chain(&cfg.env)
        .chain([&cfg.cwd, &cfg.user])
        .any(|s| s.contains('\0'))
    {
        return Err(Error::Config(crate::config::Error::Nul("an exec argument")));
    }
    if !cfg.cwd.starts_with('/') {
        return Err(Error::Config(crate::config::Error::Cwd(cfg.cwd.clone())));
    }
    let ctx = box_.exec_context();
    let ids = user::resolve(&ctx.rootfs, &cfg.user)?;
    if ctx.user_namespace && ids.uid != 0 {
        return Err(Error::UserInUserns(cfg.user.clone()));
    }
    let Some(pidfd) = box_.pidfd() else {
        return Err(Error::Sys("exec needs pidfds (Linux 5.8)", Errno::ENOSYS));
    };
    let (err_read, err_write) = pipe()?;
    let pty_pair = match cfg.stdio.pty {
        Some(_) => Some(crate::pty::pair().map_err(|e| Error::Sys("socketpair", e))?),
        None => None,
    };
    let argv_store: Vec<CString> = cfg.argv.iter().map(|a| c(a)).collect();
    let env_store: Vec<CString> = cfg.env.iter().map(|e| c(e)).collect();
    let mut ns_flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    let dirs = box_.cgroup_dirs();
    if !dirs.is_empty() {
        ns_flags |= libc::CLONE_NEWCGROUP;
    }
    if ctx.user_namespace {
        ns_flags |= libc::CLONE_NEWUSER;
    }
    let join = dirs
        .iter()
        .map(|d| {
            // v1 groups take a thread through `tasks`, v2 ones through
            // `cgroup.procs`; "0" is the writer itself.
            let tasks = d.join("tasks");
            let f = if tasks.exists() {
                tasks
            } else {
                d.join("cgroup.procs")
            };
            c(&f.to_string_lossy())
        })
        .collect();
    let plan = Plan {
        join,
        pidfd,
        ns_flags,
        cwd: c(&cfg.cwd),
        exec_paths: crate::run::exec_paths(&cfg.argv[0], &cfg.env),
        argv: crate::run::null_terminated(&argv_store),
        envp: crate::run::null_terminated(&env_store),
        uid: ids.uid,
        gid: ids.gid,
        groups: ids
            .groups
            .iter()
            .map(|&g| nix::unistd::Gid::from_raw(g))
            .collect(),
        set_groups: !ctx.user_namespace,
        nofile: ctx.nofile,
        caps: (caps::default_mask(), caps::last_cap()),
        seccomp: ctx.seccomp,
        stdio: cfg.stdio,
        pty_sock: pty_pair.as_ref().map_or(-1, |(_, c)| c.as_raw_fd()),
        err_write: err_write.as_raw_fd(),
    };
    // SAFETY: the child runs `waiter`, which makes system calls only and
    // never returns.
    match unsafe { libc::fork() } {
        -1 => Err(Error::Sys("fork", Errno::last())),
        0 => waiter(&plan),
        pid => {
            drop(err_write);
            // Keep the strings alive until the child has its copy.
            drop((argv_store, env_store));
            let report =
                read_report(&err_read).map_err(|e| Error::Sys("reading the exec's report", e))?;
            let Some((stage, errno)) = report else {
                let pty = match &pty_pair {
                    Some((ours, _)) => Some(
                        crate::pty::recv_master(ours.as_raw_fd())
                            .map_err(|e| Error::Sys("receiving the exec's terminal", e))?,
                    ),
                    None => None,
                };
                return Ok(ExecProcess { pid, pty });
            };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err(crate::run::report_error(stage, errno, &cfg.argv[0]))
        }
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), (Stage, Errno)> {
    // SAFETY: the options used here take integers only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err((Stage::Prctl, Errno::last()));
    }
    Ok(())
}

/// The waiter: joins the box, forks the process, mirrors its end.
fn waiter(p: &Plan) -> ! {
    if let Err((stage, errno)) = enter(p) {
        fail(p.err_write, stage, errno);
    }
    // SAFETY: a plain fork of this single-purpose process.
    match unsafe { libc::fork() } {
        -1 => fail(p.err_write, Stage::Setns, Errno::last()),
        0 => {
            let Err((stage, errno)) = process(p);
            fail(p.err_write, stage, errno)
        }
        pid => {
            // SAFETY: closes our copy of the report pipe, so the launcher
            // sees EOF when the process execs.
            unsafe { libc::close(p.err_write) };
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child into a local.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid {
                    break;
                }
                if r < 0 && Errno::last() != Errno::EINTR {
                    // SAFETY: ends the waiter.
                    unsafe { libc::_exit(125) };
                }
            }
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            // SAFETY: ends the waiter with the process's status.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The waiter's side: the box's cgroups and namespaces.
fn enter(p: &Plan) -> Result<(), (Stage, Errno)> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    // The cgroups first: their host paths vanish with the mount namespace.
    for t in &p.join {
        crate::cgroups::join_self(t).map_err(|e| (Stage::Cgroup, e))?;
    }
    // SAFETY: setns takes a descriptor and flags.
    if unsafe { libc::setns(p.pidfd, p.ns_flags) } != 0 {
        return Err((Stage::Setns, Errno::last()));
    }
    Ok(())
}

enum Never {}

/// The process's side, inside the box, up to `execve`.
fn process(p: &Plan) -> Result<Never, (Stage, Errno)> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    match p.stdio.pty {
        Some((rows, cols)) => crate::pty::make_in_box(p.pty_sock, rows, cols)?,
        None => take_stdio(&p.stdio)?,
    }
    // Inherited descriptors must not reach the process.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(|e| (Stage::Cwd, e))?;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        p.nofile.0,
        p.nofile.1,
    )
    .map_err(|e| (Stage::Rlimits, e))?;
    caps::restrict(p.caps.0, p.caps.1).map_err(|e| (Stage::Caps, e))?;
    if p.set_groups {
        nix::unistd::setgroups(&p.groups).map_err(|e| (Stage::User, e))?;
    }
    nix::unistd::setgid(nix::unistd::Gid::from_raw(p.gid)).map_err(|e| (Stage::User, e))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(p.uid)).map_err(|e| (Stage::User, e))?;
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting a default disposition takes no pointers.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = empty.thread_set_mask();
    if p.seccomp {
        crate::seccomp::install().map_err(|e| (Stage::Seccomp, e))?;
    }
    Err((Stage::Exec, execve_over(&p.exec_paths, &p.argv, &p.envp)))
}
