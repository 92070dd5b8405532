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
}
