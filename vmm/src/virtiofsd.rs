//! The file server of a shared directory: Debian's virtiofsd (QEMU 7.2's,
//! C, package qemu-system-common) started for one directory and one VM,
//! and gone when its [`Virtiofsd`] is dropped.
//!
//! [`spawn`] binds the vhost-user socket here (mode 0600; a stale socket
//! is replaced, one another process serves or anything else refused) and
//! hands the listening descriptor to the server (`--fd`), so the socket
//! accepts connections the moment `spawn` returns. The server runs with
//! `-o source=DIR -o sandbox=namespace` (its own mount, PID and network
//! namespaces, pivoted into the directory) and `-o cache=` as asked; its
//! stdin and stdout are /dev/null, its messages (errors only) go to our
//! stderr.
//!
//! Read-only is enforced on the host, not asked of the guest or the
//! server (which has no such option): for a read-only share the child,
//! before it execs the server, enters a mount namespace of its own,
//! makes every mount in it private (so nothing propagates back to the
//! host's), bind-mounts the directory onto itself and remounts that
//! bind read-only (`MS_BIND | MS_REMOUNT | MS_RDONLY`, keeping its
//! nosuid/nodev/noexec). The server only ever sees a read-only mount: a
//! guest that remounts its virtiofs read-write still gets EROFS from the
//! host kernel for every write, create, unlink, chmod. The bind is not
//! recursive: mounts below the directory are not shared (a recursive
//! bind would carry them read-write). No mount is made in the host's
//! namespace, and the private one ends with the server.
//!
//! virtiofsd is two processes: the one we start waits for the one it
//! forks into its new PID namespace, which serves. Both are in a process
//! group of their own (the child calls `setpgid(0, 0)` before exec), so
//! signals go to the group: killing only the first would leave the
//! server serving. The server dies with us: the first's parent-death
//! signal is SIGKILL (sent when the *thread* that called [`spawn`] ends:
//! spawn from a thread that outlives the VM), the second's is virtiofsd's
//! own SIGTERM, and it ends anyway when the VM's connection closes (the
//! VMM is this process). Dropping a [`Virtiofsd`] sends the group SIGTERM,
//! waits up to [`STOP_GRACE`] for the first, then SIGKILL to the group,
//! reaps and removes the socket. The group is only ever signalled while
//! its leader (our child) is not yet reaped, so its id cannot have been
//! reused.
//!
//! Needs root (virtiofsd's namespace sandbox, our mount namespace).

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Errors of starting a file server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared directory is not a directory (or cannot be resolved).
    #[error("shared directory {0}")]
    Source(PathBuf, #[source] std::io::Error),
    /// A path virtiofsd's `-o` parser would split (a comma), or with a
    /// NUL byte.
    #[error("{0}: a path with a comma or a NUL byte cannot be passed to virtiofsd")]
    BadPath(PathBuf),
    /// The socket path is too long for `sockaddr_un`.
    #[error("socket path {0}: want 1 to {max} bytes", max = crate::config::UDS_PATH_MAX)]
    SocketPath(PathBuf),
    /// The socket path holds something that is not a socket.
    #[error("{0} exists and is not a socket: not replaced")]
    NotASocket(PathBuf),
    /// Something serves the socket path already.
    #[error("{0} is served by another process: not replaced")]
    InUse(PathBuf),
    /// The socket could not be made.
    #[error("{0} the socket {1}")]
    Socket(&'static str, PathBuf, #[source] std::io::Error),
    /// The server's binary could not be started.
    #[error("starting {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
}

/// Where Debian puts QEMU 7.2's virtiofsd.
pub const DEFAULT_BINARY: &str = "/usr/lib/qemu/virtiofsd";

/// How long a dropped server has to end after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// virtiofsd's `-o cache=`: how much the guest may cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cache {
    /// Metadata and data cached for a second, reread on open
    /// (virtiofsd's default).
    #[default]
    Auto,
    /// Cached until the guest drops it: for directories only the guest
    /// changes.
    Always,
    /// Nothing cached: every access goes to the host.
    None,
}

impl Cache {
    fn option(self) -> &'static str {
        match self {
            Self::Auto => "cache=auto",
            Self::Always => "cache=always",
            Self::None => "cache=none",
        }
    }
}

