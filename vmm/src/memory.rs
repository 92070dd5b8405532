//! Guest RAM: anonymous `MAP_NORESERVE` mappings laid out around the MMIO
//! gap, registered with KVM as one memory slot per region. Pages are only
//! backed by host memory when the guest touches them. A pmem image
//! ([`crate::pmem`]) is one more region: its file mapped private; the
//! mailbox ([`crate::mailbox`]) one more, anonymous.
//!
//! A VM with shared directories ([`crate::config::VmConfig::shares`])
//! gets its RAM from one memfd instead ([`create_shared`]), each region
//! at its own offset, mapped `MAP_SHARED`: the file servers map the same
//! pages from the fd (vhost-user `SET_MEM_TABLE`), to reach the queues
//! and buffers the guest gives them.

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
    /// The memfd behind shared guest RAM could not be made.
    #[error("a memfd of {0} bytes for shared guest memory")]
    Memfd(u64, #[source] std::io::Error),
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

/// [`create`], but RAM is one memfd mapped shared (`MAP_SHARED |
/// MAP_NORESERVE`), region after region at increasing offsets, so that
/// another process given the fd can map it (each region's
/// [`GuestRegionMmap::file_offset`] says where). Pages are still only
/// backed when touched. The root disk and the mailbox stay as in
/// [`create`]: no file server needs them.
pub fn create_shared(
    vm: &VmFd,
    size: u64,
    pmem: Option<&Pmem>,
    mailbox: Option<u64>,
) -> Result<GuestMemoryMmap, Error> {
    assemble(vm, shared_ram(size)?, pmem, mailbox)
}

/// The RAM regions of a guest of `size` bytes, one memfd mapped shared.
pub fn shared_ram(size: u64) -> Result<Vec<GuestRegionMmap>, Error> {
    let file = memfd(size)?;
    let mut offset = 0u64;
    let mut ram = Vec::new();
    for (start, len) in layout::ram_regions(size) {
        let at = FileOffset::new(file.try_clone().map_err(|e| Error::Memfd(size, e))?, offset);
        let region = GuestRegionMmap::from_range(GuestAddress(start), len as usize, Some(at))
            .map_err(|_| Error::Map(size))?;
        ram.push(region);
        offset += len;
    }
    Ok(ram)
}

/// A memfd of `size` bytes, close-on-exec, its size sealed.
fn memfd(size: u64) -> Result<std::fs::File, Error> {
    use std::os::fd::FromRawFd;
    let err = |e| Error::Memfd(size, e);
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no
    // other precondition and returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"twinbox-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size).map_err(err)?;
    // Neither this process nor a file server can change its size under
    // the guest's feet (a shrunk memfd would SIGBUS the VMM).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our own memfd, an int argument.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    #[test]
    fn shared_ram_is_one_memfd_that_another_mapping_sees() -> Result<(), Box<dyn std::error::Error>>
    {
        // Above the MMIO gap: two regions, the second at the first's end
        // in the file.
        let size = layout::MMIO_GAP_START + (64 << 20);
        let ram = shared_ram(size)?;
        let offsets: Vec<(u64, u64)> = ram
            .iter()
            .map(|r| {
                (
                    r.start_addr().0,
                    r.file_offset().map(|f| f.start()).unwrap_or(u64::MAX),
                )
            })
            .collect();
        assert_eq!(
            offsets,
            vec![(0, 0), (layout::MMIO_GAP_END, layout::MMIO_GAP_START)]
        );
        let file = ram[1].file_offset().ok_or("no file")?.file().try_clone()?;
        let mem = GuestMemoryMmap::from_regions(ram)?;
        mem.write_slice(b"guest", GuestAddress(0x1000))?;
        mem.write_slice(b"high", GuestAddress(layout::MMIO_GAP_END + 8))?;
        let mut b = [0u8; 5];
        file.read_exact_at(&mut b, 0x1000)?;
        assert_eq!(&b, b"guest");
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, layout::MMIO_GAP_START + 8)?;
        assert_eq!(&b, b"high");
        // And the other way round: a write to the file is the guest's.
        file.write_all_at(b"server", 0x2000)?;
        let mut b = [0u8; 6];
        mem.read_slice(&mut b, GuestAddress(0x2000))?;
        assert_eq!(&b, b"server");
        // Its size is sealed.
        assert!(file.set_len(4096).is_err());
        Ok(())
    }
}
