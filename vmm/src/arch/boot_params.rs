//! The Linux zero page (`boot_params`): the setup header (from a bzImage,
//! or made up for an ELF kernel), the command line and initrd locations, and
//! the E820 memory map, and a seed for the guest's random number generator
//! (`setup_data` of type `SETUP_RNG_SEED`, Linux 5.20+/6.0, what QEMU
//! passes too). A non-Linux ELF guest ignores it.
//!
//! The seed matters for more than security: a kernel that has no trusted
//! entropy at boot makes it up from timer jitter when something first asks
//! for random bytes, which takes seconds under an emulating hypervisor. The
//! kernel credits the seed with `random.trust_bootloader=on` (or
//! CONFIG_RANDOM_TRUST_BOOTLOADER); it wipes it from memory once read.

use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE, EBDA_START, HIMEM_START, MMIO_GAP_START, SETUP_DATA, ZERO_PAGE};

/// Errors of writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The E820 table is full.
    #[error("too many E820 entries")]
    E820Full,
    /// Guest memory does not hold the zero page.
    #[error("writing the zero page")]
    Write,
    /// The host gave no random bytes for the seed.
    #[error("getrandom for the guest's RNG seed")]
    Random(#[source] std::io::Error),
}

/// Bytes of RNG seed given to the guest (256 bits, what the kernel needs to
/// call its generator ready).
pub const RNG_SEED_LEN: usize = 32;
const SETUP_RNG_SEED: u32 = 9;

/// A fresh seed from the host's generator.
pub fn rng_seed() -> Result<[u8; RNG_SEED_LEN], Error> {
    let mut seed = [0u8; RNG_SEED_LEN];
    fill_random(&mut seed)?;
    Ok(seed)
}

/// Fills `seed` from the host's generator (`getrandom`).
pub fn fill_random(seed: &mut [u8]) -> Result<(), Error> {
    let mut got = 0;
    while got < seed.len() {
        let rest = &mut seed[got..];
        // SAFETY: the buffer is valid for `rest.len()` writable bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Random(e));
                }
            }
        }
    }
    Ok(())
}

/// The `setup_data` entry carrying `seed`: next (none), type, length, bytes.
fn rng_setup_data(seed: &[u8; RNG_SEED_LEN]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + RNG_SEED_LEN);
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    b.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    b.extend_from_slice(seed);
    b
}

const E820_RAM: u32 = 1;
/// Legacy persistent memory (`E820_TYPE_PRAM`), what `/dev/pmem0` comes from.
const E820_PRAM: u32 = 12;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

fn add_e820(p: &mut boot_params, addr: u64, size: u64, kind: u32) -> Result<(), Error> {
    let i = p.e820_entries as usize;
    let slot = p.e820_table.get_mut(i).ok_or(Error::E820Full)?;
    slot.addr = addr;
    slot.size = size;
    slot.r#type = kind;
    p.e820_entries += 1;
    Ok(())
}

/// Writes the zero page for RAM `regions`, a command line of `cmdline_len`
/// bytes (with its NUL), an optional initrd `(address, size)`, an optional
/// pmem ranges `(address, size)` (the root disk, the mailbox) and the RNG `seed` (in `setup_data`).
pub fn write(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    regions: &[(u64, u64)],
    pmem: &[(u64, u64)],
    seed: &[u8; RNG_SEED_LEN],
) -> Result<(), Error> {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    p.hdr.cmd_line_ptr = CMDLINE as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    mem.write_slice(&rng_setup_data(seed), GuestAddress(SETUP_DATA))
        .map_err(|_| Error::Write)?;
    p.hdr.setup_data = SETUP_DATA;
    for &(start, size) in regions {
        if start == 0 {
            add_e820(&mut p, 0, EBDA_START, E820_RAM)?;
            let low_end = size.min(MMIO_GAP_START);
            if low_end > HIMEM_START {
                add_e820(&mut p, HIMEM_START, low_end - HIMEM_START, E820_RAM)?;
            }
        } else {
            add_e820(&mut p, start, size, E820_RAM)?;
        }
    }
    for &(start, size) in pmem {
        add_e820(&mut p, start, size, E820_PRAM)?;
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&p, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|_| Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_page_points_at_a_fresh_rng_seed() -> Result<(), Box<dyn std::error::Error>> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)])?;
        let seed = rng_seed()?;
        assert_ne!(seed, rng_seed()?, "two seeds of 256 bits are never equal");
        write(
            &mem,
            None,
            10,
            None,
            &[(0, 16 << 20)],
            &[(4 << 30, 2 << 20)],
            &seed,
        )?;
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE))?;
        let last = p.e820_table[p.e820_entries as usize - 1];
        let (addr, size, kind) = (last.addr, last.size, last.r#type);
        assert_eq!((addr, size, kind), (4 << 30, 2 << 20, E820_PRAM));
        let at = p.hdr.setup_data;
        assert_eq!(at, SETUP_DATA);
        let next: u64 = mem.read_obj(GuestAddress(at))?;
        let kind: u32 = mem.read_obj(GuestAddress(at + 8))?;
        let len: u32 = mem.read_obj(GuestAddress(at + 12))?;
        let mut data = [0u8; RNG_SEED_LEN];
        mem.read_slice(&mut data, GuestAddress(at + 16))?;
        assert_eq!((next, kind, len), (0, SETUP_RNG_SEED, RNG_SEED_LEN as u32));
        assert_eq!(data, seed);
        // The seed sits in low RAM, below the EBDA, clear of the command
        // line and the MP table.
        assert!(at >= CMDLINE + super::super::layout::CMDLINE_MAX as u64);
        assert!(at + 16 + RNG_SEED_LEN as u64 <= EBDA_START);
        Ok(())
    }
}
