//! Everything one `twinbox bench` run found, as one value: the machine, the
//! subjects' versions, and each scenario's results. Serialized as
//! results.json; the Markdown and HTML reports are rendered from it.

use serde::Serialize;

use crate::scenarios::{isolation::Isolation, memory::Memory, speed::Speed, startup::Startup};

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Host name.
    pub host: String,
    /// Host kernel release.
    pub kernel: String,
    /// CPUs available.
    pub cpus: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// The hypervisor behind /dev/kvm, as the caller found it.
    pub hypervisor: String,
    /// The cgroup layout.
    pub cgroups: String,
    /// When, RFC 3339.
    pub date: String,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The machine.
    pub machine: Machine,
    /// `--quick` or the default set.
    pub quick: bool,
    /// (subject, version) for every subject found.
    pub versions: Vec<(String, String)>,
    /// Notes the reader must know (environment changes, caveats).
    pub notes: Vec<String>,
    /// Start to exit of `/bin/true` in each box.
    pub startup: Option<Startup>,
    /// The monitors' floor: the null guest (no Linux) in each VMM.
    pub floor: Option<Startup>,
    /// Host memory per box.
    pub memory: Option<Memory>,
    /// What each box sees and may do.
    pub isolation: Option<Isolation>,
    /// Micro-workloads relative to native.
    pub speed: Option<Speed>,
    /// Seconds the whole run took.
    pub seconds: f64,
}
