//! A vCPU's state saved in one VM and restored into a new one whose memory
//! is the first one's saved to a file and mapped private: the guest goes
//! on where it stopped, with its registers, and its writes stay its own. Runs on whatever /dev/kvm is (PVM here; nested SVM in
//! the hardware-KVM test of tests/vm_linux.rs).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use kvm_bindings::{kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use twinbox_vmm::snapshot::memory::{self, Layout};
use twinbox_vmm::snapshot::vcpu::{settle, VcpuState};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SIZE: usize = 2 << 20;
const CODE_AT: u64 = 0x1000;
/// Where the restored guest writes, to show its writes stay its own.
const DATA_AT: u64 = 0x2000;
/// Real mode: bl = 41; out 0x10, 1; bl += 1; [0x2000] = bl; out 0x11, bl;
/// hlt.
const CODE: [u8; 17] = [
    0xb3, 41, 0xb0, 1, 0xe6, 0x10, 0xfe, 0xc3, 0x88, 0x1e, 0x00, 0x20, 0x88, 0xd8, 0xe6, 0x11, 0xf4,
];

/// A VM with one vCPU, its RAM new (`from` None) or mapped from a saved
/// memory file.
fn machine(
    kvm: &Kvm,
    from: Option<(&File, &Layout)>,
) -> Result<(VmFd, GuestMemoryMmap, VcpuFd), Box<dyn std::error::Error>> {
    let vm = kvm.create_vm()?;
    let mem = match from {
        Some((file, layout)) => memory::map(&vm, file, layout)?,
        None => {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SIZE)])?;
            twinbox_vmm::memory::register(&vm, &mem)?;
            mem
        }
    };
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
    let (vm, mem, mut vcpu) = machine(&kvm, None)?;
    mem.write_slice(&CODE, GuestAddress(CODE_AT))?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
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
    // Through the byte format, as a snapshot file would carry it, and the
    // memory through a file, zero pages left as holes.
    let state = VcpuState::decode(&saved.encode())?;
    let file = tempfile::tempfile()?;
    let written = memory::save(&mem, &file, &[(0, SIZE as u64)])?;
    assert_eq!(written.len, SIZE as u64);
    assert_eq!(written.pages, 1, "only the code page is not zero");
    assert!(
        file.metadata()?.blocks() * 512 <= 64 * 1024,
        "{} blocks for one page",
        file.metadata()?.blocks()
    );
    drop(vcpu);
    drop(vm);
    drop(mem);

    let (_vm2, mem2, mut vcpu2) = machine(&kvm, Some((&file, &written.layout)))?;
    state.restore(&vcpu2)?;
    match vcpu2.run()? {
        VcpuExit::IoOut(0x11, [42]) => {}
        other => return Err(format!("after restore: {other:?}").into()),
    }
    assert_eq!(VcpuState::capture(&vcpu2, &indices)?.regs.rbx & 0xff, 42);
    // The guest's write is its own: in its memory, not in the file.
    let mut byte = [0u8; 1];
    mem2.read_slice(&mut byte, GuestAddress(DATA_AT))?;
    assert_eq!(byte, [42]);
    file.read_exact_at(&mut byte, DATA_AT)?;
    assert_eq!(byte, [0], "the guest's write reached the memory file");
    Ok(())
}

#[test]
fn a_memory_file_shorter_than_its_layout_is_refused() -> TestResult {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    let file = tempfile::tempfile()?;
    file.set_len(4096)?;
    let layout = Layout {
        regions: vec![(0, SIZE as u64, 0)],
    };
    let e = memory::map(&vm, &file, &layout)
        .err()
        .ok_or("a short file was mapped")?;
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    Ok(())
}
