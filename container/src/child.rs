//! The box's first process, from `clone` to `execve`: everything it does,
//! in order, planned by the parent as a [`ChildPlan`] of ready C strings so
//! the child makes system calls only (it is a copy of a process that may
//! have had other threads; allocating there could deadlock).
//!
//! Order: parent-death signal; wait for the id maps (user namespace only);
//! join the v1 cgroups (itself: see `Cgroup::self_join_files`); private
//! mount tree, scratch tmpfs, overlay; the volumes (binds); /proc, /sys, masked and
//! read-only paths; /dev; hostname; loopback up; `pivot_root`; wait for
//! the parent's go-ahead (on v2 it has moved the child into its group by
//! then); a cgroup namespace; working
//! directory; rlimits; capabilities cut to the default set; groups, gid,
//! uid; parent-death signal again (a uid change clears it) and a check that
//! the parent still lives; `no_new_privs`; signals back to default; the
//! seccomp profile last; `execve`, trying each `PATH` entry. A failure is
//! written to the error pipe as (stage, errno) and the child exits.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use crate::devices::DevPlan;
use crate::mounts::Mount;
use crate::rootfs::RootPlan;

/// Where the child failed, sent to the parent with the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// Waiting for the parent (it died or the pipe broke).
    Parent = 1,
    /// Joining the cgroups.
    Cgroup,
    /// Making the root (private tree, scratch, overlay).
    Root,
    /// Mounting /proc, /sys and the masked paths.
    Mounts,
    /// Making /dev.
    Devices,
    /// Setting the host name.
    Hostname,
    /// Bringing up loopback.
    Loopback,
    /// `pivot_root`.
    Pivot,
    /// Entering a cgroup namespace.
    CgroupNs,
    /// Making or entering the working directory.
    Cwd,
    /// Setting rlimits.
    Rlimits,
    /// Cutting capabilities.
    Caps,
    /// Changing user and groups.
    User,
    /// Setting `no_new_privs` or the parent-death signal.
    Prctl,
    /// Installing the seccomp profile.
    Seccomp,
    /// `execve`.
    Exec,
    /// Taking the given stdin, stdout, stderr (and terminal).
    Stdio,
    /// Entering a running box's namespaces (exec).
    Setns,
    /// Bind-mounting the volumes.
    Volumes,
    /// A volume's box path resolves to the box's root.
    VolumeOnRoot,
    /// Joining a namespace given by path (an OCI bundle's).
    JoinNs,
    /// A bundle's mount.
    BundleMount,
    /// Writing a sysctl.
    Sysctl,
    /// Masking a path or making it read-only.
    Masks,
    /// Waiting on the exec fifo for `start`.
    Fifo,
    /// Not a failure: an OCI box is set up and waits for `start`.
    Ready,
}

impl Stage {
    /// From the number on the pipe.
    pub fn from_u32(n: u32) -> Option<Self> {
        use Stage::*;
        [
            Parent,
            Cgroup,
            Root,
            Mounts,
            Devices,
            Hostname,
            Loopback,
            Pivot,
            CgroupNs,
            Cwd,
            Rlimits,
            Caps,
            User,
            Prctl,
            Seccomp,
            Exec,
            Stdio,
            Setns,
            Volumes,
            VolumeOnRoot,
            JoinNs,
            BundleMount,
            Sysctl,
            Masks,
            Fifo,
            Ready,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }

    /// What the child was doing, for messages.
    pub fn doing(self) -> &'static str {
        match self {
            Self::Parent => "waiting for the launcher",
            Self::Cgroup => "joining the box's cgroups",
            Self::Root => "assembling the root file system (tmpfs, overlayfs)",
            Self::Mounts => "mounting /proc and /sys",
            Self::Devices => "making /dev",
            Self::Hostname => "setting the host name",
            Self::Loopback => "bringing up loopback",
            Self::Pivot => "pivot_root",
            Self::CgroupNs => "entering a cgroup namespace",
            Self::Cwd => "entering the working directory",
            Self::Rlimits => "setting rlimits",
            Self::Caps => "dropping capabilities",
            Self::User => "changing user",
            Self::Prctl => "prctl",
            Self::Seccomp => "installing the seccomp profile",
            Self::Exec => "executing the command",
            Self::Stdio => "taking its stdin, stdout and stderr",
            Self::Setns => "entering the box's namespaces",
            Self::Volumes => "mounting the volumes (-v)",
            Self::JoinNs => "joining a namespace given by path",
            Self::BundleMount => "mounting the bundle's mounts",
            Self::Sysctl => "writing the bundle's sysctls",
            Self::Masks => "masking paths and making paths read-only",
            Self::Fifo => "waiting for start on the exec fifo",
            Self::Ready => "ready",
            Self::VolumeOnRoot => {
                "mounting a volume: its box path resolves to the box's root (a symlink in the image?)"
            }
        }
    }
}

