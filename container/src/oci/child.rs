//! The box's first process, from `clone` to `execve`, for a bundle. Order
//! (runc's, where the two differ in what they do): wait for the parent
//! (it has put us in a v2 group and set `oom_score_adj`); join namespaces
//! by path; join the v1 groups; root private, bound onto itself; the
//! bundle's mounts; default devices; sysctls; read-only and masked paths;
//! host name; loopback up (a new network namespace); `pivot_root`;
//! read-only root; working directory; terminal; look up the program;
//! rlimits; the seccomp filter if `no_new_privs` is off; bounding set,
//! user and groups (keeping capabilities across), the capability sets;
//! `no_new_privs`; signals back to default; no parent-death signal;
//! "ready" on the report pipe; wait on the exec fifo; the seccomp filter
//! if `no_new_privs` is on; `execve`.
//!
//! Failures before "ready" go to the report pipe as (stage, errno);
//! after it (nobody reads the pipe any more) to the box's stderr, and the
//! process exits with 127, 126 or 125.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::mounts::{self, BoxPath, Planned};
use super::{cpath, Bundle};
use crate::child::{fail, Stage};
use crate::cstring as c;

/// Descriptors the child uses, owned by the parent.
pub(crate) struct Fds {
    pub go_read: RawFd,
    pub go_write: RawFd,
    pub err_read: RawFd,
    pub err_write: RawFd,
    pub fifo: RawFd,
    pub console: RawFd,
    pub join: Vec<(RawFd, CloneFlags)>,
}

/// Everything the child needs, prepared by the parent.
pub(crate) struct Plan {
    fds: Fds,
    join_cgroups: Vec<CString>,
    root: CString,
    root_readonly: bool,
    no_pivot: bool,
    mounts: Vec<Planned>,
    dev_names: DevNames,
    sysctls: Vec<(BoxPath, CString)>,
    masked: Vec<BoxPath>,
    readonly: Vec<BoxPath>,
    hostname: Option<CString>,
    loopback: bool,
    cwd_parts: Vec<CString>,
    cwd: CString,
    terminal: Option<(u16, u16)>,
    exec_paths: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _argv_store: Vec<CString>,
    _env_store: Vec<CString>,
    rlimits: Vec<(u32, u64, u64)>,
    seccomp: Option<Vec<libc::sock_filter>>,
    no_new_privs: bool,
    caps: crate::caps::Sets,
    last_cap: u32,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
}

