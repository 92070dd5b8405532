//! Memory: what one idle box costs the host (PSS of every host process it
//! keeps alive, minus its workload's own; for a VM that includes the guest
//! memory actually touched, which lives in the monitor's address space),
//! and density: K idle boxes at once, the drop of the host's available
//! memory and the rise of this session's memory cgroup, per box.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::pss;
use crate::stats::quantile;
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

/// One subject's density run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DensityResult {
    /// Subject.
    pub name: String,
    /// Why it was not measured.
    pub unavailable: Option<String>,
    /// Boxes started.
    pub boxes: usize,
    /// Drop of MemAvailable per box, KiB.
    pub available_drop_per_box_kib: Option<f64>,
    /// Rise of this session's memory cgroup usage per box, KiB (v1
    /// `memory.usage_in_bytes` or v2 `memory.current` of our own group).
    pub cgroup_rise_per_box_kib: Option<f64>,
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

fn start(idle: Idle) -> Result<(Child, Option<String>), Error> {
    let Idle {
        mut command,
        workload_exe,
    } = idle;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().map_err(Error::Spawn)?;
    Ok((child, workload_exe))
}

/// Waits until the box's workload runs (or, for a box without a host
/// workload process, 300 ms), then lets the launcher settle.
fn wait_up(child: &Child, exe: Option<&str>) -> Result<(), Error> {
    if exe.is_none() {
        std::thread::sleep(Duration::from_millis(300));
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while workloads(child.id(), exe).is_empty() {
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
fn stop(mut child: Child, exe: Option<&str>) {
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
    let (child, exe) = start(idle)?;
    let up = wait_up(&child, exe.as_deref());
    let result = up.map(|()| {
        let skip = workloads(child.id(), exe.as_deref());
        let procs: Vec<u32> = pss::tree(child.id())
            .into_iter()
            .filter(|p| !skip.contains(p))
            .collect();
        let total = procs.iter().filter_map(|&p| pss::pss_kib(p)).sum();
        (total, procs.len())
    });
    stop(child, exe.as_deref());
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
    let mut v = r.samples_kib.clone();
    v.sort_by(f64::total_cmp);
    r.pss_kib = (!v.is_empty()).then(|| quantile(&v, 0.5));
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

/// This process's memory cgroup usage in bytes (v1 or v2).
fn own_cgroup_usage() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cg.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        let file = if ctl.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        } else if ctl.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.current")
        } else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Some(v);
        }
    }
    None
}

/// Starts `k` idle boxes of `subject` at once and measures the host's
/// memory before and with them.
pub fn density(subject: &dyn Subject, k: usize) -> DensityResult {
    let mut r = DensityResult {
        name: subject.name(),
        unavailable: subject.unavailable(),
        boxes: 0,
        available_drop_per_box_kib: None,
        cgroup_rise_per_box_kib: None,
    };
    if r.unavailable.is_some() {
        return r;
    }
    std::thread::sleep(Duration::from_millis(200));
    let (avail0, cg0) = (mem_available_kib(), own_cgroup_usage());
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
    let mut up = 0;
    for (c, exe) in &boxes {
        if wait_up(c, exe.as_deref()).is_ok() {
            up += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (avail1, cg1) = (mem_available_kib(), own_cgroup_usage());
    for (c, exe) in boxes {
        stop(c, exe.as_deref());
    }
    r.boxes = up;
    if up > 0 {
        r.available_drop_per_box_kib = avail0
            .zip(avail1)
            .map(|(a, b)| (a as f64 - b as f64) / up as f64);
        r.cgroup_rise_per_box_kib = cg0
            .zip(cg1)
            .map(|(a, b)| (b as f64 - a as f64) / 1024.0 / up as f64);
    }
    r
}