/// One file server: what it shares and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The host directory shared.
    pub source: PathBuf,
    /// Where its vhost-user socket goes ([`crate::config::ShareConfig::socket`]).
    pub socket: PathBuf,
    /// Enforce read-only on the host (see the module's doc).
    pub read_only: bool,
    /// What the guest may cache.
    pub cache: Cache,
    /// The server's binary ([`DEFAULT_BINARY`]).
    pub binary: PathBuf,
}

impl Options {
    /// A read-write share of `source` served at `socket` by
    /// [`DEFAULT_BINARY`], `cache=auto`.
    pub fn new(source: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            socket: socket.into(),
            read_only: false,
            cache: Cache::Auto,
            binary: DEFAULT_BINARY.into(),
        }
    }
}

/// A running file server; dropping it stops it and removes its socket.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Option<Child>,
    socket: PathBuf,
}

impl Virtiofsd {
    /// The server's pid (the process we started).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the process we started has ended (it is not reaped
    /// until [`stop`](Self::stop) or drop, so its group can still be
    /// signalled).
    pub fn has_exited(&self) -> bool {
        self.pid().is_some_and(exited_unreaped)
    }

    /// Kills the server's process group now (SIGKILL), as a crash would;
    /// reaped at [`stop`](Self::stop) or drop.
    pub fn kill(&self) {
        self.signal_group(libc::SIGKILL);
    }

    fn signal_group(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: `pid` leads the group (setpgid in the child) and is
            // not reaped (only `end` reaps, after its last signal), so
            // the group id is ours.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// Stops it now (SIGTERM, then SIGKILL after [`STOP_GRACE`]), reaps
    /// it and removes the socket; what it ended with.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.end()
    }

