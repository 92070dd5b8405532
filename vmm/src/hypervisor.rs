//! What KVM this host offers, and whether we can use it.
//!
//! The VMM speaks only the KVM API, but the hypervisor behind `/dev/kvm`
//! differs: hardware virtualization (Intel VT-x, AMD-V), or PVM, a software
//! hypervisor that runs unmodified guests by trapping and emulating their
//! privileged instructions (`kvm_pvm` module). Some choices (timer, CPUID
//! bits, kernel command line) depend on which one it is, so the VMM detects
//! it at run time; `twinbox doctor` reports it.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The hypervisor behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Intel VT-x (`kvm_intel`).
    Intel,
    /// AMD-V (`kvm_amd`).
    Amd,
    /// PVM (`kvm_pvm`), software; `native` is its `pvm_native` parameter.
    Pvm {
        /// Whether PVM runs unmodified (native) guest kernels.
        native: bool,
    },
    /// KVM without a module we recognize (built in, or another backend).
    Unknown,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Intel => f.write_str("hardware KVM (Intel VT-x)"),
            Self::Amd => f.write_str("hardware KVM (AMD-V)"),
            Self::Pvm { native: true } => {
                f.write_str("PVM (software hypervisor, native guest mode)")
            }
            Self::Pvm { native: false } => {
                f.write_str("PVM (software hypervisor, PVM guests only)")
            }
            Self::Unknown => f.write_str("KVM (hypervisor module not recognized)"),
        }
    }
}

impl Kind {
    /// Kernel command-line arguments a Linux guest needs on this hypervisor
    /// (empty on hardware KVM). On PVM:
    /// - `noxsave`: the guest's FPU setup (`xrstor64`) ends the VM with an
    ///   emulation failure, and PVM reports XSAVE in CPUID whatever the VMM
    ///   sets, so only the kernel's own switch turns it off.
    /// - `no_int3_selftest` (a patch of twinbox's guest kernel; other kernels
    ///   ignore it): the alternatives INT3 self-test ends the VM the same way.
    /// - `clearcpuid=popcnt,smap`: `__bitmap_weight`, patched by the
    ///   alternatives to `popcnt`, failed to emulate 15 s into boot, and so
    ///   did `clac` (SMAP) in the exception entry code next; PVM reports both
    ///   in CPUID whatever the VMM sets, like XSAVE.
    /// - `twinbox_pvm_syscall` (a patch of twinbox's guest kernel): PVM's
    ///   native mode delivers a user-mode SYSCALL to MSR_LSTAR without
    ///   leaving user privilege, so the kernel completes the system call
    ///   from the page fault that follows.
    /// - `twinbox_no_fwait` (a patch of twinbox's guest kernel): FWAIT in
    ///   `fpu__drop()` ends the VM with an emulation failure at the exit of
    ///   every task that used the FPU.
    ///
    /// And for speed: PVM runs the guest kernel's code through an
    /// instruction emulator (about 1 M instructions/s here, KVM's
    /// `insn_emulation` counter), so each of these cut whole seconds in
    /// `twinbox run --profile` (2026-11-22):
    /// - `clearcpuid=erms,fsrm`: `rep movsb`/`stosb` copy byte by byte in
    ///   the emulator; without ERMS the kernel's memcpy uses `rep movsq`
    ///   (memcpy went from 9% of boot samples to 1.7%).
    /// - `noreplace-smp`: a 1-vCPU guest patches every `lock` prefix to a
    ///   no-op at boot, one `text_poke` (a page-table switch and TLB flush)
    ///   per site: 3 s.
    /// - `rodata=off`: making kernel text read-only walks and splits the
    ///   kernel's page tables: about 2 s. The price is the guest kernel's
    ///   own W^X protection; the boundary between the workload and the
    ///   host is the hypervisor, not the guest kernel.
    /// - `twinbox_lean_sysfs` (a patch of twinbox's guest kernel): no
    ///   /sys/kernel/slab and no per-module parameter directories (3.3 s and
    ///   1.5 s of initcalls).
    /// - `percpu_alloc=page`: the per-CPU area in 4 KiB pages instead of a
    ///   2 MiB unit that is zeroed at boot.
    ///
    /// The last two were measured together (with vsock off in the kernel):
    /// the kernel's part of a boot went from 23.7 s to 16.8 s
    /// (`twinbox bench boot`, medians of 3).
    ///
    /// Not `lapic=notscdeadline`, which PVM's own guides use: without a PIT
    /// the LAPIC timer cannot be calibrated then ("APIC timer disabled due to
    /// verification failure") and guest time stops.
    pub fn guest_cmdline(self) -> &'static str {
        match self {
            Self::Pvm { .. } => {
                "noxsave no_int3_selftest twinbox_pvm_syscall twinbox_no_fwait clearcpuid=popcnt,smap,erms,fsrm noreplace-smp rodata=off twinbox_lean_sysfs percpu_alloc=page"
            }
            _ => "",
        }
    }
}

