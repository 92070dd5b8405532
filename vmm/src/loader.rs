//! Puts the kernel, initrd and command line into guest memory.
//!
//! A kernel is an ELF (Linux's `vmlinux`, or any 64-bit ELF such as our null
//! guest: entered at `e_entry`) or a bzImage (entered at the 64-bit entry
//! point, 0x200 past the protected-mode code). Anything else, or a file that
//! is cut short or points outside guest memory, is an error, never a crash.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, MMIO_GAP_START};

/// Errors of loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("{0:?} is not a kernel: neither an ELF file nor a bzImage")]
    Format(PathBuf),
    /// linux-loader refused the kernel.
    #[error("loading kernel {path:?}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        source: linux_loader::loader::Error,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("{0:?} has no 64-bit entry point (XLF_KERNEL_64)")]
    Not64Bit(PathBuf),
    /// The initrd does not fit in low memory above the kernel.
    #[error("initrd {path:?} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The initrd could not be copied into guest memory.
    #[error("reading initrd {0:?} into guest memory")]
    Initrd(PathBuf),
    /// The command line is not acceptable to the kernel.
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// Where the kernel landed.
#[derive(Debug)]
pub struct Loaded {
    /// Entry point (64-bit).
    pub entry: u64,
    /// The bzImage setup header, for the zero page.
    pub header: Option<setup_header>,
    /// First byte after the kernel.
    pub end: u64,
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the kernel at `path`.
pub fn kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<Loaded, Error> {
    let mut f = open(path)?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut f, &mut head).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let kerr = |source| Error::Kernel {
        path: path.to_path_buf(),
        source,
    };
    if n >= 4 && head[..4] == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(kerr)?;
        Ok(Loaded {
            entry: r.kernel_load.0,
            header: None,
            end: r.kernel_end,
        })
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(kerr)?;
        let header = r
            .setup_header
            .ok_or_else(|| Error::Format(path.to_path_buf()))?;
        const XLF_KERNEL_64: u16 = 1;
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(Error::Not64Bit(path.to_path_buf()));
        }
        Ok(Loaded {
            entry: r.kernel_load.0 + 0x200,
            header: Some(header),
            end: r.kernel_end,
        })
    } else {
        Err(Error::Format(path.to_path_buf()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(n)
}

/// Alignment of each initrd part.
const INITRD_PART_ALIGN: u64 = 512;

/// Loads the initrd parts back to back at the top of low memory
/// (page-aligned, below the MMIO gap and above the kernel); returns
/// `(address, total size)`.
pub fn initrd(
    mem: &GuestMemoryMmap,
    parts: &[PathBuf],
    ram_low_end: u64,
    kernel_end: u64,
) -> Result<(u64, u64), Error> {
    let mut files = Vec::with_capacity(parts.len());
    let mut total: u64 = 0;
    for path in parts {
        let f = open(path)?;
        let size = f
            .metadata()
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        total = total.saturating_add(size.div_ceil(INITRD_PART_ALIGN) * INITRD_PART_ALIGN);
        files.push((path, f, size));
    }
    let too_big = || Error::InitrdTooBig {
        path: parts.first().cloned().unwrap_or_default(),
        size: total,
    };
    let top = ram_low_end.min(MMIO_GAP_START);
    let addr = top.checked_sub(total).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) || total > u64::from(u32::MAX) {
        return Err(too_big());
    }
    let mut at = addr;
    for (path, mut f, size) in files {
        mem.read_exact_volatile_from(GuestAddress(at), &mut f, size as usize)
            .map_err(|_| Error::Initrd(path.to_path_buf()))?;
        at += size.div_ceil(INITRD_PART_ALIGN) * INITRD_PART_ALIGN;
    }
    Ok((addr, total))
}

/// Writes the command line; returns its length with the NUL.
pub fn cmdline(mem: &GuestMemoryMmap, text: &str) -> Result<usize, Error> {
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Cmdline(e.to_string()))?;
    if !text.is_empty() {
        c.insert_str(text)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE), &c).map_err(|e| Error::Cmdline(e.to_string()))?;
    Ok(text.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_parts_go_back_to_back_at_the_top() -> Result<(), Box<dyn std::error::Error>> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)])?;
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![0xaa; 1000])?;
        std::fs::write(&b, vec![0xbb; 10])?;
        let (addr, size) = initrd(&mem, &[a.clone(), b.clone()], 16 << 20, 2 << 20)?;
        assert_eq!(size, 1024 + 512);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 16 << 20);
        let mut buf = [0u8; 10];
        mem.read_slice(&mut buf, GuestAddress(addr + 1024))?;
        assert_eq!(buf, [0xbb; 10]);
        mem.read_slice(&mut buf, GuestAddress(addr))?;
        assert_eq!(buf, [0xaa; 10]);
        // Too big to fit above the kernel.
        let e = initrd(&mem, &[a], 16 << 20, 16 << 20);
        assert!(matches!(e, Err(Error::InitrdTooBig { .. })));
        Ok(())
    }
}
