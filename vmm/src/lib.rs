//! twinbox-vmm: a tiny KVM virtual machine monitor, as a library.
//!
//! It takes a `VmConfig` (kernel, initrd or disks, command line, vCPUs,
//! memory, devices) and runs a VM until it stops, returning why. It knows
//! nothing of containers, images or benchmarks.
//!
//! Today it holds [`hypervisor`]: what kind of KVM this host offers
//! (hardware VMX/SVM or the PVM software hypervisor) and whether it works.
//! The monitor itself comes with the microVM issue.

pub mod hypervisor;
