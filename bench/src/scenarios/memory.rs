//! Memory: what one idle box costs the host (PSS of every host process it
//! keeps alive, minus its workload's own; for a VM that includes the guest
//! memory actually touched, which lives in the monitor's address space),
//! and density: K idle boxes at once and the drop of the host's
//! MemAvailable per box (everything the kernel spends on them too:
//! namespaces, page tables, cgroups), median of several repetitions with
//! their spread, since other activity on the host moves MemAvailable.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pss;
use crate::stats::summarize;
use crate::subject::{Idle, Subject};

/// Errors of the memory scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The box could not be started.
    #[error("starting an idle box")]
    Spawn(#[source] std::io::Error),
    /// Its workload never appeared.
    #[error("the idle box's workload did not start within 10 s")]
    NoWorkload,
    /// It never said it was up.
    #[error("the idle box did not print {line:?} within {within:?}")]
    NotReady {
        /// The line awaited.
        line: String,
        /// How long.
        within: Duration,
    },
}

/// One subject's idle cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleResult {
    /// Subject.
    pub name: String,
    /// Why it was not measured.
    pub unavailable: Option<String>,
    /// Median PSS, KiB.
    pub pss_kib: Option<f64>,
    /// Every sample, KiB.
    pub samples_kib: Vec<f64>,
    /// Host processes counted.
    pub processes: usize,
}

/// One subject's density runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DensityResult {
    /// Subject.
    pub name: String,
    /// Why it was not measured.
    pub unavailable: Option<String>,
    /// Boxes up in each repetition.
    pub boxes: usize,
    /// Drop of MemAvailable per box in each repetition, KiB.
    pub per_box_kib: Vec<f64>,
    /// Their median, KiB.
    pub median_kib: Option<f64>,
    /// PSS of every host process of every box (workloads excluded), per
    /// box, in each repetition, KiB: pages the boxes share (a VM
    /// snapshot's page cache, a runtime's binary) divided among them,
    /// where MemAvailable counts shared page cache as free.
    #[serde(default)]
    pub pss_per_box_kib: Vec<f64>,
    /// Their median, KiB.
    #[serde(default)]
    pub pss_median_kib: Option<f64>,
}

/// The memory scenario's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Memory {
    /// Idle cost per subject.
    pub idle: Vec<IdleResult>,
    /// Density per subject.
    pub density: Vec<DensityResult>,
}

fn is_exe(pid: u32, name: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| e.file_name().is_some_and(|n| n == name))
}

/// The box's workload processes (by executable name), or none.
fn workloads(root: u32, exe: Option<&str>) -> Vec<u32> {
    exe.map_or_else(Vec::new, |e| {
        pss::tree(root)
            .into_iter()
            .skip(1)
            .filter(|&p| is_exe(p, e))
            .collect()
    })
}

/// An idle box that was started.
struct Running {
    child: Child,
    /// The workload's executable name, where the host sees it.
    exe: Option<String>,
    /// Fires when the box prints its ready line, where it has one.
    ready: Option<(mpsc::Receiver<()>, crate::subject::Ready)>,
}

