//! Control groups for one box: which layout the host has ([`layout`]), what
//! each layout needs written ([`v1`], [`v2`]), and [`Cgroup`], which makes
//! the groups, puts the box in them, reads what happened, and removes them.
//!
//! On the hybrid layout (v1 controllers plus a `cgroup2` mount holding none
//! of them) the limits go to the v1 hierarchies: that is where the
//! controllers are. Groups are named `twinbox-<launcher pid>-<n>`, so groups
//! left by a launcher that was SIGKILLed can be found and removed by the
//! next one ([`collect_stale`]).

pub mod layout;
pub mod oci;
pub mod v1;
pub mod v2;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::config::Limits;
pub use layout::Layout;

/// Errors of the cgroup driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup file system, or none with a controller a limit needs.
    #[error("cgroups: {0}")]
    Unavailable(String),
    /// A cgroup file could not be created, written or read.
    #[error("cgroups: {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The group still had tasks after they were killed.
    #[error("cgroups: {} still busy after {:?}", .0.display(), .1)]
    Busy(PathBuf, Duration),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One file to write when a group is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Path relative to the group's directory.
    pub file: &'static str,
    /// What to write.
    pub value: String,
    /// Skip the write if the file does not exist (an optional knob, such
    /// as `memory.memsw.limit_in_bytes` without swap accounting).
    pub optional: bool,
}

/// One directory of a group with what to write in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    /// The group's directory.
    pub path: PathBuf,
    /// Writes, in order.
    pub writes: Vec<Write>,
}

/// What the driver will do for a box, before it does it: testable on any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// v1 (one directory per hierarchy) or v2 (one directory).
    pub version: u8,
    /// The directories, in creation order.
    pub dirs: Vec<Dir>,
}

/// The plan for a group named `name` with `limits` on `layout`; `own`
/// maps a v1 controller to this process's group in it (from
/// /proc/self/cgroup), so v1 groups nest under the launcher's own.
pub fn plan(
    layout: &Layout,
    name: &str,
    limits: &Limits,
    own: &dyn Fn(&str) -> String,
) -> Result<Plan, Error> {
    match layout {
        Layout::V2 { mount, controllers } => v2::plan(mount, controllers, name, limits),
        Layout::V1 { controllers }
        | Layout::Hybrid {
            v1: controllers, ..
        } => v1::plan(controllers, name, limits, own),
        Layout::None => Err(Error::Unavailable(
            "no cgroup file system is mounted".into(),
        )),
    }
}

/// Reads this process's group path in a v1 hierarchy from /proc/self/cgroup.
pub fn own_group(proc_self_cgroup: &str, controller: &str) -> String {
    proc_self_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            Some((f.next()?, f.next()?, f.next()?))
        })
        .find(|(_, cs, _)| cs.split(',').any(|c| c == controller))
        .map(|(_, _, p)| p.to_string())
        .unwrap_or_else(|| "/".into())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh group name for this process.
