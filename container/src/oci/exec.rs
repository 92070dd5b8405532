//! A new process in a created or running bundle box (`exec`).
//!
//! A forked *middle* process joins the box's groups and, through a pidfd
//! of the box's first process, every namespace of it that differs from
//! ours, then forks the process (inside the box's PID namespace), sends
//! its pid (as the host sees it) back and exits at once: the process is
//! then reparented to the nearest child subreaper (the engine's shim),
//! which reaps it, as with runc's `exec --detach`. A caller that waits
//! for the process itself makes itself a subreaper first. The process
//! takes the terminal (a new one in the box, its master sent to the
//! console socket) or the caller's stdio, its working directory,
//! rlimits, user and capability sets, `no_new_privs` and the box's
//! seccomp filter, as the first process did ([`super::child`]), and
//! `execve`s; failures come back on a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;

use super::{cpath, Process};
use crate::child::{fail, read_report, Stage};
use crate::cstring as c;
use crate::run::Error;

/// One process to start in a bundle box.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The box's first process (host pid).
    pub pid: i32,
    /// The box's cgroup directories.
    pub cgroups: Vec<PathBuf>,
    /// The process.
    pub process: Process,
    /// The box's seccomp filter, if any.
    pub seccomp: Option<Vec<libc::sock_filter>>,
    /// Where a terminal's master goes.
    pub console_socket: Option<PathBuf>,
}

struct Plan {
    join: Vec<CString>,
    pidfd: RawFd,
    ns_flags: libc::c_int,
    cwd: CString,
    exec_paths: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    rlimits: Vec<(u32, u64, u64)>,
    seccomp: Option<Vec<libc::sock_filter>>,
    no_new_privs: bool,
    caps: crate::caps::Sets,
    last_cap: u32,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
    terminal: Option<(u16, u16)>,
    console: RawFd,
    err_write: RawFd,
    pid_write: RawFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys("pipe", e))
}

/// The namespaces of `pid` that differ from ours, as `CLONE_NEW*` flags.
fn differing_namespaces(pid: i32) -> libc::c_int {
    let kinds = [
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("uts", libc::CLONE_NEWUTS),
        ("ipc", libc::CLONE_NEWIPC),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("user", libc::CLONE_NEWUSER),
    ];
    let mut flags = 0;
    for (name, flag) in kinds {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}"));
        if let (Ok(t), Ok(o)) = (theirs, ours) {
            if t != o {
                flags |= flag;
            }
        }
    }
    flags
}

