//! Guest RAM: anonymous `MAP_NORESERVE` mappings laid out around the MMIO
//! gap, registered with KVM as one memory slot per region. Pages are only
//! backed by host memory when the guest touches them. A pmem image
//! ([`crate::pmem`]) is one more region: its file mapped private; the
//! mailbox ([`crate::mailbox`]) one more, anonymous.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::arch::layout;
use crate::pmem::Pmem;

/// Errors of setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host would not map the memory.
    #[error("mapping {0} bytes of guest memory")]
    Map(u64),
    /// The pmem image could not be mapped.
    #[error("mapping the pmem image ({0} bytes)")]
    MapPmem(u64, #[source] std::io::Error),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION")]
    Register(#[source] kvm_ioctls::Error),
}

/// Maps `size` bytes of guest RAM (and `pmem`, and a mailbox of
/// [`crate::mailbox::SIZE`] at `mailbox`, if any) and registers it with
/// `vm`.
pub fn create(
    vm: &VmFd,
    size: u64,
    pmem: Option<&Pmem>,
    mailbox: Option<u64>,
) -> Result<GuestMemoryMmap, Error> {
    let ram = layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| GuestRegionMmap::from_range(GuestAddress(start), len as usize, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::Map(size))?;
    assemble(vm, ram, pmem, mailbox)
}

/// Guest memory of `ram` (RAM regions, new or restored), `pmem` and the
/// mailbox, registered with `vm`.
pub fn assemble(
    vm: &VmFd,
    mut regions: Vec<GuestRegionMmap>,
    pmem: Option<&Pmem>,
    mailbox: Option<u64>,
) -> Result<GuestMemoryMmap, Error> {
    if let Some(p) = pmem {
        let io = |e| Error::MapPmem(p.size, e);
        let file = p.file.try_clone().map_err(io)?;
        // Private: the guest's writes go to copies of the pages, never to
        // the file; PROT_WRITE on a read-only fd is allowed for that.
        let mapping = MmapRegionBuilder::new(p.size as usize)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(p.base))
            .ok_or_else(|| io(std::io::Error::other("address overflow")))?;
        regions.push(region);
    }
    if let Some(base) = mailbox {
        let len = crate::mailbox::SIZE;
        let region = GuestRegionMmap::from_range(GuestAddress(base), len as usize, None)
            .map_err(|_| Error::Map(len))?;
        regions.push(region);
    }
    let total = regions.iter().map(|r| r.len()).sum();
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|_| Error::Map(total))?;
    register(vm, &mem)?;
    Ok(mem)
}

/// Registers every region of `mem` with `vm`, one KVM slot each; `mem`
/// must outlive the VM and its vCPUs.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| Error::Map(region.len()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size`
        // bytes owned by `mem`, which outlives every use of the VM: the VM
        // (and its vCPUs) are dropped before `mem` in `Vm::run`, and the
        // callers of `register` promise the same.
        unsafe { vm.set_user_memory_region(r) }.map_err(Error::Register)?;
    }
    Ok(())
}