/// Plans the child of `b`; `cgroup_subdirs` for a `cgroup` mount, `dirs`
/// the box's groups (v1: joined by the child through `tasks`).
pub(crate) fn plan(
    b: &Bundle,
    cgroup_subdirs: &[(String, PathBuf)],
    dirs: &[PathBuf],
    fds: Fds,
    v2: bool,
) -> Plan {
    let p = &b.process;
    let argv_store: Vec<CString> = p.args.iter().map(|a| c(a)).collect();
    let env_store: Vec<CString> = p.env.iter().map(|e| c(e)).collect();
    let mut cwd_parts = Vec::new();
    let mut acc = String::new();
    for part in p.cwd.split('/').filter(|s| !s.is_empty()) {
        acc.push('/');
        acc.push_str(part);
        cwd_parts.push(c(&acc));
    }
    Plan {
        join_cgroups: if v2 {
            Vec::new()
        } else {
            dirs.iter().map(|d| cpath(&d.join("tasks"))).collect()
        },
        root: cpath(&b.root),
        root_readonly: b.root_readonly,
        no_pivot: b.no_pivot,
        mounts: mounts::plan(&b.mounts, cgroup_subdirs, v2),
        dev_names: DevNames::new(),
        sysctls: b
            .sysctls
            .iter()
            .map(|(k, v)| {
                (
                    BoxPath::new(&format!("/proc/sys/{}", k.replace('.', "/"))),
                    c(v),
                )
            })
            .collect(),
        masked: b.masked_paths.iter().map(|m| BoxPath::new(m)).collect(),
        readonly: b.readonly_paths.iter().map(|m| BoxPath::new(m)).collect(),
        hostname: b
            .hostname
            .as_ref()
            .filter(|_| b.namespaces.has(CloneFlags::CLONE_NEWUTS))
            .map(|h| c(h)),
        loopback: b.namespaces.new.contains(CloneFlags::CLONE_NEWNET),
        cwd_parts,
        cwd: c(&p.cwd),
        terminal: p.terminal.then(|| p.console_size.unwrap_or((0, 0))),
        exec_paths: crate::run::exec_paths(&p.args[0], &p.env),
        argv: crate::run::null_terminated(&argv_store),
        envp: crate::run::null_terminated(&env_store),
        _argv_store: argv_store,
        _env_store: env_store,
        rlimits: p.rlimits.clone(),
        seccomp: b.seccomp.clone(),
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
        fds,
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), (Stage, Errno)> {
    // SAFETY: the options used here take integers only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err((Stage::Prctl, Errno::last()));
    }
    Ok(())
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

/// The default nodes and links of /dev as C strings.
pub(crate) struct DevNames {
    nodes: Vec<(CString, u64, u64)>,
    links: Vec<(CString, CString)>,
}

impl DevNames {
    fn new() -> Self {
        Self {
            nodes: crate::devices::NODES
                .iter()
                .map(|(n, ma, mi)| (c(n), *ma, *mi))
                .collect(),
            links: crate::devices::LINKS
                .iter()
                .map(|(l, t)| (c(l), c(t)))
                .collect(),
        }
    }
}

/// Makes the default nodes and links in the box's /dev (resolved inside
/// the root, so an image's /dev symlink cannot lead out), where the
/// bundle's mounts have not put something already.
fn default_devices(root: &OwnedFd, d: &DevNames) -> Result<(), Errno> {
    use std::os::fd::AsFd;
    let dev = nix::fcntl::openat2(
        root.as_fd(),
        c"dev",
        crate::binds::in_root().flags(
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
        ),
    )?;
    let rw = nix::sys::stat::Mode::from_bits_truncate(0o666);
    for (name, major, minor) in &d.nodes {
        match nix::sys::stat::mknodat(
            dev.as_fd(),
            name.as_c_str(),
            nix::sys::stat::SFlag::S_IFCHR,
            rw,
            nix::sys::stat::makedev(*major, *minor),
        ) {
            Ok(()) => nix::sys::stat::fchmodat(
                dev.as_fd(),
                name.as_c_str(),
                rw,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    for (name, target) in &d.links {
        match nix::unistd::symlinkat(target.as_c_str(), dev.as_fd(), name.as_c_str()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the child to `execve`; never returns.
pub(crate) fn run(p: &Plan) -> ! {
    let Err((stage, errno)) = before_ready(p);
    fail(p.fds.err_write, stage, errno)
}

enum Never {}

/// Writes `twinbox-runtime: <doing>: <error>` to fd 2 and exits (after
/// "ready", where nobody reads the report pipe). System calls only.
fn die(stage: Stage, errno: Errno) -> ! {
    let parts: [&[u8]; 5] = [
        b"twinbox-runtime: ",
        stage.doing().as_bytes(),
        b": ",
        errno.desc().as_bytes(),
        b"\n",
    ];
    for part in parts {
        // SAFETY: writes a static string to fd 2.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    let code = match (stage, errno) {
        (Stage::Exec, Errno::ENOENT | Errno::ENOTDIR) => 127,
        (Stage::Exec, _) => 126,
        _ => 125,
    };
    // SAFETY: ends the process at once.
    unsafe { libc::_exit(code) }
}

fn before_ready(p: &Plan) -> Result<Never, (Stage, Errno)> {
    // SAFETY: closing the parent's ends of our pipes in this copy of the
    // fd table.
    unsafe {
        libc::close(p.fds.go_write);
        libc::close(p.fds.err_read);
    }
    // Until "ready", the box dies with a `create` that dies.
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    wait_byte(p.fds.go_read)?;
    for (fd, t) in &p.fds.join {
        nix::sched::setns(
            // SAFETY: the parent keeps the descriptor open past the clone.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) },
            *t,
        )
        .map_err(|e| (Stage::JoinNs, e))?;
    }
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

    // The root, made a mount of its own, and everything in it.
    let none = None::<&std::ffi::CStr>;
    let root_err = |e| (Stage::Root, e);
    nix::mount::mount(
        none,
        c"/",
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )
    .map_err(root_err)?;
    nix::mount::mount(
        Some(p.root.as_c_str()),
        p.root.as_c_str(),
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(root_err)?;
    let root = nix::fcntl::open(
        p.root.as_c_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(root_err)?;
    mounts::apply(&root, &p.mounts).map_err(|(_, e)| (Stage::BundleMount, e))?;
    default_devices(&root, &p.dev_names).map_err(|e| (Stage::Devices, e))?;
    mounts::sysctls(&root, &p.sysctls).map_err(|e| (Stage::Sysctl, e))?;
    mounts::mask(&root, &p.masked, &p.readonly).map_err(|e| (Stage::Masks, e))?;
    drop(root);
    if let Some(h) = &p.hostname {
        use std::os::unix::ffi::OsStrExt;
        nix::unistd::sethostname(std::ffi::OsStr::from_bytes(h.to_bytes()))
            .map_err(|e| (Stage::Hostname, e))?;
    }
    if p.loopback {
        crate::network::loopback_up().map_err(|e| (Stage::Loopback, e))?;
    }
    if p.no_pivot {
        nix::unistd::chdir(p.root.as_c_str()).map_err(|e| (Stage::Pivot, e))?;
        nix::mount::mount(Some(c"."), c"/", none, MsFlags::MS_MOVE, none)
            .map_err(|e| (Stage::Pivot, e))?;
        nix::unistd::chroot(c".").map_err(|e| (Stage::Pivot, e))?;
        nix::unistd::chdir(c"/").map_err(|e| (Stage::Pivot, e))?;
    } else {
        crate::rootfs::pivot(&p.root).map_err(|e| (Stage::Pivot, e))?;
    }
    if p.root_readonly {
        nix::mount::mount(
            none,
            c"/",
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(|e| (Stage::Root, e))?;
    }
    for d in &p.cwd_parts {
        let _ = nix::unistd::mkdir(
            d.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        );
    }
    if let Some((rows, cols)) = p.terminal {
        crate::pty::make_in_box(p.fds.console, rows, cols)?;
        // SAFETY: our copy of the console socket is no longer needed.
        unsafe { libc::close(p.fds.console) };
    }
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(|e| (Stage::Cwd, e))?;
    let program = find_program(&p.exec_paths).map_err(|e| (Stage::Exec, e))?;
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
    become_user(p)?;
    if p.no_new_privs {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    }
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting a default disposition takes no pointers.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = empty.thread_set_mask();
    // From here the box outlives `create`.
    prctl(libc::PR_SET_PDEATHSIG, 0)?;
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(Stage::Ready as u32).to_ne_bytes());
    // SAFETY: one 8-byte write to our pipe (atomic below PIPE_BUF), then
    // our copy of it is closed.
    unsafe {
        libc::write(p.fds.err_write, msg.as_ptr().cast(), msg.len());
        libc::close(p.fds.err_write);
        libc::close(p.fds.go_read);
    }
    if let Err(e) = wait_for_start(p.fds.fifo) {
        die(Stage::Fifo, e);
    }
    if let Some(f) = p.seccomp.as_ref().filter(|_| p.no_new_privs) {
        if let Err(e) = crate::seccomp::filter::install(f) {
            die(Stage::Seccomp, e);
        }
    }
    // SAFETY: the strings and arrays live in the plan.
    unsafe { libc::execve(program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    die(Stage::Exec, Errno::last())
}

/// The first candidate that is an executable regular file (ENOENT if
/// none exists, EACCES if one exists but cannot be executed).
fn find_program(paths: &[CString]) -> Result<&CString, Errno> {
    let mut err = Errno::ENOENT;
    for path in paths {
        let Ok(st) = nix::sys::stat::stat(path.as_c_str()) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            err = Errno::EACCES;
            continue;
        }
        // SAFETY: access takes a C string we own.
        if unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0 {
            return Ok(path);
        }
        err = Errno::EACCES;
    }
    Err(err)
}

/// Bounding set, then user and groups with the permitted set kept across
/// the change, then the process's sets.
pub(crate) fn become_user_with(
    caps: &crate::caps::Sets,
    last_cap: u32,
    uid: u32,
    gid: u32,
    groups: &[nix::unistd::Gid],
) -> Result<(), (Stage, Errno)> {
    crate::caps::drop_bounding(caps.bounding, last_cap).map_err(|e| (Stage::Caps, e))?;
    prctl(libc::PR_SET_KEEPCAPS, 1)?;
    nix::unistd::setgroups(groups).map_err(|e| (Stage::User, e))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)).map_err(|e| (Stage::User, e))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| (Stage::User, e))?;
    prctl(libc::PR_SET_KEEPCAPS, 0)?;
    crate::caps::apply_sets(caps, last_cap).map_err(|e| (Stage::Caps, e))
}

fn become_user(p: &Plan) -> Result<(), (Stage, Errno)> {
    become_user_with(&p.caps, p.last_cap, p.uid, p.gid, &p.groups)
}

/// Opens the exec fifo for writing (blocks until `start` reads) and
/// writes its byte.
fn wait_for_start(fifo: RawFd) -> Result<(), Errno> {
    let mut buf = [0u8; 32];
    let path = crate::binds::proc_fd_path(fifo, &mut buf);
    let fd = loop {
        match nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => break fd,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    nix::unistd::write(&fd, b"0")?;
    // SAFETY: the O_PATH descriptor is ours; closing it twice is avoided
    // by taking it here once.
    drop(unsafe { OwnedFd::from_raw_fd(fifo) });
    Ok(())
}
