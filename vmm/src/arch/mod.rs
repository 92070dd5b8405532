//! x86_64: the guest physical memory layout, and the state a vCPU needs to
//! start in 64-bit mode (registers, page tables, CPUID, MSRs, LAPIC), the MP
//! table that tells the guest how many CPUs it has, and the Linux boot
//! parameters (zero page, E820 map).

pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod pmu;
pub mod regs;
