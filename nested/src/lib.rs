//! The plan and the result records of twinbox's nested hardware-KVM
//! harness (`twinbox nested`), shared by its two ends: the host that boots
//! the outer machine and the agent that is that machine's PID 1.
//!
//! The agent writes one record a line on a serial port; the host reads the
//! stream after the machine has stopped, treating it as untrusted input
//! ([`protocol::decode`] is bounded, and fuzzed: `fuzz/`). The plan travels
//! the other way, inside the outer machine's initrd.

pub mod protocol;

use serde::{Deserialize, Serialize};

/// What to do in the outer machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Files and directories to carry in (the host side reads these; the
    /// agent ignores them).
    #[serde(default)]
    pub put: Vec<Put>,
    /// Environment for every step (on top of PATH, HOME and TMPDIR).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The commands, run one after another.
    pub steps: Vec<Step>,
    /// Guest files whose contents come back after the last step.
    #[serde(default)]
    pub fetch: Vec<String>,
    /// Kernel modules to load first, in order (filled in by the host side).
    #[serde(default)]
    pub modules: Vec<String>,
}

/// A host file or directory carried into the outer machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Put {
    /// Where it is on the host.
    pub host: std::path::PathBuf,
    /// Where it goes in the outer machine (default: the same path).
    #[serde(default)]
    pub guest: Option<String>,
}

/// One command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Program and arguments (the program is looked up on PATH).
    pub argv: Vec<String>,
    /// Extra environment for this step.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Killed (with its process group) after this many seconds.
    #[serde(default = "default_step_timeout")]
    pub timeout_s: u64,
}

fn default_step_timeout() -> u64 {
    600
}

impl Step {
    /// A step running `argv` with the default timeout.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            timeout_s: default_step_timeout(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The command.
    pub argv: Vec<String>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether the agent killed it at its timeout.
    pub timed_out: bool,
    /// Why it could not run, if it could not.
    pub error: Option<String>,
    /// Its standard output (lossy UTF-8, at most [`protocol::MAX_OUTPUT`]).
    pub stdout: String,
    /// Its standard error (the same).
    pub stderr: String,
    /// Whether either stream was cut at [`protocol::MAX_OUTPUT`].
    pub truncated: bool,
    /// Wall time from spawn to exit, in seconds, on the outer machine's clock.
    pub seconds: f64,
}
