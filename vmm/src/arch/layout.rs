//! Where things go in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty: limit 0)
//! 0x0000_7000  zero page (boot_params)    0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4  0xa000 PDPT  0xb000 PD (identity map, 2 MiB pages, 1 GiB)
//! 0x0002_0000  kernel command line (up to 4 KiB)
//! 0x0009_fc00  MP table (start of the EBDA; RAM below it is usable)
//! 0x0010_0000  kernel (HIMEM_START)
//! ...          initrd, page-aligned at the top of low memory
//! 0xd000_0000  MMIO gap (devices) up to 4 GiB: virtio-mmio devices first,
//!              4 KiB each (0xd000_0000 vsock, GSI 5)
//! 0x1_0000_0000 the rest of RAM, if any
//! ```

/// GDT.
pub const GDT_ADDR: u64 = 0x500;
/// IDT (empty, so any exception before the guest loads its own triple-faults).
pub const IDT_ADDR: u64 = 0x520;
/// boot_params ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT: u64 = 0xa000;
/// Page directory.
pub const PD: u64 = 0xb000;
/// Page directory of the boot page tables for the fourth GiB (the I/O
/// APIC and LAPIC windows below 4 GiB), uncached.
pub const PD_HIGH: u64 = 0xc000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line accepted, with its NUL (Linux 6.1 on x86 reads up to
/// 2048 bytes of it).
pub const CMDLINE_MAX: usize = 4096;
/// The boot protocol's `setup_data` list (one entry: the RNG seed), right
/// after the command line.
pub const SETUP_DATA: u64 = CMDLINE + CMDLINE_MAX as u64;
/// Start of the EBDA, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// The first virtio-mmio device's window ([`crate::virtio::slot`]): the
/// start of the MMIO gap, far below KVM's TSS, the I/O APIC and the LAPIC.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Address for KVM's TSS (three pages, inside the MMIO gap).
pub const KVM_TSS: u64 = 0xfffb_d000;
/// Address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Address of the local APIC.
pub const APIC_ADDR: u32 = 0xfee0_0000;

/// The RAM regions of a guest of `size` bytes: below the MMIO gap, and the
/// rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_gap_moves_past_4g() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
