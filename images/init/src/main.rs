//! twinbox-init: PID 1 of twinbox's Linux guests, a small static binary.
//!
//! Two flows, chosen by the files packed beside init:
//!
//! - **Mailbox (warm start)**, when `/.twinbox/boot.json` exists: it names
//!   the root disk (the VMM's pmem, e.g. `/dev/pmem0`) and the mailbox
//!   (a second pmem, `/dev/pmem1`). Init waits for both device nodes (the
//!   nvdimm bus registers them asynchronously), enters the root disk, does
//!   the mounts, and writes boot timer mark 3 (ready): the VMM may snapshot
//!   the guest there, and every later run is restored from that point, so
//!   nothing of a run is in the guest before it. The VMM then fills the
//!   mailbox; init reads it with `O_DIRECT` (past any page cache from
//!   before the snapshot), sets the wall clock to the host's, mixes the
//!   host's entropy into the kernel RNG and rekeys the CRNG (clones of one
//!   snapshot must not share random state; a failure here is init's), and
//!   takes the run spec from the mailbox's payload (its `root` ignored).
//!   A boot file with an empty `mailbox` takes the spec from
//!   `/.twinbox/spec.json` instead, read before the root disk is entered.
//! - **Legacy**, otherwise: the whole spec is `/.twinbox/spec.json`, its
//!   `root` naming the root disk; the same steps without a mailbox (mark 3
//!   is still written, at the same point).
//!
//! Entering the root disk mounts it read-only with a tmpfs overlay on top
//! and moves into it, taking /dev (devtmpfs) along, so the mailbox node
//! keeps its path. Then init mounts /proc, /sys, /dev/pts and /dev/shm,
//! and, once it has the spec, sets the hostname, writes boot timer mark 2
//! (workload about to start; mark 1, init started, comes first of all),
//! runs the workload with stdin on /dev/null and stdout/stderr on the
//! console, reaps every zombie while it runs, and reports the workload's
//! status (128 + N for death by signal N; 127 when the program is not
//! found, 126 when it cannot be executed, 125 when init itself fails) on
//! the VMM's exit port, then powers off. No shell, no busybox.
//!
//! With `agent_port` in the spec, init is also the guest agent while the
//! workload runs (`agent.rs`): it listens on that vsock port and serves
//! the host's `twinbox exec`, signals (`twinbox stop`) and the workload's
//! exit, in the protocol of the `twinbox-agent` crate. A kernel without
//! vsock gets one line on the console and the run goes on as without it.
//! With `hold` too, the first process is a holder that only waits for a
//! signal: the host runs the workload through the agent (a box with `-i`
//! or `-t`) and ends the box by signalling the holder.

mod agent;
mod copy;
mod forward;
mod forward_udp;
mod mailbox;
mod port;
mod spawn;
mod spec;
mod vsock;

use std::ffi::CString;

use spec::{Boot, Spec};

/// Longest wait for the root disk's and the mailbox's device nodes (boots
/// under an emulating hypervisor are slow).
const DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Init's own failure, as Docker reports a runtime error.
const EXIT_INIT_FAILED: i32 = 125;

fn main() {
    // /dev first: the ports are reached through /dev/port where it exists.
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    port::enable();
    port::mark(port::MARK_INIT);
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twinbox-init: {e}");
            EXIT_INIT_FAILED
        }
    };
    power_off(code)
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f), Ok(d)) = (cstr(source), cstr(target), cstr(fstype), cstr(data))
    else {
        return;
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    // A failure (already mounted, not supported) leaves the guest usable.
    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
}

/// Stops the console tty from turning "\n" into "\r\n", so the
/// workload's output reaches the host byte for byte, as in a container.
fn raw_newlines() {
    // SAFETY: termios is plain data; tcgetattr fills the one we own and
    // tcsetattr reads it. A console that is not a tty is left alone.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(1, &mut t) == 0 {
            t.c_oflag &= !libc::ONLCR;
            libc::tcsetattr(1, libc::TCSANOW, &t);
        }
    }
}

