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
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
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

/// Writes the guest RAM `regions` (address, length) of `mem` into `out`
/// (empty), back to back, zero pages as holes. Pages the guest never
/// touched are not even read: `/proc/self/pagemap` says they have no page,
/// in RAM or swap, so they are zero.
pub fn save(mem: &GuestMemoryMmap, out: &File, ram: &[(u64, u64)]) -> Result<Saved, Error> {
    let pagemap = File::open("/proc/self/pagemap").ok();
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut pages = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut flags = vec![0u8; CHUNK / PAGE * 8];
    for &(start, len) in ram {
        let host = mem
            .get_host_address(GuestAddress(start))
            .map_err(|e| Error::Io("reading guest memory", std::io::Error::other(e.to_string())))?
            as u64;
        regions.push((start, len, offset));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let npages = n.div_ceil(PAGE);
            // Which pages exist (bit 63: in RAM, bit 62: in swap).
            let exists: Vec<bool> = match &pagemap {
                Some(pm) => {
                    let at = (host + done) / PAGE as u64 * 8;
                    match pm.read_exact_at(&mut flags[..npages * 8], at) {
                        Ok(()) => flags[..npages * 8]
                            .chunks_exact(8)
                            .map(|c| c[7] & 0xc0 != 0)
                            .collect(),
                        Err(_) => vec![true; npages],
                    }
                }
                None => vec![true; npages],
            };
            if !exists.iter().any(|&e| e) {
                done += n as u64;
                continue;
            }
            mem.read_slice(&mut buf[..n], GuestAddress(start + done))
                .map_err(|e| {
                    Error::Io("reading guest memory", std::io::Error::other(e.to_string()))
                })?;
            // Runs of pages that hold something, written one run at a time.
            let mut run: Option<usize> = None;
            for i in 0..=npages {
                let keep = i < npages
                    && exists[i]
                    && buf[i * PAGE..((i + 1) * PAGE).min(n)]
                        .iter()
                        .any(|&b| b != 0);
                match (keep, run) {
                    (true, None) => run = Some(i),
                    (false, Some(first)) => {
                        let bytes = &buf[first * PAGE..(i * PAGE).min(n)];
                        let at = offset + done + (first * PAGE) as u64;
                        out.write_all_at(bytes, at)
                            .map_err(io("writing the memory file"))?;
                        pages += (i - first) as u64;
                        run = None;
                    }
                    _ => {}
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
    let regions = regions(file, layout)?;
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| Error::Io("guest memory", std::io::Error::other(e.to_string())))?;
    memory::register(vm, &mem).map_err(Error::Memory)?;
    Ok(mem)
}

/// The RAM regions of `file` as [`save`] laid it out, each mapped private
/// (nothing read up front; the guest's writes stay its own).
pub fn regions(file: &File, layout: &Layout) -> Result<Vec<GuestRegionMmap>, Error> {
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
    Ok(regions)
}
