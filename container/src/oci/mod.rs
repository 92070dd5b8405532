//! A box made from an OCI bundle (what an engine hands an OCI runtime):
//! [`Bundle`] is the bundle's `config.json`, already parsed and checked by
//! the caller; [`create`] makes the box and leaves its process waiting,
//! set up, just before `execve`; [`start`] lets it go; [`exec`] starts
//! another process in it.
//!
//! The difference from [`crate::run`]: the engine has made the root file
//! system (Docker's overlay) and says which mounts, namespaces, cgroups,
//! capabilities and seccomp rules the box gets, and the box outlives the
//! process that made it. So:
//!
//! - the root is the bundle's `root.path`, bound onto itself (no overlay
//!   of ours), read-only if asked, entered with `pivot_root` (or `MS_MOVE`
//!   and `chroot` with `no_pivot`);
//! - namespaces are made as listed, or joined by path (`setns` before
//!   anything else: network, UTS, IPC);
//! - mounts are the bundle's, in its order, each destination resolved
//!   inside the root with `openat2(RESOLVE_IN_ROOT)` as volumes are
//!   ([`crate::binds`]), then the default devices, sysctls, masked and
//!   read-only paths;
//! - the groups are at the bundle's `cgroupsPath` ([`crate::cgroups::oci`])
//!   and are kept when `create` returns;
//! - the process's capability sets, rlimits, user and groups,
//!   `no_new_privs`, `oom_score_adj` and seccomp filter (compiled by the
//!   caller with [`crate::seccomp::filter`]) are the bundle's. As runc
//!   does, a filter is installed before the user change when
//!   `no_new_privs` is off (it needs `CAP_SYS_ADMIN` then), else last;
//! - the process has no parent-death signal once set up: when `create`
//!   exits it is reparented to the nearest child subreaper (the engine's
//!   shim), which reaps it;
//! - `create` returns when the process waits on the *exec fifo*: it
//!   opens the fifo for writing (through `/proc/self/fd`, the fifo lies
//!   outside its root), which blocks until [`start`] opens it for
//!   reading; it writes a byte and `execve`s. The program is looked up
//!   before it waits, so a missing one fails `create`.

mod child;
mod exec;
mod mounts;

pub use exec::{exec, ExecConfig};
pub use mounts::{Mount, MountKind};

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::cgroups::{self, Cgroup};
use crate::child::{read_report, Stage};
use crate::cstring as c;
use crate::run::Error;
use crate::spawn::{self, Fork};

/// The process of a bundle (its `process`, or an exec's `--process`).
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory in the box (made if missing).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capability sets.
    pub caps: crate::caps::Sets,
    /// (resource, soft, hard), resources as `RLIMIT_*` numbers.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// `oom_score_adj`, -1000 to 1000.
    pub oom_score_adj: Option<i32>,
    /// A new terminal in the box, its master sent to the console socket.
    pub terminal: bool,
    /// The terminal's size (rows, columns), if given.
    pub console_size: Option<(u16, u16)>,
}

/// Which namespaces the box gets.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Made new by `clone`.
    pub new: CloneFlags,
    /// Joined by path: (`CLONE_NEW*` type, path). Network, UTS and IPC.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            new: CloneFlags::empty(),
            join: Vec::new(),
        }
    }
}

impl Namespaces {
    /// The box has (made or joined) a namespace of this type.
    pub fn has(&self, t: CloneFlags) -> bool {
        self.new.contains(t) || self.join.iter().any(|(k, _)| *k == t)
    }
}

