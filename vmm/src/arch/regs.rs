//! The state a vCPU starts in: 64-bit long mode with paging on, an identity
//! map of the first GiB (and of the fourth, for the I/O APIC), flat segments from our GDT, an empty IDT, and the
//! Linux 64-bit boot protocol's registers (`rsi` = zero page).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_STACK, GDT_ADDR, IDT_ADDR, PD, PDPT, PD_HIGH, PML4, ZERO_PAGE};

/// Errors of writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory too small for the boot structures.
    #[error("writing the {0} into guest memory")]
    Write(&'static str),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the x86 descriptor layout).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The GDT: null, 64-bit code, data, TSS.
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The KVM segment that GDT entry `index` describes.
pub fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let bit = |n: u32| ((e >> n) & 1) as u8;
    let raw_limit = (((e >> 32) & 0x000f_0000) | (e & 0x0000_ffff)) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((e >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the GDT, the IDT and the identity-mapping page tables.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|_| Error::Write("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|_| Error::Write("IDT"))?;
    mem.write_obj(PDPT | 0x03, GuestAddress(PML4))
        .map_err(|_| Error::Write("PML4"))?;
    mem.write_obj(PD | 0x03, GuestAddress(PDPT))
        .map_err(|_| Error::Write("PDPT"))?;
    // 512 2-MiB pages: the first GiB, present, writable, huge.
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD))
        .map_err(|_| Error::Write("page directory"))?;
    // And the fourth GiB, where the I/O APIC and LAPIC windows are:
    // present, writable, uncached (PWT, PCD), huge.
    mem.write_obj(PD_HIGH | 0x03, GuestAddress(PDPT + 3 * 8))
        .map_err(|_| Error::Write("PDPT"))?;
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((3u64 << 30) + ((i as u64) << 21)) | 0x9b).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD_HIGH))
        .map_err(|_| Error::Write("page directory"))?;
    Ok(())
}

/// Special registers for long mode, starting from what KVM reports.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 7;
    s.cs = segment(1);
    let data = segment(2);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(3);
    s.cr0 |= X86_CR0_PE | X86_CR0_PG;
    s.cr3 = PML4;
    s.cr4 |= X86_CR4_PAE;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// General registers: entry point, boot stack, zero page in `rsi`.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

/// FPU state as after FNINIT, SSE enabled.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_and_present() {
        let cs = segment(1);
        assert_eq!(
            (cs.l, cs.present, cs.s, cs.type_, cs.selector),
            (1, 1, 1, 0xb, 8)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment(3);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }
}
