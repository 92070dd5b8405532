//! twinbox-container: a namespace + cgroup container launcher, as a library.
//!
//! It takes a `ContainerConfig` (rootfs, argv, env, limits, namespaces) and
//! runs it to an exit status, leaving nothing behind. It knows nothing of VMs,
//! images or benchmarks.
//!
//! Today it holds what the host offers a launcher: [`namespaces`] (which
//! kinds can be created here) and [`cgroups::layout`] (v1, v2 or hybrid).
//! The launcher itself comes with the container issue.

pub mod cgroups;
pub mod namespaces;
