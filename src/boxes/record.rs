//! What twinbox keeps of one box: `$TWINBOX_HOME/boxes/<id>/box.json`,
//! its configuration and its state, and how a state is shown (`ps`'s
//! STATUS column, Docker's wording).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cli::Isolation;
use crate::workload::Workload;

/// Where a box is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made by `create`, never started.
    Created,
    /// Its supervisor is starting it.
    Starting,
    /// Its workload runs.
    Running,
    /// Its workload ended (or its supervisor died).
    Exited,
}

/// How a box runs, beyond its workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Options {
    /// Keep stdin open (`-i`).
    pub interactive: bool,
    /// A terminal (`-t`).
    pub tty: bool,
    /// Remove the box when it exits (`--rm`).
    pub auto_remove: bool,
    /// A user namespace too (container).
    pub userns: bool,
    /// Boot instead of restoring a snapshot (VM).
    pub cold: bool,
    /// Most bytes of log kept (both files).
    pub log_max: u64,
    /// Ports to publish (`-p`).
    #[serde(default)]
    pub publish: Vec<super::ports::PortSpec>,
    /// Volumes (`-v`): binds and named volumes, in order.
    #[serde(default)]
    pub volumes: Vec<crate::volumes::spec::VolumeSpec>,
}

/// The box's state, as its supervisor last wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Where it is.
    pub status: Status,
    /// The supervisor's pid, while it lives.
    pub supervisor: Option<i32>,
    /// The supervisor's start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`): a pid reused by another process does not match.
    pub supervisor_start: Option<u64>,
    /// The workload's first process as the host sees it (the container's
    /// init; for a VM, its monitor).
    pub pid: Option<i32>,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Its exit code (128 + N for signal N).
    pub exit_code: Option<i32>,
    /// Why it ended other than by itself, or why it could not start.
    pub error: Option<String>,
    /// The kernel's OOM killer killed a process in it.
    pub oom_killed: bool,
    /// Its cgroup directories on the host (container), for cleanup after a
    /// supervisor that died.
    pub cgroups: Vec<std::path::PathBuf>,
    /// A VM's workload's pid inside the guest, as its agent reports it.
    #[serde(default)]
    pub guest_pid: Option<u32>,
    /// Its published ports, as bound, while it runs.
    #[serde(default)]
    pub ports: Vec<super::ports::Binding>,
}

impl State {
    /// A box just made, never started.
    pub fn created() -> Self {
        Self {
            status: Status::Created,
            supervisor: None,
            supervisor_start: None,
            pid: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
            oom_killed: false,
            cgroups: Vec::new(),
            guest_pid: None,
            ports: Vec::new(),
        }
    }
}

/// One box.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// 64 hex digits.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// What runs in it.
    pub workload: Workload,
    /// The image's own command and PATH (what a VM snapshot preloads).
    pub image_command: (Vec<String>, String),
    /// How.
    pub options: Options,
    /// Where it is.
    pub state: State,
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| humantime::parse_rfc3339(s).ok())
}

/// "3 minutes", "About an hour", as Docker words a duration.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

fn since(t: &Option<String>) -> Duration {
    t.as_deref()
        .and_then(parse_time)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

impl Record {
    /// The isolation's name, as the command line spells it.
    pub fn isolation(&self) -> &'static str {
        match self.workload.isolation {
            Isolation::Vm => "vm",
            Isolation::Container => "container",
        }
    }

    /// The first 12 digits of the id.
    pub fn short_id(&self) -> &str {
        &self.id[..super::id::SHORT.min(self.id.len())]
    }

    /// The command, as `ps` shows it (quoted, cut to 20 characters).
    pub fn command(&self) -> String {
        let c = self.workload.argv.join(" ");
        let c = if c.chars().count() > 20 {
            format!("{}…", c.chars().take(19).collect::<String>())
        } else {
            c
        };
        format!("\"{c}\"")
    }

    /// The CREATED column: "2 minutes ago".
    pub fn created_ago(&self) -> String {
        format!("{} ago", human_duration(since(&Some(self.created.clone()))))
    }

    /// The STATUS column: "Up 3 minutes", "Exited (7) 2 seconds ago",
    /// "Created".
    pub fn status_text(&self) -> String {
        match self.state.status {
            Status::Created => "Created".into(),
            Status::Starting => "Starting".into(),
            Status::Running => format!("Up {}", human_duration(since(&self.state.started_at))),
            Status::Exited => format!(
                "Exited ({}) {} ago",
                self.state.exit_code.unwrap_or(-1),
                human_duration(since(&self.state.finished_at))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_worded_as_docker_does() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(2)), "2 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(180)), "3 minutes");
        assert_eq!(human_duration(Duration::from_secs(4000)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400)), "3 days");
    }

    #[test]
    fn times_round_trip() {
        let t = now();
        assert!(parse_time(&t).is_some(), "{t}");
        assert!(since(&Some(t)) < Duration::from_secs(5));
    }
}
