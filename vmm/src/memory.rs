//! Guest RAM: anonymous `MAP_NORESERVE` mappings laid out around the MMIO
//! gap, registered with KVM as one memory slot per region. Pages are only
//! backed by host memory when the guest touches them.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::layout;

/// Errors of setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host would not map the memory.
    #[error("mapping {0} bytes of guest memory")]
    Map(u64),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION")]
    Register(#[source] kvm_ioctls::Error),
}

/// Maps `size` bytes of guest RAM and registers it with `vm`.
pub fn create(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|_| Error::Map(size))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| Error::Map(size))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size`
        // bytes owned by `mem`, which outlives every use of the VM: the VM
        // (and its vCPUs) are dropped before `mem` in `Vm::run`.
        unsafe { vm.set_user_memory_region(r) }.map_err(Error::Register)?;
    }
    Ok(mem)
}
