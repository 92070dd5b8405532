//! A read-only disk image given to the guest as legacy persistent memory:
//! the file is mapped into guest physical memory above RAM and described by
//! an E820 entry of type 12, which Linux (`CONFIG_X86_PMEM_LEGACY`) turns
//! into `/dev/pmem0`.
//!
//! Why: an initramfs is unpacked by the guest kernel, file by file, at
//! every boot; under an emulating hypervisor that took about 10 s for a
//! 2 MB busybox image, and it grows with the image. A pmem disk needs no
//! device emulation and no unpacking: the guest reads only the blocks it
//! uses, straight from the host's page cache. The mapping is private, so
//! whatever the guest writes never reaches the file (and the root is
//! mounted read-only under an overlay anyway).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::arch::layout;

/// Errors of attaching a pmem image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be opened.
    #[error("opening the pmem image {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The image's size cannot be mapped.
    #[error("pmem image {path}: {size} bytes: {why}")]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Why it cannot work.
        why: String,
    },
}

/// The image's size must be a multiple of this (the kernel's memory
/// sections and huge pages; the image builder pads to it).
pub const ALIGN: u64 = 2 << 20;
/// Largest image accepted.
pub const MAX_SIZE: u64 = 64 << 30;
/// Guest physical addresses of pmem start on this boundary.
const BASE_ALIGN: u64 = 1 << 30;

/// An opened pmem image and where it goes in the guest.
#[derive(Debug)]
pub struct Pmem {
    /// The file, opened read-only.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    /// Guest physical address of its first byte.
    pub base: u64,
}

/// Where pmem goes for a guest with `ram` bytes of RAM: the first 1 GiB
/// boundary above both RAM and the MMIO gap.
pub fn base_for(ram: u64) -> u64 {
    let top = layout::ram_regions(ram)
        .last()
        .map_or(0, |(start, len)| start + len)
        .max(layout::MMIO_GAP_END);
    top.div_ceil(BASE_ALIGN) * BASE_ALIGN
}

/// Opens and checks the image at `path` for a guest with `ram` bytes of RAM.
pub fn open(path: &Path, ram: u64) -> Result<Pmem, Error> {
    let file = File::open(path).map_err(|e| Error::Open(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::Open(path.into(), e))?
        .len();
    let bad = |why: &str| Error::Size {
        path: path.into(),
        size,
        why: why.into(),
    };
    if size == 0 {
        return Err(bad("empty"));
    }
    if size % ALIGN != 0 {
        return Err(bad("not a multiple of 2 MiB"));
    }
    if size > MAX_SIZE {
        return Err(bad("above the maximum of 64 GiB"));
    }
    Ok(Pmem {
        file,
        size,
        base: base_for(ram),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmem_sits_above_ram_and_the_gap() {
        assert_eq!(base_for(128 << 20), 4 << 30);
        // 4 GiB of RAM: 3.25 GiB below the gap, 0.75 GiB from 4 GiB up.
        assert_eq!(base_for(4 << 30), 5 << 30);
    }

    #[test]
    fn sizes_that_cannot_be_mapped_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("img");
        for (len, ok) in [(0, false), (4096, false), (ALIGN, true), (3 * ALIGN, true)] {
            std::fs::File::create(&p)?.set_len(len)?;
            assert_eq!(open(&p, 128 << 20).is_ok(), ok, "{len} bytes");
        }
        let missing = open(&dir.path().join("none"), 128 << 20);
        assert!(matches!(missing, Err(Error::Open(..))), "{missing:?}");
        Ok(())
    }
}
