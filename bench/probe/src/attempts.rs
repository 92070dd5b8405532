//! Things a box may or may not be allowed to do, beyond single system calls:
//! each tried in a way that changes nothing even where it is allowed, and
//! reported as "allowed" or "denied (<errno>)".

use std::io::Write;

use serde_json::{json, Map, Value};

fn verdict(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "allowed".into(),
        Err(e) => format!(
            "denied ({})",
            e.raw_os_error().map_or(e.to_string(), errno_name)
        ),
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        n => format!("errno {n}"),
    }
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// mknod of a block device (the host's first disk's numbers) in /tmp; removed
/// at once if it worked.
fn mknod() -> std::io::Result<()> {
    let p = c"/tmp/.twinbox-probe-blk";
    // SAFETY: a static path, mode and device number.
    if unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 0)) } != 0 {
        return Err(last());
    }
    // SAFETY: removes the node just made.
    unsafe { libc::unlink(p.as_ptr()) };
    Ok(())
}

/// A raw IP socket (what ping and packet forgers use).
fn raw_socket() -> std::io::Result<()> {
    // SAFETY: socket(2) takes integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: closes the socket just made.
    unsafe { libc::close(fd) };
    Ok(())
}

/// PTRACE_ATTACH to a child of ours (another process, same user): the
/// weakest case a tracer can meet.
fn ptrace_other() -> std::io::Result<()> {
    // SAFETY: the child only pauses until killed.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last());
    }
    if pid == 0 {
        loop {
            // SAFETY: pause takes no arguments; the child is killed below.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: integer arguments; the tracee is our own child.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
    let err = last();
    // SAFETY: kills and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

/// Opening /proc/sysrq-trigger for writing (nothing is written).
fn sysrq() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
        .map(|_| ())
}

/// Opening /dev/kvm (a box with it could run its own VMs on the host).
fn dev_kvm() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
}

/// Setting the wall clock to what it is now (a no-op where allowed).
fn set_clock() -> std::io::Result<()> {
    // SAFETY: timespec is plain data; both calls use the one we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(last());
    }
    // SAFETY: as above.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(last());
    }
    Ok(())
}

/// Writing a host-wide kernel setting: the current value back.
fn sysctl() -> std::io::Result<()> {
    let p = "/proc/sys/kernel/hostname";
    let v = std::fs::read(p)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)?
        .write_all(&v)
}

/// Every attempt: {name: verdict}.
pub fn all() -> Value {
    let mut m = Map::new();
    type Attempt = fn() -> std::io::Result<()>;
    let list: [(&str, Attempt); 7] = [
        ("mknod_block_device", mknod),
        ("raw_socket", raw_socket),
        ("ptrace_other_process", ptrace_other),
        ("open_sysrq_trigger", sysrq),
        ("open_dev_kvm", dev_kvm),
        ("set_clock", set_clock),
        ("write_proc_sys", sysctl),
    ];
    for (name, f) in list {
        m.insert(name.into(), json!(verdict(f())));
    }
    Value::Object(m)
}