/// Starts the process of `cfg` in its box; returns its pid (as the host
/// sees it) once it runs (its `execve` succeeded), or why it could not
/// (127/126 as for a first process, see [`Error::exit_code`]).
pub fn exec(cfg: &ExecConfig) -> Result<i32, Error> {
    let p = &cfg.process;
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(Error::Config(crate::config::Error::NoCommand));
    }
    // SAFETY: pidfd_open takes a pid and flags; a valid result is a new
    // descriptor we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, cfg.pid, 0) } as RawFd;
    if raw < 0 {
        return Err(Error::Sys("opening the box's first process", Errno::last()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let console = match (&cfg.console_socket, p.terminal) {
        (Some(path), true) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(path).map_err(|e| {
                Error::Sys(
                    "connecting to the console socket",
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })?,
        )),
        (None, true) => {
            return Err(Error::Sys(
                "process.terminal needs --console-socket",
                Errno::EINVAL,
            ))
        }
        _ => None,
    };
    let (err_read, err_write) = pipe()?;
    let (pid_read, pid_write) = pipe()?;
    let argv_store: Vec<CString> = p.args.iter().map(|a| c(a)).collect();
    let env_store: Vec<CString> = p.env.iter().map(|e| c(e)).collect();
    let join = cfg
        .cgroups
        .iter()
        .map(|d| {
            let tasks = d.join("tasks");
            cpath(&if tasks.exists() {
                tasks
            } else {
                d.join("cgroup.procs")
            })
        })
        .collect();
    let plan = Plan {
        join,
        pidfd: pidfd.as_raw_fd(),
        ns_flags: differing_namespaces(cfg.pid),
        cwd: c(&p.cwd),
        exec_paths: crate::run::exec_paths(&p.args[0], &p.env),
        argv: crate::run::null_terminated(&argv_store),
        envp: crate::run::null_terminated(&env_store),
        rlimits: p.rlimits.clone(),
        seccomp: cfg.seccomp.clone(),
        no_new_privs: p.no_new_privs,
        caps: p.caps,
        last_cap: crate::caps::last_cap(),
        uid: p.uid,
        gid: p.gid,
        groups: p
            .additional_gids
            .iter()
            .map(|&g| nix::unistd::Gid::from_raw(g))
            .collect(),
        terminal: p.terminal.then(|| p.console_size.unwrap_or((0, 0))),
        console: console.as_ref().map_or(-1, |c| c.as_raw_fd()),
        err_write: err_write.as_raw_fd(),
        pid_write: pid_write.as_raw_fd(),
    };
    // SAFETY: the child runs `middle`, which makes system calls only and
    // never returns.
    let middle_pid = match unsafe { libc::fork() } {
        -1 => return Err(Error::Sys("fork", Errno::last())),
        0 => middle(&plan),
        pid => pid,
    };
    drop(err_write);
    drop(pid_write);
    let report = read_report(&err_read).map_err(|e| Error::Sys("reading the exec's report", e));
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(middle_pid), None);
    drop((argv_store, env_store));
    if let Some((stage, errno)) = report? {
        return Err(crate::run::report_error(stage, errno, &p.args[0]));
    }
    let mut buf = [0u8; 4];
    match nix::unistd::read(&pid_read, &mut buf) {
        Ok(4) => Ok(i32::from_ne_bytes(buf)),
        _ => Err(Error::Setup(Stage::Setns, Errno::EPROTO)),
    }
}

/// The middle process: the box's groups and namespaces, the fork, its pid.
fn middle(p: &Plan) -> ! {
    for t in &p.join {
        if let Err(e) = crate::cgroups::join_self(t) {
            fail(p.err_write, Stage::Cgroup, e);
        }
    }
    // SAFETY: setns takes a descriptor and flags.
    if p.ns_flags != 0 && unsafe { libc::setns(p.pidfd, p.ns_flags) } != 0 {
        fail(p.err_write, Stage::Setns, Errno::last());
    }
    // SAFETY: a plain fork of this single-purpose process.
    match unsafe { libc::fork() } {
        -1 => fail(p.err_write, Stage::Setns, Errno::last()),
        0 => {
            let Err((stage, errno)) = process(p);
            fail(p.err_write, stage, errno)
        }
        pid => {
            let b = pid.to_ne_bytes();
            // SAFETY: writes 4 bytes from a local to our pipe, then ends
            // the middle process (the process is reparented).
            unsafe {
                libc::write(p.pid_write, b.as_ptr().cast(), b.len());
                libc::_exit(0)
            }
        }
    }
}

enum Never {}

fn process(p: &Plan) -> Result<Never, (Stage, Errno)> {
    // SAFETY: closes our copy of the pid pipe.
    unsafe { libc::close(p.pid_write) };
    if let Some((rows, cols)) = p.terminal {
        crate::pty::make_in_box(p.console, rows, cols)?;
        // SAFETY: our copy of the console socket is no longer needed.
        unsafe { libc::close(p.console) };
    }
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
    for &(res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads a struct we own.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err((Stage::Rlimits, Errno::last()));
        }
    }
    if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privs) {
        crate::seccomp::filter::install(f).map_err(|e| (Stage::Seccomp, e))?;
    }
    super::child::become_user_with(&p.caps, p.last_cap, p.uid, p.gid, &p.groups)?;
    // SAFETY: the options take integers only.
    if p.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((Stage::Prctl, Errno::last()));
    }
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting a default disposition takes no pointers.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privs) {
        crate::seccomp::filter::install(f).map_err(|e| (Stage::Seccomp, e))?;
    }
    Err((
        Stage::Exec,
        crate::child::execve_over(&p.exec_paths, &p.argv, &p.envp),
    ))
}