/// Waits for each of `nodes` (device paths; empty ones are skipped) to
/// exist: the nvdimm bus registers its devices asynchronously, in a domain
/// the kernel does not wait for before it starts init.
fn wait_for_nodes(nodes: &[&str]) -> Result<(), String> {
    let start = std::time::Instant::now();
    for node in nodes.iter().filter(|n| !n.is_empty()) {
        while !std::path::Path::new(node).exists() {
            if start.elapsed() > DISK_WAIT {
                return Err(format!("{node} did not appear within {DISK_WAIT:?}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Mounts `disk` (ext4, read-only; its node exists) with a tmpfs overlay
/// on top and makes that the root, keeping /dev (moved, so every device
/// node keeps its path). The old root (the initramfs: init and its boot
/// or spec file) stays underneath, unreachable.
fn enter_root_disk(disk: &str) -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let mount_or = |src: &str, dst: &str, fs: &str, flags, data: &str| -> Result<(), String> {
        let _ = std::fs::create_dir_all(dst);
        let (s, d, f, o) = (cstr(src)?, cstr(dst)?, cstr(fs)?, cstr(data)?);
        // SAFETY: valid NUL-terminated strings for the call.
        let r =
            unsafe { libc::mount(s.as_ptr(), d.as_ptr(), f.as_ptr(), flags, o.as_ptr().cast()) };
        match r {
            0 => Ok(()),
            _ => Err(os(&format!("mounting {src} on {dst}"))),
        }
    };
    mount_or(disk, "/.twinbox/lower", "ext4", libc::MS_RDONLY, "")?;
    mount_or("tmpfs", "/.twinbox/rw", "tmpfs", 0, "mode=0755")?;
    for d in ["/.twinbox/rw/upper", "/.twinbox/rw/work"] {
        std::fs::create_dir_all(d).map_err(|e| format!("{d}: {e}"))?;
    }
    mount_or(
        "overlay",
        "/.twinbox/root",
        "overlay",
        0,
        "lowerdir=/.twinbox/lower,upperdir=/.twinbox/rw/upper,workdir=/.twinbox/rw/work",
    )?;
    mount_or("/dev", "/.twinbox/root/dev", "", libc::MS_MOVE, "")?;
    let (root, dot) = (cstr("/.twinbox/root")?, cstr(".")?);
    let slash = cstr("/")?;
    // SAFETY: plain system calls on valid NUL-terminated paths; the
    // switch_root sequence: move the new root over / and chroot into it.
    unsafe {
        if libc::chdir(root.as_ptr()) != 0 {
            return Err(os("entering the root disk"));
        }
        if libc::mount(
            dot.as_ptr(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os("moving the root disk to /"));
        }
        if libc::chroot(dot.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
            return Err(os("chroot into the root disk"));
        }
    }
    Ok(())
}

/// Reads each of `paths` to its end (into the page cache; the bytes are
/// dropped). A path that cannot be read is skipped: preloading only saves
/// time.
fn preload(paths: &[String]) {
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        if let Ok(mut f) = std::fs::File::open(p) {
            while matches!(std::io::Read::read(&mut f, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// Where the run's spec comes from.
enum Source {
    /// Read before the ready mark (the legacy spec file, or a boot file
    /// without a mailbox).
    Packed(Spec),
    /// The mailbox device at this path, read after the ready mark.
    Mailbox(String),
}

fn read_spec_file() -> Result<Spec, String> {
    let text = std::fs::read(spec::PATH).map_err(|e| format!("reading {}: {e}", spec::PATH))?;
    Spec::parse(&text)
}

/// What init knows before the ready mark: the root disk, where the spec
/// comes from, and what to preload.
fn boot_config() -> Result<(String, Source, Vec<String>), String> {
    let boot = match std::fs::read(spec::BOOT_PATH) {
        Ok(text) => Boot::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let spec = read_spec_file()?;
            return Ok((spec.root.clone(), Source::Packed(spec), Vec::new()));
        }
        Err(e) => return Err(format!("reading {}: {e}", spec::BOOT_PATH)),
    };
    let source = if boot.mailbox.is_empty() {
        // No mailbox: the spec is packed beside init (the root disk is the
        // boot file's either way).
        Source::Packed(read_spec_file()?)
    } else {
        Source::Mailbox(boot.mailbox)
    };
    Ok((boot.root, source, boot.preload))
}

/// Reads the mailbox and applies its clock and entropy; returns the spec.
fn open_mailbox(path: &str) -> Result<Spec, String> {
    let m = mailbox::read(path)?;
    mailbox::set_clock(&m)?;
    mailbox::reseed(&m)?;
    Spec::parse(&m.payload)
}

fn run() -> Result<i32, String> {
    let (root, source, preloads) = boot_config()?;
    let mailbox_node = match &source {
        Source::Mailbox(path) => path.as_str(),
        Source::Packed(_) => "",
    };
    // Both nodes before the root disk: /dev moves along into it.
    wait_for_nodes(&[&root, mailbox_node])?;
    if !root.is_empty() {
        enter_root_disk(&root)?;
    }
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nodev, "");
    mount("sysfs", "/sys", "sysfs", nodev, "");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    );
    mount("tmpfs", "/dev/shm", "tmpfs", nodev, "mode=1777");
    raw_newlines();
    loopback_up();
    preload(&preloads);

    // Nothing of the run is in the guest before this point.
    port::mark(port::MARK_READY);
    let spec = match source {
        Source::Packed(spec) => spec,
        Source::Mailbox(path) => open_mailbox(&path)?,
    };

    if !spec.hostname.is_empty() {
        // SAFETY: the pointer and length describe the hostname's bytes.
        unsafe { libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len()) };
    }
    mount_volumes(&spec.mounts)?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, gid) = spec::resolve_user(&spec.user, &passwd)?;

    // Everything the child needs is prepared before fork.
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec.env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?;
    let candidates: Vec<CString> = if spec.argv[0].contains('/') {
        vec![argv[0].clone()]
    } else {
        spec.path_var()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(&format!("{d}/{}", spec.argv[0])))
            .collect::<Result<_, _>>()?
    };
    let cwd = cstr(if spec.cwd.is_empty() { "/" } else { &spec.cwd })?;
    let null = cstr("/dev/null")?;

    // SAFETY: init is single-threaded, so the child may do anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 && spec.hold && spec.agent_port.is_some() {
        hold();
    }
    if pid == 0 {
        child(
            &argv,
            &envp,
            &candidates,
            &cwd,
            &null,
            uid,
            gid,
            &spec.argv[0],
        );
    }
    if let Some(port) = spec.agent_port {
        match vsock::listen(port) {
            Ok(listener) => {
                return Ok(agent::serve(
                    listener,
                    pid,
                    agent::Options { reap_all: true },
                ))
            }
            Err(e) => eprintln!("twinbox-init: no agent: vsock port {port}: {e}"),
        }
    }
    Ok(wait_for(pid))
}

/// Mounts the box's volumes (virtio-fs shares) where the spec says,
/// making their directories as `mkdir -p` would. A volume that cannot be
/// mounted fails the run: a workload must not write into the guest's
/// memory what it meant for the host.
fn mount_volumes(mounts: &[spec::Mount]) -> Result<(), String> {
    if mounts.len() > spec::MAX_MOUNTS {
        return Err(format!(
            "{} volumes, at most {}",
            mounts.len(),
            spec::MAX_MOUNTS
        ));
    }
    for m in mounts {
        m.check()?;
        std::fs::create_dir_all(&m.target)
            .map_err(|e| format!("making the volume directory {}: {e}", m.target))?;
        let (tag, target, fstype) = (cstr(&m.tag)?, cstr(&m.target)?, cstr("virtiofs")?);
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if m.readonly {
            flags |= libc::MS_RDONLY;
        }
        // SAFETY: C strings we own; no data.
        let r = unsafe {
            libc::mount(
                tag.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(format!(
                "mounting volume {} on {}: {}",
                m.tag,
                m.target,
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Brings up `lo`: a guest has no other interface, and a published port
/// reaches the box's servers on 127.0.0.1. A kernel without networking
/// leaves it down (nothing else needs it).
fn loopback_up() {
    // SAFETY: a datagram socket for the ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: an all-zero ifreq is valid; its name is "lo".
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}

/// The holder (`spec.hold`): the box's first process while the host runs
/// the workload through the agent. It waits for a signal; any ends it
/// (default dispositions), with 128 + N. Never returns.
fn hold() -> ! {
    // SAFETY: an empty mask and pause take no pointers but the local set.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_DFL);
        }
        loop {
            libc::pause();
        }
    }
}

/// In the child: stdin, directory, identity, then exec. Never returns.
#[allow(clippy::too_many_arguments)]
fn child(
    argv: &[CString],
    envp: &[CString],
    candidates: &[CString],
    cwd: &CString,
    null: &CString,
    uid: u32,
    gid: u32,
    name: &str,
) -> ! {
    let fail = |code: i32, what: String| -> ! {
        eprintln!("twinbox-init: {what}");
        // SAFETY: ending the child without running init's exit path.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: plain system calls on valid, NUL-terminated arguments.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDONLY);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::close(fd);
        }
        libc::setsid();
        if libc::chdir(cwd.as_ptr()) != 0 {
            fail(
                EXIT_INIT_FAILED,
                format!("cannot enter {cwd:?}: {}", std::io::Error::last_os_error()),
            );
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            fail(
                EXIT_INIT_FAILED,
                format!(
                    "cannot become {uid}:{gid}: {}",
                    std::io::Error::last_os_error()
                ),
            );
        }
    }
    port::mark(port::MARK_WORKLOAD);
    port::disable();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let mut denied = false;
    for path in candidates {
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
            denied = true;
        }
    }
    if denied {
        fail(126, format!("cannot execute {name}: permission denied"))
    }
    fail(127, format!("{name}: command not found"))
}

/// Reaps every child until the workload ends; returns its exit code.
fn wait_for(workload: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == workload {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return EXIT_INIT_FAILED;
        }
    }
}

/// Reports `code` to the VMM and stops the machine.
fn power_off(code: i32) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    port::exit(code as u32);
    // A VMM without the exit port: reset (with reboot=k, through the
    // keyboard controller, which every VMM here turns into a stop).
    // SAFETY: PID 1 may reboot; this does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        // SAFETY: waiting for the end; pause has no preconditions.
        unsafe { libc::pause() };
    }
}
