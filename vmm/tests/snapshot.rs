//! A vCPU's state saved in one VM and restored into a new one, with the
//! guest's memory copied over: the guest goes on where it stopped, with
//! its registers. Runs on whatever /dev/kvm is (PVM here; nested SVM in
//! the hardware-KVM test of tests/vm_linux.rs).

use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use twinbox_vmm::snapshot::vcpu::{settle, VcpuState};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SIZE: usize = 2 << 20;
const CODE_AT: u64 = 0x1000;
/// Real mode: bl = 41; out 0x10, 1; bl += 1; out 0x11, bl; hlt.
const CODE: [u8; 13] = [
    0xb3, 41, 0xb0, 1, 0xe6, 0x10, 0xfe, 0xc3, 0x88, 0xd8, 0xe6, 0x11, 0xf4,
];

fn machine(kvm: &Kvm) -> Result<(VmFd, GuestMemoryMmap, VcpuFd), Box<dyn std::error::Error>> {
    let vm = kvm.create_vm()?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SIZE)])?;
    let host = mem
        .iter()
        .next()
        .ok_or("no memory region")?
        .get_host_address(MemoryRegionAddress(0))? as u64;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: SIZE as u64,
        userspace_addr: host,
        flags: 0,
    };
    // SAFETY: the region is `mem`'s one mapping, which outlives the VM in
    // every caller (both are returned together, the VM dropped first).
    unsafe { vm.set_user_memory_region(region)? };
    vm.set_tss_address(0xfffb_d000)?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    vm.enable_cap(&cap)?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?)?;
    Ok((vm, mem, vcpu))
}

#[test]
fn a_vcpu_restored_in_a_new_vm_goes_on_where_it_stopped() -> TestResult {
    let kvm = Kvm::new()?;
    let indices = kvm.get_msr_index_list()?.as_slice().to_vec();
    let (vm, mem, mut vcpu) = machine(&kvm)?;
    mem.write_slice(&CODE, GuestAddress(CODE_AT))?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    match vcpu.run()? {
        VcpuExit::IoOut(0x10, [1]) => {}
        other => return Err(format!("first exit: {other:?}").into()),
    }
    settle(&mut vcpu)?;
    let saved = VcpuState::capture(&vcpu, &indices)?;
    assert_eq!(saved.regs.rbx & 0xff, 41);
    assert!(!saved.msrs.is_empty(), "no MSR could be read");
    // Through the byte format, as a snapshot file would carry it.
    let state = VcpuState::decode(&saved.encode())?;
    let mut image = vec![0u8; SIZE];
    mem.read_slice(&mut image, GuestAddress(0))?;
    drop(vcpu);
    drop(vm);

    let (_vm2, mem2, mut vcpu2) = machine(&kvm)?;
    mem2.write_slice(&image, GuestAddress(0))?;
    state.restore(&vcpu2)?;
    match vcpu2.run()? {
        VcpuExit::IoOut(0x11, [42]) => {}
        other => return Err(format!("after restore: {other:?}").into()),
    }
    assert_eq!(VcpuState::capture(&vcpu2, &indices)?.regs.rbx & 0xff, 42);
    Ok(())
}