pub fn fresh_name() -> String {
    format!(
        "twinbox-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The groups of one box, made on the host. Dropping it removes them.
#[derive(Debug)]
pub struct Cgroup {
    plan: Plan,
    removed: bool,
}

impl Cgroup {
    /// Makes the directories and writes the limits. On failure, whatever
    /// was made is removed again.
    pub fn create(plan: Plan) -> Result<Self, Error> {
        let mut cg = Self {
            plan: Plan {
                version: plan.version,
                dirs: Vec::new(),
            },
            removed: false,
        };
        for dir in plan.dirs {
            std::fs::create_dir(&dir.path).map_err(io("creating", &dir.path))?;
            cg.plan.dirs.push(dir.clone());
            for w in &dir.writes {
                let p = dir.path.join(w.file);
                match std::fs::write(&p, &w.value) {
                    Err(e) if w.optional && e.kind() == ErrorKind::NotFound => {}
                    r => r.map_err(io("writing", &p))?,
                }
            }
        }
        Ok(cg)
    }

    /// Makes the directories of a plan whose paths were given (an OCI
    /// bundle's, [`oci::plan`]): with their parents, an existing group
    /// joined as it is; then the writes. On failure the groups made are
    /// removed again (the parents stay).
    pub fn create_at(plan: Plan) -> Result<Self, Error> {
        let mut cg = Self {
            plan: Plan {
                version: plan.version,
                dirs: Vec::new(),
            },
            removed: false,
        };
        for dir in plan.dirs {
            if !dir.path.is_dir() {
                std::fs::create_dir_all(&dir.path).map_err(io("creating", &dir.path))?;
            }
            cg.plan.dirs.push(dir.clone());
            for w in &dir.writes {
                let p = dir.path.join(w.file);
                match std::fs::write(&p, &w.value) {
                    Err(e) if w.optional && e.kind() == ErrorKind::NotFound => {}
                    r => r.map_err(io("writing", &p))?,
                }
            }
        }
        Ok(cg)
    }

    /// Keeps the groups past this value (the box outlives its launcher)
    /// and gives their paths, for [`oci::remove`].
    pub fn keep(mut self) -> Vec<PathBuf> {
        self.removed = true;
        self.plan.dirs.iter().map(|d| d.path.clone()).collect()
    }

    /// The group directories.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.plan.dirs.iter().map(|d| d.path.as_path())
    }

    /// The files the box's first process writes "0" to, to join its v1
    /// groups itself (see [`join_self`]); empty on v2.
    ///
    /// Why: moving *another* process (a pid written to `cgroup.procs`)
    /// takes the kernel's global threadgroup lock for writing, which waits
    /// out an RCU grace period: 5-9 ms per box on this host, the largest
    /// single cost of a start. A single-threaded process moving itself
    /// through the v1 `tasks` file skips that lock (0.4 ms).
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        if self.plan.version == 2 {
            return Vec::new();
        }
        self.dirs().map(|d| d.join("tasks")).collect()
    }

    /// Whether the launcher must move the box in with [`Cgroup::add`]
    /// (v2, where a process cannot join a domain group through `tasks`).
    pub fn needs_add(&self) -> bool {
        self.plan.version == 2
    }

    /// Moves process `pid` (and so its future children) into the groups.
    pub fn add(&self, pid: i32) -> Result<(), Error> {
        for d in self.dirs() {
            let p = d.join("cgroup.procs");
            std::fs::write(&p, pid.to_string()).map_err(io("joining", &p))?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a task in the box.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.plan.version == 2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        self.dirs()
            .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Peak memory use in bytes, where the kernel reports it.
    pub fn memory_peak(&self) -> Option<u64> {
        let file = if self.plan.version == 2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.dirs()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|t| t.trim().parse().ok())
    }

    /// SIGKILLs every task still in the groups.
    pub fn kill_all(&self) {
        self.dirs().for_each(kill_dir);
    }

    /// Removes the groups, killing what is left in them and waiting (up to
    /// 2 s) for the kernel to let go of them.
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        remove_dirs(&self.plan.dirs)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed {
            self.kill_all();
            let _ = remove_dirs(&self.plan.dirs);
        }
    }
}

/// Removes groups a dead launcher left (their paths as
/// [`Cgroup::dirs`] gave them), killing what is still in them. Only
/// directories named `twinbox-*` are touched.
pub fn remove_leftover(paths: &[PathBuf]) -> Result<(), Error> {
    let dirs: Vec<Dir> = paths
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("twinbox-"))
        })
        .map(|p| Dir {
            path: p.clone(),
            writes: Vec::new(),
        })
        .collect();
    remove_dirs(&dirs)
}

fn remove_dirs(dirs: &[Dir]) -> Result<(), Error> {
    let limit = Duration::from_secs(2);
    let start = Instant::now();
    let mut first_err = None;
    for d in dirs.iter().rev() {
        loop {
            match std::fs::remove_dir(&d.path) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < limit => {
                    kill_dir(&d.path);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    first_err.get_or_insert(Error::Busy(d.path.clone(), limit));
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(Error::Io {
                        what: "removing",
                        path: d.path.clone(),
                        source: e,
                    });
                    break;
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn kill_dir(d: &Path) {
    if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
        for pid in t.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Moves the calling thread into the v1 group whose `tasks` file is
/// `tasks` (child side, system calls only). The caller must be
/// single-threaded, so the thread is the whole process.
pub fn join_self(tasks: &std::ffi::CStr) -> Result<(), nix::errno::Errno> {
    let fd = nix::fcntl::open(
        tasks,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::write(&fd, b"0")?;
    Ok(())
}

/// Removes groups named `twinbox-<pid>-<n>` under the plan's parents whose
/// launcher is gone (it was SIGKILLed before it could clean up). Returns how
/// many were removed.
pub fn collect_stale(plan: &Plan) -> usize {
    let mut n = 0;
    for d in &plan.dirs {
        let Some(parent) = d.path.parent() else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|s| s.strip_prefix("twinbox-"))
                .and_then(|s| s.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                kill_dir(&e.path());
                if remove_dirs(&[Dir {
                    path: e.path(),
                    writes: vec![],
                }])
                .is_ok()
                {
                    n += 1;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_group_reads_proc_self_cgroup() {
        let t = "9:name=systemd:/\n4:memory:/process_api/ee2a\n2:cpu,cpuacct:/user.slice\n0::/\n";
        assert_eq!(own_group(t, "memory"), "/process_api/ee2a");
        assert_eq!(own_group(t, "cpu"), "/user.slice");
        assert_eq!(own_group(t, "pids"), "/");
    }

    #[test]
    fn fresh_names_differ_and_carry_the_pid() {
        let (a, b) = (fresh_name(), fresh_name());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("twinbox-{}-", std::process::id())));
    }
}