/// One bundle, checked by the caller (absolute paths, no NUL, bounded).
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The root file system (the bundle's `root.path`, made absolute).
    pub root: PathBuf,
    /// Mount it read-only.
    pub root_readonly: bool,
    /// `MS_MOVE` and `chroot` instead of `pivot_root`.
    pub no_pivot: bool,
    /// The process.
    pub process: Process,
    /// Host name (with a UTS namespace).
    pub hostname: Option<String>,
    /// The mounts, in order.
    pub mounts: Vec<Mount>,
    /// Namespaces.
    pub namespaces: Namespaces,
    /// Paths covered by /dev/null or an empty read-only tmpfs.
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// (key, value): `net.ipv4.ip_forward` is `/proc/sys/net/ipv4/ip_forward`.
    pub sysctls: Vec<(String, String)>,
    /// The compiled seccomp filter, if any.
    pub seccomp: Option<Vec<libc::sock_filter>>,
    /// The cgroups' path (`linux.cgroupsPath`).
    pub cgroups_path: String,
    /// Their resources.
    pub resources: cgroups::oci::Resources,
    /// Where a terminal's master goes (a Unix socket path).
    pub console_socket: Option<PathBuf>,
    /// The exec fifo to make and wait on (in the runtime's state dir).
    pub exec_fifo: PathBuf,
}

/// A created box: its process waits on the exec fifo.
#[derive(Debug)]
pub struct Created {
    /// The box's first process, as the host sees it.
    pub pid: i32,
    /// Its cgroup directories (kept; remove them at delete).
    pub cgroups: Vec<PathBuf>,
    /// How long the setup took.
    pub setup: Duration,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys("pipe", e))
}

fn open_path(p: &Path, flags: nix::fcntl::OFlag, what: &'static str) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        p,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Sys(what, e))
}

/// Kills and reaps the child when dropped, unless disarmed.
struct ChildGuard(Option<i32>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// Makes the exec fifo (0622, so a box user who is not root can open it
/// for writing), removed again if `create` fails.
struct Fifo(PathBuf, bool);

impl Drop for Fifo {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The host's directory of each v1 group, named as its hierarchy is
/// mounted (`memory`, `cpu,cpuacct`), for a `cgroup` mount in the box.
fn cgroup_subdirs(layout: &cgroups::Layout, dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let mounts = match layout {
        cgroups::Layout::V1 { controllers } => controllers,
        cgroups::Layout::Hybrid { v1, .. } => v1,
        _ => return Vec::new(),
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for d in dirs {
        let Some((_, m)) = mounts.iter().find(|(_, m)| d.starts_with(m)) else {
            continue;
        };
        let Some(name) = m.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), d.clone()));
        }
    }
    out
}