/// Everything the child needs, prepared by the parent.
pub struct ChildPlan {
    /// Root file system plan.
    pub root: RootPlan,
    /// Kernel file systems and masks.
    pub mounts: Vec<Mount>,
    /// Volumes, bound right after the root is assembled.
    pub binds: Vec<crate::binds::BindPlan>,
    /// /dev contents.
    pub dev: DevPlan,
    /// Mounts inside /dev.
    pub dev_mounts: Vec<Mount>,
    /// Host name.
    pub hostname: CString,
    /// Bring loopback up (a network namespace is made).
    pub loopback: bool,
    /// v1 `tasks` files to write "0" to: the child joins its groups itself.
    pub join_cgroups: Vec<CString>,
    /// Wait for id maps before anything else (user namespace).
    pub wait_for_maps: bool,
    /// Enter a cgroup namespace after being placed.
    pub cgroup_ns: bool,
    /// Working directory and its ancestors, to make (root first).
    pub cwd_parts: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
    /// Capabilities to keep and the kernel's last capability number.
    pub caps: (u64, u32),
    /// Change groups (not possible in a user namespace with one id).
    pub set_groups: bool,
    /// uid, gid, supplementary groups.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<nix::unistd::Gid>,
    /// Install the seccomp profile.
    pub seccomp: bool,
    /// Paths to try for the program, in order.
    pub exec_paths: Vec<CString>,
    /// argv as a NULL-terminated pointer array into `argv_store`.
    pub argv: Vec<*const libc::c_char>,
    /// envp as a NULL-terminated pointer array into `env_store`.
    pub envp: Vec<*const libc::c_char>,
    /// Owners of the strings behind `argv` and `envp`.
    pub argv_store: Vec<CString>,
    /// Environment strings.
    pub env_store: Vec<CString>,
    /// The signal mask to restore before `execve`.
    pub sigmask: libc::sigset_t,
    /// The child's end of the go pipe (the parent writes one byte after the
    /// id maps, one after the cgroups).
    pub go_read: RawFd,
    /// The parent's end, which the child closes.
    pub go_write: RawFd,
    /// The child's end of the error pipe (close-on-exec: EOF means execve
    /// succeeded).
    pub err_write: RawFd,
    /// The parent's end, which the child closes.
    pub err_read: RawFd,
    /// Descriptors to make the box's 0, 1 and 2, and whether 0 is a
    /// terminal to take as the controlling one.
    pub stdio: crate::config::Stdio,
    /// With `stdio.pty`: where the new PTY's master goes.
    pub pty_sock: RawFd,
}

/// Runs the child to `execve`; never returns.
pub fn run(p: &ChildPlan) -> ! {
    let Err((stage, errno)) = steps(p);
    fail(p.err_write, stage, errno)
}

/// Reports `stage` and `errno` on the error pipe `fd` and ends the
/// process with the shell's code for them (127, 126, else 125). Child
/// side: system calls only.
pub(crate) fn fail(fd: RawFd, stage: Stage, errno: Errno) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
    // SAFETY: writes 8 bytes from our buffer to our pipe; one write below
    // PIPE_BUF is atomic.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    let code = match (stage, errno) {
        (Stage::Exec, Errno::ENOENT | Errno::ENOTDIR) => 127,
        (Stage::Exec, _) => 126,
        _ => 125,
    };
    // SAFETY: ends the child at once, without running the parent's atexit
    // handlers or destructors on a copied address space.
    unsafe { libc::_exit(code) }
}

/// Launcher side: reads the error pipe to its end. `None`: EOF without a
/// report, so the `execve` succeeded; else the stage (`None` if unknown)
/// and errno the child reported.
pub(crate) fn read_report(
    fd: &std::os::fd::OwnedFd,
) -> Result<Option<(Option<Stage>, Errno)>, Errno> {
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match nix::unistd::read(fd, &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    if got < msg.len() {
        return Ok(None);
    }
    let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let errno = Errno::from_raw(i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]));
    Ok(Some((Stage::from_u32(stage), errno)))
}

/// `execve`s the first of `paths` that exists (argv and envp are
/// NULL-terminated arrays of NUL-terminated strings the caller keeps
/// alive); returns why none ran: EACCES if one was found but could not
/// be executed, else ENOENT, or the first other error.
pub(crate) fn execve_over(
    paths: &[CString],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Errno {
    let mut err = Errno::ENOENT;
    for path in paths {
        // SAFETY: as the caller promises: valid strings and arrays.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => err = Errno::EACCES,
            e => return e,
        }
    }
    err
}

