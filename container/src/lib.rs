//! twinbox-container: a namespace + cgroup container launcher, as a library.
//!
//! It takes a [`ContainerConfig`] (rootfs, argv, env, user, limits) and runs
//! it to an [`Outcome`], leaving nothing behind. It knows nothing of VMs,
//! images or benchmarks.
//!
//! One module per concern: [`config`], [`namespaces`], [`rootfs`] (overlay,
//! pivot_root), [`mounts`] (kernel file systems, masked paths),
//! [`devices`] (/dev), [`cgroups`] (v1, v2, hybrid), [`caps`],
//! [`binds`] (volumes), [`seccomp`], [`user`] (who the workload runs as), [`idmap`] (user
//! namespace maps), [`network`] (loopback), [`spawn`] (clone, into the cgroup on v2), [`child`] (the box's side from
//! clone to execve) and [`run`] (the launcher's side), [`exec`] (a new process in a running
//! box).

pub mod binds;
pub mod caps;
pub mod cgroups;
pub mod child;
pub mod config;
pub mod devices;
pub mod exec;
pub mod idmap;
pub mod mounts;
pub mod namespaces;
pub mod network;
pub mod oci;
pub mod pty;
pub mod rootfs;
pub mod run;
pub mod seccomp;
pub mod spawn;
pub mod user;

pub use config::{Bind, ContainerConfig, Limits, Stdio};

/// A C string of `s` for the child's plan. Every caller passes text built
/// from validated parts (no NUL); a NUL is dropped rather than panicking.
pub(crate) fn cstring(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default()
}
pub use run::{run, Ending, Exit, Outcome};
