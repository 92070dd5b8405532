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
//! - `twinbox_nested` (the crate `nested/`): the plan, and the records the
//!   agent writes on the machine's second serial port with the host's
//!   bounded parser of them (a library of its own, so it can be fuzzed).
//! - [`outer`]: boots the machine under QEMU and collects the report.
//!
//! Timings under it are not hardware timings (every instruction of the
//! outer machine is emulated); behaviour is the hardware path's.

pub mod agent;
pub mod machine;
pub mod outer;
pub mod payload;

pub use twinbox_nested::{protocol, Plan, Put, Step, StepResult};

use serde::{Deserialize, Serialize};

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
    /// Each time the outer machine hung and was replaced, why.
    #[serde(default)]
    pub restarts: Vec<String>,
}

impl Report {
    /// The first step that did not exit 0, if any.
    pub fn first_failure(&self) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.code != Some(0))
    }
}
