//! A vCPU's state saved in one VM and restored into a new one whose memory
//! is the first one's saved to a file and mapped private: the guest goes
//! on where it stopped, with its registers, and its writes stay its own.
//! Then a whole machine (the null guest stopped at its ready mark, saved
//! with `snapshot::dir`) restored by `vm::run`, and snapshots that are cut,
//! changed, linked, shared or made for another machine refused. Runs on
//! whatever /dev/kvm is (PVM here; nested SVM in the hardware-KVM test of
//! tests/vm_linux.rs).

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

/// The null guest that stops at its ready mark, as a config.
fn ready_guest(dir: &std::path::Path) -> Result<twinbox_vmm::VmConfig, Box<dyn std::error::Error>> {
    let kernel = dir.join("ready-guest");
    std::fs::write(
        &kernel,
        twinbox_vmm::null_guest::elf(twinbox_vmm::null_guest::Program::ReadyThenExit),
    )?;
    let mut c = twinbox_vmm::VmConfig::new(kernel);
    c.memory = 32 << 20;
    c.timeout = Some(std::time::Duration::from_secs(20));
    Ok(c)
}

const KEY: &str = "the null guest, 32 MiB, 1 vCPU";

/// Boots the ready guest to its mark and saves it in `dir/snap`.
fn take(
    c: &twinbox_vmm::VmConfig,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    use twinbox_vmm::config::Snapshot;
    let mut take = c.clone();
    take.snapshot = Snapshot::Take;
    let o = twinbox_vmm::vm::run(&take, Box::new(std::io::sink()))?;
    assert_eq!(
        o.reason,
        twinbox_vmm::StopReason::Ready,
        "{}",
        o.console_tail
    );
    let mut captured = o.captured.ok_or("no machine came back")?;
    assert_eq!(captured.state.vcpus.len(), 1);
    let snap = dir.join("snap");
    std::fs::create_dir(&snap)?;
    let saved = twinbox_vmm::snapshot::dir::save(&snap, KEY, &mut captured)?;
    assert!(saved.pages > 0 && saved.disk_bytes > 0, "{saved:?}");
    Ok(snap)
}

fn restore(
    c: &twinbox_vmm::VmConfig,
    snap: &std::path::Path,
    key: &str,
) -> Result<twinbox_vmm::Outcome, twinbox_vmm::vm::Error> {
    let mut r = c.clone();
    r.snapshot = twinbox_vmm::config::Snapshot::Restore {
        dir: snap.to_path_buf(),
        key: key.into(),
    };
    twinbox_vmm::vm::run(&r, Box::new(std::io::sink()))
}

#[test]
fn a_machine_saved_at_its_ready_mark_goes_on_from_there_each_time_it_is_restored() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let c = ready_guest(dir.path())?;
    let snap = take(&c, dir.path())?;
    for name in ["state", "memory"] {
        let mode = std::fs::metadata(snap.join(name))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is not private");
    }
    // EBX was 40 at the mark; the restored guest adds 2 and exits with it.
    for _ in 0..2 {
        let o = restore(&c, &snap, KEY)?;
        assert_eq!(
            o.reason,
            twinbox_vmm::StopReason::Exited(42),
            "{}",
            o.console_tail
        );
        // The VMM is up and the guest runs within a few ms of the start.
        assert!(o.timings.vcpus_started < std::time::Duration::from_secs(1));
        assert!(
            o.marks.iter().all(|m| m.id != 1),
            "the restored guest booted again"
        );
    }
    Ok(())
}

#[test]
fn cut_changed_linked_shared_and_foreign_snapshots_are_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let c = ready_guest(dir.path())?;
    let good = take(&c, dir.path())?;
    let case = |name: &str,
                spoil: &dyn Fn(&std::path::Path) -> std::io::Result<()>,
                c: &twinbox_vmm::VmConfig,
                key: &str|
     -> TestResult {
        let snap = dir.path().join(name);
        std::fs::create_dir(&snap)?;
        for f in ["state", "memory"] {
            std::fs::copy(good.join(f), snap.join(f))?;
            std::fs::set_permissions(snap.join(f), std::fs::Permissions::from_mode(0o600))?;
        }
        spoil(&snap)?;
        match restore(c, &snap, key) {
            Err(twinbox_vmm::vm::Error::Snapshot(e)) => {
                eprintln!("{name}: refused: {e}");
                Ok(())
            }
            Err(e) => Err(format!("{name}: refused, but not as a snapshot error: {e}").into()),
            Ok(o) => Err(format!("{name}: restored ({:?})", o.reason).into()),
        }
    };
    let state_len = std::fs::metadata(good.join("state"))?.len();
    case(
        "cut state",
        &|s| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("state"))?
                .set_len(state_len / 2)
        },
        &c,
        KEY,
    )?;
    case(
        "flipped state",
        &|s| {
            let mut b = std::fs::read(s.join("state"))?;
            let at = b.len() / 2;
            b[at] ^= 0x5a;
            std::fs::write(s.join("state"), b)
        },
        &c,
        KEY,
    )?;
    case(
        "symlinked state",
        &|s| {
            std::fs::rename(s.join("state"), s.join("real"))?;
            std::os::unix::fs::symlink(s.join("real"), s.join("state"))
        },
        &c,
        KEY,
    )?;
    case(
        "world-writable memory",
        &|s| std::fs::set_permissions(s.join("memory"), std::fs::Permissions::from_mode(0o666)),
        &c,
        KEY,
    )?;
    case(
        "cut memory",
        &|s| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("memory"))?
                .set_len(4096)
        },
        &c,
        KEY,
    )?;
    case("another key", &|_| Ok(()), &c, "another kernel")?;
    let mut more = c.clone();
    more.memory = 64 << 20;
    case("another memory size", &|_| Ok(()), &more, KEY)?;
    let mut two = c.clone();
    two.vcpus = 2;
    case("another vCPU count", &|_| Ok(()), &two, KEY)?;
    // And the good one still restores.
    assert_eq!(
        restore(&c, &good, KEY)?.reason,
        twinbox_vmm::StopReason::Exited(42)
    );
    Ok(())
}

#[test]
fn a_vsock_device_is_saved_with_its_machine_and_must_be_there_to_restore() -> TestResult {
    use twinbox_vmm::config::VsockConfig;
    let dir = tempfile::tempdir()?;
    let plain = ready_guest(dir.path())?;
    let mut with = plain.clone();
    with.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("vm.sock"),
    });
    let snap = take(&with, dir.path())?;
    assert!(
        !dir.path().join("vm.sock").exists(),
        "the socket outlived the VM"
    );
    let o = restore(&with, &snap, KEY)?;
    assert_eq!(
        o.reason,
        twinbox_vmm::StopReason::Exited(42),
        "{}",
        o.console_tail
    );
    // A snapshot with vsock for a config without, and the other way round.
    match restore(&plain, &snap, KEY) {
        Err(twinbox_vmm::vm::Error::Snapshot(_)) => {}
        other => return Err(format!("restored without vsock: {other:?}").into()),
    }
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    let plain_snap = take(&plain, &other)?;
    match restore(&with, &plain_snap, KEY) {
        Err(twinbox_vmm::vm::Error::Snapshot(_)) => Ok(()),
        other => Err(format!("restored with vsock: {other:?}").into()),
    }
}
