//! Container mode: the workload in namespaces and cgroups on the host
//! kernel, started by twinbox's own launcher (`twinbox-container`).
//!
//! The image's rootfs is the read-only lower layer; the writable layer is a
//! tmpfs that exists only inside the box (mounted on `$TWINBOX_HOME/run`
//! in the box's own mount namespace), so nothing is left on disk.

use std::path::PathBuf;

use anyhow::{Context, Result};
use twinbox_container::{ContainerConfig, Ending, Limits};

use super::Backend;
use crate::workload::Workload;

/// The container backend.
pub struct ContainerBackend {
    /// An existing directory the box's private tmpfs is mounted on.
    pub scratch: PathBuf,
    /// Run the box in a user namespace too.
    pub user_namespace: bool,
    /// Host paths bound into the box (volumes).
    pub binds: Vec<twinbox_container::Bind>,
}

impl ContainerBackend {
    /// The launcher's configuration for `w`.
    pub fn config(&self, w: &Workload) -> ContainerConfig {
        let mut c = ContainerConfig::new(w.rootfs.clone(), self.scratch.clone(), w.argv.clone());
        c.env = w.env.clone();
        c.cwd = w.cwd.clone();
        c.user = w.user.clone();
        c.limits = Limits {
            memory: w.limits.memory,
            pids: w.limits.pids,
            cpus: w.limits.cpus,
        };
        c.timeout = w.limits.timeout;
        c.user_namespace = self.user_namespace;
        c.binds = self.binds.clone();
        c
    }
}

/// Appends the launcher's own timings as one JSON line to `path` (set by
/// `twinbox bench container` through `$TWINBOX_TIMINGS`, to show where a
/// start's time goes). A failure to record is not the run's failure.
fn record_timings(path: &std::ffi::OsStr, t: &twinbox_container::run::Timings) {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let line = serde_json::json!({
        "cgroup_create_us": us(t.cgroup_create),
        "setup_us": us(t.setup),
        "workload_us": us(t.workload),
        "cleanup_us": us(t.cleanup),
    });
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

impl Backend for ContainerBackend {
    fn run(&self, w: &Workload) -> Result<i32> {
        std::fs::create_dir_all(&self.scratch)
            .with_context(|| format!("creating {}", self.scratch.display()))?;
        let o = match twinbox_container::run(&self.config(w)) {
            Ok(o) => o,
            Err(e @ twinbox_container::run::Error::Exec { .. }) => {
                eprintln!("twinbox: {e}");
                return Ok(e.exit_code());
            }
            Err(e) => return Err(e).context("running the container"),
        };
        if let Some(path) = std::env::var_os("TWINBOX_TIMINGS") {
            record_timings(&path, &o.timings);
        }
        if o.oom_kills > 0 {
            eprintln!(
                "twinbox: the kernel's OOM killer killed {} process(es) in the box (memory limit {})",
                o.oom_kills,
                w.limits
                    .memory
                    .map_or("none".into(), crate::size::human)
            );
        }
        match o.ending {
            Ending::TimedOut => eprintln!(
                "twinbox: the container was killed after --timeout {}",
                w.limits
                    .timeout
                    .map_or("?".into(), |t| humantime::format_duration(t).to_string())
            ),
            Ending::Interrupted(sig) => {
                eprintln!("twinbox: interrupted by signal {sig}; the container was killed");
                return Ok(128 + sig);
            }
            Ending::Normal => {}
        }
        Ok(o.exit.code())
    }
}
