//! twinbox-vmm: a tiny KVM virtual machine monitor, as a library.
//!
//! `VmConfig` (kernel, initrd, command line, vCPUs, memory, timeout) in,
//! [`vm::run`] builds and runs the VM, and an [`Outcome`] out: why it stopped
//! ([`StopReason`], never a panic), its last console output, boot timer marks
//! and where the time went. It knows nothing of containers, images or
//! benchmarks, and uses only the KVM API, so it runs on hardware KVM and on
//! PVM alike ([`hypervisor`] tells them apart).
//!
//! Layout: [`arch`] (x86_64 boot state, CPUID, MSRs, MP table, zero page),
//! [`memory`], [`pmem`] (a disk image as legacy persistent memory), [`loader`], [`devices`] (8250 UART, i8042, exit and boot-timer
//! ports, virtio-vsock, virtio-fs through vhost-user), [`virtio`] (the virtio-mmio transport), [`virtiofsd`] (the file server of a shared directory), [`vcpu`], [`vm`], [`seccomp`] (per-thread filters, compiled at
//! build time), [`profile`] and [`stats`] (a sampling profiler of the guest
//! and KVM's counters). [`null_guest`] builds the smallest possible
//! guest, used to measure the monitor alone.

pub mod arch;
pub mod config;
pub mod devices;
pub mod event;
pub mod hypervisor;
pub mod loader;
pub mod mailbox;
pub mod memory;
pub mod null_guest;
pub mod pmem;
pub mod profile;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod virtio;
pub mod virtiofsd;
pub mod vm;

pub use config::VmConfig;
pub use vm::{run, Outcome, StopReason};
