//! Peak resident set size of a process's own image, read as it exits.
//!
//! `wait4`'s `ru_maxrss` is no good for small subjects: at `exec` the
//! kernel folds the forked child's RSS (a copy of the benchmark's own
//! anonymous memory) into the maximum, so a 4 MB monitor spawned by a 60 MB
//! benchmark reports 60 MB. Instead the child is traced (`PTRACE_TRACEME`
//! before `exec`, then `PTRACE_O_TRACEEXIT`), and at its exit stop, with
//! its address space still attached, `VmHWM` is read from
//! `/proc/PID/status`: the high-water mark of the image it ends as, nothing
//! inherited. The stops cost a few context switches, so these runs are kept
//! apart from the timed ones.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::watchdog::Watchdog;

/// Errors of a peak-RSS run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started.
    #[error("starting {0}")]
    Spawn(String, #[source] std::io::Error),
    /// Tracing or waiting for it failed.
    #[error("tracing {0}: {1}")]
    Trace(String, &'static str, #[source] std::io::Error),
}

/// What one traced run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// `VmHWM` at the exit stop, KiB; `None` if the process never stopped
    /// there (killed by SIGKILL, or ended by another thread's
    /// `exit_group`, where the kernel skips the stop).
    pub kib: Option<u64>,
    /// Exit status, or 128 + signal.
    pub status: i32,
    /// Whether the watchdog killed it.
    pub timed_out: bool,
}

fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ptrace(req: libc::c_uint, pid: libc::pid_t, data: usize) -> std::io::Result<()> {
    // SAFETY: the requests used here (SETOPTIONS, CONT) take no pointers:
    // `data` is an option mask or a signal number.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `cmd` once under trace and returns its peak RSS; kills it after
/// `timeout`. Its output is discarded.
pub fn measure(mut cmd: Command, timeout: Duration) -> Result<Peak, Error> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd.spawn().map_err(|e| Error::Spawn(what.clone(), e))?;
    let pid = child.id() as libc::pid_t;
    // Opened before any wait, so it names this child and no later process.
    let pidfd = pidfd_open(pid).map_err(|e| Error::Trace(what.clone(), "pidfd_open", e))?;
    let watchdog = Watchdog::start(timeout, move || {
        // SAFETY: signalling through a pidfd we own; a pidfd never reaches a
        // reused pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    });
    let result = trace_to_exit(pid, &what);
    let timed_out = watchdog.finish();
    let (kib, status) = result?;
    Ok(Peak {
        kib,
        status,
        timed_out,
    })
}

/// Follows the traced child's stops until it is gone; returns `VmHWM` at
/// its exit stop and its status.
fn trace_to_exit(pid: libc::pid_t, what: &str) -> Result<(Option<u64>, i32), Error> {
    let err = |op, e| Error::Trace(what.to_string(), op, e);
    let mut first = true;
    let mut kib = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waiting on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err("waitpid", e));
        }
        if libc::WIFEXITED(status) {
            return Ok((kib, libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok((kib, 128 + libc::WTERMSIG(status)));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let inject = if first && sig == libc::SIGTRAP {
            // The stop after the first exec: from here on, stop at exit,
            // report later execs as events, and die with the tracer.
            first = false;
            let opts =
                libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL;
            ptrace(libc::PTRACE_SETOPTIONS, pid, opts as usize)
                .map_err(|e| err("PTRACE_SETOPTIONS", e))?;
            0
        } else if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
            kib = vm_hwm_kib(pid);
            0
        } else if sig == libc::SIGTRAP && event != 0 {
            0
        } else {
            sig
        };
        match ptrace(libc::PTRACE_CONT, pid, inject as usize) {
            Ok(()) => {}
            // Killed while stopped: the next wait reports its end.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(err("PTRACE_CONT", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_fills_a_buffer_peaks_above_its_size() -> Result<(), Error> {
        let mut c = Command::new("dd");
        c.args(["if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"]);
        let p = measure(c, Duration::from_secs(20))?;
        assert_eq!(p.status, 0);
        let kib = p.kib.unwrap_or(0);
        assert!(kib >= 32 * 1024, "{kib} KiB");
        assert!(kib < 64 * 1024, "{kib} KiB");
        Ok(())
    }

    /// The point of the module: what the spawner holds is not counted.
    #[test]
    fn the_spawners_own_memory_is_not_counted() -> Result<(), Error> {
        let big = vec![1u8; 96 << 20];
        let mut c = Command::new("true");
        c.env_clear();
        let p = measure(c, Duration::from_secs(20))?;
        assert_eq!(p.status, 0);
        let kib = p.kib.unwrap_or(0);
        assert!(kib > 0 && kib < 16 * 1024, "{kib} KiB");
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 96 << 20);
        Ok(())
    }

    #[test]
    fn exit_status_and_signals_pass_through() -> Result<(), Error> {
        let mut c = Command::new("sh");
        c.args(["-c", "kill -USR1 $$; exit 3"]);
        let p = measure(c, Duration::from_secs(20))?;
        assert_eq!(p.status, 128 + libc::SIGUSR1);
        let mut c = Command::new("sh");
        c.args(["-c", "trap 'exit 5' USR1; kill -USR1 $$; sleep 5"]);
        let p = measure(c, Duration::from_secs(20))?;
        assert_eq!(p.status, 5);
        assert!(!p.timed_out);
        Ok(())
    }

    #[test]
    fn the_watchdog_kills_at_the_timeout() -> Result<(), Error> {
        let mut c = Command::new("sleep");
        c.arg("30");
        let p = measure(c, Duration::from_millis(200))?;
        assert!(p.timed_out);
        assert_eq!(p.status, 128 + libc::SIGKILL);
        Ok(())
    }
}
