//! One vCPU: its boot state, and the thread that runs it.
//!
//! The run loop hands port I/O to [`Devices`] and turns every other way a
//! vCPU can stop into an [`Event`] for the VMM thread. It ends when the
//! VMM sets the shared stop flag and kicks the thread with a signal (which
//! makes `KVM_RUN` return `EINTR`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::{cpuid, msr, regs};
use crate::devices::Devices;
use crate::event::Event;
use crate::profile::Sampler;

/// Errors of setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM call failed.
    #[error("vCPU {index}: {op}")]
    Kvm {
        /// The vCPU.
        index: u32,
        /// The ioctl.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM set fewer MSRs than asked.
    #[error("vCPU {index}: KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        /// The vCPU.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were asked.
        wanted: usize,
    },
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

/// Creates vCPU `index` of `count` and sets its boot state.
pub fn create(
    vm: &VmFd,
    supported: &CpuId,
    index: u32,
    count: u32,
    entry: u64,
) -> Result<VcpuFd, Error> {
    let kvm = |op| move |source| Error::Kvm { index, op, source };
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm("KVM_CREATE_VCPU"))?;
    let mut c = supported.clone();
    cpuid::fix_for_vcpu(&mut c, index, count);
    vcpu.set_cpuid2(&c).map_err(kvm("KVM_SET_CPUID2"))?;
    let msrs = msr::boot_msrs().map_err(|_| Error::Msrs {
        index,
        set: 0,
        wanted: msr::BOOT_MSRS.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != msr::BOOT_MSRS.len() {
        return Err(Error::Msrs {
            index,
            set,
            wanted: msr::BOOT_MSRS.len(),
        });
    }
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&regs::long_mode_sregs(sregs))
        .map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs::boot_regs(entry))
        .map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(kvm("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    Ok(vcpu)
}

/// What KVM says about an internal error: its sub-code, data words, and
/// where the guest was (to resolve against the kernel's System.map).
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the union member KVM filled in; it is plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..n]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    let rip = vcpu
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|_| "?".into());
    format!(
        "KVM_EXIT_INTERNAL_ERROR (suberror {}, data [{}]) at rip {rip}",
        internal.suberror,
        data.join(", ")
    )
}

/// Creates vCPU `index` of `count` for a restore: its CPUID as at boot,
/// then `state` (a snapshot's).
pub fn create_restored(
    vm: &VmFd,
    supported: &CpuId,
    index: u32,
    count: u32,
    state: &crate::snapshot::vcpu::VcpuState,
) -> Result<VcpuFd, crate::snapshot::Error> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| crate::snapshot::Error::Kvm("KVM_CREATE_VCPU", e))?;
    let mut c = supported.clone();
    cpuid::fix_for_vcpu(&mut c, index, count);
    vcpu.set_cpuid2(&c)
        .map_err(|e| crate::snapshot::Error::Kvm("KVM_SET_CPUID2", e))?;
    state.restore(&vcpu)?;
    Ok(vcpu)
}

/// Runs `vcpu` until `stop` is set (and the thread kicked) or the vCPU
/// stops on its own, under the `seccomp` filter if given; what stopped
/// it goes to `events`. Gives the vCPU back
/// (a snapshot reads its state after every vCPU has stopped).
pub(crate) fn run(
    mut vcpu: VcpuFd,
    index: u32,
    devices: Arc<Devices>,
    stop: Arc<AtomicBool>,
    events: Sender<Event>,
    seccomp: Option<crate::seccomp::Thread>,
    sampler: Option<Arc<Sampler>>,
) -> VcpuFd {
    // The guest's input is only ever handled under the filter.
    if let Some(filter) = seccomp {
        if let Err(e) = crate::seccomp::install(filter) {
            let cause = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_default();
            let _ = events.send(Event::Failed(index, format!("{e}: {cause}")));
            return vcpu;
        }
    }
    while !stop.load(Ordering::Acquire) {
        let event = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if devices.write(port, data) {
                    // Stopped for a snapshot: the VMM thread was told.
                    break;
                }
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                devices.read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                devices.mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => devices
                .mmio_write(addr, data)
                .err()
                .map(|e| Event::Failed(index, e)),
            // Every route is edge-triggered, so no EOI needs forwarding.
            Ok(VcpuExit::IoapicEoi(_)) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(VcpuExit::Hlt) => Some(Event::Halted(index)),
            Ok(VcpuExit::Shutdown) => Some(Event::Shutdown(index)),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(Event::SystemEvent(index, kind)),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(Event::Failed(
                index,
                format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"),
            )),
            Ok(VcpuExit::InternalError) => Some(Event::Failed(index, internal_error(&mut vcpu))),
            Ok(other) => Some(Event::Failed(index, format!("unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(Event::Failed(index, format!("KVM_RUN: {e}"))),
        };
        if let Some(e) = event {
            let _ = events.send(e);
            break;
        }
        if let Some(s) = &sampler {
            if s.take_due(index) {
                if let Ok(r) = vcpu.get_regs() {
                    s.record(index, r.rip);
                }
            }
        }
    }
    vcpu
}
