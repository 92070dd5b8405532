//! Starting the agent's processes: fork and exec with the request's
//! environment, directory and identity, in a new session, on a new
//! terminal (a PTY from /dev/ptmx, its controlling terminal) or on pipes.
//!
//! Everything the child needs (C strings, pointer arrays, the messages it
//! may print) is made before `fork`: the agent's tests run in a
//! multi-threaded process, where the child of `fork` may only make system
//! calls until it execs. Every descriptor the parent keeps is
//! close-on-exec and non-blocking.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use twinbox_agent::Exec;

/// The exit code of a child that could not be set up (directory, identity).
const EXIT_SETUP: i32 = 125;
/// Not executable, as a shell says.
const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Not found, as a shell says.
const EXIT_NOT_FOUND: i32 = 127;

/// How the process's stdio is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Pipes for stdout and stderr; stdin a pipe when `stdin`, else /dev/null.
    Pipes {
        /// Relay stdin.
        stdin: bool,
    },
    /// A new terminal of this size.
    Tty {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Everything on /dev/null (a detached process).
    Null,
}

impl Stdio {
    /// The stdio an `Exec` asks for.
    pub fn of(e: &Exec) -> Stdio {
        if e.detach {
            Stdio::Null
        } else if e.tty {
            Stdio::Tty {
                rows: e.rows,
                cols: e.cols,
            }
        } else {
            Stdio::Pipes { stdin: e.stdin }
        }
    }
}

/// A started process and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Child {
    /// Its pid (and process group: it leads a new session).
    pub pid: libc::pid_t,
    /// Readable when it has ended (`pidfd_open`).
    pub pidfd: OwnedFd,
    /// Where its stdin goes (a pipe, or the terminal's master).
    pub stdin: Option<OwnedFd>,
    /// Its stdout (a pipe, or the terminal's master).
    pub stdout: Option<OwnedFd>,
    /// Its stderr (a pipe; none on a terminal).
    pub stderr: Option<OwnedFd>,
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe"));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor the caller owns, no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os_error("fcntl"));
    }
    Ok(())
}

/// A descriptor that refers to the process `pid`, readable once it ends.
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(os_error("pidfd_open"));
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A new terminal: (master, slave), the master non-blocking, the size set.
fn pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let ptmx = cstr("/dev/ptmx")?;
    // SAFETY: open on a valid path.
    let m = unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if m < 0 {
        return Err(os_error("/dev/ptmx"));
    }
    // SAFETY: a new descriptor nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int we own.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(os_error("unlocking the pty"));
    }
    // SAFETY: TIOCGPTPEER opens the master's slave with these flags and
    // returns a new descriptor (no path lookup: it works in any mount
    // namespace or chroot).
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(os_error("opening the pty's slave"));
    }
    // SAFETY: a new descriptor nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    set_window_size(m, rows, cols)?;
    Ok((master, slave))
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its
/// foreground process group when it changes).
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> Result<(), String> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(os_error("setting the window size"));
    }
    Ok(())
}

/// What the child execs, made before fork.
struct Plan {
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    cwd: CString,
    identity: Option<(u32, u32)>,
    msg_cwd: Vec<u8>,
    msg_identity: Vec<u8>,
    msg_denied: Vec<u8>,
    msg_not_found: Vec<u8>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Plan {
    fn new(e: &Exec, identity: Option<(u32, u32)>) -> Result<Plan, String> {
        let program = e.argv.first().ok_or("no program")?;
        let argv = e.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let envp = e.env.iter().map(|v| cstr(v)).collect::<Result<_, _>>()?;
        let candidates = if program.contains('/') {
            vec![cstr(program)?]
        } else {
            let path = e
                .env
                .iter()
                .find_map(|v| v.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstr(&format!("{d}/{program}")))
                .collect::<Result<_, _>>()?
        };
        let cwd = if e.cwd.is_empty() { "/" } else { &e.cwd };
        Ok(Plan {
            argv,
            envp,
            candidates,
            cwd: cstr(cwd)?,
            identity,
            msg_cwd: format!("twinbox-init: cannot enter {cwd}\n").into_bytes(),
            msg_identity: format!("twinbox-init: cannot become {:?}\n", e.user).into_bytes(),
            msg_denied: format!("twinbox-init: {program}: permission denied\n").into_bytes(),
            msg_not_found: format!("twinbox-init: {program}: command not found\n").into_bytes(),
        })
    }
}

/// The child's ends, moved onto 0, 1 and 2.
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The terminal to make the controlling one.
    tty: Option<RawFd>,
}

