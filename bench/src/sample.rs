//! One timed run of a process: from just before `spawn` to the end of the
//! marker on its stdout, and to its exit. (Peak RSS is measured apart, by
//! [`crate::peak_rss`]: `wait4`'s figure counts the spawner's memory.)
//!
//! The child's exit is awaited with `waitid(WNOWAIT)` first, so the
//! watchdog that enforces the timeout can never signal a reused pid: the
//! child stays a zombie until the run is marked done, then it is reaped.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started.
    #[error("starting {0}")]
    Spawn(String, #[source] std::io::Error),
    /// Waiting for it failed.
    #[error("waiting for {0}")]
    Wait(String, #[source] std::io::Error),
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Time to the end of the marker on stdout, if it appeared.
    pub to_marker: Option<Duration>,
    /// Time to exit.
    pub to_exit: Duration,
    /// Exit status, or 128 + signal.
    pub status: i32,
    /// Whether the watchdog killed it.
    pub timed_out: bool,
}

/// Runs `cmd` once, watching its stdout for `marker`; kills it after
/// `timeout`.
pub fn measure(mut cmd: Command, marker: Option<&str>, timeout: Duration) -> Result<Sample, Error> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::Spawn(what.clone(), e))?;
    let pid = child.id() as libc::pid_t;
    let reader = child.stdout.take().map(|mut out| {
        let marker = marker.map(|m| m.as_bytes().to_vec());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut at = None;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if at.is_none() {
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(m) = &marker {
                        if seen.windows(m.len()).any(|w| w == m.as_slice()) {
                            at = Some(start.elapsed());
                        }
                    }
                }
            }
            at
        })
    });
    let watchdog = Watchdog::start(timeout, move || {
        // SAFETY: `pid` is our unreaped child (a zombie at worst) until the
        // watchdog is finished, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    // Wait for the exit without reaping.
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Wait(what, e));
        }
    }
    let to_exit = start.elapsed();
    // Finished before the child is reaped: the kill must not outlive it.
    let timed_out = watchdog.finish();
    let mut status: libc::c_int = 0;
    // SAFETY: reaping our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r < 0 {
        return Err(Error::Wait(what, std::io::Error::last_os_error()));
    }
    let to_marker = reader.and_then(|r| r.join().ok()).flatten();
    let status = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Sample {
        to_marker,
        to_exit,
        status,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_and_exit_status_are_measured() -> Result<(), Error> {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo start; sleep 0.05; echo MARK; sleep 0.05; exit 7",
        ]);
        let s = measure(c, Some("MARK"), Duration::from_secs(10))?;
        assert_eq!(s.status, 7);
        assert!(!s.timed_out);
        let m = s
            .to_marker
            .ok_or_else(|| Error::Wait("no marker".into(), std::io::Error::other("x")))?;
        assert!(
            m >= Duration::from_millis(50) && m < s.to_exit,
            "{m:?} {:?}",
            s.to_exit
        );
        assert!(s.to_exit >= Duration::from_millis(100));
        Ok(())
    }

    #[test]
    fn the_watchdog_kills_at_the_timeout() -> Result<(), Error> {
        let mut c = Command::new("sleep");
        c.arg("30");
        let s = measure(c, Some("never"), Duration::from_millis(200))?;
        assert!(s.timed_out);
        assert_eq!(s.status, 128 + libc::SIGKILL);
        assert!(s.to_marker.is_none());
        assert!(s.to_exit < Duration::from_secs(5));
        Ok(())
    }
}