    fn end(&mut self) -> Option<ExitStatus> {
        let _ = std::fs::remove_file(&self.socket);
        self.child.as_ref()?;
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && !self.has_exited() {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The server in the PID namespace may outlive the first process
        // (its SIGTERM only ends it at its next wake-up): the group goes.
        self.signal_group(libc::SIGKILL);
        self.child.take()?.wait().ok()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Whether child `pid` has exited, without reaping it (`WNOWAIT`).
fn exited_unreaped(pid: u32) -> bool {
    let pid: libc::id_t = pid;
    // SAFETY: an all-zero siginfo_t is a valid value to be overwritten.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a live siginfo_t; WNOWAIT
    // leaves it waitable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (si_pid 0 if nothing has exited).
    r == 0 && unsafe { info.si_pid() } != 0
}

fn c_path(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::BadPath(p.into()))
}

/// Binds a listening socket at `path` (0600), replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener, Error> {
    let len = path.as_os_str().len();
    if len == 0 || len > crate::config::UDS_PATH_MAX {
        return Err(Error::SocketPath(path.into()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(Error::NotASocket(path.into())),
        Ok(_) if UnixStream::connect(path).is_ok() => return Err(Error::InUse(path.into())),
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| Error::Socket("removing", path.into(), e))?
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(|e| Error::Socket("binding", path.into(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Socket("setting the mode of", path.into(), e))?;
    Ok(l)
}

/// The per-mount flags of the mount holding `path`, as `MS_*` bits to
/// keep through a remount.
fn mount_flags(path: &Path) -> Result<libc::c_ulong, Error> {
    let c = c_path(path)?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `st` a live statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::Source(path.into(), std::io::Error::last_os_error()));
    }
    let keep = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(keep
        .iter()
        .filter(|(st_bit, _)| st.f_flag & *st_bit != 0)
        .fold(0, |acc, (_, ms)| acc | ms))
}

/// What the child does between fork and exec, every path prepared
/// before the fork: only system calls happen in the child.
struct PreExec {
    listener: RawFd,
    parent: libc::pid_t,
    /// The source and the mount flags to keep, for a read-only share.
    read_only: Option<(CString, libc::c_ulong)>,
}

impl PreExec {
    /// Runs in the forked child.
    fn run(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| match r {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent {
            // The parent died before the death signal was armed.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        // A group of its own, which the process virtiofsd forks joins too.
        // SAFETY: setpgid on ourselves.
        check(unsafe { libc::setpgid(0, 0) })?;
        // The listening socket stays open across exec (`--fd`).
        // SAFETY: F_SETFD on a descriptor this process holds.
        check(unsafe { libc::fcntl(self.listener, libc::F_SETFD, 0) })?;
        let Some((src, keep)) = &self.read_only else {
            return Ok(());
        };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: unshare with a flag; this child is single-threaded.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // SAFETY: NUL-terminated literal and null pointers, as mount(2)
        // allows for a propagation change.
        check(unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        // SAFETY: `src` is NUL-terminated and lives in `self`.
        check(unsafe {
            libc::mount(
                src.as_ptr(),
                src.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            )
        })?;
        // SAFETY: as above; a remount of the bind just made.
        check(unsafe {
            libc::mount(
                none,
                src.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                std::ptr::null(),
            )
        })
    }
}

/// Starts a file server for `options` (see the module's doc); its socket
/// accepts connections once this returns.
pub fn spawn(options: &Options) -> Result<Virtiofsd, Error> {
    let source = std::fs::canonicalize(&options.source)
        .map_err(|e| Error::Source(options.source.clone(), e))?;
    let meta = std::fs::metadata(&source).map_err(|e| Error::Source(source.clone(), e))?;
    if !meta.is_dir() {
        return Err(Error::Source(
            source,
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    if source.as_os_str().as_bytes().contains(&b',') {
        return Err(Error::BadPath(source));
    }
    let read_only = match options.read_only {
        true => Some((c_path(&source)?, mount_flags(&source)?)),
        false => None,
    };
    let listener = bind(&options.socket)?;
    let pre = PreExec {
        listener: listener.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        read_only,
    };
    let mut src_opt = std::ffi::OsString::from("source=");
    src_opt.push(&source);
    let mut cmd = Command::new(&options.binary);
    cmd.arg(format!("--fd={}", listener.as_raw_fd()))
        .arg("-o")
        .arg(src_opt)
        .args(["-o", "sandbox=namespace", "-o", options.cache.option()])
        .args(["-o", "log_level=err"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: `PreExec::run` makes only system calls (prctl, getppid,
    // setpgid, fcntl, unshare, mount) on values prepared before the fork, and
    // allocates nothing: what is safe between fork and exec.
    unsafe { cmd.pre_exec(move || pre.run()) };
    let spawned = cmd.spawn();
    // The server holds the listening socket now; ours closes.
    drop(listener);
    match spawned {
        Ok(child) => Ok(Virtiofsd {
            child: Some(child),
            socket: options.socket.clone(),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&options.socket);
            Err(Error::Spawn(options.binary.clone(), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sources_and_sockets_are_refused_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let o = |src: &Path, sock: &Path| Options::new(src, sock);
        assert!(matches!(
            spawn(&o(&dir.path().join("absent"), &sock)),
            Err(Error::Source(..))
        ));
        assert!(matches!(spawn(&o(&file, &sock)), Err(Error::Source(..))));
        let comma = dir.path().join("a,b");
        std::fs::create_dir(&comma).expect("mkdir");
        assert!(matches!(spawn(&o(&comma, &sock)), Err(Error::BadPath(_))));
        let long = dir.path().join("s".repeat(120));
        assert!(matches!(
            spawn(&o(dir.path(), &long)),
            Err(Error::SocketPath(_))
        ));
        // Something that is not a socket is not replaced.
        assert!(matches!(
            spawn(&o(dir.path(), &file)),
            Err(Error::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&file).ok().as_deref(), Some(&b"x"[..]));
        // A served socket is not taken over.
        let _served = UnixListener::bind(&sock).expect("bind");
        assert!(matches!(spawn(&o(dir.path(), &sock)), Err(Error::InUse(_))));
        // A binary that does not exist: the socket does not stay.
        drop(_served);
        let mut bad = o(dir.path(), &sock);
        bad.binary = dir.path().join("no-such-virtiofsd");
        assert!(matches!(spawn(&bad), Err(Error::Spawn(..))));
        assert!(!sock.exists());
    }

    #[test]
    fn mount_flags_are_kept() {
        // Every mount point of ours, with its per-mount options.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut checked = 0;
        for l in info.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let (Some(at), Some(opts)) = (f.get(4), f.get(5)) else {
                continue;
            };
            let Ok(flags) = mount_flags(Path::new(at)) else {
                continue;
            };
            for (name, bit) in [
                ("nosuid", libc::MS_NOSUID),
                ("nodev", libc::MS_NODEV),
                ("noexec", libc::MS_NOEXEC),
            ] {
                let has = opts.split(',').any(|o| o == name);
                assert_eq!(flags & bit != 0, has, "{at} {opts}: {name}");
            }
            checked += 1;
        }
        assert!(checked > 0, "no mount point could be checked");
    }
}