/// Starts `e` as `identity` (`None`: the agent's own) with `stdio`.
pub fn spawn(e: &Exec, identity: Option<(u32, u32)>, stdio: Stdio) -> Result<Child, String> {
    let plan = Plan::new(e, identity)?;
    let null = || -> Result<OwnedFd, String> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|err| format!("/dev/null: {err}"))
    };
    // (the child's ends, kept until after fork; the agent's ends)
    let mut keep: Vec<OwnedFd> = Vec::new();
    let (fds, stdin, stdout, stderr) = match stdio {
        Stdio::Tty { rows, cols } => {
            let (master, slave) = pty(rows, cols)?;
            let input = master.try_clone().map_err(|err| format!("dup: {err}"))?;
            let s = slave.as_raw_fd();
            keep.push(slave);
            let fds = ChildFds {
                stdin: s,
                stdout: s,
                stderr: s,
                tty: Some(s),
            };
            (fds, Some(input), Some(master), None)
        }
        Stdio::Pipes { stdin } => {
            let (in_r, in_w) = if stdin {
                let (r, w) = pipe()?;
                (r, Some(w))
            } else {
                (null()?, None)
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let fds = ChildFds {
                stdin: in_r.as_raw_fd(),
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
                tty: None,
            };
            keep.extend([in_r, out_w, err_w]);
            (fds, in_w, Some(out_r), Some(err_r))
        }
        Stdio::Null => {
            let n = null()?;
            let r = n.as_raw_fd();
            keep.push(n);
            let fds = ChildFds {
                stdin: r,
                stdout: r,
                stderr: r,
                tty: None,
            };
            (fds, None, None, None)
        }
    };
    for fd in [&stdin, &stdout, &stderr].into_iter().flatten() {
        set_nonblocking(fd.as_raw_fd())?;
    }
    let mut argv_p: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = plan.envp.iter().map(|v| v.as_ptr()).collect();
    envp_p.push(std::ptr::null());

    // SAFETY: the child only makes system calls on what was prepared
    // above (see `child`), so fork is sound in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        child(&plan, &fds, &argv_p, &envp_p);
    }
    drop(keep);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) => {
            // Without a pidfd the agent would never learn of its end.
            // SAFETY: the child is ours and not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(err);
        }
    };
    Ok(Child {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
    })
}

/// Puts `fd` on `target` for exec (clearing close-on-exec if it is there already).
///
/// # Safety
/// Only system calls: callable in the child of a fork.
unsafe fn place(fd: RawFd, target: RawFd) {
    if fd == target {
        // SAFETY: fcntl on an open descriptor, no pointers.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    } else {
        // SAFETY: dup2 on open descriptors; the result is not close-on-exec.
        unsafe { libc::dup2(fd, target) };
    }
}

/// In the child: session, terminal, stdio, signals, directory, identity,
/// exec. Never returns; only system calls (no allocation, no locks).
fn child(
    plan: &Plan,
    fds: &ChildFds,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    let fail = |code: i32, msg: &[u8]| -> ! {
        // SAFETY: write from a buffer made before fork, then _exit, which
        // runs none of the parent's exit path.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(code)
        }
    };
    // SAFETY: plain system calls on descriptors and strings prepared
    // before fork.
    unsafe {
        libc::setsid();
        if let Some(t) = fds.tty {
            libc::ioctl(t, libc::TIOCSCTTY, 0);
        }
        place(fds.stdin, 0);
        place(fds.stdout, 1);
        place(fds.stderr, 2);
        // The agent blocks SIGCHLD (its signalfd) and Rust ignores
        // SIGPIPE: neither is the process's to inherit.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(EXIT_SETUP, &plan.msg_cwd);
        }
        if let Some((uid, gid)) = plan.identity {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                fail(EXIT_SETUP, &plan.msg_identity);
            }
        }
    }
    crate::port::disable();
    let mut denied = false;
    for path in &plan.candidates {
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        // SAFETY: errno is this thread's; reading it is a plain load.
        if unsafe { *libc::__errno_location() } == libc::EACCES {
            denied = true;
        }
    }
    if denied {
        fail(EXIT_NOT_EXECUTABLE, &plan.msg_denied)
    }
    fail(EXIT_NOT_FOUND, &plan.msg_not_found)
}