/// Makes the box of `b` and returns once its process waits on the exec
/// fifo (or with why it could not be made: nothing of it is left then).
pub fn create(b: &Bundle) -> Result<Created, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    if b.process.args.is_empty() || b.process.args[0].is_empty() {
        return Err(Error::Config(crate::config::Error::NoCommand));
    }
    let t0 = Instant::now();

    // The groups first: a failure costs nothing else.
    let layout = cgroups::layout::detect().map_err(|e| {
        Error::Sys(
            "reading /proc/self/mountinfo",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_group = |ctl: &str| {
        if ctl.is_empty() {
            own.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .to_string()
        } else {
            cgroups::own_group(&own, ctl)
        }
    };
    let plan = cgroups::oci::plan(&layout, &b.cgroups_path, &b.resources, &own_group)?;
    let cgroup = Cgroup::create_at(plan)?;
    let dirs: Vec<PathBuf> = cgroup.dirs().map(Path::to_path_buf).collect();

    // The exec fifo.
    nix::unistd::mkfifo(
        &b.exec_fifo,
        nix::sys::stat::Mode::from_bits_truncate(0o622),
    )
    .map_err(|e| Error::Sys("making the exec fifo", e))?;
    let mut fifo = Fifo(b.exec_fifo.clone(), false);
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &b.exec_fifo,
        nix::sys::stat::Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| Error::Sys("making the exec fifo", e))?;
    let fifo_fd = open_path(
        &b.exec_fifo,
        nix::fcntl::OFlag::O_PATH,
        "opening the exec fifo",
    )?;

    // Namespaces joined by path, opened here (the child only calls setns).
    let mut join_fds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (t, p) in &b.namespaces.join {
        join_fds.push((
            open_path(p, nix::fcntl::OFlag::O_RDONLY, "opening a namespace path")?,
            *t,
        ));
    }
    let console = match (&b.console_socket, b.process.terminal) {
        (Some(p), true) => Some(connect_console(p)?),
        (None, true) => {
            return Err(Error::Sys(
                "process.terminal needs --console-socket",
                Errno::EINVAL,
            ))
        }
        _ => None,
    };

    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let subdirs = cgroup_subdirs(&layout, &dirs);
    let plan = child::plan(
        b,
        &subdirs,
        &dirs,
        child::Fds {
            go_read: go_read.as_raw_fd(),
            go_write: go_write.as_raw_fd(),
            err_read: err_read.as_raw_fd(),
            err_write: err_write.as_raw_fd(),
            fifo: fifo_fd.as_raw_fd(),
            console: console.as_ref().map_or(-1, |c| c.as_raw_fd()),
            join: join_fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect(),
        },
        cgroup.needs_add(),
    );

    // SAFETY: the child runs `child::run`, which makes system calls only
    // and never returns.
    let fork = unsafe { spawn::clone(b.namespaces.new, None) }
        .map_err(|e| Error::Sys("clone with new namespaces", e))?;
    let pid = match fork {
        Fork::Child => child::run(&plan),
        Fork::Parent { pid, .. } => pid,
    };
    let mut guard = ChildGuard(Some(pid));
    drop(go_read);
    drop(err_write);
    if cgroup.needs_add() {
        cgroup.add(pid)?;
    }
    if let Some(adj) = b.process.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(|e| Error::Sys("writing oom_score_adj", errno_of(&e)))?;
    }
    // SAFETY: writes one byte from a literal to our pipe.
    unsafe { libc::write(go_write.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    let report =
        read_report(&err_read).map_err(|e| Error::Sys("reading the box's setup report", e))?;
    match report {
        Some((Some(Stage::Ready), _)) => {}
        Some((stage, errno)) => {
            return Err(crate::run::report_error(stage, errno, &b.process.args[0]));
        }
        None => return Err(Error::Setup(Stage::Parent, Errno::EPIPE)),
    }
    guard.0 = None;
    fifo.1 = true;
    Ok(Created {
        pid,
        cgroups: cgroup.keep(),
        setup: t0.elapsed(),
    })
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Connects to the engine's console socket (a Unix stream socket).
fn connect_console(path: &Path) -> Result<OwnedFd, Error> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| Error::Sys("connecting to the console socket", errno_of(&e)))?;
    Ok(OwnedFd::from(s))
}

/// Why [`start`] could not release the box.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The fifo is gone: the box was started already.
    #[error("the container was started already (its exec fifo is gone)")]
    Started,
    /// The process ended before it was released.
    #[error("the container's process has ended")]
    Gone,
    /// A system call failed.
    #[error("{0}")]
    Sys(&'static str, #[source] Errno),
}

/// Releases a created box: opens its exec fifo for reading (which lets the
/// process's blocked open return), reads its byte, and removes the fifo.
/// `alive` says whether the box's process still lives (checked while
/// waiting, so a process killed meanwhile does not hang `start`).
pub fn start(fifo: &Path, alive: &dyn Fn() -> bool) -> Result<(), StartError> {
    let fd = match nix::fcntl::open(
        fifo,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(StartError::Started),
        Err(e) => return Err(StartError::Sys("opening the exec fifo", e)),
    };
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r < 0 && Errno::last() != Errno::EINTR {
            return Err(StartError::Sys("waiting on the exec fifo", Errno::last()));
        }
        if r > 0 && pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            match nix::unistd::read(&fd, &mut b) {
                Ok(1) => break,
                Ok(_) => return Err(StartError::Gone),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(StartError::Sys("reading the exec fifo", e)),
            }
        }
        if r > 0 && pfd.revents & libc::POLLHUP != 0 || !alive() {
            return Err(StartError::Gone);
        }
    }
    let _ = std::fs::remove_file(fifo);
    Ok(())
}

/// The C string of a path (validated by the caller: no NUL).
pub(crate) fn cpath(p: &Path) -> CString {
    c(&p.to_string_lossy())
}
