//! The CPUID a vCPU sees: KVM's supported list, with the topology fixed up
//! so that vCPU `index` of `count` reports its own APIC id and the guest
//! counts `count` single-threaded cores in one package, and the hypervisor
//! bit set.

use kvm_bindings::CpuId;

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Fixes up `cpuid` (KVM's supported list) for vCPU `index` of `count`.
pub fn fix_for_vcpu(cpuid: &mut CpuId, index: u32, count: u32) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                // APIC id (31:24), logical processors per package (23:16).
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                // Running under a hypervisor.
                e.ecx |= 1 << 31;
                // The TSC-deadline timer: KVM's in-kernel LAPIC has emulated
                // it since Linux 3.2 (KVM_CAP_TSC_DEADLINE_TIMER), but
                // KVM_GET_SUPPORTED_CPUID leaves the bit to userspace.
                // Without it the guest calibrates its LAPIC timer, which
                // fails with no PIT under nested SVM and leaves it without
                // a timer (its clock then stands still).
                e.ecx |= 1 << 24;
                // HTT: the package has more than one logical processor.
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0x4 => {
                // Cores per package - 1 (31:26); threads sharing the cache -
                // 1 (25:14): all cores share the last level, none share L1/L2.
                let level = (e.eax >> 5) & 0x7;
                e.eax &= 0x3fff;
                e.eax |= (count - 1) << 26;
                if level >= 3 {
                    e.eax |= (count - 1) << 14;
                }
            }
            0xb | 0x1f => {
                // Extended topology: one thread per core, `count` cores.
                e.edx = index;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = 1 | (2 << 8);
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores - 1.
                e.ecx = (e.ecx & !0xff) | ((count - 1) & 0xff);
            }
            _ => {}
        }
    }
}

/// CPUID leaf 1 ECX: CMPXCHG16B.
const CX16: u32 = 1 << 13;

/// Adjustments for PVM, the software hypervisor: features whose
/// instructions its emulator cannot handle in a guest kernel are hidden.
///
/// - CMPXCHG16B: SLUB's lockless freelist (`___slab_alloc`) uses it when
///   CX16 is present; under PVM it ended the VM with
///   KVM_EXIT_INTERNAL_ERROR (emulation failure, `lock cmpxchg16b
///   [rbp+0x20]`) 12 s into boot. Without CX16, SLUB takes its locked path.
///
/// XSAVE and POPCNT cannot be hidden this way: a guest on PVM reads them as
/// set whatever the VMM gives KVM (tested with a guest that executes
/// `cpuid`). The kernel's own switches do it instead; see
/// [`crate::hypervisor::Kind::guest_cmdline`].
pub fn hide_for_pvm(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x1 {
            e.ecx &= !CX16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_is_fixed_per_vcpu() -> Result<(), vmm_sys_util::fam::Error> {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                edx: 1 << 28,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries)?;
        fix_for_vcpu(&mut c, 1, 2);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 1);
        assert_eq!((e[0].ebx >> 16) & 0xff, 2);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (1, 2, 1));
        let mut c = CpuId::from_entries(&entries)?;
        fix_for_vcpu(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & (1 << 28), 0);
        assert_eq!(bits_for(5), 3);
        Ok(())
    }

    #[test]
    fn pvm_hides_cx16() -> Result<(), vmm_sys_util::fam::Error> {
        let entries = [kvm_cpuid_entry2 {
            function: 1,
            ecx: u32::MAX,
            edx: 7,
            ..Default::default()
        }];
        let mut c = CpuId::from_entries(&entries)?;
        hide_for_pvm(&mut c);
        let e = c.as_slice();
        assert_eq!(e[0].ecx, !CX16);
        assert_eq!(e[0].edx, 7);
        Ok(())
    }
}