fn wait_byte(fd: RawFd) -> Result<(), (Stage, Errno)> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into our buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => return Err((Stage::Parent, Errno::EPIPE)),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err((Stage::Parent, Errno::last())),
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

enum Never {}

/// Makes the given descriptors the process's 0, 1 and 2 and, for a
/// terminal, starts a session with it as the controlling terminal (child
/// side, system calls only). Shared by a box's first process and exec.
pub(crate) fn take_stdio(s: &crate::config::Stdio) -> Result<(), (Stage, Errno)> {
    for (target, fd) in [(0, s.stdin), (1, s.stdout), (2, s.stderr)] {
        // SAFETY: dup2 takes two integers; a bad descriptor is an error.
        if fd.is_some_and(|fd| unsafe { libc::dup2(fd, target) } < 0) {
            return Err((Stage::Stdio, Errno::last()));
        }
    }
    if s.tty {
        nix::unistd::setsid().map_err(|e| (Stage::Stdio, e))?;
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err((Stage::Stdio, Errno::last()));
        }
    }
    Ok(())
}

fn steps(p: &ChildPlan) -> Result<Never, (Stage, Errno)> {
    // SAFETY: closing the parent's ends of our pipes, which this copy of
    // the fd table holds.
    unsafe {
        libc::close(p.go_write);
        libc::close(p.err_read);
    }
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    take_stdio(&p.stdio)?;
    if p.wait_for_maps {
        wait_byte(p.go_read)?;
    }
    // Into the box's cgroups first, so everything after is accounted there.
    for t in &p.join_cgroups {
        crate::cgroups::join_self(t).map_err(|e| (Stage::Cgroup, e))?;
    }
    // Inherited descriptors must not reach the workload.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    crate::rootfs::assemble(&p.root).map_err(|(_, e)| (Stage::Root, e))?;
    crate::binds::apply(&p.root.merged, &p.binds).map_err(|(_, f)| match f {
        crate::binds::Failure::OnRoot => (Stage::VolumeOnRoot, Errno::EBUSY),
        crate::binds::Failure::Sys(e) => (Stage::Volumes, e),
    })?;
    crate::mounts::apply(&p.mounts).map_err(|(_, e)| (Stage::Mounts, e))?;
    crate::devices::apply(&p.dev).map_err(|e| (Stage::Devices, e))?;
    crate::mounts::apply(&p.dev_mounts).map_err(|(_, e)| (Stage::Devices, e))?;
    nix::unistd::sethostname(std::ffi::OsStr::from_bytes(p.hostname.to_bytes()))
        .map_err(|e| (Stage::Hostname, e))?;
    if p.loopback {
        crate::network::loopback_up().map_err(|e| (Stage::Loopback, e))?;
    }
    crate::rootfs::pivot(&p.root.merged).map_err(|e| (Stage::Pivot, e))?;

    wait_byte(p.go_read)?;
    if p.cgroup_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| (Stage::CgroupNs, e))?;
    }
    for d in &p.cwd_parts {
        let _ = nix::unistd::mkdir(
            d.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        );
    }
    if let Some((rows, cols)) = p.stdio.pty {
        crate::pty::make_in_box(p.pty_sock, rows, cols)?;
    }
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(|e| (Stage::Cwd, e))?;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        p.nofile.0,
        p.nofile.1,
    )
    .map_err(|e| (Stage::Rlimits, e))?;
    crate::caps::restrict(p.caps.0, p.caps.1).map_err(|e| (Stage::Caps, e))?;
    if p.set_groups {
        nix::unistd::setgroups(&p.groups).map_err(|e| (Stage::User, e))?;
    }
    nix::unistd::setgid(nix::unistd::Gid::from_raw(p.gid)).map_err(|e| (Stage::User, e))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(p.uid)).map_err(|e| (Stage::User, e))?;
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    // The parent holds the go pipe's write end until execve is reported: a
    // hang-up now means it died before the death signal was set again.
    let mut pfd = libc::pollfd {
        fd: p.go_read,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd we own, without waiting.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r > 0 && pfd.revents & libc::POLLHUP != 0 {
        return Err((Stage::Parent, Errno::EPIPE));
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting a default disposition takes no pointers.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: restores a signal mask we copied before clone.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &p.sigmask, std::ptr::null_mut()) };
    if p.seccomp {
        crate::seccomp::install().map_err(|e| (Stage::Seccomp, e))?;
    }
    Err((Stage::Exec, execve_over(&p.exec_paths, &p.argv, &p.envp)))
}
