//! Model-specific registers a vCPU starts with: the syscall and sysenter
//! MSRs cleared (the guest kernel sets its own), the TSC at zero, fast
//! string operations on.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// The MSRs set at boot, `(index, value)`.
pub const BOOT_MSRS: [(u32, u64); 10] = [
    (0x174, 0),       // IA32_SYSENTER_CS
    (0x175, 0),       // IA32_SYSENTER_ESP
    (0x176, 0),       // IA32_SYSENTER_EIP
    (0xc000_0081, 0), // STAR
    (0xc000_0082, 0), // LSTAR
    (0xc000_0083, 0), // CSTAR
    (0xc000_0084, 0), // SYSCALL_MASK
    (0xc000_0102, 0), // KERNEL_GS_BASE
    (0x10, 0),        // IA32_TSC
    (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
];

/// The boot MSRs as KVM takes them.
pub fn boot_msrs() -> Result<Msrs, vmm_sys_util::fam::Error> {
    msrs_of(&BOOT_MSRS)
}

/// `(index, value)` pairs as KVM takes them.
pub fn msrs_of(pairs: &[(u32, u64)]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    let entries: Vec<kvm_msr_entry> = pairs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries)
}