fn start(idle: Idle) -> Result<Running, Error> {
    let Idle {
        mut command,
        workload_exe,
        ready,
    } = idle;
    command
        .stdin(Stdio::null())
        .stdout(if ready.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null());
    let mut child = command.spawn().map_err(Error::Spawn)?;
    let ready = match (ready, child.stdout.take()) {
        (Some(r), Some(out)) => {
            let (tx, rx) = mpsc::channel();
            let line = r.line.clone();
            // Reads to the end (the box's output must not block on a full
            // pipe); ends when the box does.
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(out).lines() {
                    match l {
                        Ok(l) if l.trim_end() == line => {
                            let _ = tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            Some((rx, r))
        }
        _ => None,
    };
    Ok(Running {
        child,
        exe: workload_exe,
        ready,
    })
}

/// Waits until the box's workload runs (its ready line, its workload
/// process on the host, or for a box with neither 300 ms), then lets the
/// launcher settle.
fn wait_up(b: &Running) -> Result<(), Error> {
    if let Some((rx, r)) = &b.ready {
        rx.recv_timeout(r.within).map_err(|_| Error::NotReady {
            line: r.line.clone(),
            within: r.within,
        })?;
        std::thread::sleep(Duration::from_millis(150));
        return Ok(());
    }
    let exe = b.exe.as_deref();
    if exe.is_none() {
        std::thread::sleep(Duration::from_millis(300));
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while workloads(b.child.id(), exe).is_empty() {
        if Instant::now() > deadline {
            return Err(Error::NoWorkload);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    Ok(())
}

/// Stops a box: SIGKILL to its workload (a container's PID 1 accepts only
/// that from outside) and to the launcher's tree if it lingers.
fn stop(b: Running) {
    let Running { mut child, exe, .. } = b;
    let exe = exe.as_deref();
    for w in workloads(child.id(), exe) {
        // SAFETY: kill(2) with a pid from /proc and a signal number.
        unsafe { libc::kill(w as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline || exe.is_none() => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// PSS of one idle box: the launcher's tree minus the workload.
pub fn idle_once(subject: &dyn Subject) -> Result<Option<(u64, usize)>, Error> {
    let Some(idle) = subject.idle() else {
        return Ok(None);
    };
    let b = start(idle)?;
    let up = wait_up(&b);
    let result = up.map(|()| {
        let skip = workloads(b.child.id(), b.exe.as_deref());
        let procs: Vec<u32> = pss::tree(b.child.id())
            .into_iter()
            .filter(|p| !skip.contains(p))
            .collect();
        let total = procs.iter().filter_map(|&p| pss::pss_kib(p)).sum();
        (total, procs.len())
    });
    stop(b);
    result.map(Some)
}

/// `reps` idle measurements of `subject`.
pub fn idle(subject: &dyn Subject, reps: usize) -> IdleResult {
    let mut r = IdleResult {
        name: subject.name(),
        unavailable: subject.unavailable(),
        pss_kib: None,
        samples_kib: vec![],
        processes: 0,
    };
    if r.unavailable.is_some() {
        return r;
    }
    for _ in 0..reps {
        if crate::stop_requested() {
            break;
        }
        match idle_once(subject) {
            Ok(Some((k, n))) => {
                r.samples_kib.push(k as f64);
                r.processes = n;
            }
            Ok(None) => {
                r.unavailable = Some("cannot make an idle box".into());
                return r;
            }
            Err(e) => {
                r.unavailable = Some(format!("failed: {e}"));
                return r;
            }
        }
    }
    r.pss_kib = summarize(&r.samples_kib).map(|s| s.p50);
    r
}

fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The median of `n` readings of MemAvailable 50 ms apart.
fn settled_available(n: usize) -> Option<f64> {
    let v: Vec<f64> = (0..n)
        .filter_map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            mem_available_kib().map(|k| k as f64)
        })
        .collect();
    summarize(&v).map(|s| s.p50)
}

/// Starts `k` idle boxes of `subject` at once, `reps` times, and measures
/// the host's MemAvailable before and with them.
pub fn density(subject: &dyn Subject, k: usize, reps: usize) -> DensityResult {
    let mut r = DensityResult {
        name: subject.name(),
        unavailable: subject.unavailable(),
        boxes: 0,
        per_box_kib: vec![],
        median_kib: None,
        pss_per_box_kib: vec![],
        pss_median_kib: None,
    };
    if r.unavailable.is_some() {
        return r;
    }
    for _ in 0..reps {
        if crate::stop_requested() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = settled_available(5);
        let mut boxes = Vec::new();
        for _ in 0..k {
            let Some(idle) = subject.idle() else {
                r.unavailable = Some("cannot make an idle box".into());
                return r;
            };
            match start(idle) {
                Ok(b) => boxes.push(b),
                Err(e) => {
                    r.unavailable = Some(format!("failed: {e}"));
                    break;
                }
            }
        }
        let up = boxes.iter().filter(|b| wait_up(b).is_ok()).count();
        let with = settled_available(5);
        let pss: u64 = boxes.iter().map(box_pss_kib).sum();
        if up > 0 {
            r.pss_per_box_kib.push(pss as f64 / up as f64);
        }
        for b in boxes {
            stop(b);
        }
        r.boxes = up;
        if let (Some(a), Some(b), true) = (before, with, up > 0) {
            r.per_box_kib.push((a - b) / up as f64);
        }
        if r.unavailable.is_some() {
            return r;
        }
    }
    r.median_kib = summarize(&r.per_box_kib).map(|s| s.p50);
    r.pss_median_kib = summarize(&r.pss_per_box_kib).map(|s| s.p50);
    r
}

/// PSS of a running box's host processes, its workload's excluded, KiB.
fn box_pss_kib(b: &Running) -> u64 {
    let skip = workloads(b.child.id(), b.exe.as_deref());
    pss::tree(b.child.id())
        .into_iter()
        .filter(|p| !skip.contains(p))
        .filter_map(pss::pss_kib)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::Ready;
    use std::process::Command;

    /// A box that is a shell printing `say` (if any) after a pause, then
    /// sleeping; up when it prints `up`.
    struct Talker {
        say: Option<&'static str>,
        within: Duration,
    }

    impl Subject for Talker {
        fn name(&self) -> String {
            "talker".into()
        }
        fn command(&self) -> Command {
            Command::new("true")
        }
        fn idle(&self) -> Option<Idle> {
            let script = match self.say {
                Some(s) => format!("sleep 0.3; echo noise; echo {s}; exec sleep 100"),
                None => "exec sleep 100".into(),
            };
            let mut command = Command::new("sh");
            command.args(["-c", &script]);
            Some(Idle {
                command,
                workload_exe: None,
                ready: Some(Ready {
                    line: "up".into(),
                    within: self.within,
                }),
            })
        }
    }

    #[test]
    fn an_idle_box_is_measured_once_it_says_it_is_up_and_not_before() {
        let t = Instant::now();
        let talker = Talker {
            say: Some("up"),
            within: Duration::from_secs(10),
        };
        let r = idle_once(&talker);
        assert!(matches!(r, Ok(Some((kib, _))) if kib > 0), "{r:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "measured before it was up"
        );

        let mute = Talker {
            say: None,
            within: Duration::from_millis(300),
        };
        let r = idle_once(&mute);
        assert!(matches!(r, Err(Error::NotReady { .. })), "{r:?}");
        let wrong = Talker {
            say: Some("upper"),
            within: Duration::from_millis(800),
        };
        assert!(matches!(idle_once(&wrong), Err(Error::NotReady { .. })));
    }
}
