//! A subject: something that can be started as a process, once per run.

use std::process::Command;

/// One thing under measurement.
pub trait Subject {
    /// Its name in reports.
    fn name(&self) -> String;
    /// Why it cannot run on this host, if it cannot (reported, never
    /// silently dropped).
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// The command for one run.
    fn command(&self) -> Command;
    /// Text on its standard output that marks the workload's work as done
    /// (time to marker is measured to the end of it).
    fn marker(&self) -> Option<String> {
        None
    }
    /// The exit status of a good run.
    fn expected_status(&self) -> i32 {
        0
    }
    /// A box that stays up doing nothing (for the memory scenario), if the
    /// subject can make one.
    fn idle(&self) -> Option<Idle> {
        None
    }
    /// The isolation probe run inside the box with `args` (its JSON on
    /// stdout), if the subject can run it.
    fn probe(&self, _args: &[&str]) -> Option<Command> {
        None
    }
    /// `argv` run inside the box under small limits (64 MiB, 64 tasks) and a
    /// 5 s timeout, for the containment checks, if the subject has limits.
    fn limited(&self, _argv: &[&str]) -> Option<Command> {
        None
    }
    /// The subject's version, for the report.
    fn version(&self) -> Option<String> {
        None
    }
}

/// An idle box: how to start it, and how to tell its workload process on
/// the host (to leave it out of the box's cost), if it has one there.
pub struct Idle {
    /// Starts the box; it runs until its workload is killed.
    pub command: Command,
    /// File name of the workload's executable as the host sees it
    /// (`busybox` for a container's `sleep`); `None` for a VM, whose
    /// workload is inside the guest.
    pub workload_exe: Option<String>,
    /// A line the box prints on its standard output once its workload runs,
    /// for a box whose start the host cannot see otherwise (a VM's guest).
    pub ready: Option<Ready>,
}

/// How an idle box says it is up.
pub struct Ready {
    /// The whole line it prints.
    pub line: String,
    /// How long to wait for it.
    pub within: std::time::Duration,
}
