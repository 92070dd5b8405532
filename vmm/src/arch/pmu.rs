//! The AMD performance counters a guest may not touch when KVM has no
//! virtual PMU to give it.
//!
//! Linux on any AMD CPU of family 6 or later assumes the four legacy K7
//! counters exist (`amd_pmu_init` checks no CPUID bit for them), and
//! `check_hw_exists` at boot reads the event selects `0xc0010000-3`, then
//! writes `value ^ 0xffff` to the last counter, `0xc0010007`, to see
//! whether it sticks. Where KVM's vPMU is off (`kvm.enable_pmu=N`, or a
//! host CPU with no PMU to virtualize: QEMU's TCG has none, so a kvm_amd
//! nested under it turns its vPMU off), KVM drops that write and logs
//! `Unhandled WRMSR(0xc0010007) = 0xffff` on the host, once per VM. The
//! guest then reads 0 back and falls back to software events.
//!
//! Clearing a CPUID bit cannot stop it: the K7 counters have none. So
//! where KVM reports no PMU (`KVM_CAP_PMU_CAPABILITY` is 0), the VMM
//! denies these eight MSRs with an MSR filter. The guest's first read of
//! `0xc0010000` then takes a #GP, which `rdmsrl_safe` catches, and the
//! kernel says "PMU not available" without writing anything. Where KVM
//! has a vPMU, nothing is filtered and the guest keeps its counters.

use kvm_bindings::{KVM_CAP_PMU_CAPABILITY, KVM_CAP_X86_MSR_FILTER};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

/// `MSR_K7_EVNTSEL0`: the first of four event selects, then four counters.
pub const K7_PMU_BASE: u32 = 0xc001_0000;
/// The event selects and counters together.
pub const K7_PMU_MSRS: u32 = 8;

/// Whether the guest's K7 PMU MSRs must be filtered: an AMD host whose KVM
/// has no vPMU, and can filter.
pub fn must_filter(amd: bool, pmu_capability: i32, msr_filter: i32) -> bool {
    amd && pmu_capability == 0 && msr_filter > 0
}

/// Denies the K7 PMU MSRs to the guest of `vm` where [`must_filter`] says
/// so; returns whether it did.
pub fn filter_absent_pmu(kvm: &Kvm, vm: &VmFd, amd: bool) -> Result<bool, kvm_ioctls::Error> {
    // Not AMD: no KVM question to ask on the boot path.
    if !amd {
        return Ok(false);
    }
    let pmu = kvm.check_extension_raw(KVM_CAP_PMU_CAPABILITY.into());
    let filter = kvm.check_extension_raw(KVM_CAP_X86_MSR_FILTER.into());
    if !must_filter(amd, pmu, filter) {
        return Ok(false);
    }
    // A zero bit denies; one byte covers the eight MSRs.
    let deny = [0u8; 1];
    vm.set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: K7_PMU_BASE,
            msr_count: K7_PMU_MSRS,
            bitmap: &deny,
        }],
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_amd_without_a_vpmu_is_filtered() {
        assert!(must_filter(true, 0, 1));
        assert!(!must_filter(true, 3, 1), "KVM has a vPMU");
        assert!(!must_filter(false, 0, 1), "not AMD");
        assert!(!must_filter(true, 0, 0), "KVM cannot filter");
    }

    #[test]
    fn the_range_covers_the_probed_counter() {
        let probed = 0xc001_0007;
        assert!((K7_PMU_BASE..K7_PMU_BASE + K7_PMU_MSRS).contains(&probed));
    }
}
