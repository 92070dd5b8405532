//! Saving and restoring a VM's state, the groundwork of warm start (a VM
//! resumed from a snapshot of a booted guest instead of booted).
//!
//! So far: one vCPU's whole architectural state ([`vcpu::VcpuState`]:
//! registers, special registers, FPU and extended state, XCRs, LAPIC,
//! pending events, MP state, debug registers, MSRs, TSC frequency), read
//! from KVM and written back, and its byte format, whose parser treats the
//! file as hostile (every tag, length and count is checked; `fuzz/` fuzzes
//! it); and guest memory ([`memory`]): saved with zero pages as holes,
//! restored mapped private from the file; and the state file ([`file`]):
//! versioned, keyed, digested, private, published by rename. The VM
//! clock, our devices, the snapshot cache and `twinbox run` come next
//! (issue 14).

pub mod dir;
pub mod file;
pub mod machine;
pub mod memory;
pub mod vcpu;

/// Errors of saving or restoring state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM call failed.
    #[error("{0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The saved state does not start with our magic and version.
    #[error("not a twinbox vCPU state (bad magic or version {0})")]
    Header(u32),
    /// The saved state ends inside a section.
    #[error("vCPU state truncated at byte {0}")]
    Truncated(usize),
    /// A section whose tag we do not know.
    #[error("unknown section {0} in vCPU state")]
    UnknownSection(u32),
    /// A section of the wrong length, or repeated.
    #[error("section {tag} of vCPU state: {why}")]
    BadSection {
        /// The section's tag.
        tag: u32,
        /// What is wrong with it.
        why: String,
    },
    /// A section the state cannot do without.
    #[error("vCPU state lacks section {0}")]
    Missing(&'static str),
    /// A snapshot file that must not be used (from other inputs, another
    /// version, cut, changed, a symlink, shared with others).
    #[error("unusable snapshot: {0}")]
    Snapshot(String),
    /// The memory file is shorter than its layout says.
    #[error("the memory file has {have} bytes, its layout needs {need}")]
    MemoryFileShort {
        /// Bytes the layout needs.
        need: u64,
        /// Bytes the file has.
        have: u64,
    },
    /// Reading or writing a snapshot's file failed.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] crate::memory::Error),
    /// More MSRs than KVM would take.
    #[error("{0} MSRs in the vCPU state, more than {max}", max = vcpu::MAX_MSRS)]
    TooManyMsrs(usize),
}
