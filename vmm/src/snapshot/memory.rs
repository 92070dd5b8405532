//! Guest memory into a file and back: the memory part of a snapshot.
//!
//! [`save`] writes every region of guest RAM into one file, back to back,
//! skipping pages that are all zero, which stay holes (a booted guest
//! touches a small part of its memory, so the file takes little disk).
//! [`map`] makes a new VM's RAM of that file, mapped private: nothing is
//! read up front, a page is read from the file (or the page cache shared
//! by every VM restored from it) when the guest first touches it, and the
//! guest's writes go to private copies, never to the file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::Error;
use crate::memory;

/// The unit of the zero-page check.
const PAGE: usize = 4096;
/// How much is copied out of guest memory at a time.
const CHUNK: usize = 2 << 20;

/// Where each region of guest RAM is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (guest address, length, file offset) per region, in order.
    pub regions: Vec<(u64, u64, u64)>,
}

/// What [`save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Where the regions are.
    pub layout: Layout,
    /// Pages written (not all zero).
    pub pages: u64,
    /// The file's length (holes included).
    pub len: u64,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
}

/// Writes `mem` into `out` (empty), zero pages as holes.
pub fn save(mem: &GuestMemoryMmap, out: &File) -> Result<Saved, Error> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut pages = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let (start, len) = (region.start_addr().0, region.len());
        regions.push((start, len, offset));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(start + done))
                .map_err(|e| {
                    Error::Io("reading guest memory", std::io::Error::other(e.to_string()))
                })?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = offset + done + (i * PAGE) as u64;
                    out.write_all_at(page, at)
                        .map_err(io("writing the memory file"))?;
                    pages += 1;
                }
            }
            done += n as u64;
        }
        offset += len;
    }
    out.set_len(offset).map_err(io("sizing the memory file"))?;
    Ok(Saved {
        layout: Layout { regions },
        pages,
        len: offset,
    })
}

/// Guest RAM for `vm` from `file` as [`save`] laid it out, mapped private,
/// and registered with KVM.
pub fn map(vm: &VmFd, file: &File, layout: &Layout) -> Result<GuestMemoryMmap, Error> {
    let size = file
        .metadata()
        .map_err(io("reading the memory file"))?
        .len();
    let mut regions = Vec::new();
    for &(start, len, offset) in &layout.regions {
        let end = offset.saturating_add(len);
        if end > size {
            return Err(Error::MemoryFileShort {
                need: end,
                have: size,
            });
        }
        let f = file.try_clone().map_err(io("reopening the memory file"))?;
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(f, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| {
                Error::Io(
                    "mapping the memory file",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Io(
            "mapping the memory file",
            std::io::Error::other("address overflow"),
        ))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| Error::Io("guest memory", std::io::Error::other(e.to_string())))?;
    memory::register(vm, &mem).map_err(Error::Memory)?;
    Ok(mem)
}
