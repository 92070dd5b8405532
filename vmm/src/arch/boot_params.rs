//! The Linux zero page (`boot_params`): the setup header (from a bzImage,
//! or made up for an ELF kernel), the command line and initrd locations, and
//! the E820 memory map. A non-Linux ELF guest ignores it.

use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE, EBDA_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE};

/// Errors of writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The E820 table is full.
    #[error("too many E820 entries")]
    E820Full,
    /// Guest memory does not hold the zero page.
    #[error("writing the zero page")]
    Write,
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

fn add_e820(p: &mut boot_params, addr: u64, size: u64) -> Result<(), Error> {
    let i = p.e820_entries as usize;
    let slot = p.e820_table.get_mut(i).ok_or(Error::E820Full)?;
    slot.addr = addr;
    slot.size = size;
    slot.r#type = E820_RAM;
    p.e820_entries += 1;
    Ok(())
}

/// Writes the zero page for RAM `regions`, a command line of `cmdline_len`
/// bytes (with its NUL) and an optional initrd `(address, size)`.
pub fn write(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    regions: &[(u64, u64)],
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
    for &(start, size) in regions {
        if start == 0 {
            add_e820(&mut p, 0, EBDA_START)?;
            let low_end = size.min(MMIO_GAP_START);
            if low_end > HIMEM_START {
                add_e820(&mut p, HIMEM_START, low_end - HIMEM_START)?;
            }
        } else {
            add_e820(&mut p, start, size)?;
        }
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&p, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|_| Error::Write)
}
