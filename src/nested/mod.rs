//! The nested hardware-KVM harness: twinbox on AMD SVM, inside an outer
//! machine that QEMU's software CPU runs.
//!
//! This host's `/dev/kvm` is PVM. Users have hardware KVM, and the project
//! tests that path here: QEMU's TCG emulates an AMD CPU with SVM and nested
//! paging (`-cpu max`), so a Debian kernel booted under it loads `kvm_amd`
//! and its `/dev/kvm` is the ordinary hardware path. The pieces:
//!
//! - [`machine`]: the outer machine (Debian's cloud kernel, its three KVM
//!   modules and a static busybox, from Debian's packages), cached like the
//!   guest kernel, keyed by the packages' versions.
//! - [`payload`]: the per-run archive: the plan, the files it carries (each
//!   at its own host path unless told otherwise) and the shared libraries
//!   of every dynamic executable among them.
//! - [`agent`]: PID 1 of the outer machine (`twinbox nested agent`): loads
//!   the modules, runs the plan's steps one after another, streams each
//!   result back, powers off.
//! - [`protocol`]: the records the agent writes on the machine's second
//!   serial port, and the host's bounded parser of them.
//! - [`outer`]: boots the machine under QEMU and collects the report.
//!
//! Timings under it are not hardware timings (every instruction of the
//! outer machine is emulated); behaviour is the hardware path's.

pub mod agent;
pub mod machine;
pub mod outer;
pub mod payload;
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

/// Everything a nested run brought back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The outer machine.
    pub machine: Option<machine::Info>,
    /// The outer kernel's uptime when the agent started, in seconds.
    pub kernel_boot_s: f64,
    /// Loading the KVM modules, in seconds.
    pub modules_s: f64,
    /// What `/dev/kvm` is inside (the VMM's own detection).
    pub hypervisor: String,
    /// One result per step, in order.
    pub steps: Vec<StepResult>,
    /// Fetched files: (guest path, contents as lossy UTF-8, or the error).
    pub files: Vec<(String, String)>,
    /// The outer kernel's log at the end.
    pub kernel_log: String,
    /// Host wall time from QEMU's start to its exit, in seconds.
    pub wall_s: f64,
    /// Host wall time to write the payload, in seconds.
    pub payload_s: f64,
}

impl Report {
    /// The first step that did not exit 0, if any.
    pub fn first_failure(&self) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.code != Some(0))
    }
}