/// Detects the hypervisor kind from the loaded kernel modules.
pub fn detect_kind() -> Kind {
    detect_kind_in(Path::new("/sys/module"))
}

fn detect_kind_in(modules: &Path) -> Kind {
    if modules.join("kvm_pvm").exists() {
        let native = std::fs::read_to_string(modules.join("kvm_pvm/parameters/pvm_native"))
            .map(|s| s.trim() == "Y" || s.trim() == "1")
            .unwrap_or(false);
        Kind::Pvm { native }
    } else if modules.join("kvm_intel").exists() {
        Kind::Intel
    } else if modules.join("kvm_amd").exists() {
        Kind::Amd
    } else {
        Kind::Unknown
    }
}

/// Whether this host is itself a virtual machine (the CPUID "hypervisor"
/// bit, leaf 1 ECX bit 31, as `/proc/cpuinfo` shows it), so that a guest
/// of ours is nested under two hypervisors.
pub fn host_is_virtual() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| has_hypervisor_flag(&c))
}

fn has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|l| l.strip_prefix("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "hypervisor"))
}

/// Errors of probing KVM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one (12).
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// KVM refuses to create a VM.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
}

/// What a probe of `/dev/kvm` found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The hypervisor kind.
    pub kind: Kind,
    /// KVM API version.
    pub api_version: i32,
    /// Whether the in-kernel irqchip (PIC, IOAPIC, LAPIC) is offered.
    pub irqchip: bool,
    /// Whether the split irqchip (LAPICs in KVM, the rest in the VMM) is
    /// offered; without it VMs get the whole irqchip in KVM.
    pub split_irqchip: bool,
    /// Whether the in-kernel PIT is offered.
    pub pit: bool,
    /// Most vCPUs per VM KVM recommends.
    pub max_vcpus: usize,
}

/// Opens `/dev/kvm`, checks the API version and creates (and drops) a VM.
pub fn probe() -> Result<Probe, Error> {
    let kvm = Kvm::new().map_err(Error::Open)?;
    let api_version = kvm.get_api_version();
    if api_version != 12 {
        return Err(Error::ApiVersion(api_version));
    }
    let vm = kvm.create_vm().map_err(Error::CreateVm)?;
    drop(vm);
    Ok(Probe {
        kind: detect_kind(),
        api_version,
        irqchip: kvm.check_extension(Cap::Irqchip),
        split_irqchip: kvm.check_extension(Cap::SplitIrqchip),
        pit: kvm.check_extension(Cap::Pit2),
        max_vcpus: kvm.get_nr_vcpus(),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_hypervisor_flag_is_read_from_cpuinfo() {
        assert!(has_hypervisor_flag(
            "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n"
        ));
        assert!(!has_hypervisor_flag(
            "flags\t\t: fpu vme svm npt\nbugs\t\t: hypervisor_like\n"
        ));
        assert!(!has_hypervisor_flag(""));
    }

    use super::*;

    #[test]
    fn kind_follows_the_loaded_module() -> std::io::Result<()> {
        let t = std::env::temp_dir().join(format!("twinbox-kind-{}", std::process::id()));
        std::fs::create_dir_all(t.join("kvm_intel"))?;
        assert_eq!(detect_kind_in(&t), Kind::Intel);
        std::fs::create_dir_all(t.join("kvm_pvm/parameters"))?;
        std::fs::write(t.join("kvm_pvm/parameters/pvm_native"), "Y\n")?;
        assert_eq!(detect_kind_in(&t), Kind::Pvm { native: true });
        std::fs::remove_dir_all(&t)?;
        Ok(())
    }
}
